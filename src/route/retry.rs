//! What to do with a batch once a node has answered it, failed it, or let it wait too long: deliver the
//! replies, or send the batch again. Shaped like redis-rs's `choose_response`: the per-frame verdicts
//! (`upstream::verdict`) and the kind of batch decide, and this one function holds the rule that keeps
//! data safe: **a write that may have run is never sent again**. A batch may go again only if
//! - it holds only reads (they are safe to run twice), or
//! - it never left the proxy (the connection failed before the bytes went out), or
//! - the node refused every command of it in its own words (`READONLY` from a demoted primary): nothing
//!   ran.

use crate::upstream::{Error, Reply, Verdict};

/// What became of one attempt at a batch.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// The node answered every command.
    Replied(&'a Reply),
    /// The attempt failed (connection lost, refused, never connected).
    Failed(&'a Error),
    /// The deadline passed with no answer.
    TimedOut,
    /// The node answered a read, but ran it on data older than the read must see (the offset measured
    /// before it falls short): the replies are not delivered.
    Behind,
    /// A batch waiting for a node to send it to may try again (the topology changed, or a moment passed).
    Woken,
}

/// The batch the attempt was for.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Only reads: they may run again anywhere.
    pub reads_only: bool,
    /// Holds a read-only script or function: one still running after the deadline is not started on
    /// another node (it would keep that node busy too; a script runs as long as it runs).
    pub scripted: bool,
    /// Commands in it.
    pub count: u32,
    /// Its bytes are kept, so it can be sent again (batches on shared connections).
    pub resendable: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deliver what the attempt gave (the replies, or an error for each command).
    Deliver,
    /// Send the batch again (or hold it until there is somewhere to send it).
    Again {
        /// The attempt reached a node: a failure that counts toward the cap on read retries.
        reached: bool,
        /// The node refused the whole batch for its role (a demoted primary): it must never get this
        /// batch again, even if the topology still names it, and its replies go to the client if no
        /// other node takes the batch in time.
        refused: bool,
    },
}

/// Decides what to do after `attempt` at `batch`.
pub fn choose(attempt: Attempt<'_>, batch: Batch) -> Next {
    if !batch.resendable {
        return Next::Deliver;
    }
    match attempt {
        Attempt::Woken => Next::Again {
            reached: false,
            refused: false,
        },
        // A read that took too long may run elsewhere; a write that may be running may not.
        Attempt::TimedOut if batch.reads_only && !batch.scripted => Next::Again {
            reached: true,
            refused: false,
        },
        Attempt::TimedOut => Next::Deliver,
        // Only reads are checked, and a read is safe to run again; the node did nothing wrong.
        Attempt::Behind => Next::Again {
            reached: false,
            refused: false,
        },
        // A read is safe to run again wherever it got; a write only if it never left the proxy.
        Attempt::Failed(e) if batch.reads_only || matches!(e, Error::Connect { .. }) => {
            Next::Again {
                reached: e.maybe_sent(),
                refused: false,
            }
        }
        Attempt::Failed(_) => Next::Deliver,
        Attempt::Replied(r) => {
            // Every reply READONLY: a demoted primary refused the whole batch; nothing ran.
            let refused = r.verdicts.all(batch.count, |v| *v == Verdict::ReadOnly);
            let read_elsewhere = batch.reads_only && r.verdicts.any(Verdict::read_may_go_elsewhere);
            if refused || read_elsewhere {
                Next::Again {
                    reached: true,
                    refused: refused && !batch.reads_only,
                }
            } else {
                Next::Deliver
            }
        }
    }
}

