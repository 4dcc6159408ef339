//! One client connection: the main loop, the reply queue, and what happens when a reply arrives.
//!
//! Every command the client sends gets an [`Entry`] in `queue`, in the order sent; replies are written in
//! queue order only, so a pipeline split over several nodes still comes back in order. The loop:
//!
//! ```text
//!   ┌─▶ dispatch buffered requests (stops at a barrier, a hold, or the in-flight limit)
//!   │   write every reply that is ready, in order
//!   └── wait for: the front entry's reply │ a frame on the dedicated connection │ client bytes
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::pinned::Pinned;
use super::reply::ClientError;
use super::Context;
use crate::backend::{self, ConnKey, Node, Reply, Shared};
use crate::io::OutBuf;
use crate::resp::RequestScanner;
use crate::router::ReadState;

/// Runs a session to its end.
pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) {
    let local = stream.local_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let mut s = Session::new(id, peer, local, ctx);
    s.serve(&mut rd, &mut wr, &cancel).await;
    debug!("client closed");
}

/// Whether replies are sent (`CLIENT REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyMode {
    On,
    Off,
    /// Drop the next command's reply only.
    Skip,
}

/// What a queue entry waits for.
pub(super) enum Wait {
    /// Made by the proxy.
    Ready(Bytes),
    /// Replies from a shared connection.
    Upstream(oneshot::Receiver<Result<Reply, backend::Error>>),
    /// A reply computed by a task (blocking commands, WAIT).
    Task(oneshot::Receiver<Bytes>),
    /// One reply from the session's dedicated connection.
    Pinned,
}

/// Where an entry's commands went, for consistency bookkeeping and read retries.
pub(super) struct Sent {
    pub node: Arc<Node>,
    pub primary: bool,
    /// The request bytes of a batch of reads only, kept for one retry on the primary.
    pub retry: Option<Bytes>,
}

/// What to do once an entry's reply is known.
pub(super) enum Then {
    Nothing,
    /// Move the session to this connection key if the reply is not an error (SELECT, AUTH, HELLO AUTH).
    /// With `hello`, answer with a HELLO reply instead of the upstream's.
    SwitchKey {
        key: ConnKey,
        hello: Option<Option<Bytes>>,
    },
    /// Track the state of the dedicated connection.
    Effect(super::pinned::Effect),
}

/// One or more commands awaiting their replies, in order.
pub(super) struct Entry {
    pub wait: Wait,
    pub count: u32,
    pub silent: bool,
    pub sent: Option<Sent>,
    pub then: Then,
}

/// A reply as it arrives at the front of the queue.
pub(super) enum Outcome {
    Upstream(Result<Reply, backend::Error>),
    Bytes(Bytes),
}

/// Per-connection state.
pub(super) struct Session {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub ctx: Arc<Context>,
    /// State every upstream connection of this session must have.
    pub key: ConnKey,
    pub name: Option<Bytes>,
    pub reply_mode: ReplyMode,
    /// Shared connection per node for `key`: a session keeps one, so its commands to a node stay in order.
    pub conns: Vec<Shared>,
    pub reads: ReadState,
    pub pinned: Option<Pinned>,
    pub queue: VecDeque<Entry>,
    /// Commands in `queue`.
    pub inflight: usize,
    /// Dispatch nothing more until `queue` is empty (after SELECT, AUTH, blocking commands).
    pub hold: bool,
    /// Read no more; end once every reply is written.
    pub closing: bool,
    /// End now, after writing what is in `out`.
    pub close_now: bool,
    pub inbuf: BytesMut,
    pub scanner: RequestScanner,
    pub out: OutBuf,
}

impl Session {
    fn new(id: u64, peer: SocketAddr, local: Option<SocketAddr>, ctx: Arc<Context>) -> Session {
        let scanner = RequestScanner::new(ctx.limits);
        Session {
            id,
            peer,
            local,
            ctx,
            key: ConnKey::default(),
            name: None,
            reply_mode: ReplyMode::On,
            conns: Vec::new(),
            reads: ReadState::default(),
            pinned: None,
            queue: VecDeque::new(),
            inflight: 0,
            hold: false,
            closing: false,
            close_now: false,
            inbuf: BytesMut::new(),
            scanner,
            out: OutBuf::default(),
        }
    }

