//! The compose stack: the files it names, the topology it runs, and the Prometheus and Grafana it wires.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use redsplit::config::Source;

use crate::image::image_argv;
use crate::{config_of, docker_dir, flag, read, strings, yaml_documents};

#[test]
fn every_file_the_compose_stack_references_exists() {
    let compose = compose();
    let services = services(&compose);
    assert!(!services.is_empty(), "compose.yml has no services");
    for (name, svc) in services {
        if let Some(build) = svc.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.as_str(), "Dockerfile"),
                b => (
                    b["context"].as_str().unwrap_or("."),
                    b["dockerfile"].as_str().unwrap_or("Dockerfile"),
                ),
            };
            let context = docker_dir().join(context);
            assert!(
                context.is_dir(),
                "{name}: build context {context:?} is not a directory"
            );
            let dockerfile = context.join(dockerfile);
            assert!(
                dockerfile.is_file(),
                "{name}: no Dockerfile at {dockerfile:?}"
            );
        }
        for source in bind_mount_sources(svc) {
            assert!(
                source.starts_with('.'),
                "{name}: mounts {source}, a host path outside the repository"
            );
            assert!(
                docker_dir().join(&source).exists(),
                "{name}: mounts {source}, which does not exist under docker/"
            );
        }
        for env_file in strings(&svc["env_file"]) {
            assert!(
                docker_dir().join(&env_file).is_file(),
                "{name}: no env_file {env_file}"
            );
        }
        for dep in depends_on(svc) {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown service {dep}"
            );
        }
    }
    for section in ["configs", "secrets"] {
        if let Some(Value::Object(items)) = compose.get(section) {
            for (item, spec) in items {
                if let Some(file) = spec["file"].as_str() {
                    assert!(
                        docker_dir().join(file).is_file(),
                        "{section}.{item}: no file {file}"
                    );
                }
            }
        }
    }
    let prometheus = service_with_image(&compose, "prom/prometheus");
    assert!(
        mounts(prometheus).contains_key("/etc/prometheus/prometheus.yml"),
        "the prometheus service does not mount its config at /etc/prometheus/prometheus.yml"
    );
}

#[test]
fn compose_runs_redsplit_over_a_primary_two_replicas_and_three_sentinels() {
    let compose = compose();
    let services = services(&compose);
    let redis: Vec<(&String, Vec<String>)> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("redis:7"))
        })
        .map(|(n, s)| (n, command(s)))
        .collect();
    let is_sentinel = |argv: &[String]| argv.iter().any(|a| a.contains("--sentinel"));
    let sentinels: Vec<&String> = redis
        .iter()
        .filter(|(_, argv)| is_sentinel(argv))
        .map(|(n, _)| *n)
        .collect();
    let replicas: Vec<(&String, String)> = redis
        .iter()
        .filter_map(|(n, argv)| flag(argv, "--replicaof").map(|p| (*n, p.to_string())))
        .collect();
    let primaries: Vec<&String> = redis
        .iter()
        .filter(|(_, argv)| !is_sentinel(argv) && flag(argv, "--replicaof").is_none())
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(primaries.len(), 1, "one primary expected: {primaries:?}");
    assert_eq!(replicas.len(), 2, "two replicas expected: {replicas:?}");
    assert_eq!(
        sentinels.len(),
        3,
        "three sentinels expected: {sentinels:?}"
    );
    for (replica, of) in &replicas {
        assert_eq!(
            of, primaries[0],
            "{replica} replicates {of}, not the primary"
        );
    }

    // Each sentinel starts from a mounted config file of this repository (its command names the mount), and
    // monitors the primary under the name redsplit asks about.
    let confs: BTreeSet<String> = sentinels
        .iter()
        .map(|name| {
            let svc = service(&compose, name);
            let argv = command(svc).join(" ");
            mounts(svc)
                .into_iter()
                .find(|(target, _)| argv.contains(target.as_str()))
                .map(|(_, source)| source)
                .unwrap_or_else(|| panic!("{name} does not start from a mounted config file"))
        })
        .collect();
    assert_eq!(
        confs.len(),
        1,
        "the sentinels start from different configs: {confs:?}"
    );
    let conf = read(&docker_dir().join(confs.first().expect("one config")));
    let setting = |key: &str| -> Vec<String> {
        conf.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| rest.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let monitor = setting("sentinel monitor ");
    let [master_name, host, port, _quorum] = &monitor[..] else {
        panic!("`sentinel monitor` wants name host port quorum, got {monitor:?}")
    };
    assert_eq!(
        host, primaries[0],
        "the sentinels monitor {host}, not the primary"
    );
    assert_eq!(port, "6379");
    let sentinel_port = setting("port ").first().cloned().unwrap_or("26379".into());

    let config = config_of(&redsplit_argv(&compose));
    let Source::Sentinel {
        sentinels: asked,
        master_name: asked_name,
    } = config.source
    else {
        panic!("redsplit is not in sentinel mode: {:?}", config.source)
    };
    assert_eq!(&asked_name, master_name);
    let asked: BTreeSet<String> = asked.iter().map(|a| a.to_string()).collect();
    let expected: BTreeSet<String> = sentinels
        .iter()
        .map(|s| format!("{s}:{sentinel_port}"))
        .collect();
    assert_eq!(asked, expected, "redsplit must ask every sentinel");
    assert!(
        service(&compose, "redsplit")["build"]["dockerfile"].as_str() == Some("docker/Dockerfile"),
        "redsplit is built from docker/Dockerfile, whose ENTRYPOINT these checks read"
    );
}

