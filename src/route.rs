//! Routing decisions, free of I/O: given a command's class, a session's state and the topology snapshot,
//! where the command goes ([`plan()`]); where a read goes and what the session has seen ([`read`]); what
//! a node's replies mean for the batch they answer ([`retry`]).

pub mod guard;
pub mod read;
pub mod retry;

use std::sync::Arc;

use serde::Deserialize;

use crate::command::{Class, Interrupt, Local};
use crate::topology::Shard;
use crate::upstream::{Node, Want};
pub use guard::Guard;
pub use read::{ReadState, ReadTarget, Reads};

/// How reads are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-your-writes and monotonic reads per client session, within the lag limit.
    Session,
    /// As `session`, and a read that begins after any client's write through this proxy was acknowledged
    /// sees that write (connection pools: write on one connection, read on another).
    Global,
    /// Any replica within the lag limit.
    Eventual,
    /// Every read goes to the primary.
    Primary,
}

/// What a read does when no replica is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Read from the primary.
    Primary,
    /// Fail the read with an error.
    Error,
}

/// Which nodes a read prefers when the proxy has a zone (`zone`); the tiers are tried in order, lag
/// gating and consistency applying unchanged inside each. Without a proxy zone, or for replicas whose
/// zone is unknown (they count as remote), there is one tier of replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneAffinity {
    /// Replicas in the proxy's zone, then replicas in other zones, then the primary (Valkey GLIDE's
    /// `AZ_AFFINITY`).
    #[default]
    Replicas,
    /// Replicas in the proxy's zone, then the primary if it is in the proxy's zone, then replicas in
    /// other zones, then the primary (GLIDE's `AZ_AFFINITY_REPLICAS_AND_PRIMARY`).
    ReplicasAndPrimary,
}

/// Why a read went to the primary (the label of `redsplit_reads_on_primary_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryReason {
    /// Read-your-writes or monotonic reads: no replica is known to hold what the session wrote or read.
    Session,
    /// Replicas exist but none is within the lag limit.
    Lag,
    /// There are no replicas.
    NoReplica,
    /// Inside MULTI/WATCH, or otherwise pinned.
    Transaction,
    /// `consistency = "primary"`, or a retry after a replica failed.
    Policy,
    /// `zone_affinity = "replicas-and-primary"`: no replica in the proxy's zone qualifies and the
    /// primary is in it.
    Zone,
}

impl From<PrimaryReason> for crate::metrics::ReadReason {
    fn from(r: PrimaryReason) -> crate::metrics::ReadReason {
        use crate::metrics::ReadReason as M;
        match r {
            PrimaryReason::Session => M::Session,
            PrimaryReason::Lag => M::Lag,
            PrimaryReason::NoReplica => M::NoReplica,
            PrimaryReason::Transaction => M::Transaction,
            PrimaryReason::Policy => M::Policy,
            PrimaryReason::Zone => M::Zone,
        }
    }
}

/// What the configuration says about reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Read consistency.
    pub consistency: Consistency,
    /// Where reads go when no replica qualifies.
    pub fallback: Fallback,
    /// No read is served from data older than this.
    pub max_lag: std::time::Duration,
    /// How long the primary may have been silent before a read only it may serve fails at once instead
    /// of waiting on it (`read_timeout_ms`: the wait a read would get).
    pub patience: std::time::Duration,
    /// Which zones' nodes reads prefer.
    pub zone_affinity: ZoneAffinity,
    /// The split-brain guard: writes are refused while too few replicas are good.
    pub guard: Guard,
}