/// True if a reply shows its batch ran nowhere (refused whole by a demoted primary), so it cannot have
/// changed data.
pub fn refused_whole(reply: &Reply, count: u32) -> bool {
    reply.verdicts.all(count, |v| *v == Verdict::ReadOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Addr;
    use crate::upstream::Verdicts;

    fn reply(verdicts: &[Verdict]) -> Reply {
        let mut v = Verdicts::default();
        for (i, verdict) in verdicts.iter().enumerate() {
            v.note(i as u32, verdict.clone());
        }
        Reply {
            bytes: bytes::Bytes::new(),
            verdicts: v,
            offsets: Default::default(),
            from_primary: true,
            acked: None,
        }
    }

    fn batch(reads_only: bool, count: u32) -> Batch {
        Batch {
            reads_only,
            scripted: false,
            count,
            resendable: true,
        }
    }

    #[test]
    fn a_read_only_script_that_timed_out_is_not_started_elsewhere() {
        let scripted = Batch {
            scripted: true,
            ..batch(true, 1)
        };
        assert_eq!(choose(Attempt::TimedOut, scripted), Next::Deliver);
        // Lost on the way, it ran nowhere for long: another node may run it.
        assert!(matches!(
            choose(Attempt::Failed(&lost()), scripted),
            Next::Again { .. }
        ));
    }

    fn lost() -> Error {
        Error::Lost {
            addr: Addr::parse("n:1").expect("addr"),
        }
    }

    #[test]
    fn a_write_that_may_have_run_is_never_sent_again() {
        assert_eq!(
            choose(Attempt::Failed(&lost()), batch(false, 1)),
            Next::Deliver
        );
        let refused = Error::Connect {
            addr: Addr::parse("n:1").expect("addr"),
            reason: "refused".into(),
        };
        assert!(matches!(
            choose(Attempt::Failed(&refused), batch(false, 1)),
            Next::Again { reached: false, .. }
        ));
        // A write that took too long may still run: never again elsewhere.
        assert_eq!(choose(Attempt::TimedOut, batch(false, 1)), Next::Deliver);
        assert!(matches!(
            choose(Attempt::TimedOut, batch(true, 1)),
            Next::Again { reached: true, .. }
        ));
        // One command refused, one that ran: the batch may have written.
        let partly = reply(&[Verdict::ReadOnly, Verdict::Answer]);
        assert_eq!(
            choose(Attempt::Replied(&partly), batch(false, 2)),
            Next::Deliver
        );
        // LOADING on a write is the client's to see, as Redis would answer it.
        let loading = reply(&[Verdict::Loading]);
        assert_eq!(
            choose(Attempt::Replied(&loading), batch(false, 1)),
            Next::Deliver
        );
    }

    #[test]
    fn a_batch_refused_whole_by_a_demoted_primary_goes_again_never_to_it() {
        let all = reply(&[Verdict::ReadOnly, Verdict::ReadOnly]);
        assert_eq!(
            choose(Attempt::Replied(&all), batch(false, 2)),
            Next::Again {
                reached: true,
                refused: true
            }
        );
        assert!(refused_whole(&all, 2));
    }

    #[test]
    fn reads_go_again_after_any_failure_a_node_of_another_role_would_not_give() {
        for v in [
            Verdict::Loading,
            Verdict::MasterDown,
            Verdict::NoScript,
            Verdict::ReadOnly,
        ] {
            let r = reply(&[Verdict::Answer, v]);
            assert!(matches!(
                choose(Attempt::Replied(&r), batch(true, 2)),
                Next::Again { refused: false, .. }
            ));
        }
        assert!(matches!(
            choose(Attempt::Failed(&lost()), batch(true, 1)),
            Next::Again { reached: true, .. }
        ));
        assert_eq!(
            choose(Attempt::Replied(&reply(&[Verdict::Answer])), batch(true, 1)),
            Next::Deliver
        );
    }

    #[test]
    fn a_read_that_ran_on_data_too_old_goes_again_without_counting_as_a_failure() {
        assert_eq!(
            choose(Attempt::Behind, batch(true, 3)),
            Next::Again {
                reached: false,
                refused: false
            }
        );
    }

    #[test]
    fn a_batch_without_its_bytes_is_delivered_as_it_is() {
        let b = Batch {
            resendable: false,
            ..batch(true, 1)
        };
        assert_eq!(choose(Attempt::TimedOut, b), Next::Deliver);
    }
}
