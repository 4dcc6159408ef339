//! The request path never panics on whatever the request scanner accepts: classification, the read-only
//! user's check, HELLO's checks and the effect of each command on a session's dedicated connection (its
//! state: database, credentials, protocol, tracking, name), then the input read as EXEC's reply. The
//! whole input is a request stream.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use redsplit::command::Table;

static TABLE: LazyLock<Table> = LazyLock::new(Table::builtin);

fuzz_target!(|data: &[u8]| {
    let _ = redsplit::client::fuzz_session_decisions(&TABLE, data);
});
