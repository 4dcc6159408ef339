//! Local Redis servers on loopback: the proxy's embedded mode (try it with nothing else running) and the
//! integration tests' harness. Each server gets a free port and a temporary directory; every server is
//! killed when the [`Cluster`] is dropped.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::resp::Value as OwnedFrame;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::Addr;
use crate::resp::encode_command;

/// How long a server may take to start and, for a replica, to finish its first sync.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One `redis-server` child process.
#[derive(Debug)]
pub struct Server {
    /// Loopback port.
    pub port: u16,
    /// Its directory (config, log, dump).
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    password: Option<String>,
}

impl Server {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> Addr {
        Addr::parse(&format!("127.0.0.1:{}", self.port))
            .expect("loopback address with a port is valid")
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL (no shutdown, no save) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other("server not running"))?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -{sig} {pid} failed")))
        }
    }

    /// Starts the process again with the same port and arguments, empty (its directory is wiped).
    pub fn restart_empty(&mut self) -> std::io::Result<()> {
        self.kill();
        for entry in std::fs::read_dir(&self.dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "rdb" || e == "aof") {
                std::fs::remove_file(p)?;
            }
        }
        self.child = Some(spawn_server(&self.dir, &self.args)?);
        Ok(())
    }

    /// Sends one command (after AUTH, if the server has a password) and returns the decoded reply.
    pub async fn call(&self, args: &[&str]) -> std::io::Result<OwnedFrame> {
        call_as(&self.addr(), self.password.as_deref(), args).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary with replicas.
#[derive(Debug)]
pub struct Cluster {
    primary: Server,
    replicas: Vec<Server>,
    sentinels: Vec<Server>,
    root: tempfile::TempDir,
}

/// The master name embedded sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

/// Options for [`Cluster`].
#[derive(Debug, Default, Clone)]
pub struct Builder {
    replicas: usize,
    sentinels: usize,
    down_after_ms: Option<u64>,
    extra: Vec<String>,
    password: Option<String>,
    sentinel_password: Option<String>,
}

impl Builder {
    /// Number of replicas of the primary.
    pub fn replicas(mut self, n: usize) -> Builder {
        self.replicas = n;
        self
    }

    /// Extra `redis-server` arguments for every server (`--requirepass`, `x`, ...).
    pub fn server_args(mut self, args: &[&str]) -> Builder {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Number of sentinels monitoring the primary as [`MASTER_NAME`] (quorum: a majority).
    pub fn sentinels(mut self, n: usize) -> Builder {
        self.sentinels = n;
        self
    }

    /// How long a primary must be unreachable before sentinels call it down. Default 1000 ms.
    pub fn down_after_ms(mut self, ms: u64) -> Builder {
        self.down_after_ms = Some(ms);
        self
    }

    /// Protects every server with this password (`requirepass`, and `masterauth` for replication).
    pub fn password(mut self, password: &str) -> Builder {
        self.password = Some(password.to_string());
        self.extra
            .extend(["--requirepass", password, "--masterauth", password].map(String::from));
        self
    }

    /// Protects every sentinel with this password (Sentinel's `requirepass`; sentinels use it with each
    /// other too).
    pub fn sentinel_password(mut self, password: &str) -> Builder {
        self.sentinel_password = Some(password.to_string());
        self
    }

    /// Starts the servers and waits until every replica is synced.
    pub async fn start(self) -> std::io::Result<Cluster> {
        let root = tempfile::Builder::new().prefix("redsplit-").tempdir()?;
        let pw = self.password.as_deref();
        let primary = start_server(root.path(), "primary", None, &self.extra, pw).await?;
        let mut replicas = Vec::new();
        for i in 0..self.replicas {
            replicas.push(
                start_server(
                    root.path(),
                    &format!("replica{i}"),
                    Some(primary.port),
                    &self.extra,
                    pw,
                )
                .await?,
            );
        }
        for r in &replicas {
            wait_synced(r).await?;
        }
        let mut sentinels = Vec::new();
        for i in 0..self.sentinels {
            let s = start_sentinel(root.path(), i, primary.port, self.sentinels, &self).await?;
            sentinels.push(s);
        }
        let cluster = Cluster {
            primary,
            replicas,
            sentinels,
            root,
        };
        cluster.wait_sentinels_ready().await?;
        Ok(cluster)
    }
}

impl Cluster {
    /// Options.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[Server] {
        &self.sentinels
    }

    /// Waits until every sentinel knows the primary, every replica and every other sentinel, so that a
    /// failover can reach a quorum.
    pub async fn wait_sentinels_ready(&self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        for s in &self.sentinels {
            loop {
                let count = |f: std::io::Result<OwnedFrame>| match f {
                    Ok(OwnedFrame::Array(a)) => a.len(),
                    _ => 0,
                };
                let replicas = count(s.call(&["SENTINEL", "replicas", MASTER_NAME]).await);
                let others = count(s.call(&["SENTINEL", "sentinels", MASTER_NAME]).await);
                if replicas >= self.replicas.len() && others + 1 >= self.sentinels.len() {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "sentinel {} sees {replicas} replicas and {others} sentinels",
                            s.port
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Index of the replica whose address is `addr`, if any.
    pub fn replica_at(&self, addr: &Addr) -> Option<usize> {
        self.replicas.iter().position(|r| r.addr() == *addr)
    }

    /// The primary.
    pub fn primary(&self) -> &Server {
        &self.primary
    }

    /// The primary, mutably (to kill or restart it).
    pub fn primary_mut(&mut self) -> &mut Server {
        &mut self.primary
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Server] {
        &self.replicas
    }

    /// The replicas, mutably.
    pub fn replicas_mut(&mut self) -> &mut [Server] {
        &mut self.replicas
    }

    /// The temporary directory holding every server's files.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_server(dir: &Path, args: &[String]) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run redis-server (is it installed?): {e}"),
            )
        })
}

async fn start_server(
    root: &Path,
    name: &str,
    primary: Option<u16>,
    extra: &[String],
    password: Option<&str>,
) -> std::io::Result<Server> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut last = None;
    // A port found free can be taken by someone else before the server binds it: try a few.
    for _ in 0..5 {
        let port = free_port()?;
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
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = primary {
            args.extend([
                "--replicaof".to_string(),
                "127.0.0.1".to_string(),
                p.to_string(),
            ]);
        }
        args.extend(extra.iter().cloned());
        let mut server = Server {
            port,
            dir: dir.clone(),
            child: Some(spawn_server(&dir, &args)?),
            args,
            password: password.map(String::from),
        };
        match wait_answering(&mut server).await {
            Ok(()) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
}

async fn start_sentinel(
    root: &Path,
    index: usize,
    primary_port: u16,
    total: usize,
    opts: &Builder,
) -> std::io::Result<Server> {
    let dir = root.join(format!("sentinel{index}"));
    std::fs::create_dir_all(&dir)?;
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        let quorum = total / 2 + 1;
        let down_after = opts.down_after_ms.unwrap_or(1000);
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel.log\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down_after}\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display()
        );
        if let Some(p) = &opts.password {
            conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
        }
        if let Some(p) = &opts.sentinel_password {
            conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
        }
        let path = dir.join("sentinel.conf");
        std::fs::write(&path, conf)?;
        let args = vec![
            path.to_string_lossy().into_owned(),
            "--sentinel".to_string(),
        ];
        let child = Some(spawn_server(&dir, &args)?);
        let mut server = Server {
            port,
            dir: dir.clone(),
            child,
            args,
            password: opts.sentinel_password.clone(),
        };
        match wait_answering(&mut server).await {
            Ok(()) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("redis-sentinel did not start")))
}

