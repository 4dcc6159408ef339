//! The request scanner finds the same requests whether the input arrives whole or in two chunks, and never
//! panics. Input layout: see `redsplit_fuzz::split`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use redsplit_fuzz::{scan_requests, split};

fuzz_target!(|data: &[u8]| {
    let Some((limits, cut, stream)) = split(data) else {
        return;
    };
    let whole = scan_requests(limits, stream, &[]);
    let chunked = scan_requests(limits, stream, &[cut]);
    assert_eq!(whole, chunked, "cut at {cut}");
});
