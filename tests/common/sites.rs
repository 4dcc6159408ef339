//! A replication tree spread over sites on loopback, for the multi-datacenter tests and the bed script
//! (`scripts/bench-dc`): in site A the master and a backup master, in site B a second backup master, and
//! in every site a replica of the master with a replica of its own (A-S-1 → A-S-2, B-S-1 → B-S-2,
//! C-S-1 → C-S-2); one sentinel per site.
//!
//! The kernel here has no netem, so the WAN is modelled with delaying relays: every node has, for each
//! other site, a relay that holds each byte for half the round trip between the two sites in each
//! direction. A replica in another site replicates from its master through the master's relay for its
//! site, and a proxy in site S reaches the nodes of other sites through their relays for S (its
//! `address_map` maps each node's address to that relay). Sentinels talk to every node directly: the
//! control plane is not delayed.
//!
//! The small layout (for CI) keeps the shape with fewer nodes: A-M, A-BM, B-S-1 → B-S-2, C-S-1.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use redsplit::config::{Addr, Flags, TopologyKind};
use redsplit::embedded::{self, MASTER_NAME};

use crate::relay::Relay;

/// The sites' names, which are also their zones.
pub const SITES: [&str; 3] = ["A", "B", "C"];

/// One data node of the bed.
pub struct BedNode {
    /// Its name: `A-M`, `A-BM`, `B-S-1`, ...
    pub name: &'static str,
    /// Its site (index into [`SITES`]).
    pub site: usize,
    /// The process, killed on drop.
    pub server: Option<embedded::Server>,
    /// Its address.
    pub addr: Addr,
    /// Its relay for each site (`None` for its own).
    relays: Vec<Option<Relay>>,
}

impl BedNode {
    /// Where a client in `site` reaches it.
    pub fn addr_from(&self, site: usize) -> Addr {
        match &self.relays[site] {
            Some(r) => Addr::parse(&r.addr.to_string()).expect("relay address"),
            None => self.addr.clone(),
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.server = None;
    }

    /// Sends a signal (`STOP`, `CONT`) to it.
    pub fn signal(&self, sig: &str) {
        if let Some(s) = &self.server {
            let _ = std::process::Command::new("kill")
                .args([format!("-{sig}"), s.process.id().to_string()])
                .status();
        }
    }
}

/// The bed: nodes, sentinels, relays.
pub struct Bed {
    /// The data nodes, the master first.
    pub nodes: Vec<BedNode>,
    /// One sentinel per site.
    pub sentinels: Vec<embedded::Server>,
    /// Round trip between sites, `rtt[a][b]`.
    pub rtt: [[Duration; 3]; 3],
    _root: tempfile::TempDir,
}

/// The layout of a bed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Nine servers, as the three-datacenter tree.
    Full,
    /// Five: A-M, A-BM, B-S-1 → B-S-2, C-S-1.
    Small,
}

/// `(name, site, parent name, replica-priority)` of every node, parents before children.
fn layout(l: Layout) -> Vec<(&'static str, usize, Option<&'static str>, u32)> {
    match l {
        Layout::Full => vec![
            ("A-M", 0, None, 100),
            ("A-BM", 0, Some("A-M"), 1),
            ("B-BM", 1, Some("A-M"), 2),
            ("A-S-1", 0, Some("A-M"), 0),
            ("B-S-1", 1, Some("A-M"), 0),
            ("C-S-1", 2, Some("A-M"), 0),
            ("A-S-2", 0, Some("A-S-1"), 0),
            ("B-S-2", 1, Some("B-S-1"), 0),
            ("C-S-2", 2, Some("C-S-1"), 0),
        ],
        Layout::Small => vec![
            ("A-M", 0, None, 100),
            ("A-BM", 0, Some("A-M"), 1),
            ("B-S-1", 1, Some("A-M"), 0),
            ("C-S-1", 2, Some("A-M"), 0),
            ("B-S-2", 1, Some("B-S-1"), 0),
        ],
    }
}

