//! The servers a test runs: a real `redis-server` primary, replicas and sentinels on loopback, each on a
//! free port with a temporary directory of its own, started with the library's own pieces
//! (`redsplit::embedded`) and killed on drop. Beyond what the embedded mode starts, a test can protect them
//! with passwords, slow a replica's link, make Sentinel prefer a replica, and kill, freeze or empty a
//! server. [`Builder::proxy`] starts a proxy over them too (see `scenario.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use redsplit::config::Addr;
use redsplit::embedded::{self, MASTER_NAME};

use crate::relay::Relay;
use crate::scenario::ProxyOptions;
use crate::wait::PATIENCE;

/// A primary, its replicas and the sentinels watching them, as a test set them up.
pub struct Cluster {
    primary: Server,
    replicas: Vec<Server>,
    sentinels: Vec<Server>,
    /// The relays that delay replicas' links.
    pub(crate) relays: Vec<Relay>,
    /// The servers' password, if they have one.
    pub(crate) password: Option<String>,
    /// The sentinels' password, if they have one.
    pub(crate) sentinel_password: Option<String>,
    // Declared last, so dropped last: the processes are gone before their directories.
    _root: tempfile::TempDir,
}

/// What servers to start, and how (see [`Cluster::builder`]); and, for [`Builder::proxy`], the proxy.
pub struct Builder<'a> {
    replicas: usize,
    sentinels: usize,
    down_after_ms: u64,
    password: Option<String>,
    sentinel_password: Option<String>,
    delays: Vec<(usize, Duration)>,
    preferred: Option<usize>,
    pub(crate) proxy: ProxyOptions<'a>,
}

impl Cluster {
    /// A primary alone, unless the builder asks for more.
    pub fn builder<'a>() -> Builder<'a> {
        Builder {
            replicas: 0,
            sentinels: 0,
            // The tests that use sentinels switch over on purpose, or not at all: 5 s keeps Sentinel from
            // failing over on its own when a loaded machine delays a ping (at 1 s it did, in the kill -9
            // test, 2 runs in 98).
            down_after_ms: 5000,
            password: None,
            sentinel_password: None,
            delays: Vec::new(),
            preferred: None,
            proxy: ProxyOptions::default(),
        }
    }

    /// The primary.
    pub fn primary(&self) -> &Server {
        &self.primary
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Server] {
        &self.replicas
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[Server] {
        &self.sentinels
    }

    /// Index of the replica whose address is `addr`, if any.
    pub fn replica_at(&self, addr: &Addr) -> Option<usize> {
        self.replicas.iter().position(|r| r.addr() == *addr)
    }

    /// The primary, mutably (to kill or restart it).
    pub fn primary_mut(&mut self) -> &mut Server {
        &mut self.primary
    }

    /// The replicas, mutably.
    pub fn replicas_mut(&mut self) -> &mut [Server] {
        &mut self.replicas
    }
}

impl<'a> Builder<'a> {
    /// Number of replicas of the primary.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Number of sentinels watching the primary as [`MASTER_NAME`] (quorum: a majority).
    pub fn sentinels(mut self, n: usize) -> Self {
        self.sentinels = n;
        self
    }

    /// How long the primary must be unreachable before the sentinels call it down. Default 5000 ms.
    pub fn down_after_ms(mut self, ms: u64) -> Self {
        self.down_after_ms = ms;
        self
    }

    /// Protects every server with this password (`requirepass`, and `masterauth` for replication). The
    /// sentinels and the proxy are given it.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Protects every sentinel with this password (Sentinel's `requirepass`; sentinels use it with each
    /// other too). The proxy is given it.
    pub fn sentinel_password(mut self, password: &str) -> Self {
        self.sentinel_password = Some(password.to_string());
        self
    }

    /// Replica `i` replicates through a relay that holds every byte for `delay` each way, as across a slow
    /// link: it lags the primary by that much. A static topology's flags map the relay, which the replica
    /// announces as its primary, back to the primary (a relay a test makes itself with
    /// [`Relay::delay_replica`] is not the cluster's, and not mapped).
    pub fn delay_replica(mut self, i: usize, delay: Duration) -> Self {
        self.delays.push((i, delay));
        self
    }

