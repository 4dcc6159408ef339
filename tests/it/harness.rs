//! Test harness: clients of the proxy (and of the servers the scenario started, see `common/`), raw
//! connections, the binary run as a process, and writers that keep a failover busy.

#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use redsplit::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::admin::{http, http_with};
pub use crate::cluster::{Cluster, Server};
pub use crate::scenario::{proxy_with, wait_eligible};
pub use crate::wait::PATIENCE;

/// A client connection through the proxy (one TCP connection, pipelined).
pub async fn client(p: &Proxy) -> MultiplexedConnection {
    client_at(p.listen).await
}

/// A client connection to `addr`.
pub async fn client_at(addr: SocketAddr) -> MultiplexedConnection {
    let c = redis::Client::open(format!("redis://{addr}/")).expect("valid url");
    c.get_multiplexed_async_connection()
        .await
        .expect("client connects")
}

/// A client connection straight to a server.
pub async fn direct(s: &Server) -> MultiplexedConnection {
    client_at(s.addr().as_str().parse().expect("loopback address")).await
}

/// Number of calls of `cmd` (lower case, `container|sub` for subcommands) a server has run.
pub async fn calls(s: &Server, cmd: &str) -> u64 {
    let mut c = direct(s).await;
    // Valkey refuses INFO while a script runs (BUSY): ask again until the script is over.
    let mut info = String::new();
    eventually!("INFO commandstats answered", {
        match redis::cmd("INFO")
            .arg("commandstats")
            .query_async::<String>(&mut c)
            .await
        {
            Ok(i) => {
                info = i;
                true
            }
            Err(e) if e.to_string().contains("BUSY") => false,
            Err(e) => panic!("INFO commandstats: {e}"),
        }
    });
    commandstat_calls(&info, cmd)
}

