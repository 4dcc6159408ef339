//! Where a read goes, and what a session must have seen.
//!
//! A replica gets a read only if the prober marks it eligible (answering, link up, within the lag
//! limits). Every read also has a *required offset*: one the node serving it must have reached before it
//! runs. It covers
//! - the session's writes and what it has already read (`session` and `global`: read-your-writes and
//!   monotonic reads): the session's floor;
//! - every write acknowledged through this proxy before the read began (`global`);
//! - the lag limit: the primary's offset `max_lag_ms` ago, so no read is served from older data, also
//!   between probes.
//!
//! The proxy knows each read met it exactly, without a round trip of its own: a node runs one
//! connection's commands in order, so a `ROLE` written just before the read on the same connection
//! reports an offset the read sees at least ([`crate::upstream::offsets`]). A replica already known to
//! have the required offset needs no such check; one that turns out to be behind has its read sent again
//! elsewhere, never delivered. The `ROLE` written after a batch on the primary gives the offset that
//! covers its writes (the session's floor rises to it) and bounds what its reads saw. What a read on a
//! replica saw is bounded by the next measurement of that replica (another read's check, a probe); until
//! then the session's reads stay on it, where they run after that read anyway.
//!
//! ```text
//!   write sent ──▶ reads go to the primary until its reply (and its offset) is in
//!   reply with offset O ──▶ floor = max(floor, O)
//!   reply without one (a replica's, a dedicated connection's) ──▶ pending(node, epoch e): reads stay on
//!       the node (or go to the primary) ── a measurement of the node with epoch > e ──▶ floor = its offset
//!   read in flight on replica R ──▶ the session's next reads go to R too (it runs them in order)
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use super::{Consistency, Fallback, Policy, PrimaryReason, ZoneAffinity};
use crate::node::Locality;
use crate::topology::{Shard, ShardId};
use crate::upstream::Node;

/// Where one read goes.
#[derive(Debug, Clone)]
pub enum ReadTarget {
    /// A replica. With `check`, the read must be shown to have run on data at least at that offset
    /// (a `ROLE` before it), or it is sent again elsewhere.
    Replica {
        /// The replica.
        node: Arc<Node>,
        /// The offset to check before delivering, if the replica is not known to have it.
        check: Option<u64>,
        /// Measure the replica's offset after the read too: the session has stayed on it long enough,
        /// and this lets its next reads go to any replica again.
        after: bool,
    },
    /// The primary, and why.
    Primary(PrimaryReason),
    /// Nowhere: `fallback = "error"` and no replica qualifies.
    Refuse(PrimaryReason),
}

/// A reply whose offset is unknown, waiting for a later measurement of its node to give it one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    node: u64,
    epoch: u64,
}

/// One session's read-consistency state in one shard.
#[derive(Debug, Default)]
pub struct ReadState {
    /// Commands sent to the primary whose replies have not been seen.
    unreplied_primary: u32,
    /// Offset every node serving this session's reads must have reached: its writes, and the most its
    /// reads can have seen.
    floor: u64,
    /// The node whose measurement set `floor`: reads it runs on the session's connection come after
    /// whatever set it, so they meet the floor by order alone.
    floor_node: u64,
    /// A reply whose offset is not known yet.
    pending: Option<Pending>,
    /// Replica with reads in flight, and how many: later reads go there too, in order.
    sticky: Option<(u64, u32)>,
    /// Reads sent to the pending node in a row, while its offset after them was not measured.
    stays: u32,
    /// The replication history (the shard's era) `floor` and `pending` belong to; `None` before the
    /// session's first command in the shard.
    era: Option<u64>,
    /// Until then, the session's reads go to the primary: a write of the session ran where its floor
    /// does not tell (a cluster redirect sent it to another node), and any replica within the lag limit
    /// has it once this passes.
    primary_until: Option<std::time::Instant>,
}

