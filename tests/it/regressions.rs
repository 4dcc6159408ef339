//! Bugs found by review, each reproduced against real Redis before it was fixed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// A client that answers PING within a second: the proxy is not frozen.
async fn proxy_answers(p: &redsplit::Proxy) {
    let mut other = client(p).await;
    let pong = tokio::time::timeout(Duration::from_secs(2), try_q(&mut other, &["PING"])).await;
    assert!(matches!(pong, Ok(Ok(_))), "another client is still served");
}

#[tokio::test]
async fn unsubscribe_with_names_while_watching_does_not_freeze_the_proxy() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["WATCH", "k"]);
    out.extend(resp(&["UNSUBSCRIBE", "a", "b"]));
    out.extend(resp(&["UNWATCH"]));
    out.extend(resp(&["SET", "x", "1"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n+OK\r\n+OK\r\n")
        .await;
    proxy_answers(&proxy).await;
}

#[tokio::test]
async fn unsubscribe_inside_multi_is_refused_not_miscounted() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["UNSUBSCRIBE", "a", "b"]));
    out.extend(resp(&["SET", "k", "v"]));
    out.extend(resp(&["EXEC"]));
    out.extend(resp(&["GET", "k"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n").await;
    let refused = raw.frame().await;
    assert!(refused.starts_with(b"-ERR redsplit: UNSUBSCRIBE is not supported inside MULTI"));
    // As Redis does after an error while queueing: the transaction is discarded.
    raw.expect(
        b"+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n",
    )
    .await;
    proxy_answers(&proxy).await;
}

#[tokio::test]
async fn auth_inside_multi_is_refused_and_the_transaction_discarded() {
    // The proxy checks AUTH itself, so Redis cannot queue it and run it at EXEC: refused as Redis refuses
    // a command while queueing, and EXEC runs nothing. Before, AUTH was answered +OK at once and EXEC's
    // array had one element fewer than the commands the client queued.
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| f.requirepass = Some("pw".into()))
        .proxy()
        .await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["AUTH", "pw"]);
    out.extend(resp(&["MULTI"]));
    out.extend(resp(&["AUTH", "pw"]));
    out.extend(resp(&["SET", "k", "v"]));
    out.extend(resp(&["EXEC"]));
    out.extend(resp(&["GET", "k"]));
    out.extend(resp(&["MULTI"]));
    out.extend(resp(&["SET", "k", "w"]));
    out.extend(resp(&["EXEC"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+OK\r\n").await;
    let refused = raw.frame().await;
    assert!(
        refused.starts_with(b"-ERR redsplit: AUTH is not supported inside MULTI"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    raw.expect(
        b"+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n",
    )
    .await;
    // The next transaction is a fresh one.
    raw.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
}

#[tokio::test]
async fn commands_pipelined_after_the_last_unsubscribe_get_their_replies() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["SUBSCRIBE", "a"])).await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        .await;
    let mut out = resp(&["UNSUBSCRIBE"]);
    out.extend(resp(&["SET", "after", "1"]));
    out.extend(resp(&["GET", "after"]));
    raw.send(&out).await;
    raw.expect(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n+OK\r\n$1\r\n1\r\n")
        .await;
}

#[tokio::test]
async fn a_subscription_made_right_after_leaving_another_is_kept() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["SUBSCRIBE", "a"])).await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        .await;
    let mut out = resp(&["UNSUBSCRIBE", "a"]);
    out.extend(resp(&["SUBSCRIBE", "b"]));
    raw.send(&out).await;
    raw.expect(
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:1\r\n",
    )
    .await;
    let mut p = client(&proxy).await;
    assert_eq!(q::<i64>(&mut p, &["PUBLISH", "b", "hello"]).await, 1);
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$5\r\nhello\r\n")
        .await;
}

#[tokio::test]
async fn resp3_subscriptions_never_reach_a_pooled_connection() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut a = Raw::connect(&proxy).await;
    a.send(&resp(&["HELLO", "3"])).await;
    let _ = a.frame().await;
    a.send(&resp(&["SUBSCRIBE", "a"])).await;
    a.expect(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        .await;
    let mut out = resp(&["UNSUBSCRIBE", "a"]);
    out.extend(resp(&["SUBSCRIBE", "b"]));
    a.send(&out).await;
    a.expect(
        b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:1\r\n",
    )
    .await;
    // Another client takes a dedicated connection; it must not be the one subscribed to b.
    let mut b = Raw::connect(&proxy).await;
    b.send(&resp(&["HELLO", "3"])).await;
    let _ = b.frame().await;
    b.send(&resp(&["WATCH", "z"])).await;
    b.expect(b"+OK\r\n").await;
    let mut p = client(&proxy).await;
    assert_eq!(q::<i64>(&mut p, &["PUBLISH", "b", "for-a"]).await, 1);
    a.expect(b">3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$5\r\nfor-a\r\n")
        .await;
    b.send(&resp(&["PING"])).await;
    b.expect(b"+PONG\r\n").await;
}

