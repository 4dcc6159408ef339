//! Local Redis servers on loopback for the embedded mode (`redsplit` with no primary and no sentinel named):
//! a primary, its replicas and sentinels watching them, each on a free port with a directory of its own
//! under one temporary directory, all killed when the [`Cluster`] is dropped. The pieces it is made of
//! ([`Server`], [`server_args`], [`sentinel_config`], [`spawn`], [`call`]) are public for whoever needs
//! servers of their own.

use std::io;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::Addr;
use crate::resp::{encode_command, Value};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

/// How long a server may take to start and, for a replica, to finish its first sync.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A primary, its replicas and the sentinels watching them.
#[derive(Debug)]
pub struct Cluster {
    primary: Server,
    replicas: Vec<Server>,
    sentinels: Vec<Server>,
    // Declared last, so dropped last: the processes are gone before their directories.
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts a primary, `replicas` replicas and `sentinels` sentinels (quorum: a majority). Returns once
    /// every replica is synced and every sentinel knows the primary, every replica and every other
    /// sentinel, so that a failover could reach a quorum.
    pub async fn start(replicas: usize, sentinels: usize) -> io::Result<Cluster> {
        let root = tempfile::Builder::new().prefix("redsplit-").tempdir()?;
        let dir = |name: String| root.path().join(name);
        let primary = Server::start(&dir("primary".into()), |port, dir| {
            server_args(port, dir, None)
        })
        .await?;
        let mut started = Vec::new();
        for i in 0..replicas {
            let replica = Server::start(&dir(format!("replica{i}")), |port, dir| {
                server_args(port, dir, Some(primary.port))
            })
            .await?;
            started.push(replica);
        }
        for r in &started {
            wait_until("a replica did not sync", || async {
                matches!(call(&r.addr(), &[&["ROLE"]]).await, Ok(Value::Array(role))
                    if matches!(role.get(3), Some(Value::BulkString(s)) if s == b"connected"))
            })
            .await?;
        }
        let quorum = sentinels / 2 + 1;
        let mut watching = Vec::new();
        for i in 0..sentinels {
            let sentinel = Server::start_sentinel(&dir(format!("sentinel{i}")), |port, dir| {
                sentinel_config(port, dir, primary.port, quorum)
            })
            .await?;
            watching.push(sentinel);
        }
        for s in &watching {
            let known = |what| async move {
                match call(&s.addr(), &[&["SENTINEL", what, MASTER_NAME]]).await {
                    Ok(Value::Array(a)) => a.len(),
                    _ => 0,
                }
            };
            wait_until("a sentinel did not learn of every server", || async {
                known("replicas").await >= replicas && known("sentinels").await + 1 >= sentinels
            })
            .await?;
        }
        Ok(Cluster {
            primary,
            replicas: started,
            sentinels: watching,
            _root: root,
        })
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
}

/// A `redis-server` process (a sentinel too) answering on a loopback port. Killed (SIGKILL: no shutdown,
/// no save) and reaped on drop.
#[derive(Debug)]
pub struct Server {
    /// Its loopback port.
    pub port: u16,
    /// The process.
    pub process: Child,
}

impl Server {
    /// Starts `redis-server` in `dir` (created if need be) with the arguments `args(port, dir)`, on a free
    /// loopback port, and waits until it answers `PING` (any reply, `-NOAUTH` too). A port found free can
    /// be taken by someone else before the server binds it: a server that exits or never answers is
    /// started again on another port, five times at most.
    pub async fn start(dir: &Path, args: impl Fn(u16, &Path) -> Vec<String>) -> io::Result<Server> {
        Server::start_with(dir, |port, dir| Ok(args(port, dir))).await
    }

    /// Starts a sentinel as [`Server::start`] starts a server, with the configuration `config(port, dir)`
    /// written to `dir/sentinel.conf` (Sentinel needs a file it can rewrite).
    pub async fn start_sentinel(
        dir: &Path,
        config: impl Fn(u16, &Path) -> String,
    ) -> io::Result<Server> {
        let file = dir.join("sentinel.conf");
        Server::start_with(dir, |port, dir| {
            std::fs::write(&file, config(port, dir))?;
            Ok(vec![
                file.to_string_lossy().into_owned(),
                "--sentinel".into(),
            ])
        })
        .await
    }

