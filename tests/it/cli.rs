//! The binary: flags, `--check`, the example config, and the embedded default.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

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
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // If an assertion fails before the end, the proxy (and the servers it started) still stop.
    let stop_on_failure = StopOnDrop::new(child.id());
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = l.contains("listening on");
            lines.push(l);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .expect("reader");
    // A primary, two replicas and three sentinels, which the proxy follows.
    let servers = lines
        .iter()
        .find(|l| l.contains("embedded primary"))
        .expect("the proxy says what it started");
    let (replicas, sentinels) = servers
        .split_once("replicas ")
        .and_then(|(_, rest)| rest.split_once(", sentinels "))
        .expect("replicas and sentinels");
    assert_eq!(replicas.split(", ").count(), 2, "{servers}");
    assert_eq!(sentinels.split(", ").count(), 3, "{servers}");
    let line = lines.last().expect("the proxy says where it listens");
    let addr = line.split_whitespace().nth(3).expect("address").to_string();
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
    let mut c = client_at(addr.parse().expect("socket address")).await;
    let _: () = q(&mut c, &["SET", "hello", "world"]).await;
    assert_eq!(q::<String>(&mut c, &["GET", "hello"]).await, "world");
    let role: Vec<redis::Value> = q(&mut c, &["ROLE"]).await;
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
    // SIGTERM: the proxy stops and takes its servers with it.
    drop(stop_on_failure);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        out.status.success(),
        "clean exit on SIGTERM: {}",
        out.status
    );
    // Logs are one JSON object per line, with structured fields.
    let logs = String::from_utf8_lossy(&out.stderr);
    let published = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "topology published")
        .unwrap_or_else(|| panic!("a JSON log line for the topology: {logs}"));
    assert!(published["fields"]["generation"].as_u64().is_some());
}
