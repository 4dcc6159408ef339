//! Discovery, lag and faults of single nodes, with real servers: replicas of replicas, a promotion in
//! static mode, a replica frozen with SIGSTOP, a replica whose replication stream is delayed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redsplit::config::{Consistency, Flags};

use crate::harness::*;

#[tokio::test]
async fn replicas_of_replicas_are_discovered_and_their_lag_measured() {
    let cluster = Cluster::builder().replicas(2).start().await;
    // Replica 1 follows replica 0: a second-level replica, as in a remote site.
    let mut r1 = direct(&cluster.replicas()[1]).await;
    let via = cluster.replicas()[0].addr();
    let _: () = q(&mut r1, &["REPLICAOF", "127.0.0.1", &port(&via)]).await;
    cluster.replicas()[1].wait_synced().await;
    // Only the primary is named: the rest is found.
    let proxy = proxy_with(Flags {
        replica: Some(vec![]),
        consistency: Some(Consistency::Eventual),
        ..cluster.flags()
    })
    .await;
    eventually!(
        "both replicas discovered",
        proxy.topo.snapshot().replicas().len() == 2
    );
    let topo = proxy.topo.snapshot();
    let second = cluster.replicas()[1].addr();
    let i = topo
        .replica_nodes()
        .position(|n| n.addr == second)
        .expect("second-level replica in the topology");
    assert_eq!(
        topo.replicas()[i].parent,
        via,
        "its parent is the first-level replica"
    );
    wait_eligible(&proxy, 2).await;
    // Its lag is measured against the root primary: writes move the primary's offset, and the
    // second-level replica's probe reports the same stream's offset.
    let mut c = client(&proxy).await;
    for i in 0..50 {
        let _: () = q(&mut c, &["SET", &format!("k{i}"), "v"]).await;
    }
    let primary_offset = match cluster.primary().call(&["ROLE"]).await.expect("ROLE") {
        redis_protocol::resp2::types::OwnedFrame::Array(a) => match a.get(1) {
            Some(redis_protocol::resp2::types::OwnedFrame::Integer(n)) => *n as u64,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let node = topo.replicas()[i].node.clone();
    eventually!(
        "second-level replica caught up",
        node.repl.offset() >= primary_offset
    );
    assert!(node.repl.lag_ms.load(Ordering::Relaxed) < 1000);
    // And it serves reads.
    eventually!("reads reach the second-level replica", {
        let _: Option<String> = q(&mut c, &["GET", "k1"]).await;
        calls(&cluster.replicas()[1], "get").await > 0
    });
}

#[tokio::test]
async fn static_mode_follows_a_replicaof_no_one_promotion() {
    let (mut cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "before", "1"]).await;
    // Replication is asynchronous: make sure the write reached the replicas before the primary dies.
    assert_eq!(q::<i64>(&mut c, &["WAIT", "2", "5000"]).await, 2);
    let new_primary = cluster.replicas()[0].addr();
    cluster.primary_mut().kill();
    // A write sent now waits for a primary instead of failing.
    let addr = proxy.listen;
    let held = tokio::spawn(async move {
        let mut w = client_at(addr).await;
        try_q(&mut w, &["SET", "during", "1"]).await
    });
    // The operator (or a managed service) promotes replica 0 and points replica 1 at it.
    let mut a = direct(&cluster.replicas()[0]).await;
    let _: () = q(&mut a, &["REPLICAOF", "NO", "ONE"]).await;
    let mut b = direct(&cluster.replicas()[1]).await;
    let _: () = q(&mut b, &["REPLICAOF", "127.0.0.1", &port(&new_primary)]).await;
    eventually!(
        "the proxy follows the promotion",
        primary_addr(&proxy) == Some(new_primary.clone())
    );
    held.await
        .expect("task")
        .expect("the held write succeeded on the new primary");
    let _: () = q(&mut c, &["SET", "after", "1"]).await;
    for key in ["before", "during", "after"] {
        assert_eq!(
            q::<Option<String>>(&mut a, &["GET", key]).await.as_deref(),
            Some("1"),
            "{key} on the new primary"
        );
    }
}

#[tokio::test]
async fn a_replica_frozen_with_sigstop_leaves_rotation_without_read_errors_and_returns() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .eventual()
        .flags(|f| f.read_timeout_ms = Some(300))
        .proxy()
        .await;
    let mut setup = client(&proxy).await;
    let _: () = q(&mut setup, &["SET", "k", "v"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, done, addr) = (stop.clone(), done.clone(), proxy.listen);
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = try_q(&mut c, &["GET", "k"]).await {
                        errors.push(e.to_string());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                errors
            })
        })
        .collect();
    eventually!("reads flowing", done.load(Ordering::Relaxed) > 200);
    let frozen = cluster.replicas()[0].addr();
    let node = proxy
        .topo
        .snapshot()
        .replica_nodes()
        .find(|n| n.addr == frozen)
        .cloned()
        .expect("node");
    cluster.replicas()[0].signal("STOP").expect("SIGSTOP");
    let t0 = Instant::now();
    eventually!("frozen replica out of rotation", !node.repl.is_eligible());
    let out_after = t0.elapsed();
    let before = done.load(Ordering::Relaxed);
    eventually!(
        "reads flow while it is frozen",
        done.load(Ordering::Relaxed) > before + 500
    );
    cluster.replicas()[0].signal("CONT").expect("SIGCONT");
    eventually!("thawed replica back in rotation", node.repl.is_eligible());
    let back = calls(&cluster.replicas()[0], "get").await;
    eventually!(
        "reads reach it again",
        calls(&cluster.replicas()[0], "get").await > back
    );
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let errors = r.await.expect("reader");
        assert!(errors.is_empty(), "no read failed: {errors:?}");
    }
    eprintln!(
        "MEASURED frozen replica out of rotation after {} ms",
        out_after.as_millis()
    );
}

