//! Static-mode discovery: from seed addresses, find the replication tree by asking every node `INFO
//! server` and `INFO replication`, and decide which node is the primary.
//!
//! A node is known by its `run_id`, not by an address: an address that answers with the run id of a node
//! already known under a more direct address (a seed, then one a master lists among its replicas, then
//! one a replica names as its master) is an alias of it, never a second node, and the proxy talks to the
//! node through the direct address. So a replica that replicates through a relay (a tunnel, NAT, a
//! cross-region link) and names the relay as its master is placed under the primary the relay leads to.
//! A replica whose named master cannot be reached is placed by lineage: under the reachable master that
//! lists it among its replicas, or whose replication ID (`master_replid`) it shares.
//!
//! A node's own claim to be primary is not enough (after a failover the old primary may come back empty,
//! still saying `role:master`): every reachable node votes. A master votes for itself, a replica votes
//! for the master it follows. The primary is the reachable master with the most votes, and only if no
//! unreachable address gets more (the tree still follows a primary that is down: wait rather than guess).
//! Ties go to the current primary, then to the larger replication offset. A node that answers `-BUSY` (a
//! script running past `busy-reply-threshold`) is alive and votes as it last did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::resp::Value as OwnedFrame;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{AddressMap, Topo};
use crate::node::{Addr, Identity};
use crate::upstream::control::{call, Control};

/// What one node says about itself and its replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// What it is: run id and replication id (`None` if INFO server did not say).
    pub identity: Option<Identity>,
    /// Its role.
    pub role: SeenRole,
    /// `master_repl_offset`.
    pub offset: u64,
    /// Replicas connected to it (announced addresses, mapped).
    pub replicas: Vec<Addr>,
}

/// A node's role as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenRole {
    /// `role:master`.
    Master,
    /// `role:slave`, following `master`.
    Replica {
        /// The master it follows (mapped).
        master: Addr,
        /// `master_link_status:up`.
        link_up: bool,
    },
}

/// Parses `INFO server` and `INFO replication` (one text, either order), mapping announced addresses.
pub fn parse_info(text: &str, map: &AddressMap) -> Option<Seen> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
    };
    let offset = field("master_repl_offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let replicas = text
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains(":ip="))
        .filter_map(|l| {
            let kv = l.split_once(':')?.1;
            let get = |k: &str| {
                kv.split(',')
                    .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
            };
            Addr::parse(&format!("{}:{}", get("ip")?, get("port")?))
                .ok()
                .map(|a| map.map(a))
        })
        .collect();
    let role = match field("role")? {
        "master" => SeenRole::Master,
        "slave" => {
            let master = Addr::parse(&format!(
                "{}:{}",
                field("master_host")?,
                field("master_port")?
            ))
            .ok()?;
            SeenRole::Replica {
                master: map.map(master),
                link_up: field("master_link_status") == Some("up"),
            }
        }
        _ => return None,
    };
    Some(Seen {
        identity: Identity::from_info(text),
        role,
        offset,
        replicas,
    })
}

/// The tree discovery settled on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// The trusted primary, if any.
    pub primary: Option<Addr>,
    /// Replicas whose chain of masters leads to the primary, with the master each follows.
    pub replicas: Vec<(Addr, Addr)>,
    /// Other addresses of the nodes above (`alias -> address used`): the same process answers there.
    pub aliases: BTreeMap<Addr, Addr>,
}

