//! Multi-datacenter: the replication tree of `common/sites.rs` across three sites joined by delaying
//! relays, Sentinel, and one proxy per site in its zone. CI runs the small layout with short delays; the
//! full bed (nine servers, WAN round trips) is `three_datacenter_bed`, run by `scripts/bench-dc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redsplit::config::{Consistency, Flags};
use redsplit::Proxy;

use crate::harness::*;
use crate::history::{self, Workload};
use crate::sites::{rtt, Bed, Layout, SITES};

/// Reads a proxy routed so far: to replicas in its zone, to replicas elsewhere, to the primary.
async fn read_places(proxy: &Proxy) -> [f64; 3] {
    let text = http(proxy.admin, "GET", "/metrics").await.1;
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    [
        sum("redsplit_replica_reads_total{locality=\"local\"}"),
        sum("redsplit_replica_reads_total{locality=\"remote\"}")
            + sum("redsplit_replica_reads_total{locality=\"unknown\"}"),
        sum("redsplit_reads_on_primary_total{"),
    ]
}

/// Starts a proxy in `site` with `tweak`, and waits until it sees the whole tree eligible.
async fn site_proxy(bed: &Bed, site: usize, tweak: impl FnOnce(&mut Flags)) -> Proxy {
    let mut flags = bed.proxy_flags(site);
    tweak(&mut flags);
    let proxy = proxy_with(flags).await;
    wait_eligible(&proxy, bed.nodes.len() - 1).await;
    proxy
}

/// p50 and p99 of `n` sequential GETs through `proxy`, in milliseconds.
async fn read_latency(proxy: &Proxy, n: usize) -> (f64, f64) {
    let mut c = client(proxy).await;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let _: Option<String> = q(&mut c, &["GET", &format!("lat{}", i % 16)]).await;
        took.push(t.elapsed().as_secs_f64() * 1e3);
    }
    percentiles(&mut took)
}

/// p50 and p99 of `n` sequential SETs through `proxy`, in milliseconds, and how many failed.
async fn write_latency(proxy: &Proxy, n: usize) -> (f64, f64, usize) {
    let mut c = client(proxy).await;
    let mut took = Vec::with_capacity(n);
    let mut failed = 0;
    for i in 0..n {
        let t = Instant::now();
        match try_q(&mut c, &["SET", &format!("w{i}"), "v"]).await {
            Ok(_) => took.push(t.elapsed().as_secs_f64() * 1e3),
            Err(_) => failed += 1,
        }
    }
    let (p50, p99) = percentiles(&mut took);
    (p50, p99, failed)
}

fn percentiles(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

/// What writers saw across a failover.
#[derive(Debug, Default)]
struct Writes {
    acked: Vec<String>,
    errors: u64,
    /// Per connection, the most errors in a row.
    worst_streak: u64,
    longest_pause: Duration,
}

/// `connections` writers through `proxy`, each SETting keys of its own until `stop` is set.
fn spawn_writers(
    proxy: &Proxy,
    connections: usize,
    tag: &'static str,
    stop: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Writes>> {
    (0..connections)
        .map(|w| {
            let addr = proxy.listen;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let mut out = Writes::default();
                let (mut last_ok, mut streak) = (Instant::now(), 0);
                let mut i = 0u64;
                while stop.load(Ordering::Relaxed) == 0 {
                    let key = format!("{tag}:{w}:{i}");
                    i += 1;
                    match try_q(&mut c, &["SET", &key, "1"]).await {
                        Ok(_) => {
                            out.longest_pause = out.longest_pause.max(last_ok.elapsed());
                            last_ok = Instant::now();
                            out.acked.push(key);
                            streak = 0;
                        }
                        Err(_) => {
                            out.errors += 1;
                            streak += 1;
                            out.worst_streak = out.worst_streak.max(streak);
                        }
                    }
                }
                out
            })
        })
        .collect()
}

