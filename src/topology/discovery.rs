//! Static-mode discovery: from seed addresses, find the replication tree by asking every node
//! `INFO replication`, and decide which node is the primary.
//!
//! A node's own claim to be primary is not enough (after a failover the old primary may come back empty,
//! still saying `role:master`): every reachable node votes. A master votes for itself, a replica votes
//! for the master it follows. The primary is the reachable master with the most votes, and only if no
//! unreachable address gets more (the tree still follows a primary that is down: wait rather than guess).
//! Ties go to the current primary, then to the larger replication offset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::resp::Value as OwnedFrame;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{AddressMap, Topo};
use crate::node::Addr;
use crate::upstream::control::{call, Control};

/// What one node says about its replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
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

/// Parses `INFO replication`, mapping announced addresses.
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

/// Runs static discovery until `cancel` fires.
pub async fn run(
    topo: Arc<Topo>,
    seeds: Vec<Addr>,
    map: AddressMap,
    interval: Duration,
    cancel: CancellationToken,
) {
    let seeds: BTreeSet<Addr> = seeds.into_iter().collect();
    let mut known = seeds.clone();
    let mut conns: BTreeMap<Addr, Control> = BTreeMap::new();
    let mut missing: BTreeMap<Addr, u32> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut seen: BTreeMap<Addr, Option<Seen>> = BTreeMap::new();
        // Ask every known node; newly referenced nodes are asked in the same round.
        for _ in 0..4 {
            let ask: Vec<Addr> = known
                .iter()
                .filter(|a| !seen.contains_key(*a))
                .cloned()
                .collect();
            if ask.is_empty() {
                break;
            }
            for addr in ask {
                let conn = conns
                    .entry(addr.clone())
                    .or_insert_with(|| Control::new(topo.node(&addr)));
                let info = match call(conn, &[b"INFO", b"replication"]).await {
                    Some(OwnedFrame::BulkString(b)) => {
                        parse_info(&String::from_utf8_lossy(&b), &map)
                    }
                    _ => None,
                };
                if let Some(s) = &info {
                    known.extend(s.replicas.iter().cloned());
                    if let SeenRole::Replica { master, .. } = &s.role {
                        known.insert(master.clone());
                    }
                }
                seen.insert(addr, info);
            }
        }
        let snapshot = topo.snapshot();
        let current = snapshot.primary().map(|n| n.addr.clone());
        let decision = decide(&seen, current.as_ref());
        if decision.primary.is_none() && current.is_some() {
            warn!(current = %current.as_ref().map(Addr::to_string).unwrap_or_default(), "no primary the tree agrees on; writes wait");
        }
        topo.publish_if_changed(&decision);
        // Forget discovered nodes long gone (never seeds): a replica removed for good stops being asked.
        for (addr, s) in &seen {
            if s.is_some() {
                missing.remove(addr);
            } else if !seeds.contains(addr) {
                *missing.entry(addr.clone()).or_default() += 1;
            }
        }
        missing.retain(|addr, rounds| {
            let referenced = seen.values().flatten().any(|s| {
                s.replicas.contains(addr)
                    || matches!(&s.role, SeenRole::Replica { master, .. } if master == addr)
            });
            if *rounds > 60 && !referenced {
                debug!(node = %addr, "forgetting unreachable node");
                known.remove(addr);
                conns.remove(addr);
                return false;
            }
            true
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            // A failure on the data path: look again now.
            _ = topo.refresh_requested() => info!("topology refresh requested"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Addr {
        Addr::parse(s).expect("addr")
    }

    fn master(offset: u64) -> Option<Seen> {
        Some(Seen {
            role: SeenRole::Master,
            offset,
            replicas: vec![],
        })
    }

    fn replica(of: &str) -> Option<Seen> {
        Some(Seen {
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
}
