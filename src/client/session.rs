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
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::pinned::Pinned;
use super::reply::ClientError;
use super::wake::{Shutdown, WakeGate};
use super::Context;
use crate::io::OutBuf;
use crate::metrics::{BackendError, Kind};
use crate::resp::RequestScanner;
use crate::route::{retry, ReadState, ReadTarget};
use crate::topology::Generation;
use crate::upstream::{self, ConnKey, Node, Reply, Shared};

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
    run_io(&mut rd, &mut wr, peer, local, id, ctx, cancel).await;
}

/// Runs a session to its end over any byte stream (TLS: the halves of `tokio::io::split`). Bytes
/// `wr` reports written must be on their way, as on a socket: see `crate::tls::WriteThrough`.
pub(super) async fn run_io<R, W>(
    rd: &mut R,
    wr: &mut W,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    id: u64,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) where
    R: AsyncReadExt + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut s = Session::new(id, peer, local, ctx);
    s.serve(rd, wr, cancel).await;
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
    Upstream(oneshot::Receiver<Result<Reply, upstream::Error>>),
    /// A reply computed by a task (blocking commands, WAIT).
    Task(oneshot::Receiver<Bytes>),
    /// One reply from the session's dedicated connection.
    Pinned,
    /// Not sent anywhere now: waiting for a node to send it to (no primary during a failover). Later
    /// requests wait too, so order is kept.
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
    /// The node they were last sent to; `None` if never sent (no primary at the time).
    pub node: Option<Arc<Node>>,
    /// That node was the primary.
    pub primary: bool,
    /// The request bytes, kept while they may need sending again (shared-connection batches only).
    pub bytes: Option<Bytes>,
    /// Only reads: they may run again anywhere, even if they reached a node.
    pub reads_only: bool,
    /// Sends so far.
    pub attempts: u8,
    /// Failures on nodes the request reached (timeouts, broken connections, node errors).
    pub failures: u8,
    /// When the entry first could not be delivered: the start of its hold.
    pub held_since: Option<Instant>,
    /// A read still unanswered then is sent elsewhere.
    pub deadline: Option<Instant>,
    /// The node (id) that answered the whole batch READONLY, and its replies: it is never sent the batch
    /// again, even if the topology still names it primary (a script may write, then fake the error), and
    /// the client gets those replies if no other primary takes the batch within the hold.
    pub refused_by: Option<(u64, Bytes)>,
}

impl Sent {
    /// Commands sent once to `node`, never to be re-sent.
    pub fn once(node: Arc<Node>, primary: bool) -> Sent {
        Sent {
            node: Some(node),
            primary,
            bytes: None,
            reads_only: false,
            attempts: 1,
            failures: 0,
            held_since: None,
            deadline: None,
            refused_by: None,
        }
    }
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
}

/// What became of an entry that could not be delivered as it was.
enum Resend {
    /// Sent again; keep waiting.
    Sent,
    /// Waiting for a node to send it to.
    Held,
    /// No more tries: deliver the failure.
    GiveUp,
}

/// What the requests queued behind the front one did, as far as their replies tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Later {
    /// Nothing sent, only reads, or refused without running.
    None,
    /// A write still waits for its reply.
    Unknown,
    /// A write may have run.
    Written,
}