impl Bed {
    /// Starts the bed: `rtt` between sites, sentinels failing over after `down_after_ms`. Returns once
    /// every replica is synced and every sentinel knows the master's replicas and the other sentinels.
    pub async fn start(l: Layout, rtt: [[Duration; 3]; 3], down_after_ms: u64) -> Bed {
        let root = tempfile::Builder::new()
            .prefix("redsplit-bed-")
            .tempdir()
            .expect("temporary directory");
        let mut nodes: Vec<BedNode> = Vec::new();
        for (name, site, parent, priority) in layout(l) {
            let master = parent.map(|p| {
                let m = nodes.iter().find(|n| n.name == p).expect("parent first");
                // Across sites, through the master's relay for this site.
                m.addr_from(site).port()
            });
            let dir = root.path().join(name);
            let server = embedded::Server::start(&dir, |port, dir: &Path| {
                let mut args = embedded::server_args(port, dir, master);
                args.extend(["--replica-priority".into(), priority.to_string()]);
                args
            })
            .await
            .expect("server starts");
            let addr = server.addr();
            let target: std::net::SocketAddr = addr.as_str().parse().expect("loopback");
            let mut relays = Vec::new();
            for (other, round_trip) in rtt[site].iter().enumerate() {
                relays.push(if other == site {
                    None
                } else {
                    Some(Relay::start(target, *round_trip / 2).await)
                });
            }
            nodes.push(BedNode {
                name,
                site,
                server: Some(server),
                addr,
                relays,
            });
        }
        for n in &nodes[1..] {
            eventually!(
                format!("{} synced", n.name),
                synced(&n.addr).await,
                crate::wait::PATIENCE * 2
            );
        }
        let master = nodes[0].addr.port();
        let mut sentinels = Vec::new();
        for site in SITES {
            let dir = root.path().join(format!("sentinel-{site}"));
            let s = embedded::Server::start_sentinel(&dir, |port, dir| {
                let mut conf = embedded::sentinel_config(port, dir, master, 2);
                conf.push_str(&format!(
                    "sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n"
                ));
                conf
            })
            .await
            .expect("sentinel starts");
            sentinels.push(s);
        }
        let direct = nodes
            .iter()
            .filter(|n| n.name.ends_with("-1") || n.name.ends_with("BM"))
            .count();
        for s in &sentinels {
            eventually!(
                "every sentinel knows the master's replicas and the other sentinels",
                known(&s.addr(), "replicas").await >= direct
                    && known(&s.addr(), "sentinels").await >= 2,
                crate::wait::PATIENCE * 2
            );
        }
        Bed {
            nodes,
            sentinels,
            rtt,
            _root: root,
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &BedNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of the bed")
    }

    /// The node named `name`, to kill or freeze.
    pub fn node_mut(&mut self, name: &str) -> &mut BedNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a node of the bed")
    }

    /// Flags for a proxy in `site`: Sentinel mode, in the site's zone, every node of another site
    /// reached through its relay for this site and placed in its own site's zone.
    pub fn proxy_flags(&self, site: usize) -> Flags {
        let mut map = Vec::new();
        let mut zones = Vec::new();
        for n in &self.nodes {
            let reach = n.addr_from(site);
            if reach != n.addr {
                map.push(format!("{}={}", n.addr, reach));
            }
            zones.push(format!("{reach}={}", SITES[n.site]));
        }
        Flags {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            topology: Some(TopologyKind::Sentinel),
            sentinel: Some(
                self.sentinels
                    .iter()
                    .map(|s| s.addr().to_string())
                    .collect(),
            ),
            master_name: Some(MASTER_NAME.into()),
            address_map: Some(map),
            zone: Some(SITES[site].into()),
            node_zones: Some(zones),
            probe_interval_ms: Some(20),
            log_level: Some("warn".into()),
            ..Flags::default()
        }
    }
}

impl Bed {
    /// True once every sentinel lists the node `name` as a replica flagged only `slave` (not down).
    pub async fn sentinels_see_up(&self, name: &str) -> bool {
        let port = self.node(name).addr.port().to_string();
        for s in &self.sentinels {
            let Ok(redsplit::resp::Value::Array(entries)) =
                embedded::call(&s.addr(), &[&["SENTINEL", "replicas", MASTER_NAME]]).await
            else {
                return false;
            };
            let up = entries.iter().any(|e| {
                let redsplit::resp::Value::Array(kv) = e else {
                    return false;
                };
                let field = |k: &str| {
                    kv.chunks(2).find_map(|p| match p {
                        [redsplit::resp::Value::BulkString(a), redsplit::resp::Value::BulkString(b)]
                            if a == k.as_bytes() =>
                        {
                            Some(String::from_utf8_lossy(b).into_owned())
                        }
                        _ => None,
                    })
                };
                field("port").as_deref() == Some(port.as_str())
                    && field("flags").as_deref() == Some("slave")
            });
            if !up {
                return false;
            }
        }
        true
    }
}

/// `master_link_status:up` on the replica at `addr`.
async fn synced(addr: &Addr) -> bool {
    let info = match embedded::call(addr, &[&["INFO", "replication"]]).await {
        Ok(redsplit::resp::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => return false,
    };
    info.contains("master_link_status:up")
}

/// How many entries a sentinel lists for `SENTINEL <what> mymaster`.
async fn known(sentinel: &Addr, what: &str) -> usize {
    match embedded::call(sentinel, &[&["SENTINEL", what, MASTER_NAME]]).await {
        Ok(redsplit::resp::Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// Round trips between the three sites: `ab` between A and B, `ac` between A and C, `bc` between B and C.
pub fn rtt(ab: Duration, ac: Duration, bc: Duration) -> [[Duration; 3]; 3] {
    let z = Duration::ZERO;
    [[z, ab, ac], [ab, z, bc], [ac, bc, z]]
}
