//! Per-command cost of classification: `command::classify` and `command::may_modify` against the built-in
//! table, and the request path that feeds them (scan a pipelined buffer, classify each request).
//!
//! Run with `cargo bench --bench classify` (`-- --quick` for a short run, `-- may_modify` to filter).
//! Compare cases with each other, not with a number from another day: the machines are shared and noisy,
//! so ratios between cases hold and absolute times do not.
//!
//! Groups:
//! - `classify`, `may_modify`: one call per iteration, per command of a realistic mix (plain reads and
//!   writes, a 10-key `MGET`, scripts, a `CLIENT` subcommand, `XREAD` with and without `BLOCK`, an unknown
//!   command, lower-case names). Arguments are plain slices, so only the function itself is measured.
//! - `request_path_64`: 64 pipelined requests (the mix, repeated) in one buffer, scanned with
//!   `RequestScanner` and classified with the scanner's kept arguments, as a session does. `scan only` is
//!   the same loop without classifying, so the difference is what classification adds per request.
//! - `reference`: one `to_ascii_uppercase()` of a short subcommand name, the `Vec` that `classify` builds
//!   for each subcommand it matches (`CLIENT ...`, `SCRIPT ...`), to weigh that allocation.
//!
//! Before criterion runs, a short table prints the heap allocations each case makes per call (counted by
//! the global allocator of this binary, which adds one relaxed atomic add per allocation).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use redsplit::command::{self, Class, Table};
use redsplit::resp::{Limits, RequestScanner};

/// The mix: a case name and the command's arguments.
const MIX: &[(&str, &[&str])] = &[
    ("GET", &["GET", "user:1000"]),
    ("SET", &["SET", "user:1000", "value"]),
    (
        "MGET 10 keys",
        &[
            "MGET", "k:0", "k:1", "k:2", "k:3", "k:4", "k:5", "k:6", "k:7", "k:8", "k:9",
        ],
    ),
    (
        "EVAL",
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"],
    ),
    (
        "EVAL_RO",
        &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k"],
    ),
    ("CLIENT SETNAME", &["CLIENT", "SETNAME", "worker-7"]),
    ("XREAD", &["XREAD", "COUNT", "10", "STREAMS", "s", "0"]),
    (
        "XREAD BLOCK",
        &["XREAD", "COUNT", "10", "BLOCK", "5000", "STREAMS", "s", "$"],
    ),
    ("unknown", &["FOO.BAR", "x"]),
    ("get (lower case)", &["get", "user:1000"]),
    (
        "client setname (lower case)",
        &["client", "setname", "worker-7"],
    ),
];

/// Requests in the pipelined buffer of `request_path_64`.
const PIPELINE: usize = 64;

fn main() {
    count_allocations();
    // Each call takes nanoseconds: short runs still gather plenty of iterations. Flags override these.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let table = Table::builtin();
    classify_each(&mut c, &table);
    may_modify_each(&mut c, &table);
    request_path(&mut c, &table);
    reference(&mut c);
    c.final_summary();
}

/// `classify` once per iteration, for each command of [`MIX`].
fn classify_each(c: &mut Criterion, table: &Table) {
    let mut g = c.benchmark_group("classify");
    for (name, args) in MIX {
        let args = bytes(args);
        g.bench_function(*name, |b| {
            b.iter(|| {
                let args = black_box(&args);
                command::classify(table, args.len(), |i| args.get(i).copied())
            })
        });
    }
    g.finish();
}

/// `may_modify` once per iteration, for each command of [`MIX`].
fn may_modify_each(c: &mut Criterion, table: &Table) {
    let mut g = c.benchmark_group("may_modify");
    for (name, args) in MIX {
        let args = bytes(args);
        g.bench_function(*name, |b| {
            b.iter(|| {
                let args = black_box(&args);
                command::may_modify(table, args.len(), |i| args.get(i).copied())
            })
        });
    }
    g.finish();
}

/// [`PIPELINE`] requests of the mix in one buffer: scanned, then scanned and classified.
fn request_path(c: &mut Criterion, table: &Table) {
    let buf: Vec<u8> = MIX
        .iter()
        .cycle()
        .take(PIPELINE)
        .flat_map(|(_, args)| multibulk(args))
        .collect();
    let mut scanner = RequestScanner::new(Limits::default());
    let (requests, reads) = scan_and_classify(&mut scanner, table, &buf);
    assert_eq!(requests, PIPELINE as u64);
    assert!(
        reads > 0 && reads < requests,
        "the mix holds reads and others"
    );

    let mut g = c.benchmark_group(format!("request_path_{PIPELINE}"));
    g.throughput(Throughput::Elements(PIPELINE as u64));
    g.bench_function("scan only", |b| {
        b.iter(|| common::scan_requests(&mut scanner, black_box(&buf)))
    });
    g.bench_function("scan + classify", |b| {
        b.iter(|| scan_and_classify(&mut scanner, table, black_box(&buf)))
    });
    g.finish();
}

/// What one subcommand costs `classify` beyond a lookup: an upper-case copy on the heap.
fn reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    g.bench_function("subcommand to_ascii_uppercase (Vec)", |b| {
        b.iter(|| black_box(&b"setname"[..]).to_ascii_uppercase())
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------------------
// Drivers

/// Scans and classifies every request in `buf`, as `client::dispatch` does; returns how many requests,
/// and how many of them may go to a replica.
fn scan_and_classify(s: &mut RequestScanner, table: &Table, buf: &[u8]) -> (u64, u64) {
    let mut at = 0;
    let mut n = 0;
    let mut reads = 0;
    while let Ok(Some(req)) = s.scan(&buf[at..]) {
        let src = &buf[at..];
        let scanner = &*s;
        let (class, _) = command::classify(table, req.argc, |i| scanner.arg(&req, src, i));
        reads += u64::from(class == Class::Read);
        at += req.len;
        n += 1;
    }
    assert_eq!(at, buf.len(), "every request scanned");
    (n, reads)
}

fn bytes<'a>(args: &[&'a str]) -> Vec<&'a [u8]> {
    args.iter().map(|a| a.as_bytes()).collect()
}

fn multibulk(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Allocation count

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc` or `realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Prints the heap allocations one call of `classify` and of `may_modify` makes, per case.
fn count_allocations() {
    let table = Table::builtin();
    println!("heap allocations per call");
    println!("{:<30} {:>9} {:>11}", "case", "classify", "may_modify");
    for (name, args) in MIX {
        let args = bytes(args);
        let arg = |i: usize| args.get(i).copied();
        let classify = allocations_per_call(|| command::classify(&table, args.len(), arg));
        let may_modify = allocations_per_call(|| command::may_modify(&table, args.len(), arg));
        println!("{name:<30} {classify:>9} {may_modify:>11}");
    }
    println!();
}

/// Heap allocations per call of `f`, averaged over 1000 calls.
fn allocations_per_call<R>(f: impl Fn() -> R) -> f64 {
    const CALLS: u64 = 1000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..CALLS {
        black_box(f());
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / CALLS as f64
}
