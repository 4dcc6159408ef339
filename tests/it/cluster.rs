//! The proxy in front of a real Redis Cluster (three primaries, three replicas on loopback), talked to by
//! a plain non-cluster client: keys on every shard, commands split over shards, CROSSSLOT, reads on
//! replicas, SCAN over every shard, a primary killed, a slot moved under load.

use std::collections::BTreeSet;

use redsplit::config::{Flags, TopologyKind};
use redsplit::topology::key_slot;
use redsplit::Proxy;

use crate::harness::*;
use crate::shards::{ClusterNode, RedisCluster};

// A primary killed, a replica frozen, a slot moved under load.
#[path = "cluster/faults.rs"]
mod faults;

/// A cluster of three shards, each with a replica, and a proxy over it (seeded with one node) once
/// every shard's primary and replica is known and the replicas serve reads.
async fn cluster_and_proxy(tweak: impl FnOnce(&mut Flags)) -> (RedisCluster, Proxy) {
    let cluster = RedisCluster::start(3, 1).await;
    let mut flags = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        probe_interval_ms: Some(20),
        discovery_interval_ms: Some(200),
        log_level: Some("warn".into()),
        topology: Some(TopologyKind::Cluster),
        cluster: Some(vec![cluster.addrs()[0].clone()]),
        ..Flags::default()
    };
    tweak(&mut flags);
    let proxy = proxy_with(flags).await;
    eventually!(
        "the proxy knows three shards, each with an eligible replica",
        {
            let t = proxy.topo.snapshot();
            t.shards.len() == 3
                && t.shards
                    .iter()
                    .all(|s| s.primary.is_some() && s.replica_nodes().any(|r| r.repl.is_eligible()))
        }
    );
    (cluster, proxy)
}

/// Calls of `cmd` a cluster node has run (`INFO commandstats`).
async fn node_calls(n: &ClusterNode, cmd: &str) -> u64 {
    let info = match n.call(&["INFO", "commandstats"]).await {
        Ok(f) => text(f),
        Err(e) => panic!("INFO commandstats: {e}"),
    };
    commandstat_calls(&info, cmd)
}

