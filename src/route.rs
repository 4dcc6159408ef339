//! Routing decisions, free of I/O: given a command's class, a session's state and the topology snapshot,
//! where the command goes ([`plan`](self)); where a read goes and what the session has seen ([`read`]); what
//! a node's replies mean for the batch they answer ([`retry`]).

pub mod read;
pub mod retry;

use serde::Deserialize;

pub use read::{ReadState, ReadTarget};

/// How reads are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-your-writes and monotonic reads per client session, within the lag limit.
    Session,
    /// Any replica within the lag limit.
    Eventual,
    /// Every read goes to the primary.
    Primary,
}

/// What a read does when no replica is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Read from the primary.
    Primary,
    /// Fail the read with an error.
    Error,
}

/// Why a read went to the primary (the label of `redsplit_reads_on_primary_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryReason {
    /// Read-your-writes or monotonic reads: no replica is known to hold what the session wrote or read.
    Session,
    /// Replicas exist but none is within the lag limit.
    Lag,
    /// There are no replicas.
    NoReplica,
    /// Inside MULTI/WATCH, or otherwise pinned.
    Transaction,
    /// `consistency = "primary"`, or a retry after a replica failed.
    Policy,
}

impl From<PrimaryReason> for crate::metrics::ReadReason {
    fn from(r: PrimaryReason) -> crate::metrics::ReadReason {
        use crate::metrics::ReadReason as M;
        match r {
            PrimaryReason::Session => M::Session,
            PrimaryReason::Lag => M::Lag,
            PrimaryReason::NoReplica => M::NoReplica,
            PrimaryReason::Transaction => M::Transaction,
            PrimaryReason::Policy => M::Policy,
        }
    }
}