/// Where one command goes.
#[derive(Debug, Clone)]
pub enum Plan {
    /// To `node` over a shared connection; `primary`: in its role as the primary. A read sent to the
    /// primary says why.
    Forward {
        /// The node.
        node: Arc<Node>,
        /// It is the shard's primary.
        primary: bool,
        /// Why a read went to the primary.
        reason: Option<PrimaryReason>,
        /// The offsets to measure around it.
        want: Want,
        /// A read must be shown to have run on data at least at this offset before it is delivered.
        check: Option<u64>,
    },
    /// To the primary on a connection of the session's own, kept (transactions, WATCH, subscriptions,
    /// MONITOR, tracking).
    Pin(Arc<Node>),
    /// To the primary on a connection of its own for this one command (blocking commands).
    Block(Arc<Node>),
    /// To the primary and to every replica (the script cache is per node); the client gets the
    /// primary's reply.
    Broadcast {
        /// The primary.
        primary: Arc<Node>,
        /// Every replica.
        replicas: Vec<Arc<Node>>,
    },
    /// Answered or handled by the proxy.
    Local(Local),
    /// At once, each on a connection of its own, to these nodes (`SCRIPT KILL` and `FUNCTION KILL` to
    /// every node running a script, `SHUTDOWN` to the primary): never held, never behind the script.
    /// Empty if no node is known at all.
    Interrupt(Vec<Arc<Node>>),
    /// Nowhere yet: no primary is known (a failover) or writes are held (a switchover, a replica
    /// promoted outside the proxy). The command waits, at most `write_hold_ms`.
    Hold,
    /// Nowhere: a read with `fallback = "error"` and no replica to serve it.
    Refuse(PrimaryReason),
    /// Nowhere: a command that may write, while the split-brain guard is closed (too few good replicas,
    /// see [`guard`]). Nothing is sent; the client is told why.
    Guarded(guard::Closed),
    /// Nowhere: a read only the primary may serve (no replica within the lag limit, or none has what
    /// the session saw), and the primary has answered no probe for longer than the read would wait,
    /// timing out rather than refusing connections (frozen, stalled by a fork, or cut off; one that
    /// refuses them is down, and the read waits for the failover). Its replicas cannot stand in: the proxy cannot tell a
    /// frozen primary from one that others still write to, so their data may be older than the lag
    /// limit. The read fails at once, saying so, rather than waiting on a node that is not answering.
    Silent(std::time::Duration),
}

/// Why a write cannot go to a primary now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWriter {
    /// No primary is known.
    NoPrimary,
    /// Writes are held for a switchover, or for a replica promoted outside the proxy.
    Held,
    /// The split-brain guard is closed: too few replicas are good (see [`guard`]).
    Guarded(guard::Closed),
}

/// The node writes go to now. Every command that may write, or that must run where writes run (state
/// changes of the session, WAIT), goes through here: the held-writes rule lives in this one place.
pub fn writer(shard: &Shard) -> Result<&Arc<Node>, NoWriter> {
    if shard.state.writes_held() {
        return Err(NoWriter::Held);
    }
    shard.primary.as_ref().ok_or(NoWriter::NoPrimary)
}

/// The node a command that may change data goes to now: the [`writer`], if the split-brain guard lets
/// writes through. Commands that only must run where writes run (SELECT, AUTH, WAIT) use [`writer`].
pub fn data_writer<'a>(shard: &'a Shard, guard: &Guard) -> Result<&'a Arc<Node>, NoWriter> {
    let p = writer(shard)?;
    guard.check(shard).map_err(NoWriter::Guarded)?;
    Ok(p)
}

/// Where a command of `class` goes in `shard`, for a session whose reads are `reads`. Reads are not held
/// by a switchover: only a primary that is gone holds them. `writes`: the command may change data
/// (see [`crate::command::writes_data`]): the split-brain guard may refuse it.
pub fn plan(
    class: Class,
    writes: bool,
    reads: &mut ReadState,
    shard: &Shard,
    policy: &Policy,
) -> Plan {
    // Replies to this command are measured in the shard's current replication history.
    reads.rebase(shard);
    // What the session must see is measured after its commands on the primary: the offset after a write
    // covers it, the one after a read bounds what it saw. After a read on a replica, the session stays
    // on that replica until a later measurement of it gives that bound (one ROLE less per read).
    let after = matches!(
        policy.consistency,
        Consistency::Session | Consistency::Global
    );
    let on_primary = |node: &Arc<Node>, reason| Plan::Forward {
        node: node.clone(),
        primary: true,
        reason,
        want: Want {
            before: false,
            after,
            acks: None,
        },
        check: None,
    };
    let no_guard = Guard::default();
    let guard = if writes { &policy.guard } else { &no_guard };
    let to_writer = |f: &dyn Fn(&Arc<Node>) -> Plan| match data_writer(shard, guard) {
        Ok(p) => f(p),
        Err(NoWriter::Guarded(closed)) => Plan::Guarded(closed),
        Err(NoWriter::NoPrimary | NoWriter::Held) => Plan::Hold,
    };
    match class {
        Class::Read => match reads.route(shard, policy) {
            ReadTarget::Replica { node, check, after } => Plan::Forward {
                node,
                primary: false,
                reason: None,
                want: Want {
                    before: check.is_some(),
                    after,
                    acks: None,
                },
                check,
            },
            ReadTarget::Primary(reason) => match &shard.primary {
                Some(p) => match primary_silent(p, policy) {
                    Some(silent) => Plan::Silent(silent),
                    None => on_primary(p, Some(reason)),
                },
                None => Plan::Hold,
            },
            ReadTarget::Refuse(reason) => Plan::Refuse(reason),
        },
        Class::Primary => to_writer(&|p| on_primary(p, None)),
        Class::Blocking => to_writer(&|p| Plan::Block(p.clone())),
        Class::Pin(_) => to_writer(&|p| Plan::Pin(p.clone())),
        Class::Broadcast => to_writer(&|p| Plan::Broadcast {
            primary: p.clone(),
            replicas: shard.replica_nodes().cloned().collect(),
        }),
        Class::Local(local) => Plan::Local(local),
        Class::Interrupt(what) => Plan::Interrupt(interrupted(shard, what)),
    }
}

