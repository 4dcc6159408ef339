//! SCAN cursors belong to the node that returned them: `SCAN`, `SSCAN`, `HSCAN` and `ZSCAN` continuing a
//! cursor go back to that node, whichever replica the next read would otherwise pick.
//!
//! The node is encoded in the cursor, as cluster proxies do, so it survives connection pools (another
//! connection continues the iteration) and other proxy instances in front of the same nodes: the top 16
//! bits of the 64-bit cursor carry a tag derived from the node's run id (stable across proxies), and the
//! rest is the node's own cursor. Redis cursors index hash tables by bucket and stay far below 2^48. A
//! cursor whose node is gone, or no longer serves reads, gets an error telling the client to start again:
//! another node's cursor space is not this one's, and continuing there would silently skip elements.

use bytes::{Bytes, BytesMut};

use crate::node::Identity;
use crate::topology::Topology;
use crate::upstream::Node;
use std::sync::Arc;

/// Bits of the node's own cursor; the tag sits above them.
const CURSOR_BITS: u32 = 48;

/// The position of the cursor argument of a SCAN-family command (`SCAN cursor`, `xSCAN key cursor`).
pub(super) fn cursor_arg(name: &[u8]) -> Option<usize> {
    if name.eq_ignore_ascii_case(b"SCAN") {
        Some(1)
    } else if [&b"SSCAN"[..], b"HSCAN", b"ZSCAN"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    {
        Some(2)
    } else {
        None
    }
}

/// A cursor as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cursor {
    /// `0`: a new iteration, routed like any read.
    Start,
    /// A cursor this proxy (or another in front of the same nodes) returned: the node's tag and its own
    /// cursor.
    Continue { tag: u16, cursor: u64 },
    /// A cursor without a tag: one the primary returned inside a transaction, or one a client got
    /// elsewhere. Only the primary can make sense of it.
    Untagged,
    /// Not a cursor: the node answers with its error.
    Invalid,
}

/// Reads a cursor argument.
pub(super) fn parse(arg: &[u8]) -> Cursor {
    let Some(n) = std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Cursor::Invalid;
    };
    match (n, (n >> CURSOR_BITS) as u16) {
        (0, _) => Cursor::Start,
        (_, 0) => Cursor::Untagged,
        (n, tag) => Cursor::Continue {
            tag,
            cursor: n & ((1 << CURSOR_BITS) - 1),
        },
    }
}

/// The tag of a node with `identity`: 16 bits of a hash of its run id, never 0.
pub(super) fn tag(identity: &Identity) -> u16 {
    // FNV-1a: stable across processes and builds (the std hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in identity.run_id.0.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let t = (h ^ (h >> 16)) as u16;
    t.max(1)
}

/// The node of the topology whose tag is `tag`, if exactly one has it.
pub(super) fn node_of(topo: &Topology, tag: u16) -> Option<Arc<Node>> {
    let mut found = topo
        .nodes()
        .filter(|n| n.identity().is_some_and(|i| self::tag(&i) == tag));
    match (found.next(), found.next()) {
        (Some(n), None) => Some(n.clone()),
        _ => None,
    }
}

/// The request `args` with the cursor argument at `at` replaced by `cursor`, encoded.
pub(super) fn with_cursor(args: &[Vec<u8>], at: usize, cursor: u64) -> Bytes {
    let cursor = cursor.to_string();
    let parts: Vec<&[u8]> = args
        .iter()
        .enumerate()
        .map(|(i, a)| if i == at { cursor.as_bytes() } else { &a[..] })
        .collect();
    let mut out = Vec::new();
    crate::resp::encode_command(&mut out, &parts);
    Bytes::from(out)
}

