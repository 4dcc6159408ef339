//! Downstream side: accept clients and run one session per connection.

mod budget;
mod clients;
mod cluster;
mod complete;
mod cursor;
mod dedicated;
mod dispatch;
mod facade;
mod gate;
mod input;
mod interrupt;
mod local;
mod monitor;
mod pinned;
mod queue;
mod redirect;
pub mod registry;
pub mod reply;
mod rewrite;
mod server;
mod session;
mod state;
mod tasks;
mod wake;

pub use facade::DEFAULT_NAME as FACADE_NAME;
#[doc(hidden)]
pub use pinned::fuzz_session_decisions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::command::SharedTable;
use crate::resp::Limits;
use crate::route::{Consistency, Fallback, ZoneAffinity};
use crate::topology::Topo;

/// Everything sessions share.
#[derive(Debug)]
pub struct Context {
    /// The live topology.
    pub topo: Arc<Topo>,
    /// The live command table.
    pub table: SharedTable,
    /// Read consistency.
    pub consistency: Consistency,
    /// No-replica behaviour.
    pub fallback: Fallback,
    /// Which zones' nodes reads prefer.
    pub zone_affinity: ZoneAffinity,
    /// Request scanner limits.
    pub limits: Limits,
    /// Per-client limit on bytes received and not yet forwarded.
    pub max_request_bytes: usize,
    /// Per-client limit on commands awaiting replies.
    pub max_inflight: usize,
    /// How long a write waits for a primary.
    pub write_hold: Duration,
    /// How long a read may take on one node before a retry elsewhere.
    pub read_timeout: Duration,
    /// How long a read may go unanswered on one node before it goes to another; `None`: automatic.
    read_hedge: Option<Duration>,
    /// How long a write may wait on a silent node before its client is told it may have run.
    pub write_timeout: Duration,
    /// Recent read latency, microseconds, smoothed (for the automatic hedge delay).
    read_latency_us: AtomicU64,
    /// Per-client limit on reply bytes waiting to be written.
    pub max_output: Option<usize>,
    /// Idle client timeout.
    pub idle_timeout: Option<Duration>,
    /// Most client connections.
    pub max_clients: usize,
    /// Answer as a Sentinel too, for this master name.
    pub sentinel_facade: Option<String>,
    /// Every client connection of this proxy (CLIENT LIST, KILL, PAUSE; MONITOR's feed).
    pub registry: registry::Registry,
    /// The output budget all clients share, and who draws on it.
    budget: Arc<budget::Budget>,
    /// Client connections open now (across workers).
    pub clients: std::sync::atomic::AtomicUsize,
    /// Proxy-side client authentication, if configured; replaced by a config reload.
    pub auth: arc_swap::ArcSwapOption<crate::auth::Auth>,
    /// The user of connections made while authentication is off: everything allowed.
    pub open_user: Arc<crate::auth::ClientUser>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Lag limits, replaced whole when the config is reloaded (shared with the prober).
    pub lag: Arc<arc_swap::ArcSwap<crate::topology::probe::LagLimits>>,
    /// Write acknowledgements and the split-brain guard.
    pub durability: Durability,
    next_id: AtomicU64,
}

/// What the configuration says about making writes durable on replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durability {
    /// Replicas that must acknowledge each write before its client gets the reply (`min_write_acks`,
    /// `write_ack_timeout_ms`); `None`: none.
    pub acks: Option<crate::upstream::Acks>,
    /// Per proxy user (by name), what replaces `acks` for that user's connections.
    pub user_acks: Vec<(String, Option<crate::upstream::Acks>)>,
    /// The split-brain guard (`min_replicas`, `min_replicas_max_lag_ms`).
    pub guard: crate::route::Guard,
}

impl Durability {
    /// The acknowledgements the writes of `user`'s connections wait for.
    pub fn acks_for(
        &self,
        user: Option<&crate::auth::ClientUser>,
    ) -> Option<crate::upstream::Acks> {
        match user {
            Some(u) => self
                .user_acks
                .iter()
                .find(|(name, _)| *name == u.name)
                .map_or(self.acks, |(_, a)| *a),
            None => self.acks,
        }
    }
}

