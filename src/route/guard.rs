//! The split-brain guard: writes are refused while the primary has fewer than `min_replicas` replicas
//! connected and within `min_replicas_max_lag_ms` of it, as the proxy measures them (its probes).
//!
//! It closes the window in which a primary cut off from its replicas (a partition, or a Sentinel
//! failover that has not reached the proxy yet) keeps taking writes that are lost when it is demoted:
//! such a primary's replicas stop answering the proxy or report their link down, and the guard closes
//! before any write is sent. It is Redis's `min-replicas-to-write` / `min-replicas-max-lag`, judged by
//! the proxy, so it also holds when the primary's own setting is off or differs.
//!
//! ```text
//!   open ──a probe finds fewer than N good replicas──▶ closed (writes refused, nothing sent; reads go on)
//!   closed ──probes find N good replicas again──▶ open
//! ```

use std::time::Duration;

use crate::node::Why;
use crate::topology::Shard;

/// The guard's settings: `min_replicas` 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guard {
    /// Replicas that must be good for writes to be taken (`min_replicas`).
    pub min_replicas: u32,
    /// Largest lag at which a replica counts as good (`min_replicas_max_lag_ms`).
    pub max_lag: Duration,
}

/// The guard is closed: why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Replicas that count as good now.
    pub good: u32,
    /// Replicas needed (`min_replicas`).
    pub need: u32,
    /// The lag limit they are held to (`min_replicas_max_lag_ms`).
    pub max_lag: Duration,
}

impl Guard {
    /// True if the guard is configured.
    pub fn is_on(&self) -> bool {
        self.min_replicas > 0
    }

    /// `Err` while fewer than `min_replicas` replicas of `shard` are good (see [`good`]); always `Ok`
    /// when the guard is off.
    pub fn check(&self, shard: &Shard) -> Result<(), Closed> {
        if !self.is_on() {
            return Ok(());
        }
        let good = shard
            .replica_nodes()
            .filter(|n| good(&n.repl, self.max_lag))
            .count();
        let good = u32::try_from(good).unwrap_or(u32::MAX);
        if good >= self.min_replicas {
            Ok(())
        } else {
            Err(Closed {
                good,
                need: self.min_replicas,
                max_lag: self.max_lag,
            })
        }
    }
}

/// True if a replica counts for the guard: its last probe answered, it reported itself a replica with
/// its link to its master up (eligible for reads, or only over the read lag limits), and its data is
/// at most `max_lag` old: the lag its last probe measured plus the time since that probe (see
/// [`crate::node::ReplState::staleness_bound`]). A replica not yet probed, silent, with its link down,
/// busy with a script, or failing requests does not count: the guard errs on the side of refusing.
pub fn good(repl: &crate::node::ReplState, max_lag: Duration) -> bool {
    matches!(repl.why(), Why::Eligible | Why::Lag | Why::LagBytes)
        && repl.answering()
        && repl.staleness_bound().is_some_and(|s| s <= max_lag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Addr;
    use crate::topology::Topo;
    use std::sync::atomic::Ordering;

    const GUARD: Guard = Guard {
        min_replicas: 1,
        max_lag: Duration::from_secs(10),
    };

    fn two_replicas() -> (
        std::sync::Arc<Topo>,
        std::sync::Arc<crate::topology::Topology>,
    ) {
        let topo = Topo::new(crate::upstream::test_settings());
        let addr = |s: &str| Addr::parse(s).expect("addr");
        let t = topo.publish(Some(&addr("p:1")), &[addr("r:1"), addr("r:2")]);
        (topo, t)
    }

    /// Marks every replica answering, linked, `lag_ms` behind.
    fn probed(t: &crate::topology::Topology, why: Why, lag_ms: u64) {
        for r in t.replica_nodes() {
            r.repl.answered();
            r.repl.lag_ms.store(lag_ms, Ordering::Relaxed);
            r.repl.set(why);
        }
    }

    #[test]
    fn an_off_guard_never_refuses() {
        let (_, t) = two_replicas();
        assert_eq!(Guard::default().check(t.shard()), Ok(()));
    }

    #[test]
    fn replicas_not_yet_probed_do_not_count() {
        let (_, t) = two_replicas();
        assert_eq!(
            GUARD.check(t.shard()),
            Err(Closed {
                good: 0,
                need: 1,
                max_lag: GUARD.max_lag
            })
        );
    }

    #[test]
    fn linked_replicas_within_the_lag_count_even_over_the_read_lag_limit() {
        let (_, t) = two_replicas();
        probed(&t, Why::Lag, 2_000);
        let two = Guard {
            min_replicas: 2,
            ..GUARD
        };
        assert_eq!(two.check(t.shard()), Ok(()));
        let three = Guard {
            min_replicas: 3,
            ..GUARD
        };
        assert_eq!(three.check(t.shard()).map_err(|c| c.good), Err(2));
    }

    #[test]
    fn a_replica_lagging_past_the_limit_or_with_its_link_down_or_silent_does_not_count() {
        let (_, t) = two_replicas();
        probed(&t, Why::Eligible, 20);
        let mut replicas = t.replica_nodes();
        let (a, b) = (
            replicas.next().expect("a replica"),
            replicas.next().expect("two"),
        );
        let two = Guard {
            min_replicas: 2,
            max_lag: Duration::from_secs(1),
        };
        assert_eq!(two.check(t.shard()), Ok(()));
        a.repl.lag_ms.store(5_000, Ordering::Relaxed);
        assert_eq!(two.check(t.shard()).map_err(|c| c.good), Err(1));
        a.repl.lag_ms.store(20, Ordering::Relaxed);
        a.repl.set(Why::LinkDown);
        assert_eq!(two.check(t.shard()).map_err(|c| c.good), Err(1));
        a.repl.set(Why::Eligible);
        b.repl.unanswered(false);
        assert_eq!(two.check(t.shard()).map_err(|c| c.good), Err(1));
        // Unknown lag (not measurable yet) never counts.
        b.repl.answered();
        b.repl.lag_ms.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(two.check(t.shard()).map_err(|c| c.good), Err(1));
        b.repl.lag_ms.store(0, Ordering::Relaxed);
        assert_eq!(two.check(t.shard()), Ok(()));
    }
}