/// How often a held entry tries the current primary again when the topology has not changed (its
/// connection may just have been down for a moment).
const HOLD_POLL: Duration = Duration::from_millis(50);
/// Failures of one read batch on nodes it reached before its failure is delivered: one retry. A read
/// that is merely slow would time out again, and every retry runs it once more.
const MAX_READ_FAILURES: u8 = 2;

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
    /// The scanner holds requests to the limits for unauthenticated clients.
    pub scan_limited: bool,
    pub out: OutBuf,
    /// Topology changes, to wake held entries.
    pub topo_rx: watch::Receiver<Generation>,
    /// The primary this session last sent to: commands for a new primary wait until the old one has
    /// answered everything, so a failover never reorders a session's writes.
    pub last_primary: u64,
    /// What the request being dispatched does, for metrics.
    pub cur_kind: Kind,
    /// Checks read deadlines. One coarse interval per session instead of a timer per request: arming a
    /// timer per request costs a wake-up of the runtime (a system call) per command.
    pub deadline_tick: Option<tokio::time::Interval>,
    /// Polls `deadline_tick` only when its timer fired.
    pub tick_gate: WakeGate,
    /// When the client last sent something or took some of its replies (kept only with an idle timeout):
    /// as Redis's `lastinteraction`, a client that waited long for a reply is not idle once it gets it.
    pub last_active: Instant,
    /// Who the client authenticated as to the proxy (`None` until then, with proxy-side auth on).
    pub user: Option<Arc<crate::auth::ClientUser>>,
    /// Failed authentications in a row: each one answers slower.
    pub auth_failures: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.metrics.client_connections.dec();
        if self.pinned.is_some() {
            self.ctx.metrics.pinned_sessions.dec();
        }
    }
}

impl Session {
    /// Who a new (or RESET) connection is: nobody until it authenticates, with auth on; else the open user.
    pub(super) fn initial_user(&self) -> Option<Arc<crate::auth::ClientUser>> {
        initial_user(&self.ctx)
    }

