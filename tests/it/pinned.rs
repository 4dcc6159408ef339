//! Sessions that need a connection of their own: transactions, blocking commands, pub/sub, MONITOR.

use std::time::{Duration, Instant};

use redis::Value;

use crate::harness::*;

#[tokio::test]
async fn multi_exec_runs_atomically_on_the_primary() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .incr("t", 10)
        .query_async(&mut c)
        .await
        .expect("exec");
    assert_eq!((a, b), (1, 11));
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["GET", "t"]));
    out.extend(resp(&["SELECT", "5"]));
    out.extend(resp(&["SET", "t5", "x"]));
    out.extend(resp(&["EXEC"]));
    out.extend(resp(&["GET", "t5"]));
    out.extend(resp(&["SELECT", "0"]));
    out.extend(resp(&["DISCARD"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n$2\r\n11\r\n+OK\r\n+OK\r\n$1\r\nx\r\n+OK\r\n-ERR DISCARD without MULTI\r\n")
        .await;
    assert_eq!(calls(cluster.primary(), "exec").await, 2);
    assert_eq!(calls(cluster.primary(), "multi").await, 2);
}

#[tokio::test]
async fn watch_aborts_exec_when_another_client_writes() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    let _: () = q(&mut a, &["SET", "w", "1"]).await;
    let _: () = q(&mut a, &["WATCH", "w"]).await;
    let _: String = q(&mut a, &["GET", "w"]).await;
    let _: () = q(&mut b, &["SET", "w", "2"]).await;
    let _: () = q(&mut a, &["MULTI"]).await;
    let _: () = q(&mut a, &["SET", "w", "3"]).await;
    let v: Value = q(&mut a, &["EXEC"]).await;
    assert_eq!(v, Value::Nil, "transaction aborted");
    assert_eq!(q::<String>(&mut a, &["GET", "w"]).await, "2");
    // WATCH then UNWATCH leaves the session unpinned and usable.
    let _: () = q(&mut a, &["WATCH", "w"]).await;
    let _: () = q(&mut a, &["UNWATCH"]).await;
    let _: () = q(&mut a, &["SET", "w", "4"]).await;
    assert_eq!(q::<String>(&mut b, &["GET", "w"]).await, "4");
}

#[tokio::test]
async fn a_blocking_command_does_not_block_other_clients() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut blocked = client(&proxy).await;
    let waiter = tokio::spawn(async move {
        let v: (String, String) = q(&mut blocked, &["BLPOP", "queue", "0"]).await;
        v
    });
    // Wait until the primary reports the blocked client, then check others are served meanwhile.
    let mut d = direct(cluster.primary()).await;
    eventually!(
        "client blocked",
        q::<String>(&mut d, &["INFO", "clients"])
            .await
            .contains("blocked_clients:1")
    );
    let mut other = client(&proxy).await;
    let start = Instant::now();
    for i in 0..100 {
        let _: () = q(&mut other, &["SET", &format!("x{i}"), "1"]).await;
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    let _: i64 = q(&mut other, &["RPUSH", "queue", "job"]).await;
    let got = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("unblocked")
        .expect("task");
    assert_eq!(got, ("queue".into(), "job".into()));
}

#[tokio::test]
async fn a_blocked_client_that_hangs_up_loses_no_data() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["BLPOP", "jobs", "0"])).await;
    let mut d = direct(cluster.primary()).await;
    eventually!(
        "client blocked",
        q::<String>(&mut d, &["INFO", "clients"])
            .await
            .contains("blocked_clients:1")
    );
    drop(raw);
    eventually!(
        "blocked connection closed",
        q::<String>(&mut d, &["INFO", "clients"])
            .await
            .contains("blocked_clients:0")
    );
    let _: i64 = q(&mut d, &["RPUSH", "jobs", "precious"]).await;
    assert_eq!(
        q::<i64>(&mut d, &["LLEN", "jobs"]).await,
        1,
        "nobody popped the element"
    );
}

