//! Synchronous writes (`min_write_acks`: a write's reply waits for replicas' acknowledgements), a
//! client's own WAIT, and the split-brain guard (`min_replicas`: writes refused while too few replicas are
//! good).

use std::time::{Duration, Instant};

use redis::Value;

use crate::harness::*;

/// The error text of a reply that must be an error.
fn error_text(r: redis::RedisResult<Value>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Waits until a write through `c` is acknowledged: a replica that has just synced can take a while to
/// send its first acknowledgement (a NOACK write ran anyway; writing it again does no harm here).
async fn acknowledging(c: &mut redis::aio::MultiplexedConnection) {
    eventually!(
        "the replica acknowledges writes",
        try_q(c, &["SET", "warm-up", "1"]).await.is_ok()
    );
}

/// The value of the series `series` (name and labels, as written) at the proxy's `/metrics`.
async fn metric(proxy: &redsplit::Proxy, series: &str) -> f64 {
    let (_, text) = http(proxy.admin, "GET", "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in {text}"))
}

/// Resumes a stopped server when dropped, so a failing assertion leaves nothing frozen behind.
struct Stopped<'a>(&'a Server);

impl<'a> Stopped<'a> {
    fn stop(s: &'a Server) -> Stopped<'a> {
        s.signal("STOP").expect("SIGSTOP");
        Stopped(s)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal("CONT");
    }
}

#[tokio::test]
async fn a_write_acknowledged_by_a_replica_is_on_that_replica_when_its_reply_arrives() {
    // The replica replicates across a 150 ms link: without waiting for it, a fresh write is not there yet.
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .delay_replica(0, Duration::from_millis(150))
        .flags(|f| {
            f.min_write_acks = Some(1);
            f.write_ack_timeout_ms = Some(5000);
        })
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let mut replica = direct(&cluster.replicas()[0]).await;
    for i in 0..5 {
        let key = format!("sync:{i}");
        let started = Instant::now();
        let _: () = q(&mut c, &["SET", &key, "v"]).await;
        let took = started.elapsed();
        let there: Option<String> = q(&mut replica, &["GET", &key]).await;
        assert_eq!(there.as_deref(), Some("v"), "{key} on the replica");
        assert!(
            took >= Duration::from_millis(150),
            "the reply waited for the replica ({took:?})"
        );
    }
    // Reads do not wait: a GET on the primary answers at once.
    let _: () = q(&mut c, &["SET", "sync:r", "1"]).await;
    let started = Instant::now();
    let _: Value = q(&mut c, &["STRLEN", "sync:r"]).await;
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn writes_a_stopped_replica_cannot_acknowledge_fail_in_time_saying_they_were_applied() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.min_write_acks = Some(1);
            f.write_ack_timeout_ms = Some(500);
        })
        .proxy()
        .await;
    let mut primary = direct(cluster.primary()).await;
    acknowledging(&mut client(&proxy).await).await;
    let mut raw = Raw::connect(&proxy).await;
    // Acknowledged while the replica runs.
    raw.send(&resp(&["SET", "a", "1"])).await;
    let ok = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert_eq!(ok, "+OK\r\n");
    let unacked = "redsplit_writes_unacknowledged_total{reason=\"timeout\"}";
    let before = metric(&proxy, unacked).await;
    let _stopped = Stopped::stop(&cluster.replicas()[0]);
    // A pipeline of a write, a read, a failing write, and a write: only the writes that ran get the
    // error, in order, and the read its value.
    let mut out = resp(&["SET", "b", "2"]);
    out.extend(resp(&["GET", "a"]));
    out.extend(resp(&["LPUSH", "b", "x"]));
    out.extend(resp(&["INCR", "n"]));
    let started = Instant::now();
    raw.send(&out).await;
    let set = String::from_utf8_lossy(&raw.frame().await).into_owned();
    let took = started.elapsed();
    assert!(set.starts_with("-NOACK"), "{set}");
    assert!(
        set.contains("applied on the primary") && set.contains("0 of 1") && set.contains("unknown"),
        "{set}"
    );
    assert!(
        took < Duration::from_secs(3),
        "within the timeout: {took:?}"
    );
    raw.expect(b"$1\r\n1\r\n").await;
    let wrongtype = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(wrongtype.starts_with("-WRONGTYPE"), "{wrongtype}");
    let incr = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(incr.starts_with("-NOACK"), "{incr}");
    // Applied on the primary, as the error says.
    assert_eq!(q::<String>(&mut primary, &["GET", "b"]).await, "2");
    assert_eq!(q::<i64>(&mut primary, &["GET", "n"]).await, 1);
    assert_eq!(metric(&proxy, unacked).await, before + 2.0);
}