    fn new(id: u64, peer: SocketAddr, local: Option<SocketAddr>, ctx: Arc<Context>) -> Session {
        let scanner = RequestScanner::new(ctx.limits);
        let topo_rx = ctx.topo.subscribe();
        let user = initial_user(&ctx);
        ctx.metrics.client_connections.inc();
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
            scan_limited: false,
            out: OutBuf::default(),
            topo_rx,
            last_primary: 0,
            cur_kind: Kind::Other,
            deadline_tick: None,
            tick_gate: WakeGate::default(),
            last_active: Instant::now(),
            user,
            auth_failures: 0,
        }
    }

    async fn serve<R, W>(&mut self, rd: &mut R, wr: &mut W, cancel: CancellationToken)
    where
        R: AsyncReadExt + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut shutdown = Shutdown::new(cancel);
        loop {
            // A barrier may clear as soon as local replies are drained: dispatch again then. A barrier
            // that holds with nothing queued would never clear; never spin on it.
            let mut rounds = 0;
            let mut freed = false;
            while self.dispatch().await {
                freed |= self.drain_ready();
                rounds += 1;
                if !self.queue.is_empty() {
                    break;
                }
                if rounds > 8 {
                    error!("dispatch waits with nothing in flight");
                    break;
                }
            }
            // Replies completed here free in-flight slots that dispatch above could not use: requests
            // already buffered must not wait for an event that may never come (the client may have sent
            // everything, and silenced replies add no output to write).
            freed |= self.drain_ready();
            if !self.out.is_empty() && !self.close_now {
                // Replies go out now if the socket takes them, instead of on the next turn of the select
                // below: a turn polls every arm, and this saves one per reply.
                let written = std::future::poll_fn(|cx| {
                    let write = std::pin::pin!(self.out.write_some(wr));
                    Poll::Ready(write.poll(cx))
                })
                .await;
                match written {
                    Poll::Ready(Err(_)) => {
                        debug!("client stopped reading");
                        return;
                    }
                    Poll::Ready(Ok(_)) => self.touch(),
                    Poll::Pending => {}
                }
            }
            if let Some(limit) = self.ctx.max_output {
                if self.out.len() > limit {
                    // The client does not read what it asked for: Redis's client-output-buffer-limit.
                    warn!(
                        pending = self.out.len(),
                        limit, "client output over max_client_output_bytes, closing"
                    );
                    self.ctx.metrics.clients_closed_by_limit.inc();
                    return;
                }
            }
            let done = self.closing && self.queue.is_empty() && self.pinned.is_none();
            if self.close_now || done {
                // Last replies (an error saying why, QUIT's +OK) go out if the client takes them soon.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.out.write_to(wr)).await;
                return;
            }
            if freed && !self.inbuf.is_empty() {
                continue;
            }
            // A client that does not take its replies is still read, as Redis reads it: many clients write
            // a whole pipeline before reading any reply, and would never get to read. What it can make the
            // proxy hold is bounded by max_client_output_bytes, past which it is disconnected.
            let can_read = !self.closing
                && self.inbuf.len() < self.ctx.max_request_bytes
                && self.inflight < self.ctx.max_inflight;
            if can_read && self.inbuf.capacity() - self.inbuf.len() < 1024 {
                // Idle clients get a small buffer (memory per idle connection is a target); busy ones a
                // larger one, and a large one is let go once drained.
                if self.inbuf.is_empty() && self.inbuf.capacity() > 64 * 1024 {
                    self.inbuf = BytesMut::new();
                }
                self.inbuf.reserve(if self.inbuf.is_empty() {
                    2048
                } else {
                    16 * 1024
                });
            }
            let deadline = self.queue.front().and_then(|e| match e.wait {
                Wait::Upstream(_) => e.sent.as_ref().and_then(|s| s.deadline),
                _ => None,
            });
            let idle =
                self.ctx.idle_timeout.is_some() && self.queue.is_empty() && self.pinned.is_none();
            let period = self.tick_period();
            tokio::select! {
                biased;
                // Replies owed, as fast as the client takes them. Written from here (not awaited outside
                // the select) so that replies keep arriving meanwhile and the output limit can be enforced.
                w = self.out.write_some(wr), if !self.out.is_empty() => match w {
                    Ok(_) => self.touch(),
                    Err(_) => {
                        debug!("client stopped reading");
                        return;
                    }
                },
                // Shutdown: take no new commands, finish the replies owed.
                _ = &mut shutdown, if !self.closing => self.closing = true,
                // The oldest reply owed.
                outcome = front(&mut self.queue, &mut self.topo_rx) => self.complete_front(outcome),
                // A read is at the front (has it been waiting too long?), or the client is idle (for too
                // long?).
                _ = tick(&mut self.deadline_tick, &mut self.tick_gate, period), if deadline.is_some() || idle => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| d <= now) {
                        self.complete_front(Outcome::TimedOut);
                    } else if idle && self.ctx.idle_timeout.is_some_and(|t| now.duration_since(self.last_active) >= t) {
                        debug!("client idle past client_idle_timeout_ms, closing");
                        self.ctx.metrics.clients_closed_by_limit.inc();
                        return;
                    }
                }
                // A reply or push on the dedicated connection.
                frame = next_pinned(&mut self.pinned, &self.ctx.topo) => self.on_pinned_frame(frame),
                // More requests.
                n = rd.read_buf(&mut self.inbuf), if can_read => match n {
                    Ok(0) | Err(_) => self.on_client_eof(),
                    Ok(_) => self.touch(),
                },
            }
        }
    }

    /// The client closed its side. Drop anything that would wait indefinitely (blocking commands, pub/sub,
    /// MONITOR); otherwise deliver the replies owed (a half-closed client still reads), then close.
    fn on_client_eof(&mut self) {
        debug!("client hung up");
        self.closing = true;
        let streaming = self.pinned.as_ref().is_some_and(|p| p.streaming());
        if streaming || self.queue.iter().any(|e| matches!(e.wait, Wait::Task(_))) {
            self.close_now = true;
        }
    }

    /// The client just did something: its idle time starts again.
    fn touch(&mut self) {
        if self.ctx.idle_timeout.is_some() {
            self.last_active = Instant::now();
        }
    }

    /// Completes every entry at the front whose reply is already there; true if there was one.
    pub(super) fn drain_ready(&mut self) -> bool {
        let mut any = false;
        while let Some(front) = self.queue.front_mut() {
            let outcome = match &mut front.wait {
                Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
                Wait::Done(_) => match front.wait.take_done() {
                    Some(r) => Outcome::Upstream(r),
                    None => return any,
                },
                Wait::Upstream(rx) => match rx.try_recv() {
                    Ok(r) => Outcome::Upstream(r),
                    Err(oneshot::error::TryRecvError::Empty) => return any,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Outcome::Upstream(Err(lost(front)))
                    }
                },
                Wait::Task(rx) => match rx.try_recv() {
                    Ok(b) => Outcome::Bytes(b),
                    Err(oneshot::error::TryRecvError::Empty) => return any,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Outcome::Upstream(Err(lost(front)))
                    }
                },
                Wait::Pinned | Wait::Held => return any,
            };
            self.complete_front(outcome);
            any = true;
        }
        any
    }

    /// Handles the reply of the front entry and pops it; or sends it again if it failed in a way that allows
    /// that (reads that failed anywhere, writes that never ran), or holds it for a primary.
    pub(super) fn complete_front(&mut self, outcome: Outcome) {
        let Some(entry) = self.queue.front_mut() else {
            return;
        };
        let count = entry.count;
        let mut outcome = outcome;
        if let Some(sent) = &entry.sent {
            if let Some(node) = &sent.node {
                match &outcome {
                    Outcome::Upstream(Ok(_)) => node.record_success(),
                    Outcome::Upstream(Err(_)) => node.record_failure(),
                    Outcome::TimedOut => {
                        node.record_failure();
                        node.metrics.load().error(BackendError::Timeout);
                    }
                    Outcome::Bytes(_) | Outcome::Wake => {}
                }
            }
            let attempt = match &outcome {
                Outcome::Upstream(Ok(r)) => Some(retry::Attempt::Replied(r)),
                Outcome::Upstream(Err(e)) => Some(retry::Attempt::Failed(e)),
                Outcome::TimedOut => Some(retry::Attempt::TimedOut),
                Outcome::Wake => Some(retry::Attempt::Woken),
                Outcome::Bytes(_) => None,
            };
            let batch = retry::Batch {
                reads_only: sent.reads_only,
                count,
                resendable: sent.bytes.is_some(),
            };
            let next = attempt.map_or(retry::Next::Deliver, |a| retry::choose(a, batch));
            if let retry::Next::Again { reached, refused } = next {
                let refusal = match (&outcome, refused) {
                    (Outcome::Upstream(Ok(r)), true) => Some(r.bytes.clone()),
                    _ => None,
                };
                match self.resend_front(reached, refusal) {
                    Resend::Sent | Resend::Held => return,
                    Resend::GiveUp => match outcome {
                        Outcome::Wake => {
                            let refused = self.queue.front().and_then(|e| {
                                e.sent.as_ref()?.refused_by.as_ref().map(|(_, b)| b.clone())
                            });
                            let held = self.ctx.write_hold.as_millis() as u64;
                            outcome = Outcome::Bytes(refused.unwrap_or_else(|| {
                                ClientError::NoPrimaryAfter(held).frames(count)
                            }));
                        }
                        Outcome::TimedOut => {
                            outcome = Outcome::Bytes(ClientError::ReadTimedOut.frames(count));
                        }
                        _ => {}
                    },
                }
            }
        }
        let epoch = self.ctx.topo.current_epoch();
        let entry = self.queue.pop_front().expect("front exists: checked above");
        if let Some(Sent {
            node: Some(node),
            primary,
            ..
        }) = &entry.sent
        {
            if !matches!(entry.wait, Wait::Held) {
                self.reads.replied(node.id, *primary, count, epoch);
            }
        }
        self.inflight -= count as usize;
        if let Some(started) = entry.started {
            let seconds = started.elapsed().as_secs_f64();
            for (kind, n) in [Kind::Read, Kind::Write, Kind::Other]
                .into_iter()
                .zip(entry.kinds)
            {
                for _ in 0..n {
                    self.ctx.metrics.duration(kind, seconds);
                }
            }
        }
        let bytes = match outcome {
            Outcome::Bytes(b) => b,
            Outcome::Upstream(Ok(r)) => r.bytes,
            Outcome::Upstream(Err(e)) => ClientError::Upstream(&e).frames(count),
            Outcome::TimedOut | Outcome::Wake => ClientError::NoPrimaryAfter(0).frames(count),
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
            Then::Effect(super::pinned::Effect::Replace(frame)) => frame,
            Then::Effect(effect) => {
                self.apply_effect(effect, &bytes);
                bytes
            }
        };
        if !entry.silent {
            self.out.push(bytes);
        }
    }

    /// Sends the front entry again: reads to any node the router allows but the one that failed them,
    /// writes to the current primary. With nowhere to send, the entry is held until the topology changes
    /// or a moment passes, for at most `write_hold_ms` from its first failure.
    fn resend_front(&mut self, reached: bool, refusal: Option<Bytes>) -> Resend {
        let now = Instant::now();
        let topo = self.ctx.topo.snapshot();
        let (consistency, fallback, hold, read_timeout) = (
            self.ctx.consistency,
            self.ctx.fallback,
            self.ctx.write_hold,
            self.ctx.read_timeout,
        );
        let entry = self.queue.front_mut().expect("called with a front entry");
        let count = entry.count;
        let was_held = matches!(entry.wait, Wait::Held);
        let sent = entry
            .sent
            .as_mut()
            .expect("called for an entry with a send record");
        let failed = if was_held { None } else { sent.node.clone() };
        if let (Some(node), Some(replies)) = (&failed, refusal) {
            sent.refused_by = Some((node.id, replies));
        }
        if let Some(node) = &failed {
            // The failed attempt is over for consistency bookkeeping.
            self.reads.abandoned(node.id, sent.primary, count);
        }
        let since = *sent.held_since.get_or_insert(now);
        sent.failures += u8::from(reached);
        let spent = now.duration_since(since) > hold
            || (sent.reads_only && sent.failures >= MAX_READ_FAILURES);
        entry.wait = Wait::Held;
        // Sending it again after later commands of this session may have written would let it see (or,
        // for a write, overtake) them: deliver the failure instead. While a later write's reply is still
        // out, wait for it: a demoted primary refuses every batch in flight, and those did not write.
        let later = if spent {
            Later::Written
        } else {
            self.later_writes()
        };
        let entry = self.queue.front_mut().expect("called with a front entry");
        let sent = entry
            .sent
            .as_mut()
            .expect("called for an entry with a send record");
        let target = match later {
            Later::Written => return Resend::GiveUp,
            // Only a write waits for the later write's verdict; a read's failure is delivered now, as
            // its own error (waiting would turn it into a late hold error).
            Later::Unknown if sent.reads_only => return Resend::GiveUp,
            Later::Unknown => None,
            Later::None if sent.reads_only => {
                let avoid = failed.as_ref().map(|n| n.id);
                match self
                    .reads
                    .route_avoiding(&topo, consistency, fallback, avoid)
                {
                    ReadTarget::Replica(n) => Some((n, false)),
                    ReadTarget::Primary(_) => topo.primary().cloned().map(|p| (p, true)),
                    ReadTarget::Refuse(_) => None,
                }
            }
            Later::None if self.ctx.topo.writes_held() => None,
            Later::None => topo.primary().cloned().map(|p| (p, true)),
        };
        // The node that just failed gets another try only after a pause (as a held entry), so a dead
        // primary is not hammered while the failover runs.
        let target = target.filter(|(n, _)| {
            failed.as_ref().is_none_or(|f| f.id != n.id)
                && sent.refused_by.as_ref().is_none_or(|(id, _)| *id != n.id)
        });
        let Some((node, primary)) = target else {
            entry.wait = Wait::Held;
            self.hold = true;
            if !was_held {
                self.ctx.metrics.writes_held.inc();
            }
            return Resend::Held;
        };
        if was_held {
            self.ctx
                .metrics
                .write_hold_seconds
                .observe(now.duration_since(since).as_secs_f64());
        }
        if sent.reads_only && !was_held {
            self.ctx.metrics.read_retries.inc();
        }
        let bytes = sent.bytes.clone().expect("resent entries keep their bytes");
        sent.attempts = sent.attempts.saturating_add(1);
        sent.deadline = sent.reads_only.then(|| now + read_timeout);
        sent.node = Some(node.clone());
        sent.primary = primary;
        let conn = self.conn_for(&node);
        let rx = upstream::submit(&conn, bytes, count);
        let entry = self.queue.front_mut().expect("front exists: we hold it");
        entry.wait = Wait::Upstream(rx);
        self.reads.sent(node.id, primary, count);
        if primary {
            self.last_primary = node.id;
        }
        Resend::Sent
    }

    /// Whether a request queued after the front one may have changed data: it was sent (or its reply
    /// says it ran) and is not only reads. Replies already in are taken from their channels to tell.
    fn later_writes(&mut self) -> Later {
        let mut later = Later::None;
        for e in self.queue.iter_mut().skip(1) {
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
        let c = node.pool(&self.key).pick(node);
        self.conns.push(c.clone());
        c
    }

    /// Period of the deadline and idle checks.
    fn tick_period(&self) -> Duration {
        let shortest = match self.ctx.idle_timeout {
            Some(idle) => idle.min(self.ctx.read_timeout),
            None => self.ctx.read_timeout,
        };
        (shortest / 4).max(Duration::from_millis(5))
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

/// Waits for the front entry's reply; never resolves if there is none to wait for here.
async fn front(queue: &mut VecDeque<Entry>, topo: &mut watch::Receiver<Generation>) -> Outcome {
    let Some(entry) = queue.front_mut() else {
        return std::future::pending().await;
    };
    match &mut entry.wait {
        Wait::Ready(b) => Outcome::Bytes(std::mem::take(b)),
        Wait::Done(_) => match entry.wait.take_done() {
            Some(r) => Outcome::Upstream(r),
            None => std::future::pending().await,
        },
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

/// The next tick of the session's deadline check, every quarter of the shortest timeout: a stuck read
/// (or an idle client) is noticed within 1.25 times the timeout.
async fn tick(interval: &mut Option<tokio::time::Interval>, gate: &mut WakeGate, period: Duration) {
    let interval = interval.get_or_insert_with(|| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    std::future::poll_fn(|cx| gate.poll_with(cx, |cx| interval.poll_tick(cx))).await;
}

/// The next frame on the dedicated connection; never resolves without one. Fails once the topology
/// names another primary than the connection's node: nothing more may be written there.
async fn next_pinned(
    pinned: &mut Option<Pinned>,
    topo: &crate::topology::Topo,
) -> Result<(Bytes, crate::resp::ReplyFrame), upstream::Error> {
    let Some(p) = pinned else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            frame = p.conn.next_frame() => return frame,
            changed = p.topo_rx.changed() => {
                if changed.is_err() {
                    // The topology is gone (shutdown): only the connection matters now.
                    return p.conn.next_frame().await;
                }
                let node = &p.conn.node;
                if topo.snapshot().primary().map(|n| n.id) != Some(node.id) {
                    return Err(upstream::Error::NotPrimary { addr: node.addr.clone() });
                }
            }
        }
    }
}

fn initial_user(ctx: &Context) -> Option<Arc<crate::auth::ClientUser>> {
    ctx.auth.load().is_none().then(|| ctx.open_user.clone())
}
