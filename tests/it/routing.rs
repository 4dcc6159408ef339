//! Which node each command reaches, checked against what every real server says it ran.

use redis::Value;

use crate::harness::*;

async fn total(servers: &[Server], cmd: &str) -> u64 {
    let mut n = 0;
    for s in servers {
        n += calls(s, cmd).await;
    }
    n
}

#[tokio::test]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let (cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut c = client(&proxy).await;
    for i in 0..200 {
        let _: () = q(&mut c, &["SET", &format!("k{i}"), "v"]).await;
    }
    for i in 0..300 {
        let _: Option<String> = q(&mut c, &["GET", &format!("k{}", i % 200)]).await;
    }
    assert_eq!(calls(cluster.primary(), "set").await, 200);
    assert_eq!(
        calls(cluster.primary(), "get").await,
        0,
        "no read reached the primary"
    );
    assert_eq!(total(cluster.replicas(), "get").await, 300);
    // Both replicas share the load.
    for r in cluster.replicas() {
        assert!(
            calls(r, "get").await >= 50,
            "reads are balanced over replicas"
        );
    }
}

#[tokio::test]
async fn scripts_that_may_write_go_to_the_primary_and_read_only_ones_to_replicas() {
    let (cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "1"]).await;
    let v: String = q(
        &mut c,
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"],
    )
    .await;
    assert_eq!(v, "1");
    // Eventual mode promises no read-your-writes: let the replica catch up first.
    let mut r = direct(&cluster.replicas()[0]).await;
    eventually!(
        "k replicated",
        q::<Option<String>>(&mut r, &["GET", "k"]).await.is_some()
    );
    let _: String = q(
        &mut c,
        &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k"],
    )
    .await;
    let _: i64 = q(&mut c, &["PUBLISH", "ch", "m"]).await;
    let _: Vec<String> = q(&mut c, &["SORT_RO", "nolist"]).await;
    let _: Vec<String> = q(&mut c, &["SORT", "nolist"]).await;
    let primary = cluster.primary();
    let replica = &cluster.replicas()[0];
    assert_eq!(calls(primary, "eval").await, 1);
    assert_eq!(calls(primary, "eval_ro").await, 0);
    assert_eq!(calls(replica, "eval_ro").await, 1);
    assert_eq!(calls(primary, "publish").await, 1);
    assert_eq!(calls(replica, "sort_ro").await, 1);
    assert_eq!(calls(primary, "sort").await, 1);
}

#[tokio::test]
async fn script_load_reaches_every_node_so_evalsha_ro_runs_on_replicas() {
    let (cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut c = client(&proxy).await;
    let sha: String = q(&mut c, &["SCRIPT", "LOAD", "return 42"]).await;
    for s in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        let mut d = direct(s).await;
        let exists: Vec<i64> = q(&mut d, &["SCRIPT", "EXISTS", &sha]).await;
        assert_eq!(exists, vec![1], "script cached on {}", s.addr());
    }
    for _ in 0..20 {
        let v: i64 = q(&mut c, &["EVALSHA_RO", &sha, "0"]).await;
        assert_eq!(v, 42);
    }
    assert_eq!(total(cluster.replicas(), "evalsha_ro").await, 20);
    assert_eq!(calls(cluster.primary(), "evalsha_ro").await, 0);
}

#[tokio::test]
async fn noscript_from_a_replica_is_retried_on_the_primary() {
    let (cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    // Loaded on the primary only, behind the proxy's back.
    let mut d = direct(cluster.primary()).await;
    let sha: String = q(&mut d, &["SCRIPT", "LOAD", "return 7"]).await;
    let mut c = client(&proxy).await;
    let v: i64 = q(&mut c, &["EVALSHA_RO", &sha, "0"]).await;
    assert_eq!(v, 7);
    assert_eq!(
        calls(&cluster.replicas()[0], "evalsha_ro").await,
        1,
        "tried on the replica first"
    );
    assert_eq!(
        calls(cluster.primary(), "evalsha_ro").await,
        1,
        "then on the primary"
    );
}

#[tokio::test]
async fn unknown_commands_go_to_the_primary() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let err = try_q(&mut c, &["NOSUCHCOMMAND", "x"])
        .await
        .expect_err("unknown command");
    assert!(err.to_string().contains("unknown command"), "{err}");
    // Read with a bare connection: client libraries' own greetings can add errors on Redis 7.0.
    let on_primary = text(
        cluster
            .primary()
            .call(&["INFO", "errorstats"])
            .await
            .expect("INFO"),
    );
    assert!(
        on_primary.contains("errorstat_ERR:count=1"),
        "primary saw it: {on_primary}"
    );
    let on_replica = text(
        cluster.replicas()[0]
            .call(&["INFO", "errorstats"])
            .await
            .expect("INFO"),
    );
    assert!(
        !on_replica.contains("errorstat_ERR"),
        "replica did not: {on_replica}"
    );
}