/// Number of calls of `cmd` in `INFO commandstats` text (0 if it never ran).
pub fn commandstat_calls(info: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `cmd` and returns its reply.
pub async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// Sends `cmd` and returns the raw reply or error.
pub async fn try_q(c: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

/// A raw TCP connection to the proxy, for bytes no client library would send.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to the proxy.
    pub async fn connect(p: &Proxy) -> Raw {
        Raw::connect_to(p.listen).await
    }

    /// Connects to `addr` (a proxy run as a separate process).
    pub async fn connect_to(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("raw connect"),
            buf: Vec::new(),
        }
    }

    /// Writes bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// Reads until `n` bytes are available, returns them.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            let got = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(
                got > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..got]);
        }
        self.buf.drain(..n).collect()
    }

    /// Reads exactly the bytes `want` and checks them.
    pub async fn expect(&mut self, want: &[u8]) {
        let got = self.read_exact(want.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }

    /// Reads one complete reply frame.
    pub async fn frame(&mut self) -> Vec<u8> {
        let mut scanner = redsplit::resp::ReplyScanner::new(redsplit::resp::Limits::default());
        loop {
            if let Some(f) = scanner.scan(&self.buf).expect("valid reply") {
                return self.buf.drain(..f.len).collect();
            }
            let mut chunk = [0u8; 65536];
            let got = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(got > 0, "connection closed mid-reply");
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// Waits for the proxy to close the connection, returning whatever arrived before.
    pub async fn closed(&mut self) -> Vec<u8> {
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("close in time")
            {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The text of a bulk or simple string reply.
pub fn text(f: redis_protocol::resp2::types::OwnedFrame) -> String {
    use redis_protocol::resp2::types::OwnedFrame;
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// Encodes a command as RESP.
pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    redsplit::resp::encode_command(&mut out, &args);
    out
}

/// The binary, run by a command that must end up exec'ing it with `--listen` on a free port. Everything
/// it prints is collected, to its last line (a pipe left unread would fail its later prints). Stopped on
/// drop with SIGTERM, so that it stops the servers it started in embedded mode, then killed if need be.
pub struct Running {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    stdout: Lines,
    log: Lines,
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Collects the lines of `from` as they come, on a thread of their own.
fn collect_lines(from: impl std::io::Read + Send + 'static) -> Lines {
    let lines = Lines::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

impl Running {
    pub async fn spawn(mut cmd: std::process::Command) -> Running {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run redsplit");
        let stdout = collect_lines(child.stdout.take().expect("stdout"));
        let log = collect_lines(child.stderr.take().expect("stderr"));
        let mut running = Running {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            stdout,
            log,
        };
        let line = running.stdout_line("listening on").await;
        running.addr = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .expect("address");
        running
    }

    /// The first line printed that contains `what`, once there is one.
    pub async fn stdout_line(&mut self, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let found = self
                .stdout
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(what))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("the proxy exited ({status}) without printing {what:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what:?} printed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `signal` (a `kill` name: HUP, TERM, ...).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn hup(&self) {
        self.signal("HUP");
    }

    /// Waits for the process to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many log lines (stderr) contain `what`.
    pub fn logged(&self, what: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter().filter(|l| l.contains(what)).count()
    }

    /// Every log line (stderr) so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's node for the replica at `addr`.
pub fn replica_node(
    p: &Proxy,
    addr: &redsplit::config::Addr,
) -> std::sync::Arc<redsplit::upstream::Node> {
    p.topo
        .snapshot()
        .replica_nodes()
        .find(|n| &n.addr == addr)
        .cloned()
        .expect("the replica is in the topology")
}

/// The primary the proxy's topology names now.
pub fn primary_addr(p: &Proxy) -> Option<redsplit::config::Addr> {
    p.topo.snapshot().primary().map(|n| n.addr.clone())
}

/// The port of `addr`, as a command argument.
pub fn port(addr: &redsplit::config::Addr) -> String {
    addr.port().to_string()
}

/// For each key, whether `server` has it (one pipelined round trip).
pub async fn exists_each(server: &Server, keys: &[String]) -> Vec<bool> {
    let mut d = direct(server).await;
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("EXISTS").arg(k);
    }
    let exists: Vec<i64> = pipe.query_async(&mut d).await.expect("EXISTS");
    exists.into_iter().map(|e| e == 1).collect()
}

/// Every acknowledged key exists on `server`.
pub async fn assert_all_present(server: &Server, acked: &[String]) {
    let lost = exists_each(server, acked)
        .await
        .iter()
        .filter(|e| !**e)
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged writes lost",
        acked.len()
    );
}

/// Keeps the replication stream moving, as a live primary does: a SET on `server` every 5 ms until
/// `stop`.
pub async fn spawn_ticker(
    server: &Server,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut w = direct(server).await;
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _: () = q(&mut w, &["SET", "tick", &i.to_string()]).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// What one writer saw: acknowledged keys, errors with when they happened, and when its writes succeeded.
#[derive(Default)]
pub struct Writes {
    pub acked: Vec<String>,
    pub errors: Vec<(Instant, String)>,
    pub ok_at: Vec<Instant>,
}

/// Writers that count errors and keep the keys they got acknowledged, until `stop`.
pub fn spawn_writers(
    addr: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Writes>> {
    (0..n)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let mut seen = Writes::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("s{w}:{i}");
                    i += 1;
                    match try_q(&mut c, &["SET", &key, "1"]).await {
                        Ok(_) => {
                            seen.acked.push(key);
                            seen.ok_at.push(Instant::now());
                        }
                        Err(e) => seen.errors.push((Instant::now(), e.to_string())),
                    }
                }
                seen
            })
        })
        .collect()
}

/// Stops the writers and merges what they saw.
pub async fn stop_writers(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Writes>>,
) -> Writes {
    stop.store(true, Ordering::Relaxed);
    let mut all = Writes::default();
    for w in writers {
        let seen = w.await.expect("writer");
        all.acked.extend(seen.acked);
        all.errors.extend(seen.errors);
        all.ok_at.extend(seen.ok_at);
    }
    all
}
