//! Merging the replies of a command split over shards into the one reply a single Redis would give:
//! `MGET` values back in key order, counts summed (`DEL`, `EXISTS`, `DBSIZE`, ...), `OK` once every
//! shard said it, arrays concatenated (`KEYS`). The first error any part got is the reply: a wrong
//! answer is worse than an error.

use bytes::{Bytes, BytesMut};

use crate::resp::{Limits, ReplyScanner};

/// How the parts' replies combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::client) enum How {
    /// An array of `len` elements; each part answers an array whose elements go, in order, to the
    /// positions listed for that part (`MGET`).
    Place { len: usize },
    /// Integers, summed.
    Sum,
    /// `+OK` from every part.
    Ok,
    /// Arrays, concatenated.
    Concat,
    /// The first part's reply (every part got the same command: `SCRIPT LOAD` gives the same digest).
    First,
    /// One of the replies that is not null, picked at random, else null (`RANDOMKEY`: nil only when
    /// every shard is empty).
    AnyNotNull,
}

/// Replies collected so far.
#[derive(Debug)]
pub(in crate::client) struct Merging {
    how: How,
    /// Each part's reply and, for `Place`, its positions.
    parts: Vec<(Bytes, Vec<usize>)>,
}

impl Merging {
    /// Starts collecting replies merged by `how`.
    pub fn new(how: How) -> Merging {
        Merging {
            how,
            parts: Vec::new(),
        }
    }

    /// Adds one part's reply, for `positions` (`Place` only).
    pub fn add(&mut self, reply: Bytes, positions: Vec<usize>) {
        self.parts.push((reply, positions));
    }

    /// The merged reply.
    pub fn finish(self) -> Bytes {
        if let Some((e, _)) = self.parts.iter().find(|(r, _)| is_error(r)) {
            return e.clone();
        }
        match self.how {
            How::First => self
                .parts
                .into_iter()
                .next()
                .map(|(r, _)| r)
                .unwrap_or_else(ok),
            How::AnyNotNull => {
                let found: Vec<Bytes> = self
                    .parts
                    .iter()
                    .map(|(r, _)| r.clone())
                    .filter(|r| !is_null(r))
                    .collect();
                let pick = random_below(found.len());
                match found.into_iter().nth(pick) {
                    Some(r) => r,
                    None => self
                        .parts
                        .into_iter()
                        .next()
                        .map(|(r, _)| r)
                        .unwrap_or_else(|| Bytes::from_static(b"$-1\r\n")),
                }
            }
            How::Ok => ok(),
            How::Sum => {
                let mut sum: i64 = 0;
                for (r, _) in &self.parts {
                    match integer(r) {
                        Some(n) => sum = sum.saturating_add(n),
                        None => return unexpected(),
                    }
                }
                Bytes::from(format!(":{sum}\r\n"))
            }
            How::Concat => {
                let mut all = Vec::new();
                for (r, _) in &self.parts {
                    match elements(r) {
                        Some(e) => all.extend(e),
                        None => return unexpected(),
                    }
                }
                array(&all)
            }
            How::Place { len } => {
                let mut slots: Vec<Option<Bytes>> = vec![None; len];
                for (r, positions) in &self.parts {
                    let Some(e) = elements(r).filter(|e| e.len() == positions.len()) else {
                        return unexpected();
                    };
                    for (value, &at) in e.into_iter().zip(positions) {
                        match slots.get_mut(at) {
                            Some(s) => *s = Some(value),
                            None => return unexpected(),
                        }
                    }
                }
                let placed: Option<Vec<Bytes>> = slots.into_iter().collect();
                match placed {
                    Some(p) => array(&p),
                    None => unexpected(),
                }
            }
        }
    }
}

fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

fn unexpected() -> Bytes {
    Bytes::from_static(
        b"-ERR redsplit: a shard answered a split command with an unexpected reply\r\n",
    )
}

/// A RESP2 or RESP3 null.
fn is_null(r: &[u8]) -> bool {
    matches!(r, b"$-1\r\n" | b"*-1\r\n" | b"_\r\n")
}

/// A number below `n` (at least 1), varying from call to call.
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::node::current_epoch());
    (h.finish() as usize) % n.max(1)
}

fn is_error(r: &[u8]) -> bool {
    matches!(r.first(), Some(b'-' | b'!'))
}

fn integer(r: &[u8]) -> Option<i64> {
    let body = r.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// The element frames of an array reply (`*` or RESP3 `~` set), each as its bytes.
fn elements(r: &Bytes) -> Option<Vec<Bytes>> {
    let kind = *r.first()?;
    if kind != b'*' && kind != b'~' {
        return None;
    }
    let nl = memchr::memchr(b'\r', r)?;
    let n: i64 = std::str::from_utf8(r.get(1..nl)?).ok()?.parse().ok()?;
    let mut at = nl + 2;
    let mut out = Vec::new();
    for _ in 0..n.max(0) {
        let mut scanner = ReplyScanner::new(Limits::default());
        let frame = scanner.scan(r.get(at..)?).ok()??;
        out.push(r.slice(at..at + frame.len));
        at += frame.len;
    }
    (at == r.len()).then_some(out)
}

fn array(elements: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
    for e in elements {
        out.extend_from_slice(e);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn mget_values_come_back_in_key_order() {
        let mut m = Merging::new(How::Place { len: 3 });
        m.add(b("*2\r\n$1\r\na\r\n$-1\r\n"), vec![0, 2]);
        m.add(b("*1\r\n$1\r\nb\r\n"), vec![1]);
        assert_eq!(m.finish(), b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"));
    }

    #[test]
    fn counts_are_summed_and_any_error_is_the_reply() {
        let mut m = Merging::new(How::Sum);
        m.add(b(":2\r\n"), vec![]);
        m.add(b(":1\r\n"), vec![]);
        assert_eq!(m.finish(), b(":3\r\n"));
        let mut m = Merging::new(How::Ok);
        m.add(b("+OK\r\n"), vec![]);
        m.add(b("-MOVED 1 a:1\r\n"), vec![]);
        assert_eq!(m.finish(), b("-MOVED 1 a:1\r\n"));
    }

    #[test]
    fn randomkey_is_nil_only_when_every_shard_is_empty() {
        let mut m = Merging::new(How::AnyNotNull);
        m.add(b("$-1\r\n"), vec![]);
        m.add(b("$1\r\nk\r\n"), vec![]);
        m.add(b("_\r\n"), vec![]);
        assert_eq!(m.finish(), b("$1\r\nk\r\n"));
        let mut m = Merging::new(How::AnyNotNull);
        m.add(b("$-1\r\n"), vec![]);
        m.add(b("$-1\r\n"), vec![]);
        assert_eq!(m.finish(), b("$-1\r\n"));
    }

    #[test]
    fn arrays_concatenate_and_a_short_part_is_an_error_not_a_wrong_answer() {
        let mut m = Merging::new(How::Concat);
        m.add(b("*1\r\n$1\r\na\r\n"), vec![]);
        m.add(b("*0\r\n"), vec![]);
        m.add(b("*1\r\n*1\r\n$1\r\nb\r\n"), vec![]);
        assert_eq!(m.finish(), b("*2\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n"));
        let mut m = Merging::new(How::Place { len: 2 });
        m.add(b("*1\r\n$1\r\na\r\n"), vec![0, 1]);
        assert!(m.finish().starts_with(b"-ERR"));
    }
}