#[tokio::test]
async fn commands_after_a_blocking_one_wait_for_it() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["RPUSH", "q", "a"]);
    out.extend(resp(&["BLPOP", "q", "1"]));
    out.extend(resp(&["LLEN", "q"]));
    out.extend(resp(&["XREAD", "BLOCK", "50", "STREAMS", "nostream", "$"]));
    out.extend(resp(&["PING"]));
    raw.send(&out).await;
    raw.expect(b":1\r\n*2\r\n$1\r\nq\r\n$1\r\na\r\n:0\r\n*-1\r\n+PONG\r\n")
        .await;
}

#[tokio::test]
async fn subscribers_receive_messages() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["SUBSCRIBE", "news", "alerts"])).await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:2\r\n").await;
    raw.send(&resp(&["PSUBSCRIBE", "a*"])).await;
    raw.expect(b"*3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:3\r\n")
        .await;
    let mut p = client(&proxy).await;
    assert_eq!(q::<i64>(&mut p, &["PUBLISH", "news", "hello"]).await, 1);
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n")
        .await;
    assert_eq!(q::<i64>(&mut p, &["PUBLISH", "alerts", "x"]).await, 2);
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$1\r\nx\r\n")
        .await;
    raw.expect(b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$6\r\nalerts\r\n$1\r\nx\r\n")
        .await;
    raw.send(&resp(&["PING"])).await;
    raw.expect(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").await;
    // Leaving pub/sub returns the session to normal routing.
    raw.send(&resp(&["UNSUBSCRIBE"])).await;
    raw.send(&resp(&["PUNSUBSCRIBE"])).await;
    let mut left = Vec::new();
    for _ in 0..3 {
        left.push(raw.frame().await);
    }
    assert!(left.last().is_some_and(|f| f.ends_with(b":0\r\n")));
    raw.send(&resp(&["SET", "after", "pubsub"])).await;
    raw.expect(b"+OK\r\n").await;
}

#[tokio::test]
async fn resp3_subscribers_get_pushes_and_can_run_commands() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["HELLO", "3"])).await;
    let _ = raw.frame().await;
    raw.send(&resp(&["SUBSCRIBE", "ch"])).await;
    raw.expect(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
        .await;
    raw.send(&resp(&["SET", "k", "v"])).await;
    raw.expect(b"+OK\r\n").await;
    let mut p = client(&proxy).await;
    let _: i64 = q(&mut p, &["PUBLISH", "ch", "m"]).await;
    raw.expect(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n")
        .await;
    raw.send(&resp(&["UNSUBSCRIBE", "ch"])).await;
    raw.expect(b">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n")
        .await;
    raw.send(&resp(&["GET", "k"])).await;
    raw.expect(b"$1\r\nv\r\n").await;
}

#[tokio::test]
async fn monitor_streams_commands() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["MONITOR"])).await;
    raw.expect(b"+OK\r\n").await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "monitored", "1"]).await;
    loop {
        let line = raw.frame().await;
        if String::from_utf8_lossy(&line).contains("\"monitored\"") {
            break;
        }
    }
}

