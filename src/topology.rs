//! The topology: which node is the primary, which are replicas, and how far behind each replica is.
//!
//! Roles live in an immutable [`Topology`] snapshot with a [`Generation`], replaced whole (arc-swap) when
//! discovery learns something; a live snapshot is never edited. Measurements that change every probe
//! (offsets, lag, eligibility) live in each node's [`ReplState`] atomics, so reading them costs no lock and
//! publishing them costs no snapshot.
//!
//! Read-your-writes rests on the epoch ([`crate::node::next_epoch`]): every probe takes a new epoch number
//! before it sends `ROLE`. A session that saw the reply of its write while the epoch was `e` knows that any
//! probe of epoch > `e` was sent after the write ran, so that probe's offset covers the write.

pub mod cluster;
pub mod discovery;
pub mod probe;
pub mod sentinel;
pub mod shard;
pub mod slots;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::node::Addr;
pub use crate::node::{ReplState, Sample, Why};
use crate::upstream::{Node, Settings};
pub use shard::{Promotion, Replica, Shard, ShardId, ShardState};
pub use slots::{key_slot, SlotMap};

/// Topology generation: increases by one with every published snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// One immutable view of the replication topology: shards, each a primary with its replicas. One shard
/// in front of a replicated primary.
#[derive(Debug)]
pub struct Topology {
    /// Its generation.
    pub generation: Generation,
    /// The shards; never empty (a shard without a primary stands for one not found yet).
    pub shards: Vec<Shard>,
    /// Other addresses of nodes in the shards (`alias -> address used`): the same Redis process answers
    /// there (a relay in front of it, another name for its host). The proxy never talks through them.
    pub aliases: std::collections::BTreeMap<Addr, Addr>,
    /// In front of a Redis Cluster: which shard owns each slot. `None` for one replicated primary.
    pub slots: Option<SlotMap>,
}

impl Topology {
    /// True in front of a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.slots.is_some()
    }

    /// The shard that owns `slot`: the only one in front of a replicated primary; `None` in front of a
    /// cluster if no shard owns it.
    pub fn shard_for_slot(&self, slot: u16) -> Option<&Shard> {
        match &self.slots {
            None => Some(self.shard()),
            Some(map) => self.shards.get(map.owner(slot)?),
        }
    }

    /// True if `slot` is being moved between shards (see [`SlotMap::is_moving`]).
    pub fn slot_moving(&self, slot: u16) -> bool {
        self.slots.as_ref().is_some_and(|m| m.is_moving(slot))
    }

    /// The shard numbered `id`, if it is in this snapshot.
    pub fn shard_by_id(&self, id: ShardId) -> Option<&Shard> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// The shard of a replicated primary (the first).
    pub fn shard(&self) -> &Shard {
        self.shards
            .first()
            .expect("a topology always has a shard: Topo publishes at least one")
    }

    /// The primary of the first shard, if one is known.
    pub fn primary(&self) -> Option<&Arc<Node>> {
        self.shard().primary.as_ref()
    }

    /// The replicas of the first shard.
    pub fn replicas(&self) -> &[Replica] {
        &self.shard().replicas
    }

    /// The replica nodes of the first shard.
    pub fn replica_nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.shard().replica_nodes()
    }

    /// Every node of every shard, each shard's primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.shards.iter().flat_map(Shard::nodes)
    }

    /// The other addresses of the node at `addr`.
    pub fn aliases_of<'a>(&'a self, addr: &'a Addr) -> impl Iterator<Item = &'a Addr> {
        self.aliases
            .iter()
            .filter(move |(_, to)| *to == addr)
            .map(|(alias, _)| alias)
    }

    /// The shard `node` (by id) belongs to, if any.
    pub fn shard_of(&self, node: u64) -> Option<&Shard> {
        self.shards
            .iter()
            .find(|s| s.is_primary(node) || s.replica(node).is_some())
    }
}

/// Replaces announced addresses (containers, NAT) with reachable ones.
#[derive(Debug, Clone, Default)]
pub struct AddressMap(Vec<(Addr, Addr)>);

impl AddressMap {
    /// A map from `(announced, reachable)` pairs.
    pub fn new(pairs: Vec<(Addr, Addr)>) -> AddressMap {
        AddressMap(pairs)
    }