/// A SCAN-family reply (`[cursor, [elements...]]`) with its cursor tagged with `tag`. Anything else (an
/// error) is returned as it is; so is the final cursor, 0. A node cursor too large to carry a tag (none
/// is, in practice) makes the reply an error: continuing anywhere would be wrong.
pub(super) fn tag_reply(reply: Bytes, tag: u16) -> Bytes {
    let Some((cursor, header, rest)) = split_reply(&reply) else {
        return reply;
    };
    if cursor == 0 {
        return reply;
    }
    if cursor >> CURSOR_BITS != 0 {
        return Bytes::from_static(
            b"-ERR redsplit: the node returned a SCAN cursor too large to route; scan the node directly\r\n",
        );
    }
    let tagged = (cursor | (u64::from(tag) << CURSOR_BITS)).to_string();
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    out.extend_from_slice(header);
    out.extend_from_slice(format!("${}\r\n{tagged}\r\n", tagged.len()).as_bytes());
    out.extend_from_slice(rest);
    out.freeze()
}

/// As [`tag_reply`], and the final cursor (0) of one node becomes the start (cursor 0) on the node
/// tagged `next`, if any: a SCAN over every shard of a cluster goes on there.
pub(super) fn tag_reply_then(reply: Bytes, tag: u16, next: Option<u16>) -> Bytes {
    match (split_reply(&reply), next) {
        (Some((0, header, rest)), Some(next)) => {
            let tagged = (u64::from(next) << CURSOR_BITS).to_string();
            let mut out = BytesMut::with_capacity(reply.len() + 8);
            out.extend_from_slice(header);
            out.extend_from_slice(format!("${}\r\n{tagged}\r\n", tagged.len()).as_bytes());
            out.extend_from_slice(rest);
            out.freeze()
        }
        _ => tag_reply(reply, tag),
    }
}

/// The cursor of a SCAN reply, the array header before it, and everything after it.
fn split_reply(reply: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let header = reply.strip_prefix(b"*2\r\n")?;
    let body = header.strip_prefix(b"$")?;
    let nl = memchr::memchr(b'\r', body)?;
    let len: usize = std::str::from_utf8(&body[..nl]).ok()?.parse().ok()?;
    let start = nl + 2;
    let digits = body.get(start..start + len)?;
    let rest = body.get(start + len..)?.strip_prefix(b"\r\n")?;
    let cursor = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((cursor, &reply[..4], rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RunId;

    #[test]
    fn a_tagged_cursor_round_trips_through_a_reply() {
        let id = Identity {
            run_id: RunId("4c6f8e2c0a9f1d6b3e5a7c9e1f3b5d7a9c1e3f5a".into()),
            replid: None,
        };
        let t = tag(&id);
        assert_ne!(t, 0);
        let reply = Bytes::from_static(b"*2\r\n$4\r\n1536\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let tagged = tag_reply(reply, t);
        let (cursor, _, rest) = split_reply(&tagged).expect("a SCAN reply");
        assert_eq!(rest, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert_eq!(
            parse(cursor.to_string().as_bytes()),
            Cursor::Continue {
                tag: t,
                cursor: 1536
            }
        );
    }

    #[test]
    fn the_last_cursor_and_errors_pass_untouched() {
        let last = Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n");
        assert_eq!(tag_reply(last.clone(), 7), last);
        let err = Bytes::from_static(b"-WRONGTYPE Operation against a key\r\n");
        assert_eq!(tag_reply(err.clone(), 7), err);
        assert_eq!(parse(b"0"), Cursor::Start);
        assert_eq!(parse(b"17"), Cursor::Untagged);
        assert_eq!(parse(b"x"), Cursor::Invalid);
    }

    #[test]
    fn the_cursor_argument_is_replaced_in_the_request() {
        let args: Vec<Vec<u8>> = ["SSCAN", "s", "281474976711592", "COUNT", "5"]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        assert_eq!(cursor_arg(b"sscan"), Some(2));
        assert_eq!(
            with_cursor(&args, 2, 1000),
            Bytes::from_static(
                b"*5\r\n$5\r\nSSCAN\r\n$1\r\ns\r\n$4\r\n1000\r\n$5\r\nCOUNT\r\n$1\r\n5\r\n"
            )
        );
    }
}
