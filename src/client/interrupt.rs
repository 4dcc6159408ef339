//! Commands that interrupt a node busy with a script or function: `SCRIPT KILL`, `FUNCTION KILL`,
//! `SHUTDOWN`. Redis runs only these (and the connection's greeting) while a script runs past
//! `busy-reply-threshold`; every other command gets `-BUSY`. On the shared pipelined connection they
//! would queue behind the script they are meant to stop, and a write hold (no primary the topology
//! agrees on) would hold them until `write_hold_ms` ran out. So each goes at once, on a fresh connection
//! of its own, to the nodes the router names (see `route::plan`), and the client gets one reply.
//!
//! `SHUTDOWN` reaches here only from an admin user: the gate (`gate::check`) refuses it to others.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::dispatch::{Batch, Step};
use super::queue::{Then, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::resp::Request;
use crate::upstream::{self, ConnKey, Dedicated, Node};

impl Session {
    /// Sends the request at the start of the input to `nodes`, each on a connection of its own, and
    /// queues one entry for the reply.
    pub(super) fn interrupt(
        &mut self,
        nodes: Vec<Arc<Node>>,
        req: &Request,
        batch: &mut Option<Batch>,
    ) -> Step {
        if nodes.is_empty() {
            return self.reply_local(batch, req, ClientError::NoPrimary.frame());
        }
        self.flush(batch);
        let bytes = self.input.take(req);
        // Database 0: a busy node answers SELECT with -BUSY, and these commands concern the server.
        let key = ConnKey {
            auth: self.state.key.auth.clone(),
            ..ConnKey::default()
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(send(nodes, key, bytes, tx));
        self.push(Wait::Task(rx), None, Then::Nothing);
        Step::Next
    }
}

/// Sends `bytes` to every node at once and answers `tx` with the first `+OK`, else the first node's
/// reply. Gives up if the client goes away.
async fn send(nodes: Vec<Arc<Node>>, key: ConnKey, bytes: Bytes, mut tx: oneshot::Sender<Bytes>) {
    let mut calls = tokio::task::JoinSet::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let (key, bytes) = (key.clone(), bytes.clone());
        calls.spawn(async move { (i, call(node, key, bytes).await) });
    }
    let mut replies: Vec<(usize, Bytes)> = Vec::new();
    loop {
        let next = tokio::select! {
            next = calls.join_next() => next,
            // The client went away: dropping the set closes the connections.
            _ = tx.closed() => return,
        };
        match next {
            Some(Ok((_, reply))) if reply.starts_with(b"+OK") => {
                let _ = tx.send(reply);
                return;
            }
            Some(Ok(answer)) => replies.push(answer),
            // A call task panicked: its node's reply is missing, the others decide.
            Some(Err(_)) => {}
            None => break,
        }
    }
    replies.sort_by_key(|(i, _)| *i);
    let reply = replies
        .into_iter()
        .next()
        .map_or_else(|| ClientError::NoPrimary.frame(), |(_, reply)| reply);
    let _ = tx.send(reply);
}

/// One node's reply to `bytes` on a fresh connection, or the error in its place.
async fn call(node: Arc<Node>, key: ConnKey, bytes: Bytes) -> Bytes {
    let result: Result<Bytes, upstream::Error> = async {
        let mut conn = Dedicated::open(node, key).await?;
        conn.exchange(&bytes).await
    }
    .await;
    result.unwrap_or_else(|e| ClientError::Upstream(&e).frame())
}
