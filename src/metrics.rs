//! Prometheus metrics, registered on an injected registry. Handles are resolved once (per node when the
//! node joins the topology), so counting a command on the hot path is an atomic add. Labels come from
//! closed sets and node addresses only. A node's counters are kept when it leaves the topology, so they
//! never go backwards; its replica gauges (lag, eligibility) exist only while it is a replica.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Where a node is relative to the proxy's zone, the `locality` label (metrics keep their own label
/// enums).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// The proxy has no zone, or the node's zone is not known.
    Unknown = 0,
    /// In the proxy's zone.
    Local = 1,
    /// In another zone.
    Remote = 2,
}

impl Locality {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Locality::Unknown => "unknown",
            Locality::Local => "local",
            Locality::Remote => "remote",
        }
    }
}

/// What a command does, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read-only.
    Read = 0,
    /// May write.
    Write = 1,
    /// Neither (admin, connection, pub/sub).
    Other = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Read, Kind::Write, Kind::Other];

    fn label(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Other => "other",
        }
    }
}

/// Why a read went to the primary, the `reason` label of `redsplit_reads_on_primary_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReason {
    /// Read-your-writes or monotonic reads: no replica is known to hold what the session wrote or read.
    Session = 0,
    /// Replicas exist but none is within the lag limit.
    Lag = 1,
    /// There are no replicas.
    NoReplica = 2,
    /// Inside MULTI/WATCH, or otherwise on the session's own primary connection.
    Transaction = 3,
    /// `consistency = "primary"`, or a retry after a replica failed.
    Policy = 4,
    /// `zone_affinity = "replicas-and-primary"`: no replica in the proxy's zone qualifies and the
    /// primary is in it.
    Zone = 5,
}

impl ReadReason {
    const LABELS: [&'static str; 6] = [
        "session",
        "lag",
        "no_replica",
        "transaction",
        "policy",
        "zone",
    ];
}

/// Upstream failure kinds, the `kind` label of `redsplit_backend_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// Connect or greeting failed.
    Connect = 0,
    /// Connection lost with requests in flight.
    Lost = 1,
    /// Garbage from the node.
    Protocol = 2,
    /// A read timed out.
    Timeout = 3,
}

impl BackendError {
    const ALL: [BackendError; 4] = [
        BackendError::Connect,
        BackendError::Lost,
        BackendError::Protocol,
        BackendError::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            BackendError::Connect => "connect",
            BackendError::Lost => "lost",
            BackendError::Protocol => "protocol",
            BackendError::Timeout => "timeout",
        }
    }
}

/// Why the proxy refused a write without sending it, the `reason` label of
/// `redsplit_writes_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The split-brain guard: fewer good replicas than `min_replicas`.
    MinReplicas = 0,
}

impl Refusal {
    const LABELS: [&'static str; 1] = ["min_replicas"];
}

/// Why a write's reply became an error saying it was not acknowledged, the `reason` label of
/// `redsplit_writes_unacknowledged_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAck {
    /// WAIT reported fewer replicas than `min_write_acks` within `write_ack_timeout_ms`.
    Timeout = 0,
    /// The connection broke before WAIT answered.
    Lost = 1,
}

impl NoAck {
    const LABELS: [&'static str; 2] = ["timeout", "lost"];
}

/// Every metric of the proxy.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Client connections open.
    pub client_connections: IntGauge,
    /// Sessions holding a dedicated upstream connection.
    pub pinned_sessions: IntGauge,
    commands: IntCounterVec,
    durations: [Histogram; 3],
    reads_on_primary: [IntCounter; 6],
    /// Reads routed to replicas, by [`Locality`].
    replica_reads: [IntCounter; 3],
    zone_info: IntGaugeVec,
    lag_bytes: IntGaugeVec,
    lag_seconds: prometheus::GaugeVec,
    eligible: IntGaugeVec,
    /// Primary changes.
    pub failovers: IntCounter,
    /// Topology generation.
    pub generation: IntGauge,
    /// Shards of the Redis Cluster in front of which the proxy runs (0: not a cluster).
    pub cluster_shards: IntGauge,
    /// Commands a cluster node redirected (MOVED, ASK) or asked to retry (TRYAGAIN, CLUSTERDOWN), sent
    /// again by the proxy.
    pub cluster_redirects: IntCounter,
    /// Commands split over cluster shards, or sent to every shard, and merged.
    pub cluster_splits: IntCounter,
    /// Requests held for a primary (failover, switchover).
    pub writes_held: IntCounter,
    /// How long held requests waited.
    pub write_hold_seconds: Histogram,
    backend_errors: IntCounterVec,
    /// Client protocol errors (malformed RESP, oversized requests).
    pub protocol_errors: IntCounter,
    /// Reads sent again to another node.
    pub read_retries: IntCounter,
    /// Reads a replica ran on data older than they must see, sent again instead of delivered.
    pub reads_behind: IntCounter,
    /// Reads a replica left unanswered past the hedge delay, sent to another node.
    pub reads_hedged: IntCounter,
    /// Clients turned away at max_clients.
    pub rejected_clients: IntCounter,
    /// Failed client authentications.
    pub auth_failures: IntCounter,
    /// Clients disconnected for a limit (output buffer, idle timeout).
    pub clients_closed_by_limit: IntCounter,
    /// Reply bytes waiting for clients, summed over every client (output under 4 KiB per client is not
    /// counted).
    pub client_output_bytes: IntGauge,
    /// Clients closed, largest first, because the replies waiting for all clients passed
    /// max_total_output_bytes.
    pub clients_evicted: IntCounter,
    /// Shared upstream connections open.
    pub upstream_connections: IntGaugeVec,
    writes_refused: [IntCounter; 1],
    writes_unacknowledged: [IntCounter; 2],
    /// 1 while the split-brain guard refuses writes, 0 while it lets them through or is off; set when
    /// metrics are gathered.
    pub write_guard_closed: IntGauge,
}

