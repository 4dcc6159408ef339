//! Admin HTTP server: probes (`/live`, `/ready`), Prometheus metrics (`/metrics`), the topology
//! (`/topology`), and the manual switchover (`POST /failover`), which `admin/switchover.rs` carries out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::topology::{AddressMap, Topo};

mod switchover;

pub use switchover::Switchover;

/// What the admin endpoints need.
#[derive(Debug)]
pub struct AdminState {
    /// The live topology.
    pub topo: Arc<Topo>,
    /// Switchover method; replaced when a config reload changes the topology source.
    pub switchover: arc_swap::ArcSwap<Switchover>,
    /// Announced-to-reachable address map.
    pub map: AddressMap,
    /// How long a switchover may take before it is abandoned (writes released either way).
    pub timeout: Duration,
    /// Where metrics are registered.
    pub registry: prometheus::Registry,
    /// Who may change state (`POST /failover`).
    pub guard: Guard,
    /// The split-brain guard's settings and its gauge, shown by `/topology` and `/metrics`.
    pub write_guard: WriteGuard,
    busy: AtomicBool,
}

/// The split-brain guard, as the admin endpoints show it: whether it refuses writes now.
#[derive(Debug, Clone)]
pub struct WriteGuard {
    /// `min_replicas`, `min_replicas_max_lag_ms`.
    pub guard: crate::route::Guard,
    /// `redsplit_write_guard_closed`, set when metrics are gathered.
    pub closed: prometheus::IntGauge,
}

impl WriteGuard {
    /// The guard's state now, as JSON: on, closed, good replicas, needed, lag limit.
    fn state(&self, topo: &Topo) -> Value {
        let snapshot = topo.snapshot();
        let verdict = self.guard.check(snapshot.shard());
        let good = snapshot
            .replica_nodes()
            .filter(|n| crate::route::guard::good(&n.repl, self.guard.max_lag))
            .count();
        json!({
            "on": self.guard.is_on(),
            "closed": verdict.is_err(),
            "good_replicas": good,
            "min_replicas": self.guard.min_replicas,
            "max_lag_ms": self.guard.max_lag.as_millis() as u64,
        })
    }
}

/// Who may send the requests that change state: the holder of `admin_token`, or, with no token
/// configured, anyone who can reach a loopback listener (the same host or pod), and nobody otherwise.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `admin_token`, if set.
    pub token: Option<String>,
    /// The admin listener is bound to a loopback address.
    pub loopback: bool,
}

impl Guard {
    /// `None` if a request with these headers may change state; else the refusal.
    fn refuse(&self, headers: &axum::http::HeaderMap) -> Option<Reply> {
        let Some(token) = &self.token else {
            return (!self.loopback).then(|| {
                reply(
                    StatusCode::FORBIDDEN,
                    json!({"error": "set admin_token to change state through an admin port that listens beyond loopback"}),
                )
            });
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            None
        } else {
            Some(reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "this request needs Authorization: Bearer <admin_token>"}),
            ))
        }
    }
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl AdminState {
    /// State for the admin server.
    pub fn new(
        topo: Arc<Topo>,
        switchover: Switchover,
        map: AddressMap,
        timeout: Duration,
        registry: prometheus::Registry,
        guard: Guard,
        write_guard: WriteGuard,
    ) -> Arc<AdminState> {
        Arc::new(AdminState {
            topo,
            switchover: arc_swap::ArcSwap::from_pointee(switchover),
            map,
            timeout,
            registry,
            guard,
            write_guard,
            busy: AtomicBool::new(false),
        })
    }
}

/// Serves the admin endpoints until `cancel` fires.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/topology", get(topology))
        .route("/failover", post(failover))
        .with_state(state);
    let shutdown = async move { cancel.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "admin server failed");
    }
}

/// Query of `POST /failover`.
#[derive(Debug, Deserialize)]
pub struct FailoverQuery {
    /// The replica to promote (`host:port`); static mode only. Default: the caught-up replica with the
    /// largest offset.
    pub to: Option<String>,
}

type Reply = (StatusCode, Json<Value>);

/// 200 once clients are served and a primary is known; 503 with the reason otherwise. (The client port is
/// bound before this server starts.)
async fn ready(State(s): State<Arc<AdminState>>) -> (StatusCode, String) {
    let snapshot = s.topo.snapshot();
    if snapshot.is_cluster() {
        // In front of a cluster: ready once its slot map is known. A shard failing over holds its own
        // writes; the others serve.
        let without = snapshot
            .shards
            .iter()
            .filter(|s| s.primary.is_none())
            .count();
        return (
            StatusCode::OK,
            format!(
                "ready: cluster of {} shards ({without} without a primary)\n",
                snapshot.shards.len()
            ),
        );
    }
    match snapshot.primary() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no primary is known\n".into(),
        ),
        Some(_) if s.topo.writes_held() => (
            StatusCode::OK,
            "ready (writes held for a failover)\n".into(),
        ),
        Some(p) => (StatusCode::OK, format!("ready: primary {}\n", p.addr)),
    }
}

