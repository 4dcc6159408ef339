//! Nodes that stop answering, or answer slowly, without going away: a frozen primary whose late replies
//! must not pass for successes, a write that waits on a silent node, and a node streaming large replies,
//! which is not stalled however long the stream takes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A pipeline of large reads takes longer than `read_timeout_ms` to stream (the node sends its replies
/// through a thin link), and the node answers all along: no read times out, none is sent again. The
/// timeout measures a node that stopped answering. Before: the reads "timed out on every node tried"
/// (600 × 1 MiB GETs, 1 s timeout: 164 errors).
#[tokio::test]
async fn a_large_read_pipeline_streams_past_the_read_timeout() {
    let cluster = Cluster::builder().replicas(0).start().await;
    let relay = thin_link(cluster.primary()).await;
    let proxy = proxy_with(redsplit::config::Flags {
        primary: Some(relay.addr.to_string()),
        read_timeout_ms: Some(250),
        ..cluster.flags()
    })
    .await;
    let (retried, hedged, took) = stream_large_values(&proxy, "read_timeout_ms 250").await;
    assert_eq!((retried, hedged), (0, 0), "no read was sent again");
    assert_slow(took);
}

/// The same on a replica, with a hedge delay far below the stream's length: the replica is not frozen,
/// so the reads are not hedged. Before: each batch was sent again to the primary after the delay.
#[tokio::test]
async fn a_replica_streaming_large_replies_is_not_hedged() {
    let cluster = Cluster::builder().replicas(1).eventual().start().await;
    let replica = &cluster.replicas()[0];
    let relay = thin_link(replica).await;
    // The proxy knows the replica by the relay's address (a seed is more direct than the address its
    // primary lists, which becomes an alias).
    let proxy = proxy_with(redsplit::config::Flags {
        replica: Some(vec![relay.addr.to_string()]),
        read_timeout_ms: Some(5000),
        read_hedge_ms: Some(100),
        consistency: Some(redsplit::config::Consistency::Eventual),
        ..cluster.flags()
    })
    .await;
    wait_eligible(&proxy, 1).await;
    let (retried, hedged, took) = stream_large_values(&proxy, "read_hedge_ms 100").await;
    assert_eq!(
        (retried, hedged),
        (0, 0),
        "no read was hedged or sent again"
    );
    assert_slow(took);
}

/// The stream took well over the timeout and the hedge delay, or the test shows nothing.
fn assert_slow(took: Duration) {
    assert!(
        took > Duration::from_millis(500),
        "the replies took only {took:?}"
    );
}

/// A relay that passes what `server` sends at 32 MiB a second: the 24 MiB below take about 0.75 s,
/// and the first bytes come within milliseconds.
async fn thin_link(server: &Server) -> crate::relay::Relay {
    let addr: std::net::SocketAddr = server.addr().as_str().parse().expect("address");
    crate::relay::Relay::throttled(addr, 32 << 20).await
}

/// Pipelines 24 GETs of 1 MiB values through `proxy` on one connection and checks every reply. Returns
/// the reads retried and hedged, and how long the replies took.
async fn stream_large_values(proxy: &redsplit::Proxy, what: &str) -> (u64, u64, Duration) {
    let mut c = client(proxy).await;
    let value = "v".repeat(1 << 20);
    for i in 0..4 {
        let _: () = q(&mut c, &["SET", &format!("big{i}"), &value]).await;
    }
    // Every replica has them before they are read.
    let _: i64 = q(&mut c, &["WAIT", "1", "10000"]).await;
    // Written before any of it is read, and forwarded as one batch.
    let mut raw = Raw::connect(proxy).await;
    let n = 24;
    let mut pipeline = Vec::new();
    for i in 0..n {
        pipeline.extend(resp(&["GET", &format!("big{}", i % 4)]));
    }
    let started = Instant::now();
    raw.send(&pipeline).await;
    let header = format!("${}\r\n", value.len());
    for i in 0..n {
        let frame = raw.frame().await;
        assert!(
            frame.starts_with(header.as_bytes()),
            "GET {i} of {n}: {:?}",
            String::from_utf8_lossy(&frame[..frame.len().min(120)])
        );
    }
    let took = started.elapsed();
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let retried = counter("redsplit_read_retries_total ");
    let hedged = counter("redsplit_reads_hedged_total ");
    eprintln!(
        "MEASURED {n} GETs of 1 MiB in {took:?} ({what}): retried {retried}, hedged {hedged}"
    );
    (retried, hedged, took)
}

