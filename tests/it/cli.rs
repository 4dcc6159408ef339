//! The binary: flags, `--check`, the example config, and the embedded default.

use std::path::Path;
use std::process::Command;

use redsplit::config::OPTION_NAMES;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_redsplit");

fn example() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/redsplit.example.toml"
    ))
}

#[test]
fn check_accepts_the_example_config_and_binds_nothing() {
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(example())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
}

#[test]
fn the_example_config_documents_every_option() {
    let text = std::fs::read_to_string(example()).expect("example config");
    for name in OPTION_NAMES {
        let line = text
            .lines()
            .position(|l| {
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("# {name} ="))
            })
            .unwrap_or_else(|| panic!("option `{name}` missing from the example"));
        let doc = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
        assert!(
            doc.starts_with('#') && doc.to_lowercase().contains("default"),
            "option `{name}` lacks a comment giving its default"
        );
    }
}

#[test]
fn check_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nowhere\"\nbogus = 1\nmax_lag_ms = \"soon\"\nprimary = \"h:1\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&bad)
        .args(["--replica", "noport"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "`listen`",
        "unknown option `bogus`",
        "`max_lag_ms`",
        "`replica`",
        "4 problem(s)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_accepts_cluster_seeds_and_refuses_a_bad_one() {
    let ok = Command::new(BIN)
        .args([
            "--check",
            "--cluster",
            "127.0.0.1:7000",
            "--cluster",
            "127.0.0.1:7001",
        ])
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = Command::new(BIN)
        .args(["--check", "--cluster", "noport", "--primary", "127.0.0.1:1"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`cluster`"), "{err}");
}

#[test]
fn every_option_has_a_kebab_case_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for name in OPTION_NAMES.iter().chain(&["config", "check"]) {
        let flag = format!("--{}", name.replace('_', "-"));
        assert!(help.contains(&flag), "{flag} missing from --help");
    }
}

#[tokio::test]
async fn the_embedded_default_starts_its_own_servers_and_serves_clients() {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-level",
        "info",
        "--log-format",
        "json",
    ]);
    let mut running = Running::spawn(cmd).await;
    // A primary, two replicas and three sentinels, which the proxy follows.
    let servers = running.stdout_line("embedded primary").await;
    let (replicas, sentinels) = servers
        .split_once("replicas ")
        .and_then(|(_, rest)| rest.split_once(", sentinels "))
        .expect("replicas and sentinels");
    assert_eq!(replicas.split(", ").count(), 2, "{servers}");
    assert_eq!(sentinels.split(", ").count(), 3, "{servers}");
    let line = running.stdout_line("listening on").await;
    let admin = line
        .rsplit_once("http://")
        .map(|(_, a)| a.trim().to_string())
        .expect("admin address");
    // The health subcommand, as a container health check runs it.
    let health = Command::new(BIN)
        .args(["--admin-listen", &admin, "health"])
        .output()
        .expect("run health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    let mut c = client_at(running.addr).await;
    let _: () = q(&mut c, &["SET", "hello", "world"]).await;
    assert_eq!(q::<String>(&mut c, &["GET", "hello"]).await, "world");
    let role: Vec<redis::Value> = q(&mut c, &["ROLE"]).await;
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
    // SIGTERM: the proxy stops and takes its servers with it.
    running.signal("TERM");
    let status = running.exited().await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // Logs are one JSON object per line, with structured fields.
    let logs = running.log_lines().join("\n");
    let published = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "topology published")
        .unwrap_or_else(|| panic!("a JSON log line for the topology: {logs}"));
    assert!(published["fields"]["generation"].as_u64().is_some());
}

#[tokio::test]
async fn a_second_proxy_on_a_held_port_exits_with_an_error_and_the_first_keeps_every_client() {
    // Two workers of one process share the port.
    let (cluster, first) = Cluster::builder()
        .flags(|f| f.worker_threads = Some(2))
        .proxy()
        .await;
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(BIN)
            .args(["--primary", cluster.primary().addr().as_str()])
            .args(["--listen", &first.listen.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second proxy exits instead of serving")
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.listen)),
        "{stderr}"
    );
    // Every new client reaches the first proxy (CLIENT ID counts its own clients).
    for _ in 0..20 {
        let mut c = client(&first).await;
        let _: i64 = q(&mut c, &["CLIENT", "ID"]).await;
    }
    let ids: i64 = q(&mut client(&first).await, &["CLIENT", "ID"]).await;
    assert!(ids >= 21, "the first proxy saw {ids} clients");
}
