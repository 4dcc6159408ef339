//! Zones and replica trees with real servers: reads stay in the proxy's zone while a replica there
//! qualifies, and go to other zones, then the primary, when none does; `replicas-and-primary` reads a
//! local primary before a remote replica; a Valkey server's own `availability-zone` places it; in
//! Sentinel mode replicas of replicas are found, shown under their parent, measured and read from.

use std::sync::atomic::Ordering;

use redsplit::config::{Consistency, Flags, ZoneAffinity};

use crate::harness::*;

/// Flags putting the proxy in zone `a`, the nodes at `local` in `a` and every other node in `b`.
fn zoned(cluster: &Cluster, local: &[String], affinity: ZoneAffinity) -> Flags {
    let mut rules: Vec<String> = local.iter().map(|a| format!("{a}=a")).collect();
    // Less specific than an address: every other node on loopback is in zone b.
    rules.push("127.0.0.0/8=b".into());
    Flags {
        zone: Some("a".into()),
        node_zones: Some(rules),
        zone_affinity: Some(affinity),
        consistency: Some(Consistency::Eventual),
        ..cluster.flags()
    }
}

/// Sends `n` GETs through `c`.
async fn reads(c: &mut redis::aio::MultiplexedConnection, n: usize) {
    for i in 0..n {
        let _: Option<String> = q(c, &["GET", &format!("k{}", i % 10)]).await;
    }
}

/// GET calls each server ran so far: primary first, then the replicas (0 for one that was killed).
async fn gets(cluster: &Cluster) -> Vec<u64> {
    let mut out = vec![calls(cluster.primary(), "get").await];
    for r in cluster.replicas() {
        out.push(match r.pid() {
            Some(_) => calls(r, "get").await,
            None => 0,
        });
    }
    out
}

