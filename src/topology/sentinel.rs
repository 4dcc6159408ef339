//! Sentinel mode: the sentinels say which node is the primary; the proxy confirms it with `ROLE` before
//! switching (a peer proxy stayed on a demoted primary for ten minutes because it did not).
//!
//! Every sentinel is asked (`SENTINEL get-master-addr-by-name`, `SENTINEL replicas`) at each discovery
//! interval, and at once when a sentinel publishes an event about the master (`+switch-master`, `+sdown`,
//! `-sdown`, `+odown`, `+slave`, `+reboot`, `+convert-to-slave`, ...) or the data path reports a failure.
//! The address most sentinels give wins. Replicas flagged `s_down`, `o_down` or `disconnected` are left out.
//!
//! The sentinels know only the primary's own replicas. Replicas of replicas (a replica in each site fed
//! by that site's replica of the primary) are found as static mode finds them: every node's `INFO
//! replication` lists the replicas it feeds, level by level from the primary down (`Tree`); they get
//! reads like any replica, measured against the primary's offsets.
//!
//! `+selected-slave` comes from the sentinel leading a failover a tick before it sends the replica
//! `REPLICAOF NO ONE`: writes are held from then on (see [`super::shard`]), so the old primary takes none
//! that the promoted replica would never get, also when the failover was not asked of this proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::resp::Value as OwnedFrame;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::discovery::{parse_info, Decision};
use super::probe::Role;
use super::{AddressMap, Topo};
use crate::node::Addr;
use crate::resp::encode_command;
use crate::upstream::control::{call, Control};
use crate::upstream::{ConnKey, Dedicated, Node, Settings};

/// Events that may change the master or its replicas.
const EVENTS: &[&str] = &[
    "+switch-master",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+reboot",
    "+convert-to-slave",
    "+failover-end",
    "+promoted-slave",
    "+role-change",
    "+selected-slave",
];

/// How soon to look again when the sentinels name a primary that does not yet confirm it is one.
const RECHECK: Duration = Duration::from_millis(50);

/// Runs sentinel discovery until `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    topo: Arc<Topo>,
    sentinels: Vec<Addr>,
    master_name: String,
    map: AddressMap,
    interval: Duration,
    settings: Arc<Settings>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let nodes: Vec<Arc<Node>> = sentinels
        .iter()
        .map(|a| Node::new(a.clone(), settings.clone()))
        .collect();
    for node in &nodes {
        tracker.spawn(listen(
            node.clone(),
            master_name.clone(),
            map.clone(),
            topo.clone(),
            cancel.clone(),
        ));
    }
    let mut controls: Vec<Control> = nodes.into_iter().map(Control::new).collect();
    let mut tree = Tree::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = false;
    loop {
        let look = look(&topo, &mut controls, &mut tree, &master_name, &map).await;
        // Say it once when the sentinels go silent, and once when they are back.
        match (look, unanswered) {
            (Look::NoAnswer, false) => warn!("no sentinel answers; keeping the current topology"),
            (Look::NoMajority, false) => warn!(
                sentinels = controls.len(),
                "no primary named by a majority of the sentinels; keeping the current topology"
            ),
            (Look::Settled | Look::Recheck, true) => info!("sentinels answer again"),
            _ => {}
        }
        unanswered = matches!(look, Look::NoAnswer | Look::NoMajority);
        // Only a primary that does not confirm yet is looked at again soon; silent sentinels are asked
        // at the normal interval.
        let settled = look != Look::Recheck;
        let again = if settled { interval } else { RECHECK };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick(), if settled => {}
            _ = tokio::time::sleep(again), if !settled => {}
            // A sentinel event or a failure on the data path.
            _ = topo.refresh_requested() => debug!("topology refresh requested"),
        }
    }
}

/// What asking the sentinels gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Published (or nothing changed).
    Settled,
    /// The named primary does not confirm with ROLE yet: look again soon.
    Recheck,
    /// No sentinel answered.
    NoAnswer,
    /// No address was named by more than half of the configured sentinels.
    NoMajority,
}

