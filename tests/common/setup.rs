//! Proxy settings shared by the integration and packaging tests.

use redsplit::config::Flags;

use crate::cluster::Cluster;

/// Flags for a static topology over `cluster`, on free ports, probing fast.
pub fn flags(cluster: &Cluster) -> Flags {
    Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        primary: Some(cluster.primary().addr().to_string()),
        replica: Some(
            cluster
                .replicas()
                .iter()
                .map(|r| r.addr().to_string())
                .collect(),
        ),
        probe_interval_ms: Some(20),
        log_level: Some("warn".into()),
        ..Flags::default()
    }
}
