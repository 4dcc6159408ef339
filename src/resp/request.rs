//! Client requests: RESP multibulk arrays of bulk strings, and inline commands (`PING\r\n` typed into telnet).
//!
//! The scanner reports where a request ends, how many arguments it has, and where its first
//! [`KEPT_ARGS`] arguments lie, which is all routing needs. Multibulk bytes are forwarded untouched; an
//! inline command is re-encoded as multibulk (so quoting is interpreted once, here, exactly as Redis's
//! `sdssplitargs` does) and the re-encoded bytes are forwarded instead.

use super::{header_end, parse_int, Error, Limits};

/// How many leading arguments have their positions recorded. Enough for every routing decision
/// (`XREAD COUNT n BLOCK ms`, `HELLO 3 AUTH u p SETNAME n`, `CLIENT TRACKING ON REDIRECT id ...`).
pub const KEPT_ARGS: usize = 16;

/// One complete request found by [`RequestScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes of input the request occupied, from its first byte.
    pub len: usize,
    /// Number of arguments, command name included. Zero for an empty line or `*0`, which Redis ignores
    /// without a reply.
    pub argc: usize,
    /// True for an inline command: forward [`RequestScanner::frame`], not the input bytes.
    pub inline: bool,
}

/// Resumable request scanner. Feed it the unconsumed input starting at the current request's first byte;
/// on `Ok(None)` call again with the same start and more bytes.
#[derive(Debug)]
pub struct RequestScanner {
    limits: Limits,
    state: State,
    argc: usize,
    kept: [(usize, usize); KEPT_ARGS],
    /// Multibulk encoding of the last inline command.
    inline: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Nothing of the current request scanned yet.
    Start,
    /// Inside a multibulk: `done` arguments of `argc` complete, the next header starts at `at`.
    Multibulk { done: usize, at: usize },
    /// Inline command: no newline in the first `searched` bytes.
    Inline { searched: usize },
}

