//! Failovers the proxy did not start: `SENTINEL FAILOVER` sent to a sentinel directly, `REPLICAOF NO ONE`
//! sent to a replica by an operator. Writers pipeline `RPUSH` of unique ids with a read of their own list
//! (`LLEN`) behind them; every acknowledged id must be on the final primary, and no read may show a
//! list shorter than the session already wrote or read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;

use crate::harness::*;

#[tokio::test]
async fn a_sentinel_failover_sent_to_a_sentinel_directly_loses_no_acknowledged_write() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .flags(|f| f.write_hold_ms = Some(30_000))
        .proxy()
        .await;
    let old = cluster.primary().addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_list_writers(proxy.listen, 4, stop.clone());
    eventually!(
        "writes flowing",
        calls(cluster.primary(), "rpush").await > 2000
    );
    let reply = cluster.sentinels()[0]
        .call(&["SENTINEL", "FAILOVER", redsplit::embedded::MASTER_NAME])
        .await
        .expect("SENTINEL FAILOVER");
    assert!(
        matches!(&reply, OwnedFrame::SimpleString(s) if s == b"OK"),
        "{reply:?}"
    );
    eventually!(
        "the proxy follows the promoted replica",
        primary_addr(&proxy).is_some_and(|p| p != old),
        PATIENCE * 3
    );
    let new = primary_addr(&proxy).expect("primary");
    let i = cluster.replica_at(&new).expect("a former replica leads");
    more_rpush(&cluster.replicas()[i], 2000).await;
    let seen = stop_list_writers(&stop, writers).await;
    let lost = missing_on(&cluster.replicas()[i], &seen.acked).await;
    eprintln!(
        "MEASURED external sentinel failover: {} writes acknowledged, {} lost, {} failed, {} reads, \
         {} ryw and {} monotonic violations",
        seen.acked.values().map(Vec::len).sum::<usize>(),
        lost,
        seen.errors,
        seen.reads,
        seen.ryw,
        seen.monotonic
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!((seen.ryw, seen.monotonic), (0, 0), "stale reads");
}

#[tokio::test]
async fn a_replica_promoted_by_an_operator_in_static_mode_loses_no_acknowledged_write() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .flags(|f| f.write_hold_ms = Some(30_000))
        .proxy()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_list_writers(proxy.listen, 4, stop.clone());
    eventually!(
        "writes flowing",
        calls(cluster.primary(), "rpush").await > 2000
    );
    // The operator promotes replica 0, then takes a moment before pointing the others at it.
    let new = cluster.replicas()[0].addr();
    let mut promoted = direct(&cluster.replicas()[0]).await;
    let _: () = q(&mut promoted, &["REPLICAOF", "NO", "ONE"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in [cluster.primary(), &cluster.replicas()[1]] {
        let mut c = direct(s).await;
        let _: () = q(&mut c, &["REPLICAOF", "127.0.0.1", &port(&new)]).await;
    }
    eventually!(
        "the proxy follows the promoted replica",
        primary_addr(&proxy) == Some(new.clone()),
        PATIENCE * 3
    );
    more_rpush(&cluster.replicas()[0], 2000).await;
    let seen = stop_list_writers(&stop, writers).await;
    let lost = missing_on(&cluster.replicas()[0], &seen.acked).await;
    eprintln!(
        "MEASURED external static promotion: {} writes acknowledged, {} lost, {} failed, {} reads, \
         {} ryw and {} monotonic violations",
        seen.acked.values().map(Vec::len).sum::<usize>(),
        lost,
        seen.errors,
        seen.reads,
        seen.ryw,
        seen.monotonic
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!((seen.ryw, seen.monotonic), (0, 0), "stale reads");
}

/// What the list writers saw.
#[derive(Default)]
struct ListWrites {
    /// Acknowledged ids, per list.
    acked: BTreeMap<String, Vec<u64>>,
    /// Commands that failed.
    errors: u64,
    /// Reads answered.
    reads: u64,
    /// Reads of a list shorter than the length an acknowledged `RPUSH` of the session returned.
    ryw: u64,
    /// Reads of a list shorter than the session read before.
    monotonic: u64,
}

/// `n` connections, each pipelining 8 `RPUSH <its list> <id>` and one `LLEN` of its list, until `stop`.
fn spawn_list_writers(
    addr: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<ListWrites>> {
    (0..n)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let list = format!("ext:{w}");
                let mut raw = Raw::connect_to(addr).await;
                let mut seen = ListWrites::default();
                let mut ids = Vec::new();
                let (mut written, mut read) = (0i64, 0i64);
                let mut next = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut bytes = Vec::new();
                    let first = next;
                    for _ in 0..8 {
                        bytes.extend(resp(&["RPUSH", &list, &next.to_string()]));
                        next += 1;
                    }
                    bytes.extend(resp(&["LLEN", &list]));
                    raw.send(&bytes).await;
                    for id in first..next {
                        match integer(&raw.frame().await) {
                            Some(len) => {
                                ids.push(id);
                                written = written.max(len);
                            }
                            None => seen.errors += 1,
                        }
                    }
                    let Some(len) = integer(&raw.frame().await) else {
                        seen.errors += 1;
                        continue;
                    };
                    seen.reads += 1;
                    seen.ryw += u64::from(len < written);
                    seen.monotonic += u64::from(len < read);
                    read = read.max(len);
                }
                seen.acked.insert(list, ids);
                seen
            })
        })
        .collect()
}

/// Stops the list writers and merges what they saw.
async fn stop_list_writers(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<ListWrites>>,
) -> ListWrites {
    stop.store(true, Ordering::Relaxed);
    let mut all = ListWrites::default();
    for w in writers {
        let seen = w.await.expect("writer");
        all.acked.extend(seen.acked);
        all.errors += seen.errors;
        all.reads += seen.reads;
        all.ryw += seen.ryw;
        all.monotonic += seen.monotonic;
    }
    all
}

/// The integer of a `:n` reply; `None` for an error.
fn integer(frame: &[u8]) -> Option<i64> {
    std::str::from_utf8(frame.strip_prefix(b":")?)
        .ok()?
        .trim_end()
        .parse()
        .ok()
}

/// How many acknowledged ids `server` lacks.
async fn missing_on(server: &Server, acked: &BTreeMap<String, Vec<u64>>) -> usize {
    let mut c = direct(server).await;
    let mut lost = 0;
    for (list, ids) in acked {
        let have: Vec<u64> = q(&mut c, &["LRANGE", list, "0", "-1"]).await;
        let have: std::collections::HashSet<u64> = have.into_iter().collect();
        lost += ids.iter().filter(|id| !have.contains(id)).count();
    }
    lost
}

/// Waits until `server` has run `n` more `RPUSH`.
async fn more_rpush(server: &Server, n: u64) {
    let at = calls(server, "rpush").await;
    eventually!(
        "writes reach the new primary",
        calls(server, "rpush").await > at + n,
        PATIENCE * 2
    );
}
