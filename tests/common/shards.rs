//! A real Redis Cluster for tests: primaries and replicas (`redis-server --cluster-enabled yes`, or the
//! program `REDSPLIT_SERVER_BIN` names) on loopback, each in a temporary directory of its own, killed on
//! drop. The cluster is formed with the servers' own commands (`CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`,
//! `CLUSTER REPLICATE`), as `redis-cli --cluster create` does, so the harness needs no CLI and works the
//! same against Valkey.
//!
//! Ports are below 55536: the cluster bus listens on port + 10000. Each is drawn at random from
//! 20000..45000 and used only if both it and its bus port are free.

use std::path::PathBuf;
use std::process::Child;

use redis_protocol::resp2::types::OwnedFrame;
use redsplit::config::Addr;
use redsplit::embedded;

use crate::wait::PATIENCE;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A Redis Cluster on loopback: `primaries` shards, each with `replicas` replicas.
pub struct RedisCluster {
    /// Every node; primaries first (shard `i`'s primary at `i`), then replicas (shard `i`'s at
    /// `primaries + i * replicas + j`), as formed (failovers change roles, not this order).
    pub nodes: Vec<ClusterNode>,
    primaries: usize,
    // Declared last, so dropped last: the processes are gone before their directories.
    _root: tempfile::TempDir,
}

/// One node of a [`RedisCluster`]: killed on drop.
pub struct ClusterNode {
    /// Its loopback port.
    pub port: u16,
    process: Option<Child>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // A stopped process would not die of SIGKILL until continued on some systems' ptrace setups;
        // continuing first costs nothing.
        if let Some(p) = &self.process {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(p.id().to_string())
                .status();
        }
        self.kill();
    }
}

impl ClusterNode {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> Addr {
        Addr::parse(&format!("127.0.0.1:{}", self.port)).expect("loopback address")
    }

    /// Sends one command on a fresh connection and returns the decoded reply.
    pub async fn call(&self, args: &[&str]) -> std::io::Result<OwnedFrame> {
        embedded::call(&self.addr(), &[args]).await
    }

