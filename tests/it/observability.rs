//! Metrics, health endpoints and the topology view, checked against what the real servers say.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::*;

/// Parses Prometheus text format strictly enough to catch malformed output: every line is a comment
/// (`# HELP`, `# TYPE`) or `name{labels} value`. Returns `series -> value`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

async fn metrics(p: &redsplit::Proxy) -> BTreeMap<String, f64> {
    let (status, body) = http(p.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    parse_metrics(&body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn command_counters_match_what_each_node_ran() {
    let (cluster, proxy) = Cluster::builder().replicas(2).eventual().proxy().await;
    let mut c = client(&proxy).await;
    for i in 0..40 {
        let _: () = q(&mut c, &["SET", &format!("k{i}"), "v"]).await;
    }
    for i in 0..90 {
        let _: Option<String> = q(&mut c, &["GET", &format!("k{}", i % 40)]).await;
    }
    let _: i64 = q(&mut c, &["DEL", "k0"]).await;
    let m = metrics(&proxy).await;
    let primary = cluster.primary().addr();
    // Writes: the primary ran exactly the SETs and the DEL the proxy counted.
    let writes = value(
        &m,
        &format!("redsplit_commands_total{{kind=\"write\",node=\"{primary}\",role=\"primary\"}}"),
    );
    let ran = calls(cluster.primary(), "set").await + calls(cluster.primary(), "del").await;
    assert_eq!(writes as u64, ran);
    assert_eq!(ran, 41);
    // Reads: each replica ran the GETs counted for it, none reached the primary.
    let mut total = 0;
    for r in cluster.replicas() {
        let addr = r.addr();
        let counted = value(
            &m,
            &format!("redsplit_commands_total{{kind=\"read\",node=\"{addr}\",role=\"replica\"}}"),
        );
        assert_eq!(counted as u64, calls(r, "get").await, "reads on {addr}");
        total += counted as u64;
    }
    assert_eq!(total, 90);
    assert_eq!(calls(cluster.primary(), "get").await, 0);
    // Latency was observed for every command sent upstream.
    assert_eq!(
        value(&m, "redsplit_command_duration_seconds_count{kind=\"read\"}") as u64,
        90
    );
    assert_eq!(
        value(
            &m,
            "redsplit_command_duration_seconds_count{kind=\"write\"}"
        ) as u64,
        41
    );
    assert!(value(&m, "redsplit_client_connections") >= 1.0);
}

#[tokio::test]
async fn reads_on_the_primary_and_pinned_sessions_are_counted_with_their_reason() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    // A write and a read pipelined: the read is sent before the write's reply (and the offset that covers
    // it) is in, so read-your-writes sends it to the primary.
    let (_, _): ((), String) = redis::pipe()
        .cmd("SET")
        .arg("k")
        .arg("v")
        .cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .expect("SET and GET");
    let m = metrics(&proxy).await;
    assert!(value(&m, "redsplit_reads_on_primary_total{reason=\"session\"}") >= 1.0);
    let _: () = q(&mut c, &["WATCH", "k"]).await;
    let m = metrics(&proxy).await;
    assert_eq!(value(&m, "redsplit_pinned_sessions"), 1.0);
    let _: String = q(&mut c, &["GET", "k"]).await;
    let _: () = q(&mut c, &["UNWATCH"]).await;
    let m = metrics(&proxy).await;
    assert_eq!(value(&m, "redsplit_pinned_sessions"), 0.0);
    assert!(
        value(
            &m,
            "redsplit_reads_on_primary_total{reason=\"transaction\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn ready_flips_to_503_without_a_primary_and_back() {
    let (mut cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let (status, body) = http(proxy.admin, "GET", "/ready").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(proxy.admin, "GET", "/live").await;
    assert_eq!(status, 200);
    cluster.primary_mut().kill();
    eventually!(
        "not ready",
        http(proxy.admin, "GET", "/ready").await.0 == 503
    );
    let (_, body) = http(proxy.admin, "GET", "/ready").await;
    assert!(body.contains("no primary"), "{body}");
    cluster.primary_mut().restart_empty().expect("restart");
    eventually!(
        "ready again",
        http(proxy.admin, "GET", "/ready").await.0 == 200
    );
    let m = metrics(&proxy).await;
    assert!(value(&m, "redsplit_topology_generation") >= 3.0);
}

#[tokio::test]
async fn topology_shows_a_delayed_replica_as_lagging() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .delay_replica(0, Duration::from_millis(600))
        .flags(|f| f.max_lag_ms = Some(300))
        .eligible(0)
        .proxy()
        .await;
    let mut w = direct(cluster.primary()).await;
    let replica = cluster.replicas()[0].addr().to_string();
    eventually!("lag visible in /topology", {
        let _: () = q(&mut w, &["SET", "tick", "1"]).await;
        let (status, body) = http(proxy.admin, "GET", "/topology").await;
        assert_eq!(status, 200);
        let t: serde_json::Value = serde_json::from_str(&body).expect("topology is JSON");
        let rep = t["replicas"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["addr"] == replica.as_str()))
            .cloned();
        rep.is_some_and(|rep| {
            rep["eligible"] == false
                && rep["why"] == "lag over max_lag_ms"
                && rep["lag_ms"].as_u64().is_some_and(|l| l >= 500)
        })
    });
    let (_, body) = http(proxy.admin, "GET", "/topology").await;
    let t: serde_json::Value = serde_json::from_str(&body).expect("topology is JSON");
    assert_eq!(t["primary"]["addr"], cluster.primary().addr().to_string());
    assert_eq!(
        t["replicas"][0]["parent"],
        cluster.primary().addr().to_string()
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        value(
            &m,
            &format!("redsplit_replica_eligible{{node=\"{replica}\"}}")
        ),
        0.0
    );
    assert!(
        value(
            &m,
            &format!("redsplit_replica_lag_seconds{{node=\"{replica}\"}}")
        ) >= 0.5
    );
}

#[tokio::test]
async fn a_node_that_leaves_the_topology_and_returns_keeps_its_counters() {
    let (mut cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let gone = cluster.replicas()[1].addr().to_string();
    let mut c = client(&proxy).await;
    let served =
        format!("redsplit_commands_total{{kind=\"read\",node=\"{gone}\",role=\"replica\"}}");
    let eligible = format!("redsplit_replica_eligible{{node=\"{gone}\"}}");
    eventually!("reads served by {gone}", {
        let _: Option<String> = q(&mut c, &["GET", "k"]).await;
        value(&metrics(&proxy).await, &served) >= 10.0
    });
    let before = metrics(&proxy).await;
    let counters: Vec<(&String, &f64)> = before
        .iter()
        .filter(|(k, _)| k.contains(&gone) && k.contains("_total"))
        .collect();
    assert!(
        !counters.is_empty(),
        "counters exist while it is in the topology"
    );
    cluster.replicas_mut()[1].kill();
    eventually!(
        "replica dropped",
        proxy.topo.snapshot().replicas().len() == 1
    );
    let left = metrics(&proxy).await;
    for (series, was) in &counters {
        assert!(
            left.get(*series).is_some_and(|now| now >= *was),
            "{series} went from {was} to {:?} when the node left",
            left.get(*series)
        );
    }
    assert!(
        !left.contains_key(&eligible),
        "no replica gauges while it is gone"
    );
    cluster.replicas_mut()[1]
        .restart_empty()
        .expect("the replica starts again");
    eventually!("replica back", proxy.topo.snapshot().replicas().len() == 2);
    let back = metrics(&proxy).await;
    for (series, was) in &counters {
        assert!(
            back.get(*series).is_some_and(|now| now >= *was),
            "{series} went from {was} to {:?} when the node came back",
            back.get(*series)
        );
    }
}

#[tokio::test]
async fn the_primary_has_no_replica_series_even_after_a_switchover() {
    let (cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let old = cluster.primary().addr().to_string();
    let m = metrics(&proxy).await;
    assert!(!m
        .keys()
        .any(|k| k.starts_with("redsplit_replica_") && k.contains(&old)));
    let target = cluster.replicas()[0].addr().to_string();
    let (status, body) = http(proxy.admin, "POST", &format!("/failover?to={target}")).await;
    assert_eq!(status, 200, "{body}");
    eventually!("the old primary is probed as a replica", {
        let m = metrics(&proxy).await;
        m.contains_key(&format!("redsplit_replica_eligible{{node=\"{old}\"}}"))
    });
    let m = metrics(&proxy).await;
    assert!(
        !m.keys()
            .any(|k| k.starts_with("redsplit_replica_") && k.contains(&target)),
        "no replica series for the new primary"
    );
    assert_eq!(value(&m, "redsplit_failovers_total"), 1.0);
}
