//! The topology: which node is the primary, which are replicas, and how far behind each replica is.
//!
//! Roles live in an immutable [`Topology`] snapshot with a [`Generation`], replaced whole (arc-swap) when
//! discovery learns something; a live snapshot is never edited. Measurements that change every probe
//! (offsets, lag, eligibility) live in each node's [`ReplState`] atomics, so reading them costs no lock and
//! publishing them costs no snapshot.
//!
//! Read-your-writes rests on [`Topo::epoch`]: every probe takes a new epoch number before it sends `ROLE`.
//! A session that saw the reply of its write while the epoch was `e` knows that any probe of epoch > `e`
//! was sent after the write ran, so that probe's offset covers the write.

pub mod discovery;
pub mod probe;
pub mod sentinel;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use crate::node::Addr;
pub use crate::node::{ReplState, Sample, Why};
use crate::upstream::{Node, Settings};

/// Topology generation: increases by one with every published snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// One immutable view of the replication topology.
#[derive(Debug)]
pub struct Topology {
    /// Its generation.
    pub generation: Generation,
    /// The primary, if one is known. Writes wait while there is none.
    pub primary: Option<Arc<Node>>,
    /// Replicas, in discovery order.
    pub replicas: Vec<Arc<Node>>,
    /// The master each replica follows (the primary, or another replica), index for index.
    pub parents: Vec<Addr>,
}

impl Topology {
    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.primary.iter().chain(self.replicas.iter())
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

/// How long the primary's offset history reaches back. Lag older than this reads as this.
const HISTORY_SPAN: Duration = Duration::from_secs(120);

/// The live topology and what goes with it.
#[derive(Debug)]
pub struct Topo {
    current: ArcSwap<Topology>,
    changed: watch::Sender<Generation>,
    /// Probe epoch counter; see the module documentation.
    pub epoch: AtomicU64,
    /// `(when, primary offset)`, oldest first, for lag in time.
    history: Mutex<VecDeque<(Instant, u64)>>,
    /// Redis version of the primary, for proxy-made HELLO replies.
    pub server_version: ArcSwap<String>,
    settings: Arc<Settings>,
    nodes: Mutex<FxHashMap<Addr, Arc<Node>>>,
    failovers: AtomicU64,
    /// Set during a manual switchover: writes wait as if there were no primary, reads go on.
    writes_held: AtomicBool,
}

impl Topo {
    /// An empty topology (generation 0, no primary).
    pub fn new(settings: Arc<Settings>) -> Arc<Topo> {
        let empty = Topology {
            generation: Generation(0),
            primary: None,
            replicas: Vec::new(),
            parents: Vec::new(),
        };
        Arc::new(Topo {
            current: ArcSwap::from_pointee(empty),
            changed: watch::channel(Generation(0)).0,
            epoch: AtomicU64::new(1),
            history: Mutex::new(VecDeque::new()),
            server_version: ArcSwap::from_pointee("7.0.0".to_string()),
            settings,
            nodes: Mutex::new(FxHashMap::default()),
            failovers: AtomicU64::new(0),
            writes_held: AtomicBool::new(false),
        })
    }

    /// The current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.current.load()
    }