    /// The text of a bulk or simple string reply to `args`; empty on anything else.
    pub async fn text(&self, args: &[&str]) -> String {
        match self.call(args).await {
            Ok(OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b)) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Ok(OwnedFrame::Error(e)) => format!("-{e}"),
            _ => String::new(),
        }
    }

    /// Kills the process with SIGKILL (no shutdown, no save) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.process.as_ref().map(Child::id).expect("node running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// True while its process runs.
    pub fn running(&self) -> bool {
        self.process.is_some()
    }
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each, forms the cluster with the slots
    /// spread evenly, and returns once every node says `cluster_state:ok` and every replica is synced.
    pub async fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let root = tempfile::Builder::new()
            .prefix("redsplit-cluster-")
            .tempdir()
            .expect("temporary directory");
        let mut nodes = Vec::new();
        for i in 0..primaries * (1 + replicas) {
            let dir = root.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).expect("node directory");
            nodes.push(start_node(dir).await);
        }
        let cluster = RedisCluster {
            nodes,
            primaries,
            _root: root,
        };
        cluster.form(replicas).await;
        cluster
    }

    /// Shard `i`'s primary as formed.
    pub fn primary(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    /// The node that owns `slot` now, as the running nodes see it (`CLUSTER SHARDS` of the first that
    /// answers), with its replicas.
    pub async fn owner(&self, slot: u16) -> Option<(Addr, Vec<Addr>)> {
        for n in self.nodes.iter().filter(|n| n.running()) {
            let Ok(OwnedFrame::Array(slots)) = n.call(&["CLUSTER", "SLOTS"]).await else {
                continue;
            };
            for range in slots {
                let OwnedFrame::Array(f) = range else {
                    continue;
                };
                let (Some(OwnedFrame::Integer(from)), Some(OwnedFrame::Integer(to))) =
                    (f.first(), f.get(1))
                else {
                    continue;
                };
                if (*from..=*to).contains(&i64::from(slot)) {
                    let addrs: Vec<Addr> = f
                        .iter()
                        .skip(2)
                        .filter_map(|n| match n {
                            OwnedFrame::Array(n) => match (n.first(), n.get(1)) {
                                (
                                    Some(OwnedFrame::BulkString(ip)),
                                    Some(OwnedFrame::Integer(p)),
                                ) => Addr::parse(&format!("{}:{p}", String::from_utf8_lossy(ip)))
                                    .ok(),
                                _ => None,
                            },
                            _ => None,
                        })
                        .collect();
                    let (first, rest) = addrs.split_first()?;
                    return Some((first.clone(), rest.to_vec()));
                }
            }
            return None;
        }
        None
    }

    /// The node at `addr`.
    pub fn node(&self, addr: &Addr) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.addr() == *addr)
    }

    /// The node at `addr`, mutably (to kill it).
    pub fn node_mut(&mut self, addr: &Addr) -> Option<&mut ClusterNode> {
        self.nodes.iter_mut().find(|n| n.addr() == *addr)
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        for n in self.nodes.iter().filter(|n| n.running()) {
            eventually!(
                format!("{} says cluster_state:ok", n.addr()),
                n.text(&["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok"),
                PATIENCE * 2
            );
        }
    }

    async fn form(&self, replicas: usize) {
        let per = SLOTS as usize / self.primaries;
        for i in 0..self.primaries {
            let from = i * per;
            let to = if i + 1 == self.primaries {
                SLOTS as usize - 1
            } else {
                (i + 1) * per - 1
            };
            let reply = self.nodes[i]
                .text(&[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &from.to_string(),
                    &to.to_string(),
                ])
                .await;
            assert_eq!(reply, "OK", "CLUSTER ADDSLOTSRANGE");
        }
        let first = &self.nodes[0];
        for n in &self.nodes[1..] {
            let reply = first
                .text(&["CLUSTER", "MEET", "127.0.0.1", &n.port.to_string()])
                .await;
            assert_eq!(reply, "OK", "CLUSTER MEET");
        }
        let total = self.nodes.len();
        for n in &self.nodes {
            eventually!(
                format!("{} knows every node", n.addr()),
                n.text(&["CLUSTER", "NODES"])
                    .await
                    .lines()
                    .filter(|l| !l.contains("handshake") && !l.contains("noaddr"))
                    .count()
                    == total,
                PATIENCE * 2
            );
        }
        for i in 0..self.primaries {
            let id = self.nodes[i].text(&["CLUSTER", "MYID"]).await;
            for j in 0..replicas {
                let r = &self.nodes[self.primaries + i * replicas + j];
                // The replica may not have learned the primary's id yet from gossip.
                eventually!(
                    format!("{} replicates {}", r.addr(), id),
                    r.text(&["CLUSTER", "REPLICATE", &id]).await == "OK"
                );
            }
        }
        self.wait_ok().await;
        for r in &self.nodes[self.primaries..] {
            eventually!(
                format!("replica {} synced", r.addr()),
                matches!(r.call(&["ROLE"]).await, Ok(OwnedFrame::Array(role))
                    if matches!(role.get(3), Some(OwnedFrame::BulkString(s)) if s == b"connected")),
                PATIENCE * 2
            );
        }
    }
}

/// Starts one cluster-enabled server in `dir` on a port below 55536 whose bus port is free too.
async fn start_node(dir: PathBuf) -> ClusterNode {
    for _ in 0..50 {
        let port = random_port();
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !free(port) || !free(port + 10000) {
            continue;
        }
        let mut args = embedded::server_args(port, &dir, None);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // Other shards serve on while one shard's slots have no primary (its failover under
                // way): the default stops the whole cluster then.
                "--cluster-require-full-coverage",
                "no",
            ]
            .map(String::from),
        );
        let Ok(process) = embedded::spawn(&dir, &args) else {
            panic!("cannot run {} (is it installed?)", embedded::program());
        };
        let mut node = ClusterNode {
            port,
            process: Some(process),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if node.call(&["PING"]).await.is_ok() {
                return node;
            }
            let exited = node
                .process
                .as_mut()
                .is_some_and(|p| p.try_wait().ok().flatten().is_some());
            if exited || tokio::time::Instant::now() > deadline {
                // The port was taken between the check and the bind; try another.
                node.kill();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A port in 20000..45000, varying from call to call.
fn random_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    20000 + (h.finish() % 25000) as u16
}