/// How long `primary` has been silent, if longer than a read would wait on it (`policy.patience`) while
/// timing out rather than refusing connections: a read only it may serve then fails at once
/// ([`Plan::Silent`]), a new one or one sent again.
pub fn primary_silent(primary: &Node, policy: &Policy) -> Option<std::time::Duration> {
    primary
        .repl
        .stalled_for()
        .filter(|silent| *silent > policy.patience)
}

/// The nodes an interrupting command goes to. A script that runs past `busy-reply-threshold` makes its
/// node answer `-BUSY`, which the prober notes: `SCRIPT KILL` and `FUNCTION KILL` go to each such node (a
/// read-only script may run on a replica), else to the primary (a script not yet past the threshold
/// answers nothing, but Redis takes the kill once it is). `SHUTDOWN` goes to the primary. Neither waits
/// for a primary the topology names: one a script keeps from answering discovery is still the last one
/// known.
fn interrupted(shard: &Shard, what: Interrupt) -> Vec<Arc<Node>> {
    if what == Interrupt::Kill {
        let busy: Vec<Arc<Node>> = shard
            .nodes()
            .filter(|n| n.repl.is_busy())
            .cloned()
            .collect();
        if !busy.is_empty() {
            return busy;
        }
    }
    shard
        .primary
        .clone()
        .or_else(|| shard.state.last_primary())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Addr;
    use crate::topology::Topo;

    fn shard(primary: bool) -> (Arc<Topo>, Arc<crate::topology::Topology>) {
        let topo = Topo::new(crate::upstream::test_settings());
        let addr = |s: &str| Addr::parse(s).expect("addr");
        let p = addr("p:1");
        let t = topo.publish(primary.then_some(&p), &[addr("r:1")]);
        (topo, t)
    }

    const SESSION: Policy = Policy {
        consistency: Consistency::Session,
        fallback: Fallback::Primary,
        max_lag: std::time::Duration::from_secs(1),
        patience: std::time::Duration::from_secs(1),
        zone_affinity: ZoneAffinity::Replicas,
        guard: Guard {
            min_replicas: 0,
            max_lag: std::time::Duration::from_secs(10),
        },
    };

    /// `plan` for a command that writes unless it is a read.
    fn plan_(class: Class, reads: &mut ReadState, shard: &Shard, policy: &Policy) -> Plan {
        plan(class, class != Class::Read, reads, shard, policy)
    }

    fn is_primary(plan: &Plan) -> bool {
        matches!(plan, Plan::Forward { primary: true, .. })
    }

    #[test]
    fn writes_go_to_the_primary_and_wait_while_there_is_none() {
        let (_, t) = shard(true);
        let mut reads = ReadState::default();
        assert!(is_primary(&plan_(
            Class::Primary,
            &mut reads,
            t.shard(),
            &SESSION
        )));
        let (_, none) = shard(false);
        assert!(matches!(
            plan_(Class::Primary, &mut reads, none.shard(), &SESSION),
            Plan::Hold
        ));
    }

    #[test]
    fn held_writes_hold_every_command_that_may_write_but_no_read() {
        let (topo, t) = shard(true);
        for r in t.replica_nodes() {
            r.repl.set(crate::node::Why::Eligible);
        }
        topo.hold_writes(true);
        let mut reads = ReadState::default();
        for class in [
            Class::Primary,
            Class::Blocking,
            Class::Broadcast,
            Class::Pin(crate::command::Pin::Multi),
        ] {
            assert!(
                matches!(plan_(class, &mut reads, t.shard(), &SESSION), Plan::Hold),
                "{class:?}"
            );
        }
        assert!(matches!(
            plan_(Class::Read, &mut reads, t.shard(), &SESSION),
            Plan::Forward { primary: false, .. }
        ));
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
        topo.hold_writes(false);
        assert!(writer(t.shard()).is_ok());
    }

    #[test]
    fn a_replica_promoted_outside_the_proxy_holds_writes_until_another_primary_is_published() {
        let (topo, t) = shard(true);
        for r in t.replica_nodes() {
            r.repl.set(crate::node::Why::Eligible);
        }
        let replica = t.replica_nodes().next().expect("a replica").clone();
        topo.replica_promoted(&replica);
        let mut reads = ReadState::default();
        let now = topo.snapshot();
        assert!(matches!(
            plan_(Class::Primary, &mut reads, now.shard(), &SESSION),
            Plan::Hold
        ));
        assert!(matches!(
            plan_(Class::Read, &mut reads, now.shard(), &SESSION),
            Plan::Forward { primary: false, .. }
        ));
        // The source still names the old primary: writes stay held.
        let p = Addr::parse("p:1").expect("addr");
        let r = Addr::parse("r:1").expect("addr");
        let same = topo.publish(Some(&p), std::slice::from_ref(&r));
        assert_eq!(writer(same.shard()).err(), Some(NoWriter::Held));
        // It publishes the promoted replica: writes go there.
        let next = topo.publish(Some(&r), std::slice::from_ref(&p));
        assert_eq!(writer(next.shard()).map(|n| n.id).ok(), Some(replica.id));
    }

    #[test]
    fn a_promoted_replica_that_rejoins_as_a_replica_releases_writes_to_the_old_primary() {
        let (topo, t) = shard(true);
        let replica = t.replica_nodes().next().expect("a replica").clone();
        let long = std::time::Duration::from_secs(60);
        topo.replica_promoted(&replica);
        // Still listed, still a master: held, however long.
        topo.settle_promotion(&replica, false, std::time::Duration::ZERO);
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
        topo.settle_promotion(&replica, true, long);
        assert_eq!(
            writer(t.shard()).map(|n| n.addr.to_string()).ok(),
            Some("p:1".into())
        );
        // A switchover's hold is not released by it.
        topo.hold_writes(true);
        topo.replica_promoted(&replica);
        topo.settle_promotion(&replica, true, long);
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
    }

    #[test]
    fn a_promotion_a_sentinel_announces_holds_writes_until_it_happens_or_write_hold_passes() {
        let (topo, t) = shard(true);
        let replica = t.replica_nodes().next().expect("a replica").clone();
        let long = std::time::Duration::from_secs(60);
        topo.failover_announced(&replica.addr);
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
        // Still a replica, as it is until the sentinel's next tick: that ends nothing.
        topo.settle_promotion(&replica, true, long);
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
        // Seen master, then a replica again: the failover was undone.
        topo.replica_promoted(&replica);
        topo.settle_promotion(&replica, true, long);
        assert!(writer(t.shard()).is_ok());
        // Announced and never seen master: a stalled failover holds writes for write_hold_ms at most.
        topo.failover_announced(&replica.addr);
        topo.settle_promotion(&replica, false, long);
        assert_eq!(writer(t.shard()).err(), Some(NoWriter::Held));
        topo.settle_promotion(&replica, false, std::time::Duration::ZERO);
        assert!(writer(t.shard()).is_ok());
    }

    #[test]
    fn a_stray_master_the_tree_drops_releases_writes_only_after_write_hold() {
        let (topo, t) = shard(true);
        let replica = t.replica_nodes().next().expect("a replica").clone();
        topo.replica_promoted(&replica);
        // The source publishes the old primary without it (static discovery: an independent master).
        let p = Addr::parse("p:1").expect("addr");
        let dropped = topo.publish(Some(&p), &[]);
        topo.settle_promotion(&replica, false, std::time::Duration::from_secs(60));
        assert_eq!(
            writer(dropped.shard()).err(),
            Some(NoWriter::Held),
            "a failover may still be under way"
        );
        topo.settle_promotion(&replica, false, std::time::Duration::ZERO);
        assert!(writer(dropped.shard()).is_ok());
    }

    #[test]
    fn kills_go_to_busy_nodes_and_shutdown_to_the_primary_even_when_none_is_named_or_writes_are_held(
    ) {
        let (topo, t) = shard(true);
        let kill = Class::Interrupt(Interrupt::Kill);
        let shutdown = Class::Interrupt(Interrupt::Shutdown);
        let mut reads = ReadState::default();
        let targets = |class, shard: &Shard, reads: &mut ReadState| match plan_(
            class, reads, shard, &SESSION,
        ) {
            Plan::Interrupt(nodes) => nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        topo.hold_writes(true);
        assert_eq!(targets(kill, t.shard(), &mut reads), ["p:1"]);
        let replica = t.replica_nodes().next().expect("a replica").clone();
        replica.repl.answered();
        replica.repl.set_busy(true);
        assert_eq!(targets(kill, t.shard(), &mut reads), ["r:1"]);
        assert_eq!(targets(shutdown, t.shard(), &mut reads), ["p:1"]);
        // Discovery lost the primary (a script keeps it from answering): the last one known.
        let none = topo.publish(None, &[]);
        assert_eq!(targets(shutdown, none.shard(), &mut reads), ["p:1"]);
    }

    #[test]
    fn a_read_with_no_replica_goes_to_the_primary_or_is_refused() {
        let (_, t) = shard(true);
        let mut reads = ReadState::default();
        match plan_(Class::Read, &mut reads, t.shard(), &SESSION) {
            Plan::Forward {
                primary: true,
                reason: Some(PrimaryReason::Lag),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        let strict = Policy {
            fallback: Fallback::Error,
            ..SESSION
        };
        assert!(matches!(
            plan_(Class::Read, &mut reads, t.shard(), &strict),
            Plan::Refuse(PrimaryReason::Lag)
        ));
    }

    #[test]
    fn a_read_only_a_silent_primary_may_serve_fails_at_once() {
        let (_, t) = shard(true);
        let mut reads = ReadState::default();
        let primary = t.primary().expect("a primary").clone();
        // One failed probe: the primary is silent, not yet for longer than a read would wait.
        primary.repl.unanswered(false);
        let patient = Policy {
            patience: std::time::Duration::from_secs(3600),
            zone_affinity: ZoneAffinity::Replicas,
            ..SESSION
        };
        assert!(is_primary(&plan_(
            Class::Read,
            &mut reads,
            t.shard(),
            &patient
        )));
        let impatient = Policy {
            patience: std::time::Duration::ZERO,
            zone_affinity: ZoneAffinity::Replicas,
            ..SESSION
        };
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(matches!(
            plan_(Class::Read, &mut reads, t.shard(), &impatient),
            Plan::Silent(_)
        ));
        // Writes are not reads: they go to it (and wait for `write_timeout_ms`).
        assert!(is_primary(&plan_(
            Class::Primary,
            &mut reads,
            t.shard(),
            &impatient
        )));
        // A primary that refuses connections is down: a failover comes, and the read goes on to wait
        // for it as before (sent, failed, held).
        primary.repl.unanswered(true);
        assert!(is_primary(&plan_(
            Class::Read,
            &mut reads,
            t.shard(),
            &impatient
        )));
    }

    #[test]
    fn a_closed_guard_refuses_writes_but_not_reads_nor_commands_that_do_not_write() {
        let (_, t) = shard(true);
        for r in t.replica_nodes() {
            r.repl.set(crate::node::Why::LinkDown);
            r.repl.answered();
            r.repl.lag_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let guarded = Policy {
            guard: Guard {
                min_replicas: 1,
                max_lag: std::time::Duration::from_secs(10),
            },
            ..SESSION
        };
        let mut reads = ReadState::default();
        for class in [
            Class::Primary,
            Class::Blocking,
            Class::Pin(crate::command::Pin::Multi),
        ] {
            match plan(class, true, &mut reads, t.shard(), &guarded) {
                Plan::Guarded(closed) => assert_eq!((closed.good, closed.need), (0, 1)),
                other => panic!("{class:?}: {other:?}"),
            }
        }
        // A command that does not write (SELECT-like, PUBLISH) goes on; so do reads.
        assert!(is_primary(&plan(
            Class::Primary,
            false,
            &mut reads,
            t.shard(),
            &guarded
        )));
        assert!(is_primary(&plan(
            Class::Read,
            false,
            &mut reads,
            t.shard(),
            &guarded
        )));
        assert!(matches!(
            data_writer(t.shard(), &guarded.guard),
            Err(NoWriter::Guarded(_))
        ));
        assert!(writer(t.shard()).is_ok());
        // The replica's link comes back: the guard opens.
        for r in t.replica_nodes() {
            r.repl.set(crate::node::Why::Eligible);
        }
        assert!(is_primary(&plan(
            Class::Primary,
            true,
            &mut reads,
            t.shard(),
            &guarded
        )));
    }

    #[test]
    fn held_writes_wait_rather_than_fail_on_the_guard() {
        let (topo, t) = shard(true);
        topo.hold_writes(true);
        let guarded = Policy {
            guard: Guard {
                min_replicas: 1,
                max_lag: std::time::Duration::from_secs(10),
            },
            ..SESSION
        };
        let mut reads = ReadState::default();
        assert!(matches!(
            plan(Class::Primary, true, &mut reads, t.shard(), &guarded),
            Plan::Hold
        ));
    }
}
