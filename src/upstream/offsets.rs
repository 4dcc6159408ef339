//! Replication offsets measured on the data path, without a round trip of their own.
//!
//! A node runs the commands of one connection in order. So `ROLE` written on a shared connection just
//! before a batch reports an offset the batch's commands see at least, and `ROLE` just after it an
//! offset they see at most (on the primary: an offset that covers every write of the batch). The
//! connection adds these frames around a batch when a job asks for them ([`Want`]), reads their replies
//! itself, and hands each job the offsets that bracket it ([`Offsets`]). One pair serves every job of a
//! batch, so many clients' requests written together pay for two small commands.

/// Which offsets a job needs measured around it, and whether replicas must acknowledge its writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// An offset its commands see at least: `ROLE` before the batch.
    pub before: bool,
    /// An offset its commands see at most (that covers its writes): `ROLE` after the batch.
    pub after: bool,
    /// Replicas that must acknowledge its writes: `WAIT` after the batch (see [`Acks`]).
    pub acks: Option<Acks>,
}

/// How many replicas must acknowledge a batch's writes, and how long to wait for them: the connection
/// writes `WAIT replicas timeout_ms` after the batch and reads its reply itself. Redis's WAIT counts the
/// replicas that acknowledged every write the connection made before it, so one WAIT covers every job of
/// the batch (and of earlier batches on that connection), whichever client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acks {
    /// Replicas that must acknowledge (`min_write_acks`), at least 1.
    pub replicas: u32,
    /// How long the node waits for them, in milliseconds (`write_ack_timeout_ms`), at least 1: WAIT 0
    /// would wait for ever.
    pub timeout_ms: u64,
}

impl Acks {
    /// The `WAIT` request.
    pub fn request(&self) -> bytes::Bytes {
        let mut out = Vec::with_capacity(48);
        crate::resp::encode_command(
            &mut out,
            &[
                b"WAIT",
                self.replicas.to_string().as_bytes(),
                self.timeout_ms.max(1).to_string().as_bytes(),
            ],
        );
        bytes::Bytes::from(out)
    }
}

/// The number of replicas a `WAIT` reply reports; 0 for an error (a node that is no longer a primary, a
/// WAIT refused): nothing is known to have acknowledged.
pub fn wait_count(frame: &[u8]) -> u32 {
    frame
        .strip_prefix(b":")
        .and_then(|r| r.strip_suffix(b"\r\n"))
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
}

impl Want {
    /// Nothing measured.
    pub const NONE: Want = Want {
        before: false,
        after: false,
        acks: None,
    };

    /// True if an offset is asked for (`ROLE` before or after).
    pub fn any(self) -> bool {
        self.before || self.after
    }
}

/// The offsets measured around a job, where asked for and answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    /// The node's offset just before the job's commands ran.
    pub before: Option<u64>,
    /// The node's offset just after the job's commands ran.
    pub after: Option<u64>,
}

/// The `ROLE` request the connection writes around batches.
pub const ROLE: &[u8] = b"*1\r\n$4\r\nROLE\r\n";

/// The replication offset in a `ROLE` reply: a primary's `master_repl_offset`, or the offset a replica
/// has processed. `None` for anything else (an error, a sentinel, a replica whose link is down).
pub fn role_offset(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(b"*")?;
    let (_, rest) = line(rest)?;
    let (role, rest) = bulk(rest)?;
    match role {
        b"master" => int(rest).map(|(n, _)| n),
        b"slave" => {
            let (_, rest) = bulk(rest)?; // master host
            let (_, rest) = int(rest)?; // master port
            let (_, rest) = bulk(rest)?; // link state
            int(rest).map(|(n, _)| n)
        }
        _ => None,
    }
}

/// A line up to CRLF, and what follows.
fn line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b'\r', b)?;
    Some((&b[..end], b.get(end + 2..)?))
}

/// A bulk string, and what follows.
fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = line(b.strip_prefix(b"$")?)?;
    let len: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
    let body = rest.get(..len)?;
    Some((body, rest.get(len + 2..)?))
}

/// A non-negative integer, and what follows.
fn int(b: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = line(b.strip_prefix(b":")?)?;
    Some((std::str::from_utf8(n).ok()?.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_replies_give_the_count_and_errors_count_as_none() {
        assert_eq!(wait_count(b":2\r\n"), 2);
        assert_eq!(wait_count(b":0\r\n"), 0);
        assert_eq!(
            wait_count(b"-ERR WAIT cannot be used with replica instances.\r\n"),
            0
        );
        assert_eq!(
            &Acks {
                replicas: 1,
                timeout_ms: 50
            }
            .request()[..],
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$2\r\n50\r\n"
        );
    }

    #[test]
    fn role_replies_give_the_offset_of_primaries_and_replicas() {
        assert_eq!(
            role_offset(b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n"),
            Some(3129659)
        );
        assert_eq!(role_offset(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"), Some(0));
        assert_eq!(
            role_offset(
                b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n"
            ),
            Some(3167038)
        );
        // A replica whose link is down reports -1.
        assert_eq!(
            role_offset(
                b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$7\r\nconnect\r\n:-1\r\n"
            ),
            None
        );
        assert_eq!(
            role_offset(b"-NOPERM this user has no permissions\r\n"),
            None
        );
        assert_eq!(role_offset(b"*2\r\n$8\r\nsentinel\r\n*0\r\n"), None);
    }
}