/// A write on a primary that has stopped answering (a write pause here; a VM pause, a stuck disk)
/// gets an error once the node has been silent for `write_timeout_ms`, saying it may have run, instead
/// of waiting as long as the node does and then passing for a success the proxy could not vouch for.
#[tokio::test]
async fn a_write_on_a_silent_primary_fails_after_the_write_timeout() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.write_timeout_ms = Some(500))
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "before", "1"]).await;
    let mut primary = direct(cluster.primary()).await;
    let _: () = q(&mut primary, &["CLIENT", "PAUSE", "3000", "WRITE"]).await;
    let started = Instant::now();
    let reply = try_q(&mut c, &["SET", "during", "1"]).await;
    let took = started.elapsed();
    let _: () = q(&mut primary, &["CLIENT", "UNPAUSE"]).await;
    let error = match reply {
        Ok(v) => panic!("the write on a silent node passed for a success after {took:?}: {v:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("write_timeout_ms") && error.contains("may have run"),
        "{error}"
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    // The node is fine once it answers again: the next write goes through.
    let _: () = q(&mut c, &["SET", "after", "1"]).await;
}

/// A primary frozen past Sentinel's down-after: Sentinel promotes a replica, and the proxy follows.
/// The writes the frozen primary had received are answered when it thaws, and lost when Sentinel
/// demotes it: their clients must get an error saying so, never a success. Every write acknowledged is
/// on the final primary. Before: 4 of 4 writers had their in-flight write acknowledged and lost.
#[tokio::test]
async fn writes_in_flight_on_a_frozen_primary_are_not_acknowledged_after_the_switch() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(1000)
        .proxy()
        .await;
    let old = cluster.primary().addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(proxy.listen, 4, stop.clone());
    eventually!(
        "writes flowing",
        calls(cluster.primary(), "set").await > 200
    );
    cluster.primary().signal("STOP").expect("SIGSTOP");
    let froze = Instant::now();
    eventually!(
        "Sentinel promotes a replica and the proxy follows",
        primary_addr(&proxy).is_some_and(|p| p != old),
        Duration::from_secs(60)
    );
    let switched = froze.elapsed();
    // Thawed after the switch: it answers what it had received, then Sentinel demotes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.primary().signal("CONT").expect("SIGCONT");
    let new = primary_addr(&proxy).expect("a primary");
    let server = &cluster.replicas()[cluster.replica_at(&new).expect("a former replica leads")];
    more_sets(server, 200).await;
    let writes = stop_writers(&stop, writers).await;
    let former: Vec<_> = writes
        .errors
        .iter()
        .filter(|(_, e)| e.contains("former primary"))
        .collect();
    eprintln!(
        "MEASURED frozen primary, switch after {switched:?}: {} acknowledged, {} errors ({} 'former primary')",
        writes.acked.len(),
        writes.errors.len(),
        former.len()
    );
    // The old primary rejoins as a replica of the new one: whatever it ran alone is gone now.
    eventually!(
        "the old primary is demoted",
        matches!(
            cluster.primary().call(&["ROLE"]).await,
            Ok(redis_protocol::resp2::types::OwnedFrame::Array(ref a))
                if a.first().map(|f| text(f.clone())).as_deref() == Some("slave")
        ),
        Duration::from_secs(60)
    );
    assert_all_present(server, &writes.acked).await;
    // The switch came well within write_timeout_ms (10 s): the writes in flight learnt of it, not of a
    // timeout.
    assert!(
        switched < Duration::from_secs(9),
        "switch after {switched:?}"
    );
    assert!(
        !former.is_empty(),
        "the writes in flight were told: {:?}",
        writes.errors
    );
    assert!(
        writes.errors.len() <= 4 * 2,
        "at most a couple of errors per writer: {:?}",
        writes.errors
    );
}

/// Waits for `n` more SETs to run on `server`.
async fn more_sets(server: &Server, n: u64) {
    let start = calls(server, "set").await;
    eventually!(
        "writes flowing again",
        calls(server, "set").await >= start + n
    );
}

/// Readers (eventual and session) while the primary is frozen for 3 s, shorter than Sentinel's
/// down-after (no failover): how many reads succeeded, the errors, and the slowest read.
async fn reads_during_a_frozen_primary(session: bool) -> (u64, Vec<String>, Duration) {
    let mut b = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(20_000);
    if !session {
        b = b.eventual();
    }
    let (cluster, proxy) = b.proxy().await;
    let mut setup = client(&proxy).await;
    let _: () = q(&mut setup, &["SET", "k", "v"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, addr) = (stop.clone(), proxy.listen);
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let (mut n, mut errors, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    match try_q(&mut c, &["GET", "k"]).await {
                        Ok(_) => n += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                    slowest = slowest.max(started.elapsed());
                }
                (n, errors, slowest)
            })
        })
        .collect();
    cluster.primary().signal("STOP").expect("SIGSTOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.primary().signal("CONT").expect("SIGCONT");
    let (mut n, mut errors, mut slowest) = (0, Vec::new(), Duration::ZERO);
    // Reads flow again once it answers.
    let mut after = client(&proxy).await;
    eventually!(
        "reads succeed after the thaw",
        try_q(&mut after, &["GET", "k"]).await.is_ok()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let (rn, re, rs) = r.await.expect("reader");
        n += rn;
        errors.extend(re);
        slowest = slowest.max(rs);
    }
    eprintln!(
        "MEASURED frozen primary, session={session}: {n} reads, {} errors, slowest {slowest:?}",
        errors.len()
    );
    (n, errors, slowest)
}

/// The primary frozen (SIGSTOP: a VM pause, a slow fork) for 3 s, longer than the lag limit. Replicas
/// serve reads while within the lag limit counted from the primary's last answer; after that no node
/// may serve them (a frozen primary cannot be told from one cut off from the proxy that others still
/// write to), and each read fails at once saying why, rather than waiting on the frozen primary.
/// Before: reads went to the frozen primary and waited there until it thawed or they timed out.
#[tokio::test]
async fn reads_fail_fast_and_clearly_while_the_primary_is_frozen_past_the_lag_limit() {
    for session in [false, true] {
        let (n, errors, slowest) = reads_during_a_frozen_primary(session).await;
        assert!(n > 500, "session={session}: {n} reads");
        // A read sent to the primary in the moment before it counts as silent waits for the timeout
        // (1 s of silence); none waits longer.
        assert!(
            slowest < Duration::from_millis(1500),
            "session={session}: a read took {slowest:?}"
        );
        let unclear: Vec<&String> = errors
            .iter()
            .filter(|e| !e.contains("has not answered for") && !e.contains("read timed out"))
            .collect();
        assert!(unclear.is_empty(), "session={session}: {unclear:?}");
        let timed_out = errors.iter().filter(|e| e.contains("timed out")).count();
        assert!(
            timed_out <= 4,
            "session={session}: {timed_out} reads waited for a timeout"
        );
    }
}
