//! A client's input: bytes received and not yet routed, and the requests scanned from them. Requests are
//! forwarded as the client sent them, cut from this buffer without a copy.

use bytes::{Buf, Bytes, BytesMut};

use super::gate::Args;
use crate::resp::{request::KEPT_ARGS, Limits, Request, RequestScanner};

/// Largest bulk string and most arguments in a request before the client authenticates (Redis 7's own
/// limits for unauthenticated clients). `HELLO 3 AUTH user password SETNAME name` has 7 arguments.
const UNAUTHENTICATED_BULK_BYTES: usize = 16 * 1024;
const UNAUTHENTICATED_ARGS: usize = 10;

/// Bytes received from the client and the scanner that finds requests in them.
pub(super) struct Input {
    buf: BytesMut,
    scanner: RequestScanner,
    /// The scanner holds requests to the limits for unauthenticated clients.
    limited: bool,
}

impl Input {
    pub fn new(limits: Limits) -> Input {
        Input {
            buf: BytesMut::new(),
            scanner: RequestScanner::new(limits),
            limited: false,
        }
    }

    /// Holds requests to Redis's limits for unauthenticated clients while `limited`, else to `limits`: a
    /// stranger cannot make the proxy buffer a large request.
    pub fn limit(&mut self, limited: bool, limits: Limits) {
        if limited != self.limited {
            self.limited = limited;
            self.scanner.set_limits(if limited {
                Limits {
                    max_bulk_bytes: UNAUTHENTICATED_BULK_BYTES,
                    max_array_len: UNAUTHENTICATED_ARGS,
                    ..limits
                }
            } else {
                limits
            });
        }
    }

    /// The request starting `start` bytes into the buffer, once it is all there.
    pub fn scan(&mut self, start: usize) -> Result<Option<Request>, crate::resp::Error> {
        self.scanner.scan(&self.buf[start..])
    }

    /// Puts `bytes` (whole requests) into the input at `at`, a request boundary: they are scanned next.
    pub fn insert(&mut self, at: usize, bytes: &[u8]) {
        let at = at.min(self.buf.len());
        let tail = self.buf.split_off(at);
        self.buf.extend_from_slice(bytes);
        self.buf.unsplit(tail);
    }

    /// The arguments of each complete request already buffered from `from` on, at most `max` of them,
    /// scanned without disturbing the scanner (a transaction looks ahead for its first key).
    pub fn peek(&self, from: usize, max: usize) -> Vec<Vec<Vec<u8>>> {
        let mut scanner = RequestScanner::new(Limits::default());
        let mut at = from;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(rest) = self.buf.get(at..).filter(|r| !r.is_empty()) else {
                break;
            };
            let Ok(Some(req)) = scanner.scan(rest) else {
                break;
            };
            let frame = scanner.frame(&req, rest);
            match crate::resp::value::request_args(frame) {
                Some(args) => out.push(args),
                None if req.inline => out.push(Vec::new()),
                None => break,
            }
            at += req.len;
        }
        out
    }

    /// The arguments of `req`, which starts `start` bytes into the buffer.
    pub fn args<'a>(&'a self, req: &'a Request, start: usize) -> RequestArgs<'a> {
        RequestArgs {
            input: self,
            req,
            start,
        }
    }

    /// Removes `req` (at the start of the buffer) and returns the bytes to forward. Inline commands are
    /// re-encoded as multibulk.
    pub fn take(&mut self, req: &Request) -> Bytes {
        if req.inline {
            let bytes = Bytes::copy_from_slice(self.scanner.frame(req, &[]));
            self.buf.advance(req.len);
            bytes
        } else {
            self.buf.split_to(req.len).freeze()
        }
    }

    /// Removes the first `len` bytes (requests batched together) and returns them.
    pub fn split(&mut self, len: usize) -> Bytes {
        self.buf.split_to(len).freeze()
    }

    /// Drops `req` (at the start of the buffer) unforwarded.
    pub fn skip(&mut self, req: &Request) {
        self.buf.advance(req.len);
    }

    /// Drops everything received (nothing after QUIT, or a protocol error, runs).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Makes room to read into, sized for the client: idle clients get a small buffer (memory per idle
    /// connection is a target), busy ones a larger one, and a large one is let go once drained.
    pub fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 1024 {
            if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
                self.buf = BytesMut::new();
            }
            self.buf
                .reserve(if self.buf.is_empty() { 2048 } else { 16 * 1024 });
        }
    }

    /// The buffer to read into.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// One request's arguments, read from the input on demand.
pub(super) struct RequestArgs<'a> {
    input: &'a Input,
    req: &'a Request,
    start: usize,
}

impl Args for RequestArgs<'_> {
    fn arg(&self, i: usize) -> Option<&[u8]> {
        self.input
            .scanner
            .arg(self.req, &self.input.buf[self.start..], i)
    }

    fn argc(&self) -> usize {
        self.req.argc
    }

    fn kept(&self) -> Vec<Vec<u8>> {
        (0..self.req.argc.min(KEPT_ARGS))
            .map_while(|i| self.arg(i).map(<[u8]>::to_vec))
            .collect()
    }

    fn all(&self) -> Vec<Vec<u8>> {
        let frame = self
            .input
            .scanner
            .frame(self.req, &self.input.buf[self.start..]);
        crate::resp::value::request_args(frame).unwrap_or_default()
    }
}