    async fn start_with(
        dir: &Path,
        args: impl Fn(u16, &Path) -> io::Result<Vec<String>>,
    ) -> io::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Server {
                port,
                process: spawn(dir, &args(port, dir)?)?,
            };
            match server.answering().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> Addr {
        Addr::parse(&format!("127.0.0.1:{}", self.port))
            .expect("loopback address with a port is valid")
    }

    /// Waits until the server answers `PING`, or fails once it has exited or [`START_TIMEOUT`] has passed.
    async fn answering(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Err(io::Error::other(format!("redis-server exited: {status}")));
            }
            if call(&self.addr(), &[&["PING"]]).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not answer",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Arguments for a `redis-server` on `port` that keeps its files (log, and nothing more: no persistence)
/// in `dir`, a replica of the primary on `primary` if given. Replication is diskless and pings every
/// second, so that a replica syncs at once and its lag shows soon.
pub fn server_args(port: u16, dir: &Path, primary: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.to_string_lossy(),
        "--logfile",
        "redis.log",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--repl-ping-replica-period",
        "1",
    ]
    .map(String::from)
    .into();
    if let Some(p) = primary {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
    }
    args
}

/// The configuration of a sentinel on `port` keeping its files in `dir`, watching the primary on
/// `primary` as [`MASTER_NAME`] with `quorum`: it calls the primary down after 5 s without an answer
/// (at 1 s, a loaded machine that delays a ping now and then gets failovers nobody asked for). Lines
/// added after these override them.
pub fn sentinel_config(port: u16, dir: &Path, primary: u16, quorum: usize) -> String {
    format!(
        "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel.log\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} {quorum}\n\
         sentinel down-after-milliseconds {MASTER_NAME} 5000\n\
         sentinel failover-timeout {MASTER_NAME} 10000\n\
         sentinel parallel-syncs {MASTER_NAME} 1\n",
        dir = dir.display()
    )
}

/// The environment variable naming the server program to run instead of `redis-server` (a path, or
/// `valkey-server`); sentinels run as that program with `--sentinel`.
pub const SERVER_BIN_VAR: &str = "REDSPLIT_SERVER_BIN";

/// The server program the embedded mode (and the test harness) runs: `$REDSPLIT_SERVER_BIN`, else
/// `redis-server`.
pub fn program() -> String {
    std::env::var(SERVER_BIN_VAR)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "redis-server".into())
}

/// Runs the server program ([`program`]) with `args` in `dir`, its output discarded.
pub fn spawn(dir: &Path, args: &[String]) -> io::Result<Child> {
    spawn_program(&program(), dir, args)
}

/// Runs `program` with `args` in `dir`, its output discarded.
pub fn spawn_program(program: &str, dir: &Path, args: &[String]) -> io::Result<Child> {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {program} (is it installed?): {e}"),
            )
        })
}

/// A free loopback port (bound, then released for a server to take).
pub fn free_port() -> io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `commands` to `addr` on a fresh connection, pipelined, and returns the reply to the last one; the
/// replies before it (to an `AUTH`, say) are read and dropped.
pub async fn call(addr: &Addr, commands: &[&[&str]]) -> io::Result<Value> {
    let connect = TcpStream::connect(addr.as_str());
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect).await??;
    let mut out = Vec::new();
    for args in commands {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode_command(&mut out, &args);
    }
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut skip = commands.len().saturating_sub(1);
    loop {
        while let Some((frame, len)) = crate::resp::value::decode(&buf).map_err(io::Error::other)? {
            let _ = buf.split_to(len);
            if skip == 0 {
                return Ok(frame);
            }
            skip -= 1;
        }
        if tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await?? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Polls `done` every 20 ms until it holds; fails with `what` after [`START_TIMEOUT`].
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    done: impl Fn() -> F,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !done().await {
        if tokio::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