/// Decides the primary and its tree from what every node said (`None`: unreachable).
pub fn decide(seen: &BTreeMap<Addr, Option<Seen>>, current: Option<&Addr>) -> Decision {
    // A replica votes for the root of its chain (a sub-replica for its replica's master, and so on), so
    // a replica with sub-replicas never outvotes the primary.
    let mut votes: BTreeMap<&Addr, usize> = BTreeMap::new();
    for (addr, s) in seen {
        match s {
            Some(Seen {
                role: SeenRole::Master,
                ..
            }) => *votes.entry(addr).or_default() += 1,
            Some(Seen {
                role: SeenRole::Replica { master, .. },
                ..
            }) => *votes.entry(root(seen, master)).or_default() += 1,
            None => {}
        }
    }
    let is_master = |a: &Addr| {
        matches!(
            seen.get(a),
            Some(Some(Seen {
                role: SeenRole::Master,
                ..
            }))
        )
    };
    let offset = |a: &Addr| seen.get(a).and_then(|s| s.as_ref()).map_or(0, |s| s.offset);
    let best = votes
        .iter()
        .filter(|(a, _)| is_master(a))
        .max_by_key(|(a, n)| (**n, Some(**a) == current, offset(a)))
        .map(|(a, n)| ((*a).clone(), *n));
    let Some((primary, n)) = best else {
        return Decision::default();
    };
    // The only competing addresses are other masters (ties already went to the current primary) and
    // unreachable ones the tree still follows: as many votes for a dead primary means the tree does not
    // agree yet.
    if votes
        .iter()
        .any(|(a, m)| **a != primary && (*m > n || (*m == n && !is_master(a))))
    {
        return Decision::default();
    }
    let replicas = seen
        .iter()
        .filter_map(|(addr, s)| match s {
            Some(Seen {
                role: SeenRole::Replica { master, .. },
                ..
            }) if *root(seen, master) == primary => Some((addr.clone(), master.clone())),
            _ => None,
        })
        .collect();
    Decision {
        primary: Some(primary),
        replicas,
        aliases: BTreeMap::new(),
    }
}

/// The first address up the chain from `start` that is not a reachable replica: a master, or a node
/// that did not answer. Bounded, in case replicas follow each other in a loop.
fn root<'a>(seen: &'a BTreeMap<Addr, Option<Seen>>, start: &'a Addr) -> &'a Addr {
    let mut hop = start;
    for _ in 0..16 {
        match seen.get(hop) {
            Some(Some(Seen {
                role: SeenRole::Replica { master, .. },
                ..
            })) => hop = master,
            _ => break,
        }
    }
    hop
}

/// How directly an address was learned: the proxy talks to a node through its most direct address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Directness {
    /// Configured (a seed).
    Given,
    /// Listed by a master among its replicas.
    Listed,
    /// Named by a replica as its master: possibly a relay in front of the master.
    Named,
}

/// Every address asked in one round and what it said (`None`: unreachable), with how directly each was
/// learned and in which order (ties go to the first learned).
#[derive(Debug, Default)]
pub struct Round {
    /// What each address said.
    pub seen: BTreeMap<Addr, Option<Seen>>,
    learned: BTreeMap<Addr, (Directness, usize)>,
}

impl Round {
    /// Notes that `addr` was learned `how`; keeps the most direct way.
    pub fn learn(&mut self, addr: &Addr, how: Directness) {
        let order = self.learned.len();
        let e = self.learned.entry(addr.clone()).or_insert((how, order));
        e.0 = e.0.min(how);
    }

    /// Records what `addr` said.
    pub fn saw(&mut self, addr: Addr, info: Option<Seen>) {
        if let Some(s) = &info {
            for r in &s.replicas {
                self.learn(r, Directness::Listed);
            }
            if let SeenRole::Replica { master, .. } = &s.role {
                self.learn(master, Directness::Named);
            }
        }
        self.seen.insert(addr, info);
    }

    /// The addresses learned but not asked yet, most direct first.
    fn unasked(&self) -> Vec<Addr> {
        let mut v: Vec<(&(Directness, usize), &Addr)> = self
            .learned
            .iter()
            .filter(|(a, _)| !self.seen.contains_key(*a))
            .map(|(a, k)| (k, a))
            .collect();
        v.sort();
        v.into_iter().map(|(_, a)| a.clone()).collect()
    }