/// Replicas whose last probe put them within this of the primary may take a read they are not yet known
/// to be fresh enough for: the check before it tells, and on loopback or in one zone they almost always
/// are. A replica further behind (across a WAN) is tried only once it is known to have caught up: a check
/// it fails costs a round trip to it before the read goes to the primary. A replica level with the
/// primary reads as lagging by up to a probe interval and a probe's delay, so the bound leaves room for
/// both.
const OPTIMISTIC_LAG_MS: u64 = 250;

/// After this many reads kept on one replica (its offset after them not measured yet), the next one
/// measures it, so a connection's reads spread over the replicas.
const STAYS: u32 = 16;

impl ReadState {
    /// Chooses the node for a read. `global`: the offset of the newest write acknowledged through this
    /// proxy (`global` consistency).
    pub fn route(&mut self, shard: &Shard, policy: &Policy) -> ReadTarget {
        self.route_avoiding(shard, policy, None)
    }

    /// Chooses the node for a read, never the replica `avoid` (it just failed this read).
    pub fn route_avoiding(
        &mut self,
        shard: &Shard,
        policy: &Policy,
        avoid: Option<u64>,
    ) -> ReadTarget {
        let primary_id = shard.primary.as_ref().map(|p| p.id);
        let candidate =
            |n: &Arc<Node>| n.repl.is_eligible() && Some(n.id) != primary_id && Some(n.id) != avoid;
        let consistent = matches!(
            policy.consistency,
            Consistency::Session | Consistency::Global
        );
        match policy.consistency {
            Consistency::Primary => return ReadTarget::Primary(PrimaryReason::Policy),
            _ if consistent && self.unreplied_primary > 0 => {
                return ReadTarget::Primary(PrimaryReason::Session)
            }
            _ if consistent
                && self
                    .primary_until
                    .is_some_and(|t| std::time::Instant::now() < t) =>
            {
                return ReadTarget::Primary(PrimaryReason::Session)
            }
            _ => {}
        }
        if consistent {
            self.rebase(shard);
            self.resolve(shard);
        }
        // The lag limit needs checking only for a replica whose last probe does not already bound the age
        // of its data under it (its lag then, plus the time since).
        let mut lag_floor_once: Option<u64> = None;
        let mut lag_need = |n: &Node| {
            if n.repl.staleness_bound().is_some_and(|b| b < policy.max_lag) {
                0
            } else {
                *lag_floor_once.get_or_insert_with(|| lag_floor(shard, policy))
            }
        };
        let session_floor = if consistent { self.floor } else { 0 };
        let global = match policy.consistency {
            Consistency::Global => match shard.state.acked() {
                Some(o) => o,
                // The primary changed and is not measured in its history yet: it alone is known to have
                // every write acknowledged before.
                None => return ReadTarget::Primary(PrimaryReason::Session),
            },
            _ => 0,
        };
        let required = session_floor.max(global);
        let floor_node = self.floor_node;
        let mut need = |n: &Node| {
            // Reads on the node whose reply last met (or set) the floor run after it, so meet it too.
            let own = if n.id == floor_node { global } else { required };
            own.max(lag_need(n))
        };
        // Reads in flight on a replica, or a reply from a node whose offset is not measured yet: what the
        // session saw there is bounded only by the node's order, so this read goes there too (it runs
        // after them), or to the primary, which has everything.
        let stay = self
            .sticky
            .map(|(id, _)| id)
            .or(self.pending.map(|p| p.node))
            .filter(|_| consistent);
        if let Some(id) = stay {
            let target = match shard.replica_nodes().find(|n| n.id == id) {
                Some(n) if candidate(n) => ReadTarget::Replica {
                    node: n.clone(),
                    check: check(n, need(n)),
                    after: self.stays + 1 >= STAYS && self.sticky.is_none(),
                },
                _ => ReadTarget::Primary(PrimaryReason::Session),
            };
            self.stays += 1;
            return target;
        }
        self.stays = 0;
        // Replicas in the proxy's zone first, then the others (with no zone for the proxy, every
        // replica is in the second tier). Inside a tier: one known to be fresh enough, else one close
        // enough to be worth a check.
        for local in [true, false] {
            let in_tier = |n: &Node| (n.locality() == Locality::Local) == local;
            let known = least_outstanding(
                shard
                    .replica_nodes()
                    .filter(|n| in_tier(n) && candidate(n) && n.repl.offset() >= need(n)),
            );
            let chosen = known.or_else(|| {
                least_outstanding(shard.replica_nodes().filter(|n| {
                    in_tier(n)
                        && candidate(n)
                        && n.repl.lag_ms.load(Ordering::Relaxed) <= OPTIMISTIC_LAG_MS
                }))
            });
            if let Some(node) = chosen {
                let check = check(&node, need(&node));
                return ReadTarget::Replica {
                    node,
                    check,
                    after: false,
                };
            }
            let primary_local = shard
                .primary
                .as_ref()
                .is_some_and(|p| p.locality() == Locality::Local);
            if local && primary_local && policy.zone_affinity == ZoneAffinity::ReplicasAndPrimary {
                return ReadTarget::Primary(PrimaryReason::Zone);
            }
        }
        let reason = if shard.replicas.is_empty() {
            PrimaryReason::NoReplica
        } else if shard.replica_nodes().any(candidate) {
            PrimaryReason::Session
        } else {
            PrimaryReason::Lag
        };
        match policy.fallback {
            Fallback::Primary => ReadTarget::Primary(reason),
            // Refusing only makes sense when replicas are lagging or missing, not because this session
            // needs fresher data than they have: that is what the primary is for.
            Fallback::Error if reason != PrimaryReason::Session => ReadTarget::Refuse(reason),
            Fallback::Error => ReadTarget::Primary(reason),
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

    /// Notes replies from `node` seen while the epoch was `epoch`, and the offset measured after them
    /// (`after`), which then bounds what this session must see from now on. Without one (a read on a
    /// replica, a dedicated connection, a measurement that failed), the next measurement of the node
    /// gives it; until then the session's reads stay on that node or go to the primary.
    pub fn replied(
        &mut self,
        node: u64,
        to_primary: bool,
        count: u32,
        epoch: u64,
        after: Option<u64>,
    ) {
        self.abandoned(node, to_primary, count);
        // The read met the floor (it was checked, or its node known to have it): later reads on the
        // same node do by order.
        self.floor_node = node;
        match after {
            Some(o) => {
                self.raise(node, o);
                // Measured after every read of the node so far: the pending one too.
                if self.pending.is_some_and(|p| p.node == node) {
                    self.pending = None;
                }
            }
            None => self.pending = Some(Pending { node, epoch }),
        }
    }

    /// Commands sent to the primary and not yet answered.
    pub fn unreplied_primary(&self) -> u32 {
        self.unreplied_primary
    }

    /// The offset this session's reads must see (0 before its first measured reply).
    pub fn floor(&self) -> u64 {
        self.floor
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
        *self = ReadState {
            primary_until: self.primary_until,
            ..ReadState::default()
        };
    }

    /// Raises the floor to `offset`, measured on `node`.
    fn raise(&mut self, node: u64, offset: u64) {
        if offset > self.floor {
            self.floor = offset;
            self.floor_node = node;
        }
    }

    /// Moves the session's floor to the shard's current replication history (every command's plan does
    /// this first, so a floor is always of the history it was measured in). Offsets of another history
    /// say nothing here: a promoted replica goes on from the offset it had reached, and replicas that
    /// resynced may be at any offset, so an old floor could be met by data without the session's writes
    /// or never be met at all. Whatever the session wrote or read that survived is on the new primary: its
    /// first measurement after the change becomes the floor (reads go to the primary until then).
    pub fn rebase(&mut self, shard: &Shard) {
        let era = shard.state.era();
        if self.era.is_none() {
            self.era = Some(era);
        }
        // Without a primary there is nothing to measure: the old floor stands meanwhile.
        let Some(primary) = shard.primary.as_ref().filter(|_| self.era != Some(era)) else {
            return;
        };
        self.era = Some(era);
        if self.floor == 0 && self.pending.is_none() {
            return;
        }
        self.floor = 0;
        self.floor_node = 0;
        self.pending = Some(Pending {
            node: primary.id,
            epoch: shard.state.era_epoch(),
        });
    }

    /// Turns the pending reply into a floor once a later measurement of its node is in.
    fn resolve(&mut self, shard: &Shard) {
        let Some(p) = self.pending else { return };
        match shard.nodes().find(|n| n.id == p.node) {
            Some(n) => {
                if let Some(s) = n.repl.sample().filter(|s| s.epoch > p.epoch) {
                    self.pending = None;
                    self.raise(n.id, s.offset);
                }
            }
            // The node left the topology (failover): demand a fresh measurement of the current primary,
            // whose data includes everything the old node had acknowledged to this session.
            None => {
                self.pending = shard.primary.as_ref().map(|n| Pending {
                    node: n.id,
                    epoch: p.epoch,
                });
            }
        }
    }
}

/// The offset a read must see for its data to be no older than the lag limit: the primary's offset
/// `max_lag` ago (the first sample at or after then, which errs on the fresh side). 0 when the history
/// cannot tell; the prober's eligibility then stands alone.
fn lag_floor(shard: &Shard, policy: &Policy) -> u64 {
    let Some(then) = Instant::now().checked_sub(policy.max_lag) else {
        return 0;
    };
    shard.state.offset_since(then).unwrap_or(0)
}

/// The offset to check before a read on `node` is delivered, if the node is not already known to have
/// `required`.
fn check(node: &Node, required: u64) -> Option<u64> {
    (node.repl.offset() < required).then_some(required)
}

/// A session's read state, per shard: what it has written and read is known per replication history.
#[derive(Debug, Default)]
pub struct Reads(Vec<(ShardId, ReadState)>, Option<std::time::Instant>);

impl Reads {
    /// The state for reads of shard `id`.
    pub fn shard(&mut self, id: ShardId) -> &mut ReadState {
        match self.0.iter().position(|(s, _)| *s == id) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.0.push((
                    id,
                    ReadState {
                        primary_until: self.1,
                        ..ReadState::default()
                    },
                ));
                let last = self.0.len() - 1;
                &mut self.0[last].1
            }
        }
    }