    /// Sentinel prefers replica `i` when it promotes one (`replica-priority 1`, the lowest): known to every
    /// sentinel before the cluster is returned.
    pub fn prefer_replica(mut self, i: usize) -> Self {
        self.preferred = Some(i);
        self
    }

    /// Starts the servers. Returns once every replica is synced (through its relay, if delayed) and every
    /// sentinel knows the primary, every replica and every other sentinel, so that a failover can reach a
    /// quorum.
    pub async fn start(self) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("redsplit-test-")
            .tempdir()
            .expect("temporary directory");
        let primary = self.server(root.path().join("primary"), None).await;
        let mut replicas = Vec::new();
        for i in 0..self.replicas {
            let dir = root.path().join(format!("replica{i}"));
            replicas.push(self.server(dir, Some(primary.port)).await);
        }
        for r in &replicas {
            r.wait_synced().await;
        }
        let mut sentinels = Vec::new();
        for i in 0..self.sentinels {
            let dir = root.path().join(format!("sentinel{i}"));
            sentinels.push(self.sentinel(dir, primary.port).await);
        }
        for s in &sentinels {
            let known = |what| async move {
                match s.call(&["SENTINEL", what, MASTER_NAME]).await {
                    Ok(OwnedFrame::Array(a)) => a.len(),
                    _ => 0,
                }
            };
            eventually!(
                format!("sentinel {} knows every replica and sentinel", s.addr()),
                known("replicas").await >= self.replicas
                    && known("sentinels").await + 1 >= self.sentinels
            );
        }
        let mut cluster = Cluster {
            primary,
            replicas,
            sentinels,
            relays: Vec::new(),
            password: self.password,
            sentinel_password: self.sentinel_password,
            _root: root,
        };
        for (i, delay) in self.delays {
            let relay = Relay::delay_replica(&cluster, i, delay).await;
            cluster.relays.push(relay);
        }
        if let Some(i) = self.preferred {
            let preferred = &cluster.replicas[i];
            preferred
                .call(&["CONFIG", "SET", "replica-priority", "1"])
                .await
                .expect("CONFIG SET");
            let port = preferred.port.to_string();
            // Sentinel reads the priority from INFO, every 10 s for a replica.
            for s in cluster.sentinels() {
                eventually!(
                    "sentinel sees replica-priority 1",
                    sentinel_priority(s, &port).await.as_deref() == Some("1"),
                    PATIENCE * 2
                );
            }
        }
        cluster
    }

    /// A data server in `dir`, a replica of the primary on `primary` if given.
    async fn server(&self, dir: PathBuf, primary: Option<u16>) -> Server {
        let args = |port, dir: &Path| {
            let mut args = embedded::server_args(port, dir, primary);
            if let Some(p) = &self.password {
                args.extend(["--requirepass", p, "--masterauth", p].map(String::from));
            }
            args
        };
        let server = embedded::Server::start(&dir, &args)
            .await
            .expect("redis-server starts (is it installed?)");
        Server {
            port: server.port,
            restart: Some(args(server.port, &dir)),
            dir,
            server,
            password: self.password.clone(),
            running: true,
        }
    }

    /// A sentinel in `dir` watching the primary on `primary`.
    async fn sentinel(&self, dir: PathBuf, primary: u16) -> Server {
        let quorum = self.sentinels / 2 + 1;
        let config = |port, dir: &Path| {
            // Later lines override the embedded mode's.
            let mut conf = embedded::sentinel_config(port, dir, primary, quorum);
            conf.push_str(&format!(
                "sentinel down-after-milliseconds {MASTER_NAME} {}\n",
                self.down_after_ms
            ));
            if let Some(p) = &self.password {
                conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
            }
            if let Some(p) = &self.sentinel_password {
                conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
            }
            conf
        };
        let server = embedded::Server::start_sentinel(&dir, config)
            .await
            .expect("redis-sentinel starts (is it installed?)");
        Server {
            port: server.port,
            restart: None,
            dir,
            server,
            password: self.sentinel_password.clone(),
            running: true,
        }
    }
}