    /// One entry per node: addresses answering with the run id of a node known under a more direct
    /// address become that address everywhere (as a replica's master, in a master's replica list), and
    /// replicas whose master cannot be reached are placed by lineage. Returns the resolved view and the
    /// aliases found (`alias -> address used`).
    pub fn resolve(&self) -> (BTreeMap<Addr, Option<Seen>>, BTreeMap<Addr, Addr>) {
        let rank = |a: &Addr| {
            self.learned
                .get(a)
                .copied()
                .unwrap_or((Directness::Named, usize::MAX))
        };
        let mut by_run: BTreeMap<&str, &Addr> = BTreeMap::new();
        for (addr, s) in &self.seen {
            let Some(id) = s.as_ref().and_then(|s| s.identity.as_ref()) else {
                continue;
            };
            let best = by_run.entry(&id.run_id.0).or_insert(addr);
            if rank(addr) < rank(best) {
                *best = addr;
            }
        }
        let aliases: BTreeMap<Addr, Addr> = self
            .seen
            .iter()
            .filter_map(|(addr, s)| {
                let id = s.as_ref()?.identity.as_ref()?;
                let to = *by_run.get(id.run_id.0.as_str())?;
                (to != addr).then(|| (addr.clone(), to.clone()))
            })
            .collect();
        let canon = |a: &Addr| aliases.get(a).cloned().unwrap_or_else(|| a.clone());
        let mut out: BTreeMap<Addr, Option<Seen>> = self
            .seen
            .iter()
            .filter(|(a, _)| !aliases.contains_key(*a))
            .map(|(a, s)| {
                let s = s.clone().map(|mut s| {
                    s.replicas = s.replicas.iter().map(&canon).collect();
                    if let SeenRole::Replica { master, .. } = &mut s.role {
                        *master = canon(master);
                    }
                    s
                });
                (a.clone(), s)
            })
            .collect();
        place_by_lineage(&mut out);
        (out, aliases)
    }
}

/// A replica whose master is not a node that answered follows the reachable master that lists it among
/// its replicas, or the one whose replication ID it reports (the history it is synced with). Only a
/// master's current replication ID counts: a promoted replica keeps the old one as its second ID, and
/// replicas still following the old primary must not vote for it.
fn place_by_lineage(seen: &mut BTreeMap<Addr, Option<Seen>>) {
    let masters: Vec<(Addr, Option<Identity>, Vec<Addr>)> = seen
        .iter()
        .filter_map(|(a, s)| match s {
            Some(s) if s.role == SeenRole::Master => {
                Some((a.clone(), s.identity.clone(), s.replicas.clone()))
            }
            _ => None,
        })
        .collect();
    let reachable: BTreeSet<Addr> = seen
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(a, _)| a.clone())
        .collect();
    for (addr, s) in seen.iter_mut() {
        let Some(Seen {
            identity,
            role: SeenRole::Replica { master, .. },
            ..
        }) = s
        else {
            continue;
        };
        if reachable.contains(master) {
            continue;
        }
        let replid = identity.as_ref().and_then(|i| i.replid.as_ref());
        let mut found = masters.iter().filter(|(_, id, listed)| {
            listed.contains(addr)
                || replid.is_some_and(|r| id.as_ref().and_then(|i| i.replid.as_ref()) == Some(r))
        });
        if let (Some((m, _, _)), None) = (found.next(), found.next()) {
            *master = m.clone();
        }
    }
}

/// What asking one address got.
enum Asked {
    /// What it said.
    Seen(Option<Seen>),
    /// `-BUSY`: a script or function runs there past `busy-reply-threshold`. It is alive, and what it
    /// said last still holds: a script cannot change a node's role.
    Busy,
}

/// Asks `addr` who it is and what it replicates.
async fn ask(conn: &mut Control, map: &AddressMap) -> Asked {
    let mut text = String::new();
    for section in [&b"server"[..], b"replication"] {
        match call(conn, &[b"INFO", section]).await {
            Some(OwnedFrame::BulkString(b)) => text.push_str(&String::from_utf8_lossy(&b)),
            Some(OwnedFrame::Error(e)) if e.starts_with("BUSY") => return Asked::Busy,
            _ => return Asked::Seen(None),
        }
    }
    Asked::Seen(parse_info(&text, map))
}

