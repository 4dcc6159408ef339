//! One client connection: its parts, and the loop that drives them.
//!
//! ```text
//!   ┌─▶ dispatch buffered requests (stops at a barrier, a hold, or the in-flight limit)
//!   │   write every reply that is ready, in order
//!   └── wait for: the front entry's reply │ a frame on the dedicated connection │ client bytes │
//!       a held request's chance to go (the topology changed, or a moment passed) │ a deadline
//! ```
//!
//! The parts, each in its module: the input ([`super::input`]), the connection's state
//! ([`super::state`]), the ordered reply queue ([`super::queue`]), and the dedicated connection
//! ([`super::pinned`]). Requests are routed in [`super::dispatch`], replies completed in
//! [`super::complete`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::input::Input;
use super::pinned::Pinned;
use super::queue::{Outcome, Queue, HOLD_POLL};
use super::state::State;
use super::wake::{Shutdown, WakeGate};
use super::Context;
use crate::io::OutBuf;
use crate::metrics::Kind;
use crate::resp::ReplyFrame;
use crate::topology::Generation;
use crate::upstream;

/// Runs a session to its end.
pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) {
    let local = stream.local_addr().ok();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (mut rd, mut wr) = stream.into_split();
    run_io(&mut rd, &mut wr, (peer, local, fd), id, ctx, cancel).await;
}

/// Runs a session to its end over any byte stream (TLS: the halves of `tokio::io::split`). Bytes
/// `wr` reports written must be on their way, as on a socket: see `crate::tls::WriteThrough`. `conn`:
/// the client's address, the proxy's, and the socket's descriptor.
pub(super) async fn run_io<R, W>(
    rd: &mut R,
    wr: &mut W,
    conn: (SocketAddr, Option<SocketAddr>, i32),
    id: u64,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) where
    R: AsyncReadExt + Unpin,
    W: AsyncWrite + Unpin,
{
    let (peer, local, fd) = conn;
    let mut s = Session::new(id, peer, local, fd, ctx);
    s.serve(rd, wr, cancel).await;
    debug!("client closed");
}

/// Whether the session goes on taking requests, and when it ends.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// Dispatch nothing more until the queue is empty (after SELECT, AUTH, blocking commands).
    pub hold: bool,
    /// The request at the front of the input waits for `CLIENT PAUSE` to end.
    pub paused: bool,
    /// Read no more; end once every reply is written.
    pub closing: bool,
    /// End now, after writing what is in `out`.
    pub close_now: bool,
    /// The request at the front of the input has nowhere to go yet (no primary, or writes held), since
    /// then: it waits at most `write_hold_ms`.
    pub parked_since: Option<Instant>,
}

