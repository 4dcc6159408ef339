//! Probes every node with `ROLE` at a fixed interval: replication offsets, lag, read eligibility. On
//! connecting to the primary it also refreshes the command table (`COMMAND`) and the server version.
//!
//! One task per node, so a frozen node delays nobody else's probe. A supervisor starts and stops them as
//! nodes enter and leave the topology.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::resp::Value as OwnedFrame;
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use arc_swap::ArcSwap;

use super::{Shard, Topo, Why};
use crate::command::{SharedTable, Table};
use crate::upstream::{ConnKey, Dedicated, Node};

/// What the prober needs to know.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Interval between probes of one node.
    pub interval: Duration,
    /// Lag limits, replaced whole when the config is reloaded; each probe reads the current ones.
    pub limits: Arc<ArcSwap<LagLimits>>,
    /// Refresh the command table from the primary.
    pub refresh_commands: bool,
    /// `write_hold_ms`: how long writes held for a replica promoted outside the proxy may wait before
    /// the hold gives way to a tree that no longer lists it.
    pub write_hold: Duration,
}

/// How far behind a replica may be and still get reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    /// Lag limit in time.
    pub max_lag: Duration,
    /// Lag limit in bytes.
    pub max_lag_bytes: Option<u64>,
}

/// A node's answer to `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A primary at this replication offset.
    Master {
        /// `master_repl_offset`.
        offset: u64,
    },
    /// A replica.
    Replica {
        /// Its primary as it announces it.
        master: String,
        /// `connected` when the link is up and synced.
        state: String,
        /// Offset processed; `None` while the link is down (Redis reports -1 then).
        offset: Option<u64>,
    },
    /// A sentinel, or anything else.
    Other,
}

