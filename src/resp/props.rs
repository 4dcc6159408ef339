//! Property tests of both scanners, with `redis-protocol` as the oracle.
//!
//! Input reaches a scanner the way a socket delivers it: the received prefix grows at random boundaries and,
//! after every read, all complete frames are taken before the next read, each call starting at the first byte
//! of the current frame. Whatever the cuts, the frames must be the ones the oracle finds in the whole buffer.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use redis_protocol::resp2::types::{BytesFrame as Frame2, OwnedFrame as Owned2};
use redis_protocol::resp3::types::{BytesFrame as Frame3, VerbatimStringFormat};

use super::request::KEPT_ARGS;
use super::{Error, Limits, ReplyFrame, ReplyScanner, Request, RequestScanner};

/// Modest, so that these tests stay within a few seconds of `cargo test`.
const CASES: u32 = 256;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn request_pipelines_split_anywhere_give_the_oracles_frames_and_arguments(
        reqs in vec(request(), 1..12),
        cuts in cuts(),
    ) {
        let input: Vec<u8> = reqs.iter().flat_map(|r| r.encode()).collect();
        let cuts = positions(&cuts, input.len());
        let got = scan_requests(Limits::default(), &input, &cuts);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.consumed, input.len());
        prop_assert_eq!(got.frames.len(), reqs.len());
        for (req, (at, scanned)) in reqs.iter().zip(&got.frames) {
            let at = *at;
            prop_assert_eq!(scanned.req.inline, matches!(req, Req::Inline { .. }));
            let expected = match req {
                Req::Multibulk(_) | Req::NullMultibulk => {
                    let (frame, len) = redis_protocol::resp2::decode::decode(&input[at..])
                        .expect("generated requests are valid RESP2")
                        .expect("generated requests are complete");
                    prop_assert_eq!(scanned.req.len, len);
                    prop_assert_eq!(&scanned.frame[..], &input[at..at + len]);
                    oracle_args(frame)
                }
                Req::Inline { line } => {
                    prop_assert_eq!(scanned.req.len, line.len());
                    // The re-encoded frame must be a multibulk the oracle reads back as the same words.
                    let (frame, len) = redis_protocol::resp2::decode::decode(&scanned.frame)
                        .expect("inline re-encoding is valid RESP2")
                        .expect("inline re-encoding is complete");
                    prop_assert_eq!(len, scanned.frame.len());
                    let words = whitespace_split(line);
                    prop_assert_eq!(&oracle_args(frame), &words);
                    words
                }
            };
            prop_assert_eq!(scanned.req.argc, expected.len());
            let kept = expected.len().min(KEPT_ARGS);
            prop_assert_eq!(&scanned.args[..], &expected[..kept]);
        }
    }

    #[test]
    fn resp2_replies_split_anywhere_give_the_oracles_frame_lengths(
        replies in vec(resp2_reply(), 1..12),
        cuts in cuts(),
    ) {
        check_replies(&replies, &cuts, |buf| {
            redis_protocol::resp2::decode::decode(buf).map(|d| d.map(|(_, len)| len))
        })?;
    }

    #[test]
    fn resp3_replies_split_anywhere_give_the_oracles_frame_lengths(
        replies in vec(resp3_reply(), 1..12),
        cuts in cuts(),
    ) {
        check_replies(&replies, &cuts, |buf| {
            redis_protocol::resp3::decode::complete::decode(buf).map(|d| d.map(|(_, len)| len))
        })?;
    }

    #[test]
    fn replies_nested_thousands_deep_split_anywhere_give_their_lengths(
        replies in vec(deep_reply(), 1..4),
        cuts in cuts(),
    ) {
        // Deeper than the oracle's recursion could go: the generated boundaries are the oracle.
        let input: Vec<u8> = replies.concat();
        let cuts = positions(&cuts, input.len());
        let got = scan_replies(Limits::default(), &input, &cuts);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.consumed, input.len());
        let lens: Vec<usize> = got.frames.iter().map(|(_, f)| f.len).collect();
        let want: Vec<usize> = replies.iter().map(Bytes::len).collect();
        prop_assert_eq!(lens, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_request_scanner_and_cuts_change_nothing(
        input in noise(),
        cuts in cuts(),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { Limits::default() };
        let cuts = positions(&cuts, input.len());
        same_outcome(
            scan_requests(limits, &input, &cuts),
            scan_requests(limits, &input, &[]),
        )?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reply_scanner_and_cuts_change_nothing(
        input in noise(),
        cuts in cuts(),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { Limits::default() };
        let cuts = positions(&cuts, input.len());
        same_outcome(
            scan_replies(limits, &input, &cuts),
            scan_replies(limits, &input, &[]),
        )?;
    }
}

/// One generated client request.
#[derive(Debug, Clone)]
enum Req {
    /// `*n` followed by `n` bulk strings; `*0` when empty.
    Multibulk(Vec<Vec<u8>>),
    /// `*-1`, which Redis ignores.
    NullMultibulk,
    /// An inline command line, newline included.
    Inline { line: Vec<u8> },
}

impl Req {
    fn encode(&self) -> Vec<u8> {
        match self {
            Req::Multibulk(args) => {
                let frame = Frame2::Array(
                    args.iter()
                        .map(|a| Frame2::BulkString(a.clone().into()))
                        .collect(),
                );
                encode2(&frame)
            }
            Req::NullMultibulk => b"*-1\r\n".to_vec(),
            Req::Inline { line } => line.clone(),
        }
    }
}

/// What the request scanner said about one request, copied out of the scanner.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    req: Request,
    args: Vec<Vec<u8>>,
    frame: Vec<u8>,
}

