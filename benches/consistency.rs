//! Consistency against offload: how many reads the proxy serves from replicas while it keeps each
//! consistency mode's promise, and what the promise costs in throughput.
//!
//! Starts a primary and two replicas (redis-server on free loopback ports) and one proxy per mode in
//! front of them, then runs rounds: in each round, for each write ratio, each mode's proxy gets the same
//! workload in turn (the order rotates between rounds, so the machine's noise hits every mode alike):
//! 8 connections, each a request/response client over 1,000 keys, writing its own keys (an increasing
//! version per key) and reading its own keys and everyone's. Every read is checked:
//! - read-your-writes: a read of one of its own keys returns at least the version it last wrote;
//! - monotonic reads: no read returns an older version of a key than the connection read before;
//! - global: no read returns an older version than one acknowledged to any connection before the read
//!   was sent (required only of `--consistency global`; counted for every mode).
//!
//! The share of reads served by replicas comes from the proxy's own metrics
//! (`redsplit_commands_total{kind="read"}` by role), read before and after each run.
//!
//! Usage: `cargo bench --bench consistency -- [--proxy PATH] [--seconds S] [--rounds R] [--modes m,m]
//! [--ratios 2,10,100] [--delay-replica MS]`. `--proxy` runs another build (an older commit, to compare);
//! by default the redsplit binary of this build. `--delay-replica` puts one replica behind a TCP relay that
//! holds every byte that long, so replicas are really behind. Run by `cargo test` (without `--bench`), it
//! does nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redsplit::embedded::Cluster;

#[path = "../tests/common/history.rs"]
mod history;
#[path = "../tests/common/relay.rs"]
#[allow(dead_code)]
mod relay;

const CONNECTIONS: usize = 8;
const KEYS: usize = 1000;

struct Options {
    proxy: String,
    seconds: u64,
    rounds: usize,
    modes: Vec<String>,
    ratios: Vec<u32>,
    delay_replica: Option<u64>,
}

fn options() -> Option<Options> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("consistency: a benchmark; run it with `cargo bench --bench consistency`");
        return None;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        value(name)
            .unwrap_or_else(|| default.to_string())
            .split(',')
            .map(str::to_string)
            .collect()
    };
    Some(Options {
        proxy: value("--proxy").unwrap_or_else(|| env!("CARGO_BIN_EXE_redsplit").to_string()),
        seconds: value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5),
        rounds: value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3),
        modes: list("--modes", "session,eventual,global"),
        ratios: list("--ratios", "2,10,100")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        delay_replica: value("--delay-replica").and_then(|s| s.parse().ok()),
    })
}

fn main() {
    let Some(opts) = options() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(opts));
}