    /// The address a node announces for `reachable` (itself if unmapped): what its peers call it.
    pub fn announced(&self, reachable: &Addr) -> Addr {
        self.0
            .iter()
            .find(|(_, to)| to == reachable)
            .map_or_else(|| reachable.clone(), |(from, _)| from.clone())
    }

    /// The reachable address for `announced` (itself if unmapped).
    pub fn map(&self, announced: Addr) -> Addr {
        self.0
            .iter()
            .find(|(from, _)| *from == announced)
            .map_or(announced, |(_, to)| to.clone())
    }
}

/// What server software the primary runs, as HELLO reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `redis` or `valkey`.
    pub name: String,
    /// Its own version (Valkey also reports the Redis version it is compatible with, which this is not).
    pub version: String,
}

impl Default for ServerVersion {
    fn default() -> ServerVersion {
        ServerVersion {
            name: "redis".into(),
            version: "7.0.0".into(),
        }
    }
}

impl ServerVersion {
    /// From an `INFO server` reply: `server_name` and `<name>_version` (Valkey), else `redis_version`.
    pub fn from_info(info: &str) -> Option<ServerVersion> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let name = field("server_name").unwrap_or_else(|| "redis".into());
        let version = field(&format!("{name}_version")).or_else(|| field("redis_version"))?;
        Some(ServerVersion { name, version })
    }
}

/// The live topology and what goes with it.
#[derive(Debug)]
pub struct Topo {
    current: ArcSwap<Topology>,
    changed: watch::Sender<Generation>,
    /// The primary's server and version, for proxy-made HELLO replies.
    pub server: ArcSwap<ServerVersion>,
    settings: Arc<Settings>,
    nodes: Mutex<FxHashMap<Addr, Arc<Node>>>,
    failovers: AtomicU64,
    /// What the shard keeps across snapshots.
    state: Arc<ShardState>,
    /// In front of a cluster: each shard's number, state and members, kept across snapshots.
    cluster: Mutex<cluster::Known>,
}

impl Topo {
    /// An empty topology (generation 0, one shard without a primary).
    pub fn new(settings: Arc<Settings>) -> Arc<Topo> {
        let state = Arc::new(ShardState::default());
        let empty = Topology {
            generation: Generation(0),
            shards: vec![Shard::empty(ShardId(0), state.clone())],
            aliases: Default::default(),
            slots: None,
        };
        Arc::new(Topo {
            current: ArcSwap::from_pointee(empty),
            changed: watch::channel(Generation(0)).0,
            server: ArcSwap::from_pointee(ServerVersion::default()),
            settings,
            nodes: Mutex::new(FxHashMap::default()),
            failovers: AtomicU64::new(0),
            state,
            cluster: Mutex::new(cluster::Known::default()),
        })
    }

