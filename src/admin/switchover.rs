//! The manual switchover behind `POST /failover`.
//!
//! A switchover must not lose an acknowledged write. Static mode uses Redis 7's `FAILOVER TO host port`,
//! which pauses writes on the primary and waits for the target to catch up before switching; the proxy
//! also holds new writes so they go straight to the new primary. Sentinel mode asks a sentinel
//! (`SENTINEL FAILOVER`), which does not pause the old primary: the proxy holds writes, pauses them at
//! the primary too, and waits until every replica Sentinel could promote has the primary's offset, so
//! whichever one it promotes has everything. A replica leaves that wait only when no sentinel could
//! promote it and this proxy has not heard from it for Sentinel's validity window. One it could promote
//! that this proxy cannot probe, or that does not replicate from the primary (a primary demoted a moment
//! ago, until Sentinel converts it), makes the switchover refuse before anything is held, once it has
//! been waited for without holding anything.
//!
//! ```text
//! static    choose a replica of the primary itself -> hold writes -> FAILOVER TO ->
//!           its ROLE says master ---------------------------------------------------------+
//! sentinel  every promotable replica answers -> every one replicates (waited for, nothing    |
//!           held) -> hold writes -> CLIENT PAUSE WRITE ->                                    |
//!           promotable replicas reach the primary's offset -> SENTINEL FAILOVER -------------+
//!                                                   the topology publishes another primary <-+
//! ```
//!
//! A step that fails ends the switchover with its reply (once writes are paused at the primary, after
//! CLIENT UNPAUSE), which is logged; the HTTP handler releases held writes however it ends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tracing::{info, warn};

use super::{reply, AdminState, Reply};
use crate::node::Addr;
use crate::node::Why;
use crate::resp::Value as OwnedFrame;
use crate::topology::probe::Role;
use crate::topology::{sentinel, AddressMap, Replica, Topo, Topology};
use crate::upstream::control::{call, Control};
use crate::upstream::Node;

/// How a switchover is done, by topology source.
#[derive(Debug, Clone)]
pub enum Switchover {
    /// `FAILOVER TO` on the primary.
    Static,
    /// `SENTINEL FAILOVER` on a sentinel.
    Sentinel {
        /// The sentinels.
        sentinels: Vec<Arc<Node>>,
        /// The master's name.
        master_name: String,
    },
    /// In front of a Redis Cluster: the cluster fails over on its own (`CLUSTER FAILOVER` on a replica);
    /// the proxy does not start one.
    Cluster,
}

/// Switches the primary over, to the replica `to` (`host:port`, static mode only) if given, and waits for
/// the topology to follow. The caller holds the switchover lock and releases held writes. Every refusal
/// is logged with its reason.
pub(super) async fn switch(s: &AdminState, to: Option<&str>) -> Reply {
    let (status, body) = attempt(s, to).await;
    if status != StatusCode::OK {
        let error = body.0.get("error").and_then(|e| e.as_str()).unwrap_or("");
        warn!(status = status.as_u16(), error, "switchover refused");
    }
    (status, body)
}

async fn attempt(s: &AdminState, to: Option<&str>) -> Reply {
    let started = Instant::now();
    let snapshot = s.topo.snapshot();
    let Some(old) = snapshot.primary().cloned() else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no primary is known"}),
        );
    };
    let to = match to.map(Addr::parse) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return reply(StatusCode::BAD_REQUEST, json!({"error": e})),
        None => None,
    };
    let switchover = s.switchover.load_full();
    let switched = match &*switchover {
        Switchover::Static => static_switchover(s, &snapshot, &old, to).await,
        Switchover::Sentinel { .. } if to.is_some() => Err(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "in sentinel mode Sentinel chooses the replica; omit `to`"}),
        )),
        Switchover::Sentinel {
            sentinels,
            master_name,
        } => sentinel_switchover(s, &snapshot, &old, sentinels, master_name).await,
        Switchover::Cluster => Err(reply(
            StatusCode::NOT_IMPLEMENTED,
            json!({"error": "in cluster mode run CLUSTER FAILOVER on the replica to promote; the proxy follows"}),
        )),
    };
    match switched {
        Ok(()) => finish(s, &old, started).await,
        Err(refused) => refused,
    }
}

// --- Static: FAILOVER TO ------------------------------------------------------------------------------