/// Runs static discovery until `cancel` fires.
pub async fn run(
    topo: Arc<Topo>,
    seeds: Vec<Addr>,
    map: AddressMap,
    interval: Duration,
    cancel: CancellationToken,
) {
    let seed_set: BTreeSet<Addr> = seeds.iter().cloned().collect();
    let mut known: Vec<Addr> = Vec::new();
    let mut conns: BTreeMap<Addr, Control> = BTreeMap::new();
    let mut missing: BTreeMap<Addr, u32> = BTreeMap::new();
    // What each address said last, for one that answers BUSY now.
    let mut last: BTreeMap<Addr, Seen> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut round = Round::default();
        for s in &seeds {
            round.learn(s, Directness::Given);
        }
        for a in &known {
            round.learn(a, Directness::Named);
        }
        // Ask every known node; newly referenced nodes are asked in the same round.
        for _ in 0..4 {
            let ask_now = round.unasked();
            if ask_now.is_empty() {
                break;
            }
            for addr in ask_now {
                let conn = conns
                    .entry(addr.clone())
                    .or_insert_with(|| Control::new(topo.node(&addr)));
                let info = match ask(conn, &map).await {
                    Asked::Seen(seen) => seen,
                    Asked::Busy => last.get(&addr).cloned(),
                };
                if let Some(s) = &info {
                    last.insert(addr.clone(), s.clone());
                }
                round.saw(addr, info);
            }
        }
        let (seen, aliases) = round.resolve();
        for (addr, s) in &seen {
            if let Some(id) = s.as_ref().and_then(|s| s.identity.clone()) {
                topo.node(addr).set_identity(id);
            }
        }
        let snapshot = topo.snapshot();
        let current = snapshot.primary().map(|n| n.addr.clone());
        let mut decision = decide(&seen, current.as_ref());
        decision.aliases = aliases
            .into_iter()
            .filter(|(_, to)| {
                decision.primary.as_ref() == Some(to)
                    || decision.replicas.iter().any(|(r, _)| r == to)
            })
            .collect();
        if decision.primary.is_none() && current.is_some() {
            warn!(current = %current.as_ref().map(Addr::to_string).unwrap_or_default(), "no primary the tree agrees on; writes wait");
        }
        topo.publish_if_changed(&decision);
        known = forget_long_gone(&round.seen, &seed_set, &mut missing, &mut conns);
        last.retain(|a, _| known.contains(a));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            // A failure on the data path: look again now.
            _ = topo.refresh_requested() => info!("topology refresh requested"),
        }
    }
}

