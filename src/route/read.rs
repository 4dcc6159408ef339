//! Where a read goes, and what a session must have seen.
//!
//! A replica gets a read only if the prober marks it eligible (answering, link up, within the lag limits).
//! In `session` consistency the session also carries a floor: the replication offset that any node serving
//! its next read must be known to have reached. The floor covers the session's writes (read-your-writes)
//! and the data it has already read (monotonic reads).
//!
//! The floor is learned without asking the primary anything extra, so writes pay nothing: when a reply
//! arrives the session notes the node and the probe epoch ([`ReadState::replied`]); the first probe of that
//! node with a later epoch was sent after the command ran, so its offset covers the command. Until that
//! probe answers, the session reads only from that node (or the primary).
//!
//! ```text
//!   write sent ──▶ reads go to the primary until its reply
//!   reply seen ──▶ pending(primary, epoch e)  ── probe of epoch > e answers ──▶ floor = its offset
//!   read served by replica R ──▶ pending(R, e): reads stay on R until resolved
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use super::{Consistency, Fallback, PrimaryReason};
use crate::topology::{Shard, ShardId};
use crate::upstream::Node;

/// Where one read goes.
#[derive(Debug, Clone)]
pub enum ReadTarget {
    /// A replica.
    Replica(Arc<Node>),
    /// The primary, and why.
    Primary(PrimaryReason),
    /// Nowhere: `fallback = "error"` and no replica qualifies.
    Refuse(PrimaryReason),
}

/// A command whose reply arrived, waiting for a later probe of its node to give it an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    node: u64,
    epoch: u64,
}

/// One session's read-consistency state.
#[derive(Debug, Default)]
pub struct ReadState {
    /// Commands sent to the primary whose replies have not been seen.
    unreplied_primary: u32,
    /// Offset a node must be known to have to serve this session's reads.
    floor: u64,
    /// The last node that answered, until a probe gives its offset.
    pending: Option<Pending>,
    /// Replica with reads in flight, and how many: reads stay there until they are answered.
    sticky: Option<(u64, u32)>,
}

impl ReadState {
    /// Chooses the node for a read.
    pub fn route(
        &mut self,
        shard: &Shard,
        consistency: Consistency,
        fallback: Fallback,
    ) -> ReadTarget {
        self.route_avoiding(shard, consistency, fallback, None)
    }

    /// Chooses the node for a read, never the replica `avoid` (it just failed this read).
    pub fn route_avoiding(
        &mut self,
        shard: &Shard,
        consistency: Consistency,
        fallback: Fallback,
        avoid: Option<u64>,
    ) -> ReadTarget {
        let primary_id = shard.primary.as_ref().map(|p| p.id);
        let eligible =
            |n: &Arc<Node>| n.repl.is_eligible() && Some(n.id) != primary_id && Some(n.id) != avoid;
        let target = match consistency {
            Consistency::Primary => return ReadTarget::Primary(PrimaryReason::Policy),
            Consistency::Eventual => {
                least_outstanding(shard.replica_nodes().filter(|n| eligible(n)))
            }
            Consistency::Session => {
                if self.unreplied_primary > 0 {
                    return ReadTarget::Primary(PrimaryReason::Session);
                }
                self.resolve(shard);
                if let Some((id, _)) = self.sticky {
                    match shard.replica_nodes().find(|n| n.id == id) {
                        Some(n) if eligible(n) => return ReadTarget::Replica(n.clone()),
                        _ => return ReadTarget::Primary(PrimaryReason::Session),
                    }
                }
                match self.pending {
                    Some(p) => shard
                        .replica_nodes()
                        .find(|n| n.id == p.node && eligible(n))
                        .cloned(),
                    None => least_outstanding(
                        shard
                            .replica_nodes()
                            .filter(|n| eligible(n) && n.repl.offset() >= self.floor),
                    ),
                }
            }
        };
        match target {
            Some(n) => ReadTarget::Replica(n),
            None => {
                let reason = if shard.replicas.is_empty() {
                    PrimaryReason::NoReplica
                } else if shard.replica_nodes().any(eligible) {
                    PrimaryReason::Session
                } else {
                    PrimaryReason::Lag
                };
                match fallback {
                    Fallback::Primary => ReadTarget::Primary(reason),
                    // Refusing only makes sense when replicas are lagging or missing, not because this
                    // session needs fresher data than they have: that is what the primary is for.
                    Fallback::Error if reason != PrimaryReason::Session => {
                        ReadTarget::Refuse(reason)
                    }
                    Fallback::Error => ReadTarget::Primary(reason),
                }
            }
        }
    }