/// How scanning one input went.
#[derive(Debug)]
struct Outcome<T> {
    /// Offset of each frame found, and what the scanner said about it.
    frames: Vec<(usize, T)>,
    /// The error that stopped the stream, if one did.
    error: Option<Error>,
    /// Bytes taken by the frames.
    consumed: usize,
}

fn scan_requests(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome<Scanned> {
    let mut s = RequestScanner::new(limits);
    feed(input, cuts, |buf| {
        let Some(req) = s.scan(buf)? else {
            return Ok(None);
        };
        let args = (0..req.argc)
            .map_while(|i| s.arg(&req, buf, i).map(<[u8]>::to_vec))
            .collect::<Vec<_>>();
        assert_eq!(
            args.len(),
            req.argc.min(KEPT_ARGS),
            "every kept argument is there"
        );
        let frame = s.frame(&req, buf).to_vec();
        Ok(Some((req.len, Scanned { req, args, frame })))
    })
}

fn scan_replies(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome<ReplyFrame> {
    let mut s = ReplyScanner::new(limits);
    feed(input, cuts, |buf| Ok(s.scan(buf)?.map(|f| (f.len, f))))
}

/// Checks that chunked and whole-buffer scanning found the same frames and stopped the same way. An error
/// may quote how much of an overlong line had arrived when it was caught, so only its kind must match.
fn same_outcome<T: PartialEq + std::fmt::Debug>(
    chunked: Outcome<T>,
    whole: Outcome<T>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&chunked.frames, &whole.frames);
    prop_assert_eq!(chunked.consumed, whole.consumed);
    let kind = |e: &Option<Error>| e.as_ref().map(std::mem::discriminant);
    prop_assert_eq!(
        kind(&chunked.error),
        kind(&whole.error),
        "{:?} vs {:?}",
        chunked.error,
        whole.error
    );
    Ok(())
}

/// Feeds `input` as a socket would: the received prefix grows to each cut in turn, and after each read every
/// complete frame is taken. Checks that no frame is empty or longer than the bytes the scanner was given.
fn feed<T>(
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
                        error: Some(e),
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

/// Feeds the concatenated `replies` with random cuts and checks each frame against the generated boundaries
/// and the oracle `decode`, which returns the length of the frame at the start of its input.
fn check_replies(
    replies: &[Bytes],
    cuts: &[Index],
    decode: impl Fn(&[u8]) -> Result<Option<usize>, redis_protocol::error::RedisProtocolError>,
) -> Result<(), TestCaseError> {
    let input: Vec<u8> = replies.concat();
    let cuts = positions(cuts, input.len());
    let got = scan_replies(Limits::default(), &input, &cuts);
    prop_assert_eq!(got.error, None);
    prop_assert_eq!(got.consumed, input.len());
    prop_assert_eq!(got.frames.len(), replies.len());
    for (reply, (at, frame)) in replies.iter().zip(&got.frames) {
        let oracle =
            decode(&input[*at..]).map_err(|e| TestCaseError::fail(format!("oracle: {e:?}")))?;
        prop_assert_eq!(
            oracle,
            Some(reply.len()),
            "the generator and the oracle agree"
        );
        prop_assert_eq!(frame.len, reply.len());
        prop_assert_eq!(frame.kind, reply[0]);
    }
    Ok(())
}

/// Arguments of a multibulk request as the oracle decoded them; `*-1` has none.
fn oracle_args(frame: Owned2) -> Vec<Vec<u8>> {
    match frame {
        Owned2::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Owned2::BulkString(b) => b,
                other => panic!("request element is not a bulk string: {other:?}"),
            })
            .collect(),
        Owned2::Null => Vec::new(),
        other => panic!("request is not an array: {other:?}"),
    }
}

