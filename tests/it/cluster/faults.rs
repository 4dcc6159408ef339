//! Faults in front of a Redis Cluster: a replica frozen, a shard's primary killed (writes held until its
//! replica takes over, other shards going on), a slot moved while clients write to it.

use std::time::Duration;

use redis::Value;

use super::{cluster_and_proxy, key_in_slot, node_calls};
use crate::harness::*;
use crate::shards::RedisCluster;

#[tokio::test]
async fn a_frozen_replica_is_taken_out_of_its_shards_reads_and_other_shards_replicas_keep_theirs() {
    let (cluster, proxy) = cluster_and_proxy(|f| f.max_lag_ms = Some(500)).await;
    let (_, replicas) = cluster.owner(100).await.expect("slot 100 owned");
    let frozen = cluster
        .node(replicas.first().expect("a replica"))
        .expect("the replica");
    let (here, there) = (key_in_slot(100, "f"), key_in_slot(16000, "f"));
    let mut w = client(&proxy).await;
    let _: () = q(&mut w, &["SET", &here, "old"]).await;
    let _: () = q(&mut w, &["SET", &there, "old"]).await;
    frozen.signal("STOP");
    let frozen_addr = frozen.addr();
    eventually!("the frozen replica is out of rotation", {
        let t = proxy.topo.snapshot();
        let out = t
            .nodes()
            .find(|n| n.addr == frozen_addr)
            .is_some_and(|n| !n.repl.is_eligible());
        out
    });
    let _: () = q(&mut w, &["SET", &here, "new"]).await;
    let _: () = q(&mut w, &["SET", &there, "new"]).await;
    // A connection that wrote nothing: only the lag limit keeps it from old data.
    let mut r = client(&proxy).await;
    let (_, others) = cluster.owner(16000).await.expect("slot 16000 owned");
    let other = cluster.node(&others[0]).expect("the other replica");
    let before = node_calls(other, "get").await;
    for _ in 0..20 {
        let v: String = q(&mut r, &["GET", &here]).await;
        assert_eq!(v, "new", "served by a live node of the shard");
        let _: String = q(&mut r, &["GET", &there]).await;
    }
    assert!(
        node_calls(other, "get").await > before,
        "the other shard's replica still serves its reads"
    );
    frozen.signal("CONT");
}