    /// Counts commands sent: `to_primary` for the primary, else reads to replica `node`.
    pub fn sent(&mut self, node: u64, to_primary: bool, count: u32) {
        if to_primary {
            self.unreplied_primary += count;
        } else {
            match &mut self.sticky {
                Some((id, n)) if *id == node => *n += count,
                _ => self.sticky = Some((node, count)),
            }
        }
    }

    /// Notes replies from `node` seen while the probe epoch was `epoch`.
    pub fn replied(&mut self, node: u64, to_primary: bool, count: u32, epoch: u64) {
        self.abandoned(node, to_primary, count);
        self.pending = Some(Pending { node, epoch });
    }

    /// Commands sent to the primary and not yet answered.
    pub fn unreplied_primary(&self) -> u32 {
        self.unreplied_primary
    }

    /// Notes commands sent to `node` that are over without a reply that says anything about the node
    /// (re-sent elsewhere), or, through [`ReadState::replied`], answered.
    pub fn abandoned(&mut self, node: u64, to_primary: bool, count: u32) {
        if to_primary {
            self.unreplied_primary = self.unreplied_primary.saturating_sub(count);
        } else if let Some((id, n)) = &mut self.sticky {
            if *id == node {
                *n = n.saturating_sub(count);
                if *n == 0 {
                    self.sticky = None;
                }
            }
        }
    }

    /// Forgets everything (RESET, or a database switch: offsets are per server, not per database, so a
    /// switch keeps nothing stale, but a fresh session owes nothing).
    pub fn clear(&mut self) {
        *self = ReadState::default();
    }

    /// Turns the pending node into a floor once a later probe of it has answered.
    fn resolve(&mut self, shard: &Shard) {
        let Some(p) = self.pending else { return };
        match shard.nodes().find(|n| n.id == p.node) {
            Some(n) => {
                if let Some(s) = n.repl.sample().filter(|s| s.epoch > p.epoch) {
                    self.floor = self.floor.max(s.offset);
                    self.pending = None;
                }
            }
            // The node left the topology (failover): demand a fresh sample of the current primary, whose
            // data includes everything the old node had acknowledged to this session.
            None => {
                self.pending = shard.primary.as_ref().map(|n| Pending {
                    node: n.id,
                    epoch: p.epoch,
                });
            }
        }
    }
}

/// A session's read state, per shard: what it has written and read is known per replication history.
#[derive(Debug, Default)]
pub struct Reads(Vec<(ShardId, ReadState)>);

impl Reads {
    /// The state for reads of shard `id`.
    pub fn shard(&mut self, id: ShardId) -> &mut ReadState {
        match self.0.iter().position(|(s, _)| *s == id) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.0.push((id, ReadState::default()));
                let last = self.0.len() - 1;
                &mut self.0[last].1
            }
        }
    }

    /// Forgets everything (RESET, database switch).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// The node with the fewest outstanding requests; ties broken at random.
