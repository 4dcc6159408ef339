//! Per-frame cost of the RESP scanners against redis-protocol 6.0 (RESP2), the oracle of the property tests.
//!
//! Run with `cargo bench --bench scan` (`-- --quick` for a short run, `-- request` to filter). Criterion
//! reports each case's time and throughput; after it, a table prints the ratio redis-protocol / redsplit
//! per case, read back from the estimates criterion saved during this run. Quote those ratios, not the
//! absolute times: the machines are shared and noisy.
//!
//! What is compared. Our scanners only find where a frame ends (and where the first arguments of a
//! request lie); they materialise nothing. Two redis-protocol entry points stand against them:
//! - `decode` builds an `OwnedFrame` (one allocation per element, payloads copied): what the oracle does;
//! - `decode_range` only records byte ranges (still one `Vec` per array), the closest like-for-like.
//!
//! Chunked cases feed one frame in 64 KiB steps, as a socket delivers it: each step calls the parser again
//! with a longer prefix of the same frame. Our scanners resume where they stopped; redis-protocol starts
//! again at byte 0. The `whole` variants parse the complete frame once, so chunked / whole shows what the
//! re-parsing costs. Starting over is cheap on one large bulk string (its length is declared, so each
//! retry reads a few headers: the 1 MiB `SET` mostly measures `decode` copying the payload) and expensive
//! on an aggregate of many small elements (each retry walks every element again).

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::SystemTime;

use criterion::{Criterion, Throughput};
use redis_protocol::resp2::decode::{decode, decode_range};
use redsplit::resp::{Limits, ReplyScanner, RequestScanner};

/// What a socket read delivers at a time in the chunked cases.
const CHUNK: usize = 64 * 1024;

/// Function names; the ratio table looks their estimates up by these.
const OURS: &str = "redsplit";
const DECODE: &str = "redis-protocol decode";
const RANGE: &str = "redis-protocol decode_range";
const OURS_WHOLE: &str = "redsplit whole";
const DECODE_WHOLE: &str = "redis-protocol decode whole";
const RANGE_WHOLE: &str = "redis-protocol decode_range whole";

fn main() {
    let started = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    // Array elements are evaluated in order: the cases run as listed.
    let cases = [
        request_pipeline(&mut c),
        request_large_chunked(&mut c),
        reply_pipeline(&mut c),
        reply_nested(&mut c),
        reply_nested_chunked(&mut c),
    ];
    c.final_summary();
    print_ratios(&cases, started);
}

/// A benchmark group and what its frames are, for the ratio table.
struct Case {
    group: &'static str,
    /// Frames scanned per iteration.
    frames: u64,
    /// Functions to compare with [`OURS`].
    theirs: &'static [&'static str],
    /// Chunked cases only: the same parser fed in chunks and fed the whole frame.
    chunked_vs_whole: &'static [(&'static str, &'static str)],
}

/// The `chunked_vs_whole` pairs of a chunked case.
const CHUNKED_VS_WHOLE: &[(&str, &str)] = &[
    (OURS, OURS_WHOLE),
    (DECODE, DECODE_WHOLE),
    (RANGE, RANGE_WHOLE),
];

// ---------------------------------------------------------------------------------------------------------
// Requests

