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
/// `handle` while the command blocks, so that `CLIENT UNBLOCK` through the proxy can reach it.
pub(super) async fn blocking_call(
    pool: Arc<Pool>,
    node: Arc<Node>,
    bytes: Bytes,
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

/// Counts replicas at or past the primary offset that `role` reports, until `want` or the timeout.
pub(super) async fn wait_for_replicas(
    topo: Arc<crate::topology::Topo>,
    role: oneshot::Receiver<Result<upstream::Reply, upstream::Error>>,
    want: usize,
    timeout: Option<Duration>,
    mut tx: oneshot::Sender<Bytes>,
) {
    let target = match role.await {
        Ok(Ok(r)) => match crate::resp::value::decode_one(&r.bytes) {
            Some(frame) => match crate::topology::probe::Role::parse(&frame) {
                Some(crate::topology::probe::Role::Master { offset }) => offset,
                _ => {
                    let _ = tx.send(Bytes::from_static(
                        b"-ERR redsplit: WAIT needs a primary\r\n",
                    ));
                    return;
                }
            },
            _ => {
                let _ = tx.send(r.bytes);
                return;
            }
        },
        Ok(Err(e)) => {
            let _ = tx.send(ClientError::Upstream(&e).frame());
            return;
        }
        Err(_) => return,
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let acked = loop {
        let snapshot = topo.snapshot();
        let acked = snapshot
            .replica_nodes()
            .filter(|r| r.repl.offset() >= target)
            .count();
        if acked >= want || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break acked;
        }
        tokio::select! {
            _ = tick.tick() => {}
            // The client went away.
            _ = tx.closed() => return,
        }
    };
    let _ = tx.send(Bytes::from(format!(":{acked}\r\n")));
}