#[tokio::test]
async fn a_killed_primary_holds_its_writes_until_its_replica_takes_over_and_other_shards_go_on() {
    let (mut cluster, proxy) = cluster_and_proxy(|f| f.write_hold_ms = Some(20_000)).await;
    let victim_key = key_in_slot(100, "victim");
    let other_key = key_in_slot(16000, "other");
    let (victim, _) = cluster.owner(100).await.expect("slot 100 owned");
    let (other, _) = cluster.owner(16000).await.expect("slot 16000 owned");
    assert_ne!(victim, other);
    let mut c = client(&proxy).await;
    let mut o = client(&proxy).await;
    let _: () = q(&mut c, &["SET", &victim_key, "0"]).await;
    // Writes to another shard, all through the failover: none may fail or stall past a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other_writes = {
        let stop = stop.clone();
        let key = other_key.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut slowest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let r: i64 = q(&mut o, &["INCR", &key]).await;
                slowest = slowest.max(started.elapsed());
                n += 1;
                assert_eq!(r as u64, n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (n, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.node_mut(&victim).expect("victim node").kill();
    // Writes to the killed shard wait for its replica, then succeed, in order.
    for i in 1..=20 {
        let v: i64 = q(&mut c, &["INCR", &victim_key]).await;
        assert_eq!(v, i);
    }
    // Only a primary runs writes: the replica took over. Every node learns it by gossip, some a moment
    // after the proxy did.
    eventually!(
        "every node sees the replica took over",
        cluster.owner(100).await.is_some_and(|(p, _)| p != victim)
    );
    let (promoted, _) = cluster.owner(100).await.expect("slot 100 owned again");
    let role = cluster
        .node(&promoted)
        .expect("promoted node")
        .call(&["ROLE"])
        .await;
    assert!(
        matches!(&role, Ok(redis_protocol::resp2::types::OwnedFrame::Array(r))
            if matches!(r.first(), Some(redis_protocol::resp2::types::OwnedFrame::BulkString(m)) if m == b"master")),
        "{role:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, slowest) = other_writes.await.expect("other shard's writer");
    assert!(n > 10, "the other shard took writes throughout ({n})");
    assert!(
        slowest < Duration::from_secs(2),
        "the other shard never waited for the failover ({slowest:?})"
    );
    let v: String = q(&mut c, &["GET", &victim_key]).await;
    assert_eq!(v, "20");
}

#[tokio::test]
async fn writers_in_flight_when_a_primary_dies_get_at_most_one_error_each_and_no_write_runs_twice()
{
    let (mut cluster, proxy) = cluster_and_proxy(|f| f.write_hold_ms = Some(20_000)).await;
    let (victim, _) = cluster.owner(100).await.expect("slot 100 owned");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let key = key_in_slot(100, &format!("w{w}"));
        let mut c = client(&proxy).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            // Every acknowledged INCR's value, and the errors.
            let (mut acked, mut errors) = (Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_q(&mut c, &["INCR", &key]).await {
                    Ok(Value::Int(v)) => acked.push(v),
                    Ok(other) => panic!("INCR: {other:?}"),
                    Err(_) => errors += 1,
                }
            }
            let last: Option<String> = q(&mut c, &["GET", &key]).await;
            (
                acked,
                errors,
                last.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.node_mut(&victim).expect("victim node").kill();
    eventually!(
        "the replica took over",
        cluster.owner(100).await.is_some_and(|(p, _)| p != victim)
    );
    // Writes go on for a moment on the promoted replica.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let (acked, errors, last) = w.await.expect("writer");
        assert!(errors <= 1, "at most one error per connection ({errors})");
        // Each INCR that errored may have run once, never twice; none ran twice by being sent again.
        let max = acked.len() as i64 + i64::from(errors);
        assert!(last <= max, "{last} increments for {max} sent");
        // Redis replicates asynchronously: what the primary acknowledged in its last moment may be
        // lost with it (the promoted replica's count then restarts below an acknowledged one). Nothing
        // more.
        let lost = acked.windows(2).map(|p| p[0] + 1 - p[1]).max().unwrap_or(0);
        assert!(lost <= 5, "{lost} acknowledged increments lost: {acked:?}");
        assert!(last >= acked.last().copied().unwrap_or(0));
        assert!(acked.len() > 10, "the writer went on after the failover");
    }
}

#[tokio::test]
async fn a_slot_moved_under_load_is_followed_without_a_client_error() {
    let (cluster, proxy) = cluster_and_proxy(|_| {}).await;
    let slot = 42u16;
    let (from, _) = cluster.owner(slot).await.expect("owned");
    let to = cluster.primary(1).addr();
    assert_ne!(from, to);
    let keys: Vec<String> = (0..40)
        .map(|i| key_in_slot(slot, &format!("n{i}")))
        .collect();
    let mut c = client(&proxy).await;
    for k in &keys {
        let _: () = q(&mut c, &["SET", k, "0"]).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut counts = vec![0i64; keys.len()];
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (k, n) in keys.iter().zip(counts.iter_mut()) {
                    let v: i64 = match try_q(&mut c, &["INCR", k]).await {
                        Ok(Value::Int(v)) => v,
                        other => panic!("INCR {k} during the migration: {other:?}"),
                    };
                    *n += 1;
                    assert_eq!(v, *n, "{k}");
                }
                // A multi-key command while the slot's keys are split between the nodes gets TRYAGAIN
                // from Redis: the proxy retries it until they are together again.
                let (first, last) = (&keys[0], &keys[keys.len() - 1]);
                let pair = try_q(&mut c, &["MGET", first, last]).await;
                let want = Value::Array(vec![
                    Value::BulkString(counts[0].to_string().into_bytes()),
                    Value::BulkString(counts[keys.len() - 1].to_string().into_bytes()),
                ]);
                assert_eq!(pair.ok(), Some(want), "MGET during the migration");
                rounds += 1;
            }
            (counts, rounds, c)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    migrate(&cluster, &proxy, slot, &from, &to).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (counts, rounds, mut c) = load.await.expect("load ran without an error");
    assert!(rounds > 2, "load ran through the migration");
    for (k, n) in keys.iter().zip(&counts) {
        let v: i64 = q(&mut c, &["GET", k]).await;
        assert_eq!(v, *n, "{k}: every increment counted once");
    }
    let owner = cluster.owner(slot).await.expect("owned").0;
    assert_eq!(owner, to, "the slot moved");
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    let redirects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redsplit_cluster_redirects_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        redirects > 0,
        "the load met redirects and the proxy followed them"
    );
}

/// Moves `slot` from the primary at `from` to the one at `to`, a few keys at a time, as `redis-cli
/// --cluster reshard` does: IMPORTING on the target, MIGRATING on the source, MIGRATE in batches, then
/// SETSLOT NODE everywhere.
async fn migrate(
    cluster: &RedisCluster,
    proxy: &redsplit::Proxy,
    slot: u16,
    from: &redsplit::config::Addr,
    to: &redsplit::config::Addr,
) {
    let (src, dst) = (
        cluster.node(from).expect("source"),
        cluster.node(to).expect("target"),
    );
    let (src_id, dst_id) = (
        src.text(&["CLUSTER", "MYID"]).await,
        dst.text(&["CLUSTER", "MYID"]).await,
    );
    let s = slot.to_string();
    assert_eq!(
        dst.text(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id])
            .await,
        "OK"
    );
    assert_eq!(
        src.text(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id])
            .await,
        "OK"
    );
    // Until the proxy learns that the slot moves (within discovery_interval_ms), a read on the source's
    // replica of a key already moved answers nil: only the primaries know. redis-cli moves keys at once;
    // here they wait for the proxy, which then sends the slot's reads to the primaries.
    eventually!(
        "the proxy sees the slot moving",
        proxy.topo.snapshot().slot_moving(slot)
    );
    loop {
        let keys = match src.call(&["CLUSTER", "GETKEYSINSLOT", &s, "5"]).await {
            Ok(redis_protocol::resp2::types::OwnedFrame::Array(k)) => k,
            other => panic!("GETKEYSINSLOT: {other:?}"),
        };
        if keys.is_empty() {
            break;
        }
        let keys: Vec<String> = keys.into_iter().map(text).collect();
        let port = dst.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let reply = src.text(&args).await;
        assert_eq!(reply, "OK", "MIGRATE");
        // Let the load hit the slot while it is split between the nodes (ASK, TRYAGAIN).
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The target first, then the source, then the others, as `redis-cli --cluster reshard` does.
    let rest = cluster
        .nodes
        .iter()
        .filter(|n| n.running() && n.port != src.port && n.port != dst.port);
    for n in [dst, src].into_iter().chain(rest) {
        let _ = n.call(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]).await;
    }
}