/// Asks the primary `old` to hand over to the replica `to` (or the best caught-up one) and waits until
/// that replica says it is the primary.
async fn static_switchover(
    s: &AdminState,
    snapshot: &Topology,
    old: &Arc<Node>,
    to: Option<Addr>,
) -> Result<(), Reply> {
    let target = static_target(snapshot, old, to)
        .map_err(|error| reply(StatusCode::CONFLICT, json!({ "error": error })))?;
    info!(from = %old.addr, to = %target.addr, "switchover requested");
    s.topo.hold_writes(true);
    failover_to(s, old, &target).await?;
    wait_promoted(s, target).await
}

/// The replica to promote: the one named, or else one eligible for reads, in the primary's zone if one
/// is (the writers' latency stays what it was), with the largest offset (`FAILOVER TO` waits for the
/// target to catch up in any case). Either must replicate from the primary itself: `FAILOVER TO` takes only a replica connected to the
/// primary, and after a first switchover the other replicas follow the demoted primary (a chain).
fn static_target(
    snapshot: &Topology,
    primary: &Node,
    to: Option<Addr>,
) -> Result<Arc<Node>, String> {
    let direct = |r: &&Replica| {
        r.parent == primary.addr || snapshot.aliases.get(&r.parent) == Some(&primary.addr)
    };
    match to {
        Some(a) => {
            let Some(r) = snapshot.replicas().iter().find(|r| r.node.addr == a) else {
                return Err(format!("{a} is not a replica in the topology"));
            };
            if !direct(&r) {
                return Err(format!(
                    "{a} replicates from {}, not from the primary {}: name one of the primary's own replicas",
                    r.parent, primary.addr
                ));
            }
            Ok(r.node.clone())
        }
        None => snapshot
            .replicas()
            .iter()
            .filter(direct)
            .map(|r| &r.node)
            .filter(|n| n.repl.is_eligible())
            .max_by_key(|n| {
                let zone = primary.zone();
                (zone.is_some() && n.zone() == zone, n.repl.offset())
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no replica of the primary {} is caught up to promote (wait for one, or name one with ?to=)",
                    primary.addr
                )
            }),
    }
}

/// `FAILOVER TO` on the primary, naming the target as the primary knows it (its announced address).
async fn failover_to(s: &AdminState, old: &Arc<Node>, target: &Node) -> Result<(), Reply> {
    let announced = s.map.announced(&target.addr);
    let port = announced.port().to_string();
    let timeout_ms = (s.timeout.as_millis() as u64 / 2).max(1000).to_string();
    let mut c = Control::with_timeout(old.clone(), s.timeout);
    let args: [&[u8]; 6] = [
        b"FAILOVER",
        b"TO",
        announced.host().as_bytes(),
        port.as_bytes(),
        b"TIMEOUT",
        timeout_ms.as_bytes(),
    ];
    match call(&mut c, &args).await {
        Some(OwnedFrame::SimpleString(ok)) if ok == b"OK" => Ok(()),
        Some(OwnedFrame::Error(e)) => Err(reply(
            StatusCode::CONFLICT,
            json!({"error": format!("primary refused FAILOVER: {e}")}),
        )),
        other => Err(reply(
            StatusCode::BAD_GATEWAY,
            json!({"error": format!("FAILOVER failed: {other:?}")}),
        )),
    }
}

