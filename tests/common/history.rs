//! A history checker: connections write their own keys (an increasing version per key) and read their own
//! keys and everyone's, and every read is checked against what was written and read before it. Shared by
//! the integration tests and `benches/consistency.rs`.
//!
//! - read-your-writes: a read of a connection's own key returns at least the version it last wrote;
//! - monotonic reads: no read returns an older version of a key than the connection read before;
//! - global: no read returns an older version than one acknowledged to any connection before the read was
//!   sent (promised only by `consistency = "global"`; counted for every mode).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

/// What the connections of a history saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Commands run.
    pub ops: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads of a connection's own key older than its last write of it.
    pub ryw: u64,
    /// Reads older than the connection's earlier read of the key.
    pub monotonic: u64,
    /// Reads older than a version acknowledged to anyone before the read was sent.
    pub global: u64,
    /// Commands that failed.
    pub errors: u64,
}

impl std::ops::AddAssign for Seen {
    fn add_assign(&mut self, o: Seen) {
        self.ops += o.ops;
        self.reads += o.reads;
        self.ryw += o.ryw;
        self.monotonic += o.monotonic;
        self.global += o.global;
        self.errors += o.errors;
    }
}

/// The shape of a history.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Connections, each owning the keys `k` with `k % connections == its number`.
    pub connections: usize,
    /// Keys in all.
    pub keys: usize,
    /// One command in this many is a write.
    pub write_one_in: u32,
}

/// The versions acknowledged so far, per key, shared by every connection of a history.
pub type Acked = Arc<Vec<AtomicU64>>;

/// A fresh table of acknowledged versions for `workload`.
pub fn acked(workload: &Workload) -> Acked {
    Arc::new((0..workload.keys).map(|_| AtomicU64::new(0)).collect())
}

/// Runs connection `c` of `workload` on `conn` until `until`, checking every read. Keys are named
/// `prefix` and their number.
pub async fn connection(
    c: usize,
    mut conn: MultiplexedConnection,
    workload: Workload,
    prefix: &str,
    acked: Acked,
    until: Instant,
) -> Seen {
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut out = Seen::default();
    let mut written: HashMap<usize, u64> = HashMap::new();
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let n = workload.connections;
    let own = |rng: &mut rand::rngs::SmallRng| rng.random_range(0..workload.keys / n) * n + c;
    while Instant::now() < until {
        out.ops += 1;
        if rng.random_range(0..workload.write_one_in) == 0 {
            let key = own(&mut rng);
            let version = written.get(&key).copied().unwrap_or(0) + 1;
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{prefix}{key}"))
                .arg(version)
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {
                    written.insert(key, version);
                    acked[key].fetch_max(version, Ordering::AcqRel);
                }
                Err(_) => out.errors += 1,
            }
            continue;
        }
        // Half the reads are of the connection's own keys, half of anyone's.
        let key = if rng.random_bool(0.5) {
            own(&mut rng)
        } else {
            rng.random_range(0..workload.keys)
        };
        let must = acked[key].load(Ordering::Acquire);
        let r: redis::RedisResult<Option<u64>> = redis::cmd("GET")
            .arg(format!("{prefix}{key}"))
            .query_async(&mut conn)
            .await;
        let Ok(v) = r else {
            out.errors += 1;
            continue;
        };
        let v = v.unwrap_or(0);
        out.reads += 1;
        if written.get(&key).is_some_and(|w| v < *w) {
            out.ryw += 1;
        }
        if seen.get(&key).is_some_and(|s| v < *s) {
            out.monotonic += 1;
        }
        if v < must {
            out.global += 1;
        }
        let s = seen.entry(key).or_default();
        *s = (*s).max(v);
    }
    out
}

/// Runs `workload` through the proxy at `addr` for `for_`, every connection at once; returns what they saw.
pub async fn run(
    addr: std::net::SocketAddr,
    workload: Workload,
    prefix: &str,
    for_: std::time::Duration,
) -> Seen {
    let acked = acked(&workload);
    let until = Instant::now() + for_;
    let mut tasks = Vec::new();
    for c in 0..workload.connections {
        let conn = redis::Client::open(format!("redis://{addr}/"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let prefix = prefix.to_string();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            connection(c, conn, workload, &prefix, acked, until).await
        }));
    }
    let mut total = Seen::default();
    for t in tasks {
        total += t.await.expect("connection");
    }
    total
}