impl Role {
    /// Parses a RESP2 `ROLE` reply.
    pub fn parse(frame: &OwnedFrame) -> Option<Role> {
        let OwnedFrame::Array(items) = frame else {
            return None;
        };
        let text = |i: usize| match items.get(i) {
            Some(OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        };
        let int = |i: usize| match items.get(i) {
            Some(OwnedFrame::Integer(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        match text(0)?.as_str() {
            "master" => Some(Role::Master { offset: int(1)? }),
            "slave" => Some(Role::Replica {
                master: format!("{}:{}", text(1)?, int(2)?),
                state: text(3)?,
                offset: match items.get(4)? {
                    OwnedFrame::Integer(n) => u64::try_from(*n).ok(),
                    _ => return None,
                },
            }),
            _ => Some(Role::Other),
        }
    }
}

/// Starts the supervisor, which keeps one probe task per node of the current topology.
pub fn spawn(
    topo: Arc<Topo>,
    table: SharedTable,
    cfg: ProbeConfig,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        let mut changes = topo.subscribe();
        let mut running: FxHashMap<u64, CancellationToken> = FxHashMap::default();
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        loop {
            let snapshot = topo.snapshot();
            // A promoted replica the tree dropped keeps its probe while writes are held for it: the
            // probe ends the hold.
            let promoted: Vec<u64> = snapshot
                .shards
                .iter()
                .filter_map(|s| s.state.promoted().map(|p| p.node))
                .chain(topo.shard_state().promoted().map(|p| p.node))
                .collect();
            running.retain(|id, token| {
                let keep = snapshot.nodes().any(|n| n.id == *id) || promoted.contains(id);
                if !keep {
                    token.cancel();
                }
                keep
            });
            for node in snapshot.nodes() {
                running.entry(node.id).or_insert_with(|| {
                    let token = cancel.child_token();
                    t.spawn(probe_node(
                        node.clone(),
                        topo.clone(),
                        table.clone(),
                        cfg.clone(),
                        token.clone(),
                    ));
                    token
                });
            }
            tokio::select! {
                // Shutdown.
                _ = cancel.cancelled() => return,
                // Membership changed: reconcile the probe tasks.
                r = changes.changed() => if r.is_err() { return },
                // Forget connection pools no session uses.
                _ = sweep.tick() => snapshot.nodes().for_each(|n| n.sweep_pools()),
            }
        }
    });
}

/// How long a probe may take before the node counts as unresponsive: long enough for a busy server, short
/// enough that a frozen replica stops getting reads well within the lag limit.
/// Never under 250 ms, even with a lag limit below that (the upper bound then gives way).
fn probe_timeout(interval: Duration, limits: &LagLimits) -> Duration {
    let floor = Duration::from_millis(250);
    (interval * 5).clamp(floor, limits.max_lag.max(interval).max(floor))
}

async fn probe_node(
    node: Arc<Node>,
    topo: Arc<Topo>,
    table: SharedTable,
    cfg: ProbeConfig,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Dedicated> = None;
    // Its last ROLE said replica while the snapshot listed it as one: a master answer next means it was
    // promoted outside the proxy (never set for a former primary listed as a replica before it follows).
    let mut was_replica = false;
    // The last ROLE found the connection closed: the next closed one waits for the tick (a node that
    // accepts connections and closes them must not be reconnected to in a loop).
    let mut just_closed = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        topo.settle_promotion(&node, false, cfg.write_hold);
        let limits = **cfg.limits.load();
        let timeout = probe_timeout(cfg.interval, &limits);
        // A connection the node closed while idle (`CLIENT KILL`, its `timeout`) says nothing about the
        // node: a fresh one does.
        if conn.as_ref().is_some_and(|c| !c.is_alive()) {
            conn = None;
        }
        let fresh = conn.is_none();
        if fresh {
            conn = connect(&node, &topo, &table, &cfg, timeout).await;
        }
        let Some(c) = conn.as_mut() else { continue };
        let epoch = topo.next_epoch();
        let mut asked = ask_role(&node, c, timeout, !fresh).await;
        if matches!(asked, Asked::Cut) {
            // Cut under the question: ask once more on a fresh connection before calling it down.
            conn = connect(&node, &topo, &table, &cfg, timeout).await;
            let Some(c) = conn.as_mut() else { continue };
            asked = ask_role(&node, c, timeout, false).await;
        }
        let role = match asked {
            Asked::Role(role) => role,
            // Alive, and keeping its role; the connection stays (ROLE is all it would refuse).
            Asked::Busy => {
                busy(&node, &topo);
                continue;
            }
            Asked::Nothing | Asked::Cut => {
                conn = None;
                continue;
            }
            // Closed (a restart, `CLIENT KILL` as a replica is promoted): connect again at once rather
            // than a tick later, so a change of role is seen soon.
            Asked::Closed => {
                conn = None;
                if !std::mem::replace(&mut just_closed, true) {
                    tick.reset_immediately();
                }
                continue;
            }
        };
        just_closed = false;
        let at = Instant::now();
        node.repl.answered();
        if node.repl.is_busy() {
            info!(upstream = %node.addr, "node no longer busy");
            node.repl.set_busy(false);
        }
        let snapshot = topo.load();
        let shard = snapshot
            .shard_of(node.id)
            .unwrap_or_else(|| snapshot.shard());
        match role {
            Role::Master { offset } => {
                node.repl.record(epoch, offset);
                if shard.is_primary(node.id) {
                    if shard.state.record_primary_offset(at, offset) {
                        // Restarted or resynced: offsets from before are of another history.
                        shard.state.new_era(epoch.saturating_sub(1));
                    }
                    shard.state.primary_measured(epoch, offset);
                    node.set_eligibility(Why::IsPrimary);
                } else {
                    let announced = shard.state.promoted().is_some_and(|p| p.node == node.id);
                    if (was_replica || announced) && shard.replica(node.id).is_some() {
                        topo.replica_promoted(&node);
                    }
                    node.set_eligibility(Why::NotReplica);
                }
                was_replica = false;
            }
            Role::Replica { state, offset, .. } => {
                was_replica = shard.replica(node.id).is_some();
                topo.settle_promotion(&node, true, cfg.write_hold);
                // With its link down a replica reports no offset; its data has not moved since the
                // last probe, so that offset stands (but no new sample: it cannot vouch for this epoch).
                let offset = match offset {
                    Some(o) => {
                        node.repl.record(epoch, o);
                        o
                    }
                    None => node.repl.offset(),
                };
                let report = Report {
                    at,
                    offset,
                    linked: state == "connected",
                };
                let why = measure_replica(&node, shard, report, timeout, &limits);
                log_eligibility(&node, why, &state);
            }
            Role::Other => node.set_eligibility(Why::NotReplica),
        }
    }
}

/// Opens the probe's connection; on connecting, learns what the node is, and from the primary the
/// command table and the server version. `None` (the node marked unanswering) if it cannot.
async fn connect(
    node: &Arc<Node>,
    topo: &Topo,
    table: &SharedTable,
    cfg: &ProbeConfig,
    timeout: Duration,
) -> Option<Dedicated> {
    match tokio::time::timeout(timeout, Dedicated::open(node.clone(), ConnKey::default())).await {
        Ok(Ok(mut c)) => {
            learn_identity(&mut c, timeout).await;
            // The same process under another address already in the topology: the source publishes
            // again, and the snapshot keeps one of them.
            let run_id = node.identity().map(|i| i.run_id);
            let twin = topo
                .load()
                .nodes()
                .any(|n| n.id != node.id && n.identity().map(|i| i.run_id) == run_id);
            if run_id.is_some() && twin {
                topo.request_refresh();
            }
            if topo.load().shards.iter().any(|s| s.is_primary(node.id)) {
                refresh_primary_info(&mut c, topo, table, cfg, timeout).await;
            }
            Some(c)
        }
        Ok(Err(e)) => {
            debug!(upstream = %node.addr, error = %e, "probe connect failed");
            node.set_eligibility(Why::NoAnswer);
            node.repl.unanswered(true);
            None
        }
        Err(_) => {
            node.set_eligibility(Why::NoAnswer);
            node.repl.unanswered(false);
            None
        }
    }
}

/// What a probe's `ROLE` got.
enum Asked {
    /// The node's role.
    Role(Role),
    /// `-BUSY`: a script or function runs past `busy-reply-threshold`. The node is alive and keeps its
    /// role; it answers nothing else until the script ends or is killed.
    Busy,
    /// No answer within the timeout (frozen, overloaded, loading, a script not yet past the threshold)
    /// or no reply that parses.
    Nothing,
    /// A connection used before closed under the question (`CLIENT KILL`): nothing is known yet.
    Cut,
    /// A fresh connection closed: the node is down (or restarting, or being promoted).
    Closed,
}

/// Asks `ROLE`. A node that does not answer gets no reads until it answers again. A closed connection
/// means the node is down (a fresh one; one used before may just have been cut: `reused`, then
/// [`Asked::Cut`] and nothing marked); a timeout only that it is slow.
async fn ask_role(node: &Node, c: &mut Dedicated, timeout: Duration, reused: bool) -> Asked {
    let (role, down) = match tokio::time::timeout(timeout, call(c, &[b"ROLE"])).await {
        Ok(Some(OwnedFrame::Error(e))) if e.starts_with("BUSY") => return Asked::Busy,
        Ok(Some(frame)) => (Role::parse(&frame), false),
        Ok(None) if reused => return Asked::Cut,
        Ok(None) => (None, true),
        Err(_) => (None, false),
    };
    let Some(role) = role else {
        if node.repl.is_eligible() {
            warn!(upstream = %node.addr, "replica stopped answering probes, taking it out of rotation");
        }
        node.set_eligibility(Why::NoAnswer);
        node.repl.unanswered(down);
        return if down { Asked::Closed } else { Asked::Nothing };
    };
    Asked::Role(role)
}

/// A node answered `-BUSY`: it is alive, and the primary stays the primary (`SCRIPT KILL` and
/// `FUNCTION KILL` reach it through the proxy). A replica gets no reads: it would answer them BUSY.
fn busy(node: &Node, topo: &Topo) {
    node.repl.answered();
    if !node.repl.is_busy() {
        info!(upstream = %node.addr, "node busy running a script; it keeps its role");
    }
    node.repl.set_busy(true);
    if !topo.load().shards.iter().any(|s| s.is_primary(node.id)) {
        node.set_eligibility(Why::Busy);
    }
}

/// What a replica's ROLE said, when.
struct Report {
    at: Instant,
    /// Its offset (the last one it reported, while its link is down).
    offset: u64,
    /// Its link to its master is up.
    linked: bool,
}

/// Measures a replica's lag from its report and decides whether it serves reads.
fn measure_replica(
    node: &Node,
    shard: &Shard,
    r: Report,
    timeout: Duration,
    limits: &LagLimits,
) -> Why {
    // A primary that is only slow may still be taking writes: its replicas are measured against its
    // history (whose newest sample ages meanwhile). Only one that is down for certain (refusing or
    // closing connections) is taken for gone.
    let primary_answers = shard.primary.as_ref().is_some_and(|p| {
        p.id != node.id && (p.repl.answered_within(timeout * 2) || !p.repl.is_down())
    });
    let (lag, lag_bytes) = if primary_answers || shard.primary.is_none() {
        let primary_offset = shard.primary.as_ref().map_or(0, |p| p.repl.offset());
        (
            shard.state.lag_at(r.at, r.offset),
            primary_offset.saturating_sub(r.offset),
        )
    } else {
        // The primary is unreachable (failover under way): nobody is writing, and the freshest
        // reachable replica holds all the data that still exists. Lag is measured against it, so reads
        // keep flowing from replicas that have everything.
        let freshest = shard
            .replica_nodes()
            .filter(|n| n.repl.answered_within(timeout * 2))
            .map(|n| n.repl.offset())
            .fold(r.offset, u64::max);
        (
            shard.state.lag_behind(r.offset, freshest),
            freshest.saturating_sub(r.offset),
        )
    };
    node.repl.lag_bytes.store(lag_bytes, Ordering::Relaxed);
    node.repl.lag_ms.store(
        lag.map_or(u64::MAX, |d| d.as_millis() as u64),
        Ordering::Relaxed,
    );
    let m = node.metrics.load();
    m.lag_bytes.set(lag_bytes as i64);
    m.lag_seconds
        .set(lag.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    // A link down to a primary that still answers us means the replica falls behind while others
    // write. A link down to a primary nobody reaches (failover under way) means no one is writing: the
    // replica is as fresh as its lag says, and reads keep flowing.
    let link_ok = r.linked || !primary_answers;
    if shard.is_primary(node.id) {
        Why::IsPrimary
    } else {
        eligibility(node.repl.is_eligible(), link_ok, lag, lag_bytes, limits)
    }
}

/// Sets a replica's eligibility, and says so when it changes.
fn log_eligibility(node: &Node, why: Why, state: &str) {
    let was = node.repl.is_eligible();
    node.set_eligibility(why);
    let now = why == Why::Eligible;
    if was != now {
        let lag_ms = node.repl.lag_ms.load(Ordering::Relaxed);
        let lag_bytes = node.repl.lag_bytes.load(Ordering::Relaxed);
        info!(upstream = %node.addr, lag_ms = (lag_ms != u64::MAX).then_some(lag_ms), lag_bytes, state, eligible = now, why = why.label(), "replica eligibility changed");
    }
}

/// Read eligibility with hysteresis: a replica in rotation stays while within the limits; one out of
/// rotation returns only once within 80% of them, so a replica hovering at the limit does not flap.
fn eligibility(
    was: bool,
    link_up: bool,
    lag: Option<Duration>,
    lag_bytes: u64,
    limits: &LagLimits,
) -> Why {
    let Some(lag) = lag else {
        return Why::Unmeasured;
    };
    if !link_up {
        return Why::LinkDown;
    }
    let (time_limit, byte_limit) = if was {
        (limits.max_lag, limits.max_lag_bytes)
    } else {
        (
            limits.max_lag * 4 / 5,
            limits.max_lag_bytes.map(|b| b / 5 * 4),
        )
    };
    if lag > time_limit {
        Why::Lag
    } else if byte_limit.is_some_and(|b| lag_bytes > b) {
        Why::LagBytes
    } else {
        Why::Eligible
    }
}

/// On connecting: what the node is (a restart, which changes its run id, breaks the connection).
async fn learn_identity(c: &mut Dedicated, timeout: Duration) {
    let mut text = String::new();
    for section in [&b"server"[..], b"replication"] {
        match tokio::time::timeout(timeout, call(c, &[b"INFO", section])).await {
            Ok(Some(OwnedFrame::BulkString(b))) => text.push_str(&String::from_utf8_lossy(&b)),
            _ => return,
        }
    }
    if let Some(id) = crate::node::Identity::from_info(&text) {
        c.node.set_identity(id);
    }
    c.node.set_reported_zone(crate::node::zone::reported(&text));
}

/// On connecting to the primary: refresh the command table and learn the server version.
async fn refresh_primary_info(
    c: &mut Dedicated,
    topo: &Topo,
    table: &SharedTable,
    cfg: &ProbeConfig,
    timeout: Duration,
) {
    if cfg.refresh_commands {
        match tokio::time::timeout(timeout * 4, call(c, &[b"COMMAND"])).await {
            Ok(Some(frame)) => match Table::from_command_reply(&frame, c.node.addr.to_string()) {
                Ok(t) => {
                    debug!(upstream = %c.node.addr, commands = t.len(), "command table refreshed");
                    table.store(Arc::new(t));
                }
                Err(e) => warn!(upstream = %c.node.addr, error = %e, "command table not refreshed"),
            },
            _ => {
                warn!(upstream = %c.node.addr, "COMMAND failed; keeping the current command table")
            }
        }
    }
    if let Ok(Some(OwnedFrame::BulkString(info))) =
        tokio::time::timeout(timeout, call(c, &[b"INFO", b"server"])).await
    {
        topo.note_server(&String::from_utf8_lossy(&info));
    }
}

async fn call(c: &mut Dedicated, args: &[&[u8]]) -> Option<OwnedFrame> {
    crate::upstream::control::exchange(c, args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Option<Role> {
        let frame = crate::resp::value::decode_one(input).expect("a complete value");
        Role::parse(&frame)
    }

    #[test]
    fn role_replies_are_parsed() {
        assert_eq!(
            parse(b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n"),
            Some(Role::Master { offset: 3129659 })
        );
        assert_eq!(
            parse(
                b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n"
            ),
            Some(Role::Replica {
                master: "127.0.0.1:9000".into(),
                state: "connected".into(),
                offset: Some(3167038)
            })
        );
        assert_eq!(parse(b"*2\r\n$8\r\nsentinel\r\n*0\r\n"), Some(Role::Other));
        assert_eq!(parse(b"-LOADING\r\n"), None);
    }

    #[test]
    fn eligibility_has_hysteresis() {
        let cfg = LagLimits {
            max_lag: Duration::from_millis(1000),
            max_lag_bytes: None,
        };
        let ms = Duration::from_millis;
        assert_eq!(
            eligibility(true, true, Some(ms(900)), 0, &cfg),
            Why::Eligible
        );
        assert_eq!(eligibility(false, true, Some(ms(900)), 0, &cfg), Why::Lag);
        assert_eq!(
            eligibility(false, true, Some(ms(700)), 0, &cfg),
            Why::Eligible
        );
        assert_eq!(eligibility(true, true, Some(ms(1100)), 0, &cfg), Why::Lag);
        assert_eq!(
            eligibility(true, false, Some(ms(0)), 0, &cfg),
            Why::LinkDown
        );
        assert_eq!(eligibility(true, true, None, 0, &cfg), Why::Unmeasured);
    }
}
