//! redsplit: a replication-aware Redis proxy. Writes go to the primary, reads to replicas within a lag
//! limit, and every client sees its own writes and never reads older data than it has already read.
//!
//! Module map, in request order:
//!
//! - [`client`]: accept a connection and run its session: the input, the connection's state, the gate
//!   (authentication, secrets), the ordered reply queue, local commands, the dedicated connection; in
//!   front of a cluster, routing by slot, commands split over shards and merged, redirects followed
//! - [`resp`]: find request and reply frames (hand-written hot path); whole values off the hot path
//! - [`command`]: classify a command (read, write, blocking, connection state) from the command table
//! - [`route`]: where a command goes (`plan`, and `writer`, the one place writes find the primary),
//!   where a read goes (lag, read-your-writes, monotonic reads, balancing), and what a node's replies
//!   mean for their batch (`retry`: the rule that a write that may have run is never sent again)
//! - [`upstream`]: connections to nodes, shared and pipelined or dedicated; the verdict on each reply
//!   frame
//! - [`topology`]: immutable snapshots of shards (a primary and its replicas; in front of a Redis Cluster,
//!   one per slot range, with the slot map), discovery by identity, Sentinel, Cluster, the prober and lag
//! - [`node`]: what a node is (address, run id, replication history, zone) and its measured health
//!
//! Around them: [`config`] (file and flags, parsed into types that cannot be invalid), [`admin`] (HTTP,
//! switchover), [`reload`] (SIGHUP), [`embedded`] (local Redis servers for trying the proxy out),
//! [`metrics`], [`auth`] (client users), [`io`] (output buffering), [`tls`] (certificates for both sides,
//! reloaded on SIGHUP).
//!
//! Dependencies point down: `node`, `resp`, `io`, `metrics` at the bottom, then `tls` and `command`,
//! `upstream`, `topology`, `route`, `client`, and the application (`config`, `embedded`, `admin`,
//! `reload`, this file) on top. `tests/layers.rs` fails on an import that points up.

pub mod admin;
pub mod auth;
pub mod client;
pub mod command;
pub mod config;
pub mod embedded;
pub mod io;
pub mod metrics;
pub mod node;
pub mod reload;
pub mod resp;
pub mod route;
pub mod tls;
pub mod topology;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Source};
use crate::topology::Topo;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address is taken or not ours. The operator's configuration is at fault.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded Redis servers did not start (redis-server missing, no free ports).
    #[error("cannot start the embedded Redis servers")]
    Embedded(#[source] std::io::Error),
    /// A worker thread could not be started (out of threads or memory).
    #[error("cannot start a worker thread")]
    Worker(#[source] std::io::Error),
    /// A metric could not be registered (a bug: names clash).
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    /// A TLS certificate, key or CA file could not be used. The operator's files are at fault.
    #[error("cannot set up TLS")]
    Tls(#[source] tls::Problems),
}

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where clients connect over TLS, if configured.
    pub tls_listen: Option<SocketAddr>,
    /// Where the admin HTTP server listens.
    pub admin: SocketAddr,
    /// The live topology.
    pub topo: Arc<Topo>,
    /// The live command table.
    pub table: command::SharedTable,
    /// The servers started in embedded mode.
    pub embedded: Option<embedded::Cluster>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Each worker thread's sessions.
    sessions: Vec<TaskTracker>,
    grace: std::time::Duration,
    /// What a config reload can change.
    reloader: reload::Reloader,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Worker threads stop accepting and end once their sessions have.
        self.cancel.cancel();
    }
}