/// Keys `prefix0` to `prefix{n-1}`: spread over every shard by their hashes.
fn keys_on_every_shard(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A key whose slot is `slot`: `{tag}name` with a tag found by trying.
fn key_in_slot(slot: u16, name: &str) -> String {
    (0u64..)
        .map(|i| format!("{{t{i}}}{name}"))
        .find(|k| key_slot(k.as_bytes()) == slot)
        .expect("some tag hashes to every slot")
}

#[tokio::test]
async fn keys_on_every_shard_are_written_and_read_through_one_endpoint() {
    let (cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let keys = keys_on_every_shard("k", 300);
    for k in &keys {
        let _: () = q(&mut c, &["SET", k, &format!("v-{k}")]).await;
    }
    for k in &keys {
        let v: String = q(&mut c, &["GET", k]).await;
        assert_eq!(v, format!("v-{k}"));
    }
    // Each key sits on the primary that owns its slot, and every primary got some.
    let mut total = 0;
    for i in 0..3 {
        let n: i64 = match cluster.primary(i).call(&["DBSIZE"]).await {
            Ok(redis_protocol::resp2::types::OwnedFrame::Integer(n)) => n,
            other => panic!("DBSIZE: {other:?}"),
        };
        assert!(n > 50, "shard {i} holds {n} keys");
        total += n;
    }
    assert_eq!(total, 300);
    let dbsize: i64 = q(&mut c, &["DBSIZE"]).await;
    assert_eq!(dbsize, 300, "DBSIZE through the proxy sums every shard");
}

#[tokio::test]
async fn multi_key_commands_across_shards_are_split_and_their_replies_merged_in_order() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let keys = keys_on_every_shard("m", 20);
    let mut mset = vec!["MSET"];
    let values: Vec<String> = keys.iter().map(|k| format!("value of {k}")).collect();
    for (k, v) in keys.iter().zip(&values) {
        mset.push(k);
        mset.push(v);
    }
    let _: () = q(&mut c, &mset).await;
    let mut mget = vec!["MGET", "missing-key"];
    mget.extend(keys.iter().map(String::as_str));
    let got: Vec<Option<String>> = q(&mut c, &mget).await;
    let mut want = vec![None];
    want.extend(values.iter().cloned().map(Some));
    assert_eq!(
        got, want,
        "MGET values in key order, nil for the missing key"
    );
    let mut exists = vec!["EXISTS", "missing-key"];
    exists.extend(keys.iter().map(String::as_str));
    let n: i64 = q(&mut c, &exists).await;
    assert_eq!(n, 20);
    let mut del = vec!["DEL"];
    del.extend(keys.iter().take(10).map(String::as_str));
    let n: i64 = q(&mut c, &del).await;
    assert_eq!(n, 10);
    let n: i64 = q(&mut c, &exists).await;
    assert_eq!(n, 10);
}

#[tokio::test]
async fn a_multi_key_command_the_proxy_cannot_split_gets_crossslot_and_one_slot_works() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let (a, b) = ("foo", "bar");
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    let _: () = q(&mut c, &["SET", a, "1"]).await;
    let err = try_q(&mut c, &["RENAME", a, b])
        .await
        .expect_err("keys in two slots");
    assert_eq!(
        err.code(),
        Some("CROSSSLOT"),
        "Redis Cluster's error: {err}"
    );
    assert!(err
        .to_string()
        .contains("Keys in request don't hash to the same slot"));
    let _: () = q(&mut c, &["SET", "{user1}.a", "1"]).await;
    let _: () = q(&mut c, &["RENAME", "{user1}.a", "{user1}.b"]).await;
    let v: String = q(&mut c, &["GET", "{user1}.b"]).await;
    assert_eq!(v, "1");
    // WAIT counts one shard's replicas: after writes on one shard it answers; after writes on two, a
    // count from either would be wrong, so it is refused.
    let mut w = client(&proxy).await;
    let _: () = q(&mut w, &["SET", &key_in_slot(100, "w"), "1"]).await;
    let n: i64 = q(&mut w, &["WAIT", "1", "2000"]).await;
    assert_eq!(n, 1, "the shard's replica has the write");
    let _: () = q(&mut w, &["SET", &key_in_slot(16000, "w"), "1"]).await;
    let err = try_q(&mut w, &["WAIT", "1", "100"])
        .await
        .expect_err("WAIT after writes on two shards");
    assert!(err.to_string().contains("several cluster shards"), "{err}");
    let err = try_q(&mut c, &["SELECT", "1"])
        .await
        .expect_err("SELECT 1 in cluster mode");
    assert!(err
        .to_string()
        .contains("SELECT is not allowed in cluster mode"));
    let _: () = q(&mut c, &["SELECT", "0"]).await;
    let err = try_q(&mut c, &["SELECT", "x"])
        .await
        .expect_err("not a number");
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[tokio::test]
async fn a_session_reads_its_own_writes_on_every_shard() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let keys = keys_on_every_shard("ryw", 30);
    for round in 0..10 {
        for k in &keys {
            let v = format!("{round}");
            let _: () = q(&mut c, &["SET", k, &v]).await;
            let got: String = q(&mut c, &["GET", k]).await;
            assert_eq!(got, v, "{k} read right after its write");
        }
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        let all: Vec<String> = q(&mut c, &mget).await;
        assert!(all.iter().all(|v| *v == format!("{round}")), "{all:?}");
    }
}

#[tokio::test]
async fn resp3_replies_of_a_split_command_merge_too_and_a_script_over_two_slots_is_refused() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["HELLO", "3"])).await;
    let _hello = raw.frame().await;
    raw.send(&resp(&["SET", "foo", "1"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["MGET", "foo", "bar", "key"])).await;
    raw.expect(b"*3\r\n$1\r\n1\r\n_\r\n_\r\n").await;
    raw.send(&resp(&["EVAL", "return 1", "2", "foo", "bar"]))
        .await;
    let err = raw.frame().await;
    assert!(
        err.starts_with(b"-CROSSSLOT"),
        "{}",
        String::from_utf8_lossy(&err)
    );
}

#[tokio::test]
async fn reads_reach_every_shards_replica() {
    let (cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let keys = keys_on_every_shard("r", 90);
    let mut w = client(&proxy).await;
    for k in &keys {
        let _: () = q(&mut w, &["SET", k, "x"]).await;
    }
    // Another connection, which wrote nothing: its reads may go to any replica within the lag limit.
    let mut c = client(&proxy).await;
    for _ in 0..3 {
        for k in &keys {
            let v: Option<String> = q(&mut c, &["GET", k]).await;
            assert_eq!(v.as_deref(), Some("x"), "a replica never serves older data");
        }
    }
    for r in &cluster.nodes[3..] {
        assert!(
            node_calls(r, "get").await > 0,
            "replica {} served reads of its shard",
            r.addr()
        );
    }
}

#[tokio::test]
async fn scan_visits_every_key_of_every_shard_exactly_once() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let keys = keys_on_every_shard("s", 500);
    for k in &keys {
        let _: () = q(&mut c, &["SET", k, "1"]).await;
    }
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, batch): (String, Vec<String>) =
            q(&mut c, &["SCAN", &cursor, "COUNT", "50"]).await;
        seen.extend(batch);
        rounds += 1;
        assert!(rounds < 1000, "SCAN ends");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no key twice");
    assert_eq!(unique.len(), 500, "every key");
    let all: Vec<String> = q(&mut c, &["KEYS", "s*"]).await;
    assert_eq!(all.len(), 500, "KEYS gathers every shard's");
}