/// One mode's proxy, run as a separate process.
struct ProxyProcess {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn start_proxy(
    opts: &Options,
    cluster: &Cluster,
    mode: &str,
    relay: Option<u16>,
) -> ProxyProcess {
    let (listen, admin) = (free_addr(), free_addr());
    let mut cmd = Command::new(&opts.proxy);
    cmd.args(["--primary", cluster.primary().addr().as_str()]);
    for r in cluster.replicas() {
        cmd.args(["--replica", r.addr().as_str()]);
    }
    if let Some(port) = relay {
        // The replica behind the relay names it as its master: tell older builds what it is.
        cmd.args([
            "--address-map",
            &format!("127.0.0.1:{port}={}", cluster.primary().addr()),
        ]);
    }
    cmd.args(["--consistency", mode])
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("start the proxy");
    let p = ProxyProcess {
        child,
        listen,
        admin,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = redis::Client::open(format!("redis://{listen}/")) {
            if c.get_multiplexed_async_connection().await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the {mode} proxy did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

/// Reads served by (primary, replicas) so far, and reads sent again because a replica was behind, from
/// the proxy's metrics.
async fn reads_by_role(admin: SocketAddr) -> (f64, f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("ask metrics");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("metrics");
    let mut by_role = (0.0, 0.0, 0.0);
    for line in body.lines() {
        if let Some(v) = line.strip_prefix("redsplit_reads_behind_total ") {
            by_role.2 = v.trim().parse().unwrap_or(0.0);
        }
        if !line.starts_with("redsplit_commands_total{") || !line.contains("kind=\"read\"") {
            continue;
        }
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.contains("role=\"primary\"") {
            by_role.0 += v;
        } else if line.contains("role=\"replica\"") {
            by_role.1 += v;
        }
    }
    by_role
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// What the clients saw.
    seen: history::Seen,
    /// Share of reads served by replicas.
    share: f64,
    /// Commands per second.
    ops: f64,
    /// Reads sent again because their replica had not caught up.
    behind: f64,
}

/// One run of the workload through `p`.
async fn run_once(p: &ProxyProcess, ratio: u32, seconds: u64) -> Run {
    // Every key starts at version 0 (absent), so runs do not see each other's versions as newer.
    let mut flush = redis::Client::open(format!("redis://{}/", p.listen))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut flush)
        .await
        .expect("FLUSHALL");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = reads_by_role(p.admin).await;
    let started = Instant::now();
    let workload = history::Workload {
        connections: CONNECTIONS,
        keys: KEYS,
        write_one_in: ratio,
    };
    let seen = history::run(p.listen, workload, "c:", Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = reads_by_role(p.admin).await;
    let (primary, replicas) = (after.0 - before.0, after.1 - before.1);
    let share = if primary + replicas > 0.0 {
        replicas / (primary + replicas)
    } else {
        0.0
    };
    Run {
        seen,
        share,
        ops: seen.ops as f64 / elapsed,
        behind: after.2 - before.2,
    }
}

async fn run(opts: Options) {
    let cluster = Cluster::start(2, 0).await.expect("redis servers start");
    let relay = match opts.delay_replica {
        Some(ms) => Some(delay_replica(&cluster, Duration::from_millis(ms)).await),
        None => None,
    };
    let mut proxies = Vec::new();
    for mode in &opts.modes {
        proxies.push((
            mode.clone(),
            start_proxy(&opts, &cluster, mode, relay.as_ref().map(|r| r.0)).await,
        ));
    }
    // Let every replica become eligible.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "consistency: {} ({CONNECTIONS} connections, {KEYS} keys, {} s per run, {} rounds{})",
        opts.proxy,
        opts.seconds,
        opts.rounds,
        opts.delay_replica
            .map(|ms| format!(", one replica {ms} ms behind a relay"))
            .unwrap_or_default()
    );
    let mut results: HashMap<(u32, String), Vec<Run>> = HashMap::new();
    for round in 0..opts.rounds {
        for &ratio in &opts.ratios {
            for i in 0..proxies.len() {
                let (mode, p) = &proxies[(i + round) % proxies.len()];
                let r = run_once(p, ratio, opts.seconds).await;
                eprintln!(
                    "  round {round} 1/{ratio} {mode}: {:.0} ops/s, {:.1}% reads on replicas, {} sent again (behind), {:?}",
                    r.ops,
                    r.share * 100.0,
                    r.behind,
                    r.seen
                );
                results.entry((ratio, mode.clone())).or_default().push(r);
            }
        }
    }
    println!(
        "{:<8} {:<9} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "writes",
        "mode",
        "ops/s",
        "vs eventual",
        "replicas",
        "ryw",
        "monotonic",
        "global",
        "errors"
    );
    for &ratio in &opts.ratios {
        let eventual = results
            .get(&(ratio, "eventual".to_string()))
            .map(|rs| median(rs.iter().map(|r| r.ops).collect()));
        for mode in &opts.modes {
            let Some(rs) = results.get(&(ratio, mode.clone())) else {
                continue;
            };
            let ops = median(rs.iter().map(|r| r.ops).collect());
            let share = median(rs.iter().map(|r| r.share).collect());
            let mut sum = history::Seen::default();
            for r in rs {
                sum += r.seen;
            }
            println!(
                "{:<8} {:<9} {:>12.0} {:>10} {:>9.1}% {:>9} {:>9} {:>9} {:>7}",
                format!("1 in {ratio}"),
                mode,
                ops,
                eventual
                    .map(|e| format!("{:.2}", ops / e))
                    .unwrap_or_else(|| "-".into()),
                share * 100.0,
                sum.ryw,
                sum.monotonic,
                sum.global,
                sum.errors
            );
        }
    }
    println!(
        "medians over the rounds; ryw, monotonic, global: violations seen over every round (global is \
         promised only by --consistency global)"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Makes replica 1 replicate through a relay that holds every byte `delay`; returns the relay's port and
/// the relay (it stops when dropped).
async fn delay_replica(cluster: &Cluster, delay: Duration) -> (u16, relay::Relay) {
    let upstream: SocketAddr = cluster
        .primary()
        .addr()
        .as_str()
        .parse()
        .expect("loopback address");
    let relay = relay::Relay::start(upstream, delay).await;
    let port = relay.addr.port();
    let replica = cluster.replicas()[1].addr();
    redsplit::embedded::call(&replica, &[&["REPLICAOF", "127.0.0.1", &port.to_string()]])
        .await
        .expect("REPLICAOF through the relay");
    // Synced through the relay once it reports its link up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = redsplit::embedded::call(&replica, &[&["INFO", "replication"]]).await;
        let up = matches!(info, Ok(redis_protocol::resp2::types::OwnedFrame::BulkString(b))
            if String::from_utf8_lossy(&b).contains("master_link_status:up"));
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delayed replica did not sync"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (port, relay)
}
