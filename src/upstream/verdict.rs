//! What one reply frame says about the command it answers and the node that sent it. Every frame read
//! from a shared connection is judged here, on its own; what the proxy then does with a batch (deliver,
//! send again elsewhere, hold) is decided from these verdicts by `route::retry`.
//!
//! Only Redis's own words count. A script or a module may return an error that starts with the same
//! word after it wrote, so a verdict that says "not run" matches the server's exact text.

use crate::node::Addr;

/// What one reply frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An answer to the command (a value, or an error about the command itself): deliver it.
    Answer,
    /// `READONLY You can't write against a read only replica`: the node is a replica now (a demoted
    /// primary). The command was refused, not run.
    ReadOnly,
    /// `LOADING`: the node is loading its dataset. Not run.
    Loading,
    /// `MASTERDOWN`: a replica whose link to its master is down refuses reads. Not run.
    MasterDown,
    /// `NOSCRIPT`: the script cache is per node; another node may have the script. Not run.
    NoScript,
    /// `BUSY`: a script or function is running past the busy threshold. Not run; the node is alive.
    Busy,
    /// `MOVED slot host:port`: a cluster node that does not own the slot. Not run.
    Moved {
        /// The key's slot.
        slot: u16,
        /// The node that owns it.
        to: Addr,
    },
    /// `ASK slot host:port`: the slot is migrating; ask the target with `ASKING`. Not run.
    Ask {
        /// The key's slot.
        slot: u16,
        /// The node importing it.
        to: Addr,
    },
    /// `TRYAGAIN`: a multi-key command during a slot migration. Not run.
    TryAgain,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot now. Not run.
    ClusterDown,
}

impl Verdict {
    /// True if the node did not run the command: sending it elsewhere (or later) runs it at most once.
    pub fn not_run(&self) -> bool {
        !matches!(self, Verdict::Answer)
    }

    /// True if the node's role or state changed under the proxy, so the topology is worth a look now.
    pub fn topology_changed(&self) -> bool {
        matches!(
            self,
            Verdict::ReadOnly
                | Verdict::Loading
                | Verdict::MasterDown
                | Verdict::Moved { .. }
                | Verdict::ClusterDown
        )
    }

    /// True if a read that got this may be served by another node (the primary, another replica).
    pub fn read_may_go_elsewhere(&self) -> bool {
        matches!(
            self,
            Verdict::ReadOnly | Verdict::Loading | Verdict::MasterDown | Verdict::NoScript
        )
    }
}

/// Judges one reply frame (the whole frame, as read from the node).
pub fn judge(frame: &[u8]) -> Verdict {
    if frame.first() != Some(&b'-') {
        return Verdict::Answer;
    }
    // Redis's own words for a write refused by a replica ("replica", "slave" before 5.0).
    if frame.starts_with(b"-READONLY You can't write against a read only ") {
        Verdict::ReadOnly
    } else if frame.starts_with(b"-LOADING ") {
        Verdict::Loading
    } else if frame.starts_with(b"-MASTERDOWN ") {
        Verdict::MasterDown
    } else if frame.starts_with(b"-NOSCRIPT ") {
        Verdict::NoScript
    } else if frame.starts_with(b"-BUSY ") {
        Verdict::Busy
    } else if frame.starts_with(b"-TRYAGAIN ") {
        Verdict::TryAgain
    } else if frame.starts_with(b"-CLUSTERDOWN ") {
        Verdict::ClusterDown
    } else if let Some(rest) = frame.strip_prefix(b"-MOVED ") {
        redirect(rest).map_or(Verdict::Answer, |(slot, to)| Verdict::Moved { slot, to })
    } else if let Some(rest) = frame.strip_prefix(b"-ASK ") {
        redirect(rest).map_or(Verdict::Answer, |(slot, to)| Verdict::Ask { slot, to })
    } else {
        Verdict::Answer
    }
}