#[tokio::test]
async fn topology_and_metrics_show_every_shard() {
    let (cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let (status, body) = http(proxy.admin, "GET", "/topology").await;
    assert_eq!(status, 200);
    let t: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let shards = t["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    let mut covered = 0;
    for s in shards {
        let primary = s["primary"].as_str().expect("a primary");
        let primary = redsplit::config::Addr::parse(primary).expect("addr");
        assert!(cluster.node(&primary).is_some());
        assert_eq!(s["replicas"].as_array().map(Vec::len), Some(1));
        for r in s["slots"].as_array().expect("slot ranges") {
            covered += r[1].as_u64().expect("to") - r[0].as_u64().expect("from") + 1;
        }
    }
    assert_eq!(covered, 16384, "the shards' slots cover the key space");
    let mut c = client(&proxy).await;
    let _: Vec<Option<String>> = q(&mut c, &["MGET", "foo", "bar"]).await;
    let (status, ready) = http(proxy.admin, "GET", "/ready").await;
    assert_eq!(status, 200);
    assert!(
        ready.contains("cluster of 3 shards (0 without a primary)"),
        "{ready}"
    );
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    assert!(metrics.contains("redsplit_cluster_shards 3"), "{metrics}");
    assert!(metrics.contains("redsplit_cluster_split_commands_total 1"));
}

#[tokio::test]
async fn a_transaction_runs_on_the_shard_of_its_keys_and_one_crossing_shards_is_refused() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    // One write: MULTI, the commands, EXEC (as client libraries send a transaction).
    let (a, b): (String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{acct}.a")
        .arg("1")
        .cmd("INCR")
        .arg("{acct}.b")
        .query_async(&mut c)
        .await
        .expect("a transaction on one slot");
    assert_eq!((a.as_str(), b), ("OK", 1));
    // Slots 100 and 16000 are on the first and the last shard.
    let (here, there) = (key_in_slot(100, ".c"), key_in_slot(16000, ".c"));
    let crossing: redis::RedisResult<(String, String)> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(&here)
        .arg("1")
        .cmd("SET")
        .arg(&there)
        .arg("1")
        .query_async(&mut c)
        .await;
    let err = crossing.expect_err("a transaction over two shards is refused");
    assert!(err.to_string().contains("another shard"), "{err}");
    let none: (Option<String>, Option<String>) = (
        q(&mut c, &["GET", &here]).await,
        q(&mut c, &["GET", &there]).await,
    );
    assert_eq!(none, (None, None), "nothing of it ran");
}

#[tokio::test]
async fn a_multi_sent_alone_takes_the_shard_of_the_command_that_follows() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    // Slot 16000 is on the last shard, not the first: the one a transaction would default to.
    let (a, b) = (key_in_slot(16000, "a"), key_in_slot(16000, "b"));
    let mut raw = Raw::connect(&proxy).await;
    for (cmd, reply) in [
        (vec!["MULTI"], "+OK\r\n"),
        (vec!["SET", &a, "1"], "+QUEUED\r\n"),
        (vec!["INCR", &b], "+QUEUED\r\n"),
        (vec!["EXEC"], "*2\r\n+OK\r\n:1\r\n"),
        (vec!["MULTI"], "+OK\r\n"),
        (vec!["EXEC"], "*0\r\n"),
        (vec!["MULTI"], "+OK\r\n"),
        (vec!["DISCARD"], "+OK\r\n"),
        (vec!["GET", &a], "$1\r\n1\r\n"),
    ] {
        raw.send(&resp(&cmd)).await;
        raw.expect(reply.as_bytes()).await;
    }
    // A later command for another shard is refused, and EXEC aborts.
    raw.send(&resp(&["MULTI"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["SET", &a, "2"])).await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(&resp(&["SET", &key_in_slot(100, "c"), "2"])).await;
    let refused = raw.frame().await;
    assert!(
        refused.starts_with(b"-CROSSSLOT"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    raw.send(&resp(&["EXEC"])).await;
    let aborted = raw.frame().await;
    assert!(
        aborted.starts_with(b"-EXECABORT"),
        "{}",
        String::from_utf8_lossy(&aborted)
    );
    raw.send(&resp(&["GET", &a])).await;
    raw.expect(b"$1\r\n1\r\n").await;
}

#[tokio::test]
async fn scripts_and_functions_load_on_every_shard_and_flushall_empties_them_all() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut c = client(&proxy).await;
    let sha: String = q(
        &mut c,
        &["SCRIPT", "LOAD", "return redis.call('INCR', KEYS[1])"],
    )
    .await;
    for k in ["foo", "bar", "key"] {
        let n: i64 = q(&mut c, &["EVALSHA", &sha, "1", k]).await;
        assert_eq!(n, 1, "the script is known on {k}'s shard");
    }
    let lib = "#!lua name=cnt\nredis.register_function('bump', function(keys) return redis.call('INCRBY', keys[1], 10) end)";
    let name: String = q(&mut c, &["FUNCTION", "LOAD", lib]).await;
    assert_eq!(name, "cnt");
    for k in ["foo", "bar", "key"] {
        let n: i64 = q(&mut c, &["FCALL", "bump", "1", k]).await;
        assert_eq!(n, 11, "the function is known on {k}'s shard");
    }
    // RANDOMKEY finds the one key there is, whichever shard holds it.
    let _: () = q(&mut c, &["FLUSHALL"]).await;
    let n: i64 = q(&mut c, &["DBSIZE"]).await;
    assert_eq!(n, 0);
    let none: Option<String> = q(&mut c, &["RANDOMKEY"]).await;
    assert_eq!(none, None);
    let _: () = q(&mut c, &["SET", &key_in_slot(16000, "only"), "1"]).await;
    for _ in 0..5 {
        let k: Option<String> = q(&mut c, &["RANDOMKEY"]).await;
        assert_eq!(k, Some(key_in_slot(16000, "only")));
    }
}

#[tokio::test]
async fn pubsub_messages_reach_subscribers_classic_and_sharded() {
    let (_cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let mut sub = Raw::connect(&proxy).await;
    sub.send(&resp(&["SUBSCRIBE", "news"])).await;
    let confirm = sub.frame().await;
    assert!(String::from_utf8_lossy(&confirm).contains("subscribe"));
    let mut ssub = Raw::connect(&proxy).await;
    ssub.send(&resp(&["SSUBSCRIBE", "orders"])).await;
    let confirm = ssub.frame().await;
    assert!(String::from_utf8_lossy(&confirm).contains("ssubscribe"));
    let mut c = client(&proxy).await;
    eventually!(
        "PUBLISH reaches the subscriber",
        q::<i64>(&mut c, &["PUBLISH", "news", "hello"]).await >= 1
    );
    let msg = sub.frame().await;
    assert!(String::from_utf8_lossy(&msg).contains("hello"));
    let n: i64 = q(&mut c, &["SPUBLISH", "orders", "o1"]).await;
    assert_eq!(
        n, 1,
        "SPUBLISH goes to the channel's shard, where the subscriber is"
    );
    let msg = ssub.frame().await;
    assert!(String::from_utf8_lossy(&msg).contains("o1"));
}

#[tokio::test]
async fn a_write_split_over_shards_waits_for_each_shard_s_replica_with_min_write_acks() {
    let (cluster, proxy) = cluster_and_proxy(|f| {
        f.min_write_acks = Some(1);
        f.write_ack_timeout_ms = Some(300);
    })
    .await;
    let mut c = client(&proxy).await;
    let keys = keys_on_every_shard("ack", 12);
    let mut mset = vec!["MSET"];
    for k in &keys {
        mset.push(k);
        mset.push("v");
    }
    // Every replica up: acknowledged.
    eventually!("a split MSET is acknowledged by every shard", {
        try_q(&mut c, &mset).await.is_ok()
    });
    // One shard's replica frozen: the MSET ran, but that shard's part was not acknowledged.
    let slot = key_slot(keys[0].as_bytes());
    let (_, replicas) = cluster.owner(slot).await.expect("an owner");
    let replica = cluster.node(&replicas[0]).expect("the replica");
    replica.signal("STOP");
    let result = try_q(&mut c, &mset).await;
    replica.signal("CONT");
    let e = result.expect_err("the frozen replica cannot acknowledge");
    assert!(e.to_string().contains("acknowledged by 0 of 1"), "{e}");
}
