//! Upstream replies, RESP2 and RESP3: find where each top-level reply ends.

use super::{header_end, parse_int, Error, Limits};

/// One complete top-level reply found by [`ReplyScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    /// Bytes the reply occupies, from its first byte.
    pub len: usize,
    /// Its first type byte (`+`, `-`, `$`, `*`, `>`, ...); `|` for a reply preceded by RESP3 attributes.
    pub kind: u8,
}

impl ReplyFrame {
    /// True for a simple or blob error.
    pub fn is_error(&self) -> bool {
        self.kind == b'-' || self.kind == b'!'
    }

    /// True for a RESP3 push (pub/sub message, tracking invalidation), which answers no request.
    pub fn is_push(&self) -> bool {
        self.kind == b'>'
    }
}

/// Resumable reply scanner. Feed it the unconsumed input starting at the current reply's first byte.
#[derive(Debug)]
pub struct ReplyScanner {
    limits: Limits,
    /// Next unscanned byte of the current reply.
    at: usize,
    /// The open aggregates, innermost last, as runs: `(left, levels)` stands for `levels` nested
    /// aggregates that each still miss `left` elements. Replies are scanned at any depth a server
    /// produces (a Lua script's reply may nest thousands of levels): the run of single-element
    /// aggregates such replies are made of takes one entry, and never more than one per level.
    open: Vec<(u64, u64)>,
    /// Type of the current top-level reply, once known.
    kind: Option<u8>,
    /// No CR in the simple line at `at` before this offset, so that a long line arriving in pieces is
    /// searched once.
    searched: usize,
}

impl ReplyScanner {
    /// A scanner enforcing `limits` (bulk and line length; nesting is not limited).
    pub fn new(limits: Limits) -> Self {
        ReplyScanner {
            limits,
            at: 0,
            open: Vec::new(),
            kind: None,
            searched: 0,
        }
    }

    /// Scans `buf`, which starts at the first byte of a reply. `Ok(None)`: call again with more bytes.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, Error> {
        loop {
            let Some(&t) = buf.get(self.at) else {
                return Ok(None);
            };
            if self.at == 0 {
                self.kind = Some(t);
            }
            let end = match t {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => self.line_end(buf)?,
                b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|' => {
                    header_end(buf, self.at, "reply")?
                }
                // Rejected before looking for CRLF: a CR here would otherwise end an empty line at the
                // type byte.
                other => return Err(Error::UnknownType(char::from(other))),
            };
            let Some(end) = end else {
                return Ok(None);
            };
            let line = &buf[self.at + 1..end];
            let next = end + 2;
            match t {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => self.at = next,
                b'$' | b'!' | b'=' => {
                    if line == b"?" {
                        return Err(Error::Streamed);
                    }
                    let len = parse_int(line).ok_or(Error::BadLength { what: "bulk" })?;
                    if len < 0 {
                        if len != -1 || t != b'$' {
                            return Err(Error::BadLength { what: "bulk" });
                        }
                        self.at = next;
                    } else {
                        if len as u64 > self.limits.max_bulk_bytes as u64 {
                            return Err(Error::TooLong {
                                what: "bulk",
                                len: len as u64,
                                limit: self.limits.max_bulk_bytes,
                            });
                        }
                        let stop = next + len as usize;
                        if buf.len() < stop + 2 {
                            return Ok(None);
                        }
                        if &buf[stop..stop + 2] != b"\r\n" {
                            return Err(Error::MissingCrlf);
                        }
                        self.at = stop + 2;
                    }
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    if line == b"?" {
                        return Err(Error::Streamed);
                    }
                    let n = parse_int(line).ok_or(Error::BadLength { what: "aggregate" })?;
                    self.at = next;
                    if n < 0 {
                        if n != -1 || t != b'*' {
                            return Err(Error::BadLength { what: "aggregate" });
                        }
                    } else {
                        let n = n as u64;
                        // Maps and attributes hold pairs; an attribute also precedes the value it decorates,
                        // which belongs to the same parent, so it counts as one more element here.
                        let elems = match t {
                            b'%' => n.saturating_mul(2),
                            b'|' => n.saturating_mul(2).saturating_add(1),
                            _ => n,
                        };
                        if elems > 0 {
                            match self.open.last_mut() {
                                Some((left, levels)) if *left == elems => *levels += 1,
                                _ => self.open.push((elems, 1)),
                            }
                            continue;
                        }
                    }
                }
                other => return Err(Error::UnknownType(char::from(other))),
            }
            // One element finished: close every aggregate it completes. A run of aggregates that each
            // missed only this element closes whole, and its outermost is one element of the run below.
            loop {
                match self.open.last_mut() {
                    None => {
                        let frame = ReplyFrame {
                            len: self.at,
                            kind: self.kind.unwrap_or(t),
                        };
                        self.at = 0;
                        self.kind = None;
                        return Ok(Some(frame));
                    }
                    Some((left, 1)) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some((left, levels)) if *left > 1 => {
                        // Only the innermost level of the run took an element: it leaves the run.
                        let rest = *left - 1;
                        *levels -= 1;
                        self.open.push((rest, 1));
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
            }
        }
    }

