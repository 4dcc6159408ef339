//! What a node is, below everything that talks to one: its address, its identity (the Redis process and the
//! replication history it follows), its zone, and its replication health as the prober last measured it.
//!
//! A node is known by what it is, not by the address someone used for it: two addresses answering with
//! the same `run_id` are one node (see [`Identity`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod zone;

pub use zone::{Locality, Zone, ZoneRule, Zones};

/// An upstream address as configured: `host:port`, resolved when connecting (hosts may be names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(String);

impl Addr {
    /// Checks that `s` is `host:port` with a numeric port.
    pub fn parse(s: &str) -> Result<Addr, String> {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                // A host of digits and dots can only mean an IPv4 address, and must be one
                // (`10.0.0.300` is a typo, not a name to look up).
                let dotted = host.bytes().all(|c| c.is_ascii_digit() || c == b'.');
                if dotted && host.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(format!("`{host}` in `{s}` is not an IPv4 address"));
                }
                Ok(Addr(s.to_string()))
            }
            _ => Err(format!("`{s}` is not host:port")),
        }
    }

    /// The address as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Host part, without brackets.
    pub fn host(&self) -> &str {
        let host = self.0.rsplit_once(':').map_or("", |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Port part.
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A process-wide counter that orders offset measurements against replies: every measurement (a probe's
/// `ROLE`, or one written around a batch on the data path) takes a new epoch just before it is sent. A
/// session that saw a reply while the epoch was `e` knows that any measurement of epoch > `e` was sent
/// after the reply, so its offset covers what the reply's command did.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Takes the epoch for a measurement about to be sent.
pub fn next_epoch() -> u64 {
    EPOCH.fetch_add(1, Ordering::AcqRel) + 1
}

/// The current epoch.
pub fn current_epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// Replication measurements of one node, written by its prober and by the data path.
#[derive(Debug, Default)]
pub struct ReplState {
    /// The newest measurement, by epoch.
    sample: std::sync::Mutex<Option<Sample>>,
    /// An offset the node is known to have reached: the largest measured since its prober last reset it.
    offset: AtomicU64,
    /// Lag behind the primary in bytes, as of the last probe.
    pub lag_bytes: AtomicU64,
    /// Lag behind the primary in milliseconds, as of the last probe.
    pub lag_ms: AtomicU64,
    /// May serve reads (replicas only): answering, link up, within the lag limits.
    pub eligible: AtomicBool,
    /// Why it may or may not ([`Why`] as a number).
    why: std::sync::atomic::AtomicU8,
    /// When a probe last got an answer, in milliseconds since the process started (0: never, or the
    /// last probe failed).
    last_answer_ms: AtomicU64,
    /// The last probe found the node down for certain (connection refused or closed), not merely slow.
    down: AtomicBool,
    /// When the first probe to fail since the last answer gave up (0: the last probe answered, or none
    /// failed yet). The node has said nothing since at least then.
    silent_since_ms: AtomicU64,
    /// Its last probe got `-BUSY`: a script or function runs there past `busy-reply-threshold`. The node
    /// is alive (and keeps its role), but runs nothing else until the script ends or is killed.
    busy: AtomicBool,
}

/// Why a node may or may not serve reads (for `/topology` and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    /// Not probed yet.
    Unprobed = 0,
    /// It may.
    Eligible = 1,
    /// Lag in time over the limit.
    Lag = 2,
    /// Lag in bytes over the limit.
    LagBytes = 3,
    /// Its link to the primary is down while the primary answers.
    LinkDown = 4,
    /// It does not answer probes within the timeout.
    NoAnswer = 5,
    /// It does not report being a replica.
    NotReplica = 6,
    /// It is the primary.
    IsPrimary = 7,
    /// Requests to it keep failing (circuit breaker open until a probe finds it healthy).
    Tripped = 8,
    /// Its lag cannot be measured yet (the primary's offset history does not reach back far enough).
    Unmeasured = 9,
    /// It answers BUSY: a script or function runs there past `busy-reply-threshold`.
    Busy = 10,
}

impl Why {
    fn from_u8(n: u8) -> Why {
        [
            Why::Unprobed,
            Why::Eligible,
            Why::Lag,
            Why::LagBytes,
            Why::LinkDown,
            Why::NoAnswer,
            Why::NotReplica,
            Why::IsPrimary,
            Why::Tripped,
            Why::Unmeasured,
            Why::Busy,
        ]
        .get(usize::from(n))
        .copied()
        .unwrap_or(Why::Unprobed)
    }

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Why::Unprobed => "not probed yet",
            Why::Eligible => "eligible",
            Why::Lag => "lag over max_lag_ms",
            Why::LagBytes => "lag over max_lag_bytes",
            Why::LinkDown => "master link down",
            Why::NoAnswer => "not answering probes",
            Why::NotReplica => "not a replica",
            Why::IsPrimary => "primary",
            Why::Tripped => "requests keep failing",
            Why::Unmeasured => "lag not measurable yet",
            Why::Busy => "busy running a script",
        }
    }
}

/// The offset a node reported, and the epoch of the measurement that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Measurement epoch.
    pub epoch: u64,
    /// Replication offset.
    pub offset: u64,
}

impl ReplState {
    /// Records a probe answer: the node's offset now, whatever it was before (it goes back after a
    /// restart or a full resync).
    pub fn record(&self, epoch: u64, offset: u64) {
        self.offset.store(offset, Ordering::Release);
        self.keep_sample(Sample { epoch, offset });
    }

