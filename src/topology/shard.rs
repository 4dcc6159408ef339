//! One shard: a primary and the replicas under it, as a snapshot sees it ([`Shard`]), and what lives as
//! long as the shard rather than one snapshot ([`ShardState`]): the primary's offset history (lag in
//! time is read from it), whether writes are held (a switchover under way, a replica promoted outside the
//! proxy), and which replication history the primary's offsets belong to ([`ShardState::era`]).
//!
//! A replica promoted outside the proxy (`SENTINEL FAILOVER` sent to a sentinel, `REPLICAOF NO ONE` by an
//! operator, Redis `FAILOVER`) holds writes from the probe that sees it answer `ROLE` master:
//!
//! ```text
//! replica of the primary reports master ──┐
//! a sentinel announces it promotes one ───┴▶ held (writes wait, reads go on; the source looks again)
//!   ├─ another primary published ─────────────────────────────▶ released (writes go to it)
//!   ├─ the node, seen master, reports a replica again ────────▶ released (the old primary stays)
//!   └─ held write_hold_ms, and the tree no longer lists it ───▶ released (a stray master, not ours)
//!      or it was never seen master (the failover stalled)
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::{Addr, Identity};
use crate::upstream::Node;

/// A shard's number in the topology: 0 for the one shard a replicated primary is; one per slot range
/// in front of a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u16);

/// A primary and its replicas, in one snapshot.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Its number.
    pub id: ShardId,
    /// The primary, if one is known. Writes wait while there is none.
    pub primary: Option<Arc<Node>>,
    /// Replicas whose replication leads to the primary, directly or through other replicas, in
    /// discovery order.
    pub replicas: Vec<Replica>,
    /// What outlives this snapshot: offset history, held writes.
    pub state: Arc<ShardState>,
}

/// A replica in a shard.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The node.
    pub node: Arc<Node>,
    /// The master it follows: the primary, another replica, or an address only it knows (a relay in
    /// front of the primary).
    pub parent: Addr,
    /// What it is, as last learned (run id, replication history).
    pub identity: Option<Identity>,
}

impl Shard {
    /// An empty shard: no primary, no replicas.
    pub fn empty(id: ShardId, state: Arc<ShardState>) -> Shard {
        Shard {
            id,
            primary: None,
            replicas: Vec::new(),
            state,
        }
    }

    /// The replicas' nodes.
    pub fn replica_nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.replicas.iter().map(|r| &r.node)
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.primary
            .iter()
            .chain(self.replicas.iter().map(|r| &r.node))
    }

    /// The replica `node` (by id), if it is one of this shard's.
    pub fn replica(&self, node: u64) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node.id == node)
    }

    /// True if `node` (by id) is this shard's primary.
    pub fn is_primary(&self, node: u64) -> bool {
        self.primary.as_ref().is_some_and(|p| p.id == node)
    }
}

/// How far back a shard's offset history reaches. Lag older than this reads as this.
pub const HISTORY_SPAN: Duration = Duration::from_secs(120);

/// A replica of the primary found reporting itself a master: promoted outside the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The promoted node (by id).
    pub node: u64,
    /// The primary it was a replica of (by id).
    pub primary: u64,
    /// When the hold began.
    pub since: Instant,
    /// A probe saw it answer master (else a sentinel only announced that it is being promoted).
    pub seen_master: bool,
}

/// What a shard keeps across snapshots.
#[derive(Debug, Default)]
pub struct ShardState {
    /// `(when, primary offset)`, oldest first, for lag in time.
    history: Mutex<VecDeque<(Instant, u64)>>,
    /// Set during a manual switchover: writes wait as if there were no primary, reads go on.
    writes_held: AtomicBool,
    /// A replica of the primary that began to report itself a master: writes wait as during a
    /// switchover, until the topology settles.
    promoted: Mutex<Option<Promotion>>,
    /// `promoted` is set (read on every write, without the lock).
    promotion_held: AtomicBool,
    /// The replication history the primary's offsets belong to: bumped when another node becomes the
    /// primary or the primary's offset goes backwards (a restart). Offsets of different eras are not
    /// comparable.
    era: AtomicU64,
    /// The measurement epoch when `era` last changed: a measurement of the primary with a later epoch
    /// gives an offset in the new history.
    era_epoch: AtomicU64,
    /// `acked` is from a former era: the first measurement of the primary in this one replaces it.
    acked_stale: AtomicBool,
    /// The primary's offset after the newest write acknowledged through this proxy: what a read must see
    /// in `global` consistency.
    acked: AtomicU64,
    /// The last primary a snapshot named, kept while none is known: `SCRIPT KILL` and `SHUTDOWN` still
    /// reach a primary that a script keeps too busy to answer discovery.
    last_primary: arc_swap::ArcSwapOption<Node>,
}

impl ShardState {
    /// Holds (true) or releases (false) writes.
    pub fn hold_writes(&self, hold: bool) {
        self.writes_held.store(hold, Ordering::SeqCst);
    }

    /// True while writes are held: a switchover, or a replica promoted outside the proxy.
    pub fn writes_held(&self) -> bool {
        self.writes_held.load(Ordering::Relaxed) || self.promotion_held.load(Ordering::Acquire)
    }