/// Kills the site-A master under writers through the proxies of A and B; returns the new primary's
/// name, what the writers saw, and how many acknowledged writes the new primary lacks.
async fn kill_the_master(bed: &mut Bed, proxies: &[&Proxy]) -> (String, Writes, usize) {
    let stop = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (p, tag) in proxies.iter().zip(["wa", "wb", "wc"]) {
        tasks.extend(spawn_writers(p, 2, tag, stop.clone()));
    }
    // Writes flow before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = bed.node("A-M").addr.clone();
    bed.node_mut("A-M").kill();
    let new = proxies[0].topo.clone();
    eventually!(
        "the proxy of site A follows a promoted replica",
        new.snapshot()
            .primary()
            .is_some_and(|p| p.addr != old && !p.addr.to_string().is_empty())
    );
    // Writes flow after it too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(1, Ordering::Relaxed);
    let mut all = Writes::default();
    for t in tasks {
        let w = t.await.expect("writer");
        all.acked.extend(w.acked);
        all.errors += w.errors;
        all.worst_streak = all.worst_streak.max(w.worst_streak);
        all.longest_pause = all.longest_pause.max(w.longest_pause);
    }
    let primary = new.snapshot().primary().cloned().expect("a primary");
    let name = bed
        .nodes
        .iter()
        .find(|n| n.addr_from(0) == primary.addr)
        .map(|n| n.name.to_string())
        .unwrap_or_else(|| primary.addr.to_string());
    let addr = bed.node(&name).addr.clone();
    let mut lost = 0;
    for k in &all.acked {
        match redsplit::embedded::call(&addr, &[&["EXISTS", k]]).await {
            Ok(redsplit::resp::Value::Integer(1)) => {}
            _ => lost += 1,
        }
    }
    (name, all, lost)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn each_site_s_proxy_reads_from_its_own_zone_of_a_replica_tree_under_sentinel() {
    let bed = Bed::start(
        Layout::Small,
        rtt(
            Duration::from_millis(10),
            Duration::from_millis(16),
            Duration::from_millis(20),
        ),
        5000,
    )
    .await;
    let mut proxies = Vec::new();
    for site in 0..SITES.len() {
        proxies.push(site_proxy(&bed, site, |_| {}).await);
    }
    // The replica of a replica is placed under its parent, reached through the relay for each site.
    for (site, p) in proxies.iter().enumerate() {
        let t = p.topo.snapshot();
        let (child, parent) = (bed.node("B-S-2"), bed.node("B-S-1"));
        assert!(
            t.replicas()
                .iter()
                .any(|r| r.node.addr == child.addr_from(site) && r.parent == parent.addr_from(site)),
            "site {}: {:?}",
            SITES[site],
            t.replicas().iter().map(|r| (r.node.addr.to_string(), r.parent.to_string())).collect::<Vec<_>>()
        );
    }
    // Read-only, eventual: every replica read stays home.
    for p in &proxies {
        let mut c = client(p).await;
        for i in 0..100 {
            let _: Option<String> = q(&mut c, &["GET", &format!("k{i}")]).await;
        }
    }
    for (site, p) in proxies.iter().enumerate() {
        let [local, remote, primary] = read_places(p).await;
        // Site A's replica is its backup master; B has two; C one.
        assert_eq!(
            (local, remote),
            (100.0, 0.0),
            "site {}: primary {primary}",
            SITES[site]
        );
    }
    // Session consistency with 1 write in 10: read-your-writes holds, and replica reads stay home.
    let before: Vec<[f64; 3]> = {
        let mut v = Vec::new();
        for p in &proxies {
            v.push(read_places(p).await);
        }
        v
    };
    let workload = Workload {
        connections: 4,
        keys: 64,
        write_one_in: 10,
    };
    for (site, p) in proxies.iter().enumerate() {
        let seen = history::run(p.listen, workload, SITES[site], Duration::from_millis(1500)).await;
        assert_eq!(
            (seen.ryw, seen.monotonic, seen.errors),
            (0, 0, 0),
            "site {}: {seen:?}",
            SITES[site]
        );
        let [local, remote, _] = read_places(p).await;
        let (local, remote) = (local - before[site][0], remote - before[site][1]);
        assert!(
            local >= 9.0 * remote && local > 0.0,
            "site {}: {local} replica reads at home, {remote} elsewhere",
            SITES[site]
        );
    }
}

#[tokio::test]
async fn killing_the_site_a_master_promotes_the_backup_master_and_both_sites_write_on() {
    let mut bed = Bed::start(
        Layout::Small,
        rtt(
            Duration::from_millis(10),
            Duration::from_millis(16),
            Duration::from_millis(20),
        ),
        1000,
    )
    .await;
    let a = site_proxy(&bed, 0, |_| {}).await;
    let b = site_proxy(&bed, 1, |_| {}).await;
    let (promoted, writes, lost) = kill_the_master(&mut bed, &[&a, &b]).await;
    assert_eq!(
        promoted, "A-BM",
        "the backup master in site A (replica-priority 1)"
    );
    assert!(
        writes.acked.len() > 100,
        "{} writes acknowledged",
        writes.acked.len()
    );
    assert!(
        writes.worst_streak <= 1,
        "at most one error in a row per connection: {} errors, {} in a row",
        writes.errors,
        writes.worst_streak
    );
    assert_eq!(lost, 0, "acknowledged writes missing on {promoted}");
    // Site B's proxy follows too, through its relay.
    eventually!(
        "site B's proxy follows",
        b.topo.snapshot().primary().map(|p| p.addr.clone()) == Some(bed.node("A-BM").addr_from(1))
    );
}

/// The full bed: nine servers over three sites at WAN round trips, one proxy per site. Prints a report
/// (markdown) for docs/multi-dc.md. `REDSPLIT_BED_RTT_MS=ab,ac,bc` sets the round trips (default
/// 65,80,140: US-East, US-West, EU-West).
#[tokio::test]
#[ignore = "the full bed: run by scripts/bench-dc"]
async fn three_datacenter_bed() {
    let rtts: Vec<u64> = std::env::var("REDSPLIT_BED_RTT_MS")
        .unwrap_or_else(|_| "65,80,140".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let [ab, ac, bc] = [rtts[0], rtts[1], rtts[2]].map(Duration::from_millis);
    let mut bed = Bed::start(Layout::Full, rtt(ab, ac, bc), 2000).await;
    let mut report = String::new();
    let mut say = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    say(format!(
        "# three-datacenter bed: RTT A-B {} ms, A-C {} ms, B-C {} ms; master A-M",
        ms(ab),
        ms(ac),
        ms(bc)
    ));
    let mut proxies = Vec::new();
    for site in 0..SITES.len() {
        proxies.push(site_proxy(&bed, site, |_| {}).await);
    }
    // 1. Where reads go: read-only and 1 write in 10 (session consistency).
    say("\n| proxy | workload | reads | replica reads in own zone | in other zones | on primary | ryw/mono violations |".into());
    say("|---|---|---|---|---|---|---|".into());
    for (site, p) in proxies.iter().enumerate() {
        for (label, write_one_in) in [("read-only", u32::MAX), ("1 write in 10", 10)] {
            let before = read_places(p).await;
            let seen = history::run(
                p.listen,
                Workload {
                    connections: 8,
                    keys: 256,
                    write_one_in,
                },
                &format!("{}{write_one_in}", SITES[site]),
                Duration::from_secs(3),
            )
            .await;
            let after = read_places(p).await;
            let d: Vec<f64> = (0..3).map(|i| after[i] - before[i]).collect();
            let total = d.iter().sum::<f64>().max(1.0);
            say(format!(
                "| {} | {label} | {} | {:.1}% | {:.1}% | {:.1}% | {}/{} |",
                SITES[site],
                seen.reads,
                100.0 * d[0] / total,
                100.0 * d[1] / total,
                100.0 * d[2] / total,
                seen.ryw,
                seen.monotonic
            ));
        }
    }
    // 2. Read latency: in-zone replicas against the primary across the WAN.
    say("\n| proxy | reads from | p50 ms | p99 ms |".into());
    say("|---|---|---|---|".into());
    for site in 0..SITES.len() {
        let (p50, p99) = read_latency(&proxies[site], 400).await;
        say(format!(
            "| {} | replicas in its zone | {p50:.2} | {p99:.2} |",
            SITES[site]
        ));
        let primary_reads =
            site_proxy(&bed, site, |f| f.consistency = Some(Consistency::Primary)).await;
        let (p50, p99) = read_latency(&primary_reads, 100).await;
        say(format!(
            "| {} | the primary (consistency primary) | {p50:.2} | {p99:.2} |",
            SITES[site]
        ));
    }
    // 3. Writes through site A's proxy.
    say("\n| writes through A's proxy | p50 ms | p99 ms | failed |".into());
    say("|---|---|---|---|".into());
    let (p50, p99, failed) = write_latency(&proxies[0], 300).await;
    say(format!("| asynchronous | {p50:.2} | {p99:.2} | {failed} |"));
    let acked = site_proxy(&bed, 0, |f| {
        f.min_write_acks = Some(1);
        f.write_ack_timeout_ms = Some(2000);
    })
    .await;
    let (p50, p99, failed) = write_latency(&acked, 300).await;
    say(format!(
        "| min_write_acks 1, replicas of the master in site A | {p50:.2} | {p99:.2} | {failed} |"
    ));
    // The master's replicas in site A frozen: the acknowledgement must cross the WAN.
    for name in ["A-BM", "A-S-1"] {
        bed.node(name).signal("STOP");
    }
    let (p50, p99, failed) = write_latency(&acked, 100).await;
    say(format!(
        "| min_write_acks 1, site A's replicas frozen (nearest in B) | {p50:.2} | {p99:.2} | {failed} |"
    ));
    for name in ["A-BM", "A-S-1"] {
        bed.node(name).signal("CONT");
    }
    drop(acked);
    // Sentinel must see the backup master healthy again before it can promote it.
    wait_eligible(&proxies[0], bed.nodes.len() - 1).await;
    eventually!(
        "every sentinel sees the backup master up again",
        bed.sentinels_see_up("A-BM").await,
        PATIENCE * 2
    );
    // 4. Kill the master under writers through A's and B's proxies.
    let (promoted, writes, lost) = kill_the_master(&mut bed, &[&proxies[0], &proxies[1]]).await;
    say(format!(
        "\nkill -9 of A-M (down-after 2000 ms): promoted {promoted}; {} writes acknowledged, {} errors (at most {} in a row on one connection), longest write pause {} ms, acknowledged writes missing on the new primary: {lost}",
        writes.acked.len(),
        writes.errors,
        writes.worst_streak,
        ms(writes.longest_pause)
    ));
    if let Ok(path) = std::env::var("REDSPLIT_BED_REPORT") {
        std::fs::write(path, &report).expect("write the report");
    }
}
