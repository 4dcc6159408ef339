//! Reading the few replies of a dedicated connection the proxy must understand: EXEC's (which queued
//! commands ran), the unpin marker's, and pub/sub confirmations (how many subscriptions are left). Hand-
//! written: they run on every frame of a pinned session.

use crate::resp::{Limits, ReplyScanner};

/// Which elements of EXEC's reply are not errors, if it is an array of `n` (a committed transaction).
pub(super) fn exec_results(reply: &[u8], n: usize) -> Option<Vec<bool>> {
    let header_end = memchr::memchr(b'\r', reply)?;
    if reply.first() != Some(&b'*')
        || std::str::from_utf8(&reply[1..header_end])
            .ok()?
            .parse::<usize>()
            .ok()?
            != n
    {
        return None;
    }
    let mut at = header_end + 2;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        let mut scanner = ReplyScanner::new(Limits::default());
        let frame = scanner.scan(reply.get(at..)?).ok()??;
        results.push(!frame.is_error());
        at += frame.len;
    }
    Some(results)
}

/// True if `frame` is the reply to `PING token`: a bulk string, or `pong token` in RESP2 pub/sub mode.
pub(super) fn is_marker_reply(frame: &[u8], token: &[u8]) -> bool {
    let bulk_token = [format!("${}\r\n", token.len()).as_bytes(), token, b"\r\n"].concat();
    frame == bulk_token.as_slice()
        || frame
            == [b"*2\r\n$4\r\npong\r\n".as_slice(), &bulk_token]
                .concat()
                .as_slice()
}

/// `(kind, count)` of a pub/sub confirmation: a 3-element array or push whose first element is the kind
/// and last an integer.
pub(super) fn pubsub_confirmation(frame: &[u8]) -> Option<(&[u8], i64)> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    let (kind, rest) = bulk(rest)?;
    let rest = match rest.first()? {
        b'$' => bulk(rest)
            .map(|(_, r)| r)
            .or_else(|| rest.strip_prefix(b"$-1\r\n"))?,
        b'_' => rest.strip_prefix(b"_\r\n")?,
        _ => return None,
    };
    let n = rest.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    Some((kind, std::str::from_utf8(n).ok()?.parse().ok()?))
}

/// A bulk string at the start of `b`, and what follows it.
fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let b = b.strip_prefix(b"$")?;
    let nl = memchr::memchr(b'\r', b)?;
    let len: usize = std::str::from_utf8(&b[..nl]).ok()?.parse().ok()?;
    let body = b.get(nl + 2..nl + 2 + len)?;
    let rest = b.get(nl + 2 + len..)?.strip_prefix(b"\r\n")?;
    Some((body, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_give_kind_and_count() {
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:2\r\n"),
            Some((&b"subscribe"[..], 2))
        );
        assert_eq!(
            pubsub_confirmation(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some((&b"unsubscribe"[..], 0))
        );
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),
            Some((&b"unsubscribe"[..], 0))
        );
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            None
        );
    }
}