#[tokio::test]
async fn each_proxy_user_waits_for_its_own_number_of_acknowledgements() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.user = Some(vec!["fast:pw1".into(), "safe:pw2".into()]);
            f.min_write_acks = Some(1);
            f.write_ack_timeout_ms = Some(100);
            f.user_min_write_acks = Some(vec!["fast=0".into()]);
            f.user_write_ack_timeout_ms = Some(vec!["safe=1000".into()]);
        })
        .proxy()
        .await;
    let mut fast = client(&proxy).await;
    let mut safe = client(&proxy).await;
    let _: () = q(&mut fast, &["AUTH", "fast", "pw1"]).await;
    let _: () = q(&mut safe, &["AUTH", "safe", "pw2"]).await;
    acknowledging(&mut safe).await;
    let _stopped = Stopped::stop(&cluster.replicas()[0]);
    let started = Instant::now();
    let _: () = q(&mut fast, &["SET", "f", "1"]).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "fast waits for no replica"
    );
    let started = Instant::now();
    let e = error_text(try_q(&mut safe, &["SET", "s", "2"]).await);
    assert!(
        e.contains("acknowledged by 0 of 1") && e.contains("1000 ms"),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // Both at once, on the connection they share: each judged by its own requirement.
    let (f, s) = tokio::join!(
        try_q(&mut fast, &["INCR", "fc"]),
        try_q(&mut safe, &["INCR", "sc"])
    );
    assert_eq!(f.expect("fast is not acknowledged"), Value::Int(1));
    assert!(error_text(s).contains("acknowledged by 0 of 1"));
}

#[tokio::test]
async fn exec_and_blocking_pops_wait_for_acknowledgements_too() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.min_write_acks = Some(1);
            f.write_ack_timeout_ms = Some(1000);
        })
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    acknowledging(&mut c).await;
    let _: () = q(&mut c, &["RPUSH", "list", "a", "b"]).await;
    let (one, two): (i64, i64) = redis::pipe()
        .atomic()
        .incr("tx", 1)
        .incr("tx", 1)
        .query_async(&mut c)
        .await
        .expect("exec acknowledged");
    assert_eq!((one, two), (1, 2));
    let _stopped = Stopped::stop(&cluster.replicas()[0]);
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["INCR", "tx"]));
    out.extend(resp(&["EXEC"]));
    out.extend(resp(&["BLMOVE", "list", "other", "LEFT", "LEFT", "1"]));
    out.extend(resp(&["PING"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+QUEUED\r\n").await;
    let exec = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(exec.starts_with("-NOACK"), "{exec}");
    let moved = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(moved.starts_with("-NOACK"), "{moved}");
    raw.expect(b"+PONG\r\n").await;
    let mut primary = direct(cluster.primary()).await;
    assert_eq!(q::<i64>(&mut primary, &["GET", "tx"]).await, 3);
    assert_eq!(q::<i64>(&mut primary, &["LLEN", "other"]).await, 1);
}

#[tokio::test]
async fn a_client_wait_counts_only_replicas_that_acknowledged_its_write() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "w", "1"]).await;
    assert_eq!(q::<i64>(&mut c, &["WAIT", "1", "5000"]).await, 1);
    let _stopped = Stopped::stop(&cluster.replicas()[0]);
    let _: () = q(&mut c, &["SET", "w", "2"]).await;
    let started = Instant::now();
    assert_eq!(q::<i64>(&mut c, &["WAIT", "1", "300"]).await, 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // On a connection of its own (WATCH), before writing there: still the replicas that have its
    // writes, not those that have that connection's (none, which every replica has).
    let _: () = q(&mut c, &["WATCH", "w"]).await;
    assert_eq!(q::<i64>(&mut c, &["WAIT", "1", "300"]).await, 0);
    let _: () = q(&mut c, &["UNWATCH"]).await;
    // Other clients are not held for the whole wait.
    let mut other = client(&proxy).await;
    let waits = calls(cluster.primary(), "wait").await;
    let waiting = tokio::spawn(async move { q::<i64>(&mut c, &["WAIT", "1", "1000"]).await });
    eventually!(
        "the client's WAIT reached the primary",
        calls(cluster.primary(), "wait").await > waits
    );
    let started = Instant::now();
    let _: () = q(&mut other, &["SET", "x", "1"]).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "another client's write went between the slices of the WAIT"
    );
    assert_eq!(waiting.await.expect("wait task"), 0);
}