    /// Holds writes for `node`, a replica of `primary` that reports itself a master (`seen_master`) or
    /// that a sentinel announced it promotes. True if this began a hold (none was under way for a
    /// promotion).
    pub fn hold_for_promotion(
        &self,
        node: u64,
        primary: u64,
        now: Instant,
        seen_master: bool,
    ) -> bool {
        let mut p = self.promotion();
        if let Some(held) = p.as_mut() {
            held.seen_master |= seen_master && held.node == node;
            return false;
        }
        *p = Some(Promotion {
            node,
            primary,
            since: now,
            seen_master,
        });
        self.promotion_held.store(true, Ordering::Release);
        true
    }

    /// The promotion writes are held for, if any.
    pub fn promoted(&self) -> Option<Promotion> {
        *self.promotion()
    }

    /// Ends the hold for a promotion. True if one was under way.
    pub fn end_promotion_hold(&self) -> bool {
        let mut p = self.promotion();
        self.promotion_held.store(false, Ordering::Release);
        p.take().is_some()
    }

    /// Notes a write acknowledged to a client, covered by the primary's offset `offset`.
    pub fn ack(&self, offset: u64) {
        self.acked.fetch_max(offset, Ordering::AcqRel);
    }

    /// The offset that covers every write acknowledged through this proxy so far; `None` right after the
    /// primary's history changed, until the primary is measured in the new one (what was acknowledged
    /// before is there, if anywhere).
    pub fn acked(&self) -> Option<u64> {
        (!self.acked_stale.load(Ordering::Acquire)).then(|| self.acked.load(Ordering::Acquire))
    }

    /// The primary's replication history, as a number that changes with it: when another node becomes
    /// the primary, or the primary's offset goes backwards. Offsets measured in different eras must not
    /// be compared.
    pub fn era(&self) -> u64 {
        self.era.load(Ordering::Acquire)
    }

    /// The measurement epoch at which the current era began: a measurement of the primary with a later
    /// epoch is of the new history.
    pub fn era_epoch(&self) -> u64 {
        self.era_epoch.load(Ordering::Acquire)
    }

    /// Starts a new era: the primary's offsets from now on are of another replication history. `epoch`:
    /// the current measurement epoch.
    pub fn new_era(&self, epoch: u64) {
        self.era_epoch.store(epoch, Ordering::Release);
        self.acked.store(0, Ordering::Release);
        self.acked_stale.store(true, Ordering::Release);
        self.era.fetch_add(1, Ordering::AcqRel);
    }

    /// Notes a measurement of the primary, taken at `epoch`, that found it at `offset`: once one was
    /// taken after the era began, acknowledged writes are covered by it.
    pub fn primary_measured(&self, epoch: u64, offset: u64) {
        if epoch > self.era_epoch() && self.acked_stale.load(Ordering::Acquire) {
            self.acked.fetch_max(offset, Ordering::AcqRel);
            self.acked_stale.store(false, Ordering::Release);
        }
    }

    fn promotion(&self) -> std::sync::MutexGuard<'_, Option<Promotion>> {
        self.promoted
            .lock()
            .expect("promotion lock is never poisoned: nothing panics while holding it")
    }

    /// The primary's offset at the first sample at or after `then`: data at that offset is no older than
    /// `then`. The newest sample if none is that recent; `None` without samples.
    pub fn offset_since(&self, then: Instant) -> Option<u64> {
        let h = self.history();
        let i = h.partition_point(|&(t, _)| t < then);
        h.get(i).or(h.back()).map(|&(_, o)| o)
    }

    /// Notes the primary a snapshot names.
    pub fn set_last_primary(&self, primary: &Arc<Node>) {
        let same = self
            .last_primary
            .load()
            .as_ref()
            .is_some_and(|p| p.id == primary.id);
        if !same {
            self.last_primary.store(Some(primary.clone()));
        }
    }

    /// The last primary any snapshot named, even if the current one names none.
    pub fn last_primary(&self) -> Option<Arc<Node>> {
        self.last_primary.load_full()
    }

    /// Records the primary's offset at `at`. True if it went backwards (a restart, a full resync): a
    /// new replication history.
    pub fn record_primary_offset(&self, at: Instant, offset: u64) -> bool {
        let mut h = self.history();
        let backwards = h.back().is_some_and(|&(_, o)| o > offset);
        if backwards {
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
        backwards
    }

    /// How far in time `offset` trails `reference` in the primary's history: the lag of a replica
    /// measured against the freshest one while the primary is gone.
    pub fn lag_behind(&self, offset: u64, reference: u64) -> Option<Duration> {
        let at = {
            let h = self.history();
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
        let h = self.history();
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

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, u64)>> {
        self.history
            .lock()
            .expect("history lock is never poisoned: nothing panics while holding it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_how_long_ago_the_primary_was_at_the_replica_offset() {
        let s = ShardState::default();
        let t0 = Instant::now();
        for (ms, off) in [(0, 100), (100, 200), (200, 200), (300, 400)] {
            s.record_primary_offset(t0 + Duration::from_millis(ms), off);
        }
        let now = t0 + Duration::from_millis(300);
        assert_eq!(s.lag_at(now, 400), Some(Duration::ZERO));
        // Level with the newest sample, asked later: whatever came since may be missing.
        assert_eq!(
            s.lag_at(now + Duration::from_millis(700), 400),
            Some(Duration::from_millis(700))
        );
        assert_eq!(s.lag_at(now, 250), Some(Duration::from_millis(100)));
        assert_eq!(s.lag_at(now, 150), Some(Duration::from_millis(300)));
        assert!(s.lag_at(now, 50).expect("known") >= HISTORY_SPAN);
    }
}
