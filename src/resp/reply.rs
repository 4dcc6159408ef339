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
    /// Elements still missing in each open aggregate, innermost last.
    open: Vec<u64>,
    /// Type of the current top-level reply, once known.
    kind: Option<u8>,
}

impl ReplyScanner {
    /// A scanner enforcing `limits` (bulk length and nesting depth).
    pub fn new(limits: Limits) -> Self {
        ReplyScanner {
            limits,
            at: 0,
            open: Vec::new(),
            kind: None,
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
            let Some(end) = header_end(buf, self.at, "reply")? else {
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
                            if self.open.len() >= self.limits.max_depth {
                                return Err(Error::TooDeep(self.limits.max_depth));
                            }
                            self.open.push(elems);
                            continue;
                        }
                    }
                }
                other => return Err(Error::UnknownType(char::from(other))),
            }
            // One element finished: close every aggregate it completes.
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
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
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
            max_depth: 2,
        };
        let cases: &[&[u8]] = &[
            b"?\r\n",
            b"$x\r\n",
            b"$5\r\n",
            b"$1\r\nab\r\n",
            b"*1\r\n*1\r\n*1\r\n",
            b"$?\r\n",
            b"%-1\r\n",
        ];
        for case in cases {
            let mut s = ReplyScanner::new(limits);
            assert!(s.scan(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }
}
