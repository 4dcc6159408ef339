//! Every reply the proxy makes itself: the `-ERR` texts clients can see, and RESP2/RESP3 encoders for
//! locally answered commands. These replies are small and few, so they are written directly rather than
//! through `redis-protocol`'s frame types.

use bytes::{BufMut, Bytes, BytesMut};

use crate::route::PrimaryReason;
use crate::upstream;

/// `+OK`
pub const OK: &[u8] = b"+OK\r\n";
/// `+PONG`
pub const PONG: &[u8] = b"+PONG\r\n";
/// `+RESET`
pub const RESET: &[u8] = b"+RESET\r\n";

/// Errors the proxy itself reports to clients.
#[derive(Debug, Clone)]
pub enum ClientError<'a> {
    /// The client sent malformed RESP; its connection closes after this.
    Protocol(&'a crate::resp::Error),
    /// A request larger than `max_request_bytes`; the connection closes after this.
    RequestTooLarge(usize),
    /// The upstream failed before or after the command was sent.
    Upstream(&'a upstream::Error),
    /// A read with `fallback = "error"` and no replica to serve it.
    NoReplica(PrimaryReason),
    /// No primary is known.
    NoPrimary,
    /// A read only the primary may serve, which has been silent this long.
    PrimarySilent(std::time::Duration),
    /// A read that ran on data older than it must see, with nowhere else to go.
    NotFresh,
    /// A command the proxy cannot follow inside MULTI.
    InMulti(&'a str),
    /// A read timed out on every node it was tried on.
    ReadTimedOut,
    /// No primary reachable within the hold (`write_hold_ms`); the command never ran.
    NoPrimaryAfter(u64),
    /// A command the proxy does not pass on.
    Unsupported(&'a str),
    /// A command that stops, moves or reshapes a node, from a client that is not an admin user.
    Guarded(&'a str),
    /// Wrong number of arguments for a locally handled command.
    Arity(&'a str),
    /// A syntax error in a locally handled command.
    Syntax,
    /// `SELECT` with something other than a database number.
    BadDb,
    /// `HELLO` with a protocol other than 2 or 3.
    NoProto,
    /// `CLIENT SETNAME` with spaces or special characters.
    BadName,
    /// `EXEC` or `DISCARD` without `MULTI`.
    WithoutMulti(&'a str),
    /// A connection of the client's own could not be opened for a transaction, pub/sub or blocking command.
    Pin(&'a upstream::Error),
    /// The client's own connection (transaction, WATCH, pub/sub, tracking) is to a node that is no longer
    /// the primary.
    PrimaryChanged,
    /// A SCAN-family cursor whose node is gone or no longer serves reads (or whose node cannot be named
    /// in a cursor): the iteration cannot go on anywhere else.
    CursorNode,
    /// A write in flight on a node another node replaced as the primary: it may have run there, and
    /// what a former primary ran may be lost.
    FormerPrimary(&'a crate::node::Addr),
    /// A write whose node sent nothing on its connection for `write_timeout_ms`.
    WriteTimedOut(&'a crate::node::Addr, u64),
    /// A write the primary ran that fewer replicas than `min_write_acks` acknowledged within
    /// `write_ack_timeout_ms` (`acked`: how many did; `None`: the connection broke before WAIT answered).
    NoAck {
        /// Replicas that acknowledged it, if known.
        acked: Option<u32>,
        /// Replicas that had to.
        need: u32,
        /// How long they were waited for, in milliseconds.
        timeout_ms: u64,
    },
    /// A command that may write, refused by the split-brain guard: too few good replicas.
    NoReplicas(crate::route::guard::Closed),
    /// In front of a cluster: a command whose keys hash to different slots, which the proxy cannot split.
    CrossSlot,
    /// In front of a cluster: `SELECT` of a database other than 0.
    ClusterSelect,
    /// In front of a cluster: no shard owns the key's slot (the cluster lost it, or the proxy has not
    /// learned the slot map yet).
    SlotUnserved(u16),
    /// In front of a cluster: a command of a transaction or pinned session for another shard than the
    /// one the session is on.
    OtherShard,
}

impl ClientError<'_> {
    /// The error as one RESP error frame.
    pub fn frame(&self) -> Bytes {
        let text = match self {
            ClientError::Protocol(e) => format!("ERR Protocol error: {e}"),
            ClientError::RequestTooLarge(limit) => {
                format!("ERR Protocol error: request larger than {limit} bytes")
            }
            ClientError::Upstream(upstream::Error::Refused { reply, .. }) => reply.clone(),
            ClientError::Upstream(
                e @ (upstream::Error::Lost { .. } | upstream::Error::Protocol { .. }),
            ) => {
                format!("ERR redsplit: {e}; the command may have run")
            }
            ClientError::Upstream(e) => format!("ERR redsplit: {e}"),
            ClientError::NoReplica(reason) => {
                format!("ERR redsplit: no replica can serve this read ({reason:?}) and fallback is \"error\"")
            }
            ClientError::NoPrimary => "MASTERDOWN redsplit: no primary is known".into(),
            ClientError::NotFresh => "ERR redsplit: the node that ran this read was behind what this \
                connection wrote or read, and no other node could run it in time; the reply was not \
                delivered"
                .into(),
            ClientError::PrimarySilent(silent) => format!(
                "ERR redsplit: no replica is known to be fresh enough for this read (max_lag_ms, or what \
                 this connection wrote or read) and the primary has not answered for {} ms (frozen or \
                 unreachable); the read was not run",
                silent.as_millis()
            ),
            ClientError::InMulti(cmd) => {
                format!("ERR redsplit: {cmd} is not supported inside MULTI")
            }
            ClientError::ReadTimedOut => {
                "ERR redsplit: read timed out on every node tried (read_timeout_ms)".into()
            }
            ClientError::PrimaryChanged => {
                "ERR redsplit: the primary changed; this connection's session \
                 (transaction, WATCH, subscriptions, tracking) was on the old one: reconnect"
                    .into()
            }
            ClientError::NoPrimaryAfter(ms) => {
                format!("MASTERDOWN redsplit: no primary reachable for {ms} ms (write_hold_ms); the command was not run")
            }
            ClientError::Unsupported(cmd) => {
                format!("ERR redsplit: {cmd} is not supported through the proxy")
            }
            ClientError::Guarded(cmd) => format!(
                "NOPERM redsplit: {cmd} stops, moves or reshapes a node; only a proxy admin user \
                 (admin_user) may run it"
            ),
            ClientError::Arity(cmd) => format!("ERR wrong number of arguments for '{cmd}' command"),
            ClientError::Syntax => "ERR syntax error".into(),
            ClientError::BadDb => "ERR value is not an integer or out of range".into(),
            ClientError::NoProto => "NOPROTO unsupported protocol version".into(),
            ClientError::BadName => {
                "ERR Client names cannot contain spaces, newlines or special characters.".into()
            }
            ClientError::WithoutMulti(cmd) => format!("ERR {cmd} without MULTI"),
            ClientError::Pin(e) => {
                format!("ERR redsplit: cannot open a dedicated upstream connection: {e}")
            }
            ClientError::FormerPrimary(addr) => format!(
                "ERR redsplit: the primary changed while this command was in flight on {addr}; \
                 it may have run there, on a former primary, and may be lost"
            ),
            ClientError::WriteTimedOut(addr, ms) => format!(
                "ERR redsplit: {addr} sent nothing for {ms} ms (write_timeout_ms); the command may have run"
            ),
            ClientError::CrossSlot => "CROSSSLOT Keys in request don't hash to the same slot".into(),
            ClientError::ClusterSelect => "ERR SELECT is not allowed in cluster mode".into(),
            ClientError::SlotUnserved(slot) => {
                format!("CLUSTERDOWN Hash slot {slot} not served (redsplit knows no shard that owns it)")
            }
            ClientError::OtherShard => "CROSSSLOT redsplit: keys in this transaction (or WATCH, or \
                subscription) hash to another shard than the one it runs on"
                .into(),
            ClientError::CursorNode => {
                "ERR redsplit: the node this SCAN cursor belongs to is gone or \
                 no longer serves reads; start the iteration again with cursor 0"
                    .into()
            }
            ClientError::NoAck {
                acked: Some(acked),
                need,
                timeout_ms,
            } => format!(
                "NOACK redsplit: write applied on the primary but acknowledged by {acked} of {need} \
                 replicas within {timeout_ms} ms (min_write_acks); treat it as unknown: it may be lost \
                 if the primary fails"
            ),
            ClientError::NoAck {
                acked: None, need, ..
            } => format!(
                "NOACK redsplit: write applied on the primary, but the connection to it was lost before \
                 {need} replicas acknowledged it (min_write_acks); treat it as unknown: it may be lost \
                 if the primary fails"
            ),
            ClientError::NoReplicas(closed) => format!(
                "NOREPLICAS Not enough good replicas to write: the proxy's guard (min_replicas) counts \
                 {} of {} replicas connected within {} ms of lag (min_replicas_max_lag_ms); the command \
                 was not sent",
                closed.good,
                closed.need,
                closed.max_lag.as_millis()
            ),
        };
        let text = text.replace(['\r', '\n'], " ");
        let mut b = BytesMut::with_capacity(text.len() + 3);
        b.put_u8(b'-');
        b.put_slice(text.as_bytes());
        b.put_slice(b"\r\n");
        b.freeze()
    }

    /// `n` copies of the error, one per command of a failed batch.
    pub fn frames(&self, n: u32) -> Bytes {
        let one = self.frame();
        if n == 1 {
            return one;
        }
        let mut b = BytesMut::with_capacity(one.len() * n as usize);
        for _ in 0..n {
            b.put_slice(&one);
        }
        b.freeze()
    }
}

/// `replies` (one frame per command of a batch) with the reply of each command at a position in
/// `writes` (ascending) replaced by `error`, unless that reply is an error already (a write that failed
/// ran nothing to acknowledge), with the number replaced. `None` if the frames do not scan (never for a
/// node's whole replies).
pub fn replace_replies(replies: &[u8], writes: &[u32], error: &[u8]) -> Option<(Bytes, u64)> {
    let mut out = BytesMut::with_capacity(replies.len() + writes.len() * error.len());
    let mut at = 0;
    let mut next = writes.iter().peekable();
    let mut i = 0u32;
    let mut replaced = 0;
    while at < replies.len() {
        let mut scanner = crate::resp::ReplyScanner::new(crate::resp::Limits::default());
        let frame = scanner.scan(&replies[at..]).ok()??;
        let bytes = &replies[at..at + frame.len];
        if next.peek() == Some(&&i) {
            next.next();
            if frame.is_error() {
                out.put_slice(bytes);
            } else {
                out.put_slice(error);
                replaced += 1;
            }
        } else {
            out.put_slice(bytes);
        }
        at += frame.len;
        i += 1;
    }
    Some((out.freeze(), replaced))
}

/// Encoder for replies in the session's protocol.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    /// RESP3 session.
    pub resp3: bool,
}

impl Encoder {
    /// A bulk string.
    pub fn bulk(&self, out: &mut BytesMut, s: &[u8]) {
        out.put_slice(format!("${}\r\n", s.len()).as_bytes());
        out.put_slice(s);
        out.put_slice(b"\r\n");
    }

    /// Text: a verbatim string (`=`, format `txt`) in RESP3, a bulk string in RESP2, as Redis answers
    /// INFO and CLIENT LIST.
    pub fn verbatim(&self, out: &mut BytesMut, text: &[u8]) {
        if self.resp3 {
            out.put_slice(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
            out.put_slice(text);
            out.put_slice(b"\r\n");
        } else {
            self.bulk(out, text);
        }
    }

    /// A null bulk string (`$-1` or `_`).
    pub fn null(&self, out: &mut BytesMut) {
        out.put_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    /// An integer.
    pub fn int(&self, out: &mut BytesMut, n: i64) {
        out.put_slice(format!(":{n}\r\n").as_bytes());
    }

    /// An array header.
    pub fn array(&self, out: &mut BytesMut, n: usize) {
        out.put_slice(format!("*{n}\r\n").as_bytes());
    }

    /// A map header (`%n` in RESP3, a flat array of `2n` in RESP2).
    pub fn map(&self, out: &mut BytesMut, n: usize) {
        if self.resp3 {
            out.put_slice(format!("%{n}\r\n").as_bytes());
        } else {
            self.array(out, n * 2);
        }
    }

    /// A push header (RESP3), or an array header (RESP2), for pub/sub confirmations.
    pub fn push(&self, out: &mut BytesMut, n: usize) {
        if self.resp3 {
            out.put_slice(format!(">{n}\r\n").as_bytes());
        } else {
            self.array(out, n);
        }
    }

    /// The reply to `HELLO`, as Redis 7 shapes it, naming the primary's server (`redis`, `valkey`) and
    /// version.
    pub fn hello(&self, id: u64, server: &str, version: &str) -> Bytes {
        let mut b = BytesMut::with_capacity(160);
        self.map(&mut b, 7);
        self.bulk(&mut b, b"server");
        self.bulk(&mut b, server.as_bytes());
        self.bulk(&mut b, b"version");
        self.bulk(&mut b, version.as_bytes());
        self.bulk(&mut b, b"proto");
        self.int(&mut b, if self.resp3 { 3 } else { 2 });
        self.bulk(&mut b, b"id");
        self.int(&mut b, id as i64);
        self.bulk(&mut b, b"mode");
        self.bulk(&mut b, b"standalone");
        self.bulk(&mut b, b"role");
        self.bulk(&mut b, b"master");
        self.bulk(&mut b, b"modules");
        self.array(&mut b, 0);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_reply_is_a_map_in_resp3_and_an_array_in_resp2() {
        let r3 = Encoder { resp3: true }.hello(5, "redis", "7.0.15");
        assert!(r3.starts_with(b"%7\r\n$6\r\nserver\r\n"));
        let r2 = Encoder { resp3: false }.hello(5, "valkey", "8.1.8");
        assert!(r2.windows(6).any(|w| w == b"valkey"));
        assert!(r2.starts_with(b"*14\r\n"));
        let (frame, len) = redis_protocol::resp2::decode::decode(&r2)
            .expect("valid")
            .expect("complete");
        assert_eq!(len, r2.len());
        assert!(
            matches!(frame, redis_protocol::resp2::types::OwnedFrame::Array(a) if a.len() == 14)
        );
    }

    #[test]
    fn error_frames_are_single_lines() {
        let e = crate::resp::Error::ExpectedBulk('\n');
        let f = ClientError::Protocol(&e).frame();
        assert!(f.starts_with(b"-ERR Protocol error: expected '$'"));
        assert_eq!(f.iter().filter(|&&c| c == b'\n').count(), 1);
        assert_eq!(
            ClientError::Syntax.frames(3),
            Bytes::from_static(b"-ERR syntax error\r\n-ERR syntax error\r\n-ERR syntax error\r\n")
        );
    }

    #[test]
    fn only_the_replies_of_writes_that_ran_are_replaced() {
        let replies = b"+OK\r\n$1\r\nv\r\n-WRONGTYPE no\r\n:1\r\n";
        let (out, n) = replace_replies(replies, &[0, 2, 3], b"-NOACK x\r\n").expect("scans");
        assert_eq!(n, 2);
        assert_eq!(
            &out[..],
            b"-NOACK x\r\n$1\r\nv\r\n-WRONGTYPE no\r\n-NOACK x\r\n"
        );
        let e = ClientError::NoAck {
            acked: Some(0),
            need: 1,
            timeout_ms: 50,
        }
        .frame();
        assert!(e.starts_with(b"-NOACK "));
        let text = String::from_utf8_lossy(&e);
        assert!(text.contains("applied on the primary") && text.contains("0 of 1"));
    }
}