    /// Notes the server and version an `INFO server` reply of the primary names.
    pub fn note_server(&self, info: &str) {
        if let Some(v) = ServerVersion::from_info(info) {
            self.server.store(Arc::new(v));
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.current.load()
    }

    /// The current snapshot, owned.
    pub fn snapshot(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// What the (first) shard keeps across snapshots: offset history, held writes.
    pub fn shard_state(&self) -> &Arc<ShardState> {
        &self.state
    }

    /// Publishes a snapshot with `primary` and `replicas` following it directly.
    pub fn publish(&self, primary: Option<&Addr>, replicas: &[Addr]) -> Arc<Topology> {
        let tree: Vec<(Addr, Addr)> = match primary {
            Some(p) => replicas.iter().map(|r| (r.clone(), p.clone())).collect(),
            None => Vec::new(),
        };
        self.publish_tree(&discovery::Decision {
            primary: primary.cloned(),
            replicas: tree,
            aliases: Default::default(),
        })
    }

    /// Publishes `decision` unless the current snapshot already says the same. Returns the new snapshot.
    /// A replica whose address answers with the run id of a node already in the decision (the primary,
    /// or a replica listed before it) is that node under another name: it is left out, as an alias.
    pub fn publish_if_changed(&self, decision: &discovery::Decision) -> Option<Arc<Topology>> {
        let decision = &self.one_node_per_process(decision);
        let cur = self.current.load();
        let shard = cur.shard();
        let same = shard.primary.as_ref().map(|n| &n.addr) == decision.primary.as_ref()
            && shard.replicas.len() == decision.replicas.len()
            && shard
                .replicas
                .iter()
                .zip(&decision.replicas)
                .all(|(r, (addr, parent))| r.node.addr == *addr && r.parent == *parent)
            && cur.aliases == decision.aliases;
        (!same).then(|| self.publish_tree(decision))
    }

    /// `decision` with every process once: replicas that are a node already in it, by run id, become
    /// aliases. Run ids are those the probes and discovery learned.
    fn one_node_per_process(&self, decision: &discovery::Decision) -> discovery::Decision {
        let mut out = decision.clone();
        let mut seen: Vec<(crate::node::RunId, Addr)> = Vec::new();
        let mut note = |addr: &Addr| -> Option<Addr> {
            let run_id = self.node(addr).identity()?.run_id;
            match seen.iter().find(|(r, _)| *r == run_id) {
                Some((_, first)) => Some(first.clone()),
                None => {
                    seen.push((run_id, addr.clone()));
                    None
                }
            }
        };
        if let Some(p) = &decision.primary {
            note(p);
        }
        out.replicas.retain(|(addr, _)| match note(addr) {
            Some(first) => {
                out.aliases.insert(addr.clone(), first);
                false
            }
            None => true,
        });
        out
    }

    /// Publishes a new snapshot. Nodes already known keep their connections and measurements.
    pub fn publish_tree(&self, decision: &discovery::Decision) -> Arc<Topology> {
        let next = {
            let primary = decision.primary.as_ref().map(|a| self.node(a));
            let replicas = decision
                .replicas
                .iter()
                .map(|(a, parent)| {
                    let node = self.node(a);
                    Replica {
                        identity: node.identity(),
                        node,
                        parent: parent.clone(),
                    }
                })
                .collect();
            let generation = Generation(self.current.load().generation.0 + 1);
            Arc::new(Topology {
                generation,
                shards: vec![Shard {
                    id: ShardId(0),
                    primary,
                    replicas,
                    state: self.state.clone(),
                }],
                aliases: decision.aliases.clone(),
                slots: None,
            })
        };
        if let Some(p) = next.primary() {
            // Before anyone sees the snapshot: a write another node answers from now on ran on a former
            // primary. "No primary" clears nothing: the same node may come back.
            p.set_primary(true);
            for n in self
                .nodes
                .lock()
                .expect("node registry lock is never poisoned")
                .values()
            {
                // The same process under another address (an alias discovery chose this round) is
                // not a former primary.
                let run_id = |n: &Node| n.identity().map(|i| i.run_id);
                let same_process = run_id(n).is_some() && run_id(n) == run_id(p);
                if n.id != p.id && n.is_primary() && !same_process {
                    n.set_primary(false);
                }
            }
            // Another primary: a new replication history (a promoted replica starts one), and the
            // topology settled for a promotion seen outside the proxy.
            if self.state.last_primary().is_none_or(|l| l.id != p.id) {
                self.state.new_era(self.current_epoch());
            }
            if self.state.promoted().is_some_and(|pr| pr.primary != p.id) {
                self.state.end_promotion_hold();
                info!(primary = %p.addr, "writes released: the topology follows the promoted replica");
            }
            self.state.set_last_primary(p);
        }
        let old = self.current.swap(next.clone());
        let failover =
            matches!((old.primary(), next.primary()), (Some(a), Some(b)) if a.id != b.id);
        if failover {
            self.failovers.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = &self.settings.metrics {
            count_published(m, &old, &next, failover);
        }
        self.changed.send_replace(next.generation);
        let replicas: Vec<String> = next
            .replicas()
            .iter()
            .map(|r| r.node.addr.to_string())
            .collect();
        let aliases: Vec<String> = next
            .aliases
            .iter()
            .map(|(alias, to)| format!("{alias}={to}"))
            .collect();
        info!(
            generation = next.generation.0,
            primary = next.primary().map(|n| n.addr.to_string()).unwrap_or_else(|| "none".into()),
            replicas = %replicas.join(","),
            aliases = %aliases.join(","),
            "topology published"
        );
        next
    }

    /// The node at `addr`, created on first mention. One `Node` per address for the life of the proxy,
    /// so connections and measurements survive topology changes.
    pub fn node(&self, addr: &Addr) -> Arc<Node> {
        let mut nodes = self
            .nodes
            .lock()
            .expect("node registry lock is never poisoned");
        nodes
            .entry(addr.clone())
            .or_insert_with(|| Node::new(addr.clone(), self.settings.clone()))
            .clone()
    }

    /// Every node known since start, in or out of the current topology.
    pub fn known_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Asks the topology source to look again now (a failure on the data path).
    pub fn request_refresh(&self) {
        self.settings.refresh.notify_one();
    }

    /// Resolves when a refresh was requested.
    pub async fn refresh_requested(&self) {
        self.settings.refresh.notified().await
    }

    /// Holds (true) or releases (false) writes, as during a manual switchover. Releasing wakes held
    /// commands at once.
    pub fn hold_writes(&self, hold: bool) {
        self.state.hold_writes(hold);
        if !hold {
            let generation = self.current.load().generation;
            self.changed.send_replace(generation);
        }
    }

    /// `node`, a replica in the current snapshot, reports itself a master: promoted outside the proxy
    /// (`SENTINEL FAILOVER` sent to a sentinel, `REPLICAOF NO ONE`, Redis `FAILOVER`). Writes are held at
    /// once (a write the primary takes now is lost when it follows the promoted node) and the source is
    /// asked to look again. Held writes wait at most `write_hold_ms`, as with no primary.
    pub fn replica_promoted(&self, node: &Node) {
        let snapshot = self.load();
        let Some(shard) = snapshot.shard_of(node.id) else {
            return;
        };
        let Some(primary) = shard.primary.as_ref() else {
            return;
        };
        if shard.replica(node.id).is_none() || primary.id == node.id {
            return;
        }
        if shard
            .state
            .hold_for_promotion(node.id, primary.id, Instant::now(), true)
        {
            warn!(upstream = %node.addr, primary = %primary.addr, "a replica reports itself a master; holding writes until the topology settles");
            self.request_refresh();
        }
    }

    /// A sentinel announced that it promotes the replica at `addr` (`+selected-slave`): it will stop
    /// following the primary within a sentinel tick, and writes the primary takes from then on are lost.
    /// Writes are held as for a replica seen promoted; if it never turns master, the hold ends after
    /// `write_hold_ms`.
    pub fn failover_announced(&self, addr: &Addr) {
        let snapshot = self.load();
        let shard = snapshot.shard();
        let (Some(primary), Some(replica)) = (
            shard.primary.as_ref(),
            shard.replicas.iter().find(|r| r.node.addr == *addr),
        ) else {
            return;
        };
        if self
            .state
            .hold_for_promotion(replica.node.id, primary.id, Instant::now(), false)
        {
            warn!(upstream = %addr, primary = %primary.addr, "a sentinel promotes a replica; holding writes until the topology settles");
        }
    }

    /// Ends the hold for `node`'s promotion once the topology settled without another primary: the node,
    /// once seen master, reports a replica again (`replica`; the old primary stays), or it has been held
    /// `settle` and the current snapshot no longer lists it as a replica (a stray master, not in this
    /// tree) or it never turned master (an announced failover that stalled). A new primary ends it when
    /// published.
    pub fn settle_promotion(&self, node: &Node, replica: bool, settle: Duration) {
        let snapshot = self.load();
        // The shard whose writes are held for it: the one that lists it, else (dropped from the tree)
        // any whose hold is for it.
        let state = snapshot
            .shard_of(node.id)
            .map(|s| s.state.clone())
            .filter(|s| s.promoted().is_some_and(|p| p.node == node.id))
            .or_else(|| {
                snapshot
                    .shards
                    .iter()
                    .map(|s| s.state.clone())
                    .chain(std::iter::once(self.state.clone()))
                    .find(|s| s.promoted().is_some_and(|p| p.node == node.id))
            });
        let Some(state) = state else {
            return;
        };
        let Some(pr) = state.promoted().filter(|p| p.node == node.id) else {
            return;
        };
        let listed = snapshot
            .shard_of(node.id)
            .is_some_and(|s| s.replica(node.id).is_some());
        drop(snapshot);
        let waited = pr.since.elapsed() >= settle;
        if (replica && pr.seen_master) || (waited && (!listed || !pr.seen_master)) {
            if state.end_promotion_hold() {
                info!(upstream = %node.addr, replica, "writes released: the primary stays");
            }
            // Wake held writes now, as a release does.
            let generation = self.current.load().generation;
            self.changed.send_replace(generation);
        }
    }

    /// True while writes are held.
    pub fn writes_held(&self) -> bool {
        self.state.writes_held()
    }

    /// Primary changes seen since start.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Watches generation changes.
    pub fn subscribe(&self) -> watch::Receiver<Generation> {
        self.changed.subscribe()
    }

    /// The current measurement epoch (see [`crate::node::next_epoch`]).
    pub fn current_epoch(&self) -> u64 {
        crate::node::current_epoch()
    }

    /// Takes the epoch for a probe about to be sent.
    pub fn next_epoch(&self) -> u64 {
        crate::node::next_epoch()
    }
}

/// Metrics of a published snapshot: generation, failovers, and the series of nodes that joined, left or
/// changed role.
fn count_published(m: &crate::metrics::Metrics, old: &Topology, next: &Topology, failover: bool) {
    m.generation.set(next.generation.0 as i64);
    if failover {
        m.failovers.inc();
    }
    // A node's series appear when it first joins. Its counters stay for the life of the proxy,
    // so they never go backwards when it leaves and comes back (operators read error counts
    // after a failover); lag and eligibility exist only while it is a replica.
    // Some(true): a primary; Some(false): a replica; None: not in the topology.
    let role = |t: &Topology, id: u64| t.shard_of(id).map(|s| s.is_primary(id));
    for n in next.nodes() {
        let now = role(next, n.id);
        if role(old, n.id) != now {
            n.metrics.store(Arc::new(m.node(n.addr.as_str())));
            if now == Some(true) {
                m.forget_replica_series(n.addr.as_str());
            }
        }
    }
    for n in old.nodes().filter(|o| role(next, o.id).is_none()) {
        m.forget_replica_series(n.addr.as_str());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn valkey_reports_its_own_name_and_version_not_the_redis_one() {
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n";
        let v = ServerVersion::from_info(valkey).expect("a version");
        assert_eq!((v.name.as_str(), v.version.as_str()), ("valkey", "8.1.8"));
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n";
        let r = ServerVersion::from_info(redis).expect("a version");
        assert_eq!((r.name.as_str(), r.version.as_str()), ("redis", "7.0.15"));
        assert_eq!(ServerVersion::from_info("# Server\r\n"), None);
    }

    use super::*;

    fn topo() -> Arc<Topo> {
        Topo::new(crate::upstream::test_settings())
    }

    #[test]
    fn publishing_bumps_the_generation_and_keeps_nodes() {
        let t = topo();
        let a = Addr::parse("a:1").expect("addr");
        let b = Addr::parse("b:1").expect("addr");
        let g1 = t.publish(Some(&a), std::slice::from_ref(&b));
        let g2 = t.publish(Some(&b), std::slice::from_ref(&a));
        assert_eq!(g2.generation, Generation(g1.generation.0 + 1));
        assert_eq!(
            g1.primary().map(|n| n.id),
            g2.replicas().first().map(|r| r.node.id)
        );
        assert_eq!(*t.subscribe().borrow(), g2.generation);
    }

    #[test]
    fn a_sample_is_visible_only_after_a_probe_answered() {
        let r = ReplState::default();
        assert_eq!(r.sample(), None);
        r.record(7, 1234);
        assert_eq!(
            r.sample(),
            Some(Sample {
                epoch: 7,
                offset: 1234
            })
        );
    }

    #[test]
    fn a_replica_that_is_a_known_node_under_another_address_is_an_alias() {
        let t = topo();
        let a = |s: &str| Addr::parse(s).expect("addr");
        let id = |run: &str| crate::node::Identity {
            run_id: crate::node::RunId(run.into()),
            replid: None,
        };
        t.node(&a("127.0.0.1:1")).set_identity(id("P"));
        t.node(&a("localhost:1")).set_identity(id("P"));
        t.node(&a("r:1")).set_identity(id("R"));
        let decision = discovery::Decision {
            primary: Some(a("127.0.0.1:1")),
            replicas: vec![
                (a("localhost:1"), a("127.0.0.1:1")),
                (a("r:1"), a("127.0.0.1:1")),
            ],
            aliases: Default::default(),
        };
        let snap = t.publish_if_changed(&decision).expect("published");
        assert_eq!(snap.replicas().len(), 1);
        assert_eq!(snap.replicas()[0].node.addr, a("r:1"));
        assert_eq!(snap.aliases.get(&a("localhost:1")), Some(&a("127.0.0.1:1")));
        assert!(t.publish_if_changed(&decision).is_none(), "nothing changed");
    }
}