/// One server or sentinel of a test's [`Cluster`]: killed on drop.
pub struct Server {
    /// Its loopback port.
    pub port: u16,
    server: embedded::Server,
    /// Its directory (log, config).
    dir: PathBuf,
    /// The arguments to start it again with; `None` for a sentinel, which is never restarted.
    restart: Option<Vec<String>>,
    password: Option<String>,
    running: bool,
}

impl Server {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> Addr {
        self.server.addr()
    }

    /// Its password, if it has one.
    pub fn password(&self) -> Option<String> {
        self.password.clone()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.running.then(|| self.server.process.id())
    }

    /// Kills the process with SIGKILL (no shutdown, no save) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.server.process.kill();
        let _ = self.server.process.wait();
        self.running = false;
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other("server not running"))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -{sig} {pid} failed")))
        }
    }

    /// Starts the process again with the same port and arguments, empty (its data files are removed).
    pub fn restart_empty(&mut self) -> std::io::Result<()> {
        let args = self
            .restart
            .clone()
            .ok_or_else(|| std::io::Error::other("a sentinel is not restarted"))?;
        self.kill();
        for entry in std::fs::read_dir(&self.dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "rdb" || e == "aof") {
                std::fs::remove_file(p)?;
            }
        }
        self.server.process = embedded::spawn(&self.dir, &args)?;
        self.running = true;
        Ok(())
    }

    /// Sends one command on a fresh connection (after `AUTH`, if the server has a password) and returns
    /// the decoded reply.
    pub async fn call(&self, args: &[&str]) -> std::io::Result<OwnedFrame> {
        match &self.password {
            Some(p) => embedded::call(&self.addr(), &[&["AUTH", p], args]).await,
            None => embedded::call(&self.addr(), &[args]).await,
        }
    }

    /// Waits until this replica's `ROLE` says it is connected to its primary.
    pub async fn wait_synced(&self) {
        eventually!(
            format!("replica {} synced", self.addr()),
            matches!(self.call(&["ROLE"]).await, Ok(OwnedFrame::Array(role))
                if matches!(role.get(3), Some(OwnedFrame::BulkString(s)) if s == b"connected"))
        );
    }
}

/// The `slave-priority` a sentinel reports for the replica on `port`.
async fn sentinel_priority(s: &Server, port: &str) -> Option<String> {
    let f = s.call(&["SENTINEL", "replicas", MASTER_NAME]).await.ok()?;
    let OwnedFrame::Array(rs) = f else {
        return None;
    };
    for r in rs {
        let OwnedFrame::Array(kv) = r else { continue };
        let field = |name: &str| {
            kv.chunks(2).find_map(|p| match p {
                [OwnedFrame::BulkString(k), OwnedFrame::BulkString(v)] if k == name.as_bytes() => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            })
        };
        if field("port").as_deref() == Some(port) {
            return field("slave-priority");
        }
    }
    None
}

impl Relay {
    /// Makes replica `i` of `cluster` replicate through a relay that delays every byte by `delay`, and
    /// waits until it is synced through it.
    pub async fn delay_replica(cluster: &Cluster, i: usize, delay: Duration) -> Relay {
        let primary: std::net::SocketAddr = cluster
            .primary()
            .addr()
            .as_str()
            .parse()
            .expect("loopback address");
        let relay = Relay::start(primary, delay).await;
        let replica = &cluster.replicas()[i];
        replica
            .call(&["REPLICAOF", "127.0.0.1", &relay.addr.port().to_string()])
            .await
            .expect("REPLICAOF through the relay");
        replica.wait_synced().await;
        relay
    }

    /// The `address_map` entry that maps the relay (what the replica announces as its master) back to
    /// the primary.
    pub fn mapping(&self, cluster: &Cluster) -> String {
        format!("{}={}", self.addr, cluster.primary().addr())
    }
}
