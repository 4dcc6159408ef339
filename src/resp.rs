//! RESP framing: find where requests and replies end without materialising them.
//!
//! This is the hot path, so it is written by hand. Measured here (`cargo bench --bench scan`): redis-protocol
//! 6.0's `decode` costs 3.4 to 6.7 times our CPU per frame (small requests, small replies, a large array) and
//! its copy-free `decode_range` 3 to 3.5 times; fed a large array in 64 KiB reads, it re-parses from byte 0
//! each time (20 to 23 times our cost), and it has no size limits. Both scanners here are resumable: state
//! survives `Ok(None)`, so a large frame arriving in pieces is scanned once. `redis-protocol` still parses the
//! replies of control commands (ROLE, COMMAND) and is the oracle of the property tests.

#[cfg(test)]
mod props;
pub mod reply;
pub mod request;
pub mod value;

pub use reply::{ReplyFrame, ReplyScanner};
pub use request::{Request, RequestScanner};
pub use value::{encode_command, Value};

/// Size limits applied while scanning. Every limit is checked before anything is buffered past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string, in bytes (Redis: `proto-max-bulk-len`, 512 MiB).
    pub max_bulk_bytes: usize,
    /// Most elements in one request array (arguments of one command).
    pub max_array_len: usize,
    /// Longest inline command line, in bytes (Redis: 64 KiB).
    pub max_inline_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_inline_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// The limits for replies from a server, given the limits for clients' requests. A server is not
    /// hostile, and a reply that fails its scan takes a connection shared with other clients with it: a
    /// bulk reply is allowed what Redis allows by default (`proto-max-bulk-len`, 512 MiB) even when
    /// clients are held to less, and nesting has no limit (a Lua script's reply may nest thousands of
    /// levels).
    pub fn for_replies(self) -> Limits {
        Limits {
            max_bulk_bytes: self.max_bulk_bytes.max(Limits::default().max_bulk_bytes),
            ..self
        }
    }
}

/// Malformed or oversized input. The peer that sent it is at fault; its connection cannot be resynchronised
/// and must be closed after the error is reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A length or count line holds something other than an integer.
    #[error("invalid {what} length")]
    BadLength {
        /// Which length: `multibulk`, `bulk`, `aggregate`.
        what: &'static str,
    },
    /// A declared length is larger than the configured limit.
    #[error("{what} length {len} exceeds the limit of {limit}")]
    TooLong {
        /// Which length was too large.
        what: &'static str,
        /// The length the peer declared.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A request array element is not a bulk string.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A frame starts with a byte that is no RESP type.
    #[error("unknown reply type '{0}'")]
    UnknownType(char),
    /// A bulk string is not followed by CRLF.
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    /// An inline command line is longer than the limit without a newline.
    #[error("too big inline request")]
    InlineTooLong,
    /// A header line (`*3`, `$5`) is longer than any valid header.
    #[error("too big {what} count string")]
    HeaderTooLong {
        /// Which header.
        what: &'static str,
    },
    /// An inline command has an unterminated quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An upstream sent a reply when no request was waiting for one.
    #[error("reply without a request")]
    UnexpectedReply,
    /// RESP3 streamed strings and aggregates (`$?`, `*?`), which Redis never sends.
    #[error("streamed RESP3 types are not supported")]
    Streamed,
}

/// Longest header line we accept: a type byte, a sign, 19 digits, CRLF, with room to spare.
const MAX_HEADER: usize = 32;

/// Finds the CRLF-terminated line starting at `at`; returns the index of its `\r`.
/// `Ok(None)` if the line is incomplete; an error once it is longer than any header can be.
#[inline]
fn header_end(buf: &[u8], at: usize, what: &'static str) -> Result<Option<usize>, Error> {
    let window = &buf[at..buf.len().min(at + MAX_HEADER)];
    match memchr::memchr(b'\r', window) {
        Some(i) if at + i + 1 < buf.len() => {
            if buf[at + i + 1] == b'\n' {
                Ok(Some(at + i))
            } else {
                Err(Error::BadLength { what })
            }
        }
        Some(_) => Ok(None),
        None if window.len() == MAX_HEADER => Err(Error::HeaderTooLong { what }),
        None => Ok(None),
    }
}

/// Parses a decimal integer the way Redis's `string2ll` does: optional `-`, digits, no spaces or `+`.
#[inline]
fn parse_int(digits: &[u8]) -> Option<i64> {
    // Exactly Redis's rules, because request bytes are forwarded untouched: a length Redis would reject
    // (it then closes the connection, shared by other clients) must be rejected here first.
    if digits == b"0" {
        return Some(0);
    }
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    // No leading zeros, no `-0`.
    if !matches!(digits.first(), Some(b'1'..=b'9')) || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_accepts_what_redis_accepts() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b" 1"), None);
        assert_eq!(parse_int(b"1a"), None);
        assert_eq!(parse_int(b"007"), None, "Redis rejects leading zeros");
        assert_eq!(parse_int(b"-0"), None);
        assert_eq!(parse_int(b"00"), None);
    }

    #[test]
    fn header_end_reports_incomplete_and_oversized_lines() {
        assert_eq!(header_end(b"*3\r\n", 0, "x"), Ok(Some(2)));
        assert_eq!(header_end(b"*3\r", 0, "x"), Ok(None));
        assert_eq!(header_end(b"*3", 0, "x"), Ok(None));
        assert!(header_end(b"*3\rx", 0, "x").is_err());
        assert!(header_end(&[b'1'; 40], 0, "x").is_err());
    }
}