impl RequestScanner {
    /// A scanner enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestScanner {
            limits,
            state: State::Start,
            argc: 0,
            kept: [(0, 0); KEPT_ARGS],
            inline: Vec::new(),
        }
    }

    /// Enforces `limits` from the next request on (or from the rest of the current one).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Scans `buf`, which starts at the first byte of a request.
    ///
    /// Returns the request once complete, `Ok(None)` if more bytes are needed. After an error the stream
    /// cannot be resynchronised.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Request>, Error> {
        if buf.is_empty() {
            return Ok(None);
        }
        match self.state {
            State::Start if buf[0] == b'*' => self.start_multibulk(buf),
            State::Start => self.scan_inline(buf, 0),
            State::Multibulk { done, at } => self.scan_args(buf, done, at),
            State::Inline { searched } => self.scan_inline(buf, searched),
        }
    }

    /// The bytes to forward upstream for the request just returned: the input itself for multibulk,
    /// the re-encoded command for inline.
    pub fn frame<'a>(&'a self, req: &Request, buf: &'a [u8]) -> &'a [u8] {
        if req.inline {
            &self.inline
        } else {
            &buf[..req.len]
        }
    }

    /// Argument `i` of the request just returned (0 is the command name), if it is among the first
    /// [`KEPT_ARGS`]. `buf` is the same slice that was scanned.
    pub fn arg<'a>(&'a self, req: &Request, buf: &'a [u8], i: usize) -> Option<&'a [u8]> {
        if i >= req.argc || i >= KEPT_ARGS {
            return None;
        }
        let (s, e) = self.kept[i];
        let src = if req.inline { &self.inline[..] } else { buf };
        src.get(s..e)
    }

    fn start_multibulk(&mut self, buf: &[u8]) -> Result<Option<Request>, Error> {
        let Some(end) = header_end(buf, 0, "multibulk")? else {
            return Ok(None);
        };
        let n = parse_int(&buf[1..end]).ok_or(Error::BadLength { what: "multibulk" })?;
        let at = end + 2;
        if n <= 0 {
            // Redis ignores `*0` and `*-1` requests without replying.
            return Ok(Some(self.finish(at, 0, false)));
        }
        let n = n as u64;
        if n > self.limits.max_array_len as u64 {
            return Err(Error::TooLong {
                what: "multibulk",
                len: n,
                limit: self.limits.max_array_len,
            });
        }
        self.argc = n as usize;
        self.scan_args(buf, 0, at)
    }

    fn scan_args(
        &mut self,
        buf: &[u8],
        mut done: usize,
        mut at: usize,
    ) -> Result<Option<Request>, Error> {
        while done < self.argc {
            if at >= buf.len() {
                self.state = State::Multibulk { done, at };
                return Ok(None);
            }
            if buf[at] != b'$' {
                return Err(Error::ExpectedBulk(char::from(buf[at])));
            }
            let Some(end) = header_end(buf, at, "bulk")? else {
                self.state = State::Multibulk { done, at };
                return Ok(None);
            };
            let len = parse_int(&buf[at + 1..end]).ok_or(Error::BadLength { what: "bulk" })?;
            if len < 0 {
                return Err(Error::BadLength { what: "bulk" });
            }
            if len as u64 > self.limits.max_bulk_bytes as u64 {
                return Err(Error::TooLong {
                    what: "bulk",
                    len: len as u64,
                    limit: self.limits.max_bulk_bytes,
                });
            }
            let start = end + 2;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                self.state = State::Multibulk { done, at };
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(Error::MissingCrlf);
            }
            if done < KEPT_ARGS {
                self.kept[done] = (start, stop);
            }
            done += 1;
            at = stop + 2;
        }
        let argc = self.argc;
        Ok(Some(self.finish(at, argc, false)))
    }

    fn scan_inline(&mut self, buf: &[u8], searched: usize) -> Result<Option<Request>, Error> {
        let Some(nl) = memchr::memchr(b'\n', &buf[searched..]).map(|i| searched + i) else {
            if buf.len() > self.limits.max_inline_bytes {
                return Err(Error::InlineTooLong);
            }
            self.state = State::Inline {
                searched: buf.len(),
            };
            return Ok(None);
        };
        if nl > self.limits.max_inline_bytes {
            return Err(Error::InlineTooLong);
        }
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let argc = self.encode_inline(line)?;
        Ok(Some(self.finish(nl + 1, argc, true)))
    }

    fn finish(&mut self, len: usize, argc: usize, inline: bool) -> Request {
        self.state = State::Start;
        self.argc = argc;
        Request { len, argc, inline }
    }

    /// Splits an inline line like Redis's `sdssplitargs` and encodes it as multibulk into `self.inline`.
    fn encode_inline(&mut self, line: &[u8]) -> Result<usize, Error> {
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut i = 0;
        loop {
            while i < line.len() && line[i].is_redis_space() {
                i += 1;
            }
            if i >= line.len() {
                break;
            }
            let mut arg = Vec::new();
            let (mut in_dq, mut in_sq) = (false, false);
            loop {
                let c = line.get(i).copied();
                if in_dq {
                    match c {
                        None => return Err(Error::UnbalancedQuotes),
                        Some(b'\\')
                            if line.get(i + 1) == Some(&b'x')
                                && hex_pair(line.get(i + 2..i + 4)).is_some() =>
                        {
                            arg.push(hex_pair(line.get(i + 2..i + 4)).unwrap_or_default());
                            i += 3;
                        }
                        Some(b'\\') if i + 1 < line.len() => {
                            i += 1;
                            arg.push(match line[i] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                        }
                        Some(b'"') => {
                            // A closing quote must be followed by a space or the end of the line.
                            if line.get(i + 1).is_some_and(|c| !c.is_redis_space()) {
                                return Err(Error::UnbalancedQuotes);
                            }
                            in_dq = false;
                            i += 1;
                            break;
                        }
                        Some(c) => arg.push(c),
                    }
                } else if in_sq {
                    match c {
                        None => return Err(Error::UnbalancedQuotes),
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            i += 1;
                            arg.push(b'\'');
                        }
                        Some(b'\'') => {
                            if line.get(i + 1).is_some_and(|c| !c.is_redis_space()) {
                                return Err(Error::UnbalancedQuotes);
                            }
                            in_sq = false;
                            i += 1;
                            break;
                        }
                        Some(c) => arg.push(c),
                    }
                } else {
                    match c {
                        None => break,
                        Some(c) if c.is_redis_space() => break,
                        Some(b'"') => in_dq = true,
                        Some(b'\'') => in_sq = true,
                        Some(c) => arg.push(c),
                    }
                }
                i += 1;
            }
            debug_assert!(!in_dq && !in_sq);
            args.push(arg);
        }
        if args.len() > self.limits.max_array_len {
            return Err(Error::TooLong {
                what: "multibulk",
                len: args.len() as u64,
                limit: self.limits.max_array_len,
            });
        }
        self.inline.clear();
        self.inline
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for (n, arg) in args.iter().enumerate() {
            self.inline
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            let start = self.inline.len();
            self.inline.extend_from_slice(arg);
            if n < KEPT_ARGS {
                self.kept[n] = (start, self.inline.len());
            }
            self.inline.extend_from_slice(b"\r\n");
        }
        Ok(args.len())
    }
}