/// Waits until the server answers `PING` (any reply, `NOAUTH` included).
async fn wait_answering(server: &mut Server) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(child) = server.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                server.child = None;
                return Err(std::io::Error::other(format!(
                    "redis-server exited: {status}"
                )));
            }
        }
        if call(&server.addr(), &["PING"]).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis-server did not answer",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a replica's `ROLE` says `connected`.
pub async fn wait_synced(replica: &Server) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(OwnedFrame::Array(role)) = replica.call(&["ROLE"]).await {
            if matches!(role.get(3), Some(OwnedFrame::BulkString(s)) if s == b"connected") {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "replica did not sync",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one command to `addr` on a fresh connection and decodes the reply.
pub async fn call(addr: &Addr, args: &[&str]) -> std::io::Result<OwnedFrame> {
    call_as(addr, None, args).await
}

/// Like [`call`], authenticating first if `password` is set.
pub async fn call_as(
    addr: &Addr,
    password: Option<&str>,
    args: &[&str],
) -> std::io::Result<OwnedFrame> {
    let connect = TcpStream::connect(addr.as_str());
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect).await??;
    let mut out = Vec::new();
    if let Some(p) = password {
        encode_command(&mut out, &[b"AUTH", p.as_bytes()]);
    }
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode_command(&mut out, &args);
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    // The AUTH reply, if any, comes first and is not the answer.
    let mut skip = usize::from(password.is_some());
    loop {
        while let Some((frame, len)) =
            crate::resp::value::decode(&buf).map_err(std::io::Error::other)?
        {
            let _ = buf.split_to(len);
            if skip == 0 {
                return Ok(frame);
            }
            skip -= 1;
        }
        if tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await?? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
