//! The numeric options: intervals and timeouts, threads and connections, and what one client may send, keep
//! waiting and be sent. Each has bounds; a value outside them is a problem, never clamped.

use std::time::Duration;

use super::options::Raw;
use super::value::Ranged;
use crate::resp::Limits;

/// Intervals and timeouts, each within its option's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Timing {
    /// `probe_interval_ms`: 10 ms to 1 min.
    pub probe_interval: Duration,
    /// `discovery_interval_ms`: 10 ms to 10 min.
    pub discovery_interval: Duration,
    /// `connect_timeout_ms`: 10 ms to 10 min.
    pub connect_timeout: Duration,
    /// `read_timeout_ms`: 10 ms to 10 min.
    pub read_timeout: Duration,
    /// `write_timeout_ms`: 10 ms to 10 min.
    pub write_timeout: Duration,
    /// `read_hedge_ms`: up to 10 min; `None` for 0 (automatic).
    pub read_hedge: Option<Duration>,
    /// `write_hold_ms`: up to 10 min.
    pub write_hold: Duration,
    /// `max_lag_ms`: 1 ms to a day.
    pub max_lag: Duration,
    /// `client_idle_timeout_ms`: up to a day; `None` for 0.
    pub client_idle_timeout: Option<Duration>,
    /// `shutdown_grace_ms`: up to an hour.
    pub shutdown_grace: Duration,
}

impl Timing {
    /// The intervals and timeouts of `raw`, if every one is within its bounds.
    pub(super) fn parse(raw: &Raw, problems: &mut Vec<String>) -> Option<Timing> {
        let mut ms = |name, value, bounds| Ranged::new(name, value, bounds, problems);
        let probe_interval = ms("probe_interval_ms", raw.probe_interval_ms, 10..=60_000);
        let discovery_interval = ms(
            "discovery_interval_ms",
            raw.discovery_interval_ms,
            10..=600_000,
        );
        let connect_timeout = ms("connect_timeout_ms", raw.connect_timeout_ms, 10..=600_000);
        let read_timeout = ms("read_timeout_ms", raw.read_timeout_ms, 10..=600_000);
        let write_timeout = ms("write_timeout_ms", raw.write_timeout_ms, 10..=600_000);
        let read_hedge = ms("read_hedge_ms", raw.read_hedge_ms, 0..=600_000);
        let write_hold = ms("write_hold_ms", raw.write_hold_ms, 0..=600_000);
        let max_lag = ms("max_lag_ms", raw.max_lag_ms, 1..=86_400_000);
        let idle = ms(
            "client_idle_timeout_ms",
            raw.client_idle_timeout_ms,
            0..=86_400_000,
        );
        let shutdown_grace = ms("shutdown_grace_ms", raw.shutdown_grace_ms, 0..=3_600_000);
        Some(Timing {
            probe_interval: probe_interval?.millis(),
            discovery_interval: discovery_interval?.millis(),
            connect_timeout: connect_timeout?.millis(),
            read_timeout: read_timeout?.millis(),
            write_timeout: write_timeout?.millis(),
            read_hedge: read_hedge?.nonzero().map(Ranged::millis),
            write_hold: write_hold?.millis(),
            max_lag: max_lag?.millis(),
            client_idle_timeout: idle?.nonzero().map(Ranged::millis),
            shutdown_grace: shutdown_grace?.millis(),
        })
    }
}

/// Threads serving clients, and the shared connections each keeps to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Workers {
    /// `worker_threads`, resolved: 1 to 256.
    pub threads: usize,
    /// `backend_connections`: 1 to 64.
    pub backend_connections: usize,
}

impl Workers {
    /// The thread and connection counts of `raw`, if both are within bounds; 0 threads is resolved here.
    pub(super) fn parse(raw: &Raw, problems: &mut Vec<String>) -> Option<Workers> {
        let threads = Ranged::new(
            "worker_threads",
            raw.worker_threads.into(),
            0..=256,
            problems,
        );
        let connections = Ranged::new(
            "backend_connections",
            raw.backend_connections.into(),
            1..=64,
            problems,
        );
        Some(Workers {
            threads: threads?
                .nonzero()
                .map_or_else(half_the_cores, Ranged::count),
            backend_connections: connections?.count(),
        })
    }
}

/// Half the cores, at least one: on a shared host Redis and the clients need the rest (measured on 2 cores:
/// one worker beats two by 20 to 40% in throughput and CPU per command).
fn half_the_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1))
}