#[test]
fn prometheus_scrapes_the_admin_port_of_redsplit() {
    let compose = compose();
    let config = config_of(&redsplit_argv(&compose));
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "the admin port listens on {}, which other containers cannot reach",
        config.admin_listen
    );
    let want = format!("redsplit:{}", config.admin_listen.port());
    let prom = yaml_documents(&docker_dir().join("prometheus/prometheus.yml")).remove(0);
    let jobs = prom["scrape_configs"].as_array().expect("scrape_configs");
    let scraping: Vec<&Value> = jobs
        .iter()
        .filter(|job| {
            job["static_configs"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|sc| strings(&sc["targets"]))
                .any(|t| t == want)
        })
        .collect();
    assert_eq!(
        scraping.len(),
        1,
        "one scrape job should target {want}: {jobs:?}"
    );
    let path = scraping[0]["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    assert_ne!(
        scraping[0]["scheme"].as_str(),
        Some("https"),
        "the admin port speaks plain HTTP"
    );
}

#[test]
fn grafana_provisions_the_compose_prometheus_and_the_mounted_dashboard() {
    let compose = compose();
    let grafana = service_with_image(&compose, "grafana/grafana");
    let mounts = mounts(grafana);
    let provisioning = mounts
        .get("/etc/grafana/provisioning")
        .expect("grafana mounts its provisioning directory at /etc/grafana/provisioning");
    let provisioning = docker_dir().join(provisioning);

    let datasources = yaml_documents(&provisioning.join("datasources/prometheus.yml")).remove(0);
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let url = ds["url"].as_str().expect("datasource url");
    let host = url
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    let prometheus = services(&compose)
        .iter()
        .find(|(n, _)| n.as_str() == host)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("the datasource points at {host}, not a compose service"));
    assert!(prometheus["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("prom/prometheus")));

    let providers = yaml_documents(&provisioning.join("dashboards/redsplit.yml")).remove(0);
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard provider path");
    let source = mounts
        .get(path)
        .unwrap_or_else(|| panic!("grafana loads dashboards from {path}, which is not mounted"));
    assert!(
        docker_dir().join(source).join("redsplit.json").is_file(),
        "the dashboard directory mounted at {path} has no redsplit.json"
    );
}

fn compose() -> Value {
    yaml_documents(&docker_dir().join("compose.yml")).remove(0)
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("compose.yml has services")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    services(compose)
        .get(name)
        .unwrap_or_else(|| panic!("compose.yml has no service {name}"))
}

/// The argv the compose service `redsplit` runs: the image's ENTRYPOINT, or the service's `entrypoint`,
/// followed by the service's `command` (or the image's CMD).
fn redsplit_argv(compose: &Value) -> Vec<String> {
    let svc = service(compose, "redsplit");
    let entrypoint = match &svc["entrypoint"] {
        Value::Null => None,
        Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        other => Some(strings(other)),
    };
    let command = (!svc["command"].is_null()).then(|| command(svc));
    image_argv(entrypoint, command)
}

fn service_with_image<'a>(compose: &'a Value, image: &str) -> &'a Value {
    services(compose)
        .values()
        .find(|s| s["image"].as_str().is_some_and(|i| i.starts_with(image)))
        .unwrap_or_else(|| panic!("no compose service runs {image}"))
}

/// A service's command as argv (a string is split on whitespace, as compose does without quotes).
fn command(svc: &Value) -> Vec<String> {
    match &svc["command"] {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        other => strings(other),
    }
}

/// Bind mounts of a service: container path to host path (relative to docker/).
fn mounts(svc: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for v in svc["volumes"].as_array().into_iter().flatten() {
        let (source, target) = match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                )
            }
            long => (
                long["source"].as_str().unwrap_or_default(),
                long["target"].as_str().unwrap_or_default(),
            ),
        };
        // Named volumes have no path: they are not files of this repository.
        if source.starts_with(['.', '/', '~']) {
            out.insert(target.to_string(), source.to_string());
        }
    }
    out
}

fn bind_mount_sources(svc: &Value) -> Vec<String> {
    mounts(svc).into_values().collect()
}

fn depends_on(svc: &Value) -> Vec<String> {
    match &svc["depends_on"] {
        Value::Object(m) => m.keys().cloned().collect(),
        other => strings(other),
    }
}
