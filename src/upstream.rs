//! Upstream side: one [`Node`] per Redis server, shared pipelined connections, dedicated connections.
//!
//! Many clients share a few pipelined connections per node ([`Shared`]): a client's commands travel as a
//! [`Job`] (one or more request frames), are written in order with other clients' jobs, and the replies are
//! cut from the read buffer in the same order. Connections are grouped by [`ConnKey`] (database, protocol,
//! credentials), so no command ever changes the state of a shared connection. Sessions that need a
//! connection of their own (MULTI, blocking commands, pub/sub, MONITOR, tracking) take a [`Dedicated`] one.

mod conn;
pub mod control;
mod dedicated;
pub mod offsets;
pub mod verdict;

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub use conn::Shared;
pub use dedicated::Dedicated;
pub use offsets::{Acks, Offsets, Want};
pub use verdict::{Verdict, Verdicts};

use crate::node::Addr;
use crate::node::{Identity, Locality, ReplState, Zone, Zones};
use crate::resp::{self, encode_command, Limits, ReplyScanner};

/// Upstream failures. Each says whether the request may have reached the node: a request that was never
/// sent may be retried anywhere; one that may have been sent must not be re-sent if it can write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// TCP connect or the greeting failed (node down, refused, timed out). Nothing was sent.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: Addr,
        /// What failed.
        reason: String,
    },
    /// The node answered the greeting (AUTH, HELLO, SELECT) with an error. Nothing was sent. The client's
    /// own credentials or database may be at fault; the reply is passed on.
    #[error("{addr} refused the connection: {reply}")]
    Refused {
        /// The node.
        addr: Addr,
        /// The error reply, without the leading `-`.
        reply: String,
    },
    /// The connection broke after the request was written, or may have been: the node may have run it.
    #[error("connection to {addr} lost")]
    Lost {
        /// The node.
        addr: Addr,
    },
    /// The node a session's own connection goes to is no longer the primary: the connection is closed so
    /// that nothing more is written there (a write waiting there, paused by a switchover, never runs).
    #[error("{addr} is no longer the primary; the command may have run")]
    NotPrimary {
        /// The node.
        addr: Addr,
    },
    /// The node sent bytes that are not RESP, or more replies than requests. Treated like a lost connection.
    #[error("protocol error from {addr}: {source}")]
    Protocol {
        /// The node.
        addr: Addr,
        /// What was wrong.
        #[source]
        source: resp::Error,
    },
}

impl Error {
    /// True if the request may have reached the node (so a write must not be re-sent elsewhere).
    pub fn maybe_sent(&self) -> bool {
        matches!(
            self,
            Error::Lost { .. } | Error::Protocol { .. } | Error::NotPrimary { .. }
        )
    }
}

/// Replies to one [`Job`], contiguous as the node sent them.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply frames.
    pub bytes: Bytes,
    /// What each frame says, where it is more than an answer (see [`verdict::judge`]).
    pub verdicts: Verdicts,
    /// The node's replication offsets measured around the job, where it asked for them.
    pub offsets: Offsets,
    /// The node was still a primary when the replies arrived (see [`Node::is_primary`]): a write it
    /// answered after another node replaced it ran on a former primary.
    pub from_primary: bool,
    /// How many replicas the `WAIT` after the job reported, where the job asked for acknowledgements
    /// ([`Want::acks`]); `None` if none answered (the connection broke first).
    pub acked: Option<u32>,
}

/// Work for a shared connection: request frames written as one unit, answered by `count` replies.
#[derive(Debug)]
pub struct Job {
    /// Request frames, forwarded untouched.
    pub bytes: Bytes,
    /// Number of frames in `bytes`, so number of replies.
    pub count: u32,
    /// The replication offsets to measure around it.
    pub want: Want,
    /// Where the replies go. A dropped receiver just discards them.
    pub reply: oneshot::Sender<Result<Reply, Error>>,
}

/// What distinguishes one shared connection's state from another's. Commands that would change it
/// (SELECT, HELLO, AUTH) are never forwarded on a shared connection; the session moves to another key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    /// Selected database.
    pub db: u32,
    /// RESP3 (after `HELLO 3`).
    pub resp3: bool,
    /// The client's own credentials (after `AUTH`); `None` uses the configured backend credentials.
    pub auth: Option<Arc<Credentials>>,
}

