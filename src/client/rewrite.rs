//! Replies of the primary that the proxy rewrites before the client sees them: secrets left out of
//! `CONFIG GET` and `ACL LIST`/`ACL GETUSER` (judged by the names in the reply, never guessed from the
//! pattern asked), and the proxy's own section added to `INFO`. Off the hot path: these replies are
//! decoded whole, in RESP2 or RESP3, keeping their order, and encoded again in the same protocol.

use bytes::Bytes;

/// Server parameters whose values are secrets: never shown through the proxy.
const SECRETS: &[&str] = &[
    "requirepass",
    "masterauth",
    "primaryauth",
    "masteruser",
    "primaryuser",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
    "sentinel-pass",
];

/// True if `name` is a secret server parameter.
pub(super) fn secret(name: &[u8]) -> bool {
    SECRETS
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s.as_bytes()))
}

/// One RESP2 or RESP3 value, kept as written: its type byte, and its line, body or elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    /// `+ - : , # _ (` and nulls (`$-1`, `*-1`): the type byte and the rest of the line.
    Line(u8, Vec<u8>),
    /// `$ ! =`: the type byte and the body.
    Bulk(u8, Vec<u8>),
    /// `* ~ > % | `: the type byte and the elements (a map's keys and values alternate).
    Aggregate(u8, Vec<Frame>),
}

/// Deepest nesting decoded here (these replies are two levels deep).
const MAX_DEPTH: usize = 16;

impl Frame {
    /// The value at the start of `b`, and its length; `None` if `b` does not start with a whole value.
    pub fn decode(b: &[u8]) -> Option<(Frame, usize)> {
        Frame::decode_at(b, 0)
    }

    fn decode_at(b: &[u8], depth: usize) -> Option<(Frame, usize)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let kind = *b.first()?;
        let end = memchr::memmem::find(b, b"\r\n")?;
        let line = &b[1..end];
        let mut at = end + 2;
        let len = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
        match kind {
            b'$' | b'!' | b'=' => {
                let n = len()?;
                if n < 0 {
                    return Some((Frame::Line(kind, line.to_vec()), at));
                }
                let n = usize::try_from(n).ok()?;
                let body = b.get(at..at.checked_add(n)?)?;
                if b.get(at + n..at + n + 2)? != b"\r\n" {
                    return None;
                }
                Some((Frame::Bulk(kind, body.to_vec()), at + n + 2))
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = len()?;
                if n < 0 {
                    return Some((Frame::Line(kind, line.to_vec()), at));
                }
                let count =
                    usize::try_from(n).ok()? * if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                // Each element takes at least 3 bytes: a count larger than what is there is garbage.
                if count > b.len() {
                    return None;
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    let (f, n) = Frame::decode_at(&b[at..], depth + 1)?;
                    items.push(f);
                    at += n;
                }
                Some((Frame::Aggregate(kind, items), at))
            }
            _ => Some((Frame::Line(kind, line.to_vec()), at)),
        }
    }

    /// Appends the value as written.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Line(k, line) => {
                out.push(*k);
                out.extend_from_slice(line);
            }
            Frame::Bulk(k, body) => {
                out.push(*k);
                out.extend_from_slice(body.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Frame::Aggregate(k, items) => {
                out.push(*k);
                let n = if matches!(k, b'%' | b'|') {
                    items.len() / 2
                } else {
                    items.len()
                };
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.encode(out);
                }
                return;
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The text of a string value.
    pub fn text(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(b'=', body) => Some(body.get(4..).unwrap_or_default()),
            Frame::Bulk(_, body) | Frame::Line(b'+', body) => Some(body),
            _ => None,
        }
    }

    fn into_bytes(self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }
}

/// `CONFIG GET`'s reply without the secret parameters (name and value both left out). Replies that are
/// not a map or a flat array of pairs (an error) pass unchanged.
pub(super) fn config_get(reply: &[u8]) -> Bytes {
    let Some((Frame::Aggregate(kind, items), _)) = Frame::decode(reply) else {
        return Bytes::copy_from_slice(reply);
    };
    let mut kept = Vec::with_capacity(items.len());
    let mut pairs = items.chunks_exact(2);
    for pair in &mut pairs {
        if !pair[0].text().is_some_and(secret) {
            kept.extend_from_slice(pair);
        }
    }
    Frame::Aggregate(kind, kept).into_bytes()
}