/// Asks the sentinels and publishes what they agree on, with the replicas of replicas under them.
async fn look(
    topo: &Topo,
    controls: &mut [Control],
    tree: &mut Tree,
    master_name: &str,
    map: &AddressMap,
) -> Look {
    let name = master_name.as_bytes();
    let mut answers: BTreeMap<Addr, usize> = BTreeMap::new();
    let mut named: Vec<Option<Addr>> = vec![None; controls.len()];
    for (i, c) in controls.iter_mut().enumerate() {
        let Some(frame) = call(c, &[b"SENTINEL", b"get-master-addr-by-name", name]).await else {
            continue;
        };
        let Some(addr) = addr_of(&frame).map(|a| map.map(a)) else {
            continue;
        };
        *answers.entry(addr.clone()).or_default() += 1;
        named[i] = Some(addr);
    }
    let current = topo.snapshot().primary().map(|n| n.addr.clone());
    let Some((candidate, votes)) = answers
        .iter()
        .max_by_key(|(a, n)| (**n, Some(*a) == current.as_ref()))
        .map(|(a, n)| (a.clone(), *n))
    else {
        return Look::NoAnswer;
    };
    // A majority of the configured sentinels, not of those that answered: a minority cut off from the
    // others (or with a stale view) must not move the writes, as it could not elect a primary either.
    if votes * 2 <= controls.len() {
        return Look::NoMajority;
    }
    let agreeing: Vec<usize> = (0..named.len())
        .filter(|i| named[*i].as_ref() == Some(&candidate))
        .collect();
    if Some(&candidate) != current.as_ref() {
        let mut check = Control::new(topo.node(&candidate));
        let role = call(&mut check, &[b"ROLE"])
            .await
            .as_ref()
            .and_then(Role::parse);
        if !matches!(role, Some(Role::Master { .. })) {
            info!(candidate = %candidate, "sentinels name a primary that does not confirm yet");
            return Look::Recheck;
        }
    }
    // Sentinels disagree while a failover settles, and may not list the new primary's replicas at once:
    // take every replica an agreeing sentinel reports up, and keep the ones we have unless one reports
    // them down. The prober still checks each before it gets reads.
    let mut replicas: BTreeSet<Addr> = BTreeSet::new();
    let mut down: BTreeSet<Addr> = BTreeSet::new();
    for (i, c) in controls.iter_mut().enumerate() {
        if !agreeing.contains(&i) {
            continue;
        }
        if let Some(OwnedFrame::Array(items)) = call(c, &[b"SENTINEL", b"replicas", name]).await {
            for (addr, up) in items.iter().filter_map(replica_of) {
                if up {
                    replicas.insert(map.map(addr));
                } else {
                    down.insert(map.map(addr));
                }
            }
        }
    }
    let snapshot = topo.snapshot();
    // The replicas the proxy had directly under the primary; those of replicas are found again below.
    replicas.extend(
        snapshot
            .replicas()
            .iter()
            .filter(|r| Some(&r.parent) == current.as_ref() && !down.contains(&r.node.addr))
            .map(|r| r.node.addr.clone()),
    );
    replicas.remove(&candidate);
    let mut decided: Vec<(Addr, Addr)> = if Some(&candidate) == current.as_ref() {
        tree.walk(topo, &candidate, &replicas, map).await
    } else {
        // A new primary is published at once, with the replicas the sentinels list under it and those
        // of replicas kept where they were; the tree is walked again right after.
        let below: Vec<(Addr, Addr)> = snapshot
            .replicas()
            .iter()
            // Those of the promoted replica follow it, the primary now.
            .filter(|r| Some(&r.parent) != current.as_ref())
            .filter(|r| r.node.addr != candidate && !replicas.contains(&r.node.addr))
            .map(|r| (r.node.addr.clone(), r.parent.clone()))
            .collect();
        topo.request_refresh();
        replicas
            .iter()
            .map(|a| (a.clone(), candidate.clone()))
            .chain(below)
            .collect()
    };
    decided.sort();
    topo.publish_if_changed(&Decision {
        primary: Some(candidate),
        replicas: decided,
        aliases: Default::default(),
    });
    Look::Settled
}

/// How many levels of replicas of replicas are followed below the primary's own replicas.
const MAX_TREE_DEPTH: usize = 4;

/// How long a replica may take to say which replicas it has.
const TREE_ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Connections to the primary and its replicas, to find replicas of replicas: the sentinels know only
/// the primary's own (from its `INFO replication`), so each replica is asked for its own.
#[derive(Default)]
struct Tree {
    conns: BTreeMap<Addr, Control>,
}