/// Redis splits inline commands on C's `isspace`, which includes vertical tab (Rust's
/// `is_ascii_whitespace` does not).
trait RedisSpace {
    fn is_redis_space(&self) -> bool;
}

impl RedisSpace for u8 {
    fn is_redis_space(&self) -> bool {
        matches!(self, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
    }
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let hi = char::from(*pair.first()?).to_digit(16)?;
    let lo = char::from(*pair.get(1)?).to_digit(16)?;
    Some((hi * 16 + lo) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Vec<(Request, Vec<Vec<u8>>)> {
        let mut s = RequestScanner::new(Limits::default());
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(req) = s.scan(&input[at..]).expect("valid input") {
            let args = (0..req.argc.min(KEPT_ARGS))
                .map(|i| s.arg(&req, &input[at..], i).expect("kept").to_vec())
                .collect();
            out.push((req, args));
            at += req.len;
        }
        out
    }

    #[test]
    fn multibulk_request_gives_length_and_arguments() {
        let got = scan_all(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].0,
            Request {
                len: 22,
                argc: 2,
                inline: false
            }
        );
        assert_eq!(got[0].1, vec![b"GET".to_vec(), b"key".to_vec()]);
        assert_eq!(got[1].1, vec![b"PING".to_vec()]);
    }

    #[test]
    fn partial_request_resumes_where_it_stopped() {
        let input = b"*2\r\n$3\r\nSET\r\n$5\r\nhello\r\n";
        for cut in 0..input.len() {
            let mut s = RequestScanner::new(Limits::default());
            assert_eq!(s.scan(&input[..cut]), Ok(None), "cut at {cut}");
            let req = s.scan(input).expect("valid").expect("complete");
            assert_eq!(req.len, input.len());
            assert_eq!(s.arg(&req, input, 1), Some(&b"hello"[..]));
        }
    }

    #[test]
    fn inline_command_is_split_like_redis() {
        let got = scan_all(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r\nPING\n");
        assert_eq!(
            got[0].1,
            vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert!(got[0].0.inline);
        assert_eq!(got[1].1, vec![b"PING".to_vec()]);
    }

    #[test]
    fn inline_command_is_reencoded_as_multibulk() {
        let mut s = RequestScanner::new(Limits::default());
        let input = b"GET k\r\n";
        let req = s.scan(input).expect("valid").expect("complete");
        assert_eq!(s.frame(&req, input), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn empty_requests_have_no_arguments() {
        let got = scan_all(b"\r\n*0\r\n*-1\r\n   \n");
        assert_eq!(
            got.iter().map(|r| r.0.argc).collect::<Vec<_>>(),
            vec![0, 0, 0, 0]
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        let limits = Limits {
            max_bulk_bytes: 10,
            max_array_len: 3,
            max_inline_bytes: 8,
        };
        let cases: &[&[u8]] = &[
            b"*x\r\n",
            b"*2\r\n:1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$11\r\n",
            b"*4\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"set \"a\r\n",
            b"set \"a\"b\r\n",
            b"123456789",
            b"*1\r\n$1111111111111111111111111111111111111\r\n",
        ];
        for case in cases {
            let mut s = RequestScanner::new(limits);
            assert!(s.scan(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn lengths_with_leading_zeros_are_errors_as_in_redis() {
        for case in [
            &b"*01\r\n$1\r\na\r\n"[..],
            b"*1\r\n$01\r\na\r\n",
            b"*1\r\n$-0\r\n",
        ] {
            let mut s = RequestScanner::new(Limits::default());
            assert!(s.scan(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn inline_commands_split_on_vertical_tab_like_redis() {
        let got = scan_all(b"GET\x0bk\r\n");
        assert_eq!(got[0].1, vec![b"GET".to_vec(), b"k".to_vec()]);
    }

    #[test]
    fn only_the_first_arguments_are_kept() {
        let mut input = b"*20\r\n".to_vec();
        for i in 0..20 {
            input.extend_from_slice(format!("${}\r\n{}\r\n", i.to_string().len(), i).as_bytes());
        }
        let mut s = RequestScanner::new(Limits::default());
        let req = s.scan(&input).expect("valid").expect("complete");
        assert_eq!(req.argc, 20);
        assert_eq!(s.arg(&req, &input, 15), Some(&b"15"[..]));
        assert_eq!(s.arg(&req, &input, 16), None);
    }
}