fn whitespace_split(line: &[u8]) -> Vec<Vec<u8>> {
    line.split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn encode2(frame: &Frame2) -> Vec<u8> {
    let mut buf = BytesMut::new();
    redis_protocol::resp2::encode::extend_encode(&mut buf, frame, false).expect("encodable frame");
    buf.to_vec()
}

fn encode3(frame: &Frame3) -> Vec<u8> {
    let mut buf = BytesMut::new();
    redis_protocol::resp3::encode::complete::extend_encode(&mut buf, frame, false)
        .expect("encodable frame");
    buf.to_vec()
}

/// An aggregate header (`*3`, `%2`) followed by its already encoded elements.
fn aggregate(kind: u8, count: usize, elems: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("{}{count}\r\n", char::from(kind)).into_bytes();
    for e in elems {
        out.extend_from_slice(e);
    }
    out
}

fn small_limits() -> Limits {
    Limits {
        max_bulk_bytes: 16,
        max_array_len: 8,
        max_inline_bytes: 32,
    }
}

/// Up to 16 cut points, turned into offsets by [`positions`] once the input length is known.
fn cuts() -> impl Strategy<Value = Vec<Index>> {
    vec(any::<Index>(), 0..16)
}

fn positions(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|c| c.index(len + 1)).collect()
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        6 => vec(bulk(), 0..6).prop_map(Req::Multibulk),
        1 => vec(vec(any::<u8>(), 0..4), 15..20).prop_map(Req::Multibulk),
        1 => Just(Req::NullMultibulk),
        3 => inline(),
    ]
}

/// Random binary strings, empty ones and ones longer than a header included.
fn bulk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..16),
        1 => vec(any::<u8>(), 16..300),
    ]
}

/// An inline command without quotes: words separated by blanks, `\n` or `\r\n` at the end.
fn inline() -> impl Strategy<Value = Req> {
    let word = vec(
        any::<u8>().prop_filter("no blanks or quotes", |b| {
            // `\x0b` is excluded too: Redis splits on it (C `isspace`), the scanner does not.
            !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | b'\x0b')
        }),
        1..12,
    );
    let blank = vec(prop::sample::select(&b" \t\x0c"[..]), 1..3);
    (
        vec((blank.clone(), word), 0..6),
        vec(prop::sample::select(&b" \t"[..]), 0..2),
        any::<bool>(),
    )
        .prop_map(|(words, trailing, crlf)| {
            let mut line = Vec::new();
            for (i, (blank, word)) in words.into_iter().enumerate() {
                // A leading blank is optional, but a line starting with `*` would be multibulk.
                if i > 0 || word[0] == b'*' || blank.len() > 1 {
                    line.extend_from_slice(&blank);
                }
                line.extend_from_slice(&word);
            }
            line.extend_from_slice(&trailing);
            line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            Req::Inline { line }
        })
}

/// Bytes of a simple string or error: anything but CR and LF, sometimes longer than a header line.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_filter("no CR or LF", |b| !matches!(b, b'\r' | b'\n'));
    prop_oneof![3 => vec(byte.clone(), 0..20), 1 => vec(byte, 20..200)]
}

fn line_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[ -~]{0,20}", 1 => "[ -~]{20,200}"]
}

/// One encoded RESP2 reply. The encoder cannot write a null array inside an array (GEOPOS sends those), so
/// leaves come from the encoder and arrays are framed here around encoded elements.
fn resp2_reply() -> impl Strategy<Value = Bytes> {
    let leaf = prop_oneof![
        line_bytes().prop_map(|s| encode2(&Frame2::SimpleString(s.into()))),
        line_text().prop_map(|s| encode2(&Frame2::Error(s.into()))),
        any::<i64>().prop_map(|n| encode2(&Frame2::Integer(n))),
        bulk().prop_map(|b| encode2(&Frame2::BulkString(b.into()))),
        Just(encode2(&Frame2::Null)),
        Just(b"*-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        vec(inner, 0..6).prop_map(|elems| aggregate(b'*', elems.len(), &elems))
    })
    .prop_map(Bytes::from)
}