/// Metric handles of one node, resolved once.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// `[role][kind]`: role 0 primary, 1 replica.
    commands: [[IntCounter; 3]; 2],
    errors: [IntCounter; 4],
    /// Replica lag in bytes.
    pub lag_bytes: IntGauge,
    /// Replica lag in seconds.
    pub lag_seconds: prometheus::Gauge,
    /// Replica eligible for reads (1) or not (0).
    pub eligible: IntGauge,
    /// Shared upstream connections open to this node.
    pub connections: IntGauge,
}

impl NodeMetrics {
    /// Handles registered nowhere: for nodes outside the topology.
    pub fn detached() -> NodeMetrics {
        let counter =
            || IntCounter::new("detached", "detached").expect("static metric options are valid");
        let gauge =
            || IntGauge::new("detached", "detached").expect("static metric options are valid");
        NodeMetrics {
            commands: [
                [counter(), counter(), counter()],
                [counter(), counter(), counter()],
            ],
            errors: [counter(), counter(), counter(), counter()],
            lag_bytes: gauge(),
            lag_seconds: prometheus::Gauge::new("detached", "detached")
                .expect("static metric options are valid"),
            eligible: gauge(),
            connections: gauge(),
        }
    }

    /// Counts `n` commands of `kind` sent to this node in `primary` or replica role.
    #[inline]
    pub fn commands(&self, primary: bool, kind: Kind, n: u64) {
        self.commands[usize::from(!primary)][kind as usize].inc_by(n);
    }

    /// Commands of `kind` sent to this node in `primary` or replica role so far.
    pub fn count(&self, primary: bool, kind: Kind) -> u64 {
        self.commands[usize::from(!primary)][kind as usize].get()
    }