/// 16 pipelined `SET key:NNN value` requests in one buffer, scanned one after the other.
fn request_pipeline(c: &mut Criterion) -> Case {
    const GROUP: &str = "request_pipeline_16_set";
    let buf: Vec<u8> = (0..16)
        .flat_map(|i| multibulk(&[b"SET", format!("key:{i:03}").as_bytes(), b"value"]))
        .collect();
    assert_eq!(
        common::scan_requests(&mut RequestScanner::new(Limits::default()), &buf),
        16
    );
    assert_eq!(
        count_frames(&buf, |b| decode(b).ok().flatten().map(|(_, n)| n)),
        16
    );

    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(16));
    // One scanner per connection, reused for every request, as a session does.
    let mut scanner = RequestScanner::new(Limits::default());
    g.bench_function(OURS, |b| {
        b.iter(|| common::scan_requests(&mut scanner, black_box(&buf)))
    });
    g.bench_function(DECODE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.bench_function(RANGE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.finish();
    Case {
        group: GROUP,
        frames: 16,
        theirs: &[DECODE, RANGE],
        chunked_vs_whole: &[],
    }
}

/// One `SET key <1 MiB>` request arriving in 64 KiB reads.
fn request_large_chunked(c: &mut Criterion) -> Case {
    const GROUP: &str = "request_set_1mib_in_64k_chunks";
    let value = vec![b'x'; 1024 * 1024];
    let buf = multibulk(&[b"SET", b"key", &value]);
    let cuts = cuts(buf.len());
    assert_eq!(
        requests_chunked(&mut RequestScanner::new(Limits::default()), &buf, &cuts),
        buf.len()
    );
    assert_eq!(
        chunked(&buf, &cuts, |b| decode(b).ok().flatten().map(|(_, n)| n)),
        buf.len()
    );

    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    let mut scanner = RequestScanner::new(Limits::default());
    g.bench_function(OURS, |b| {
        b.iter(|| requests_chunked(&mut scanner, black_box(&buf), &cuts))
    });
    g.bench_function(DECODE, |b| {
        b.iter(|| {
            chunked(black_box(&buf), &cuts, |b| {
                decode(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.bench_function(RANGE, |b| {
        b.iter(|| {
            chunked(black_box(&buf), &cuts, |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    whole_variants(&mut g, &buf, || {
        requests_whole(&mut scanner, black_box(&buf))
    });
    g.finish();
    Case {
        group: GROUP,
        frames: 1,
        theirs: &[DECODE, RANGE],
        chunked_vs_whole: CHUNKED_VS_WHOLE,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Replies

/// 48 pipelined small replies: `+OK`, `:1`, `$3 abc`, 16 times each, interleaved.
fn reply_pipeline(c: &mut Criterion) -> Case {
    const GROUP: &str = "reply_pipeline_48_small";
    let buf: Vec<u8> = b"+OK\r\n:1\r\n$3\r\nabc\r\n".repeat(16);
    assert_eq!(
        scan_replies(&mut ReplyScanner::new(Limits::default()), &buf),
        48
    );
    assert_eq!(
        count_frames(&buf, |b| decode(b).ok().flatten().map(|(_, n)| n)),
        48
    );

    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Elements(48));
    let mut scanner = ReplyScanner::new(Limits::default());
    g.bench_function(OURS, |b| {
        b.iter(|| scan_replies(&mut scanner, black_box(&buf)))
    });
    g.bench_function(DECODE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.bench_function(RANGE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.finish();
    Case {
        group: GROUP,
        frames: 48,
        theirs: &[DECODE, RANGE],
        chunked_vs_whole: &[],
    }
}

/// One large nested array reply, complete in the buffer (the reply of `XRANGE` over 10,000 entries).
fn reply_nested(c: &mut Criterion) -> Case {
    const GROUP: &str = "reply_nested_array_whole";
    let buf = nested_reply();
    assert_eq!(
        scan_replies(&mut ReplyScanner::new(Limits::default()), &buf),
        1
    );

    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    // Milliseconds per iteration: 20 samples keep the default run short.
    g.sample_size(20);
    let mut scanner = ReplyScanner::new(Limits::default());
    g.bench_function(OURS, |b| {
        b.iter(|| scan_replies(&mut scanner, black_box(&buf)))
    });
    g.bench_function(DECODE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.bench_function(RANGE, |b| {
        b.iter(|| {
            count_frames(black_box(&buf), |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.finish();
    Case {
        group: GROUP,
        frames: 1,
        theirs: &[DECODE, RANGE],
        chunked_vs_whole: &[],
    }
}

/// The same nested reply arriving in 64 KiB reads.
fn reply_nested_chunked(c: &mut Criterion) -> Case {
    const GROUP: &str = "reply_nested_array_in_64k_chunks";
    let buf = nested_reply();
    let cuts = cuts(buf.len());
    assert_eq!(
        replies_chunked(&mut ReplyScanner::new(Limits::default()), &buf, &cuts),
        buf.len()
    );
    assert_eq!(
        chunked(&buf, &cuts, |b| decode(b).ok().flatten().map(|(_, n)| n)),
        buf.len()
    );

    let mut g = c.benchmark_group(GROUP);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    // Milliseconds per iteration: 20 samples keep the default run short.
    g.sample_size(20);
    let mut scanner = ReplyScanner::new(Limits::default());
    g.bench_function(OURS, |b| {
        b.iter(|| replies_chunked(&mut scanner, black_box(&buf), &cuts))
    });
    g.bench_function(DECODE, |b| {
        b.iter(|| {
            chunked(black_box(&buf), &cuts, |b| {
                decode(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    g.bench_function(RANGE, |b| {
        b.iter(|| {
            chunked(black_box(&buf), &cuts, |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
    whole_variants(&mut g, &buf, || scan_replies(&mut scanner, black_box(&buf)));
    g.finish();
    Case {
        group: GROUP,
        frames: 1,
        theirs: &[DECODE, RANGE],
        chunked_vs_whole: CHUNKED_VS_WHOLE,
    }
}

/// `*10000` entries of `[id, [field, value, field, value]]`, about 740 KB.
fn nested_reply() -> Vec<u8> {
    let mut buf = b"*10000\r\n".to_vec();
    for i in 0..10_000 {
        buf.extend_from_slice(b"*2\r\n");
        buf.extend_from_slice(&bulk(format!("1700000000000-{i:02}").as_bytes()));
        buf.extend_from_slice(b"*4\r\n");
        for part in [&b"field"[..], b"value", b"other", b"12345"] {
            buf.extend_from_slice(&bulk(part));
        }
    }
    buf
}

// ---------------------------------------------------------------------------------------------------------
// Drivers

/// Each parser given the complete frame at once: the baseline of its chunked cost.
fn whole_variants<R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    buf: &[u8],
    mut ours: impl FnMut() -> R,
) {
    g.bench_function(OURS_WHOLE, |b| b.iter(&mut ours));
    g.bench_function(DECODE_WHOLE, |b| {
        b.iter(|| count_frames(black_box(buf), |b| decode(b).ok().flatten().map(|(_, n)| n)))
    });
    g.bench_function(RANGE_WHOLE, |b| {
        b.iter(|| {
            count_frames(black_box(buf), |b| {
                decode_range(b).ok().flatten().map(|(_, n)| n)
            })
        })
    });
}

/// Scans the one request `buf` holds; returns its length.
fn requests_whole(s: &mut RequestScanner, buf: &[u8]) -> usize {
    match s.scan(buf) {
        Ok(Some(req)) => req.len,
        _ => panic!("buf holds one complete request"),
    }
}

/// Scans every reply in `buf`; returns how many.
fn scan_replies(s: &mut ReplyScanner, buf: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while let Ok(Some(reply)) = s.scan(&buf[at..]) {
        at += reply.len;
        n += 1;
    }
    assert_eq!(at, buf.len(), "every reply scanned");
    n
}

/// Counts the frames `parse` finds in `buf`; `parse` returns the length of the first frame.
fn count_frames(buf: &[u8], parse: impl Fn(&[u8]) -> Option<usize>) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while let Some(len) = parse(&buf[at..]) {
        at += len;
        n += 1;
    }
    assert_eq!(at, buf.len(), "every frame parsed");
    n
}

/// Prefix lengths a socket delivering `len` bytes in [`CHUNK`] reads would produce.
fn cuts(len: usize) -> Vec<usize> {
    (1..=len.div_ceil(CHUNK))
        .map(|i| (i * CHUNK).min(len))
        .collect()
}

/// Feeds one request to a resumable scanner in growing prefixes; returns its length.
fn requests_chunked(s: &mut RequestScanner, buf: &[u8], cuts: &[usize]) -> usize {
    for &cut in cuts {
        if let Ok(Some(req)) = s.scan(&buf[..cut]) {
            return req.len;
        }
    }
    panic!("request incomplete after the last chunk")
}

/// Feeds one reply to a resumable scanner in growing prefixes; returns its length.
fn replies_chunked(s: &mut ReplyScanner, buf: &[u8], cuts: &[usize]) -> usize {
    for &cut in cuts {
        if let Ok(Some(reply)) = s.scan(&buf[..cut]) {
            return reply.len;
        }
    }
    panic!("reply incomplete after the last chunk")
}

/// Feeds one frame to a parser that starts over each time, in growing prefixes; returns its length.
fn chunked(buf: &[u8], cuts: &[usize], parse: impl Fn(&[u8]) -> Option<usize>) -> usize {
    for &cut in cuts {
        if let Some(len) = parse(&buf[..cut]) {
            return len;
        }
    }
    panic!("frame incomplete after the last chunk")
}

fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(&bulk(a));
    }
    out
}

fn bulk(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------------------
// Ratio table

/// Prints, per case, the time of each redis-protocol function divided by ours, from the median estimates
/// criterion saved in this run (older estimates, from a filtered-out case, are skipped).
fn print_ratios(cases: &[Case], started: SystemTime) {
    let dir = criterion_dir();
    let median_ns = |group: &str, function: &str| -> Option<f64> {
        let path = dir
            .join(filename_safe(group))
            .join(filename_safe(function))
            .join("new")
            .join("estimates.json");
        let fresh = std::fs::metadata(&path).and_then(|m| m.modified()).ok()? >= started;
        if !fresh {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    let mut lines = Vec::new();
    for case in cases {
        let Some(ours) = median_ns(case.group, OURS) else {
            continue;
        };
        for theirs in case.theirs {
            let Some(t) = median_ns(case.group, theirs) else {
                continue;
            };
            lines.push(format!(
                "{:<34} {:<34} {:>12} {:>12} {:>8.1}x",
                case.group,
                theirs,
                per_frame(ours, case.frames),
                per_frame(t, case.frames),
                t / ours
            ));
        }
    }
    let mut reparse = Vec::new();
    for case in cases {
        for (chunked, whole) in case.chunked_vs_whole {
            let (Some(c), Some(w)) = (median_ns(case.group, chunked), median_ns(case.group, whole))
            else {
                continue;
            };
            reparse.push(format!(
                "{:<34} {:<34} {:>12} {:>12} {:>8.1}x",
                case.group,
                chunked,
                per_frame(c, case.frames),
                per_frame(w, case.frames),
                c / w
            ));
        }
    }
    if !lines.is_empty() {
        println!();
        println!(
            "redis-protocol / redsplit, median time per frame (ratio > 1: redsplit is faster)"
        );
        println!(
            "{:<34} {:<34} {:>12} {:>12} {:>9}",
            "case", "against", "redsplit", "them", "ratio"
        );
        for l in lines {
            println!("{l}");
        }
    }
    if !reparse.is_empty() {
        println!();
        println!(
            "chunked / whole, same parser: the cost of being fed 64 KiB at a time (1.0x: none)"
        );
        println!(
            "{:<34} {:<34} {:>12} {:>12} {:>9}",
            "case", "parser", "chunked", "whole", "ratio"
        );
        for l in reparse {
            println!("{l}");
        }
    }
}

/// The directory name criterion gives a group or function name (its private `make_filename_safe`).
fn filename_safe(name: &str) -> String {
    name.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_")
}

fn per_frame(ns: f64, frames: u64) -> String {
    let ns = ns / frames as f64;
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Where criterion saves its estimates, found the way criterion 0.7 finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target directory `cargo metadata` names, else `target/criterion`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let from_metadata = std::env::var_os("CARGO").and_then(|cargo| {
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json["target_directory"].as_str().map(PathBuf::from)
    });
    from_metadata.map_or_else(
        || PathBuf::from("target/criterion"),
        |t| t.join("criterion"),
    )
}
