//! The ordered reply queue: one entry per command (or batch of commands to one node), in the order the
//! client sent them. Replies are written in queue order only, so a pipeline split over several nodes
//! still comes back in order, whatever order the nodes answer in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::pinned::Effect;
use crate::route::retry;
use crate::topology::{Generation, ShardId};
use crate::upstream::{self, ConnKey, Node, Reply, Want};

/// What a queue entry waits for.
pub(super) enum Wait {
    /// Made by the proxy.
    Ready(Bytes),
    /// Replies from a shared connection.
    Upstream(oneshot::Receiver<Result<Reply, upstream::Error>>),
    /// A reply computed by a task (blocking commands, WAIT).
    Task(oneshot::Receiver<Bytes>),
    /// Replies from the session's dedicated connection.
    Pinned,
    /// Not sent anywhere now: a batch to send again, waiting for a node to send it to (no primary during
    /// a failover). Later requests wait too, so order is kept.
    Held,
    /// A reply already taken from its channel (while looking at what later requests did).
    Done(Result<Reply, upstream::Error>),
}

impl Wait {
    /// The reply taken early, if this is one. It leaves an empty `Ready`, not `Held`: `Held` would say
    /// the node's answer does not count for the session's read routing.
    fn take_done(&mut self) -> Option<Result<Reply, upstream::Error>> {
        if !matches!(self, Wait::Done(_)) {
            return None;
        }
        match std::mem::replace(self, Wait::Ready(Bytes::new())) {
            Wait::Done(r) => Some(r),
            _ => None,
        }
    }
}

/// Where an entry's commands went, for consistency bookkeeping, and what is needed to send them again.
pub(super) struct Sent {
    /// The shard they are for: what the session wrote and read is known per shard.
    pub shard: ShardId,
    /// The node they were last sent to; `None` if never sent (no primary at the time).
    pub node: Option<Arc<Node>>,
    /// That node was the primary.
    pub primary: bool,
    /// The request bytes, kept while they may need sending again (shared-connection batches only).
    pub bytes: Option<Bytes>,
    /// Only reads: they may run again anywhere, even if they reached a node.
    pub reads_only: bool,
    /// Holds a read-only script or function: never hedged, nor sent elsewhere after a timeout.
    pub scripted: bool,
    /// The offsets measured around them, and the acknowledgements their writes wait for.
    pub want: Want,
    /// Positions of the commands whose replies wait for `want.acks`: a reply not acknowledged by enough
    /// replicas is replaced by an error that says so.
    pub acked: Vec<u32>,
    /// They may be delivered only if they ran on data at least at this offset (the `ROLE` before them
    /// says so); else they go again elsewhere.
    pub check: Option<u64>,
    /// Failures on nodes the request reached (timeouts, broken connections, node errors).
    pub failures: u8,
    /// When the entry first could not be delivered: the start of its hold.
    pub held_since: Option<Instant>,
    /// A read still unanswered then is sent elsewhere.
    pub deadline: Option<Instant>,
    /// A read on a replica still unanswered then is sent to another node instead, once (a hedge: the
    /// replica may be frozen).
    pub hedge_at: Option<Instant>,
    /// The node (id) that answered the whole batch READONLY, and its replies: it is never sent the batch
    /// again, even if the topology still names it primary (a script may write, then fake the error), and
    /// the client gets those replies if no other primary takes the batch within the hold.
    pub refused_by: Option<(u64, Bytes)>,
}

impl Sent {
    /// Commands sent once to `node`, never to be re-sent.
    pub fn once(shard: ShardId, node: Arc<Node>, primary: bool) -> Sent {
        Sent {
            shard,
            node: Some(node),
            primary,
            bytes: None,
            reads_only: false,
            scripted: false,
            want: Want::NONE,
            acked: Vec::new(),
            check: None,
            failures: 0,
            held_since: None,
            deadline: None,
            hedge_at: None,
            refused_by: None,
        }
    }

    /// A batch sent to `node` over a shared connection, kept so that it can be sent again.
    pub fn batch(
        shard: ShardId,
        node: Arc<Node>,
        primary: bool,
        bytes: Bytes,
        reads_only: bool,
    ) -> Sent {
        Sent {
            bytes: Some(bytes),
            reads_only,
            ..Sent::once(shard, node, primary)
        }
    }
}

/// What to do once an entry's reply is known.
pub(super) enum Then {
    Nothing,
    /// Move the session to this connection key if the reply is not an error (SELECT, AUTH, HELLO AUTH).
    /// With `hello`, answer with a HELLO reply instead of the upstream's (and name the client, if given).
    SwitchKey {
        key: ConnKey,
        hello: Option<Option<Bytes>>,
    },
    /// Track the state of the dedicated connection.
    Effect(Effect),
    /// A SCAN-family reply: its cursor is tagged with the node that served it (see `cursor`).
    Cursor,
    /// A SCAN reply in front of a cluster: tagged as `Cursor`, and a node's last cursor (0) becomes the
    /// start of the next shard's iteration, until the last shard.
    ClusterCursor,
    /// One part of a command split over shards (see `cluster`).
    Merge(super::cluster::Part),
}