/// Settings shared by every upstream connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared connections per node and key.
    pub connections: usize,
    /// Connect and greeting timeout.
    pub connect_timeout: Duration,
    /// Credentials for connections whose key has none.
    pub credentials: Option<Credentials>,
    /// Reply scanner limits.
    pub limits: Limits,
    /// Where node metrics are registered; `None` for nodes that are not data nodes (sentinels).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Rung when an upstream misbehaves in a way that may mean the topology changed (a broken connection,
    /// `READONLY`, `MASTERDOWN`, `LOADING`): discovery looks again at once.
    pub refresh: Arc<tokio::sync::Notify>,
    /// TLS for these connections (`backend_tls`, `sentinel_tls`); `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::Client>>,
    /// The proxy's zone and the configured zones of nodes.
    pub zones: Arc<Zones>,
    /// The nodes are a Redis Cluster's: every connection says `READONLY` first, so that a replica serves
    /// reads of its shard's slots instead of redirecting them to its primary (a primary ignores it).
    pub cluster: bool,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `id`: shared connections it picks belong to it.
pub fn set_worker_id(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// The calling thread's worker id (0 outside worker threads).
pub fn worker_id() -> usize {
    WORKER.with(|w| w.get())
}

/// Settings for unit tests: one connection, one-second timeouts, no credentials, no metrics.
#[cfg(test)]
pub(crate) fn test_settings() -> Arc<Settings> {
    Arc::new(Settings {
        connections: 1,
        connect_timeout: Duration::from_secs(1),
        credentials: None,
        limits: Limits::default(),
        refresh: Default::default(),
        metrics: None,
        tls: None,
        zones: Default::default(),
        cluster: false,
    })
}

/// A locality as the metrics label it.
pub fn label(l: Locality) -> crate::metrics::Locality {
    match l {
        Locality::Unknown => crate::metrics::Locality::Unknown,
        Locality::Local => crate::metrics::Locality::Local,
        Locality::Remote => crate::metrics::Locality::Remote,
    }
}

/// Consecutive data-path failures that take a node out of read rotation.
pub const TRIP_AFTER: u32 = 3;

/// Most idle dedicated connections kept per pool for reuse.
const MAX_IDLE_DEDICATED: usize = 8;

/// One upstream Redis server, shared by every topology generation that includes it.
#[derive(Debug)]
pub struct Node {
    /// Unique per process, for caches keyed by node.
    pub id: u64,
    /// Address as configured or discovered.
    pub addr: Addr,
    /// Requests sent and not yet answered, for least-outstanding balancing.
    pub outstanding: AtomicUsize,
    /// Replication offsets and lag, written by the prober.
    pub repl: ReplState,
    /// What the node is (run id, replication history), once a probe or discovery has asked it.
    identity: arc_swap::ArcSwapOption<Identity>,
    /// Metric handles; registered while the node is in the topology, detached otherwise.
    pub metrics: arc_swap::ArcSwap<crate::metrics::NodeMetrics>,
    /// Consecutive failures seen on the data path; past [`TRIP_AFTER`] the node gets no reads until its
    /// prober finds it healthy and caught up again (the half-open probe of a circuit breaker).
    failures: std::sync::atomic::AtomicU32,
    /// The published topology names it a primary; cleared only when another node takes its place, so
    /// a write it answers after that is known to have run on a former primary.
    primary: std::sync::atomic::AtomicBool,
    /// Its zone: configured (`node_zones`), else as the server reports it.
    zone: arc_swap::ArcSwapOption<Zone>,
    /// [`Locality`] of `zone` (read on every read's routing, without the swap).
    locality: std::sync::atomic::AtomicU8,
    settings: Arc<Settings>,
    pools: Mutex<FxHashMap<ConnKey, Arc<Pool>>>,
}

impl Node {
    /// A node with no connections yet.
    pub fn new(addr: Addr, settings: Arc<Settings>) -> Arc<Node> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let zone = settings.zones.configured(&addr);
        let locality = settings.zones.locality(zone.as_ref());
        if let (Some(m), Some(z)) = (&settings.metrics, &zone) {
            m.node_zone(addr.as_str(), None, Some((&z.0, label(locality))));
        }
        let locality = locality as u8;
        Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            outstanding: AtomicUsize::new(0),
            repl: ReplState::default(),
            identity: arc_swap::ArcSwapOption::empty(),
            metrics: arc_swap::ArcSwap::from_pointee(crate::metrics::NodeMetrics::detached()),
            failures: std::sync::atomic::AtomicU32::new(0),
            primary: std::sync::atomic::AtomicBool::new(false),
            zone: arc_swap::ArcSwapOption::new(zone.map(Arc::new)),
            locality: std::sync::atomic::AtomicU8::new(locality),
            settings,
            pools: Mutex::new(FxHashMap::default()),
        })
    }

    /// What the node is, as last learned.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.load().as_deref().cloned()
    }

    /// Records what the node said it is (INFO server and replication).
    pub fn set_identity(&self, identity: Identity) {
        if self.identity.load().as_deref() != Some(&identity) {
            self.identity.store(Some(Arc::new(identity)));
        }
    }

    /// Its zone, when known.
    pub fn zone(&self) -> Option<Zone> {
        self.zone.load().as_deref().cloned()
    }

    /// Where it runs relative to the proxy's zone.
    #[inline]
    pub fn locality(&self) -> Locality {
        Locality::from_u8(self.locality.load(Ordering::Relaxed))
    }

    /// Records the zone the server reports for itself (`availability_zone`); a configured zone wins.
    pub fn set_reported_zone(&self, reported: Option<Zone>) {
        let zones = &self.settings.zones;
        let zone = zones.configured(&self.addr).or(reported);
        let old = self.zone.load_full();
        if old.as_deref() == zone.as_ref() {
            return;
        }
        tracing::info!(upstream = %self.addr, zone = zone.as_ref().map(|z| z.0.as_str()).unwrap_or("none"), "node zone");
        let locality = zones.locality(zone.as_ref());
        if let Some(m) = &self.settings.metrics {
            m.node_zone(
                self.addr.as_str(),
                old.as_deref()
                    .map(|z| (z.0.as_str(), label(self.locality()))),
                zone.as_ref().map(|z| (z.0.as_str(), label(locality))),
            );
        }
        self.locality.store(locality as u8, Ordering::Relaxed);
        self.zone.store(zone.map(Arc::new));
    }

    /// Counts a failure (broken connection, timeout) of a request to this node; takes it out of read
    /// rotation after [`TRIP_AFTER`] in a row.
    pub fn record_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER && self.repl.is_eligible() {
            tracing::warn!(upstream = %self.addr, failures = n, "node keeps failing, taking it out of rotation");
            self.set_eligibility(crate::node::Why::Tripped);
        }
    }

    /// Sets read eligibility and its reason, and the eligibility gauge.
    pub fn set_eligibility(&self, why: crate::node::Why) {
        self.repl.set(why);
        self.metrics
            .load()
            .eligible
            .set(i64::from(why == crate::node::Why::Eligible));
    }

    /// Counts a success: the failure streak is over.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// True while the published topology takes this node for a primary (and no other node replaced it).
    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::Acquire)
    }

    /// Marks the node a primary (true) or replaced by another (false). Set by the topology before it
    /// publishes the snapshot that says so.
    pub fn set_primary(&self, primary: bool) {
        self.primary.store(primary, Ordering::Release);
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The connections for `key`, created (without connecting) on first use.
    pub fn pool(self: &Arc<Node>, key: &ConnKey) -> Arc<Pool> {
        let mut pools = self
            .pools
            .lock()
            .expect("pool map lock is never poisoned: no panics while held");
        if let Some(p) = pools.get(key) {
            return p.clone();
        }
        let pool = Arc::new(Pool {
            key: key.clone(),
            per_worker: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        });
        pools.insert(key.clone(), pool.clone());
        pool
    }

    /// Drops pools no session uses any more, except the default key's. Their connection tasks end once the
    /// last handle is gone.
    pub fn sweep_pools(&self) {
        let default = ConnKey::default();
        let mut pools = self
            .pools
            .lock()
            .expect("pool map lock is never poisoned: no panics while held");
        pools.retain(|k, p| *k == default || Arc::strong_count(p) > 1);
    }

    /// Number of pools (distinct connection keys) open on this node.
    pub fn pool_count(&self) -> usize {
        self.pools
            .lock()
            .expect("pool map lock is never poisoned: no panics while held")
            .len()
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The connections of one node for one [`ConnKey`].
#[derive(Debug)]
pub struct Pool {
    key: ConnKey,
    /// Each worker thread's shared connections, started on that worker's runtime on first use: a
    /// session's requests and their replies never cross threads, and requests of the sessions of one
    /// worker batch into one write.
    per_worker: Mutex<Vec<Option<Arc<[Shared]>>>>,
    next: AtomicUsize,
    idle: Mutex<Vec<Dedicated>>,
}

impl Pool {
    /// A shared connection of the calling worker, round robin. A session keeps the one it got, so its
    /// commands to this node stay in order.
    pub fn pick(&self, node: &Arc<Node>) -> Shared {
        let worker = worker_id();
        let mut per = self
            .per_worker
            .lock()
            .expect("per-worker lock is never poisoned: no panics while held");
        if per.len() <= worker {
            per.resize(worker + 1, None);
        }
        let set = per[worker].get_or_insert_with(|| {
            (0..node.settings.connections.max(1))
                .map(|_| Shared::spawn(node.clone(), self.key.clone()))
                .collect()
        });
        let i = self.next.fetch_add(1, Ordering::Relaxed) % set.len();
        set[i].clone()
    }

    /// A dedicated connection: an idle one that is still open, else a new one.
    pub async fn dedicated(&self, node: &Arc<Node>) -> Result<Dedicated, Error> {
        loop {
            let idle = self
                .idle
                .lock()
                .expect("idle lock is never poisoned: no panics while held")
                .pop();
            match idle {
                Some(d) if d.is_alive() => return Ok(d),
                // Closed under us while idle: drop it, try the next.
                Some(_) => continue,
                None => return Dedicated::open(node.clone(), self.key.clone()).await,
            }
        }
    }

    /// Returns a dedicated connection in its initial state (no MULTI, WATCH, subscription, tracking or
    /// blocked command) for reuse.
    pub fn give_back(&self, conn: Dedicated) {
        let mut idle = self
            .idle
            .lock()
            .expect("idle lock is never poisoned: no panics while held");
        if idle.len() < MAX_IDLE_DEDICATED && conn.is_clean() {
            idle.push(conn);
        }
    }
}

/// An upstream connection's bytes: plain TCP, or TLS over TCP (`backend_tls`, `sentinel_tls`).
///
/// The shared connection task splits it by variant (`into_split` for TCP, `tokio::io::split` for TLS) and
/// runs one loop generic over the halves, so plain TCP pays nothing for TLS being possible. TLS keeps
/// bytes the socket did not take: writers of a [`Stream`] flush after writing.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large, and plain connections should not carry its size).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Opens a connection to `addr` (TLS if the settings say so) and greets it for `key`: AUTH or HELLO,
/// SELECT, or else PING: it is open once the node has answered. The connect timeout covers all of it.
pub(crate) async fn connect(
    addr: &Addr,
    key: &ConnKey,
    settings: &Settings,
) -> Result<Stream, Error> {
    let fail = |reason: String| Error::Connect {
        addr: addr.clone(),
        reason,
    };
    let greet = async {
        let tcp = TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| fail(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        let mut stream = match &settings.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(
                tls.connect(tcp, addr)
                    .await
                    .map_err(|e| fail(format!("TLS handshake: {e}")))?,
            )),
        };
        let creds = key.auth.as_deref().or(settings.credentials.as_ref());
        let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
        if key.resp3 {
            let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
            if let Some(c) = creds {
                hello.extend([
                    &b"AUTH"[..],
                    c.username.as_deref().unwrap_or("default").as_bytes(),
                    c.password.as_bytes(),
                ]);
            }
            cmds.push(hello);
        } else if let Some(c) = creds {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &c.username {
                auth.push(u.as_bytes());
            }
            auth.push(c.password.as_bytes());
            cmds.push(auth);
        }
        let db = key.db.to_string();
        if key.db != 0 {
            cmds.push(vec![b"SELECT", db.as_bytes()]);
        }
        if settings.cluster {
            cmds.push(vec![b"READONLY"]);
        }
        // Nothing to set: a PING all the same, so that a connection counts as open only once the node
        // answers. A relay, tunnel or load balancer in front of a node that is down accepts the TCP
        // connection and closes it: without an answer first, a write sent on it would be lost after
        // sending (an error to its client) instead of held for the failover like a refused connect.
        // Its reply, even an error (LOADING, NOAUTH), shows the node is there: commands judge it.
        let ping_only = cmds.is_empty();
        if ping_only {
            cmds.push(vec![b"PING"]);
        }
        let mut out = Vec::new();
        for cmd in &cmds {
            encode_command(&mut out, cmd);
        }
        stream
            .write_all(&out)
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream.flush().await.map_err(|e| fail(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut scanner = ReplyScanner::new(settings.limits);
        for _ in 0..cmds.len() {
            let frame = loop {
                match scanner.scan(&buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(e) => {
                        return Err(Error::Protocol {
                            addr: addr.clone(),
                            source: e,
                        })
                    }
                }
                if stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    == 0
                {
                    return Err(fail("closed during greeting".into()));
                }
            };
            let reply = buf.split_to(frame.len);
            if frame.is_error() && !ping_only {
                let text = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                return Err(Error::Refused {
                    addr: addr.clone(),
                    reply: text,
                });
            }
        }
        Ok(stream)
    };
    match tokio::time::timeout(settings.connect_timeout, greet).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "timed out after {} ms",
            settings.connect_timeout.as_millis()
        ))),
    }
}

/// Sends `count` request frames on `conn` (measuring the offsets `want` around them), counting them as
/// outstanding on the node until answered.
pub fn submit(
    conn: &Shared,
    bytes: Bytes,
    count: u32,
    want: Want,
) -> oneshot::Receiver<Result<Reply, Error>> {
    let (tx, rx) = oneshot::channel();
    conn.send(Job {
        bytes,
        count,
        want,
        reply: tx,
    });
    rx
}

/// Credentials for upstream connections.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// ACL user; `None` for the default user.
    pub username: Option<String>,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A job sender, kept beside the task that owns the connection.
type JobTx = mpsc::UnboundedSender<Job>;
