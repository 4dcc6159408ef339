use super::*;

fn addr(s: &str) -> Addr {
    Addr::parse(s).expect("addr")
}

/// A topology whose primary is `primary` and whose replicas are `replicas`, as published right after a
/// switchover (the sentinels' links to the replicas are new, so it may list none).
fn published(primary: &str, replicas: &[&str]) -> (Arc<Topo>, Watched) {
    let topo = Topo::new(crate::upstream::test_settings());
    let replicas: Vec<Addr> = replicas.iter().map(|r| addr(r)).collect();
    let snapshot = topo.publish(Some(&addr(primary)), &replicas);
    let primary = snapshot.primary().cloned().expect("a primary");
    let watched = Watched::new(&snapshot, primary);
    (topo, watched)
}

fn view(listed: &[&str], promotable: &[&str]) -> SentinelView {
    SentinelView {
        listed: listed.iter().chain(promotable).map(|a| addr(a)).collect(),
        promotable: promotable.iter().map(|a| addr(a)).collect(),
    }
}

fn addrs(nodes: &[Arc<Node>]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.to_string()).collect()
}

#[test]
fn a_replica_the_topology_dropped_counts_while_a_sentinel_lists_it() {
    // Found by the chaos test: right after a switchover the topology listed no replica (the sentinels
    // flagged their new links down); a second switchover asked at once saw nothing to wait for, and a
    // sentinel whose link came up meanwhile promoted a replica still following the demoted primary.
    let (topo, watched) = published("p1:1", &[]);
    topo.node(&addr("r2:1")).repl.answered();
    let behind = replicas_behind(&topo, &watched, Some(&view(&["r2:1"], &[])), 100);
    assert_eq!(addrs(&behind), ["r2:1"]);
}

#[test]
fn a_replica_a_sentinel_could_promote_counts_unprobed() {
    let (topo, watched) = published("p1:1", &[]);
    let behind = replicas_behind(&topo, &watched, Some(&view(&[], &["r2:1"])), 100);
    assert_eq!(addrs(&behind), ["r2:1"]);
}

#[test]
fn a_listed_replica_unheard_of_and_not_promotable_is_left_out() {
    // A replica that died before this proxy knew it: the sentinels list it down for ever.
    let (topo, watched) = published("p1:1", &[]);
    let behind = replicas_behind(&topo, &watched, Some(&view(&["dead:1"], &[])), 100);
    assert!(behind.is_empty(), "{:?}", addrs(&behind));
}

#[test]
fn the_primary_listed_as_a_replica_is_not_waited_for() {
    let (topo, watched) = published("p1:1", &[]);
    topo.node(&addr("p1:1")).repl.answered();
    let behind = replicas_behind(&topo, &watched, Some(&view(&["p1:1"], &["p1:1"])), 100);
    assert!(behind.is_empty(), "{:?}", addrs(&behind));
}

#[test]
fn a_listed_replica_caught_up_is_not_behind() {
    let (topo, watched) = published("p1:1", &["r2:1"]);
    let r2 = topo.node(&addr("r2:1"));
    r2.repl.answered();
    r2.repl.record(1, 100);
    let behind = replicas_behind(&topo, &watched, Some(&view(&["r2:1"], &["r2:1"])), 100);
    assert!(behind.is_empty(), "{:?}", addrs(&behind));
    let behind = replicas_behind(&topo, &watched, Some(&view(&["r2:1"], &["r2:1"])), 101);
    assert_eq!(addrs(&behind), ["r2:1"]);
}

#[test]
fn a_switchover_without_a_target_prefers_a_caught_up_replica_in_the_primary_s_zone() {
    let rules = ["p:1=a", "near:1=a", "far:1=b"]
        .iter()
        .map(|r| crate::node::ZoneRule::parse(r).expect("rule"))
        .collect();
    let mut settings = (*crate::upstream::test_settings()).clone();
    settings.zones = Arc::new(crate::node::Zones { own: None, rules });
    let topo = Topo::new(Arc::new(settings));
    let t = topo.publish(Some(&addr("p:1")), &[addr("far:1"), addr("near:1")]);
    for r in t.replica_nodes() {
        r.repl
            .eligible
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let (far, near) = (&t.replicas()[0].node, &t.replicas()[1].node);
    far.repl.record(topo.next_epoch(), 900);
    near.repl.record(topo.next_epoch(), 800);
    let primary = t.primary().expect("primary").clone();
    let chosen = static_target(&t, &primary, None).expect("a target");
    assert_eq!(chosen.addr, near.addr, "same zone beats a larger offset");
    near.repl
        .eligible
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let chosen = static_target(&t, &primary, None).expect("a target");
    assert_eq!(
        chosen.addr, far.addr,
        "no eligible replica in the zone: any other"
    );
}