#[tokio::test]
async fn exec_without_multi_keeps_the_watch_and_leaks_nothing() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut a = client(&proxy).await;
    let _: () = q(&mut a, &["WATCH", "wk"]).await;
    assert!(
        try_q(&mut a, &["EXEC"]).await.is_err(),
        "EXEC without MULTI"
    );
    // Someone changes the watched key: A's transaction aborts, as in Redis.
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "wk", "changed"]).await;
    let _: () = q(&mut a, &["MULTI"]).await;
    let _: () = q(&mut a, &["SET", "x", "a"]).await;
    assert_eq!(
        q::<redis::Value>(&mut a, &["EXEC"]).await,
        redis::Value::Nil
    );
    // Another client's transaction is not aborted by A's watch.
    let mut b = client(&proxy).await;
    let (v,): (String,) = redis::pipe()
        .atomic()
        .set("y", "b")
        .ignore()
        .get("y")
        .query_async(&mut b)
        .await
        .expect("b's transaction");
    assert_eq!(v, "b");
}

#[tokio::test]
async fn an_aborted_transaction_does_not_switch_the_database() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut a = client(&proxy).await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut a, &["WATCH", "w"]).await;
    let _: () = q(&mut c, &["SET", "w", "changed"]).await;
    let _: () = q(&mut a, &["MULTI"]).await;
    let _: () = q(&mut a, &["SELECT", "5"]).await;
    assert_eq!(
        q::<redis::Value>(&mut a, &["EXEC"]).await,
        redis::Value::Nil
    );
    let _: () = q(&mut a, &["SET", "where", "db0"]).await;
    let mut d = direct(cluster.primary()).await;
    assert_eq!(
        q::<Option<String>>(&mut d, &["GET", "where"])
            .await
            .as_deref(),
        Some("db0")
    );
    // A committed SELECT inside MULTI does switch.
    let _: () = q(&mut a, &["MULTI"]).await;
    let _: () = q(&mut a, &["SELECT", "5"]).await;
    let _: redis::Value = q(&mut a, &["EXEC"]).await;
    let _: () = q(&mut a, &["SET", "where", "db5"]).await;
    let _: () = q(&mut d, &["SELECT", "5"]).await;
    assert_eq!(
        q::<Option<String>>(&mut d, &["GET", "where"])
            .await
            .as_deref(),
        Some("db5")
    );
}

#[tokio::test]
async fn auth_inside_multi_never_lends_its_identity_to_another_client() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut d = direct(cluster.primary()).await;
    let _: () = q(
        &mut d,
        &["ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all"],
    )
    .await;
    let mut a = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["AUTH", "limited", "pw"]));
    out.extend(resp(&["EXEC"]));
    a.send(&out).await;
    a.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    for _ in 0..5 {
        let mut b = Raw::connect(&proxy).await;
        let mut out = resp(&["MULTI"]);
        out.extend(resp(&["ACL", "WHOAMI"]));
        out.extend(resp(&["EXEC"]));
        b.send(&out).await;
        b.expect(b"+OK\r\n+QUEUED\r\n*1\r\n$7\r\ndefault\r\n").await;
    }
    // A itself is now `limited`.
    a.send(&resp(&["ACL", "WHOAMI"])).await;
    a.expect(b"$7\r\nlimited\r\n").await;
}

#[tokio::test]
async fn pipelined_multi_queues_connection_commands_too() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["SET", "t", "1"]));
    out.extend(resp(&["CLIENT", "SETNAME", "n1"]));
    out.extend(resp(&["EXEC"]));
    out.extend(resp(&["CLIENT", "GETNAME"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n$2\r\nn1\r\n")
        .await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["HELLO", "3"]));
    out.extend(resp(&["DISCARD"]));
    out.extend(resp(&["CLIENT", "GETNAME"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+OK\r\n$2\r\nn1\r\n").await;
}

#[tokio::test]
async fn a_read_is_not_retried_after_a_later_write_of_the_same_client_ran() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .eventual()
        .flags(|f| f.read_timeout_ms = Some(300))
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "old"]).await;
    let mut r = direct(&cluster.replicas()[0]).await;
    eventually!(
        "replicated",
        q::<Option<String>>(&mut r, &["GET", "k"]).await.as_deref() == Some("old")
    );
    // The replica stops answering anything for a while; the read to it times out.
    let _: () = q(&mut r, &["CLIENT", "PAUSE", "1500", "ALL"]).await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["GET", "k"]);
    out.extend(resp(&["SET", "k", "new"]));
    raw.send(&out).await;
    let read = raw.frame().await;
    assert_ne!(
        read,
        b"$3\r\nnew\r\n".to_vec(),
        "the read must never see the write sent after it"
    );
    raw.expect(b"+OK\r\n").await;
}