/// The replica at `addr` gets no reads: out of the topology, or not eligible.
fn out_of_rotation(proxy: &redsplit::Proxy, addr: &redsplit::config::Addr) -> bool {
    !proxy
        .topo
        .snapshot()
        .replica_nodes()
        .any(|n| &n.addr == addr && n.repl.is_eligible())
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[tokio::test]
async fn reads_stay_in_the_proxy_s_zone_then_go_to_other_zones_then_to_the_primary() {
    let mut cluster = Cluster::builder().replicas(2).start().await;
    let local = cluster.replicas()[0].addr().to_string();
    let proxy = proxy_with(zoned(&cluster, &[local], ZoneAffinity::Replicas)).await;
    wait_eligible(&proxy, 2).await;
    let snapshot = proxy.topo.snapshot();
    let zone = |i: usize| replica_node(&proxy, &cluster.replicas()[i].addr()).zone();
    assert_eq!(zone(0).map(|z| z.0).as_deref(), Some("a"));
    assert_eq!(zone(1).map(|z| z.0).as_deref(), Some("b"));
    assert_eq!(
        snapshot
            .primary()
            .and_then(|p| p.zone())
            .map(|z| z.0)
            .as_deref(),
        Some("b")
    );
    let mut c = client(&proxy).await;
    // Every read to the replica in zone a, though the other replica is as eligible and as idle.
    let before = gets(&cluster).await;
    reads(&mut c, 200).await;
    assert_eq!(delta(&gets(&cluster).await, &before), vec![0, 200, 0]);
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    assert!(
        metrics.contains("redsplit_replica_reads_total{locality=\"local\"} 200"),
        "{metrics}"
    );
    assert!(metrics.contains("redsplit_node_zone_info{"), "{metrics}");
    let topology = http(proxy.admin, "GET", "/topology").await.1;
    assert!(topology.contains("\"zone\":\"a\""), "{topology}");
    // The local replica gone: reads go to the other zone's replica.
    let gone = cluster.replicas()[0].addr();
    cluster.replicas_mut()[0].kill();
    eventually!(
        "the dead replica is out of rotation",
        out_of_rotation(&proxy, &gone)
    );
    let before = gets(&cluster).await;
    reads(&mut c, 50).await;
    assert_eq!(delta(&gets(&cluster).await, &before), vec![0, 0, 50]);
    // Both gone: the primary.
    let gone = cluster.replicas()[1].addr();
    cluster.replicas_mut()[1].kill();
    eventually!(
        "the second replica is out of rotation",
        out_of_rotation(&proxy, &gone)
    );
    let before = calls(cluster.primary(), "get").await;
    reads(&mut c, 20).await;
    assert_eq!(calls(cluster.primary(), "get").await - before, 20);
}

#[tokio::test]
async fn replicas_and_primary_affinity_reads_a_local_primary_before_a_remote_replica() {
    let mut cluster = Cluster::builder().replicas(2).start().await;
    let local = vec![
        cluster.primary().addr().to_string(),
        cluster.replicas()[0].addr().to_string(),
    ];
    let proxy = proxy_with(zoned(&cluster, &local, ZoneAffinity::ReplicasAndPrimary)).await;
    wait_eligible(&proxy, 2).await;
    let mut c = client(&proxy).await;
    let before = gets(&cluster).await;
    reads(&mut c, 100).await;
    assert_eq!(delta(&gets(&cluster).await, &before), vec![0, 100, 0]);
    // No local replica: the local primary, not the remote replica.
    let gone = cluster.replicas()[0].addr();
    cluster.replicas_mut()[0].kill();
    eventually!(
        "the local replica is out of rotation",
        out_of_rotation(&proxy, &gone)
    );
    let before = gets(&cluster).await;
    reads(&mut c, 50).await;
    let d = delta(&gets(&cluster).await, &before);
    assert_eq!((d[0], d[2]), (50, 0), "{d:?}");
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    assert!(
        metrics.contains("redsplit_reads_on_primary_total{reason=\"zone\"} 50"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_server_s_own_availability_zone_places_it_unless_node_zones_names_it() {
    let cluster = Cluster::builder().replicas(2).start().await;
    let info: String = q(&mut direct(cluster.primary()).await, &["INFO", "server"]).await;
    let valkey = info.contains("server_name:valkey");
    if valkey {
        // Valkey 8.1 reports the zone it is told it is in.
        for (s, zone) in cluster.replicas().iter().zip(["a", "b"]) {
            let _: () = q(
                &mut direct(s).await,
                &["CONFIG", "SET", "availability-zone", zone],
            )
            .await;
        }
    }
    // Replica 1 is named explicitly: the configuration wins over what the server says.
    let named = cluster.replicas()[1].addr();
    let rules = if valkey {
        vec![format!("{named}=c")]
    } else {
        // Redis reports no zone: configuration alone.
        vec![
            format!("{}=a", cluster.replicas()[0].addr()),
            format!("{named}=c"),
        ]
    };
    let proxy = proxy_with(Flags {
        zone: Some("a".into()),
        node_zones: Some(rules),
        consistency: Some(Consistency::Eventual),
        ..cluster.flags()
    })
    .await;
    wait_eligible(&proxy, 2).await;
    let zone = |i: usize| {
        replica_node(&proxy, &cluster.replicas()[i].addr())
            .zone()
            .map(|z| z.0)
    };
    eventually!("replica 0 is in zone a", zone(0).as_deref() == Some("a"));
    assert_eq!(zone(1).as_deref(), Some("c"));
    let mut c = client(&proxy).await;
    let before = gets(&cluster).await;
    reads(&mut c, 100).await;
    assert_eq!(delta(&gets(&cluster).await, &before), vec![0, 100, 0]);
}

#[tokio::test]
async fn sentinel_mode_finds_replicas_of_replicas_measures_them_and_reads_from_them() {
    let cluster = Cluster::builder().replicas(2).sentinels(3).start().await;
    // Replica 1 follows replica 0, as the second replica on a site's machine follows the site's first.
    let via = cluster.replicas()[0].addr();
    let _: () = q(
        &mut direct(&cluster.replicas()[1]).await,
        &["REPLICAOF", "127.0.0.1", &port(&via)],
    )
    .await;
    cluster.replicas()[1].wait_synced().await;
    let proxy = proxy_with(Flags {
        consistency: Some(Consistency::Eventual),
        ..cluster.flags()
    })
    .await;
    let second = cluster.replicas()[1].addr();
    eventually!("the replica of a replica is placed under it", {
        let t = proxy.topo.snapshot();
        t.replicas()
            .iter()
            .any(|r| r.node.addr == second && r.parent == via)
    });
    let topology = http(proxy.admin, "GET", "/topology").await.1;
    assert!(
        topology.contains(&format!("\"parent\":\"{via}\"")),
        "{topology}"
    );
    wait_eligible(&proxy, 2).await;
    // Measured against the primary's own offset.
    let mut c = client(&proxy).await;
    for i in 0..20 {
        let _: () = q(&mut c, &["SET", &format!("k{i}"), "v"]).await;
    }
    let primary = proxy.topo.snapshot().primary().cloned().expect("a primary");
    let node = replica_node(&proxy, &second);
    eventually!(
        "the second-level replica reaches the primary's offset",
        primary.repl.offset() > 0 && node.repl.offset() >= primary.repl.offset()
    );
    assert!(node.repl.lag_ms.load(Ordering::Relaxed) < 1000);
    // And gets reads.
    let before = calls(&cluster.replicas()[1], "get").await;
    reads(&mut c, 100).await;
    assert!(calls(&cluster.replicas()[1], "get").await > before);
}
