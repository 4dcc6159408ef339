//! Work a session hands to a task of its own: a blocking command on a connection of its own, WAIT's
//! count of the replicas that have the session's writes, a failed authentication's delay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::registry::Handle;
use super::reply::ClientError;
use crate::upstream::{self, Dedicated, Node, Pool};

/// Runs a blocking command on a dedicated connection, which goes back to the pool afterwards. The
/// connection's upstream id is asked for in the same write (`CLIENT ID` first) and noted on the client's
/// `handle` while the command blocks, so that `CLIENT UNBLOCK` through the proxy can reach it. With
/// `acks` (a command that may write: BLMOVE, BLPOP pop), `WAIT` follows its reply on the same connection,
/// and a reply that is not an error reaches the client only if enough replicas acknowledged it.
pub(super) async fn blocking_call(
    pool: Arc<Pool>,
    node: Arc<Node>,
    (bytes, acks): (Bytes, Option<upstream::Acks>),
    handle: Arc<Handle>,
    mut tx: oneshot::Sender<Bytes>,
) {
    let mut conn = match pool.dedicated(&node).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(ClientError::Pin(&e).frame());
            return;
        }
    };
    let reply = tokio::select! {
        r = blocked(&mut conn, &bytes, &handle) => r,
        // The client went away: dropping the connection makes Redis unblock without serving (and so
        // losing) an element nobody will read.
        _ = tx.closed() => {
            handle.set_blocked_on(None);
            return;
        }
    };
    handle.set_blocked_on(None);
    let reply = match (reply, acks) {
        (Ok(r), Some(a)) if !r.starts_with(b"-") && !r.starts_with(b"!") => {
            acknowledge(&mut conn, r, a).await
        }
        (r, _) => r,
    };
    match reply {
        // Served after another node replaced its node as the primary: what it popped or moved there
        // is lost when the former primary is demoted. Never a success.
        Ok(_) if !node.is_primary() => {
            let _ = tx.send(ClientError::FormerPrimary(&node.addr).frame());
        }
        Ok(reply) => {
            let _ = tx.send(reply);
            conn.mark_clean();
            pool.give_back(conn);
        }
        Err(e) => {
            let _ = tx.send(ClientError::Upstream(&e).frame());
        }
    }
}

/// `reply`, the reply to a command that may have written on `conn`, if `WAIT` on `conn` finds enough
/// replicas acknowledged it; else the error saying it was not acknowledged. A nil reply (a timeout,
/// nothing popped) wrote nothing either way.
async fn acknowledge(
    conn: &mut Dedicated,
    reply: Bytes,
    acks: upstream::Acks,
) -> Result<Bytes, upstream::Error> {
    if reply.starts_with(b"*-1") || reply.starts_with(b"$-1") || reply.starts_with(b"_") {
        return Ok(reply);
    }
    let wait = conn.exchange(&acks.request()).await?;
    let acked = upstream::offsets::wait_count(&wait);
    if acked >= acks.replicas {
        return Ok(reply);
    }
    Ok(ClientError::NoAck {
        acked: Some(acked),
        need: acks.replicas,
        timeout_ms: acks.timeout_ms,
    }
    .frame())
}

/// Sends `CLIENT ID` and the blocking command in one write; notes the id on `handle`, then waits for the
/// command's reply.
async fn blocked(
    conn: &mut Dedicated,
    bytes: &[u8],
    handle: &Handle,
) -> Result<Bytes, upstream::Error> {
    let mut out = Vec::with_capacity(bytes.len() + 24);
    crate::resp::encode_command(&mut out, &[b"CLIENT", b"ID"]);
    out.extend_from_slice(bytes);
    conn.send(&out).await?;
    let mut id = None;
    loop {
        let (frame, info) = conn.next_frame().await?;
        if info.is_push() {
            continue;
        }
        if id.is_none() {
            let n = crate::resp::value::decode_one(&frame)
                .and_then(|v| crate::resp::value::int(&v))
                .unwrap_or(-1);
            id = Some(n);
            if let Ok(n) = u64::try_from(n) {
                handle.set_blocked_on(Some((conn.node.clone(), n)));
            }
            continue;
        }
        return Ok(frame);
    }
}

/// The longest one `WAIT` a client asked for blocks a shared connection: a longer wait is asked again in
/// slices, and other sessions' commands on that connection run between them.
pub(super) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Answers a client's `WAIT want timeout` (`None`: no timeout) with Redis's own WAIT on `conn`, asked in
/// slices of at most [`WAIT_SLICE`] until `want` replicas acknowledged or the timeout passed; the answer
/// is the last count.
pub(super) async fn wait_for_acks(
    conn: upstream::Shared,
    want: usize,
    timeout: Option<Duration>,
    mut tx: oneshot::Sender<Bytes>,
) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let replicas = u32::try_from(want).unwrap_or(u32::MAX);
    loop {
        let left = deadline.map_or(WAIT_SLICE, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        let slice = upstream::Acks {
            replicas,
            timeout_ms: left.min(WAIT_SLICE).as_millis().max(1) as u64,
        };
        let rx = upstream::submit(&conn, slice.request(), 1, upstream::Want::NONE);
        let reply = tokio::select! {
            r = rx => r,
            // The client went away.
            _ = tx.closed() => return,
        };
        let bytes = match reply {
            Ok(Ok(r)) => r.bytes,
            Ok(Err(e)) => {
                let _ = tx.send(ClientError::Upstream(&e).frame());
                return;
            }
            Err(_) => return,
        };
        let done = !bytes.starts_with(b":")
            || upstream::offsets::wait_count(&bytes) >= replicas
            || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if done {
            let _ = tx.send(bytes);
            return;
        }
    }
}
