//! The Redis Cluster source: shards, their slots, primaries and replicas, learned from any node of the
//! cluster with `CLUSTER SHARDS` (Redis 7, Valkey 8), or `CLUSTER SLOTS` where that is unknown.
//!
//! Each snapshot holds one [`Shard`] per primary that owns slots, and a [`SlotMap`]. A shard keeps its
//! number ([`ShardId`]) and its [`ShardState`] (offset history, held writes) across snapshots for as long
//! as any of its nodes stays in it: a failover swaps roles within a shard, resharding moves slots between
//! shards, and neither changes which shard a session's read floors belong to.
//!
//! The cluster is asked again every `discovery_interval_ms`, at once when the data path asks
//! ([`Topo::request_refresh`]: a MOVED reply, a lost connection, a replica seen promoted).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    count_published, AddressMap, Generation, Replica, Shard, ShardId, ShardState, SlotMap,
};
use super::{Topo, Topology};
use crate::node::Addr;
use crate::resp::value::{int, text, Value};
use crate::upstream::control::{call, Control};

/// One shard as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Its primary, if one is up (`None` while it is failed and no replica has taken over).
    pub primary: Option<Addr>,
    /// Its replicas that are up, in the order the cluster lists them.
    pub replicas: Vec<Addr>,
    /// The slot ranges it owns, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Slots its primary is migrating to another shard or importing from one (`CLUSTER NODES`).
    pub moving: Vec<u16>,
}

/// What the topology remembers of cluster shards across snapshots.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Each shard ever seen: its number, its state, and the nodes it had last.
    shards: Vec<(ShardId, Arc<ShardState>, Vec<Addr>)>,
}

impl Known {
    /// The number and state of the shard with these members: the one that had any of them (and is not
    /// `taken` by another shard of the same snapshot already), else new.
    fn place(&mut self, members: &[Addr], taken: &[ShardId]) -> (ShardId, Arc<ShardState>) {
        let found = self
            .shards
            .iter_mut()
            .find(|(id, _, had)| !taken.contains(id) && had.iter().any(|a| members.contains(a)));
        if let Some((id, state, had)) = found {
            *had = members.to_vec();
            return (*id, state.clone());
        }
        let id = ShardId(self.shards.len() as u16);
        let state = Arc::new(ShardState::default());
        self.shards.push((id, state.clone(), members.to_vec()));
        (id, state)
    }
}

