//! The Grafana dashboard: what it shows, and that every metric it queries is one a running proxy exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::admin::http;
use crate::cluster::Cluster;
use crate::wait::PATIENCE;
use crate::{docker_dir, read};

#[test]
fn dashboard_shows_routing_lag_latency_and_failovers() {
    let dashboard = dashboard();
    let used = dashboard_metrics(&dashboard);
    for metric in [
        "redsplit_commands_total",
        "redsplit_reads_on_primary_total",
        "redsplit_replica_lag_bytes",
        "redsplit_replica_lag_seconds",
        "redsplit_replica_eligible",
        "redsplit_command_duration_seconds_bucket",
        "redsplit_failovers_total",
        "redsplit_writes_held_total",
        "redsplit_write_hold_seconds_bucket",
        "redsplit_topology_generation",
    ] {
        assert!(used.contains(metric), "no panel queries {metric}");
    }
    let exprs = expressions(&dashboard);
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("histogram_quantile") && e.contains("redsplit_command_duration")),
        "no latency quantile panel"
    );
    for label in ["node", "role", "kind"] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("redsplit_commands_total") && e.contains(label)),
            "commands are not shown by {label}"
        );
    }
    assert!(exprs
        .iter()
        .any(|e| e.contains("redsplit_reads_on_primary_total") && e.contains("reason")));

    let mut ids = BTreeSet::new();
    for panel in all_panels(&dashboard) {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] != "row" {
            assert!(
                !panel["targets"].as_array().is_none_or(Vec::is_empty),
                "panel {:?} has no query",
                panel["title"]
            );
        }
    }
}

#[tokio::test]
async fn dashboard_queries_only_metrics_a_running_proxy_exposes() {
    let used = dashboard_metrics(&dashboard());
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    // A write, a read and a transaction, so that command, latency and routing series have samples.
    let mut c = redis::Client::open(format!("redis://{}/", proxy.listen))
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("client connects");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("SET");
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .expect("GET");
    assert_eq!(got.as_deref(), Some("v"));
    let _: Vec<Option<String>> = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .expect("MULTI GET EXEC");

    // Per-node series appear once discovery has seen the replica: wait for them rather than sleep.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let missing = loop {
        let (status, body) = http(proxy.admin, "GET", "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        let missing = unexposed(&used, &metric_types(&body));
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not expose: {missing:#?}"
    );
    proxy.shutdown().await;
}

fn dashboard() -> Value {
    let path = docker_dir().join("grafana/dashboards/redsplit.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Panels, including those inside collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression: panel queries and templating variable queries.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in all_panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.extend(t["expr"].as_str().map(str::to_string));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            out.extend(var["definition"].as_str().map(str::to_string));
            out.extend(var["query"].as_str().map(str::to_string));
            out.extend(var["query"]["query"].as_str().map(str::to_string));
        }
    }
    out
}

/// Metric names the dashboard queries (`redsplit_[a-z_]+`).
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for expr in expressions(dashboard) {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("redsplit_") {
            let preceded_by_word = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            let tail = &rest[at..];
            let end = tail
                .char_indices()
                .skip("redsplit_".len())
                .find(|&(_, c)| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(tail.len(), |(i, _)| i);
            if !preceded_by_word {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    assert!(!out.is_empty(), "the dashboard queries no redsplit metric");
    out
}

/// `# TYPE` lines of a Prometheus text exposition: family name to type.
fn metric_types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, ty)| (name.to_string(), ty.trim().to_string()))
        .collect()
}

/// Names queried that the exposition lacks. A histogram is queried through its `_bucket`, `_sum` and
/// `_count` series; its bare name has no series, so querying it is a mistake too.
fn unexposed(used: &BTreeSet<String>, types: &BTreeMap<String, String>) -> Vec<String> {
    let histogram = |base: &str| types.get(base).is_some_and(|t| t == "histogram");
    used.iter()
        .filter(|name| {
            let as_series = ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(histogram));
            let plain = types.contains_key(name.as_str()) && !histogram(name);
            !(as_series || plain)
        })
        .cloned()
        .collect()
}
