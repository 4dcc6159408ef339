//! docker/kubernetes-sidecar.yaml: redsplit beside the app, probed on its admin port, non-root, scraped.

use serde_json::Value;

use redsplit::config::Source;

use crate::image::image_argv;
use crate::{config_of, docker_dir, strings, yaml_documents};

#[test]
fn kubernetes_probes_hit_live_and_ready_on_the_admin_port() {
    let (pod, sidecar) = kubernetes_sidecar();
    let config = config_of(&container_argv(&sidecar));
    let admin = config.admin_listen;
    assert!(
        admin.ip().is_unspecified(),
        "kubelet probes the pod IP, but admin listens on {admin}"
    );
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(
            probe_port(&sidecar, &get["port"]),
            admin.port(),
            "{probe} port"
        );
        assert_ne!(
            get["scheme"].as_str(),
            Some("HTTPS"),
            "{probe}: the admin port is plain HTTP"
        );
    }
    if let Some(get) = sidecar["startupProbe"].get("httpGet") {
        assert_eq!(
            probe_port(&sidecar, &get["port"]),
            admin.port(),
            "startupProbe port"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.port().to_string());
    assert_eq!(
        annotations["prometheus.io/path"]
            .as_str()
            .unwrap_or("/metrics"),
        "/metrics"
    );
    assert!(
        matches!(
            config.source,
            Source::Sentinel { .. } | Source::Static { .. }
        ),
        "the sidecar must name its Redis (sentinel or static), not start an embedded one"
    );
}

#[test]
fn kubernetes_sidecar_runs_as_non_root_with_resources() {
    let (pod, sidecar) = kubernetes_sidecar();
    let pod_sc = &pod["spec"]["securityContext"];
    let sc = &sidecar["securityContext"];
    let setting = |key: &str| sc.get(key).or_else(|| pod_sc.get(key)).cloned();
    assert_eq!(
        setting("runAsNonRoot"),
        Some(Value::Bool(true)),
        "runAsNonRoot"
    );
    let uid = setting("runAsUser").and_then(|u| u.as_u64());
    assert!(
        uid.is_some_and(|u| u != 0),
        "runAsUser must be a non-zero UID, got {uid:?}"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "redsplit writes no files"
    );
    assert!(strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()));
    let resources = &sidecar["resources"];
    for key in ["cpu", "memory"] {
        assert!(resources["requests"][key].is_string(), "no {key} request");
    }
    assert!(resources["limits"]["memory"].is_string(), "no memory limit");
}

/// The pod template and the redsplit container of the sidecar manifest.
fn kubernetes_sidecar() -> (Value, Value) {
    let docs = yaml_documents(&docker_dir().join("kubernetes-sidecar.yaml"));
    let pod = docs
        .iter()
        .find_map(|d| match d["kind"].as_str() {
            Some("Pod") => Some(d.clone()),
            Some("Deployment" | "StatefulSet" | "DaemonSet") => Some(d["spec"]["template"].clone()),
            _ => None,
        })
        .expect("a Deployment or Pod");
    let spec = &pod["spec"];
    let in_list = |key: &str| -> Vec<Value> { spec[key].as_array().cloned().unwrap_or_default() };
    let containers = in_list("containers");
    assert!(
        containers.iter().any(|c| !is_redsplit(c)),
        "the pod has no application container beside redsplit"
    );
    // A native sidecar is an init container that keeps running; a plain init container would block the app.
    let sidecar = containers
        .into_iter()
        .chain(
            in_list("initContainers")
                .into_iter()
                .filter(|c| c["restartPolicy"] == "Always"),
        )
        .find(is_redsplit)
        .expect("a redsplit container (or native sidecar) in the pod");
    (pod, sidecar)
}

fn is_redsplit(c: &Value) -> bool {
    // registry:port/path/name:tag@digest -> name
    let image = c["image"].as_str().unwrap_or_default();
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    last.split(':').next() == Some("redsplit")
}

/// A probe's port as a number: named ports are looked up in the container's ports.
fn probe_port(container: &Value, port: &Value) -> u16 {
    let number = match port {
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => other.as_u64().expect("numeric probe port"),
    };
    u16::try_from(number).expect("port fits u16")
}

#[test]
fn kubernetes_admin_port_changes_state_only_with_a_token_from_a_secret() {
    let (_, sidecar) = kubernetes_sidecar();
    let argv = container_argv(&sidecar);
    let config = config_of(&argv);
    if config.admin_listen.ip().is_loopback() {
        return;
    }
    assert!(
        config.admin_token.is_some(),
        "the admin port listens on {} without admin_token: anything on the pod network could POST /failover",
        config.admin_listen
    );
    let given = crate::flag(&argv, "--admin-token").expect("--admin-token");
    let var = given
        .strip_prefix("env:")
        .unwrap_or_else(|| panic!("the token must come from a Secret, not the manifest: {given}"));
    let from_secret = sidecar["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == var && e["valueFrom"]["secretKeyRef"]["name"].is_string());
    assert!(from_secret, "{var} is not read from a Secret");
}

/// The container's full argv: `command` replaces the image's ENTRYPOINT, `args` its CMD. Variables the
/// container reads from Secrets are set (to a stand-in) in this process, so that `env:` secrets resolve.
fn container_argv(c: &Value) -> Vec<String> {
    for e in c["env"].as_array().into_iter().flatten() {
        if let (Some(name), true) = (
            e["name"].as_str(),
            e["valueFrom"]["secretKeyRef"].is_object(),
        ) {
            std::env::set_var(name, "stand-in for the Secret's value");
        }
    }
    let list = |key: &str| c[key].is_array().then(|| strings(&c[key]));
    image_argv(list("command"), list("args"))
}