#[tokio::test]
async fn a_session_whose_read_failed_behind_its_own_write_reads_from_replicas_again() {
    // The write's reply, taken early to decide the read must not be re-sent, used to skip the
    // session's bookkeeping: it kept counting a write in flight, and every later read went to the
    // primary for good.
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.read_timeout_ms = Some(300))
        .proxy()
        .await;
    let mut r = direct(&cluster.replicas()[0]).await;
    let _: () = q(&mut r, &["CLIENT", "PAUSE", "1000", "ALL"]).await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["GET", "k"]);
    out.extend(resp(&["SET", "k", "new"]));
    raw.send(&out).await;
    let _read = raw.frame().await;
    raw.expect(b"+OK\r\n").await;
    // Once the replica is back and has the write, the session's reads go to it again.
    let _: () = q(&mut r, &["CLIENT", "UNPAUSE"]).await;
    eventually!(
        "replicated",
        q::<Option<String>>(&mut r, &["GET", "k"]).await.as_deref() == Some("new")
    );
    wait_eligible(&proxy, 1).await;
    let before = calls(&cluster.replicas()[0], "get").await;
    eventually!("the session reads from the replica again", {
        raw.send(&resp(&["GET", "k"])).await;
        raw.expect(b"$3\r\nnew\r\n").await;
        calls(&cluster.replicas()[0], "get").await > before + 1
    });
}

#[tokio::test]
async fn a_slow_read_runs_at_most_twice_and_says_it_timed_out() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .eventual()
        .flags(|f| f.read_timeout_ms = Some(300))
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 600000 return 1";
    let result = try_q(&mut c, &["EVAL_RO", busy, "0"]).await;
    let mut runs = calls(cluster.primary(), "eval_ro").await;
    for r in cluster.replicas() {
        runs += calls(r, "eval_ro").await;
    }
    assert!(runs <= 2, "ran {runs} times");
    if let Err(e) = result {
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}

#[tokio::test]
async fn a_half_closed_client_gets_its_transaction_replies() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["MULTI"]);
    out.extend(resp(&["INCR", "hc"]));
    out.extend(resp(&["EXEC"]));
    raw.send(&out).await;
    raw.stream.shutdown().await.expect("half-close");
    let got = raw.closed().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n"
    );
}

#[tokio::test]
async fn unsubscribe_with_many_names_outside_pubsub_confirms_each() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let mut args = vec!["UNSUBSCRIBE"];
    args.extend(names.iter().map(String::as_str));
    raw.send(&resp(&args)).await;
    for n in &names {
        let want = format!("*3\r\n$11\r\nunsubscribe\r\n${}\r\n{n}\r\n:0\r\n", n.len());
        raw.expect(want.as_bytes()).await;
    }
    raw.send(&resp(&["PING"])).await;
    raw.expect(b"+PONG\r\n").await;
}

// Second review (limits, auth, reload, TLS, session loop).