/// Polls the target's ROLE until it says master, for at most the switchover timeout.
async fn wait_promoted(s: &AdminState, target: Arc<Node>) -> Result<(), Reply> {
    let mut t = Control::new(target);
    let deadline = Instant::now() + s.timeout;
    while Instant::now() < deadline {
        let role = call(&mut t, &[b"ROLE"]).await;
        if matches!(
            role.as_ref().and_then(Role::parse),
            Some(Role::Master { .. })
        ) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    Err(reply(
        StatusCode::GATEWAY_TIMEOUT,
        json!({"error": "the replica did not become primary in time"}),
    ))
}

// --- Sentinel: SENTINEL FAILOVER once every promotable replica has caught up -----------------------------

/// Holds and pauses writes, waits until every replica Sentinel could promote has the primary's offset,
/// then asks a sentinel to fail over. Writes are unpaused at the primary if that does not happen.
async fn sentinel_switchover(
    s: &AdminState,
    snapshot: &Topology,
    old: &Arc<Node>,
    sentinels: &[Arc<Node>],
    master_name: &str,
) -> Result<(), Reply> {
    info!(from = %old.addr, "switchover requested from sentinel");
    let mut views: Vec<Control> = sentinels.iter().map(|n| Control::new(n.clone())).collect();
    let mut watched = Watched::new(snapshot, old.clone());
    wait_ready(s, &mut watched, &mut views, master_name).await?;
    s.topo.hold_writes(true);
    let mut primary = Control::new(old.clone());
    pause_writes(s, &mut primary).await?;
    let asked = catch_up_and_ask(
        s,
        &mut watched,
        &mut primary,
        &mut views,
        sentinels,
        master_name,
    )
    .await;
    if asked.is_err() {
        // The switchover did not start: the primary's writes, paused for it, go on.
        let _ = call(&mut primary, &[b"CLIENT", b"UNPAUSE"]).await;
    }
    asked
}

/// Waits, holding nothing, for half the switchover timeout until every replica Sentinel could promote
/// answers this proxy and replicates from the primary with its link up; refuses if one does not.
///
/// One whose offset this proxy cannot read (its probes fail, or it probes no such node) could never be
/// shown to have the data (504). One that does not replicate cannot catch up (409): right after a
/// switchover the demoted primary still says it is a master until Sentinel converts it (8 s and more),
/// and Sentinel could still choose it. Found against real Redis: holding writes while waiting for it
/// stalled every client for the whole catch-up wait, then answered 504. Nothing is held or paused while
/// waiting here: a pause held for nothing would also stall Sentinel's own link to the primary, and with a
/// short down-after-milliseconds Sentinel fails over on its own.
async fn wait_ready(
    s: &AdminState,
    watched: &mut Watched,
    views: &mut [Control],
    master_name: &str,
) -> Result<(), Reply> {
    let deadline = Instant::now() + s.timeout / 2;
    loop {
        watched.refresh(&s.topo)?;
        let view = sentinel_view(views, master_name, &s.map).await;
        let counted = replicas_behind(&s.topo, watched, view.as_ref(), u64::MAX);
        let name = |n: &Node| n.addr.to_string();
        // One the topology does not list is not probed: its offset could not be followed (right after a
        // switchover the topology lists none until the sentinels' links to them are up).
        let blind: Vec<String> = counted
            .iter()
            .filter(|n| !n.repl.answering() || !watched.lists(n))
            .map(|n| name(n))
            .collect();
        let idle: Vec<String> = counted
            .iter()
            .filter(|n| n.repl.answering() && watched.lists(n))
            .filter(|n| matches!(n.repl.why(), Why::NotReplica | Why::LinkDown))
            .map(|n| format!("{}: {}", n.addr, n.repl.why().label()))
            .collect();
        if blind.is_empty() && idle.is_empty() {
            return Ok(());
        }
        if Instant::now() < deadline {
            tokio::time::sleep(POLL * 10).await;
            continue;
        }
        return Err(if blind.is_empty() {
            reply(
                StatusCode::CONFLICT,
                json!({"error": format!(
                    "replicas Sentinel could promote are not replicating from the primary ({}); switchover not started, nothing held (a primary demoted a moment ago replicates once Sentinel converts it)",
                    idle.join(", ")
                )}),
            )
        } else {
            reply(
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": format!(
                    "replicas Sentinel could promote do not answer this proxy or are not in its topology ({}); switchover not started",
                    blind.join(", ")
                )}),
            )
        });
    }
}

/// Pauses writes at the primary itself, as Redis's FAILOVER does, for those that do not pass the hold
/// (sessions on connections of their own: WATCH, subscriptions, tracking). The pause outlasts the
/// switchover; once demoted, the node refuses them (READONLY).
async fn pause_writes(s: &AdminState, primary: &mut Control) -> Result<(), Reply> {
    let pause_ms = (s.timeout.as_millis() as u64).max(1000).to_string();
    match call(
        primary,
        &[b"CLIENT", b"PAUSE", pause_ms.as_bytes(), b"WRITE"],
    )
    .await
    {
        Some(OwnedFrame::SimpleString(ok)) if ok == b"OK" => Ok(()),
        other => Err(reply(
            StatusCode::BAD_GATEWAY,
            json!({"error": format!("the primary did not pause writes: {other:?}")}),
        )),
    }
}

/// With writes held and paused: waits for the replicas to reach the primary's offset, then asks the
/// sentinels, one after another, until one accepts.
async fn catch_up_and_ask(
    s: &AdminState,
    watched: &mut Watched,
    primary: &mut Control,
    views: &mut [Control],
    sentinels: &[Arc<Node>],
    master_name: &str,
) -> Result<(), Reply> {
    let target = match call(primary, &[b"ROLE"])
        .await
        .as_ref()
        .and_then(Role::parse)
    {
        Some(Role::Master { offset }) => offset,
        _ => {
            return Err(not_started(
                StatusCode::BAD_GATEWAY,
                "the primary does not answer ROLE",
            ))
        }
    };
    wait_caught_up(s, watched, views, master_name, target).await?;
    ask_sentinels(sentinels, master_name).await
}