/// What one client may send and keep waiting, what it may be sent, and how many clients there may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientLimits {
    /// The request scanner's limits (`max_bulk_bytes`, `max_array_len`, `max_inline_bytes`).
    pub scanner: Limits,
    /// `max_request_bytes`: 1 KiB to 8 GiB, and at least `max_bulk_bytes`.
    pub max_request_bytes: usize,
    /// `max_client_inflight`: 1 to 2^20.
    pub max_inflight: usize,
    /// `max_client_output_bytes`: up to 1 TiB; `None` for 0.
    pub max_output_bytes: Option<usize>,
    /// `max_total_output_bytes`: up to 1 TiB; `None` for 0.
    pub max_total_output_bytes: Option<usize>,
    /// `max_clients`: 1 to 10 million.
    pub max_clients: usize,
}

impl ClientLimits {
    /// The per-client limits of `raw`, if each is within bounds and one request of the largest bulk fits.
    pub(super) fn parse(raw: &Raw, problems: &mut Vec<String>) -> Option<ClientLimits> {
        let mut n = |name, value, bounds| Ranged::new(name, value, bounds, problems);
        let bulk = n("max_bulk_bytes", raw.max_bulk_bytes, 1024..=4 << 30);
        let array = n("max_array_len", raw.max_array_len, 16..=i32::MAX as u64);
        let inline = n("max_inline_bytes", raw.max_inline_bytes, 64..=1 << 30);
        let request = n("max_request_bytes", raw.max_request_bytes, 1024..=8 << 30);
        let inflight = n("max_client_inflight", raw.max_client_inflight, 1..=1 << 20);
        let output = n(
            "max_client_output_bytes",
            raw.max_client_output_bytes,
            0..=1 << 40,
        );
        let total_output = n(
            "max_total_output_bytes",
            raw.max_total_output_bytes,
            0..=1 << 40,
        );
        let max_clients = n("max_clients", raw.max_clients, 1..=10_000_000);
        // Compared as given, even if either is out of bounds: that is a problem of its own.
        let (request_bytes, bulk_bytes) = (raw.max_request_bytes, raw.max_bulk_bytes);
        if request_bytes < bulk_bytes {
            problems.push(format!(
                "option `max_request_bytes` ({request_bytes}) must be at least `max_bulk_bytes` ({bulk_bytes}) so one request fits"
            ));
            return None;
        }
        Some(ClientLimits {
            scanner: Limits {
                max_bulk_bytes: bulk?.count(),
                max_array_len: array?.count(),
                max_inline_bytes: inline?.count(),
            },
            max_request_bytes: request?.count(),
            max_inflight: inflight?.count(),
            max_output_bytes: output?.nonzero().map(Ranged::count),
            max_total_output_bytes: total_output?.nonzero().map(Ranged::count),
            max_clients: max_clients?.count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{File, Flags};

    fn raw(flags: Flags) -> Raw {
        File::default().merge(flags)
    }

    #[test]
    fn the_defaults_are_within_bounds() {
        let mut problems = Vec::new();
        let raw = raw(Flags::default());
        assert!(Timing::parse(&raw, &mut problems).is_some());
        assert!(Workers::parse(&raw, &mut problems).is_some());
        let limits = ClientLimits::parse(&raw, &mut problems).expect("default limits");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(limits.scanner, Limits::default());
    }

    #[test]
    fn zero_idle_timeout_and_zero_output_limit_mean_none() {
        let raw = raw(Flags {
            client_idle_timeout_ms: Some(0),
            max_client_output_bytes: Some(0),
            max_total_output_bytes: Some(0),
            ..Flags::default()
        });
        let mut problems = Vec::new();
        let timing = Timing::parse(&raw, &mut problems).expect("valid");
        let limits = ClientLimits::parse(&raw, &mut problems).expect("valid");
        assert_eq!(timing.client_idle_timeout, None);
        assert_eq!(limits.max_output_bytes, None);
        assert_eq!(limits.max_total_output_bytes, None);
    }

    #[test]
    fn zero_worker_threads_means_half_the_cores_and_at_least_one() {
        let raw = raw(Flags {
            worker_threads: Some(0),
            ..Flags::default()
        });
        let workers = Workers::parse(&raw, &mut Vec::new()).expect("valid");
        assert_eq!(workers.threads, half_the_cores());
        assert!(workers.threads >= 1);
    }

    #[test]
    fn every_timing_out_of_bounds_is_reported_not_only_the_first() {
        let raw = raw(Flags {
            probe_interval_ms: Some(1),
            read_timeout_ms: Some(1),
            shutdown_grace_ms: Some(u64::MAX),
            ..Flags::default()
        });
        let mut problems = Vec::new();
        assert_eq!(Timing::parse(&raw, &mut problems), None);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn a_request_limit_below_the_bulk_limit_is_refused() {
        let raw = raw(Flags {
            max_bulk_bytes: Some(4096),
            max_request_bytes: Some(2048),
            ..Flags::default()
        });
        let mut problems = Vec::new();
        assert_eq!(ClientLimits::parse(&raw, &mut problems), None);
        assert_eq!(
            problems,
            ["option `max_request_bytes` (2048) must be at least `max_bulk_bytes` (4096) so one request fits"]
        );
    }
}