#[tokio::test]
async fn a_burst_of_connections_cannot_exceed_max_clients() {
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| {
            f.max_clients = Some(2);
            f.worker_threads = Some(1);
        })
        .proxy()
        .await;
    // Fifty clients connect at once: the kernel completes their handshakes before the proxy accepts any.
    let addr = proxy.listen;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        set.spawn(async move { Raw::connect_to(addr).await });
    }
    let mut raws = Vec::new();
    while let Some(r) = set.join_next().await {
        raws.push(r.expect("connect task"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served = 0;
    for r in &mut raws {
        r.send(&resp(&["PING"])).await;
        if r.read_exact(7).await == b"+PONG\r\n" {
            served += 1;
        }
    }
    assert!(served <= 2, "{served} clients served with max_clients = 2");
}

#[tokio::test]
async fn a_client_just_answered_after_a_long_blocking_command_is_not_closed_as_idle() {
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| f.client_idle_timeout_ms = Some(1000))
        .proxy()
        .await;
    let mut worker = Raw::connect(&proxy).await;
    // A blocking pop that outlasts the idle timeout: the client is busy, not idle, meanwhile.
    worker.send(&resp(&["BLPOP", "jobs", "2"])).await;
    worker.expect(b"*-1\r\n").await;
    // It works on the answer for a moment (well under the idle timeout), then asks again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.send(&resp(&["PING"])).await;
    worker.expect(b"+PONG\r\n").await;
}

#[tokio::test]
async fn hello_with_an_unsupported_protocol_does_not_authenticate() {
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| f.requirepass = Some("clientpw".into()))
        .proxy()
        .await;
    let mut raw = Raw::connect(&proxy).await;
    // Redis checks the version first: -NOPROTO, and the client is still not authenticated.
    raw.send(&resp(&["HELLO", "4", "AUTH", "default", "clientpw"]))
        .await;
    let reply = raw.frame().await;
    assert!(
        reply.starts_with(b"-NOPROTO"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    raw.send(&resp(&["GET", "k"])).await;
    assert_eq!(
        String::from_utf8_lossy(&raw.frame().await),
        "-NOAUTH Authentication required.\r\n"
    );
}

#[tokio::test]
async fn an_unauthenticated_client_cannot_make_the_proxy_buffer_a_huge_bulk() {
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| f.requirepass = Some("clientpw".into()))
        .proxy()
        .await;
    let raw = Raw::connect(&proxy).await;
    let (mut rd, mut wr) = raw.stream.into_split();
    // Redis answers this at once ("-ERR Protocol error: unauthenticated bulk length") and closes.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(b"*2\r\n$3\r\nGET\r\n$400000000\r\n").await;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        wr
    });
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "an unauthenticated client is still being read after 3 s (32 MB of a 400 MB bulk sent), got {:?}",
        String::from_utf8_lossy(&got)
    );
}

// Third review (routing and failover invariants).

/// Invariant 4: a write whose bytes reached the primary is never sent again. A script that writes and
/// then returns an error whose text starts with `READONLY` (user text, or a module's error) makes the
/// reply look like "a demoted primary rejected the whole batch", so the proxy re-sends the write to
/// the (same) primary again and again until write_hold_ms runs out.
#[tokio::test]
async fn a_write_answered_with_a_readonly_text_error_runs_once() {
    let (cluster, proxy) = Cluster::builder()
        .flags(|f| f.write_hold_ms = Some(1000))
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let r = try_q(
        &mut c,
        &[
            "EVAL",
            "redis.call('INCR', KEYS[1]); return redis.error_reply('READONLY not really')",
            "1",
            "counter",
        ],
    )
    .await;
    assert!(r.is_err(), "the script's error is passed on: {r:?}");
    let mut d = direct(cluster.primary()).await;
    let n: i64 = q(&mut d, &["GET", "counter"]).await;
    assert_eq!(n, 1, "the script ran {n} times for one EVAL");

    // Even Redis's exact words: the node that said them is never sent the write again, and once the
    // hold is over the client gets them.
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&[
        "EVAL",
        "redis.call('INCR', KEYS[1]); return redis.error_reply(\"READONLY You can't write against a read only replica.\")",
        "1",
        "counter",
    ]))
    .await;
    raw.expect(b"-READONLY You can't write against a read only replica.\r\n")
        .await;
    let n: i64 = q(&mut d, &["GET", "counter"]).await;
    assert_eq!(n, 2, "the script ran {} times for the second EVAL", n - 1);
}

/// Invariant 4 (switchover): in sentinel mode `POST /failover` waits only for the replicas that are
/// *eligible for reads* to reach the primary's offset before `SENTINEL FAILOVER`, but Sentinel may promote
/// any replica it considers healthy (it prefers the lowest `replica-priority`). A replica out of read
/// rotation because it lags is exactly the one that misses acknowledged writes.
#[tokio::test]
async fn a_sentinel_switchover_never_promotes_a_replica_missing_acknowledged_writes() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    // Sentinel prefers replica 0 (every sentinel knows it before the switchover); it replicates through
    // a slow link.
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .prefer_replica(0)
        .delay_replica(0, Duration::from_millis(1500))
        .flags(|f| f.max_lag_ms = Some(300))
        .eligible(1)
        .proxy()
        .await;
    let old = cluster.primary().addr();
    // Writes flow long enough for replica 0 to fall out of rotation (1.5 s behind, limit 300 ms).
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(proxy.listen, 1, stop.clone());
    let r0_node = cluster.replicas()[0].addr();
    eventually!(
        "replica 0 out of rotation",
        proxy
            .topo
            .snapshot()
            .replica_nodes()
            .any(|n| n.addr == r0_node && !n.repl.is_eligible())
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, body) = http(proxy.admin, "POST", "/failover").await;
    eprintln!("switchover: {status} {body}");
    let Writes { acked, .. } = stop_writers(&stop, writers).await;
    assert_eq!(status, 200, "{body}");
    let new = primary_addr(&proxy).expect("primary");
    assert_ne!(new, old);
    let i = cluster.replica_at(&new).expect("a former replica leads");
    eprintln!("promoted {new} (replica {i}); {} acked", acked.len());
    assert_all_present(&cluster.replicas()[i], &acked).await;
}