#[tokio::test]
async fn xread_without_block_is_a_read_and_xreadgroup_a_write() {
    let (cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    let mut c = client(&proxy).await;
    let _: String = q(&mut c, &["XADD", "s", "*", "f", "v"]).await;
    let _: () = q(&mut c, &["XGROUP", "CREATE", "s", "g", "0"]).await;
    let _: Value = q(&mut c, &["XREAD", "COUNT", "1", "STREAMS", "s", "0"]).await;
    let _: Value = q(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
    )
    .await;
    assert_eq!(calls(&cluster.replicas()[0], "xread").await, 1);
    assert_eq!(calls(cluster.primary(), "xread").await, 0);
    assert_eq!(calls(cluster.primary(), "xreadgroup").await, 1);
}

#[tokio::test]
async fn replies_keep_client_order_across_nodes() {
    let (cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut setup = client(&proxy).await;
    for i in 0..50 {
        let _: () = q(&mut setup, &["SET", &format!("o{i}"), &i.to_string()]).await;
    }
    // Let replicas catch up so reads see the values.
    let mut r0 = direct(&cluster.replicas()[0]).await;
    let mut r1 = direct(&cluster.replicas()[1]).await;
    eventually!("replicas synced", {
        let a: Option<String> = q(&mut r0, &["GET", "o49"]).await;
        let b: Option<String> = q(&mut r1, &["GET", "o49"]).await;
        a.is_some() && b.is_some()
    });
    // One raw pipeline mixing reads (replicas), writes (primary) and local commands (proxy).
    let mut raw = Raw::connect(&proxy).await;
    let mut out = Vec::new();
    let mut want = Vec::new();
    for i in 0..50 {
        let v = i.to_string();
        out.extend(resp(&["GET", &format!("o{i}")]));
        want.extend(format!("${}\r\n{}\r\n", v.len(), v).into_bytes());
        out.extend(resp(&["INCR", &format!("n{i}")]));
        want.extend(b":1\r\n");
        out.extend(resp(&["ECHO", &v]));
        want.extend(format!("${}\r\n{}\r\n", v.len(), v).into_bytes());
    }
    raw.send(&out).await;
    raw.expect(&want).await;
}

#[tokio::test]
async fn the_command_table_is_refreshed_from_the_primary() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let primary = cluster.primary().addr().to_string();
    eventually!(
        "table from the primary",
        proxy.table.load().source == primary
    );
    let count = match cluster
        .primary()
        .call(&["COMMAND", "COUNT"])
        .await
        .expect("COMMAND COUNT")
    {
        redis_protocol::resp2::types::OwnedFrame::Integer(n) => n as usize,
        other => panic!("{other:?}"),
    };
    // Top-level commands plus subcommands.
    assert!(
        proxy.table.load().len() > count,
        "{} entries for {count} commands",
        proxy.table.load().len()
    );
}

#[tokio::test]
async fn reads_go_on_without_errors_when_a_replica_dies() {
    let (mut cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut setup = client(&proxy).await;
    let _: () = q(&mut setup, &["SET", "k", "v"]).await;
    let addr = proxy.listen;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = client_at(addr).await;
                let mut errors = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = try_q(&mut c, &["GET", "k"]).await {
                        errors.push(e.to_string());
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                errors
            })
        })
        .collect();
    let load = |n: u32| done.load(std::sync::atomic::Ordering::Relaxed) >= n;
    eventually!("reads flowing", load(200));
    cluster.replicas_mut()[0].kill();
    let after_kill = done.load(std::sync::atomic::Ordering::Relaxed);
    eventually!("reads flowing after the kill", load(after_kill + 2000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let errors = r.await.expect("reader");
        assert!(errors.is_empty(), "no read failed: {errors:?}");
    }
    let total_ok = done.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total_ok > 100, "reads kept flowing: {total_ok}");
}

/// In the default `session` consistency, one connection's sequential reads spread over the replicas (they
/// used to stay on the first replica the connection read from).
#[tokio::test]
async fn one_connections_sequential_reads_spread_over_the_replicas() {
    let (cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    // Both replicas must have the write to serve this session's reads (after its first, diskless sync a
    // replica gets the stream only once it has acknowledged, up to a second later).
    for r in cluster.replicas() {
        eventually!("the replica has the write", {
            q::<Option<String>>(&mut direct(r).await, &["GET", "k"])
                .await
                .is_some()
        });
    }
    for _ in 0..2000 {
        let _: Option<String> = q(&mut c, &["GET", "k"]).await;
    }
    // A read may go to the primary while neither replica looks caught up (a loaded machine delays
    // probes); a handful at most.
    let on_primary = calls(cluster.primary(), "get").await;
    assert!(
        on_primary <= 100,
        "{on_primary} of 2,000 reads on the primary"
    );
    let why: Vec<String> = proxy
        .topo
        .snapshot()
        .replica_nodes()
        .map(|n| format!("{} {}", n.addr, n.repl.why().label()))
        .collect();
    for r in cluster.replicas() {
        let n = calls(r, "get").await;
        assert!(n >= 400, "one replica served {n} of 2,000 reads ({why:?})");
    }
}