/// One client connection.
pub(super) struct Session {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub ctx: Arc<Context>,
    pub input: Input,
    pub state: State,
    pub queue: Queue,
    pub out: OutBuf,
    pub pinned: Option<Pinned>,
    pub flow: Flow,
    /// Topology changes, to wake held entries and parked requests.
    pub topo_rx: watch::Receiver<Generation>,
    park_rx: watch::Receiver<Generation>,
    /// What the request being dispatched does, for metrics.
    pub cur_kind: Kind,
    /// The acknowledgements the request being dispatched waits for, if it may write (see
    /// `Durability::acks_for`).
    pub cur_acks: Option<crate::upstream::Acks>,
    /// The command being dispatched may write (its class, or a script or unknown command).
    pub cur_writes: bool,
    /// Checks read deadlines and idleness. One coarse interval per session instead of a timer per
    /// request: arming a timer per request costs a wake-up of the runtime (a system call) per command.
    deadline_tick: Option<tokio::time::Interval>,
    /// Polls `deadline_tick` only when its timer fired.
    tick_gate: WakeGate,
    /// Fires when the front read on a replica is due to be hedged; made on first use, then reset.
    hedge: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// When the client last sent something or took some of its replies (kept only with an idle timeout):
    /// as Redis's `lastinteraction`, a client that waited long for a reply is not idle once it gets it.
    last_active: Instant,
    /// This connection in the proxy's registry of clients.
    pub handle: Arc<super::registry::Handle>,
    /// What the registry last showed of this connection.
    pub shown: super::registry::Shown,
    /// MONITOR's feed, once the client asked for it.
    pub monitor: Option<tokio::sync::broadcast::Receiver<Bytes>>,
    /// The upstream client id of the dedicated connection last shown in the registry.
    pub shown_pinned: Option<u64>,
    /// Its draw on the output budget all clients share.
    charge: super::budget::Charge,
    /// A command split over cluster shards whose parts are being answered: their replies so far, and
    /// whether any part was silenced (`CLIENT REPLY`).
    pub merging: Option<(super::cluster::merge::Merging, bool)>,
    /// In front of a cluster: `MULTI` was answered here, its shard not known yet (see `cluster`).
    pub deferred_multi: bool,
    /// The next `MULTI` on the dedicated connection was already answered to the client: its reply is
    /// dropped.
    pub swallow_multi: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.registry.remove(self.id);
        if self.monitor.is_some() {
            self.ctx.registry.unmonitor();
        }
        self.ctx.metrics.client_connections.dec();
        if self.pinned.is_some() {
            self.ctx.metrics.pinned_sessions.dec();
        }
    }
}

/// How a turn of the loop ended.
enum Turn {
    /// Wait for something to happen.
    Wait,
    /// More can be done now.
    Again,
    /// The session is over.
    End,
}

impl Session {
    fn new(
        id: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        fd: i32,
        ctx: Arc<Context>,
    ) -> Session {
        ctx.metrics.client_connections.inc();
        let handle = ctx.registry.register(id, peer, local, fd);
        let state = State::new(ctx.initial_user());
        let shown = super::registry::Shown {
            user: state.user.clone(),
            ..Default::default()
        };
        handle.show(shown.clone());
        Session {
            handle,
            shown,
            monitor: None,
            shown_pinned: None,
            id,
            peer,
            local,
            input: Input::new(ctx.limits),
            state,
            queue: Queue::default(),
            out: OutBuf::default(),
            pinned: None,
            flow: Flow::default(),
            topo_rx: ctx.topo.subscribe(),
            park_rx: ctx.topo.subscribe(),
            cur_kind: Kind::Other,
            cur_acks: None,
            cur_writes: false,
            deadline_tick: None,
            tick_gate: WakeGate::default(),
            hedge: None,
            last_active: Instant::now(),
            charge: ctx.budget.charge(id),
            merging: None,
            deferred_multi: false,
            swallow_multi: false,
            ctx,
        }
    }