/// Waits, for half the switchover timeout, until every replica Sentinel could promote has offset
/// `target`; then any promoted one has it all. Every replica, not only those eligible for reads: Sentinel
/// ranks by replica-priority before offset and may promote one that lags.
async fn wait_caught_up(
    s: &AdminState,
    watched: &mut Watched,
    views: &mut [Control],
    master_name: &str,
    target: u64,
) -> Result<(), Reply> {
    let deadline = Instant::now() + s.timeout / 2;
    let behind = loop {
        watched.refresh(&s.topo)?;
        let view = sentinel_view(views, master_name, &s.map).await;
        let behind = replicas_behind(&s.topo, watched, view.as_ref(), target);
        // One that says it is a master cannot catch up: writes are not held waiting for it.
        let master = behind.iter().find(|n| n.repl.why() == Why::NotReplica);
        if let Some(n) = master {
            return Err(not_started(
                StatusCode::CONFLICT,
                &format!(
                    "replica {} is not replicating from the primary ({}); switchover not started",
                    n.addr,
                    Why::NotReplica.label()
                ),
            ));
        }
        if behind.is_empty() || Instant::now() >= deadline {
            break behind;
        }
        tokio::time::sleep(POLL * 10).await;
    };
    if behind.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = behind
        .iter()
        .map(|n| format!("{} at {}", n.addr, n.repl.offset()))
        .collect();
    Err(not_started(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "replicas did not catch up with offset {target} ({}); switchover not started",
            names.join(", ")
        ),
    ))
}

/// `SENTINEL FAILOVER` on each sentinel in turn until one accepts.
async fn ask_sentinels(sentinels: &[Arc<Node>], master_name: &str) -> Result<(), Reply> {
    // What the sentinels said, in their words: a refusal for a state that passes (a failover still in
    // progress, no replica good enough yet) is a conflict to retry, not a broken gateway.
    let mut refusals = Vec::new();
    for sentinel in sentinels {
        let mut c = Control::new(sentinel.clone());
        // One that cannot be reached was asked nothing: the next one is.
        if !c.connect().await {
            warn!(sentinel = %sentinel.addr, "sentinel unreachable for SENTINEL FAILOVER");
            continue;
        }
        match call(&mut c, &[b"SENTINEL", b"FAILOVER", master_name.as_bytes()]).await {
            Some(OwnedFrame::SimpleString(ok)) if ok == b"OK" => return Ok(()),
            Some(OwnedFrame::Error(e)) => {
                warn!(sentinel = %sentinel.addr, reply = %e, "sentinel refused the failover");
                refusals.push(format!("{}: {e}", sentinel.addr));
            }
            // Asked, and no answer in time (a loaded sentinel): it may have started the failover.
            // Releasing the writes and the pause now would let the primary take writes the promoted
            // replica never gets, and asking the next one would only get INPROG. Go on as if it
            // accepted: the caller waits for the topology to switch, and answers 504 if it does not.
            other => {
                warn!(sentinel = %sentinel.addr, reply = ?other, "no clear answer to SENTINEL FAILOVER; it may have started, waiting for the switch");
                return Ok(());
            }
        }
    }
    if refusals.is_empty() {
        return Err(not_started(
            StatusCode::BAD_GATEWAY,
            "no sentinel answered SENTINEL FAILOVER",
        ));
    }
    Err(not_started(
        StatusCode::CONFLICT,
        &format!(
            "no sentinel accepted SENTINEL FAILOVER ({}); switchover not started",
            refusals.join("; ")
        ),
    ))
}

/// The reply of a sentinel switchover that did not start (the caller lifts the pause).
fn not_started(status: StatusCode, error: &str) -> Reply {
    reply(status, json!({ "error": error }))
}

/// What the sentinels say of the master's replicas (as this proxy reaches them), each by its own view.
#[derive(Debug, Default)]
struct SentinelView {
    /// Every replica some sentinel lists, up or not: one flagged down now may be promotable a moment
    /// later (a sentinel's link to a replica is new after each switchover).
    listed: BTreeSet<Addr>,
    /// Those some sentinel could promote now.
    promotable: BTreeSet<Addr>,
}

