//! A read waiting on a replica that stopped answering goes to another node after a short hedge delay,
//! instead of waiting for the read timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test]
async fn reads_stay_fast_while_a_replica_freezes() {
    let (cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut w = client(&proxy).await;
    for i in 0..100 {
        let _: () = q(&mut w, &["SET", &format!("k{i}"), "v"]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (addr, stop) = (proxy.listen, stop.clone());
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let mut took = Vec::new();
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let _: Option<String> = q(&mut c, &["GET", &format!("k{}", i % 100)]).await;
                    took.push(started.elapsed());
                    i += 1;
                }
                took
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A VM pause, a slow fork: the replica takes reads and answers nothing.
    cluster.replicas()[0].signal("STOP").expect("SIGSTOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut took: Vec<Duration> = Vec::new();
    for r in readers {
        took.extend(r.await.expect("reader"));
    }
    cluster.replicas()[0].signal("CONT").expect("SIGCONT");
    took.sort();
    let p999 = took[took.len() * 999 / 1000];
    let max = *took.last().expect("reads");
    let m = http(proxy.admin, "GET", "/metrics").await.1;
    let hedged = m
        .lines()
        .find_map(|l| l.strip_prefix("redsplit_reads_hedged_total "))
        .unwrap_or("0")
        .to_string();
    eprintln!(
        "{} reads, p99.9 {p999:?}, max {max:?}, hedged {hedged}",
        took.len()
    );
    assert!(
        max < Duration::from_millis(250),
        "the slowest read took {max:?}"
    );
    assert!(p999 < Duration::from_millis(50), "p99.9 {p999:?}");
}
