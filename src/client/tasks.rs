//! Work a session hands to a task of its own: a blocking command on a connection of its own, WAIT's
//! count of the replicas that have the session's writes, a failed authentication's delay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::reply::ClientError;
use crate::upstream::{self, Node, Pool};

/// Runs a blocking command on a dedicated connection, which goes back to the pool afterwards.
pub(super) async fn blocking_call(
    pool: Arc<Pool>,
    node: Arc<Node>,
    bytes: Bytes,
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
        r = conn.exchange(&bytes) => r,
        // The client went away: dropping the connection makes Redis unblock without serving (and so
        // losing) an element nobody will read.
        _ = tx.closed() => return,
    };
    match reply {
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