    /// Records an offset measured on the data path (`ROLE` around a batch): the node has reached it.
    pub fn observe(&self, epoch: u64, offset: u64) {
        self.offset.fetch_max(offset, Ordering::AcqRel);
        self.keep_sample(Sample { epoch, offset });
    }

    /// Keeps `s` if it is newer than the sample kept: measurements of several connections answer out of
    /// order, and an epoch must never be paired with an older measurement's offset.
    fn keep_sample(&self, s: Sample) {
        let mut kept = self
            .sample
            .lock()
            .expect("sample lock is never poisoned: nothing panics while holding it");
        if kept.is_none_or(|k| k.epoch < s.epoch) {
            *kept = Some(s);
        }
    }

    /// The newest measurement, if any.
    pub fn sample(&self) -> Option<Sample> {
        *self
            .sample
            .lock()
            .expect("sample lock is never poisoned: nothing panics while holding it")
    }

    /// Offset known to be reached (0 if unknown).
    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    /// Notes that a probe got an answer now.
    pub fn answered(&self) -> u64 {
        let now = since_start_ms();
        self.last_answer_ms.store(now, Ordering::Relaxed);
        self.silent_since_ms.store(0, Ordering::Relaxed);
        self.down.store(false, Ordering::Relaxed);
        now
    }

    /// True if the last probe found the node down for certain: it takes no writes from anyone.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Notes that a probe failed (now, as it gave up): the node no longer counts as answering. `down`:
    /// the node refused or closed the connection (down for certain), rather than timing out (slow).
    pub fn unanswered(&self, down: bool) {
        self.last_answer_ms.store(0, Ordering::Relaxed);
        self.down.store(down, Ordering::Relaxed);
        let _ = self.silent_since_ms.compare_exchange(
            0,
            since_start_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// How old the node's data can be now, at most, as far as its last probe tells: the lag it measured
    /// then, plus the time since (the data can only have moved forward). `None` if the last probe did
    /// not answer or the lag is unknown.
    pub fn staleness_bound(&self) -> Option<Duration> {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        let lag = self.lag_ms.load(Ordering::Relaxed);
        if last == 0 || lag == u64::MAX {
            return None;
        }
        Some(Duration::from_millis(
            lag.saturating_add(since_start_ms().saturating_sub(last)),
        ))
    }

    /// Notes whether the last probe's answer was `-BUSY` (it counts as an answer either way).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// True if its last probe got `-BUSY` and none failed since: a script or function keeps it busy now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) && self.answering()
    }

    /// True if its last probe answered.
    pub fn answering(&self) -> bool {
        self.last_answer_ms.load(Ordering::Relaxed) != 0
    }

    /// True if the node has been silent for longer than `window`: counted from when the first probe
    /// that failed gave up, so anyone who heard from the node (a sentinel) heard it no later than that,
    /// however seldom the probes run.
    pub fn silent_longer_than(&self, window: Duration) -> bool {
        let since = self.silent_since_ms.load(Ordering::Relaxed);
        since != 0 && since_start_ms().saturating_sub(since) > window.as_millis() as u64
    }

    /// How long the node has been silent without being down: since the first probe that failed gave up
    /// (a lower bound), while it times out rather than refusing or closing connections (frozen,
    /// stalled, or cut off by the network). `None` while it answers, or if it is down for certain (a
    /// failover is then what comes next).
    pub fn stalled_for(&self) -> Option<Duration> {
        let since = self.silent_since_ms.load(Ordering::Relaxed);
        (since != 0 && !self.is_down())
            .then(|| Duration::from_millis(since_start_ms().saturating_sub(since)))
    }

    /// True if a probe got an answer within `window` and none failed since.
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        last != 0 && since_start_ms().saturating_sub(last) <= window.as_millis() as u64
    }

    /// Sets eligibility and its reason together.
    pub fn set(&self, why: Why) {
        self.why.store(why as u8, Ordering::Relaxed);
        self.eligible.store(why == Why::Eligible, Ordering::Relaxed);
    }

    /// Why it may or may not serve reads.
    pub fn why(&self) -> Why {
        Why::from_u8(self.why.load(Ordering::Relaxed))
    }

    /// True if it may serve reads.
    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first call (at least 1, so 0 can mean never).
fn since_start_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A Redis process, as `INFO server` names it (`run_id`): new with every start of the server. Two addresses
/// that answer with the same run id are one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub String);

/// A replication history (`master_replid` of `INFO replication`): a primary and every replica synced
/// with it, directly or through other replicas, report the same one. A promoted replica starts a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplId(pub String);

/// What a node is: the process and the replication history it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The process.
    pub run_id: RunId,
    /// The replication history it is on, if it reported one.
    pub replid: Option<ReplId>,
}

impl Identity {
    /// Reads `run_id` (INFO server) and `master_replid` (INFO replication) from INFO text with either or
    /// both sections. `None` without a run id.
    pub fn from_info(text: &str) -> Option<Identity> {
        let run_id = info_field(text, "run_id")?;
        if run_id.is_empty() {
            return None;
        }
        Some(Identity {
            run_id: RunId(run_id.to_string()),
            replid: info_field(text, "master_replid")
                .filter(|r| !r.is_empty())
                .map(|r| ReplId(r.to_string())),
        })
    }
}

/// The value of `name` in INFO text (`name:value` lines).
pub fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
}