/// The sentinels' view of the master's replicas; `None` if no sentinel answered (then any replica may be
/// promoted).
async fn sentinel_view(
    sentinels: &mut [Control],
    master_name: &str,
    map: &AddressMap,
) -> Option<SentinelView> {
    let mut answered = false;
    let mut view = SentinelView::default();
    for c in sentinels.iter_mut() {
        let Some(OwnedFrame::Array(items)) =
            call(c, &[b"SENTINEL", b"replicas", master_name.as_bytes()]).await
        else {
            continue;
        };
        answered = true;
        for (addr, promotable) in items.iter().filter_map(sentinel::promotable_replica) {
            let addr = map.map(addr);
            if promotable {
                view.promotable.insert(addr.clone());
            }
            view.listed.insert(addr);
        }
    }
    answered.then_some(view)
}

/// The replicas a sentinel switchover answers for: those of the topology when it started, and any the
/// topology lists while it runs. One the topology drops meanwhile (a sentinel reports it disconnected: a
/// replica that just died) still counts until [`replicas_behind`] lets it go: it may come back with old
/// data, and Sentinel may then choose it.
struct Watched {
    primary: Arc<Node>,
    replicas: Vec<Arc<Node>>,
}

impl Watched {
    fn new(snapshot: &Topology, primary: Arc<Node>) -> Watched {
        Watched {
            replicas: snapshot.replica_nodes().cloned().collect(),
            primary,
        }
    }

    /// True if the topology listed `n` as a replica at some point of the switchover.
    fn lists(&self, n: &Node) -> bool {
        self.replicas.iter().any(|r| r.id == n.id)
    }

    /// Adds the replicas the topology lists now; refuses if it names another primary.
    fn refresh(&mut self, topo: &Topo) -> Result<(), Reply> {
        let snapshot = topo.snapshot();
        if snapshot.primary().map(|n| n.id) != Some(self.primary.id) {
            return Err(not_started(
                StatusCode::CONFLICT,
                "the primary changed meanwhile; switchover not started",
            ));
        }
        for n in snapshot.replica_nodes() {
            if !self.replicas.iter().any(|r| r.id == n.id) {
                self.replicas.push(n.clone());
            }
        }
        Ok(())
    }
}

/// The replicas Sentinel could promote that lack the primary's offset `target`. A replica is left out
/// only if both this proxy has not heard from it for Sentinel's validity window (counted from its first
/// failed probe) and no sentinel could promote it now: the probes see a replica thawing before a
/// sentinel's view says so, and the sentinels see one that only this proxy cannot reach. A replica the
/// topology does not list counts as behind (its offset is unknown: it is not probed) if a sentinel could
/// promote it, or if a sentinel lists it and this proxy heard from it within the validity window: right
/// after a switchover the topology lists no replica until the sentinels' new links to them are up, and
/// a sentinel whose link comes up a moment later may promote one that still follows the demoted primary.
fn replicas_behind(
    topo: &Topo,
    watched: &Watched,
    view: Option<&SentinelView>,
    target: u64,
) -> Vec<Arc<Node>> {
    let counts = |n: &Node| {
        view.is_none_or(|v| v.promotable.contains(&n.addr))
            || !n.repl.silent_longer_than(sentinel::REPLICA_VALIDITY)
    };
    let mut behind: Vec<Arc<Node>> = watched
        .replicas
        .iter()
        .filter(|n| counts(n) && n.repl.offset() < target)
        .cloned()
        .collect();
    for addr in view.iter().flat_map(|v| &v.listed) {
        let known = watched.replicas.iter().any(|n| &n.addr == addr);
        if known || watched.primary.addr == *addr {
            continue;
        }
        let n = topo.node(addr);
        let promotable = view.is_some_and(|v| v.promotable.contains(addr));
        if promotable || n.repl.answered_within(sentinel::REPLICA_VALIDITY) {
            behind.push(n);
        }
    }
    behind
}

// --- Both ---------------------------------------------------------------------------------------------

/// Waits for the topology to publish a primary other than `old`.
async fn finish(s: &AdminState, old: &Arc<Node>, started: Instant) -> Reply {
    s.topo.request_refresh();
    let switched = wait_until(s.timeout, || {
        s.topo.snapshot().primary().is_some_and(|n| n.id != old.id)
    })
    .await;
    let now = s.topo.snapshot().primary().map(|n| n.addr.to_string());
    if !switched {
        return reply(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"error": "the topology did not switch in time", "primary": now}),
        );
    }
    info!(from = %old.addr, to = now.as_deref().unwrap_or(""), "switchover done");
    reply(
        StatusCode::OK,
        json!({"from": old.addr.to_string(), "to": now, "ms": started.elapsed().as_millis() as u64}),
    )
}

/// How often a switchover looks at the state it waits for.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests;