/// The addresses to ask next round: all seen this round, except discovered ones (never seeds) that no
/// node has answered from or referred to for 60 rounds, whose connections are dropped.
fn forget_long_gone(
    seen: &BTreeMap<Addr, Option<Seen>>,
    seeds: &BTreeSet<Addr>,
    missing: &mut BTreeMap<Addr, u32>,
    conns: &mut BTreeMap<Addr, Control>,
) -> Vec<Addr> {
    for (addr, s) in seen {
        if s.is_some() {
            missing.remove(addr);
        } else if !seeds.contains(addr) {
            *missing.entry(addr.clone()).or_default() += 1;
        }
    }
    let referenced = |addr: &Addr| {
        seen.values().flatten().any(|s| {
            s.replicas.contains(addr)
                || matches!(&s.role, SeenRole::Replica { master, .. } if master == addr)
        })
    };
    let gone: BTreeSet<Addr> = missing
        .iter()
        .filter(|(a, rounds)| **rounds > 60 && !referenced(a))
        .map(|(a, _)| a.clone())
        .collect();
    for addr in &gone {
        debug!(node = %addr, "forgetting unreachable node");
        missing.remove(addr);
        conns.remove(addr);
    }
    seen.keys()
        .filter(|a| !gone.contains(*a))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Addr {
        Addr::parse(s).expect("addr")
    }

    fn master(offset: u64) -> Option<Seen> {
        Some(Seen {
            identity: None,
            role: SeenRole::Master,
            offset,
            replicas: vec![],
        })
    }

    fn replica(of: &str) -> Option<Seen> {
        Some(Seen {
            identity: None,
            role: SeenRole::Replica {
                master: a(of),
                link_up: true,
            },
            offset: 0,
            replicas: vec![],
        })
    }

    fn seen(nodes: &[(&str, Option<Seen>)]) -> BTreeMap<Addr, Option<Seen>> {
        nodes.iter().map(|(k, v)| (a(k), v.clone())).collect()
    }

    #[test]
    fn the_master_its_replicas_follow_is_the_primary() {
        let s = seen(&[
            ("p:1", master(10)),
            ("r:1", replica("p:1")),
            ("r:2", replica("p:1")),
        ]);
        let d = decide(&s, None);
        assert_eq!(d.primary, Some(a("p:1")));
        assert_eq!(d.replicas.len(), 2);
    }

    #[test]
    fn an_old_primary_back_empty_is_not_trusted() {
        // After a failover r:1 leads; p:1 restarted empty and claims master again.
        let s = seen(&[
            ("p:1", master(0)),
            ("r:1", master(500)),
            ("r:2", replica("r:1")),
        ]);
        assert_eq!(decide(&s, Some(&a("p:1"))).primary, Some(a("r:1")));
    }

    #[test]
    fn a_promoted_replica_waits_until_the_tree_follows_it() {
        // p:1 is down; r:1 was promoted by hand; r:2 still follows p:1.
        let s = seen(&[("p:1", None), ("r:1", master(500)), ("r:2", replica("p:1"))]);
        assert_eq!(decide(&s, Some(&a("p:1"))).primary, None);
        let s = seen(&[("p:1", None), ("r:1", master(500)), ("r:2", replica("r:1"))]);
        assert_eq!(decide(&s, Some(&a("p:1"))).primary, Some(a("r:1")));
    }

    #[test]
    fn a_lone_promoted_replica_is_trusted() {
        let s = seen(&[("p:1", None), ("r:1", master(500))]);
        assert_eq!(decide(&s, Some(&a("p:1"))).primary, Some(a("r:1")));
    }

    #[test]
    fn replicas_of_replicas_belong_to_the_tree_with_their_parent() {
        let s = seen(&[
            ("p:1", master(9)),
            ("a:1", replica("p:1")),
            ("a:2", replica("a:1")),
            ("x:1", replica("gone:1")),
        ]);
        let d = decide(&s, None);
        assert_eq!(d.replicas, vec![(a("a:1"), a("p:1")), (a("a:2"), a("a:1"))]);
    }

    #[test]
    fn a_replica_with_many_sub_replicas_does_not_outvote_the_primary() {
        let s = seen(&[
            ("p:1", master(9)),
            ("a:1", replica("p:1")),
            ("b:1", replica("a:1")),
            ("b:2", replica("a:1")),
            ("b:3", replica("a:1")),
        ]);
        let d = decide(&s, None);
        assert_eq!(d.primary, Some(a("p:1")));
        assert_eq!(d.replicas.len(), 4);
    }

    #[test]
    fn ties_keep_the_current_primary() {
        let s = seen(&[("p:1", master(1)), ("q:1", master(9))]);
        assert_eq!(decide(&s, Some(&a("p:1"))).primary, Some(a("p:1")));
        assert_eq!(decide(&s, None).primary, Some(a("q:1")));
    }

    #[test]
    fn info_replication_is_parsed_with_address_mapping() {
        let map = AddressMap::new(vec![(a("10.0.0.2:6379"), a("127.0.0.1:7002"))]);
        let master_info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=10.0.0.2,port=6379,state=online,offset=42,lag=0\r\nmaster_repl_offset:42\r\n";
        let s = parse_info(master_info, &map).expect("parsed");
        assert_eq!(s.role, SeenRole::Master);
        assert_eq!(s.replicas, vec![a("127.0.0.1:7002")]);
        assert_eq!(s.offset, 42);
        let replica_info =
            "role:slave\r\nmaster_host:10.0.0.2\r\nmaster_port:6379\r\nmaster_link_status:down\r\nmaster_repl_offset:40\r\n";
        let s = parse_info(replica_info, &map).expect("parsed");
        assert_eq!(
            s.role,
            SeenRole::Replica {
                master: a("127.0.0.1:7002"),
                link_up: false
            }
        );
    }

    fn id(run: &str, replid: &str) -> Option<Identity> {
        Some(Identity {
            run_id: crate::node::RunId(run.into()),
            replid: Some(crate::node::ReplId(replid.into())),
        })
    }

    fn with(s: Option<Seen>, identity: Option<Identity>, replicas: &[&str]) -> Option<Seen> {
        s.map(|mut s| {
            s.identity = identity;
            s.replicas = replicas.iter().map(|r| a(r)).collect();
            s
        })
    }

    /// A round in which `nodes` were learned in order (`given` ones as seeds) and answered.
    fn round(given: &[&str], nodes: &[(&str, Option<Seen>)]) -> Round {
        let mut r = Round::default();
        for g in given {
            r.learn(&a(g), Directness::Given);
        }
        for (addr, s) in nodes {
            r.learn(&a(addr), Directness::Named);
            r.saw(a(addr), s.clone());
        }
        r
    }

    #[test]
    fn a_relay_answering_as_the_primary_is_an_alias_not_a_primary() {
        // far:1 replicates through relay:1, which forwards to p:1: the relay answers with p:1's run id.
        let p = with(master(100), id("P", "h1"), &["near:1", "far:1"]);
        let r = round(
            &["p:1", "near:1", "far:1"],
            &[
                ("p:1", p.clone()),
                ("near:1", with(replica("p:1"), id("N", "h1"), &[])),
                ("far:1", with(replica("relay:1"), id("F", "h1"), &[])),
                ("relay:1", p),
            ],
        );
        let (seen, aliases) = r.resolve();
        assert_eq!(aliases.get(&a("relay:1")), Some(&a("p:1")));
        let d = decide(&seen, None);
        assert_eq!(d.primary, Some(a("p:1")));
        assert_eq!(
            d.replicas,
            vec![(a("far:1"), a("p:1")), (a("near:1"), a("p:1"))]
        );
    }

    #[test]
    fn a_replica_behind_an_unreachable_relay_is_placed_by_its_replication_id() {
        let r = round(
            &["p:1", "near:1", "far:1"],
            &[
                ("p:1", with(master(100), id("P", "h1"), &["near:1"])),
                ("near:1", with(replica("p:1"), id("N", "h1"), &[])),
                ("far:1", with(replica("relay:1"), id("F", "h1"), &[])),
                ("relay:1", None),
            ],
        );
        let d = decide(&r.resolve().0, None);
        assert_eq!(d.primary, Some(a("p:1")));
        assert!(d.replicas.contains(&(a("far:1"), a("p:1"))), "{d:?}");
    }

    #[test]
    fn a_replica_a_master_lists_belongs_to_it_without_a_replication_id() {
        let r = round(
            &["p:1", "far:1"],
            &[
                ("p:1", with(master(100), None, &["far:1"])),
                ("far:1", with(replica("relay:1"), None, &[])),
                ("relay:1", None),
            ],
        );
        let d = decide(&r.resolve().0, None);
        assert_eq!(d.replicas, vec![(a("far:1"), a("p:1"))]);
    }

    #[test]
    fn replicas_of_a_dead_primary_do_not_follow_a_promoted_one_by_its_old_replication_id() {
        // r:1 was promoted (new replication ID h2); r:2 still follows the dead p:1 on h1.
        let r = round(
            &["p:1", "r:1", "r:2"],
            &[
                ("p:1", None),
                ("r:1", with(master(500), id("R1", "h2"), &[])),
                ("r:2", with(replica("p:1"), id("R2", "h1"), &[])),
            ],
        );
        assert_eq!(decide(&r.resolve().0, Some(&a("p:1"))).primary, None);
    }

    #[test]
    fn one_node_given_under_two_addresses_is_one_node_under_the_first() {
        let p = with(master(100), id("P", "h1"), &["r:1"]);
        let r = round(
            &["127.0.0.1:1", "localhost:1", "r:1"],
            &[
                ("127.0.0.1:1", p.clone()),
                ("localhost:1", p),
                ("r:1", with(replica("localhost:1"), id("R", "h1"), &[])),
            ],
        );
        let (seen, aliases) = r.resolve();
        assert_eq!(aliases.get(&a("localhost:1")), Some(&a("127.0.0.1:1")));
        let d = decide(&seen, None);
        assert_eq!(d.primary, Some(a("127.0.0.1:1")));
        assert_eq!(d.replicas, vec![(a("r:1"), a("127.0.0.1:1"))]);
    }
}