    /// The current snapshot, owned.
    pub fn snapshot(&self) -> Arc<Topology> {
        self.current.load_full()
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
        })
    }

    /// Publishes `decision` unless the current snapshot already says the same. Returns the new snapshot.
    pub fn publish_if_changed(&self, decision: &discovery::Decision) -> Option<Arc<Topology>> {
        let cur = self.current.load();
        let same = cur.primary.as_ref().map(|n| &n.addr) == decision.primary.as_ref()
            && cur.replicas.len() == decision.replicas.len()
            && cur
                .replicas
                .iter()
                .zip(&cur.parents)
                .zip(&decision.replicas)
                .all(|((n, parent), (addr, want))| n.addr == *addr && parent == want);
        (!same).then(|| self.publish_tree(decision))
    }

    /// Publishes a new snapshot. Nodes already known keep their connections and measurements.
    pub fn publish_tree(&self, decision: &discovery::Decision) -> Arc<Topology> {
        let next = {
            let primary = decision.primary.as_ref().map(|a| self.node(a));
            let replicas = decision
                .replicas
                .iter()
                .map(|(a, _)| self.node(a))
                .collect();
            let parents = decision.replicas.iter().map(|(_, p)| p.clone()).collect();
            let generation = Generation(self.current.load().generation.0 + 1);
            Arc::new(Topology {
                generation,
                primary,
                replicas,
                parents,
            })
        };
        let old = self.current.swap(next.clone());
        let failover = matches!((&old.primary, &next.primary), (Some(a), Some(b)) if a.id != b.id);
        if failover {
            self.failovers.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = &self.settings.metrics {
            m.generation.set(next.generation.0 as i64);
            if failover {
                m.failovers.inc();
            }
            // Series exist exactly for the nodes in the topology, and lag and eligibility only for
            // replicas: handles are resolved again whenever a node joins or changes role.
            let role = |t: &Topology, id: u64| {
                if t.primary.as_ref().is_some_and(|p| p.id == id) {
                    Some(true)
                } else {
                    t.replicas.iter().any(|r| r.id == id).then_some(false)
                }
            };
            for n in next.nodes() {
                let now = role(&next, n.id);
                if role(&old, n.id) != now {
                    n.metrics.store(Arc::new(m.node(n.addr.as_str())));
                    if now == Some(true) {
                        m.forget_replica_series(n.addr.as_str());
                    }
                }
            }
            for n in old.nodes().filter(|o| !next.nodes().any(|n| n.id == o.id)) {
                m.forget_node(n.addr.as_str());
                n.metrics
                    .store(Arc::new(crate::metrics::NodeMetrics::detached()));
            }
        }
        self.changed.send_replace(next.generation);
        let replicas: Vec<String> = next.replicas.iter().map(|n| n.addr.to_string()).collect();
        tracing::info!(
            generation = next.generation.0,
            primary = next.primary.as_ref().map(|n| n.addr.to_string()).unwrap_or_else(|| "none".into()),
            replicas = %replicas.join(","),
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
        self.writes_held.store(hold, Ordering::SeqCst);
        if !hold {
            let generation = self.current.load().generation;
            self.changed.send_replace(generation);
        }
    }

    /// True while writes are held.
    pub fn writes_held(&self) -> bool {
        self.writes_held.load(Ordering::Relaxed)
    }

    /// Primary changes seen since start.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Watches generation changes.
    pub fn subscribe(&self) -> watch::Receiver<Generation> {
        self.changed.subscribe()
    }

    /// The current probe epoch.
    pub fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Takes the epoch for a probe about to be sent.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records the primary's offset at `at`.
    pub fn record_primary_offset(&self, at: Instant, offset: u64) {
        let mut h = self.history.lock().expect("history lock is never poisoned");
        if h.back().is_some_and(|&(_, o)| o > offset) {
            // The offset went backwards: a different primary or a restart. Old history means nothing now.
            h.clear();
        }
        h.push_back((at, offset));
        while h
            .front()
            .is_some_and(|&(t, _)| at.duration_since(t) > HISTORY_SPAN)
        {
            h.pop_front();
        }
    }

    /// How far in time `offset` trails `reference` in the primary's history: the lag of a replica
    /// measured against the freshest one while the primary is gone.
    pub fn lag_behind(&self, offset: u64, reference: u64) -> Option<Duration> {
        let at = {
            let h = self.history.lock().expect("history lock is never poisoned");
            let &(newest, _) = h.back()?;
            h.iter()
                .find(|&&(_, o)| o >= reference)
                .map_or(newest, |&(t, _)| t)
        };
        self.lag_at(at, offset)
    }

    /// Lag in time of a replica that reported `offset` at `at`: how long before `at` the primary was last
    /// known to be at or below that offset. A replica with all the primary is known to have may still
    /// miss what was written since the newest sample: its lag is the age of that sample. (Counting it as
    /// zero let a replica 600 ms behind read as level with an old sample when the primary's probes came
    /// slowly under load, and serve reads under a 300 ms limit.) `None` if the history cannot tell (no
    /// sample yet).
    pub fn lag_at(&self, at: Instant, offset: u64) -> Option<Duration> {
        let h = self.history.lock().expect("history lock is never poisoned");
        let &(sampled, newest) = h.back()?;
        if offset >= newest {
            return Some(at.saturating_duration_since(sampled));
        }
        // The primary passed `offset` after the last sample at or below it: the replica misses writes at
        // least that old. Conservative by up to one probe interval.
        match h.iter().rev().find(|&&(_, o)| o <= offset) {
            Some(&(t, _)) => Some(at.saturating_duration_since(t)),
            None => h
                .front()
                .map(|&(t, _)| at.saturating_duration_since(t).max(HISTORY_SPAN)),
        }
    }
}

#[cfg(test)]
mod tests {
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
            g1.primary.as_ref().map(|n| n.id),
            g2.replicas.first().map(|n| n.id)
        );
        assert_eq!(*t.subscribe().borrow(), g2.generation);
    }

    #[test]
    fn lag_is_how_long_ago_the_primary_was_at_the_replica_offset() {
        let t = topo();
        let t0 = Instant::now();
        for (ms, off) in [(0, 100), (100, 200), (200, 200), (300, 400)] {
            t.record_primary_offset(t0 + Duration::from_millis(ms), off);
        }
        let now = t0 + Duration::from_millis(300);
        assert_eq!(t.lag_at(now, 400), Some(Duration::ZERO));
        // Level with the newest sample, asked later: whatever came since may be missing.
        assert_eq!(
            t.lag_at(now + Duration::from_millis(700), 400),
            Some(Duration::from_millis(700))
        );
        assert_eq!(t.lag_at(now, 250), Some(Duration::from_millis(100)));
        assert_eq!(t.lag_at(now, 150), Some(Duration::from_millis(300)));
        assert!(t.lag_at(now, 50).expect("known") >= HISTORY_SPAN);
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
}