/// What the configuration says about serving clients.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Read consistency.
    pub consistency: Consistency,
    /// No-replica behaviour.
    pub fallback: Fallback,
    /// Which zones' nodes reads prefer.
    pub zone_affinity: ZoneAffinity,
    /// Request scanner limits.
    pub limits: Limits,
    /// Per-client limit on bytes received and not yet forwarded.
    pub max_request_bytes: usize,
    /// Per-client limit on commands awaiting replies.
    pub max_inflight: usize,
    /// How long a write waits for a primary.
    pub write_hold: Duration,
    /// How long a read may take on one node before a retry elsewhere.
    pub read_timeout: Duration,
    /// How long a read may go unanswered on one node before it goes to another; `None`: automatic.
    pub read_hedge: Option<Duration>,
    /// How long a write may wait on a silent node before its client is told it may have run.
    pub write_timeout: Duration,
    /// Per-client limit on reply bytes waiting to be written.
    pub max_output: Option<usize>,
    /// Limit on reply bytes waiting to be written, over every client: past it the largest are closed.
    pub max_total_output: Option<usize>,
    /// Idle client timeout.
    pub idle_timeout: Option<Duration>,
    /// Most client connections.
    pub max_clients: usize,
    /// Answer as a Sentinel too, for this master name.
    pub sentinel_facade: Option<String>,
    /// Write acknowledgements and the split-brain guard.
    pub durability: Durability,
}

impl Context {
    /// A context; session ids start at 1. `auth`: proxy-side authentication, if configured.
    pub fn new(
        topo: Arc<Topo>,
        table: SharedTable,
        settings: Settings,
        auth: Option<Arc<crate::auth::Auth>>,
        metrics: Arc<crate::metrics::Metrics>,
        lag: Arc<arc_swap::ArcSwap<crate::topology::probe::LagLimits>>,
    ) -> Arc<Context> {
        let Settings {
            consistency,
            fallback,
            zone_affinity,
            limits,
            max_request_bytes,
            max_inflight,
            write_hold,
            read_timeout,
            read_hedge,
            write_timeout,
            max_output,
            max_total_output,
            idle_timeout,
            max_clients,
            sentinel_facade,
            durability,
        } = settings;
        Arc::new(Context {
            topo,
            table,
            consistency,
            fallback,
            zone_affinity,
            limits,
            max_request_bytes,
            max_inflight,
            write_hold,
            read_timeout,
            read_hedge,
            write_timeout,
            read_latency_us: AtomicU64::new(0),
            max_output,
            idle_timeout,
            max_clients,
            sentinel_facade,
            registry: registry::Registry::default(),
            budget: Arc::new(budget::Budget::new(
                max_total_output,
                metrics.client_output_bytes.clone(),
            )),
            clients: std::sync::atomic::AtomicUsize::new(0),
            auth: arc_swap::ArcSwapOption::new(auth),
            open_user: Arc::new(crate::auth::ClientUser {
                name: "default".into(),
                password: String::new(),
                authority: crate::auth::Authority::Write,
            }),
            metrics,
            lag,
            durability,
            next_id: AtomicU64::new(1),
        })
    }

    /// How long a batch on a shared connection may wait while its node sends nothing: `read_timeout_ms`
    /// for reads (then they go elsewhere), `write_timeout_ms` for anything else (then the client is told
    /// it may have run).
    pub(crate) fn timeout(&self, reads_only: bool) -> Duration {
        if reads_only {
            self.read_timeout
        } else {
            self.write_timeout
        }
    }

    /// How long a read may go unanswered on one node before it is sent to another: `read_hedge_ms`, or ten
    /// times the recent read latency, at least 20 ms and at most half the read timeout.
    pub(crate) fn hedge_delay(&self) -> Duration {
        self.read_hedge.unwrap_or_else(|| {
            let recent = Duration::from_micros(self.read_latency_us.load(Ordering::Relaxed));
            (recent * 10)
                .max(Duration::from_millis(20))
                .min(self.read_timeout / 2)
        })
    }

