//! MONITOR at the proxy: every command every client of this proxy sends, in Redis's line format
//! (`+<time> [<db> <addr>] "cmd" "arg"`), followed by where the proxy sent it (`(replica 10.0.0.2:6379)`,
//! `(primary 10.0.0.1:6379)`). The proxy's own probes never appear. As Redis does, administrative
//! commands are left out and `AUTH`/`HELLO` arguments are not shown.
//!
//! Sessions describe what they forward only while a monitor exists (one atomic load per batch
//! otherwise); lines reach monitors through the registry's broadcast feed.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use super::session::Session;
use crate::command::flag;
use crate::resp::value::{decode, Value};
use crate::upstream::Node;

/// The next line for this session's monitor; never resolves for a session that does not monitor.
pub(super) async fn next_line(feed: &mut Option<broadcast::Receiver<Bytes>>) -> Bytes {
    let Some(rx) = feed else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(line) => return line,
            // A monitor that does not keep up misses lines rather than holding the others back.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

impl Session {
    /// `MONITOR`: `+OK`, then the feed.
    pub(super) fn start_monitor(&mut self) -> Bytes {
        if self.monitor.is_none() {
            self.monitor = Some(self.ctx.registry.monitor());
        }
        Bytes::from_static(super::reply::OK)
    }

    /// Describes to the monitors the request frames in `bytes`, sent to `to` (node, as primary).
    pub(super) fn monitor_forwarded(&self, bytes: &[u8], to: Option<(&Arc<Node>, bool)>) {
        let target = match to {
            Some((node, true)) => format!(" (primary {})", node.addr),
            Some((node, false)) => format!(" (replica {})", node.addr),
            None => " (proxy)".to_string(),
        };
        let table = self.ctx.table.load();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (args, len) = match decode(rest) {
                Ok(Some((Value::Array(items), len))) => (
                    items
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::BulkString(b) | Value::SimpleString(b) => Some(b),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                    len,
                ),
                // An inline command: one line of words.
                _ => match memchr::memchr(b'\n', rest) {
                    Some(end) => (
                        rest[..end]
                            .split(|c| c.is_ascii_whitespace())
                            .filter(|w| !w.is_empty())
                            .map(<[u8]>::to_vec)
                            .collect(),
                        end + 1,
                    ),
                    None => return,
                },
            };
            rest = &rest[len..];
            let Some(name) = args.first() else {
                continue;
            };
            let admin = table.get(name).is_some_and(|i| i.flags.has(flag::ADMIN));
            if admin {
                continue;
            }
            let line = line(self.state.key.db, &self.peer.to_string(), &args, &target);
            self.ctx.registry.publish(line);
        }
    }
}

/// One MONITOR line: `+<seconds>.<micros> [<db> <addr>] "arg" ...<target>\r\n`, each argument quoted
/// as Redis quotes it.
fn line(db: u32, addr: &str, args: &[Vec<u8>], target: &str) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut s = format!(
        "+{}.{:06} [{db} {addr}]",
        now.as_secs(),
        now.subsec_micros()
    );
    let secret = args
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"AUTH") || n.eq_ignore_ascii_case(b"HELLO"));
    for (i, a) in args.iter().enumerate() {
        s.push(' ');
        if secret && i > 0 {
            s.push_str("\"(redacted)\"");
        } else {
            quote(&mut s, a);
        }
    }
    s.push_str(target);
    s.push_str("\r\n");
    Bytes::from(s)
}

/// Redis's `sdscatrepr`: in double quotes, with `\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b` and `\xHH` for
/// anything else unprintable.
fn quote(s: &mut String, a: &[u8]) {
    s.push('"');
    for &c in a {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            7 => s.push_str("\\a"),
            8 => s.push_str("\\b"),
            c if c.is_ascii_graphic() || c == b' ' => s.push(c as char),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_quotes_its_arguments_as_redis_does_and_names_the_node() {
        let args = vec![b"SET".to_vec(), b"k".to_vec(), b"a \"b\"\n\x01".to_vec()];
        let l = line(3, "127.0.0.1:5000", &args, " (primary 127.0.0.1:6379)");
        let text = String::from_utf8_lossy(&l);
        assert!(text.starts_with('+'), "{text}");
        assert!(
            text.ends_with(
                " [3 127.0.0.1:5000] \"SET\" \"k\" \"a \\\"b\\\"\\n\\x01\" (primary 127.0.0.1:6379)\r\n"
            ),
            "{text}"
        );
        let auth = line(0, "a:1", &[b"AUTH".to_vec(), b"pw".to_vec()], "");
        assert!(!String::from_utf8_lossy(&auth).contains("pw"));
    }
}