    async fn serve<R, W>(&mut self, rd: &mut R, wr: &mut W, cancel: &CancellationToken)
    where
        R: AsyncReadExt + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        loop {
            // A barrier may clear as soon as local replies are drained: dispatch again then.
            while self.dispatch().await {
                self.drain_ready();
                if !self.queue.is_empty() {
                    break;
                }
            }
            self.drain_ready();
            if !self.out.is_empty() && self.out.write_to(wr).await.is_err() {
                debug!("client stopped reading");
                return;
            }
            if self.close_now || (self.closing && self.queue.is_empty() && self.pinned.is_none()) {
                return;
            }
            let can_read = !self.closing
                && self.inbuf.len() < self.ctx.max_request_bytes
                && self.inflight < self.ctx.max_inflight;
            if can_read && self.inbuf.capacity() - self.inbuf.len() < 1024 {
                self.inbuf.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                // Shutdown: take no new commands, finish the replies owed.
                _ = cancel.cancelled(), if !self.closing => self.closing = true,
                // The oldest reply owed.
                outcome = front(&mut self.queue) => self.complete_front(outcome),
                // A reply or push on the dedicated connection.
                frame = next_pinned(&mut self.pinned) => self.on_pinned_frame(frame),
                // More requests.
                n = rd.read_buf(&mut self.inbuf), if can_read => match n {
                    Ok(0) | Err(_) => self.on_client_eof(),
                    Ok(_) => {}
                },
            }
        }
    }

    /// The client closed its side. Like Redis, drop anything that would wait indefinitely (blocking
    /// commands, pub/sub, transactions); otherwise deliver the replies owed and close.
    fn on_client_eof(&mut self) {
        debug!("client hung up");
        self.closing = true;
        if self.pinned.is_some() || self.queue.iter().any(|e| matches!(e.wait, Wait::Task(_))) {
            self.close_now = true;
        }
    }

    /// Completes every entry at the front whose reply is already there.
    pub(super) fn drain_ready(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            let outcome = match &mut front.wait {
                Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
                Wait::Upstream(rx) => match rx.try_recv() {
                    Ok(r) => Outcome::Upstream(r),
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Outcome::Upstream(Err(lost(front)))
                    }
                },
                Wait::Task(rx) => match rx.try_recv() {
                    Ok(b) => Outcome::Bytes(b),
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Outcome::Upstream(Err(lost(front)))
                    }
                },
                Wait::Pinned => return,
            };
            self.complete_front(outcome);
        }
    }

    /// Handles the reply of the front entry and pops it, or re-sends a failed read to the primary.
    pub(super) fn complete_front(&mut self, outcome: Outcome) {
        let Some(entry) = self.queue.front_mut() else {
            return;
        };
        let epoch = self.ctx.topo.current_epoch();
        if let Some(sent) = &mut entry.sent {
            // Reads a node could not serve (an error only that node gives, or a broken connection) are
            // safe to run again: try the primary once. Batches holding a write never get here.
            let failed = match &outcome {
                Outcome::Upstream(Ok(r)) => r.retryable && !sent.primary,
                Outcome::Upstream(Err(_)) => true,
                Outcome::Bytes(_) => false,
            };
            if failed {
                if let Some(bytes) = sent.retry.take() {
                    let (failed_node, was_primary) = (sent.node.id, sent.primary);
                    let count = entry.count;
                    if let Some(primary) = self.ctx.topo.load().primary.clone() {
                        self.reads.abandoned(failed_node, was_primary, count);
                        let conn = self.conn_for(&primary);
                        let rx = backend::submit(&conn, bytes, count);
                        self.reads.sent(primary.id, true, count);
                        let entry = self.queue.front_mut().expect("front exists: we hold it");
                        entry.wait = Wait::Upstream(rx);
                        entry.sent = Some(Sent {
                            node: primary,
                            primary: true,
                            retry: None,
                        });
                        return;
                    }
                }
            }
            self.reads
                .replied(sent.node.id, sent.primary, entry.count, epoch);
        }
        let entry = self.queue.pop_front().expect("front exists: checked above");
        self.inflight -= entry.count as usize;
        let bytes = match outcome {
            Outcome::Bytes(b) => b,
            Outcome::Upstream(Ok(r)) => r.bytes,
            Outcome::Upstream(Err(e)) => ClientError::Upstream(&e).frames(entry.count),
        };
        let bytes = match entry.then {
            Then::Nothing => bytes,
            Then::SwitchKey { key, hello } => {
                if bytes.first() == Some(&b'-') {
                    bytes
                } else {
                    self.set_key(key);
                    match hello {
                        None => bytes,
                        Some(name) => {
                            if name.is_some() {
                                self.name = name;
                            }
                            self.hello_reply()
                        }
                    }
                }
            }
            Then::Effect(effect) => {
                self.apply_effect(effect, &bytes);
                bytes
            }
        };
        if !entry.silent {
            self.out.push(bytes);
        }
    }

    /// Moves the session to another connection key; the cached connections belong to the old one.
    pub(super) fn set_key(&mut self, key: ConnKey) {
        if key != self.key {
            self.key = key;
            self.conns.clear();
        }
    }

    /// This session's shared connection to `node`.
    pub(super) fn conn_for(&mut self, node: &Arc<Node>) -> Shared {
        if let Some(c) = self.conns.iter().find(|c| c.node.id == node.id) {
            return c.clone();
        }
        let c = node.pool(&self.key).pick();
        self.conns.push(c.clone());
        c
    }

    /// Proxy-made HELLO reply in the session's protocol.
    pub(super) fn hello_reply(&self) -> Bytes {
        let version = self.ctx.topo.server_version.load();
        super::reply::Encoder {
            resp3: self.key.resp3,
        }
        .hello(self.id, &version)
    }
}

/// The error for an entry whose reply channel closed without an answer.
fn lost(entry: &Entry) -> backend::Error {
    let addr = entry.sent.as_ref().map(|s| s.node.addr.clone());
    backend::Error::Lost {
        addr: addr
            .unwrap_or_else(|| crate::config::Addr::parse("unknown:1").expect("valid literal")),
    }
}

/// Waits for the front entry's reply; never resolves if there is none to wait for here.
async fn front(queue: &mut VecDeque<Entry>) -> Outcome {
    let Some(entry) = queue.front_mut() else {
        return std::future::pending().await;
    };
    match &mut entry.wait {
        Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
        Wait::Upstream(rx) => match rx.await {
            Ok(r) => Outcome::Upstream(r),
            Err(_) => Outcome::Upstream(Err(lost(entry))),
        },
        Wait::Task(rx) => match rx.await {
            Ok(b) => Outcome::Bytes(b),
            Err(_) => Outcome::Upstream(Err(lost(entry))),
        },
        Wait::Pinned => std::future::pending().await,
    }
}

/// The next frame on the dedicated connection; never resolves without one.
async fn next_pinned(
    pinned: &mut Option<Pinned>,
) -> Result<(Bytes, crate::resp::ReplyFrame), backend::Error> {
    match pinned {
        Some(p) => p.conn.next_frame().await,
        None => std::future::pending().await,
    }
}