#[tokio::test]
async fn the_guard_refuses_writes_while_the_replica_is_gone_lets_reads_through_and_recovers() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.min_replicas = Some(1);
            f.min_replicas_max_lag_ms = Some(500);
        })
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let mut primary = direct(cluster.primary()).await;
    let _: () = q(&mut c, &["SET", "g", "1"]).await;
    let (_, topology) = http(proxy.admin, "GET", "/topology").await;
    assert!(topology.contains("\"closed\":false"), "{topology}");
    {
        let _stopped = Stopped::stop(&cluster.replicas()[0]);
        let mut refused = String::new();
        eventually!("writes refused", {
            match try_q(&mut c, &["SET", "g", "2"]).await {
                Err(e) => {
                    refused = e.to_string();
                    true
                }
                Ok(_) => false,
            }
        });
        assert!(refused.contains("Not enough good replicas"), "{refused}");
        assert!(refused.contains("0 of 1"), "{refused}");
        // Nothing was sent: the primary never saw the refused values.
        assert!(try_q(&mut c, &["SET", "g:refused", "x"]).await.is_err());
        let never: Option<String> = q(&mut primary, &["GET", "g:refused"]).await;
        assert_eq!(never, None);
        // Reads go on (from the primary: the replica is out of rotation).
        assert!(matches!(
            try_q(&mut c, &["GET", "g"]).await,
            Ok(Value::BulkString(_))
        ));
        let (_, topology) = http(proxy.admin, "GET", "/topology").await;
        assert!(topology.contains("\"closed\":true"), "{topology}");
        let (_, metrics) = http(proxy.admin, "GET", "/metrics").await;
        assert!(
            metrics.contains("redsplit_write_guard_closed 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("redsplit_writes_refused_total{reason=\"min_replicas\"}"),
            "{metrics}"
        );
        // A transaction that writes is refused at EXEC and ran nothing.
        let mut raw = Raw::connect(&proxy).await;
        let mut out = resp(&["MULTI"]);
        out.extend(resp(&["SET", "g:tx", "1"]));
        out.extend(resp(&["EXEC"]));
        out.extend(resp(&["PING"]));
        raw.send(&out).await;
        raw.expect(b"+OK\r\n+QUEUED\r\n").await;
        let exec = String::from_utf8_lossy(&raw.frame().await).into_owned();
        assert!(exec.starts_with("-NOREPLICAS"), "{exec}");
        raw.expect(b"+PONG\r\n").await;
        let never: Option<String> = q(&mut primary, &["GET", "g:tx"]).await;
        assert_eq!(never, None);
    }
    eventually!(
        "writes taken again",
        try_q(&mut c, &["SET", "g", "3"]).await.is_ok()
    );
    assert_eq!(q::<String>(&mut primary, &["GET", "g"]).await, "3");
}