/// Follows the cluster reachable from `seeds` until cancelled. A slot being moved, or whose owner changed,
/// stays marked moving (its reads go to primaries) for `settle` after it was last seen so: the new
/// owner's replicas may lag behind the keys the move wrote there.
pub async fn run(
    topo: Arc<Topo>,
    seeds: Vec<Addr>,
    map: AddressMap,
    interval: Duration,
    settle: Duration,
    cancel: CancellationToken,
) {
    let mut conns: BTreeMap<Addr, Control> = BTreeMap::new();
    let mut last: Option<Vec<Described>> = None;
    // Slots moving or moved lately, and until when their reads stay on primaries.
    let mut recent: BTreeMap<u16, std::time::Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The nodes of the current snapshot first (they know the newest map), then the seeds.
        let snapshot = topo.snapshot();
        let mut ask: Vec<Addr> = snapshot.nodes().map(|n| n.addr.clone()).collect();
        for s in &seeds {
            if !ask.contains(s) {
                ask.push(s.clone());
            }
        }
        drop(snapshot);
        let mut found = None;
        for addr in ask {
            let conn = conns
                .entry(addr.clone())
                .or_insert_with(|| Control::new(topo.node(&addr)));
            if let Some(shards) = describe(conn, &map).await {
                found = Some(shards);
                break;
            }
        }
        // Slots being moved, as each primary knows them: a replica cannot tell that a key it lacks moved.
        if let Some(shards) = found.as_mut() {
            for d in shards.iter_mut() {
                let Some(p) = d.primary.clone() else { continue };
                let conn = conns
                    .entry(p.clone())
                    .or_insert_with(|| Control::new(topo.node(&p)));
                if let Some(Value::BulkString(nodes)) = call(conn, &[b"CLUSTER", b"NODES"]).await {
                    d.moving = moving_slots(&String::from_utf8_lossy(&nodes));
                }
            }
        }
        if let Some(shards) = found.as_mut() {
            settle_moves(shards, last.as_deref(), &mut recent, settle);
        }
        match found {
            Some(shards) if last.as_ref() != Some(&shards) => {
                topo.publish_cluster(&shards);
                last = Some(shards);
            }
            Some(_) => {}
            None => warn!("no cluster node answered CLUSTER SHARDS or CLUSTER SLOTS"),
        }
        tokio::select! {
            // Shutdown, or another source replaced this one.
            _ = cancel.cancelled() => return,
            // The periodic look.
            _ = tick.tick() => {}
            // The data path saw a redirect or a failure.
            _ = topo.refresh_requested() => {
                // Several sessions ask at once after one MOVED: one look serves them all.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Asks one node for the shards: `CLUSTER SHARDS`, else `CLUSTER SLOTS`. `None` if it does not answer
/// with a map that covers at least one slot.
async fn describe(conn: &mut Control, map: &AddressMap) -> Option<Vec<Described>> {
    let mut shards = match call(conn, &[b"CLUSTER", b"SHARDS"]).await? {
        Value::Array(items) => parse_shards(&items, map),
        Value::Error(e) => {
            debug!(upstream = %conn.node().addr, error = %e, "CLUSTER SHARDS refused; trying CLUSTER SLOTS");
            match call(conn, &[b"CLUSTER", b"SLOTS"]).await? {
                Value::Array(items) => parse_slots(&items, map),
                _ => return None,
            }
        }
        _ => return None,
    };
    shards.retain(|s| !s.slots.is_empty());
    shards.sort_by_key(|s| s.slots.first().map(|r| r.0));
    (!shards.is_empty()).then_some(shards)
}

/// Parses a `CLUSTER SHARDS` reply (RESP2: each shard a flat list of names and values).
fn parse_shards(items: &[Value], map: &AddressMap) -> Vec<Described> {
    let mut out = Vec::new();
    for shard in items {
        let Value::Array(fields) = shard else {
            continue;
        };
        let (mut slots, mut primary, mut replicas) = (Vec::new(), None, Vec::new());
        for pair in fields.chunks(2) {
            let [name, value] = pair else { continue };
            match (text(name).as_deref(), value) {
                (Some("slots"), Value::Array(bounds)) => {
                    slots = bounds
                        .chunks(2)
                        .filter_map(|b| match b {
                            [from, to] => Some((slot_number(from)?, slot_number(to)?)),
                            _ => None,
                        })
                        .collect();
                }
                (Some("nodes"), Value::Array(nodes)) => {
                    for node in nodes {
                        let Value::Array(f) = node else { continue };
                        let Some(n) = shard_node(f, map) else {
                            continue;
                        };
                        match (n.master, n.online) {
                            (true, true) => primary = Some(n.addr),
                            (false, true) => replicas.push(n.addr),
                            // A failed primary stays out: writes wait for its replica to take over.
                            (_, false) => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(Described {
            primary,
            replicas,
            slots,
            moving: Vec::new(),
        });
    }
    out
}

/// A node of a `CLUSTER SHARDS` reply.
struct ShardNode {
    addr: Addr,
    master: bool,
    online: bool,
}

fn shard_node(fields: &[Value], map: &AddressMap) -> Option<ShardNode> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|p| p.first().and_then(text).as_deref() == Some(name))
            .and_then(|p| p.get(1))
    };
    let ip = field("ip").and_then(text)?;
    // A node with only a TLS port (`tls-cluster yes`) lists that one.
    let port = field("port")
        .and_then(int)
        .filter(|&p| p > 0)
        .or_else(|| field("tls-port").and_then(int))?;
    let addr = node_addr(&ip, port)?;
    Some(ShardNode {
        addr: map.map(addr),
        master: field("role").and_then(text).as_deref() == Some("master"),
        online: field("health").and_then(text).as_deref() == Some("online"),
    })
}

/// Parses a `CLUSTER SLOTS` reply: one entry per slot range, its primary then its replicas; a shard is
/// the primary's ranges together.
fn parse_slots(items: &[Value], map: &AddressMap) -> Vec<Described> {
    let mut out: Vec<Described> = Vec::new();
    for range in items {
        let Value::Array(f) = range else { continue };
        let (Some(from), Some(to)) = (
            f.first().and_then(slot_number),
            f.get(1).and_then(slot_number),
        ) else {
            continue;
        };
        let mut nodes = f.iter().skip(2).filter_map(|n| match n {
            Value::Array(n) => {
                let ip = n.first().and_then(text)?;
                let port = n.get(1).and_then(int)?;
                node_addr(&ip, port).map(|a| map.map(a))
            }
            _ => None,
        });
        let Some(primary) = nodes.next() else {
            continue;
        };
        let replicas: Vec<Addr> = nodes.collect();
        match out
            .iter_mut()
            .find(|d| d.primary.as_ref() == Some(&primary))
        {
            Some(d) => d.slots.push((from, to)),
            None => out.push(Described {
                primary: Some(primary),
                replicas,
                slots: vec![(from, to)],
                moving: Vec::new(),
            }),
        }
    }
    for d in &mut out {
        d.slots.sort_unstable();
    }
    out
}

/// `ip:port`, an IPv6 address in brackets.
fn node_addr(ip: &str, port: i64) -> Option<Addr> {
    let text = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Addr::parse(&text).ok()
}

/// Marks in `shards` every slot moving now, or whose owner changed since `last` (no node in common), and
/// every one so marked within `settle`, as moving.
fn settle_moves(
    shards: &mut [Described],
    last: Option<&[Described]>,
    recent: &mut BTreeMap<u16, std::time::Instant>,
    settle: Duration,
) {
    let now = std::time::Instant::now();
    let owner = |shards: &[Described], slot: u16| -> Option<Vec<Addr>> {
        shards
            .iter()
            .find(|d| d.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|d| d.primary.iter().chain(&d.replicas).cloned().collect())
    };
    for d in shards.iter() {
        for &slot in &d.moving {
            recent.insert(slot, now + settle);
        }
    }
    if let Some(last) = last {
        for slot in 0..super::slots::SLOTS as u16 {
            if let (Some(was), Some(is)) = (owner(last, slot), owner(shards, slot)) {
                if !was.iter().any(|a| is.contains(a)) {
                    recent.insert(slot, now + settle);
                }
            }
        }
    }
    recent.retain(|_, until| *until > now);
    for &slot in recent.keys() {
        if let Some(d) = shards
            .iter_mut()
            .find(|d| d.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        {
            if !d.moving.contains(&slot) {
                d.moving.push(slot);
            }
        }
    }
    for d in shards.iter_mut() {
        d.moving.sort_unstable();
    }
}

/// The slots the node whose `CLUSTER NODES` reply this is (its `myself` line) migrates (`[42->-id]`) or
/// imports (`[42-<-id]`).
fn moving_slots(nodes: &str) -> Vec<u16> {
    let Some(myself) = nodes.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|f| f.split(',').any(|f| f == "myself"))
    }) else {
        return Vec::new();
    };
    myself
        .split(' ')
        .skip(8)
        .filter_map(|s| s.strip_prefix('['))
        .filter_map(|s| s.split('-').next()?.parse().ok())
        .collect()
}

fn slot_number(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Integer(n) => *n,
        other => text(other)?.parse().ok()?,
    };
    u16::try_from(n)
        .ok()
        .filter(|&s| usize::from(s) < super::slots::SLOTS)
}

impl Topo {
    /// Publishes the cluster's shards as a new snapshot. Nodes already known keep their connections and
    /// measurements; each shard keeps its number and state while any of its nodes remains in it.
    pub fn publish_cluster(&self, described: &[Described]) -> Arc<Topology> {
        let mut slots = SlotMap::default();
        let mut shards = Vec::with_capacity(described.len());
        {
            let mut known = self
                .cluster
                .lock()
                .expect("cluster shard registry lock is never poisoned");
            for (i, d) in described.iter().enumerate() {
                let members: Vec<Addr> = d.primary.iter().chain(&d.replicas).cloned().collect();
                let taken: Vec<ShardId> = shards.iter().map(|s: &Shard| s.id).collect();
                let (id, state) = known.place(&members, &taken);
                for &(from, to) in &d.slots {
                    slots.assign(from, to, i);
                }
                for &slot in &d.moving {
                    slots.set_moving(slot);
                }
                let primary = d.primary.as_ref().map(|a| self.node(a));
                let replicas = d
                    .replicas
                    .iter()
                    .map(|a| {
                        let node = self.node(a);
                        Replica {
                            identity: node.identity(),
                            node,
                            parent: d.primary.clone().unwrap_or_else(|| a.clone()),
                        }
                    })
                    .collect();
                shards.push(Shard {
                    id,
                    primary,
                    replicas,
                    state,
                });
            }
        }
        if shards.is_empty() {
            shards.push(Shard::empty(ShardId(0), self.state.clone()));
        }
        let old = self.current.load_full();
        let next = Arc::new(Topology {
            generation: Generation(old.generation.0 + 1),
            shards,
            aliases: Default::default(),
            slots: Some(slots),
        });
        let mut failovers = 0;
        for shard in &next.shards {
            let Some(p) = &shard.primary else { continue };
            p.set_primary(true);
            let before = old
                .shard_by_id(shard.id)
                .and_then(|s| s.primary.as_ref())
                .filter(|_| old.is_cluster());
            if before.is_some_and(|b| b.id != p.id) {
                failovers += 1;
            }
            if shard.state.last_primary().is_none_or(|l| l.id != p.id) {
                shard.state.new_era(self.current_epoch());
            }
            if shard.state.promoted().is_some_and(|pr| pr.primary != p.id) {
                shard.state.end_promotion_hold();
                info!(primary = %p.addr, "writes released: the topology follows the promoted replica");
            }
            shard.state.set_last_primary(p);
        }
        // A node no shard names primary any more (demoted by a failover) is no longer one.
        for n in old.nodes() {
            let still = next.shards.iter().any(|s| s.is_primary(n.id));
            if n.is_primary() && !still && next.shards.iter().any(|s| s.primary.is_some()) {
                n.set_primary(false);
            }
        }
        self.current.store(next.clone());
        self.failovers
            .fetch_add(failovers, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = &self.settings.metrics {
            count_published(m, &old, &next, false);
            m.cluster_shards.set(next.shards.len() as i64);
            for _ in 0..failovers {
                m.failovers.inc();
            }
        }
        self.changed.send_replace(next.generation);
        for s in &next.shards {
            let slots = next.slots.as_ref().map(|m| {
                let i = next.shards.iter().position(|x| x.id == s.id).unwrap_or(0);
                m.ranges(i)
                    .iter()
                    .map(|(a, b)| format!("{a}-{b}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            info!(
                generation = next.generation.0,
                shard = s.id.0,
                primary = s.primary.as_ref().map(|n| n.addr.to_string()).unwrap_or_else(|| "none".into()),
                replicas = %s.replica_nodes().map(|n| n.addr.to_string()).collect::<Vec<_>>().join(","),
                slots = %slots.unwrap_or_default(),
                "cluster topology published"
            );
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            Value::Integer(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("health"),
            bulk(health),
        ])
    }

    fn addr(s: &str) -> Addr {
        Addr::parse(s).expect("addr")
    }

    #[test]
    fn cluster_shards_give_each_shard_its_slots_its_online_primary_and_replicas() {
        let reply = vec![Value::Array(vec![
            bulk("slots"),
            Value::Array(vec![Value::Integer(0), Value::Integer(5460)]),
            bulk("nodes"),
            Value::Array(vec![
                node(7000, "master", "online"),
                node(7003, "replica", "online"),
                node(7004, "replica", "loading"),
            ]),
        ])];
        let shards = parse_shards(&reply, &AddressMap::default());
        assert_eq!(
            shards,
            [Described {
                primary: Some(addr("127.0.0.1:7000")),
                replicas: vec![addr("127.0.0.1:7003")],
                slots: vec![(0, 5460)],
                moving: vec![],
            }]
        );
        let failed = vec![Value::Array(vec![
            bulk("slots"),
            Value::Array(vec![Value::Integer(0), Value::Integer(5460)]),
            bulk("nodes"),
            Value::Array(vec![
                node(7000, "master", "failed"),
                node(7003, "replica", "online"),
            ]),
        ])];
        assert_eq!(
            parse_shards(&failed, &AddressMap::default())[0].primary,
            None
        );
    }

    #[test]
    fn an_ipv6_node_is_written_in_brackets_and_a_tls_only_node_by_its_tls_port() {
        assert_eq!(node_addr("::1", 7000), Some(addr("[::1]:7000")));
        let tls_only = vec![
            bulk("port"),
            Value::Integer(0),
            bulk("tls-port"),
            Value::Integer(7100),
            bulk("ip"),
            bulk("10.0.0.1"),
            bulk("role"),
            bulk("master"),
            bulk("health"),
            bulk("online"),
        ];
        let n = shard_node(&tls_only, &AddressMap::default()).expect("a node");
        assert_eq!(n.addr, addr("10.0.0.1:7100"));
    }

    #[test]
    fn the_slots_a_node_migrates_or_imports_come_from_its_own_line() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [42->-b2]\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [43-<-a1]\n";
        assert_eq!(moving_slots(nodes), [42]);
        let importing =
            "b2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922 [43-<-a1]\n";
        assert_eq!(moving_slots(importing), [43]);
        assert!(moving_slots("x 1:1@2 master - 0 0 1 connected 0-10\n").is_empty());
    }

    #[test]
    fn a_slot_that_changed_owner_stays_moving_for_the_settle_time() {
        let shard = |p: &str, slots: Vec<(u16, u16)>| Described {
            primary: Some(addr(p)),
            replicas: vec![],
            slots,
            moving: vec![],
        };
        let before = [
            shard("a:1", vec![(0, 8191)]),
            shard("b:1", vec![(8192, 16383)]),
        ];
        let mut after = [
            shard("a:1", vec![(0, 41), (43, 8191)]),
            shard("b:1", vec![(42, 42), (8192, 16383)]),
        ];
        let mut recent = BTreeMap::new();
        settle_moves(
            &mut after,
            Some(&before),
            &mut recent,
            Duration::from_secs(60),
        );
        assert_eq!(after[1].moving, [42]);
        assert!(after[0].moving.is_empty());
        // Still marked on the next look, though nothing moves now; not once the settle time is over.
        let mut again = after.clone();
        again[1].moving.clear();
        settle_moves(
            &mut again,
            Some(&after),
            &mut recent,
            Duration::from_secs(60),
        );
        assert_eq!(again[1].moving, [42]);
        let mut later = again.clone();
        later[1].moving.clear();
        recent
            .values_mut()
            .for_each(|t| *t = std::time::Instant::now());
        settle_moves(&mut later, Some(&again), &mut recent, Duration::ZERO);
        assert!(later[1].moving.is_empty());
    }

    #[test]
    fn cluster_slots_group_ranges_by_primary() {
        let entry = |from: i64, to: i64, p: i64, r: i64| {
            Value::Array(vec![
                Value::Integer(from),
                Value::Integer(to),
                Value::Array(vec![bulk("127.0.0.1"), Value::Integer(p), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Integer(r), bulk("id")]),
            ])
        };
        let reply = vec![
            entry(0, 99, 1, 2),
            entry(200, 300, 3, 4),
            entry(100, 199, 1, 2),
        ];
        let shards = parse_slots(&reply, &AddressMap::default());
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].slots, [(0, 99), (100, 199)]);
        assert_eq!(shards[0].replicas, [addr("127.0.0.1:2")]);
    }

    #[test]
    fn a_shard_keeps_its_number_and_state_through_a_failover_and_resharding() {
        let topo = Topo::new(crate::upstream::test_settings());
        let a = Described {
            primary: Some(addr("a:1")),
            replicas: vec![addr("a:2")],
            slots: vec![(0, 8191)],
            moving: vec![],
        };
        let b = Described {
            primary: Some(addr("b:1")),
            replicas: vec![addr("b:2")],
            slots: vec![(8192, 16383)],
            moving: vec![],
        };
        let first = topo.publish_cluster(&[a.clone(), b.clone()]);
        let id_b = first.shard_for_slot(9000).expect("owned").id;
        let state_b = first.shard_for_slot(9000).expect("owned").state.clone();
        // b's replica takes over, and b gives slot 0..100 to ... itself moving first in the order.
        let b2 = Described {
            primary: Some(addr("b:2")),
            replicas: vec![],
            slots: vec![(0, 100), (8192, 16383)],
            moving: vec![],
        };
        let a2 = Described {
            slots: vec![(101, 8191)],
            ..a
        };
        let next = topo.publish_cluster(&[b2, a2]);
        let shard = next.shard_for_slot(50).expect("owned");
        assert_eq!(shard.id, id_b);
        assert!(Arc::ptr_eq(&shard.state, &state_b));
        assert_eq!(
            shard.primary.as_ref().map(|p| p.addr.clone()),
            Some(addr("b:2"))
        );
        assert_eq!(next.shard_for_slot(9000).map(|s| s.id), Some(id_b));
        assert_eq!(topo.failovers(), 1);
    }
}