fn least_outstanding<'a>(nodes: impl Iterator<Item = &'a Arc<Node>>) -> Option<Arc<Node>> {
    let mut best: Option<&Arc<Node>> = None;
    let mut best_load = usize::MAX;
    let mut ties = 0u32;
    let mut rng = rand::rng();
    for n in nodes {
        let load = n.outstanding.load(Ordering::Relaxed);
        if load < best_load {
            best = Some(n);
            best_load = load;
            ties = 1;
        } else if load == best_load {
            // Reservoir sampling over the tied nodes.
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = Some(n);
            }
        }
    }
    best.cloned()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::node::Addr;
    use crate::topology::{Topo, Topology};

    fn setup() -> (Arc<Topo>, Arc<Topology>) {
        let topo = Topo::new(crate::upstream::test_settings());
        let addr = |s: &str| Addr::parse(s).expect("addr");
        let t = topo.publish(Some(&addr("p:1")), &[addr("r:1"), addr("r:2")]);
        for r in t.replica_nodes() {
            r.repl.eligible.store(true, Ordering::Relaxed);
        }
        (topo, t)
    }

    fn replica(t: &ReadTarget) -> u64 {
        match t {
            ReadTarget::Replica(n) => n.id,
            other => panic!("expected a replica, got {other:?}"),
        }
    }

    #[test]
    fn read_goes_to_primary_while_a_write_is_unanswered() {
        let (_, t) = setup();
        let mut s = ReadState::default();
        let p = t.primary().expect("primary").id;
        s.sent(p, true, 1);
        let r = s.route(t.shard(), Consistency::Session, Fallback::Primary);
        assert!(matches!(r, ReadTarget::Primary(PrimaryReason::Session)));
    }

    #[test]
    fn read_after_write_waits_for_a_replica_known_to_hold_the_write() {
        let (topo, t) = setup();
        let p = t.primary().expect("primary");
        let (r1, r2) = (&t.replicas()[0].node, &t.replicas()[1].node);
        r1.repl.record(1, 100);
        r2.repl.record(1, 100);
        let mut s = ReadState::default();
        s.sent(p.id, true, 1);
        s.replied(p.id, true, 1, topo.current_epoch());
        // No probe since the reply: only the primary is safe.
        assert!(matches!(
            s.route(t.shard(), Consistency::Session, Fallback::Primary),
            ReadTarget::Primary(_)
        ));
        // The primary's next probe says the write is at offset 150; r2 has it, r1 does not.
        p.repl.record(topo.next_epoch(), 150);
        r1.repl.record(topo.next_epoch(), 120);
        r2.repl.record(topo.next_epoch(), 150);
        assert_eq!(
            replica(&s.route(t.shard(), Consistency::Session, Fallback::Primary)),
            r2.id
        );
    }

    #[test]
    fn reads_stay_on_one_replica_until_its_offset_is_known() {
        let (topo, t) = setup();
        let mut s = ReadState::default();
        let first = replica(&s.route(t.shard(), Consistency::Session, Fallback::Primary));
        s.sent(first, false, 1);
        for _ in 0..20 {
            assert_eq!(
                replica(&s.route(t.shard(), Consistency::Session, Fallback::Primary)),
                first
            );
        }
        s.replied(first, false, 1, topo.current_epoch());
        for _ in 0..20 {
            assert_eq!(
                replica(&s.route(t.shard(), Consistency::Session, Fallback::Primary)),
                first
            );
        }
    }

    #[test]
    fn lagging_replicas_get_no_reads_and_error_fallback_refuses() {
        let (_, t) = setup();
        for r in t.replica_nodes() {
            r.repl.eligible.store(false, Ordering::Relaxed);
        }
        let mut s = ReadState::default();
        assert!(matches!(
            s.route(t.shard(), Consistency::Eventual, Fallback::Primary),
            ReadTarget::Primary(PrimaryReason::Lag)
        ));
        assert!(matches!(
            s.route(t.shard(), Consistency::Eventual, Fallback::Error),
            ReadTarget::Refuse(PrimaryReason::Lag)
        ));
    }

    #[test]
    fn eventual_reads_balance_by_outstanding_requests() {
        let (_, t) = setup();
        t.replicas()[0].node.outstanding.store(5, Ordering::Relaxed);
        let mut s = ReadState::default();
        for _ in 0..10 {
            assert_eq!(
                replica(&s.route(t.shard(), Consistency::Eventual, Fallback::Primary)),
                t.replicas()[1].node.id
            );
        }
        t.replicas()[0].node.outstanding.store(0, Ordering::Relaxed);
        t.replicas()[1].node.outstanding.store(0, Ordering::Relaxed);
        let picks: std::collections::HashSet<u64> = (0..200)
            .map(|_| replica(&s.route(t.shard(), Consistency::Eventual, Fallback::Primary)))
            .collect();
        assert_eq!(picks.len(), 2, "ties are broken at random");
    }
}