    async fn serve<R, W>(&mut self, rd: &mut R, wr: &mut W, cancel: CancellationToken)
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut shutdown = Shutdown::new(cancel);
        loop {
            match self.turn(wr).await {
                Turn::End => return,
                Turn::Again => continue,
                Turn::Wait => {}
            }
            if !self.next_event(rd, wr, &mut shutdown).await {
                return;
            }
        }
    }

    /// Dispatches what can be, completes the replies that are in, and writes what the client takes now.
    async fn turn<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Turn {
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
        if !self.out.is_empty() && !self.flow.close_now {
            // Replies go out now if the socket takes them, instead of on the next turn of the select
            // in `next_event`: a turn polls every arm, and this saves one per reply.
            let written = std::future::poll_fn(|cx| {
                let write = std::pin::pin!(self.out.write_some(wr));
                Poll::Ready(write.poll(cx))
            })
            .await;
            match written {
                Poll::Ready(Err(_)) => {
                    debug!("client stopped reading");
                    return Turn::End;
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
                return Turn::End;
            }
        }
        self.charge.set(self.out.len());
        if self.charge.is_evicted() {
            self.evicted();
            return Turn::End;
        }
        // A closing session sends nothing more on its dedicated connection once its input is used up:
        // what still holds the connection (a subscription whose confirmation is a RESP3 push not yet
        // arrived, MULTI without EXEC, WATCH) waits for commands that will never come. Dropping the
        // connection closes it, and Redis discards the transaction and the subscriptions.
        let done = self.flow.closing
            && self.queue.is_empty()
            && (self.pinned.is_none() || self.input.is_empty())
            && self.flow.parked_since.is_none();
        self.publish();
        if self.flow.close_now || done {
            // Last replies (an error saying why, QUIT's +OK) go out if the client takes them soon.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.out.write_to(wr)).await;
            return Turn::End;
        }
        if freed && !self.input.is_empty() {
            return Turn::Again;
        }
        Turn::Wait
    }

    /// Waits for the next thing to happen and handles it; false if the session is over.
    async fn next_event<R, W>(&mut self, rd: &mut R, wr: &mut W, shutdown: &mut Shutdown) -> bool
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWrite + Unpin,
    {
        // A client that does not take its replies is still read, as Redis reads it: many clients write
        // a whole pipeline before reading any reply, and would never get to read. What it can make the
        // proxy hold is bounded by max_client_output_bytes, past which it is disconnected.
        let can_read = !self.flow.closing
            && self.input.len() < self.ctx.max_request_bytes
            && self.queue.inflight() < self.ctx.max_inflight;
        if can_read {
            self.input.make_room();
        }
        let deadline = self.queue.deadline();
        let idle = self.ctx.idle_timeout.is_some()
            && self.queue.is_empty()
            && self.pinned.is_none()
            && self.monitor.is_none()
            && self.flow.parked_since.is_none();
        let parked = self.flow.parked_since.is_some() || self.flow.paused;
        let period = self.tick_period();
        let hedge_at = self.queue.hedge_at();
        if let Some(at) = hedge_at {
            arm(&mut self.hedge, at);
        }
        tokio::select! {
            biased;
            // Replies owed, as fast as the client takes them. Written from here (not awaited outside
            // the select) so that replies keep arriving meanwhile and the output limit can be enforced.
            w = self.out.write_some(wr), if !self.out.is_empty() => match w {
                Ok(_) => self.touch(),
                Err(_) => {
                    debug!("client stopped reading");
                    return false;
                }
            },
            // Shutdown: take no new commands, finish the replies owed.
            _ = &mut *shutdown, if !self.flow.closing => self.flow.closing = true,
            // CLIENT KILL from another client: the connection ends now, as in Redis.
            _ = self.handle.killed() => {
                debug!("client killed (CLIENT KILL)");
                return false;
            }
            // A line for MONITOR.
            line = super::monitor::next_line(&mut self.monitor) => self.out.push(line),
            // The replies waiting for all clients passed the budget, and this client holds the most.
            _ = self.charge.evicted() => {
                self.evicted();
                return false;
            }
            // The oldest reply owed.
            outcome = self.queue.next(&mut self.topo_rx) => self.complete_front(outcome),
            // A read is at the front (has it been waiting too long?), or the client is idle (for too
            // long?).
            _ = tick(&mut self.deadline_tick, &mut self.tick_gate, period), if deadline.is_some() || idle => {
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    self.front_overdue(now);
                } else if idle && self.ctx.idle_timeout.is_some_and(|t| now.duration_since(self.last_active) >= t) {
                    debug!("client idle past client_idle_timeout_ms, closing");
                    self.ctx.metrics.clients_closed_by_limit.inc();
                    return false;
                }
            }
            // The front read on a replica has waited past its hedge delay.
            _ = fired(&mut self.hedge), if hedge_at.is_some() => self.complete_front(Outcome::Hedge),
            // A reply or push on the dedicated connection.
            frame = next_pinned(&mut self.pinned) => self.on_pinned_frame(frame),
            // A parked request may have somewhere to go now: dispatch looks again.
            _ = topology_or_poll(&mut self.park_rx), if parked => {}
            // More requests.
            n = rd.read_buf(self.input.buf_mut()), if can_read => match n {
                Ok(0) | Err(_) => self.on_client_eof(),
                Ok(_) => {
                    self.handle.touch();
                    self.touch();
                }
            },
        }
        true
    }

    /// The client closed its side. Drop anything that would wait indefinitely (blocking commands, pub/sub,
    /// MONITOR); otherwise deliver the replies owed (a half-closed client still reads), then close.
    fn on_client_eof(&mut self) {
        debug!("client hung up");
        self.flow.closing = true;
        let streaming =
            self.pinned.as_ref().is_some_and(|p| p.streaming()) || self.monitor.is_some();
        if streaming || self.queue.has_task() {
            self.flow.close_now = true;
        }
    }

    /// Says why the session ends: chosen to make room in the output budget.
    fn evicted(&self) {
        warn!(
            pending = self.out.len(),
            "client output among the largest past max_total_output_bytes, closing"
        );
        self.ctx.metrics.clients_evicted.inc();
    }

    /// The client just did something: its idle time starts again.
    fn touch(&mut self) {
        if self.ctx.idle_timeout.is_some() {
            self.last_active = Instant::now();
        }
    }

    /// Period of the deadline and idle checks.
    fn tick_period(&self) -> Duration {
        let shortest = match self.ctx.idle_timeout {
            Some(idle) => idle.min(self.ctx.read_timeout),
            None => self.ctx.read_timeout,
        };
        (shortest / 4).max(Duration::from_millis(5))
    }

    /// Marks the current topology as seen by the parked request, so only a later change wakes it.
    pub(super) fn mark_topology_seen(&mut self) {
        self.park_rx.borrow_and_update();
    }

    /// Proxy-made HELLO reply in the session's protocol.
    pub(super) fn hello_reply(&self) -> Bytes {
        super::local::hello_reply(self.state.key.resp3, &self.who())
    }

    /// Who the client is, for the commands about its connection.
    pub(super) fn who(&self) -> super::local::Who {
        super::local::Who {
            id: self.id,
            server: self.ctx.topo.server.load_full(),
        }
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

/// Sets `timer` to fire at `at`: one timer per session, moved rather than made again.
fn arm(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>, at: Instant) {
    let at = tokio::time::Instant::from_std(at);
    match timer {
        Some(t) if t.deadline() == at => {}
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Resolves when `timer` fires; never without one.
async fn fired(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the topology changes, or after a moment (the primary's connection may just have been
/// down for a moment).
async fn topology_or_poll(topo: &mut watch::Receiver<Generation>) {
    tokio::select! {
        _ = topo.changed() => {}
        _ = tokio::time::sleep(HOLD_POLL) => {}
    }
}

/// The next frame on the dedicated connection; never resolves without one. Fails once the topology
/// names another primary than the connection's node: nothing more may be written there.
async fn next_pinned(pinned: &mut Option<Pinned>) -> Result<(Bytes, ReplyFrame), upstream::Error> {
    let Some(p) = pinned else {
        return std::future::pending().await;
    };
    let replaced = |node: &upstream::Node| {
        Err(upstream::Error::NotPrimary {
            addr: node.addr.clone(),
        })
    };
    loop {
        tokio::select! {
            frame = p.conn.next_frame() => {
                // Sent after another node replaced its node as the primary (the frame and the change
                // came together): a reply from a former primary is never passed on as a success.
                if !p.conn.node.is_primary() {
                    return replaced(&p.conn.node);
                }
                return frame;
            }
            changed = p.topo_rx.changed() => {
                if changed.is_err() {
                    // The topology is gone (shutdown): only the connection matters now.
                    return p.conn.next_frame().await;
                }
                // Another node is the primary now. (No primary at all replaces nobody: the same node
                // may come back, and the session waits for it.)
                if !p.conn.node.is_primary() {
                    return replaced(&p.conn.node);
                }
            }
        }
    }
}