impl Proxy {
    /// Binds the listeners, publishes the first topology, and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(metrics::Metrics::new(&registry).map_err(StartError::Metrics)?);
        let tls = Tls::load(&config)?;
        let (settings, sentinel_settings) = upstream_settings(&config, &metrics, &tls);
        let embedded = start_embedded(&config.source).await?;
        let source = resolve_source(&config.source, embedded.as_ref());
        let listeners = Listeners::bind(&config).await?;
        let topo = Topo::new(settings);
        let map = topology::AddressMap::new(config.address_map.clone());
        let table: command::SharedTable =
            Arc::new(ArcSwap::from_pointee(command::Table::builtin()));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let lag = Arc::new(ArcSwap::from_pointee(topology::probe::LagLimits {
            max_lag: config.max_lag,
            max_lag_bytes: config.max_lag_bytes,
        }));
        topology::probe::spawn(
            topo.clone(),
            table.clone(),
            topology::probe::ProbeConfig {
                interval: config.probe_interval,
                limits: lag.clone(),
                refresh_commands: config.refresh_commands,
                write_hold: config.write_hold,
            },
            cancel.clone(),
            &tracker,
        );
        let mut first = topo.subscribe();
        let runner = reload::SourceRunner {
            topo: topo.clone(),
            map: map.clone(),
            interval: config.discovery_interval,
            settle: config.max_lag * 2 + std::time::Duration::from_secs(1),
            sentinel_settings,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        };
        let admin_state = admin::AdminState::new(
            topo.clone(),
            runner.switchover(&source),
            map,
            config.write_hold,
            registry,
            admin::Guard {
                token: config.admin_token.clone(),
                loopback: listeners.addrs.admin.ip().is_loopback(),
            },
            admin::WriteGuard {
                guard: config.durability.guard,
                closed: metrics.write_guard_closed.clone(),
            },
        );
        if config.admin_token.is_none() && !listeners.addrs.admin.ip().is_loopback() {
            tracing::warn!(
                admin = %listeners.addrs.admin,
                "no admin_token: POST /failover is refused on an admin port beyond loopback"
            );
        }
        let following = runner.spawn(&source);
        // Serve once the first topology is known, or after a while regardless: writes wait for a primary
        // (write_hold_ms) rather than fail.
        if tokio::time::timeout(config.connect_timeout * 3, first.changed())
            .await
            .is_err()
        {
            tracing::warn!("no topology yet; serving anyway");
        }
        let ctx = client::Context::new(
            topo.clone(),
            table.clone(),
            config.client_settings(),
            auth::Auth::new(config.requirepass.clone(), config.users.clone()),
            metrics.clone(),
            lag.clone(),
        );
        let Listeners {
            addrs,
            clients,
            tls_clients,
            admin: admin_listener,
        } = listeners;
        let sessions = spawn_workers(clients, tls_clients, tls.server.clone(), &ctx, &cancel)?;
        tracker.spawn(admin::serve(
            admin_listener,
            admin_state.clone(),
            cancel.clone(),
        ));
        let grace = config.shutdown_grace;
        let reloader = reload::Reloader {
            running: std::sync::Mutex::new(config),
            lag,
            ctx,
            admin: admin_state,
            source: runner,
            following: std::sync::Mutex::new((source, following)),
            tls_server: tls.server,
            tls_client: tls.client,
        };
        Ok(Proxy {
            listen: addrs.listen,
            tls_listen: addrs.tls_listen,
            admin: addrs.admin,
            topo,
            table,
            embedded,
            cancel,
            tracker,
            sessions,
            grace,
            reloader,
        })
    }

    /// Applies a configuration loaded again (SIGHUP): lag limits, topology source, client users and TLS
    /// certificates change without dropping a client (see [`reload`]). Logs what changed, each option that
    /// needs a restart to change, and every problem.
    pub fn reload(&self, config: &Config) -> reload::Outcome {
        let out = self.reloader.reload(config);
        for option in &out.applied {
            tracing::info!(option, "configuration reloaded");
        }
        for option in &out.restart_needed {
            tracing::warn!(
                option,
                "option changed in the configuration; it takes effect on restart"
            );
        }
        for problem in &out.problems {
            tracing::warn!(%problem, "not reloaded; keeping the running value");
        }
        out
    }

    /// Reads every TLS certificate, key and CA file again. New connections use them;
    /// connections already open go on with what they have. Each side (listener, upstream) changes only if
    /// all of its files load; otherwise it keeps the running certificates and every problem is logged and
    /// returned.
    pub fn reload_tls(&self) -> Result<(), tls::Problems> {
        let mut problems = Vec::new();
        let sides = [
            (
                "listener",
                self.reloader.tls_server.as_ref().map(|s| s.reload(None)),
            ),
            (
                "upstream",
                self.reloader.tls_client.as_ref().map(|c| c.reload(None)),
            ),
        ];
        for (side, result) in sides {
            match result {
                None => {}
                Some(Ok(())) => tracing::info!(side, "TLS certificates reloaded"),
                Some(Err(p)) => {
                    for line in p.lines() {
                        tracing::warn!(side, problem = %line, "TLS reload failed, keeping the running certificates");
                    }
                    problems.extend(p.0);
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(tls::Problems(problems))
        }
    }

    /// Stops accepting, lets sessions finish their replies for up to the grace period, then returns.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let all = async {
            for s in &self.sessions {
                s.wait().await;
            }
            self.tracker.wait().await;
        };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!("shutdown grace period over with sessions still open");
        }
    }
}