/// Starts a primary and one replica that replicates through a relay delaying every byte by 600 ms,
/// keeps writing, and counts the reads that reached the replica through a proxy with `max_lag_ms`.
async fn reads_on_delayed_replica(max_lag_ms: u64) -> (u64, u64) {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .delay_replica(0, Duration::from_millis(600))
        .eventual()
        .flags(|f| f.max_lag_ms = Some(max_lag_ms))
        .eligible(0)
        .proxy()
        .await;
    eventually!("topology", proxy.topo.snapshot().replicas().len() == 1);
    // Keep the replication stream moving, as a live primary does.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_ticker(cluster.primary(), stop.clone()).await;
    let node = proxy.topo.snapshot().replicas()[0].node.clone();
    // Until the primary's offset history reaches back to the replica's offset, its lag reads as very old:
    // wait for a real measurement, and for the eligibility decided on it.
    eventually!(
        "lag measured",
        node.repl.lag_ms.load(Ordering::Relaxed) < 10_000
    );
    if max_lag_ms > 1000 {
        eventually!("replica eligible", node.repl.is_eligible());
    }
    let mut c = client(&proxy).await;
    let before = calls(&cluster.replicas()[0], "get").await;
    for _ in 0..300 {
        let _: Option<String> = q(&mut c, &["GET", "tick"]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let on_replica = calls(&cluster.replicas()[0], "get").await - before;
    (on_replica, node.repl.lag_ms.load(Ordering::Relaxed))
}

#[tokio::test]
async fn a_replica_600ms_behind_gets_no_reads_under_a_300ms_limit() {
    let (reads, lag) = reads_on_delayed_replica(300).await;
    eprintln!("MEASURED delayed replica lag {lag} ms, reads on it under a 300 ms limit: {reads}");
    assert!((500..2000).contains(&lag), "lag measured as {lag} ms");
    assert_eq!(reads, 0);
}

#[tokio::test]
async fn a_replica_600ms_behind_gets_reads_under_a_2000ms_limit() {
    let (reads, lag) = reads_on_delayed_replica(2000).await;
    eprintln!("MEASURED delayed replica lag {lag} ms, reads on it under a 2000 ms limit: {reads}");
    assert!(reads > 250, "most of 300 reads on the replica, got {reads}");
}

/// `CLIENT KILL TYPE normal` on the primary closes every connection the proxy has there (shared, probe,
/// discovery). A lost connection is not a dead node: the proxy reconnects and asks again, and the
/// primary stays published. (It published "no primary" for about 0.9 s after each kill, and writes
/// waited.)
#[tokio::test]
async fn killing_the_proxys_connections_on_the_primary_is_not_taken_for_a_dead_primary() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let primary = cluster.primary().addr();
    eventually!(
        "primary published",
        proxy.topo.snapshot().primary().is_some()
    );
    // Every snapshot the proxy publishes without a primary.
    let stop = Arc::new(AtomicBool::new(false));
    let without = {
        let (topo, stop) = (proxy.topo.clone(), stop.clone());
        let mut changes = topo.subscribe();
        tokio::spawn(async move {
            let mut without = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let changed =
                    tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
                if matches!(changed, Ok(Err(_))) {
                    break;
                }
                if changed.is_ok() && topo.snapshot().primary().is_none() {
                    without += 1;
                }
            }
            without
        })
    };
    // A writer whose slowest successful write shows any hold.
    let writer = {
        let (addr, stop) = (proxy.listen, stop.clone());
        tokio::spawn(async move {
            let mut c = client_at(addr).await;
            let (mut slowest, mut ok) = (Duration::ZERO, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                // A write on a killed connection may fail ("may have run"); that is the kill's doing.
                if try_q(&mut c, &["INCR", "killed"]).await.is_ok() {
                    slowest = slowest.max(started.elapsed());
                    ok += 1;
                }
            }
            (slowest, ok)
        })
    };
    let mut d = direct(cluster.primary()).await;
    for _ in 0..5 {
        let killed: i64 = q(&mut d, &["CLIENT", "KILL", "TYPE", "normal"]).await;
        assert!(killed > 0, "the proxy had connections on {primary}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let without = without.await.expect("watcher");
    let (slowest, ok) = writer.await.expect("writer");
    assert_eq!(without, 0, "snapshots published without a primary");
    assert!(ok > 50, "{ok} writes acknowledged");
    assert!(
        slowest < Duration::from_millis(400),
        "a write waited {slowest:?}"
    );
}