/// `ACL LIST`'s or `ACL GETUSER`'s reply without password hashes: `#<hash>` and `><password>` rules go
/// from each `ACL LIST` line, and `GETUSER`'s `passwords` is empty.
pub(super) fn acl(reply: &[u8]) -> Bytes {
    let Some((Frame::Aggregate(kind, items), _)) = Frame::decode(reply) else {
        return Bytes::copy_from_slice(reply);
    };
    let is_getuser = matches!(kind, b'%')
        || items
            .iter()
            .step_by(2)
            .any(|f| f.text() == Some(b"passwords"));
    let items = if is_getuser {
        let mut out = Vec::with_capacity(items.len());
        let mut next_is_passwords = false;
        for (i, f) in items.into_iter().enumerate() {
            if i % 2 == 1 && next_is_passwords {
                out.push(Frame::Aggregate(
                    match f {
                        Frame::Aggregate(k, _) => k,
                        _ => b'*',
                    },
                    Vec::new(),
                ));
                next_is_passwords = false;
                continue;
            }
            if i % 2 == 0 {
                next_is_passwords = f.text() == Some(b"passwords");
            }
            out.push(f);
        }
        out
    } else {
        items
            .into_iter()
            .map(|f| match f {
                Frame::Bulk(k, line) => Frame::Bulk(k, strip_passwords(&line)),
                Frame::Line(b'+', line) => Frame::Line(b'+', strip_passwords(&line)),
                other => other,
            })
            .collect()
    };
    Frame::Aggregate(kind, items).into_bytes()
}

/// An `ACL LIST` line without its `#hash` and `>password` rules.
fn strip_passwords(line: &[u8]) -> Vec<u8> {
    line.split(|&c| c == b' ')
        .filter(|w| !w.starts_with(b"#") && !w.starts_with(b">"))
        .collect::<Vec<_>>()
        .join(&b' ')
}

/// An `INFO` reply with `section` (the proxy's, `# Proxy` and its fields) appended; replies that are not
/// text (an error) pass unchanged.
pub(super) fn info_with(reply: &[u8], section: &str) -> Bytes {
    let Some((frame, _)) = Frame::decode(reply) else {
        return Bytes::copy_from_slice(reply);
    };
    let frame = match frame {
        Frame::Bulk(k @ (b'$' | b'='), mut body) => {
            if !body.ends_with(b"\r\n") && !body.is_empty() {
                body.extend_from_slice(b"\r\n");
            }
            if body.len() > 4 || k == b'$' {
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(section.as_bytes());
            Frame::Bulk(k, body)
        }
        other => other,
    };
    frame.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_get_leaves_out_secrets_found_in_the_reply_in_either_protocol() {
        let resp2 = b"*6\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$11\r\nrequirepass\r\n$6\r\nsecret\r\n$10\r\nmasterauth\r\n$2\r\npw\r\n";
        assert_eq!(
            config_get(resp2),
            Bytes::from_static(b"*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n")
        );
        let resp3 = b"%2\r\n$11\r\nREQUIREPASS\r\n$1\r\nx\r\n$7\r\ntimeout\r\n$1\r\n0\r\n";
        assert_eq!(
            config_get(resp3),
            Bytes::from_static(b"%1\r\n$7\r\ntimeout\r\n$1\r\n0\r\n")
        );
        let error = b"-ERR unknown\r\n";
        assert_eq!(config_get(error), Bytes::from_static(error));
    }

    #[test]
    fn acl_replies_lose_their_password_hashes_and_keep_the_rest() {
        let list =
            b"*1\r\n$61\r\nuser default on #5e884898da28047151d0e56f8dc62927 ~* &* +@all\r\n";
        let out = acl(list);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "*1\r\n$27\r\nuser default on ~* &* +@all\r\n"
        );
        let getuser =
            b"*4\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$9\r\npasswords\r\n*1\r\n$4\r\nhash\r\n";
        assert_eq!(
            acl(getuser),
            Bytes::from_static(b"*4\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$9\r\npasswords\r\n*0\r\n")
        );
    }

    #[test]
    fn info_gets_the_proxy_section_after_the_servers() {
        let out = info_with(b"$15\r\n# Server\r\nx:1\r\n\r\n", "# Proxy\r\np:1\r\n");
        let (f, _) = Frame::decode(&out).expect("a value");
        assert_eq!(
            f.text(),
            Some(&b"# Server\r\nx:1\r\n\r\n# Proxy\r\np:1\r\n"[..])
        );
        let resp3 = info_with(b"=19\r\ntxt:# Server\r\nx:1\r\n\r\n", "# Proxy\r\n");
        assert!(resp3.starts_with(b"=30\r\ntxt:# Server"), "{resp3:?}");
    }

    #[test]
    fn truncated_or_lying_frames_do_not_decode() {
        assert_eq!(Frame::decode(b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(Frame::decode(b"*99999999\r\n"), None);
        assert_eq!(Frame::decode(b"$5\r\nab\r\n"), None);
    }
}