/// A lag limit under 250 ms (the config accepts 1 ms and up) makes `probe_timeout` call
/// `Duration::clamp` with min > max: every probe task panics, no replica ever gets a read and the
/// primary's offset history is never recorded.
#[tokio::test]
async fn a_lag_limit_under_250_ms_still_probes_the_replicas() {
    let (_cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.max_lag_ms = Some(200))
        .eligible(0)
        .proxy()
        .await;
    wait_eligible(&proxy, 1).await;
}

/// Invariant 5 / README ("every sentinel is asked ... and the majority answer wins"): with two of three
/// sentinels silent, the one that still answers decides alone. A minority sentinel with a stale or
/// wrong view (here: it monitors another master under the same name) moves every write to a node that
/// is not the cluster's primary.
#[tokio::test]
async fn one_sentinel_out_of_three_cannot_move_writes_to_another_master() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .sentinels(3)
        .eligible(0)
        .proxy()
        .await;
    let other = Cluster::builder().start().await;
    let primary = cluster.primary().addr();
    eventually!(
        "primary known",
        primary_addr(&proxy) == Some(primary.clone())
    );
    // One sentinel is wrong about the master; the other two stop answering (partitioned away).
    let s0 = &cluster.sentinels()[0];
    let name = redsplit::embedded::MASTER_NAME;
    s0.call(&["SENTINEL", "REMOVE", name])
        .await
        .expect("REMOVE");
    let port = other.primary().addr().to_string();
    let port = port.rsplit(':').next().expect("port").to_string();
    s0.call(&["SENTINEL", "MONITOR", name, "127.0.0.1", &port, "2"])
        .await
        .expect("MONITOR");
    cluster.sentinels()[1]
        .signal("STOP")
        .expect("stop sentinel 1");
    cluster.sentinels()[2]
        .signal("STOP")
        .expect("stop sentinel 2");
    // Give discovery time to look (discovery_interval_ms default) and a write time to land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = primary_addr(&proxy);
    let mut c = client(&proxy).await;
    let _ = try_q(&mut c, &["SET", "minority", "1"]).await;
    cluster.sentinels()[1].signal("CONT").expect("cont");
    cluster.sentinels()[2].signal("CONT").expect("cont");
    let landed: Option<String> = q(&mut direct(other.primary()).await, &["GET", "minority"]).await;
    assert_eq!(
        now,
        Some(primary.clone()),
        "1 of 3 sentinels moved the primary to {now:?}; the write landed on the other master: {landed:?}"
    );
}

/// A read that times out on its replica while a later write of the session waits on a paused primary:
/// the read may not be sent again (it would run after a write that may have happened), and its own
/// failure is what the client gets, at once. Found by review: it waited for the write instead and then
/// got the write hold's -MASTERDOWN, a second late.
#[tokio::test]
async fn a_read_failing_behind_a_pending_write_gets_its_own_error() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .eventual()
        .flags(|f| {
            f.read_timeout_ms = Some(200);
            f.write_hold_ms = Some(3000);
            // Slow probes: the stalled replica stays in rotation, so the GET goes to it. A lag limit
            // above the probe interval: a replica's lag counts the age of the primary's newest sample.
            f.probe_interval_ms = Some(5000);
            f.max_lag_ms = Some(20_000);
        })
        .proxy()
        .await;
    let replica = &cluster.replicas()[0];
    replica.signal("STOP").expect("SIGSTOP");
    let mut primary = direct(cluster.primary()).await;
    let _: () = q(&mut primary, &["CLIENT", "PAUSE", "2000", "WRITE"]).await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&[resp(&["GET", "k"]), resp(&["SET", "x", "1"])].concat())
        .await;
    let read = String::from_utf8_lossy(&raw.frame().await).into_owned();
    replica.signal("CONT").expect("SIGCONT");
    let _: () = q(&mut primary, &["CLIENT", "UNPAUSE"]).await;
    assert!(
        read.starts_with("-ERR redsplit: read timed out"),
        "the read's own error: {read:?}"
    );
    raw.expect(b"+OK\r\n").await;
}