impl Tree {
    /// The replicas under `primary`, each with the node it follows, found level by level from every
    /// node's `INFO replication` (the replicas it lists), from the primary down. A node that cannot be
    /// asked keeps the replicas it had in the current snapshot (the primary: `listed`, those the
    /// sentinels list); a replica a sentinel lists that no node lists follows the primary.
    async fn walk(
        &mut self,
        topo: &Topo,
        primary: &Addr,
        listed: &BTreeSet<Addr>,
        map: &AddressMap,
    ) -> Vec<(Addr, Addr)> {
        let snapshot = topo.snapshot();
        let mut placed: BTreeSet<Addr> = BTreeSet::from([primary.clone()]);
        let mut found = Vec::new();
        let mut level: Vec<Addr> = vec![primary.clone()];
        for _ in 0..=MAX_TREE_DEPTH {
            // One level at a time, its replicas asked together: a frozen one costs one timeout.
            let mut asks = tokio::task::JoinSet::new();
            for parent in level {
                let mut conn = self
                    .conns
                    .remove(&parent)
                    .unwrap_or_else(|| Control::with_timeout(topo.node(&parent), TREE_ASK_TIMEOUT));
                asks.spawn(async move {
                    let reply = call(&mut conn, &[b"INFO", b"replication"]).await;
                    (parent, conn, reply)
                });
            }
            let mut answers = Vec::new();
            while let Some(joined) = asks.join_next().await {
                if let Ok((parent, conn, reply)) = joined {
                    self.conns.insert(parent.clone(), conn);
                    answers.push((parent, reply));
                }
            }
            // In address order, so the tree does not depend on which answer came first.
            answers.sort_by(|a, b| a.0.cmp(&b.0));
            let mut next = Vec::new();
            for (parent, reply) in answers {
                let children: Vec<Addr> = match reply {
                    Some(OwnedFrame::BulkString(text)) => {
                        parse_info(&String::from_utf8_lossy(&text), map)
                            .map(|s| s.replicas)
                            .unwrap_or_default()
                    }
                    _ if parent == *primary => listed.iter().cloned().collect(),
                    _ => snapshot
                        .replicas()
                        .iter()
                        .filter(|r| r.parent == parent)
                        .map(|r| r.node.addr.clone())
                        .collect(),
                };
                for child in children {
                    if placed.insert(child.clone()) {
                        found.push((child.clone(), parent.clone()));
                        next.push(child);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        for r in listed {
            if placed.insert(r.clone()) {
                found.push((r.clone(), primary.clone()));
            }
        }
        // Nodes no longer in the tree (demoted, gone) are not asked again.
        self.conns.retain(|a, _| placed.contains(a));
        found
    }
}

/// `[ip, port]` from `get-master-addr-by-name`.
fn addr_of(frame: &OwnedFrame) -> Option<Addr> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let text = |f: &OwnedFrame| match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    };
    Addr::parse(&format!(
        "{}:{}",
        text(parts.first()?)?,
        text(parts.get(1)?)?
    ))
    .ok()
}

/// A replica from one `SENTINEL replicas` entry (a flat field/value array), and whether it is up (not
/// flagged `s_down`, `o_down` or `disconnected`).
fn replica_of(entry: &OwnedFrame) -> Option<(Addr, bool)> {
    let field = fields(entry)?;
    let addr = Addr::parse(&format!("{}:{}", field("ip")?, field("port")?)).ok()?;
    Some((addr, is_up(&field("flags")?)))
}

/// A replica from one `SENTINEL replicas` entry, and whether that sentinel could promote it now by its
/// own rules: up, a ping answered within the last 5 s, and a priority other than 0. (Sentinel also
/// skips replicas whose INFO or master link is stale; counting those as promotable only errs on the
/// safe side.)
pub fn promotable_replica(entry: &OwnedFrame) -> Option<(Addr, bool)> {
    let field = fields(entry)?;
    let addr = Addr::parse(&format!("{}:{}", field("ip")?, field("port")?)).ok()?;
    let pinged = field("last-ok-ping-reply")
        .and_then(|ms| ms.parse::<u64>().ok())
        .is_none_or(|ms| ms <= REPLICA_VALIDITY.as_millis() as u64);
    let priority = field("slave-priority").is_none_or(|p| p != "0");
    Some((addr, is_up(&field("flags")?) && pinged && priority))
}

/// A replica that answered no ping for this long is never promoted by Sentinel (its
/// `SENTINEL_PING_PERIOD * 5`, the age past which a replica's link and INFO no longer count).
pub const REPLICA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(5);

/// Not flagged `s_down`, `o_down` or `disconnected`.
fn is_up(flags: &str) -> bool {
    !flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
}

/// The field lookup of one `SENTINEL replicas` entry (a flat field/value array).
fn fields(entry: &OwnedFrame) -> Option<impl Fn(&str) -> Option<String> + '_> {
    let OwnedFrame::Array(kv) = entry else {
        return None;
    };
    Some(move |name: &str| {
        kv.chunks(2).find_map(|pair| match pair {
            [OwnedFrame::BulkString(k), OwnedFrame::BulkString(v)] if k == name.as_bytes() => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        })
    })
}

/// Listens to one sentinel's events and asks for a refresh on those about our master.
async fn listen(
    node: Arc<Node>,
    master_name: String,
    map: AddressMap,
    topo: Arc<Topo>,
    cancel: CancellationToken,
) {
    loop {
        let subscribed = async {
            let mut conn = Dedicated::open(node.clone(), ConnKey::default())
                .await
                .ok()?;
            let mut cmd = Vec::new();
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(EVENTS.iter().map(|e| e.as_bytes()));
            encode_command(&mut cmd, &args);
            conn.send(&cmd).await.ok()?;
            // The connection may have been down during an event: look again now that it is up.
            topo.request_refresh();
            loop {
                let (frame, _) = conn.next_frame().await.ok()?;
                if let Some(OwnedFrame::Array(parts)) = crate::resp::value::decode_one(&frame) {
                    if let [OwnedFrame::BulkString(kind), OwnedFrame::BulkString(channel), OwnedFrame::BulkString(payload)] =
                        parts.as_slice()
                    {
                        let payload = String::from_utf8_lossy(payload);
                        if kind == b"message" && about(&payload, &master_name) {
                            info!(sentinel = %node.addr, event = %String::from_utf8_lossy(channel), "sentinel event");
                            if channel == b"+selected-slave" {
                                if let Some(addr) = instance_addr(&payload) {
                                    topo.failover_announced(&map.map(addr));
                                }
                            }
                            topo.request_refresh();
                        }
                    }
                }
            }
            #[allow(unreachable_code)]
            Some(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = subscribed => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// True if a sentinel event payload concerns `master`: `<name> ...` (`+switch-master`), `master <name> ...`
/// (events about the master itself) or `... @ <name> ...` (events about its replicas and sentinels).
fn about(payload: &str, master: &str) -> bool {
    let mut words = payload.split(' ');
    let (first, second) = (words.next(), words.next());
    first == Some(master)
        || (first == Some("master") && second == Some(master))
        || payload.contains(&format!("@ {master} "))
}

/// The address of the instance an event is about: `<type> <name> <ip> <port> @ ...`.
fn instance_addr(payload: &str) -> Option<Addr> {
    let mut words = payload.split(' ').skip(2);
    let (ip, port) = (words.next()?, words.next()?);
    Addr::parse(&format!("{ip}:{port}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_replica_is_read_from_the_event() {
        assert_eq!(
            instance_addr("slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"),
            Addr::parse("127.0.0.1:6380").ok()
        );
        assert_eq!(instance_addr("slave x"), None);
    }

    #[test]
    fn events_are_matched_to_the_master_name() {
        assert!(about("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster"));
        assert!(about(
            "slave 127.0.0.1:6381 127.0.0.1 6381 @ mymaster 127.0.0.1 6379",
            "mymaster"
        ));
        assert!(about("master mymaster 127.0.0.1 6379", "mymaster"));
        assert!(!about("master other 127.0.0.1 6379", "mymaster"));
        assert!(!about("other 127.0.0.1 1 127.0.0.1 2", "mymaster"));
        assert!(!about("slave 1:2 1 2 @ mymaster2 1 2", "mymaster"));
    }

    #[test]
    fn replicas_marked_down_are_left_out() {
        let entry = |flags: &str| {
            OwnedFrame::Array(
                ["ip", "127.0.0.1", "port", "7001", "flags", flags]
                    .iter()
                    .map(|s| OwnedFrame::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let a = Addr::parse("127.0.0.1:7001").expect("addr");
        assert_eq!(replica_of(&entry("slave")), Some((a.clone(), true)));
        assert_eq!(replica_of(&entry("slave,s_down")), Some((a.clone(), false)));
        assert_eq!(replica_of(&entry("slave,disconnected")), Some((a, false)));
    }

    #[test]
    fn a_replica_is_promotable_only_if_up_pinged_within_5_s_and_not_priority_0() {
        let entry = |flags: &str, ping: &str, priority: &str| {
            OwnedFrame::Array(
                [
                    "ip",
                    "127.0.0.1",
                    "port",
                    "7001",
                    "flags",
                    flags,
                    "last-ok-ping-reply",
                    ping,
                    "slave-priority",
                    priority,
                ]
                .iter()
                .map(|s| OwnedFrame::BulkString(s.as_bytes().to_vec()))
                .collect(),
            )
        };
        let ok = |e: OwnedFrame| promotable_replica(&e).map(|(_, p)| p);
        assert_eq!(ok(entry("slave", "300", "100")), Some(true));
        assert_eq!(ok(entry("slave", "5000", "100")), Some(true));
        assert_eq!(ok(entry("slave", "5001", "100")), Some(false));
        assert_eq!(ok(entry("slave,disconnected", "300", "100")), Some(false));
        assert_eq!(ok(entry("slave,s_down", "300", "100")), Some(false));
        assert_eq!(ok(entry("slave", "300", "0")), Some(false));
    }
}