    /// Finds the CRLF ending the simple line (status, error, number) at `self.at`; returns the index of its
    /// `\r`. Unlike a header, such a line has no natural bound (an error from a script can be long, and Redis
    /// limits neither), so it may be as long as a bulk string.
    fn line_end(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        let from = self.searched.max(self.at + 1);
        let cr = buf
            .get(from..)
            .and_then(|rest| memchr::memchr(b'\r', rest))
            .map(|i| from + i);
        let line_len = cr.unwrap_or(buf.len()) - (self.at + 1);
        if line_len > self.limits.max_bulk_bytes {
            return Err(Error::TooLong {
                what: "line",
                len: line_len as u64,
                limit: self.limits.max_bulk_bytes,
            });
        }
        match cr {
            Some(cr) if cr + 1 < buf.len() => {
                if buf[cr + 1] != b'\n' {
                    return Err(Error::BadLength { what: "reply" });
                }
                self.searched = 0;
                Ok(Some(cr))
            }
            // The CR is the last byte so far; look at it again once its LF may have arrived.
            Some(cr) => {
                self.searched = cr;
                Ok(None)
            }
            None => {
                self.searched = buf.len();
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<ReplyFrame> {
        let mut s = ReplyScanner::new(Limits::default());
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(f) = s.scan(&input[at..]).expect("valid") {
            at += f.len;
            out.push(f);
        }
        assert_eq!(at, input.len(), "all input consumed");
        out
    }

    #[test]
    fn resp2_replies_are_delimited() {
        let got = frames(b"+OK\r\n-ERR x\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*0\r\n");
        let kinds: Vec<u8> = got.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, b"+-:$$***".to_vec());
        assert!(got[1].is_error());
    }

    #[test]
    fn resp3_replies_are_delimited() {
        let got = frames(
            b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n#t\r\n_\r\n,1.5\r\n(123\r\n=8\r\ntxt:abcd\r\n!3\r\nERR\r\n>2\r\n+m\r\n+x\r\n|1\r\n+k\r\n+v\r\n:7\r\n",
        );
        let kinds: Vec<u8> = got.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, b"%_,(=!>|".to_vec());
        assert!(got[5].is_error());
        assert!(got[6].is_push());
        assert_eq!(got[7].len, b"|1\r\n+k\r\n+v\r\n:7\r\n".len());
    }

    #[test]
    fn partial_reply_resumes_at_every_cut() {
        let input = b"*3\r\n$5\r\nhello\r\n%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n:9\r\n";
        for cut in 0..input.len() {
            let mut s = ReplyScanner::new(Limits::default());
            assert_eq!(s.scan(&input[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(
                s.scan(input),
                Ok(Some(ReplyFrame {
                    len: input.len(),
                    kind: b'*'
                }))
            );
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let limits = Limits {
            max_bulk_bytes: 4,
            max_array_len: 4,
            max_inline_bytes: 4,
        };
        let cases: &[&[u8]] = &[
            b"?\r\n",
            b"$x\r\n",
            b"$5\r\n",
            b"$1\r\nab\r\n",
            b"$?\r\n",
            b"%-1\r\n",
        ];
        for case in cases {
            let mut s = ReplyScanner::new(limits);
            assert!(s.scan(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    /// A Lua script may return a table nested thousands of levels deep, and Redis sends it. Found against
    /// real Redis: at a limit of 128 levels, one such reply broke the connection it shared with other
    /// clients, whose commands then failed as "may have run".
    #[test]
    fn replies_nest_at_any_depth_in_little_memory() {
        let depth = 100_000;
        let mut input = b"*1\r\n".repeat(depth);
        input.extend_from_slice(b":1\r\n+OK\r\n");
        let mut s = ReplyScanner::new(Limits::default());
        assert_eq!(s.scan(&input[..input.len() / 2]), Ok(None));
        assert!(s.open.len() <= 1, "one run, not one entry per level");
        let got = s.scan(&input).expect("valid");
        assert_eq!(got.map(|f| f.len), Some(depth * 4 + 4));
    }

    #[test]
    fn deep_replies_of_every_aggregate_kind_resume_at_every_cut() {
        // Each level holds a leaf, then the next level, then (for some) more leaves; maps and attributes
        // count pairs, and an attribute precedes the value it decorates.
        let mut reply = b":0\r\n".to_vec();
        for level in 0..200 {
            let (head, before, after): (&[u8], usize, usize) = match level % 5 {
                0 => (b"*3", 1, 1),
                1 => (b"%2", 1, 2),
                2 => (b"*1", 0, 0),
                3 => (b"|1", 2, 0),
                _ => (b">2", 1, 0),
            };
            let mut outer = [head, b"\r\n"].concat();
            outer.extend(b"+a\r\n".repeat(before));
            outer.extend_from_slice(&reply);
            outer.extend(b"$1\r\nb\r\n".repeat(after));
            reply = outer;
        }
        let input = [&reply[..], b":7\r\n"].concat();
        let got = frames(&input);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len, reply.len());
        for cut in 0..reply.len() {
            let mut s = ReplyScanner::new(Limits::default());
            assert_eq!(s.scan(&input[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(s.scan(&input), Ok(Some(got[0])), "cut at {cut}");
        }
    }

    /// Found by the property tests: simple lines were held to the 32-byte header limit, so common errors
    /// such as `-WRONGTYPE Operation against a key holding the wrong kind of value` failed the connection.
    #[test]
    fn simple_lines_longer_than_a_header_are_replies() {
        let error = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        let status = [&b"+"[..], &[b'x'; 100], b"\r\n"].concat();
        let input = [
            &error[..],
            &status,
            b"*1\r\n(123456789012345678901234567890123456789\r\n",
        ]
        .concat();
        let got = frames(&input);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len, error.len());
        for cut in 0..error.len() {
            let mut s = ReplyScanner::new(Limits::default());
            assert_eq!(s.scan(&input[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(s.scan(&input), Ok(Some(got[0])), "cut at {cut}");
        }
    }

    #[test]
    fn simple_lines_longer_than_the_bulk_limit_are_errors() {
        let limits = Limits {
            max_bulk_bytes: 4,
            ..Limits::default()
        };
        for input in [&b"+hello\r\n"[..], b"+hello"] {
            let mut s = ReplyScanner::new(limits);
            assert!(
                s.scan(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(ReplyScanner::new(limits).scan(b"+hell\r\n").is_ok());
    }

    /// Found by the property tests: a reply starting with CR found its own type byte as the end of the
    /// line and panicked slicing `buf[1..0]`.
    #[test]
    fn reply_starting_with_crlf_is_an_error_not_a_panic() {
        for input in [&b"\r\n"[..], b"\r", b"\n+OK\r\n"] {
            let mut s = ReplyScanner::new(Limits::default());
            assert!(
                s.scan(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
