//! Per-command cost of read routing: `route::ReadState::route` and the bookkeeping a session does around
//! every command it sends (`sent` when it goes upstream, `replied` when its reply comes back).
//!
//! Run with `cargo bench --bench route` (`-- --quick` for a short run, `-- 8_replicas` to filter).
//! Compare cases with each other, not with a number from another day: the machines are shared and noisy,
//! so ratios between cases hold and absolute times do not.
//!
//! The topology is a primary and 2 or 8 replicas, all eligible, every offset known, nobody outstanding
//! (so `least_outstanding` breaks a tie among all replicas at random, its most expensive case). No
//! connection is opened and no runtime is needed: nodes only connect when a pool is first used.
//!
//! Cases, per topology size:
//! - `route eventual`, `route session (fresh)`: the choice alone. `fresh` is a session with nothing
//!   pending, so it too balances over every replica at or past its floor.
//! - `route eventual (no ties)`: every replica has a different load, so no random tie-break is drawn;
//!   against `route eventual` it shows what the random numbers cost.
//! - `route session (behind a write)`: a write is unanswered, so the read goes to the primary at once.
//! - `read eventual`, `read session`: one read as a session handles it: route, `sent`, `replied`. In
//!   `session` the reply leaves the node pending until its next probe, so later reads stay on it: the
//!   steady state between two probes.
//! - `write`: one write to the primary: `sent`, `replied`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use redsplit::config::{Addr, Consistency, Fallback};
use redsplit::resp::Limits;
use redsplit::route::{Policy, ReadState, ReadTarget};
use redsplit::topology::{Topo, Topology};
use redsplit::upstream::Settings;

/// Replica counts benchmarked.
const SIZES: [usize; 2] = [2, 8];

fn main() {
    // Each call takes nanoseconds: short runs still gather plenty of iterations. Flags override these.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    for replicas in SIZES {
        routing(&mut c, replicas);
    }
    c.final_summary();
}

fn routing(c: &mut Criterion, replicas: usize) {
    let (topo, t) = topology(replicas);
    let primary = t.primary().expect("topology has a primary").id;

    let mut g = c.benchmark_group(format!("{replicas}_replicas"));
    g.bench_function("route eventual", |b| {
        let mut s = ReadState::default();
        b.iter(|| replica(s.route(t.shard(), &policy(Consistency::Eventual))))
    });
    // Distinct loads: the same walk over the replicas without drawing a random number per tie.
    for (load, r) in t.replica_nodes().enumerate() {
        r.outstanding.store(load, Ordering::Relaxed);
    }
    g.bench_function("route eventual (no ties)", |b| {
        let mut s = ReadState::default();
        b.iter(|| replica(s.route(t.shard(), &policy(Consistency::Eventual))))
    });
    for r in t.replica_nodes() {
        r.outstanding.store(0, Ordering::Relaxed);
    }
    g.bench_function("route session (fresh)", |b| {
        b.iter(|| {
            let mut s = ReadState::default();
            replica(s.route(t.shard(), &policy(Consistency::Session)))
        })
    });
    g.bench_function("route session (behind a write)", |b| {
        let mut s = ReadState::default();
        s.sent(primary, true, 1);
        b.iter(|| {
            let target = s.route(t.shard(), &policy(Consistency::Session));
            assert!(matches!(target, ReadTarget::Primary(_)), "{target:?}");
        })
    });
    for (name, consistency) in [
        ("read eventual", Consistency::Eventual),
        ("read session", Consistency::Session),
    ] {
        g.bench_function(name, |b| {
            let mut s = ReadState::default();
            b.iter(|| {
                let node = replica(s.route(t.shard(), &policy(consistency)));
                s.sent(node, false, 1);
                s.replied(node, false, 1, topo.current_epoch(), Some(1_000_000));
                node
            })
        });
    }
    g.bench_function("write", |b| {
        let mut s = ReadState::default();
        b.iter(|| {
            s.sent(primary, true, 1);
            s.replied(primary, true, 1, topo.current_epoch(), Some(1_000_000));
        })
    });
    g.finish();
}

/// A primary and `replicas` replicas, all eligible, with offsets from one probe round.
fn topology(replicas: usize) -> (Arc<Topo>, Arc<Topology>) {
    let settings = Settings {
        connections: 1,
        connect_timeout: Duration::from_secs(1),
        credentials: None,
        limits: Limits::default(),
        metrics: None,
        refresh: Default::default(),
        tls: None,
        zones: Default::default(),
        cluster: false,
    };
    let topo = Topo::new(Arc::new(settings));
    let addr = |s: String| Addr::parse(&s).expect("host:port");
    let replica_addrs: Vec<Addr> = (0..replicas)
        .map(|i| addr(format!("10.0.0.{}:6379", i + 2)))
        .collect();
    let t = topo.publish(Some(&addr("10.0.0.1:6379".into())), &replica_addrs);
    let epoch = topo.next_epoch();
    for n in t.nodes() {
        n.repl.record(epoch, 1_000_000);
    }
    for r in t.replica_nodes() {
        r.repl.eligible.store(true, Ordering::Relaxed);
    }
    (topo, t)
}

/// The read policy with `consistency`, a one-second lag limit and reads falling back to the primary.
fn policy(consistency: Consistency) -> Policy {
    Policy {
        consistency,
        fallback: Fallback::Primary,
        max_lag: Duration::from_secs(1),
        patience: Duration::from_secs(1),
        zone_affinity: Default::default(),
        guard: redsplit::route::Guard::default(),
    }
}

/// The replica a read went to.
fn replica(target: ReadTarget) -> u64 {
    match target {
        ReadTarget::Replica { node, .. } => node.id,
        other => panic!("every replica is eligible, yet the read got {other:?}"),
    }
}
