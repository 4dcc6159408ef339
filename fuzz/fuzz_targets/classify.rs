//! Classifying whatever the request scanner accepts never panics. The whole input is a request stream.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use redsplit::command::{classify, Table};
use redsplit::resp::{Limits, RequestScanner};

static TABLE: LazyLock<Table> = LazyLock::new(Table::builtin);

fuzz_target!(|data: &[u8]| {
    let mut scanner = RequestScanner::new(Limits::default());
    let mut at = 0;
    while let Ok(Some(req)) = scanner.scan(&data[at..]) {
        let buf = &data[at..];
        let _ = classify(&TABLE, req.argc, |i| scanner.arg(&req, buf, i));
        at += req.len;
    }
});
