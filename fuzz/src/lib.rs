//! What the fuzz targets share: reading the split point from the input, and feeding a scanner the way a
//! socket would.
//!
//! Input layout of `request_scanner` and `reply_scanner`: the first byte chooses how to feed the rest. Its
//! low bit selects small limits (to reach every limit check), the other seven bits where the rest is cut in
//! two, as a fraction of its length. The targets scan the rest once whole and once in two chunks and require
//! the same frames.

use std::mem::Discriminant;

use redsplit::resp::request::KEPT_ARGS;
use redsplit::resp::{Error, Limits, ReplyFrame, ReplyScanner, Request, RequestScanner};

/// How scanning one input went.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    /// Offset of each frame found, and what the scanner said about it.
    pub frames: Vec<(usize, T)>,
    /// The kind of error that stopped the stream, if one did. Only the kind: a `TooLong` error quotes how
    /// much of an overlong line had arrived, which depends on the cut.
    pub error: Option<Discriminant<Error>>,
    /// Bytes taken by the frames.
    pub consumed: usize,
}

/// What the request scanner said about one request, copied out of the scanner.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// The request.
    pub req: Request,
    /// Its kept arguments.
    pub args: Vec<Vec<u8>>,
    /// The bytes to forward.
    pub frame: Vec<u8>,
}

/// Splits fuzz input into limits, a cut point and the stream; `None` for an empty input.
pub fn split(data: &[u8]) -> Option<(Limits, usize, &[u8])> {
    let (&selector, stream) = data.split_first()?;
    let limits = if selector & 1 == 1 {
        Limits {
            max_bulk_bytes: 16,
            max_array_len: 8,
            max_inline_bytes: 32,
        }
    } else {
        Limits::default()
    };
    let cut = usize::from(selector >> 1) * (stream.len() + 1) / 128;
    Some((limits, cut, stream))
}

/// Scans `input` for requests, receiving it in pieces that end at each of `cuts`.
pub fn scan_requests(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome<Scanned> {
    let mut s = RequestScanner::new(limits);
    feed(input, cuts, |buf| {
        let Some(req) = s.scan(buf)? else {
            return Ok(None);
        };
        let args: Vec<Vec<u8>> = (0..req.argc)
            .map_while(|i| s.arg(&req, buf, i).map(<[u8]>::to_vec))
            .collect();
        assert_eq!(
            args.len(),
            req.argc.min(KEPT_ARGS),
            "every kept argument is there"
        );
        let frame = s.frame(&req, buf).to_vec();
        Ok(Some((req.len, Scanned { req, args, frame })))
    })
}

/// Scans `input` for replies, receiving it in pieces that end at each of `cuts`.
pub fn scan_replies(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome<ReplyFrame> {
    let mut s = ReplyScanner::new(limits);
    feed(input, cuts, |buf| Ok(s.scan(buf)?.map(|f| (f.len, f))))
}

/// Feeds `input` as a socket would: the received prefix grows to each cut in turn, and after each read every
/// complete frame is taken, each call starting at the first byte of the current frame. Panics if a frame is
/// empty or longer than the bytes the scanner was given.
pub fn feed<T>(
    input: &[u8],
    cuts: &[usize],
    mut scan: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, Error>,
) -> Outcome<T> {
    let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
    ends.push(input.len());
    ends.sort_unstable();
    ends.dedup();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in ends {
        loop {
            match scan(&input[start..end]) {
                Ok(Some((len, t))) => {
                    assert!(
                        len > 0 && len <= end - start,
                        "frame of {len} bytes reported from {} bytes",
                        end - start
                    );
                    frames.push((start, t));
                    start += len;
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(std::mem::discriminant(&e)),
                        consumed: start,
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        consumed: start,
    }
}
