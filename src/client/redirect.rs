//! Cluster redirects in a batch's replies, followed so that the client never sees them: a reply frame
//! `MOVED` (the slot has another owner), `ASK` (the slot is migrating and this key is already on the
//! target), `TRYAGAIN` (a multi-key command while its keys are split by a migration) or `CLUSTERDOWN`
//! says the node did not run that command, so sending it again runs it at most once. Each such command
//! goes again, in order, from a task of its own; the batch's entry keeps its place in the queue and
//! gets every frame, the answered ones as they were, once the task is done.
//!
//! ```text
//! MOVED slot addr ──▶ refresh the topology, send to addr
//! ASK slot addr ────▶ ASKING + the command on addr's connection (one write)
//! TRYAGAIN ─────────▶ wait (20 ms, doubling up to 500 ms), send again where it last went
//! CLUSTERDOWN ──────┘   ... for at most write_hold_ms, then the last reply goes to the client
//! ```
//!
//! From the third redirect of one command on, each waits as TRYAGAIN does: as a migration ends, source
//! and target may each name the other for a moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::queue::{Outcome, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::resp::{Limits, ReplyScanner, RequestScanner};
use crate::topology::Topo;
use crate::upstream::{self, verdict, Acks, ConnKey, Node, Reply, Verdict, Want};

/// Redirects followed for one command before its last reply is passed on (a slot bouncing between
/// nodes as a migration ends takes two or three).
const MAX_REDIRECTS: u32 = 16;

/// True if `v` is a redirect this module follows.
fn followed(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Moved { .. } | Verdict::Ask { .. } | Verdict::TryAgain | Verdict::ClusterDown
    )
}

impl Session {
    /// Takes the front entry's reply `r` if it holds redirects to follow: the commands they answer go
    /// again from a task, and the entry waits for it. Gives the outcome back otherwise.
    pub(super) fn follow_redirects(&mut self, r: Reply) -> Result<(), Outcome> {
        if !r.verdicts.any(followed) || !self.ctx.topo.load().is_cluster() {
            return Err(Outcome::Upstream(Ok(r)));
        }
        let Some(entry) = self.queue.front_mut() else {
            return Err(Outcome::Upstream(Ok(r)));
        };
        let count = entry.count;
        let Some(sent) = entry.sent.as_mut() else {
            return Err(Outcome::Upstream(Ok(r)));
        };
        let (Some(bytes), Some(node)) = (sent.bytes.clone(), sent.node.clone()) else {
            return Err(Outcome::Upstream(Ok(r)));
        };
        // Writes that ran beside the redirected ones on a node another replaced as the primary may be
        // lost with it: the usual rule (every command of the batch told so) applies, not success.
        if sent.primary && !sent.reads_only && !r.from_primary && !r.verdicts.all(count, followed) {
            return Err(Outcome::Upstream(Ok(r)));
        }
        // The commands that ran here keep their acknowledgement verdict (min_write_acks); those
        // redirected are judged by their own WAIT where they run.
        let acks = sent.want.acks.filter(|_| !sent.acked.is_empty());
        let acked_positions = sent.acked.clone();
        let here = super::complete::acknowledged(&self.ctx.metrics, Some(&*sent), r.clone());
        let (Some(requests), Some(replies)) =
            (frames(&bytes, count, true), frames(&here, count, false))
        else {
            return Err(Outcome::Upstream(Ok(r)));
        };
        let redo: Vec<(usize, Option<Acks>, Verdict)> = r
            .verdicts
            .iter()
            .filter(|(_, v)| followed(v))
            .map(|(i, v)| {
                let acks = acks.filter(|_| acked_positions.contains(i));
                (*i as usize, acks, v.clone())
            })
            .collect();
        self.ctx.metrics.cluster_redirects.inc_by(redo.len() as u64);
        // The commands run elsewhere now: never sent again as a batch, nor timed out here (the task
        // gives up after write_hold_ms).
        sent.bytes = None;
        sent.deadline = None;
        sent.hedge_at = None;
        let (tx, rx) = oneshot::channel();
        entry.wait = Wait::Task(rx);
        // What these commands write or read runs where the session's floors do not follow it (another
        // shard's primary): its reads go to the primaries until any replica within the lag limit has
        // caught up with it (so no later read sees less than this one did, nor misses these writes).
        let until = Instant::now() + self.ctx.policy().max_lag * 2 + Duration::from_millis(500);
        self.state.reads.primary_until(until);
        self.ctx.topo.request_refresh();
        tokio::spawn(resend(
            Redo {
                requests,
                replies,
                redo,
                from: node,
                key: self.state.key.clone(),
                hold: self.ctx.write_hold,
            },
            self.ctx.topo.clone(),
            tx,
        ));
        Ok(())
    }
}

/// What a redirect task does.
struct Redo {
    /// The batch's request frames.
    requests: Vec<Bytes>,
    /// The replies it got, one per request.
    replies: Vec<Bytes>,
    /// The positions to send again, the acknowledgements each write needs, and why.
    redo: Vec<(usize, Option<Acks>, Verdict)>,
    /// The node that answered the batch.
    from: Arc<Node>,
    /// The session's connection key (database, protocol, user).
    key: ConnKey,
    /// How long a command may wait for its slot (`write_hold_ms`).
    hold: Duration,
}