/// The certificates of both sides, loaded once.
struct Tls {
    /// The client listener's.
    server: Option<Arc<tls::Server>>,
    /// For nodes and sentinels: one client configuration, reloaded once.
    client: Option<Arc<tls::Client>>,
}

impl Tls {
    fn load(config: &Config) -> Result<Tls, StartError> {
        let server = match &config.tls_listen {
            Some((_, files)) => Some(Arc::new(
                tls::Server::load(files.clone(), config.connect_timeout)
                    .map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let client = match config.backend_tls.as_ref().or(config.sentinel_tls.as_ref()) {
            Some(files) => Some(Arc::new(
                tls::Client::load(files.clone()).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        Ok(Tls { server, client })
    }
}

/// Settings of the connections to data nodes, and to sentinels (which get their own credentials,
/// never the data nodes', and no node metrics).
fn upstream_settings(
    config: &Config,
    metrics: &Arc<metrics::Metrics>,
    tls: &Tls,
) -> (Arc<upstream::Settings>, Arc<upstream::Settings>) {
    let nodes = upstream::Settings {
        metrics: Some(metrics.clone()),
        connections: config.backend_connections,
        connect_timeout: config.connect_timeout,
        credentials: config.backend_credentials.clone(),
        limits: config.limits.for_replies(),
        refresh: Arc::new(tokio::sync::Notify::new()),
        tls: tls.client.clone().filter(|_| config.backend_tls.is_some()),
        zones: Arc::new(config.zones.clone()),
        cluster: matches!(config.source, config::Source::Cluster { .. }),
    };
    let sentinels = upstream::Settings {
        credentials: config.sentinel_credentials.clone(),
        metrics: None,
        cluster: false,
        tls: tls.client.clone().filter(|_| config.sentinel_tls.is_some()),
        ..nodes.clone()
    };
    (Arc::new(nodes), Arc::new(sentinels))
}

/// In embedded mode, the local servers the proxy starts for itself.
async fn start_embedded(source: &Source) -> Result<Option<embedded::Cluster>, StartError> {
    let Source::Embedded {
        replicas,
        sentinels,
    } = source
    else {
        return Ok(None);
    };
    embedded::Cluster::start(*replicas as usize, *sentinels as usize)
        .await
        .map(Some)
        .map_err(StartError::Embedded)
}

/// The source to follow: the configured one, or the embedded servers' (their sentinels, if any).
fn resolve_source(source: &Source, embedded: Option<&embedded::Cluster>) -> Source {
    match (source, embedded) {
        (Source::Embedded { .. }, Some(c)) if !c.sentinels().is_empty() => Source::Sentinel {
            sentinels: c.sentinels().iter().map(|s| s.addr()).collect(),
            master_name: embedded::MASTER_NAME.to_string(),
        },
        (Source::Embedded { .. }, Some(c)) => Source::Static {
            primary: c.primary().addr(),
            replicas: c.replicas().iter().map(|r| r.addr()).collect(),
        },
        (source, _) => source.clone(),
    }
}

/// Where the proxy listens, once bound.
struct Addrs {
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    admin: SocketAddr,
}

/// The bound listeners: one per worker on the client port (and the TLS port), and the admin one.
struct Listeners {
    addrs: Addrs,
    clients: Vec<std::net::TcpListener>,
    tls_clients: Option<Vec<std::net::TcpListener>>,
    admin: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let workers = config.worker_threads;
        let bind = |addr: SocketAddr| {
            let listeners =
                bind_workers(addr, workers).map_err(|source| StartError::Bind { addr, source })?;
            let local = first_local_addr(&listeners, addr)?;
            Ok::<_, StartError>((listeners, local))
        };
        let (clients, listen) = bind(config.listen)?;
        let (tls_clients, tls_listen) = match &config.tls_listen {
            Some((addr, _)) => {
                let (l, local) = bind(*addr)?;
                (Some(l), Some(local))
            }
            None => (None, None),
        };
        let bind_error = |source| StartError::Bind {
            addr: config.admin_listen,
            source,
        };
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(bind_error)?;
        let admin_addr = admin.local_addr().map_err(bind_error)?;
        Ok(Listeners {
            addrs: Addrs {
                listen,
                tls_listen,
                admin: admin_addr,
            },
            clients,
            tls_clients,
            admin,
        })
    }
}

/// The address the first of `listeners` (bound for `addr`) took: the port, when `addr` asked for any.
fn first_local_addr(
    listeners: &[std::net::TcpListener],
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    let bound = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .unwrap_or_else(|| Err(std::io::Error::other("no listener bound")));
    bound.map_err(|source| StartError::Bind { addr, source })
}

/// Starts one worker thread per client listener, each with its TLS listener if any; returns each
/// worker's session tracker.
fn spawn_workers(
    clients: Vec<std::net::TcpListener>,
    tls_clients: Option<Vec<std::net::TcpListener>>,
    tls_server: Option<Arc<tls::Server>>,
    ctx: &Arc<client::Context>,
    cancel: &CancellationToken,
) -> Result<Vec<TaskTracker>, StartError> {
    let mut sessions = Vec::new();
    let mut tls_clients = tls_clients.map(Vec::into_iter);
    for (i, listener) in clients.into_iter().enumerate() {
        let worker = TaskTracker::new();
        sessions.push(worker.clone());
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        // Each worker also gets its own TLS listener on the shared TLS port.
        let tls = tls_server
            .clone()
            .zip(tls_clients.as_mut().and_then(Iterator::next));
        std::thread::Builder::new()
            .name(format!("redsplit-worker-{i}"))
            .spawn(move || run_worker(i, listener, tls, ctx, cancel, worker))
            .map_err(StartError::Worker)?;
    }
    Ok(sessions)
}

/// Binds one listener per worker on `addr`, sharing the port (SO_REUSEPORT) so the kernel spreads
/// connections over the workers. With port 0 the first bind picks the port and the others take it too.
///
/// SO_REUSEPORT would also let another process of the same user bind the port and take half the new
/// clients, so the port is first claimed without it: a socket bound with SO_REUSEADDR alone fails while
/// any other socket listens there (a second redsplit, or anything else), yet not for connections of an
/// earlier run left in TIME_WAIT. It is released just before the workers bind.
fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let socket = || {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    };
    let claim = socket()?;
    claim.set_reuseaddr(true)?;
    claim.bind(addr)?;
    let mut addr = claim.local_addr()?;
    drop(claim);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let sock = socket()?;
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr)?;
        let listener = sock.listen(1024)?;
        addr = listener.local_addr()?;
        out.push(listener.into_std()?);
    }
    Ok(out)
}

/// A worker thread: a single-threaded runtime serving the clients of its own listener, with its own
/// upstream connections. Nothing a session does crosses threads, and requests of its sessions batch
/// into one write per node. Ends once cancelled and its sessions are done.
fn run_worker(
    id: usize,
    listener: std::net::TcpListener,
    tls: Option<(Arc<tls::Server>, std::net::TcpListener)>,
    ctx: Arc<client::Context>,
    cancel: CancellationToken,
    sessions: TaskTracker,
) {
    upstream::set_worker_id(id);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot register the listener");
                return;
            }
        };
        let tls = match tls.map(|(server, l)| TcpListener::from_std(l).map(|l| (server, l))) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                tracing::error!(worker = id, error = %e, "cannot register the TLS listener");
                return;
            }
        };
        let plain = client::serve(
            listener,
            None,
            ctx.clone(),
            cancel.clone(),
            sessions.clone(),
        );
        match tls {
            None => plain.await,
            Some((server, l)) => {
                let secure = client::serve(l, Some(server), ctx, cancel, sessions.clone());
                tokio::join!(plain, secure);
            }
        }
        sessions.close();
        sessions.wait().await;
    });
}