/// Prometheus text format.
async fn metrics(
    State(s): State<Arc<AdminState>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let closed = s
        .write_guard
        .guard
        .check(s.topo.snapshot().shard())
        .is_err();
    s.write_guard.closed.set(i64::from(closed));
    let mut out = String::new();
    let status = match prometheus::TextEncoder::new().encode_utf8(&s.registry.gather(), &mut out) {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            out = format!("cannot encode metrics: {e}\n");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (status, [("content-type", "text/plain; version=0.0.4")], out)
}

/// The topology: generation, primary, and per replica where it hangs, how far behind it is, and
/// whether it gets reads (and why not).
async fn topology(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let t = s.topo.snapshot();
    let replicas: Vec<Value> = t
        .replicas()
        .iter()
        .map(|r| {
            let (n, parent) = (&r.node, &r.parent);
            let lag_ms = n.repl.lag_ms.load(Ordering::Relaxed);
            json!({
                "addr": n.addr.to_string(),
                "aliases": t.aliases_of(&n.addr).map(ToString::to_string).collect::<Vec<_>>(),
                "run_id": r.identity.as_ref().map(|i| i.run_id.0.clone()),
                "parent": parent.to_string(),
                "zone": n.zone().map(|z| z.0),
                "locality": n.locality().label(),
                "offset": n.repl.offset(),
                "lag_bytes": n.repl.lag_bytes.load(Ordering::Relaxed),
                "lag_ms": (lag_ms != u64::MAX).then_some(lag_ms),
                "eligible": n.repl.is_eligible(),
                "why": n.repl.why().label(),
                "outstanding": n.outstanding.load(Ordering::Relaxed),
            })
        })
        .collect();
    Json(json!({
        "generation": t.generation.0,
        "primary": t.primary().map(|p| json!({
            "addr": p.addr.to_string(),
            "aliases": t.aliases_of(&p.addr).map(ToString::to_string).collect::<Vec<_>>(),
            "run_id": p.identity().map(|i| i.run_id.0),
            "zone": p.zone().map(|z| z.0),
            "locality": p.locality().label(),
            "offset": p.repl.offset(),
        })),
        "writes_held": s.topo.writes_held(),
        "write_guard": s.write_guard.state(&s.topo),
        "failovers": s.topo.failovers(),
        "replicas": replicas,
        "shards": shards(&t),
    }))
}

/// Every shard: its number, slot ranges (in front of a cluster), primary and replicas, and whether its
/// writes are held. One shard, without slots, in front of a replicated primary.
fn shards(t: &crate::topology::Topology) -> Vec<Value> {
    t.shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let slots: Option<Vec<[u16; 2]>> = t
                .slots
                .as_ref()
                .map(|m| m.ranges(i).into_iter().map(|(a, b)| [a, b]).collect());
            let replicas: Vec<Value> = shard
                .replica_nodes()
                .map(|n| {
                    let lag_ms = n.repl.lag_ms.load(Ordering::Relaxed);
                    json!({
                        "addr": n.addr.to_string(),
                        "lag_ms": (lag_ms != u64::MAX).then_some(lag_ms),
                        "eligible": n.repl.is_eligible(),
                        "why": n.repl.why().label(),
                    })
                })
                .collect();
            json!({
                "id": shard.id.0,
                "slots": slots,
                "primary": shard.primary.as_ref().map(|p| p.addr.to_string()),
                "replicas": replicas,
                "writes_held": shard.state.writes_held(),
            })
        })
        .collect()
}

/// A JSON reply.
fn reply(status: StatusCode, body: Value) -> Reply {
    (status, Json(body))
}

/// `POST /failover`: for the holder of the admin token (see [`Guard`]); one switchover at a time; writes it held are released however it ends.
async fn failover(
    State(s): State<Arc<AdminState>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<FailoverQuery>,
) -> Reply {
    if let Some(refused) = s.guard.refuse(&headers) {
        return refused;
    }
    if s.busy.swap(true, Ordering::SeqCst) {
        return reply(
            StatusCode::CONFLICT,
            json!({"error": "a switchover is already running"}),
        );
    }
    // Released however the switchover ends, also when the HTTP client hangs up and the handler is
    // dropped mid-way: held writes must never stay held.
    struct Release<'a>(&'a AdminState);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.topo.hold_writes(false);
            self.0.busy.store(false, Ordering::SeqCst);
        }
    }
    let _release = Release(&s);
    switchover::switch(&s, q.to.as_deref()).await
}
