//! Nodes are known by what they are (run id, replication history), not by the address someone used.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use redsplit::config::Flags;
use redsplit::node::Why;

use crate::harness::*;
use crate::relay::Relay;

async fn topology(p: &redsplit::Proxy) -> serde_json::Value {
    let (status, body) = http(p.admin, "GET", "/topology").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test]
async fn a_replica_behind_a_delaying_relay_is_placed_measured_and_gated_in_20_fresh_starts() {
    let cluster = Cluster::builder().replicas(2).start().await;
    // Replica 1 replicates through a relay that holds every byte 300 ms, and names it as its master.
    let relay = Relay::delay_replica(&cluster, 1, Duration::from_millis(300)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(cluster.primary(), stop.clone()).await;
    let primary = cluster.primary().addr();
    let (near, far) = (cluster.replicas()[0].addr(), cluster.replicas()[1].addr());
    for start in 0..20 {
        // Under a 150 ms limit the far replica is gated by its lag; under 2 s it serves reads.
        let limit = if start % 2 == 0 { 150 } else { 2000 };
        let p = proxy_with(Flags {
            max_lag_ms: Some(limit),
            ..cluster.flags()
        })
        .await;
        eventually!(
            format!("start {start}: the true primary and both replicas"),
            {
                let t = p.topo.snapshot();
                t.primary().map(|n| n.addr.clone()) == Some(primary.clone())
                    && t.replicas().len() == 2
            }
        );
        let t = p.topo.snapshot();
        let far_node = replica_node(&p, &far);
        assert_eq!(
            t.replicas()
                .iter()
                .find(|r| r.node.addr == far)
                .map(|r| &r.parent),
            Some(&primary),
            "start {start}: the far replica hangs under the primary"
        );
        let relay_addr = redsplit::node::Addr::parse(&relay.addr.to_string()).expect("addr");
        assert!(
            t.nodes().all(|n| n.addr != relay_addr),
            "start {start}: the relay is no node of the topology"
        );
        eventually!(format!("start {start}: the near replica serves reads"), {
            replica_node(&p, &near).repl.is_eligible()
        });
        if limit == 150 {
            // Measured from the primary's offset history (until that reaches back far enough, the lag
            // reads as the history's span).
            eventually!(
                format!("start {start}: the far replica gated by a lag measured at about 300 ms"),
                {
                    let lag = far_node
                        .repl
                        .lag_ms
                        .load(std::sync::atomic::Ordering::Relaxed);
                    far_node.repl.why() == Why::Lag && (250..5000).contains(&lag)
                }
            );
        } else {
            eventually!(format!("start {start}: the far replica serves reads"), {
                far_node.repl.is_eligible()
            });
        }
        drop(p);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.await;
}

#[tokio::test]
async fn one_redis_given_under_two_names_and_reached_through_a_relay_is_one_node() {
    let cluster = Cluster::builder().replicas(2).start().await;
    let port = cluster.primary().port;
    // Replica 1 replicates through a relay without delay: the relay answers as the primary.
    let relay = Relay::delay_replica(&cluster, 1, Duration::ZERO).await;
    let mut f = cluster.flags();
    f.primary = Some(format!("localhost:{port}"));
    let mut seeds = f.replica.clone().unwrap_or_default();
    seeds.push(format!("127.0.0.1:{port}"));
    f.replica = Some(seeds);
    let p = proxy_with(f).await;
    let named = format!("localhost:{port}");
    eventually!(
        "the primary under the name it was given, and both replicas",
        {
            let t = p.topo.snapshot();
            t.primary().map(|n| n.addr.to_string()) == Some(named.clone())
                && t.replicas().len() == 2
        }
    );
    let t = p.topo.snapshot();
    let mut replicas: Vec<String> = t.replica_nodes().map(|n| n.addr.to_string()).collect();
    replicas.sort();
    let mut want: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|r| r.addr().to_string())
        .collect();
    want.sort();
    assert_eq!(replicas, want, "the primary's other name is no replica");
    let view = topology(&p).await;
    let mut aliases: Vec<String> = view["primary"]["aliases"]
        .as_array()
        .expect("aliases")
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    aliases.sort();
    let mut want = vec![format!("127.0.0.1:{port}"), relay.addr.to_string()];
    want.sort();
    assert_eq!(aliases, want, "{view}");
    for r in view["replicas"].as_array().expect("replicas") {
        assert_eq!(r["parent"].as_str(), Some(named.as_str()), "{view}");
    }
    // Writes go to the primary, reads to both replicas.
    let mut c = client(&p).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    wait_eligible(&p, 2).await;
}