/// A RESP3 value that the oracle can use as a map key or set element: anything but an aggregate.
fn resp3_leaf() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        line_bytes().prop_map(|data| encode3(&Frame3::SimpleString {
            data: data.into(),
            attributes: None
        })),
        line_text().prop_map(|data| encode3(&Frame3::SimpleError {
            data: data.into(),
            attributes: None
        })),
        any::<i64>().prop_map(|data| encode3(&Frame3::Number {
            data,
            attributes: None
        })),
        bulk().prop_map(|data| encode3(&Frame3::BlobString {
            data: data.into(),
            attributes: None
        })),
        bulk().prop_map(|data| encode3(&Frame3::BlobError {
            data: data.into(),
            attributes: None
        })),
        any::<bool>().prop_map(|data| encode3(&Frame3::Boolean {
            data,
            attributes: None
        })),
        Just(encode3(&Frame3::Null)),
        any::<f64>().prop_map(|data| encode3(&Frame3::Double {
            data,
            attributes: None
        })),
        "-?[0-9]{1,60}".prop_map(|data| encode3(&Frame3::BigNumber {
            data: data.into(),
            attributes: None
        })),
        (bulk(), any::<bool>()).prop_map(|(data, text)| encode3(&Frame3::VerbatimString {
            data: data.into(),
            format: if text {
                VerbatimStringFormat::Text
            } else {
                VerbatimStringFormat::Markdown
            },
            attributes: None
        })),
    ]
}

/// One encoded RESP3 reply: arrays, maps, sets, pushes and attributes framed around encoded leaves.
fn resp3_reply() -> impl Strategy<Value = Bytes> {
    resp3_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            let pairs = vec((resp3_leaf(), inner.clone()), 0..4);
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(|e| aggregate(b'*', e.len(), &e)),
                vec(inner.clone(), 0..6).prop_map(|e| aggregate(b'>', e.len(), &e)),
                // The oracle hashes set elements, so they cannot be aggregates.
                vec(resp3_leaf(), 0..6).prop_map(|e| aggregate(b'~', e.len(), &e)),
                pairs.prop_map(|kv| {
                    let flat: Vec<Vec<u8>> = kv.into_iter().flat_map(|(k, v)| [k, v]).collect();
                    aggregate(b'%', flat.len() / 2, &flat)
                }),
                (vec((resp3_leaf(), resp3_leaf()), 1..3), inner).prop_map(|(kv, value)| {
                    // The oracle refuses attributes on a null or on another attribute.
                    if matches!(value[0], b'_' | b'|') {
                        return value;
                    }
                    let mut flat: Vec<Vec<u8>> = kv.into_iter().flat_map(|(k, v)| [k, v]).collect();
                    let pairs = flat.len() / 2;
                    flat.push(value);
                    aggregate(b'|', pairs, &flat)
                }),
            ]
        })
        .prop_map(Bytes::from)
}

/// One reply nested up to a few thousand levels deep, built from the inside out (no recursion): each level
/// is an aggregate of any kind holding leaves around the level inside it, and runs of single-element
/// arrays (what a Lua script's nested tables give) are common.
fn deep_reply() -> impl Strategy<Value = Bytes> {
    let level = (0u8..6, 0usize..3, 0usize..3);
    let levels = prop_oneof![vec(level.clone(), 0..64), vec(level, 1000..3000)];
    (levels, resp3_leaf()).prop_map(|(levels, leaf)| {
        let mut reply = leaf;
        for (kind, before, after) in levels {
            let leaves = |n: usize| b"+x\r\n".repeat(n);
            let (head, before, after) = match kind {
                // Runs of single-element arrays, twice as likely as the rest.
                0 | 1 => (b"*1".to_vec(), 0, 0),
                2 => (
                    format!("*{}", before + 1 + after).into_bytes(),
                    before,
                    after,
                ),
                3 => (
                    format!(">{}", before + 1 + after).into_bytes(),
                    before,
                    after,
                ),
                // A map's value, after `before` whole pairs and a key.
                4 => (format!("%{}", before + 1).into_bytes(), 2 * before + 1, 0),
                // An attribute with `before + 1` pairs, decorating the level inside.
                _ => (format!("|{}", before + 1).into_bytes(), 2 * (before + 1), 0),
            };
            let mut outer = [&head[..], b"\r\n", &leaves(before)].concat();
            outer.extend_from_slice(&reply);
            outer.extend_from_slice(&leaves(after));
            reply = outer;
        }
        Bytes::from(reply)
    })
}

/// Input for the robustness properties: raw bytes, or RESP-looking tokens that reach deep scanner states.
fn noise() -> impl Strategy<Value = Bytes> {
    const BYTES: &[u8] = b"*$+-:%~>|_#,(=!?\r\n0123\"' \t\\a";
    const WORDS: &[&[u8]] = &[b"\r\n", b"-1", b"\\x4", b"GET", b"99999999999999999999"];
    let token = prop_oneof![
        prop::sample::select(BYTES).prop_map(|b| vec![b]),
        prop::sample::select(WORDS).prop_map(<[u8]>::to_vec),
    ];
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(token, 0..64).prop_map(|t| t.concat()),
    ]
    .prop_map(Bytes::from)
}