/// `slot host:port\r\n` of a MOVED or ASK error. An empty host (Redis 7's `cluster-preferred-endpoint-type
/// unknown-endpoint`) is not followed.
fn redirect(rest: &[u8]) -> Option<(u16, Addr)> {
    let line = std::str::from_utf8(rest).ok()?.trim_end();
    let (slot, addr) = line.split_once(' ')?;
    let slot: u16 = slot.parse().ok().filter(|s| *s < 16384)?;
    Some((slot, Addr::parse(addr).ok()?))
}

/// The verdicts of one job's frames that are not plain answers, by position. Empty (and without an
/// allocation) for the usual job whose every frame is an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts(Vec<(u32, Verdict)>);

impl Verdicts {
    /// Notes the verdict of frame `index`.
    pub fn note(&mut self, index: u32, verdict: Verdict) {
        if verdict != Verdict::Answer {
            self.0.push((index, verdict));
        }
    }

    /// True if every one of `count` frames was not run (refused whole).
    pub fn none_ran(&self, count: u32) -> bool {
        count > 0 && self.0.len() == count as usize && self.0.iter().all(|(_, v)| v.not_run())
    }

    /// True if every one of `count` frames is `verdict`'s kind.
    pub fn all(&self, count: u32, kind: impl Fn(&Verdict) -> bool) -> bool {
        count > 0 && self.0.len() == count as usize && self.0.iter().all(|(_, v)| kind(v))
    }

    /// True if some frame's verdict is of the kind.
    pub fn any(&self, kind: impl Fn(&Verdict) -> bool) -> bool {
        self.0.iter().any(|(_, v)| kind(v))
    }

    /// The verdicts that are not plain answers, with their frame's position.
    pub fn iter(&self) -> impl Iterator<Item = &(u32, Verdict)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_own_words_say_not_run() {
        assert_eq!(
            judge(b"-READONLY You can't write against a read only replica.\r\n"),
            Verdict::ReadOnly
        );
        assert_eq!(
            judge(b"-READONLY You can't write against a read only slave.\r\n"),
            Verdict::ReadOnly
        );
        // A script's own error: it may have written first.
        assert_eq!(judge(b"-READONLY not really\r\n"), Verdict::Answer);
        assert_eq!(judge(b"-LOADING Redis is loading\r\n"), Verdict::Loading);
        assert_eq!(
            judge(b"-NOSCRIPT No matching script.\r\n"),
            Verdict::NoScript
        );
        assert_eq!(
            judge(b"-BUSY Redis is busy running a script.\r\n"),
            Verdict::Busy
        );
        assert_eq!(
            judge(b"-ERR wrong number of arguments\r\n"),
            Verdict::Answer
        );
        assert_eq!(judge(b"-WRONGTYPE Operation\r\n"), Verdict::Answer);
        assert_eq!(judge(b"+OK\r\n"), Verdict::Answer);
        assert_eq!(judge(b"$5\r\n-LOAD\r\n"), Verdict::Answer);
    }

    #[test]
    fn redirections_name_the_slot_and_the_node() {
        assert_eq!(
            judge(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Verdict::Moved {
                slot: 3999,
                to: Addr::parse("127.0.0.1:6381").expect("addr")
            }
        );
        assert_eq!(
            judge(b"-ASK 3999 10.0.0.2:7000\r\n"),
            Verdict::Ask {
                slot: 3999,
                to: Addr::parse("10.0.0.2:7000").expect("addr")
            }
        );
        assert_eq!(judge(b"-MOVED 16384 h:1\r\n"), Verdict::Answer);
        assert_eq!(judge(b"-MOVED 12 :6379\r\n"), Verdict::Answer);
        assert_eq!(judge(b"-TRYAGAIN Multiple keys\r\n"), Verdict::TryAgain);
    }

    #[test]
    fn a_batch_refused_whole_ran_nowhere() {
        let mut v = Verdicts::default();
        v.note(0, Verdict::ReadOnly);
        v.note(1, Verdict::Answer);
        assert!(!v.none_ran(2));
        v.note(1, Verdict::ReadOnly);
        assert!(v.none_ran(2));
        assert!(v.all(2, |v| *v == Verdict::ReadOnly));
        assert!(!Verdicts::default().none_ran(0));
    }
}