    /// Notes how long a read took, for the automatic hedge delay (a moving average over about 16 reads;
    /// racing updates lose a sample, which does not matter).
    pub(crate) fn read_took(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.read_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 15 + sample) / 16
        };
        self.read_latency_us.store(new, Ordering::Relaxed);
    }

    /// How reads are routed now (the lag limit may have been reloaded).
    pub(crate) fn policy(&self) -> crate::route::Policy {
        crate::route::Policy {
            consistency: self.consistency,
            fallback: self.fallback,
            max_lag: self.lag.load().max_lag,
            patience: self.read_timeout,
            zone_affinity: self.zone_affinity,
            guard: self.durability.guard,
        }
    }

    /// Who a new (or RESET) connection is: nobody until it authenticates, with auth on; else the open
    /// user.
    fn initial_user(&self) -> Option<Arc<crate::auth::ClientUser>> {
        self.auth.load().is_none().then(|| self.open_user.clone())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts clients until `cancel` fires. Each session runs on `tracker`. With `tls`, every client does a
/// TLS handshake first, in its session's task (never in this loop).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Server>>,
    ctx: Arc<Context>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            // Shutdown: stop accepting; sessions finish on their own.
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    // Past the limit a client gets Redis's own error and is closed. The place is taken
                    // here, not when the session starts: every connection waiting in the backlog is
                    // accepted before any session task runs.
                    let Some(slot) = ClientSlot::take(&ctx) else {
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            const FULL: &[u8] = b"-ERR max number of clients reached\r\n";
                            match tls {
                                None => {
                                    let _ = stream.write_all(FULL).await;
                                }
                                Some(tls) => {
                                    if let Ok(mut s) = tls.accept(stream).await {
                                        let _ = s.write_all(FULL).await;
                                        let _ = s.shutdown().await;
                                    }
                                }
                            }
                        });
                        ctx.metrics.rejected_clients.inc();
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = ctx.next_id();
                    let span = tracing::debug_span!("client", id, peer = %peer);
                    match &tls {
                        // The slot is moved into the task, and the session's future made inside it: a
                        // future passed in by value would be stored twice (3.5 KB more per idle client).
                        None => {
                            let (ctx, cancel) = (ctx.clone(), cancel.clone());
                            tracker.spawn(async move {
                                let _slot = slot;
                                session::run(stream, peer, id, ctx, cancel).await;
                            }.instrument(span))
                        }
                        Some(tls) => {
                            let (tls, ctx, cancel) = (tls.clone(), ctx.clone(), cancel.clone());
                            tracker.spawn(async move {
                                let _slot = slot;
                                run_tls(stream, peer, id, tls, ctx, cancel).await;
                            }.instrument(span))
                        }
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning, and say so
                    // once a second, not a hundred times.
                    if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(error = %e, "accept failed (out of file descriptors? see max_clients)");
                        last_warned = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// One of `max_clients` places, held from accept (TLS handshake included) until the connection ends.
struct ClientSlot(Arc<Context>);

impl ClientSlot {
    fn take(ctx: &Arc<Context>) -> Option<ClientSlot> {
        if ctx.clients.fetch_add(1, Ordering::Relaxed) >= ctx.max_clients {
            ctx.clients.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientSlot(ctx.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TLS client: the handshake (bounded by the connect timeout, abandoned at shutdown), then its session.
async fn run_tls(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    id: u64,
    tls: Arc<crate::tls::Server>,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) {
    let local = stream.local_addr().ok();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let stream = tokio::select! {
        // Shutdown: a client still shaking hands has nothing in flight.
        _ = cancel.cancelled() => return,
        r = tls.accept(stream) => match r {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
        },
    };
    let (mut rd, wr) = tokio::io::split(stream);
    // The session writes as to a socket and never flushes: see `WriteThrough`.
    let mut wr = crate::tls::WriteThrough::new(wr);
    session::run_io(&mut rd, &mut wr, (peer, local, fd), id, ctx, cancel).await;
    // close_notify, if the client still listens.
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}