    /// Counts an upstream failure.
    pub fn error(&self, kind: BackendError) {
        self.errors[kind as usize].inc();
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const HOLD_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Registers every metric on `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let commands = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "redsplit_commands_total",
                    "Commands sent to each node, by node role and command kind",
                ),
                &["node", "role", "kind"],
            )?,
        )?;
        let durations_vec = reg(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "redsplit_command_duration_seconds",
                    "Time from receiving a command to having its reply, as the client sees it through the proxy",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["kind"],
            )?,
        )?;
        let reads_vec = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "redsplit_reads_on_primary_total",
                    "Reads that went to the primary, by reason",
                ),
                &["reason"],
            )?,
        )?;
        // The process: CPU, resident memory, open files, start time (`process_*`, Linux).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build = reg(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "redsplit_build_info",
                    "Always 1; the version of the running proxy in the label",
                ),
                &["version"],
            )?,
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let refused = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "redsplit_writes_refused_total",
                    "Commands that may write refused by the proxy without being sent, by reason (min_replicas: the split-brain guard)",
                ),
                &["reason"],
            )?,
        )?;
        let unacknowledged = reg(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "redsplit_writes_unacknowledged_total",
                    "Writes the primary ran whose client got an error because fewer than min_write_acks replicas acknowledged them, by reason",
                ),
                &["reason"],
            )?,
        )?;
        Ok(Metrics {
            writes_refused: Refusal::LABELS.map(|r| refused.with_label_values(&[r])),
            writes_unacknowledged: NoAck::LABELS.map(|r| unacknowledged.with_label_values(&[r])),
            write_guard_closed: reg(
                registry,
                IntGauge::new(
                    "redsplit_write_guard_closed",
                    "1 while the split-brain guard (min_replicas) refuses writes, else 0",
                )?,
            )?,
            client_connections: reg(
                registry,
                IntGauge::new("redsplit_client_connections", "Client connections open")?,
            )?,
            pinned_sessions: reg(
                registry,
                IntGauge::new(
                    "redsplit_pinned_sessions",
                    "Sessions holding a dedicated upstream connection (transactions, pub/sub, MONITOR, tracking)",
                )?,
            )?,
            durations: Kind::ALL.map(|k| durations_vec.with_label_values(&[k.label()])),
            reads_on_primary: ReadReason::LABELS.map(|r| reads_vec.with_label_values(&[r])),
            replica_reads: {
                let v = reg(
                    registry,
                    IntCounterVec::new(
                        Opts::new(
                            "redsplit_replica_reads_total",
                            "Reads routed to replicas, by where the replica is: in the proxy's zone (local), \
                             in another (remote), or unknown (no zone for the proxy or the replica)",
                        ),
                        &["locality"],
                    )?,
                )?;
                [Locality::Unknown, Locality::Local, Locality::Remote]
                    .map(|l| v.with_label_values(&[l.label()]))
            },
            zone_info: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "redsplit_node_zone_info",
                        "1 for each data node's zone (configured in node_zones, else reported by the server) \
                         and whether it is the proxy's own",
                    ),
                    &["node", "zone", "locality"],
                )?,
            )?,
            commands,
            lag_bytes: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new("redsplit_replica_lag_bytes", "Replica lag behind the primary, in bytes of replication stream"),
                    &["node"],
                )?,
            )?,
            lag_seconds: reg(
                registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "redsplit_replica_lag_seconds",
                        "Replica lag in time: how long ago the primary was at the replica's offset",
                    ),
                    &["node"],
                )?,
            )?,
            eligible: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new("redsplit_replica_eligible", "1 if the replica gets reads, 0 if not"),
                    &["node"],
                )?,
            )?,
            failovers: reg(registry, IntCounter::new("redsplit_failovers_total", "Primary changes seen")?)?,
            generation: reg(
                registry,
                IntGauge::new("redsplit_topology_generation", "Generation of the current topology snapshot")?,
            )?,
            cluster_shards: reg(
                registry,
                IntGauge::new(
                    "redsplit_cluster_shards",
                    "Shards of the Redis Cluster in the current topology (0: not a cluster)",
                )?,
            )?,
            cluster_redirects: reg(
                registry,
                IntCounter::new(
                    "redsplit_cluster_redirects_total",
                    "Commands a cluster node redirected (MOVED, ASK) or asked to retry (TRYAGAIN, CLUSTERDOWN), sent again",
                )?,
            )?,
            cluster_splits: reg(
                registry,
                IntCounter::new(
                    "redsplit_cluster_split_commands_total",
                    "Commands split over cluster shards or sent to every shard, their replies merged",
                )?,
            )?,
            writes_held: reg(
                registry,
                IntCounter::new(
                    "redsplit_writes_held_total",
                    "Commands held because no primary could take them (failover, switchover)",
                )?,
            )?,
            write_hold_seconds: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("redsplit_write_hold_seconds", "How long held commands waited for a primary")
                        .buckets(HOLD_BUCKETS.to_vec()),
                )?,
            )?,
            backend_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("redsplit_backend_errors_total", "Upstream failures by node and kind"),
                    &["node", "kind"],
                )?,
            )?,
            protocol_errors: reg(
                registry,
                IntCounter::new(
                    "redsplit_protocol_errors_total",
                    "Clients closed for malformed or oversized requests",
                )?,
            )?,
            read_retries: reg(
                registry,
                IntCounter::new("redsplit_read_retries_total", "Reads sent again to another node after a failure")?,
            )?,
            reads_hedged: reg(
                registry,
                IntCounter::new(
                    "redsplit_reads_hedged_total",
                    "Reads a replica left unanswered past the hedge delay (read_hedge_ms), sent to another node instead",
                )?,
            )?,
            reads_behind: reg(
                registry,
                IntCounter::new(
                    "redsplit_reads_behind_total",
                    "Reads a replica ran on data older than they had to see (the offset measured before them fell short), sent again elsewhere instead of delivered",
                )?,
            )?,
            auth_failures: reg(
                registry,
                IntCounter::new("redsplit_auth_failures_total", "Failed client AUTH or HELLO AUTH attempts")?,
            )?,
            rejected_clients: reg(
                registry,
                IntCounter::new("redsplit_rejected_clients_total", "Clients turned away at max_clients")?,
            )?,
            clients_closed_by_limit: reg(
                registry,
                IntCounter::new(
                    "redsplit_clients_closed_by_limit_total",
                    "Clients disconnected for a limit: output buffer over max_client_output_bytes, idle timeout",
                )?,
            )?,
            client_output_bytes: reg(
                registry,
                IntGauge::new(
                    "redsplit_client_output_bytes",
                    "Reply bytes waiting for clients that have not read them yet, over every client",
                )?,
            )?,
            clients_evicted: reg(
                registry,
                IntCounter::new(
                    "redsplit_clients_evicted_total",
                    "Clients closed, largest first, because the replies waiting for all clients passed max_total_output_bytes",
                )?,
            )?,
            upstream_connections: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new("redsplit_upstream_connections", "Shared pipelined upstream connections open"),
                    &["node"],
                )?,
            )?,
        })
    }

    /// Handles for a node.
    pub fn node(&self, addr: &str) -> NodeMetrics {
        let role =
            |r: &str| Kind::ALL.map(|k| self.commands.with_label_values(&[addr, r, k.label()]));
        NodeMetrics {
            commands: [role("primary"), role("replica")],
            errors: BackendError::ALL
                .map(|k| self.backend_errors.with_label_values(&[addr, k.label()])),
            lag_bytes: self.lag_bytes.with_label_values(&[addr]),
            lag_seconds: self.lag_seconds.with_label_values(&[addr]),
            eligible: self.eligible.with_label_values(&[addr]),
            connections: self.upstream_connections.with_label_values(&[addr]),
        }
    }

    /// Removes the replica-only series (lag, eligibility) of a node that is the primary now, or no
    /// longer in the topology.
    pub fn forget_replica_series(&self, addr: &str) {
        let _ = self.lag_bytes.remove_label_values(&[addr]);
        let _ = self.lag_seconds.remove_label_values(&[addr]);
        let _ = self.eligible.remove_label_values(&[addr]);
    }

    /// Observes one command's latency.
    #[inline]
    pub fn duration(&self, kind: Kind, seconds: f64) {
        self.durations[kind as usize].observe(seconds);
    }

    /// Counts a read sent to the primary.
    #[inline]
    pub fn read_on_primary(&self, reason: ReadReason) {
        self.reads_on_primary[reason as usize].inc();
    }

    /// Counts a read routed to a replica at `locality`.
    #[inline]
    pub fn replica_read(&self, locality: Locality) {
        self.replica_reads[locality as usize].inc();
    }

    /// Reads routed to replicas at `locality` so far.
    pub fn replica_reads(&self, locality: Locality) -> u64 {
        self.replica_reads[locality as usize].get()
    }

    /// Sets the zone series of the node at `addr` (removing the one for its previous zone, if any).
    pub fn node_zone(
        &self,
        addr: &str,
        old: Option<(&str, Locality)>,
        new: Option<(&str, Locality)>,
    ) {
        if let Some((zone, locality)) = old {
            let _ = self
                .zone_info
                .remove_label_values(&[addr, zone, locality.label()]);
        }
        if let Some((zone, locality)) = new {
            self.zone_info
                .with_label_values(&[addr, zone, locality.label()])
                .set(1);
        }
    }

    /// Counts a write refused without being sent.
    pub fn writes_refused(&self, reason: Refusal) {
        self.writes_refused[reason as usize].inc();
    }

    /// Counts `n` writes whose clients were told they were not acknowledged.
    pub fn writes_unacknowledged(&self, reason: NoAck, n: u64) {
        self.writes_unacknowledged[reason as usize].inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_is_no_longer_a_replica_keeps_its_counters_but_not_its_gauges() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).expect("metrics register");
        let n = m.node("10.0.0.1:6379");
        n.commands(false, Kind::Read, 3);
        n.lag_bytes.set(5);
        let text = |r: &Registry| {
            let mut out = String::new();
            prometheus::TextEncoder::new()
                .encode_utf8(&r.gather(), &mut out)
                .expect("encode");
            out
        };
        let counted =
            "redsplit_commands_total{kind=\"read\",node=\"10.0.0.1:6379\",role=\"replica\"} 3";
        assert!(text(&registry).contains(counted));
        m.forget_replica_series("10.0.0.1:6379");
        assert!(!text(&registry).contains("redsplit_replica_lag_bytes{node=\"10.0.0.1:6379\"}"));
        // Back again: the same series, counting on from where it was.
        m.node("10.0.0.1:6379").commands(false, Kind::Read, 1);
        assert!(text(&registry).contains(&counted.replace("} 3", "} 4")));
    }
}
