//! Packaging checks for docker/: the image, the compose stack, the Kubernetes sidecar manifest, Prometheus
//! and Grafana agree with each other and with the proxy. No Docker engine is needed: the files are parsed,
//! every reference between them is resolved, command lines go through redsplit's own flag parser and config
//! checks, and the dashboard's metric names are looked up in the `/metrics` output of a real proxy running
//! in-process over real `redis-server` processes.
//!
//! The image's build command itself is run by `scripts/test`, not here: a release build is too slow for a
//! test.

// Explicit paths: a module file directly under tests/ would be built as a test binary of its own. The
// macro first: modules see only macros declared above them.
#[path = "common/wait.rs"]
#[macro_use]
mod wait;
#[path = "common/admin.rs"]
mod admin;
// The packaging tests use a part of what the integration tests share.
#[allow(dead_code)]
#[path = "common/cluster.rs"]
mod cluster;
#[path = "packaging/compose.rs"]
mod compose;
#[path = "packaging/dashboard.rs"]
mod dashboard;
#[path = "packaging/image.rs"]
mod image;
#[path = "packaging/kubernetes.rs"]
mod kubernetes;
#[allow(dead_code)]
#[path = "common/relay.rs"]
mod relay;
#[allow(dead_code)]
#[path = "common/scenario.rs"]
mod scenario;

use std::path::{Path, PathBuf};

use clap::Parser as _;
use serde::Deserialize as _;
use serde_json::Value;

use redsplit::config::{Cli, Config};

#[test]
fn every_yaml_file_under_docker_parses() {
    let files = files_under(&docker_dir(), &["yml", "yaml"]);
    assert!(
        files.len() >= 4,
        "expected compose, Kubernetes, Prometheus and Grafana YAML, found {files:?}"
    );
    for f in &files {
        let docs = yaml_documents(f);
        assert!(!docs.is_empty(), "{} holds no YAML document", f.display());
    }
    for doc in yaml_documents(&docker_dir().join("kubernetes-sidecar.yaml")) {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "a Kubernetes object without apiVersion or kind: {doc}"
        );
    }
}

/// `docker/` in this repository.
fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML file, merge keys (`<<: *anchor`) applied, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v = serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
            serde_json::to_value(v)
                .unwrap_or_else(|e| panic!("{}: not a plain document: {e}", path.display()))
        })
        .collect()
}

fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses `argv` with redsplit's own flag parser and checks the config as the binary would.
fn config_of(argv: &[String]) -> Config {
    assert_eq!(
        argv.first().map(String::as_str),
        Some("redsplit"),
        "{argv:?} does not run redsplit"
    );
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(cli.command.is_none(), "{argv:?} does not run the proxy");
    Config::load(cli.config.as_deref(), cli.flags)
        .unwrap_or_else(|problems| panic!("{argv:?} is not a valid config: {problems:#?}"))
}

/// The value following `name` in `argv` (`--name value` or `--name=value`).
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(name).and_then(|rest| rest.strip_prefix('='))
        }
    })
}