/// Sends each redirected command again, in order, and gives the batch's replies with theirs in place.
async fn resend(mut w: Redo, topo: Arc<Topo>, tx: oneshot::Sender<Bytes>) {
    for (i, acks, first) in std::mem::take(&mut w.redo) {
        let Some(request) = w.requests.get(i).cloned() else {
            continue;
        };
        let reply = follow(&request, acks, first, &w, &topo).await;
        if let Some(slot) = w.replies.get_mut(i) {
            *slot = reply;
        }
    }
    let mut out = BytesMut::new();
    for r in &w.replies {
        out.extend_from_slice(r);
    }
    let _ = tx.send(out.freeze());
}

/// Follows one command's redirects until it is answered, the hold is over, or [`MAX_REDIRECTS`].
async fn follow(
    request: &Bytes,
    acks: Option<Acks>,
    mut verdict: Verdict,
    w: &Redo,
    topo: &Topo,
) -> Bytes {
    let deadline = Instant::now() + w.hold;
    let mut node = w.from.clone();
    let mut backoff = Duration::from_millis(20);
    let mut last =
        Bytes::from_static(b"-TRYAGAIN redsplit: gave up following cluster redirects\r\n");
    for round in 0..MAX_REDIRECTS {
        // Two nodes may each name the other for a moment as a migration ends (one has taken the slot,
        // the other not yet): after a second redirect, wait before following the next.
        if round >= 2 && matches!(verdict, Verdict::Moved { .. } | Verdict::Ask { .. }) {
            if Instant::now() + backoff > deadline {
                return last;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        let asking = match &verdict {
            Verdict::Moved { to, .. } => {
                node = topo.node(to);
                false
            }
            Verdict::Ask { to, .. } => {
                node = topo.node(to);
                true
            }
            Verdict::TryAgain | Verdict::ClusterDown => {
                if Instant::now() + backoff > deadline {
                    return last;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                false
            }
            _ => return last,
        };
        let conn = node.pool(&w.key).pick(&node);
        let (bytes, count) = if asking {
            let mut b = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
            b.extend_from_slice(request);
            (b.freeze(), 2)
        } else {
            (request.clone(), 1)
        };
        let want = Want { acks, ..Want::NONE };
        let (reply, acked) = match upstream::submit(&conn, bytes, count, want).await {
            Ok(Ok(r)) => (r.bytes, r.acked),
            Ok(Err(e @ upstream::Error::Connect { .. })) if Instant::now() < deadline => {
                // Nothing was sent: the owner may be failing over; ask the cluster again.
                topo.request_refresh();
                last = ClientError::Upstream(&e).frame();
                verdict = Verdict::TryAgain;
                continue;
            }
            Ok(Err(e)) => return ClientError::Upstream(&e).frame(),
            Err(_) => return ClientError::NoPrimaryAfter(0).frame(),
        };
        let reply = if asking {
            // ASKING's +OK first, then the command's reply.
            match frames(&reply, 2, false).and_then(|f| f.into_iter().nth(1)) {
                Some(r) => r,
                None => return reply,
            }
        } else {
            reply
        };
        verdict = verdict::judge(&reply);
        if !followed(&verdict) {
            // A write that ran here without the acknowledgements it needs: unknown, as anywhere.
            if let Some(a) =
                acks.filter(|a| !reply.starts_with(b"-") && acked.is_none_or(|n| n < a.replicas))
            {
                return ClientError::NoAck {
                    acked,
                    need: a.replicas,
                    timeout_ms: a.timeout_ms,
                }
                .frame();
            }
            return reply;
        }
        if matches!(verdict, Verdict::Moved { .. }) {
            topo.request_refresh();
        }
        last = reply;
    }
    last
}

/// The `count` top-level frames of `bytes`, requests or replies; `None` if there are not exactly that
/// many.
fn frames(bytes: &Bytes, count: u32, requests: bool) -> Option<Vec<Bytes>> {
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 0;
    while at < bytes.len() {
        let rest = bytes.get(at..)?;
        let len = if requests {
            RequestScanner::new(Limits::default()).scan(rest).ok()??.len
        } else {
            ReplyScanner::new(Limits::default()).scan(rest).ok()??.len
        };
        out.push(bytes.slice(at..at + len));
        at += len;
    }
    (out.len() == count as usize).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_its_request_and_reply_frames() {
        let req =
            Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n");
        let got = frames(&req, 2, true).expect("two requests");
        assert_eq!(
            got[1],
            Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n")
        );
        let rep = Bytes::from_static(b"$1\r\nx\r\n-MOVED 1 h:1\r\n");
        let got = frames(&rep, 2, false).expect("two replies");
        assert_eq!(got[1], Bytes::from_static(b"-MOVED 1 h:1\r\n"));
        assert!(frames(&rep, 3, false).is_none());
    }
}