/// One or more commands awaiting their replies, in order.
pub(super) struct Entry {
    pub wait: Wait,
    pub count: u32,
    /// `CLIENT REPLY OFF|SKIP`: the replies are dropped.
    pub silent: bool,
    pub sent: Option<Sent>,
    pub then: Then,
    /// When the proxy received the commands, for the latency histogram (`None`: answered locally).
    pub started: Option<Instant>,
    /// How many of the commands are reads, writes, others.
    pub kinds: [u32; 3],
}

/// A reply as it arrives at the front of the queue.
pub(super) enum Outcome {
    Upstream(Result<Reply, upstream::Error>),
    Bytes(Bytes),
    /// A read's deadline passed without a reply.
    TimedOut,
    /// A held entry may try again (the topology changed, or a moment passed).
    Wake,
    /// A read on a replica waited past its hedge delay.
    Hedge,
}

/// What the requests queued behind the front one did, as far as their replies tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Later {
    /// Nothing sent, only reads, or refused without running.
    None,
    /// A write still waits for its reply.
    Unknown,
    /// A write may have run.
    Written,
}

/// How often a held entry tries the current primary again when the topology has not changed (its
/// connection may just have been down for a moment).
pub(super) const HOLD_POLL: Duration = Duration::from_millis(50);

/// Commands awaiting replies, in the order the client sent them.
#[derive(Default)]
pub(super) struct Queue {
    entries: VecDeque<Entry>,
    /// Commands in `entries`.
    inflight: usize,
}

impl Queue {
    /// Queues an entry.
    pub fn push(&mut self, entry: Entry) {
        self.inflight += entry.count as usize;
        self.entries.push_back(entry);
    }