    /// Sends every read of the session, in every shard, to the primary until `until`: a write ran where
    /// the floors do not follow it.
    pub fn primary_until(&mut self, until: std::time::Instant) {
        self.1 = Some(self.1.map_or(until, |t| t.max(until)));
        for (_, r) in &mut self.0 {
            r.primary_until = self.1;
        }
    }

    /// Forgets everything (RESET, database switch).
    pub fn clear(&mut self) {
        self.0.clear();
        self.1 = None;
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
    use std::time::Duration;

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

    fn policy(consistency: Consistency, fallback: Fallback) -> Policy {
        Policy {
            consistency,
            fallback,
            max_lag: Duration::from_secs(1),
            patience: Duration::from_secs(1),
            zone_affinity: ZoneAffinity::Replicas,
            guard: crate::route::Guard::default(),
        }
    }

    const SESSION: Consistency = Consistency::Session;
    const PRIMARY: Fallback = Fallback::Primary;

    fn replica(t: &ReadTarget) -> (u64, Option<u64>) {
        match t {
            ReadTarget::Replica { node, check, .. } => (node.id, *check),
            other => panic!("expected a replica, got {other:?}"),
        }
    }

    #[test]
    fn read_goes_to_primary_while_a_write_is_unanswered() {
        let (_, t) = setup();
        let mut s = ReadState::default();
        let p = t.primary().expect("primary").id;
        s.sent(p, true, 1);
        let r = s.route(t.shard(), &policy(SESSION, PRIMARY));
        assert!(matches!(r, ReadTarget::Primary(PrimaryReason::Session)));
    }

    #[test]
    fn read_after_write_goes_to_a_replica_known_to_hold_it_or_is_checked() {
        let (topo, t) = setup();
        let p = t.primary().expect("primary");
        let (r1, r2) = (&t.replicas()[0].node, &t.replicas()[1].node);
        r1.repl.record(topo.next_epoch(), 120);
        r2.repl.record(topo.next_epoch(), 150);
        let mut s = ReadState::default();
        s.sent(p.id, true, 1);
        // The write's reply says the primary was at 150 after it.
        s.replied(p.id, true, 1, topo.current_epoch(), Some(150));
        assert_eq!(
            replica(&s.route(t.shard(), &policy(SESSION, PRIMARY))),
            (r2.id, None),
            "r2 is known to have it"
        );
        // Neither known to have it: one is tried, and the read is checked before it is delivered.
        s.replied(p.id, true, 0, topo.current_epoch(), Some(200));
        let (_, check) = replica(&s.route(t.shard(), &policy(SESSION, PRIMARY)));
        assert_eq!(check, Some(200));
    }

    #[test]
    fn a_reply_without_an_offset_sends_reads_to_the_primary_until_a_later_measurement() {
        let (topo, t) = setup();
        let p = t.primary().expect("primary");
        let mut s = ReadState::default();
        s.replied(p.id, true, 0, topo.current_epoch(), None);
        assert!(matches!(
            s.route(t.shard(), &policy(SESSION, PRIMARY)),
            ReadTarget::Primary(PrimaryReason::Session)
        ));
        p.repl.record(topo.next_epoch(), 300);
        let (_, check) = replica(&s.route(t.shard(), &policy(SESSION, PRIMARY)));
        assert_eq!(check, Some(300));
    }

    #[test]
    fn reads_in_flight_keep_later_reads_on_their_replica_and_sequential_reads_spread() {
        let (_, t) = setup();
        let mut s = ReadState::default();
        let (first, _) = replica(&s.route(t.shard(), &policy(SESSION, PRIMARY)));
        s.sent(first, false, 1);
        for _ in 0..20 {
            assert_eq!(
                replica(&s.route(t.shard(), &policy(SESSION, PRIMARY))).0,
                first
            );
        }
        s.replied(first, false, 1, 0, Some(0));
        let picks: std::collections::HashSet<u64> = (0..200)
            .map(|_| replica(&s.route(t.shard(), &policy(SESSION, PRIMARY))).0)
            .collect();
        assert_eq!(picks.len(), 2, "sequential reads go to both replicas");
    }

    #[test]
    fn after_a_read_on_a_replica_reads_stay_there_until_it_is_measured_again() {
        let (topo, t) = setup();
        let mut s = ReadState::default();
        let session = policy(SESSION, PRIMARY);
        let (first, _) = replica(&s.route(t.shard(), &session));
        s.sent(first, false, 1);
        s.replied(first, false, 1, topo.current_epoch(), None);
        for _ in 0..20 {
            assert_eq!(replica(&s.route(t.shard(), &session)), (first, None));
        }
        let node = t.replica_nodes().find(|n| n.id == first).expect("replica");
        node.repl.record(topo.next_epoch(), 0);
        let picks: std::collections::HashSet<u64> = (0..200)
            .map(|_| replica(&s.route(t.shard(), &session)).0)
            .collect();
        assert_eq!(picks.len(), 2, "measured: reads spread again");
    }

    #[test]
    fn a_session_that_stayed_on_a_replica_long_enough_measures_it_and_moves_on() {
        let (topo, t) = setup();
        let session = policy(SESSION, PRIMARY);
        let mut s = ReadState::default();
        let (r, _) = replica(&s.route(t.shard(), &session));
        s.sent(r, false, 1);
        s.replied(r, false, 1, topo.current_epoch(), None);
        let mut measured = false;
        for _ in 0..STAYS {
            match s.route(t.shard(), &session) {
                ReadTarget::Replica { node, after, .. } => {
                    assert_eq!(node.id, r);
                    s.sent(r, false, 1);
                    s.replied(r, false, 1, topo.current_epoch(), after.then_some(0));
                    measured |= after;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(measured, "one of the reads measured the replica after it");
        let picks: std::collections::HashSet<u64> = (0..200)
            .map(|_| replica(&s.route(t.shard(), &session)).0)
            .collect();
        assert_eq!(picks.len(), 2, "the reads spread again");
    }

    #[test]
    fn a_write_after_a_read_is_checked_for_on_the_replica_the_session_stays_on() {
        let (topo, t) = setup();
        let p = t.primary().expect("primary").id;
        let session = policy(SESSION, PRIMARY);
        let mut s = ReadState::default();
        s.replied(p, true, 0, topo.current_epoch(), Some(100));
        let (r, check) = replica(&s.route(t.shard(), &session));
        assert_eq!(check, Some(100));
        s.sent(r, false, 1);
        s.replied(r, false, 1, topo.current_epoch(), None);
        // A second write: the replica the session stays on must be shown to have it too.
        s.sent(p, true, 1);
        s.replied(p, true, 1, topo.current_epoch(), Some(200));
        assert_eq!(replica(&s.route(t.shard(), &session)), (r, Some(200)));
    }

    /// The topology of `setup` after a failover to `r:1`: `p:1` and `r:2` are its replicas.
    fn failover(topo: &Topo) -> Arc<Topology> {
        let addr = |s: &str| Addr::parse(s).expect("addr");
        let t = topo.publish(Some(&addr("r:1")), &[addr("r:2"), addr("p:1")]);
        for r in t.replica_nodes() {
            r.repl.eligible.store(true, Ordering::Relaxed);
        }
        t
    }

    #[test]
    fn a_floor_of_a_former_primary_becomes_the_new_primary_s_first_measurement() {
        let (topo, t) = setup();
        let p = t.primary().expect("primary").clone();
        let session = policy(SESSION, PRIMARY);
        let mut s = ReadState::default();
        // Written on the old primary far along its history (the write's plan bound the session to it).
        s.rebase(t.shard());
        s.replied(p.id, true, 0, topo.current_epoch(), Some(9_000));
        let t = failover(&topo);
        let new = t.primary().expect("primary").clone();
        let r2 = t
            .replica_nodes()
            .find(|n| n.addr.as_str() == "r:2")
            .expect("r2")
            .clone();
        new.repl.record(topo.next_epoch() - 1, 1_000);
        r2.repl.record(topo.next_epoch(), 1_200);
        p.repl.record(topo.next_epoch(), 9_500);
        p.repl.eligible.store(false, Ordering::Relaxed);
        // Until the new primary is measured after the change, only it is known to have the writes.
        assert!(matches!(
            s.route(t.shard(), &session),
            ReadTarget::Primary(PrimaryReason::Session)
        ));
        new.repl.record(topo.next_epoch(), 1_100);
        // Its offset is the floor now: r2 has it; the old 9000 (another history) is no longer asked.
        assert_eq!(replica(&s.route(t.shard(), &session)), (r2.id, None));
        assert_eq!(s.floor(), 1_100);
    }

    #[test]
    fn a_session_with_nothing_to_see_reads_replicas_at_once_after_a_failover() {
        let (topo, _) = setup();
        let t = failover(&topo);
        let mut s = ReadState::default();
        let (r, check) = replica(&s.route(t.shard(), &policy(SESSION, PRIMARY)));
        assert_ne!(Some(r), t.primary().map(|p| p.id));
        assert_eq!(check, None);
    }

    #[test]
    fn global_reads_wait_for_the_new_primary_s_history_before_trusting_acknowledged_offsets() {
        let (topo, t) = setup();
        let global = policy(Consistency::Global, PRIMARY);
        let p = t.primary().expect("primary");
        t.shard().state.primary_measured(topo.next_epoch(), 9_000);
        t.shard().state.ack(9_000);
        let t = failover(&topo);
        let mut s = ReadState::default();
        assert!(
            matches!(
                s.route(t.shard(), &global),
                ReadTarget::Primary(PrimaryReason::Session)
            ),
            "acknowledged writes of the old history: only the new primary is known to have them"
        );
        t.shard().state.primary_measured(topo.next_epoch(), 1_100);
        assert_eq!(t.shard().state.acked(), Some(1_100));
        for r in t.replica_nodes().filter(|n| n.id != p.id) {
            r.repl.record(topo.next_epoch(), 1_100);
        }
        let (_, check) = replica(&s.route(t.shard(), &global));
        assert_eq!(check, None);
    }

    #[test]
    fn lagging_replicas_get_no_reads_and_error_fallback_refuses() {
        let (_, t) = setup();
        for r in t.replica_nodes() {
            r.repl.eligible.store(false, Ordering::Relaxed);
        }
        let mut s = ReadState::default();
        assert!(matches!(
            s.route(t.shard(), &policy(Consistency::Eventual, PRIMARY)),
            ReadTarget::Primary(PrimaryReason::Lag)
        ));
        assert!(matches!(
            s.route(t.shard(), &policy(Consistency::Eventual, Fallback::Error)),
            ReadTarget::Refuse(PrimaryReason::Lag)
        ));
    }

    #[test]
    fn eventual_reads_balance_by_outstanding_requests() {
        let (_, t) = setup();
        t.replicas()[0].node.outstanding.store(5, Ordering::Relaxed);
        let mut s = ReadState::default();
        let eventual = policy(Consistency::Eventual, PRIMARY);
        for _ in 0..10 {
            assert_eq!(
                replica(&s.route(t.shard(), &eventual)).0,
                t.replicas()[1].node.id
            );
        }
        t.replicas()[0].node.outstanding.store(0, Ordering::Relaxed);
        t.replicas()[1].node.outstanding.store(0, Ordering::Relaxed);
        let picks: std::collections::HashSet<u64> = (0..200)
            .map(|_| replica(&s.route(t.shard(), &eventual)).0)
            .collect();
        assert_eq!(picks.len(), 2, "ties are broken at random");
    }

    /// `p:1` and `r:1` in the proxy's zone `a` with `local`, else in `b`; `r:2` in `b`.
    fn zoned(local: &[&str]) -> Arc<Topology> {
        let rules = ["p:1", "r:1", "r:2"]
            .iter()
            .map(|n| {
                let zone = if local.contains(n) { "a" } else { "b" };
                crate::node::ZoneRule::parse(&format!("{n}={zone}")).expect("rule")
            })
            .collect();
        let mut settings = (*crate::upstream::test_settings()).clone();
        settings.zones = Arc::new(crate::node::Zones {
            own: Some(crate::node::Zone("a".into())),
            rules,
        });
        let topo = Topo::new(Arc::new(settings));
        let addr = |s: &str| Addr::parse(s).expect("addr");
        let t = topo.publish(Some(&addr("p:1")), &[addr("r:1"), addr("r:2")]);
        for r in t.replica_nodes() {
            r.repl.eligible.store(true, Ordering::Relaxed);
        }
        t
    }

    fn zone_policy(affinity: ZoneAffinity) -> Policy {
        Policy {
            zone_affinity: affinity,
            ..policy(Consistency::Eventual, PRIMARY)
        }
    }

    #[test]
    fn reads_stay_in_the_proxy_s_zone_while_a_replica_there_qualifies() {
        let t = zoned(&["r:1"]);
        let (r1, r2) = (&t.replicas()[0].node, &t.replicas()[1].node);
        let mut s = ReadState::default();
        let replicas = zone_policy(ZoneAffinity::Replicas);
        // Busier than the remote one: still chosen, locality comes before load.
        r1.outstanding.store(50, Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(replica(&s.route(t.shard(), &replicas)).0, r1.id);
        }
        // Lagging out of eligibility: the remote replica, then the primary.
        r1.repl.eligible.store(false, Ordering::Relaxed);
        assert_eq!(replica(&s.route(t.shard(), &replicas)).0, r2.id);
        r2.repl.eligible.store(false, Ordering::Relaxed);
        assert!(matches!(
            s.route(t.shard(), &replicas),
            ReadTarget::Primary(PrimaryReason::Lag)
        ));
    }

    #[test]
    fn replicas_and_primary_affinity_prefers_a_local_primary_to_a_remote_replica() {
        let both = zone_policy(ZoneAffinity::ReplicasAndPrimary);
        let mut s = ReadState::default();
        // A local replica first.
        let t = zoned(&["p:1", "r:1"]);
        assert_eq!(
            replica(&s.route(t.shard(), &both)).0,
            t.replicas()[0].node.id
        );
        // No local replica qualifies: the local primary, not the remote replica.
        t.replicas()[0]
            .node
            .repl
            .eligible
            .store(false, Ordering::Relaxed);
        assert!(matches!(
            s.route(t.shard(), &both),
            ReadTarget::Primary(PrimaryReason::Zone)
        ));
        // The same under `replicas`: the remote replica.
        assert_eq!(
            replica(&s.route(t.shard(), &zone_policy(ZoneAffinity::Replicas))).0,
            t.replicas()[1].node.id
        );
        // A remote primary: the remote replica.
        let t = zoned(&["r:1"]);
        t.replicas()[0]
            .node
            .repl
            .eligible
            .store(false, Ordering::Relaxed);
        assert_eq!(
            replica(&s.route(t.shard(), &both)).0,
            t.replicas()[1].node.id
        );
    }

    #[test]
    fn a_local_replica_behind_the_session_gives_way_to_a_remote_one_that_has_its_writes() {
        let t = zoned(&["r:1"]);
        let p = t.primary().expect("primary").id;
        let (r1, r2) = (&t.replicas()[0].node, &t.replicas()[1].node);
        r1.repl.record(1, 100);
        r2.repl.record(2, 500);
        // Far behind at its last probe: not even worth a check.
        r1.repl.lag_ms.store(5_000, Ordering::Relaxed);
        let mut s = ReadState::default();
        s.replied(p, true, 0, 0, Some(400));
        assert_eq!(
            replica(&s.route(t.shard(), &policy(SESSION, PRIMARY))),
            (r2.id, None)
        );
        // Caught up: back home.
        r1.repl.record(3, 600);
        let mut s = ReadState::default();
        s.replied(p, true, 0, 0, Some(400));
        assert_eq!(
            replica(&s.route(t.shard(), &policy(SESSION, PRIMARY))).0,
            r1.id
        );
    }

    #[test]
    fn a_read_must_see_what_the_primary_had_max_lag_ago() {
        let (_, t) = setup();
        let now = Instant::now();
        t.shard()
            .state
            .record_primary_offset(now - Duration::from_millis(1500), 100);
        t.shard()
            .state
            .record_primary_offset(now - Duration::from_millis(900), 400);
        t.shard().state.record_primary_offset(now, 500);
        let r = &t.replicas()[0].node;
        r.repl.record(1, 300);
        t.replicas()[1]
            .node
            .repl
            .eligible
            .store(false, Ordering::Relaxed);
        // Close to the primary at its last probe, but that probe is too old to bound its data now.
        r.repl.lag_ms.store(50, Ordering::Relaxed);
        let mut s = ReadState::default();
        // 1 s ago the primary was past 100 and at most at 400: a replica at 300 must show it has 400.
        let (_, check) = replica(&s.route(t.shard(), &policy(Consistency::Eventual, PRIMARY)));
        assert_eq!(check, Some(400));
    }
}