#[tokio::test]
async fn wait_counts_replicas_that_have_the_sessions_writes() {
    let (cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "durable", "1"]).await;
    let n: i64 = q(&mut c, &["WAIT", "2", "5000"]).await;
    assert_eq!(n, 2);
    for r in cluster.replicas() {
        let mut d = direct(r).await;
        assert_eq!(
            q::<Option<String>>(&mut d, &["GET", "durable"])
                .await
                .as_deref(),
            Some("1")
        );
    }
    // A replica that stopped replicating cannot acknowledge: WAIT returns at the timeout with fewer.
    let mut paused = direct(&cluster.replicas()[1]).await;
    let _: () = q(&mut paused, &["CLIENT", "PAUSE", "10000", "WRITE"]).await;
    let _: () = q(&mut c, &["SET", "durable", "2"]).await;
    let n: i64 = q(&mut c, &["WAIT", "2", "300"]).await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn client_tracking_delivers_invalidations_in_resp3() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["HELLO", "3"])).await;
    let _ = raw.frame().await;
    raw.send(&resp(&["CLIENT", "TRACKING", "ON"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["GET", "tracked"])).await;
    raw.expect(b"_\r\n").await;
    let mut other = client(&proxy).await;
    let _: () = q(&mut other, &["SET", "tracked", "1"]).await;
    raw.expect(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n")
        .await;
    raw.send(&resp(&["CLIENT", "TRACKING", "OFF"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["GET", "tracked"])).await;
    raw.expect(b"$1\r\n1\r\n").await;
}

#[tokio::test]
async fn transactions_survive_idle_dedicated_connections_being_killed() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut c = client(&proxy).await;
    let _: (i64,) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .query_async(&mut c)
        .await
        .expect("first transaction");
    // The dedicated connection went back to the pool; the server kills every client connection.
    let mut d = direct(cluster.primary()).await;
    let _: i64 = q(
        &mut d,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    )
    .await;
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr("n", 1)
        .query_async(&mut c)
        .await
        .expect("second transaction");
    assert_eq!(n, 2);
}

#[tokio::test]
async fn shard_subscribers_receive_messages_and_can_leave() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["SSUBSCRIBE", "orders"])).await;
    raw.expect(b"*3\r\n$10\r\nssubscribe\r\n$6\r\norders\r\n:1\r\n")
        .await;
    let mut p = client(&proxy).await;
    assert_eq!(q::<i64>(&mut p, &["SPUBLISH", "orders", "o1"]).await, 1);
    raw.expect(b"*3\r\n$8\r\nsmessage\r\n$6\r\norders\r\n$2\r\no1\r\n")
        .await;
    raw.send(&resp(&["SUNSUBSCRIBE", "orders"])).await;
    raw.expect(b"*3\r\n$12\r\nsunsubscribe\r\n$6\r\norders\r\n:0\r\n")
        .await;
    raw.send(&resp(&["GET", "x"])).await;
    raw.expect(b"$-1\r\n").await;
}

/// The primary's client connections whose `CLIENT LIST` line contains `what`.
async fn upstream_clients(cluster: &Cluster, what: &str) -> usize {
    let mut d = direct(cluster.primary()).await;
    let list: String = q(&mut d, &["CLIENT", "LIST"]).await;
    list.lines().filter(|l| l.contains(what)).count()
}

#[tokio::test]
async fn a_resp3_subscriber_that_hangs_up_at_once_leaves_no_subscription_upstream() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut d = direct(cluster.primary()).await;
    for i in 0..5 {
        let channel = format!("gone{i}");
        let mut raw = Raw::connect(&proxy).await;
        raw.send(&resp(&["HELLO", "3"])).await;
        let _ = raw.frame().await;
        // Hangs up before the confirmation push can arrive.
        raw.send(&resp(&["SUBSCRIBE", &channel])).await;
        drop(raw);
        eventually!(
            "the subscription reached the primary",
            calls(cluster.primary(), "subscribe").await > i
        );
        eventually!(format!("nobody subscribed to {channel}"), {
            let numsub: (String, i64) = q(&mut d, &["PUBSUB", "NUMSUB", &channel]).await;
            numsub.1 == 0
        });
        assert_eq!(q::<i64>(&mut d, &["PUBLISH", &channel, "m"]).await, 0);
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_inside_multi_or_watch_leaves_no_connection_upstream() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["SET", "k", "v"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+QUEUED\r\n").await;
    drop(raw);
    // Redis flags a connection inside MULTI with `x`.
    eventually!(
        "no connection left inside MULTI",
        upstream_clients(&cluster, "flags=x").await == 0
    );
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["WATCH", "k"])).await;
    raw.expect(b"+OK\r\n").await;
    drop(raw);
    eventually!(
        "no connection left watching",
        upstream_clients(&cluster, "cmd=watch").await == 0
    );
    let mut d = direct(cluster.primary()).await;
    assert_eq!(q::<Option<String>>(&mut d, &["GET", "k"]).await, None);
}