    /// Takes the front entry out.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.inflight -= e.count as usize;
        Some(e)
    }

    /// The front entry.
    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// The front entry, to change.
    pub fn front_mut(&mut self) -> Option<&mut Entry> {
        self.entries.front_mut()
    }

    /// The last entry queued, to change.
    pub fn back_mut(&mut self) -> Option<&mut Entry> {
        self.entries.back_mut()
    }

    /// True if nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Commands awaiting replies.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Counts one reply of the front entry, which awaits more (a command with several replies on the
    /// dedicated connection).
    pub fn answered_one(&mut self) {
        if let Some(front) = self.entries.front_mut() {
            front.count -= 1;
            self.inflight -= 1;
        }
    }

    /// Sets the number of replies the last entry awaits.
    pub fn set_back_count(&mut self, count: u32) {
        if let Some(e) = self.entries.back_mut() {
            self.inflight = self.inflight + count as usize - e.count as usize;
            e.count = count;
        }
    }

    /// True if an entry awaits a reply on the dedicated connection.
    pub fn has_pinned(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.wait, Wait::Pinned))
    }

    /// True if an entry awaits a task (a blocking command, WAIT): a client that hangs up does not wait
    /// for it.
    pub fn has_task(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.wait, Wait::Task(_)))
    }

    /// When the front entry, a read in flight, should be given up on.
    pub fn deadline(&self) -> Option<Instant> {
        self.entries.front().and_then(|e| match e.wait {
            Wait::Upstream(_) => e.sent.as_ref().and_then(|s| s.deadline),
            _ => None,
        })
    }

    /// When the front entry, a read on a replica in flight, is to be sent elsewhere if still unanswered.
    pub fn hedge_at(&self) -> Option<Instant> {
        self.entries.front().and_then(|e| match e.wait {
            Wait::Upstream(_) => e.sent.as_ref().and_then(|s| s.hedge_at),
            _ => None,
        })
    }

    /// The front entry's reply if it is already there; `None` if it must be waited for (or the queue
    /// is empty).
    pub fn ready(&mut self) -> Option<Outcome> {
        let front = self.entries.front_mut()?;
        Some(match &mut front.wait {
            Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
            Wait::Done(_) => Outcome::Upstream(front.wait.take_done()?),
            Wait::Upstream(rx) => match rx.try_recv() {
                Ok(r) => Outcome::Upstream(r),
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => Outcome::Upstream(Err(lost(front))),
            },
            Wait::Task(rx) => match rx.try_recv() {
                Ok(b) => Outcome::Bytes(b),
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => Outcome::Upstream(Err(lost(front))),
            },
            Wait::Pinned | Wait::Held => return None,
        })
    }

    /// Waits for the front entry's reply; never resolves if there is none to wait for here.
    pub async fn next(&mut self, topo: &mut watch::Receiver<Generation>) -> Outcome {
        let Some(entry) = self.entries.front_mut() else {
            return std::future::pending().await;
        };
        // A write in flight on the primary: if another node replaces it, the session must know at once
        // (the write may be lost with the old one), not when (or if) the old one answers.
        let write = entry
            .sent
            .as_ref()
            .is_some_and(|s| s.primary && !s.reads_only);
        match &mut entry.wait {
            Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
            Wait::Done(_) => match entry.wait.take_done() {
                Some(r) => Outcome::Upstream(r),
                None => std::future::pending().await,
            },
            Wait::Upstream(rx) if write => {
                // Already replaced (a write queued behind the one that took the topology change).
                let replaced = entry
                    .sent
                    .as_ref()
                    .and_then(|s| s.node.as_ref())
                    .is_some_and(|n| !n.is_primary());
                if replaced {
                    return Outcome::Wake;
                }
                let r = tokio::select! {
                    r = &mut *rx => r,
                    Ok(()) = topo.changed() => return Outcome::Wake,
                };
                match r {
                    Ok(r) => Outcome::Upstream(r),
                    Err(_) => Outcome::Upstream(Err(lost(entry))),
                }
            }
            Wait::Upstream(rx) => match rx.await {
                Ok(r) => Outcome::Upstream(r),
                Err(_) => Outcome::Upstream(Err(lost(entry))),
            },
            Wait::Task(rx) => match rx.await {
                Ok(b) => Outcome::Bytes(b),
                Err(_) => Outcome::Upstream(Err(lost(entry))),
            },
            Wait::Held => {
                tokio::select! {
                    _ = topo.changed() => {}
                    _ = tokio::time::sleep(HOLD_POLL) => {}
                }
                Outcome::Wake
            }
            Wait::Pinned => std::future::pending().await,
        }
    }

    /// True if a read whose freshness is still to be checked (see [`Sent::check`]) is unanswered.
    pub fn checked_in_flight(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(e.wait, Wait::Upstream(_) | Wait::Held)
                && e.sent.as_ref().is_some_and(|s| s.check.is_some())
        })
    }

    /// Reads queued after the front one that were sent to a node (answered or not) and may be sent
    /// again: the ones the front takes along when it is sent again (see `Session::carry_later_reads`).
    pub fn later_reads_sent(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries
            .iter_mut()
            .skip(1)
            .filter(|e| sent_read(e).is_some_and(|s| s.bytes.is_some() && !s.scripted))
    }

    /// Whether a read queued after the front one was sent to a node it may not leave: a SCAN cursor
    /// bound to its node, or a read-only script (never started twice). The front read may then not run
    /// again: that read could not follow it, and it may have seen older data than the front would.
    pub fn later_reads_bound(&self) -> bool {
        self.entries
            .iter()
            .skip(1)
            .any(|e| sent_read(e).is_some_and(|s| s.bytes.is_none() || s.scripted))
    }

    /// Whether a request queued after the front one may have changed data: it was sent (or its reply
    /// says it ran) and is not only reads. Replies already in are taken from their channels to tell.
    pub fn later_writes(&mut self) -> Later {
        let mut later = Later::None;
        for e in self.entries.iter_mut().skip(1) {
            if let Wait::Upstream(rx) = &mut e.wait {
                if let Ok(r) = rx.try_recv() {
                    e.wait = Wait::Done(r);
                }
            }
            let reads_only = e.sent.as_ref().is_some_and(|s| s.reads_only);
            match &e.wait {
                Wait::Ready(_) | Wait::Held => {}
                _ if reads_only => {}
                // Never reached a node: it ran nowhere.
                Wait::Done(Err(err)) if !err.maybe_sent() => {}
                // Refused whole by a demoted primary: nothing ran.
                Wait::Done(Ok(r)) if retry::refused_whole(r, e.count) => {}
                Wait::Upstream(_) => later = Later::Unknown,
                // Blocking commands write; WAIT (no send record) does not.
                Wait::Task(_) if e.sent.is_none() => {}
                Wait::Done(_) | Wait::Task(_) | Wait::Pinned => return Later::Written,
            }
        }
        later
    }
}

/// The send record of an entry holding only reads that went to a node and are not delivered yet.
fn sent_read(e: &Entry) -> Option<&Sent> {
    let sent = e.sent.as_ref()?;
    (sent.reads_only && sent.node.is_some() && matches!(e.wait, Wait::Upstream(_) | Wait::Done(_)))
        .then_some(sent)
}

/// The error for an entry whose reply channel closed without an answer.
fn lost(entry: &Entry) -> upstream::Error {
    let addr = entry
        .sent
        .as_ref()
        .and_then(|s| s.node.as_ref())
        .map(|n| n.addr.clone());
    upstream::Error::Lost {
        addr: addr.unwrap_or_else(|| crate::node::Addr::parse("unknown:1").expect("valid literal")),
    }
}
