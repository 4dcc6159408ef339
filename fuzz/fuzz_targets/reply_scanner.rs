//! The reply scanner finds the same replies whether the input arrives whole or in two chunks, and never
//! panics. Input layout: see `redsplit_fuzz::split`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use redsplit_fuzz::{scan_replies, split};

fuzz_target!(|data: &[u8]| {
    let Some((limits, cut, stream)) = split(data) else {
        return;
    };
    let whole = scan_replies(limits, stream, &[]);
    let chunked = scan_replies(limits, stream, &[cut]);
    assert_eq!(whole, chunked, "cut at {cut}");
});
