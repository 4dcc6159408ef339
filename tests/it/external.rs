//! Failovers the proxy did not start: `SENTINEL FAILOVER` sent to a sentinel directly, `REPLICAOF NO ONE`
//! sent to a replica by an operator. Writers pipeline `RPUSH` of unique ids with a read of their own list
//! (`LLEN`) behind them; every acknowledged id must be on the final primary, and no read may show a
//! list shorter than the session already wrote or read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let lost = lost_on(&cluster.replicas()[i], &seen.acked).await.len();
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
    let promoted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    let judged = judge(&cluster.replicas()[0], &seen).await;
    let late: Vec<Duration> = judged
        .lost
        .iter()
        .filter_map(|at| at.checked_duration_since(promoted_at + DETECTION))
        .collect();
    eprintln!(
        "MEASURED external static promotion: {} writes acknowledged, {} lost ({} acknowledged later \
         than {DETECTION:?} after the promotion), {} failed, {} reads, {} ryw and {} monotonic \
         violations ({} and {} beyond what the lost writes explain)",
        seen.acked.values().map(Vec::len).sum::<usize>(),
        judged.lost.len(),
        late.len(),
        seen.errors,
        seen.reads,
        seen.ryw,
        seen.monotonic,
        judged.ryw,
        judged.monotonic,
    );
    let span = |f: fn(Duration, Duration) -> Duration| {
        judged
            .lost
            .iter()
            .map(|at| at.saturating_duration_since(promoted_at))
            .reduce(f)
    };
    eprintln!(
        "lost writes acknowledged from {:?} to {:?} after the promotion (0: before it)",
        span(Duration::min),
        span(Duration::max)
    );
    // Nothing announces this promotion: writes the primary acknowledged before a probe saw it are lost
    // (asynchronous replication). None acknowledged after that may be.
    assert_eq!(
        late.len(),
        0,
        "acknowledged writes lost after the promotion was seen"
    );
    // A read after the switch cannot show a lost write: only reads older than the writes that
    // survived count.
    assert_eq!((judged.ryw, judged.monotonic), (0, 0), "stale reads");
}

#[tokio::test]
async fn a_replica_an_operator_detaches_as_a_master_of_its_own_holds_writes_only_for_write_hold() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .flags(|f| f.write_hold_ms = Some(1000))
        .proxy()
        .await;
    let old = cluster.primary().addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(proxy.listen, 2, stop.clone());
    eventually!(
        "writes flowing",
        calls(cluster.primary(), "set").await > 500
    );
    let mut stray = direct(&cluster.replicas()[1]).await;
    let _: () = q(&mut stray, &["REPLICAOF", "NO", "ONE"]).await;
    eventually!("writes held", proxy.topo.writes_held());
    let held = Instant::now();
    eventually!("writes released", !proxy.topo.writes_held(), PATIENCE);
    let released = held.elapsed();
    let at = calls(cluster.primary(), "set").await;
    eventually!(
        "writes reach the primary again",
        calls(cluster.primary(), "set").await > at + 500
    );
    let Writes { acked, errors, .. } = stop_writers(&stop, writers).await;
    eprintln!(
        "MEASURED stray master: writes held {released:?}, {} acknowledged, {} failed",
        acked.len(),
        errors.len()
    );
    assert_eq!(primary_addr(&proxy), Some(old));
    assert!(
        released >= Duration::from_millis(900),
        "held write_hold_ms: {released:?}"
    );
    assert!(
        !proxy
            .topo
            .snapshot()
            .replica_nodes()
            .any(|n| n.addr == cluster.replicas()[1].addr()),
        "the stray master is no replica"
    );
    assert_all_present(cluster.primary(), &acked).await;
}

/// How long a promotion nothing announces may go unseen: a few probe intervals (20 ms in tests), with
/// room for a loaded machine.
const DETECTION: Duration = Duration::from_millis(300);

/// What the list writers saw.
#[derive(Default)]
struct ListWrites {
    /// Acknowledged ids, per list, with when their acknowledgement arrived.
    acked: BTreeMap<String, Vec<(u64, Instant)>>,
    /// Commands that failed.
    errors: u64,
    /// Reads answered.
    reads: u64,
    /// Reads of a list shorter than the length an acknowledged `RPUSH` of the session returned.
    ryw: u64,
    /// Reads of a list shorter than the session read before.
    monotonic: u64,
    /// Each read's length, per list, with how many ids were acknowledged before it.
    lengths: BTreeMap<String, Vec<(i64, usize)>>,
}

/// What the final primary says of a history.
struct Judged {
    /// When each acknowledged id the final primary lacks was acknowledged.
    lost: Vec<Instant>,
    /// Reads of a list shorter than the acknowledged ids before them that survived.
    ryw: u64,
    /// Reads of a list shorter than an earlier read, in lists that lost no acknowledged id.
    monotonic: u64,
}

/// Checks `seen` against the lists on `server`, the final primary.
async fn judge(server: &Server, seen: &ListWrites) -> Judged {
    let mut c = direct(server).await;
    let mut out = Judged {
        lost: Vec::new(),
        ryw: 0,
        monotonic: 0,
    };
    for (list, ids) in &seen.acked {
        let have: Vec<u64> = q(&mut c, &["LRANGE", list, "0", "-1"]).await;
        let have: std::collections::HashSet<u64> = have.into_iter().collect();
        let mut survived = vec![0usize];
        for (id, at) in ids {
            let kept = have.contains(id);
            if !kept {
                out.lost.push(*at);
            }
            let last = survived.last().copied().unwrap_or(0);
            survived.push(last + usize::from(kept));
        }
        let lossless = survived.last() == Some(&ids.len());
        let mut read = 0i64;
        for &(len, before) in seen.lengths.get(list).into_iter().flatten() {
            let must = survived.get(before).copied().unwrap_or(0) as i64;
            out.ryw += u64::from(len < must);
            out.monotonic += u64::from(lossless && len < read);
            read = read.max(len);
        }
    }
    out
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
                let mut lengths = Vec::new();
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
                                ids.push((id, Instant::now()));
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
                    lengths.push((len, ids.len()));
                    seen.ryw += u64::from(len < written);
                    seen.monotonic += u64::from(len < read);
                    read = read.max(len);
                }
                seen.lengths.insert(list.clone(), lengths);
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
        all.lengths.extend(seen.lengths);
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

/// When each acknowledged id that `server` lacks was acknowledged.
async fn lost_on(server: &Server, acked: &BTreeMap<String, Vec<(u64, Instant)>>) -> Vec<Instant> {
    let mut c = direct(server).await;
    let mut lost = Vec::new();
    for (list, ids) in acked {
        let have: Vec<u64> = q(&mut c, &["LRANGE", list, "0", "-1"]).await;
        let have: std::collections::HashSet<u64> = have.into_iter().collect();
        lost.extend(
            ids.iter()
                .filter(|(id, _)| !have.contains(id))
                .map(|(_, at)| *at),
        );
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
