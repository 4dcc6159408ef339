//! Control connections: one command at a time, decoded, with timeouts, reconnecting on failure. Used by
//! the prober, discovery and the sentinel client; never on the data path.

use std::sync::Arc;
use std::time::Duration;

use crate::resp::Value as OwnedFrame;

use super::{ConnKey, Dedicated, Node};
use crate::resp::encode_command;

/// A lazily (re)connected control connection to one node.
#[derive(Debug)]
pub struct Control {
    node: Arc<Node>,
    conn: Option<Dedicated>,
    timeout: Duration,
}

impl Control {
    /// A connection to `node`, opened on first use; each call may take up to one second.
    pub fn new(node: Arc<Node>) -> Control {
        Control {
            node,
            conn: None,
            timeout: Duration::from_secs(1),
        }
    }

    /// The same with another per-call timeout.
    pub fn with_timeout(node: Arc<Node>, timeout: Duration) -> Control {
        Control {
            node,
            conn: None,
            timeout,
        }
    }

    /// The node it talks to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// True if connected now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the connection (the next call reconnects).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Ensures a connection; true if one is open. One the node closed while it sat idle (`CLIENT KILL`,
    /// its `timeout`) is replaced first: that says nothing about the node, a fresh connection does.
    pub async fn connect(&mut self) -> bool {
        if self.conn.as_ref().is_some_and(|c| !c.is_alive()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let open = Dedicated::open(self.node.clone(), ConnKey::default());
            if let Ok(Ok(c)) = tokio::time::timeout(self.timeout, open).await {
                self.conn = Some(c);
            }
        }
        self.conn.is_some()
    }
}

/// Sends one command and decodes its reply. `None` on any failure, after which the connection is dropped.
///
/// A question that changes nothing ([`harmless`]) whose connection, open before, was closed under it
/// (`CLIENT KILL` of the proxy's connections) is asked once more on a fresh connection: a cut
/// connection is not a dead node, and only a node that fails a fresh connection counts as down.
pub async fn call(c: &mut Control, args: &[&[u8]]) -> Option<OwnedFrame> {
    // A connection already seen closed is replaced in `attempt`: that one is fresh.
    let reused = c.conn.as_ref().is_some_and(Dedicated::is_alive);
    match attempt(c, args).await {
        Ok(frame) => Some(frame),
        Err(Failure::Closed) if reused && harmless(args) => attempt(c, args).await.ok(),
        Err(_) => None,
    }
}

/// Why an attempt got no reply.
enum Failure {
    /// No connection could be opened, or no reply came in time.
    NoAnswer,
    /// The connection closed (or broke) before the reply.
    Closed,
}

/// One attempt of [`call`]; drops the connection on failure.
async fn attempt(c: &mut Control, args: &[&[u8]]) -> Result<OwnedFrame, Failure> {
    if !c.connect().await {
        return Err(Failure::NoAnswer);
    }
    let conn = c.conn.as_mut().ok_or(Failure::NoAnswer)?;
    let reply = match tokio::time::timeout(c.timeout, exchange(conn, args)).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(Failure::Closed),
        Err(_) => Err(Failure::NoAnswer),
    };
    if reply.is_err() {
        c.conn = None;
    }
    reply
}

/// True for the questions the prober, discovery and the sentinel client ask, which change nothing and
/// may be asked twice: `ROLE`, `INFO`, `PING`, `COMMAND`, and Sentinel's queries.
pub fn harmless(args: &[&[u8]]) -> bool {
    let is = |i: usize, names: &[&str]| {
        args.get(i)
            .is_some_and(|a| names.iter().any(|n| a.eq_ignore_ascii_case(n.as_bytes())))
    };
    is(0, &["ROLE", "INFO", "PING", "COMMAND"])
        || (is(0, &["SENTINEL"])
            && is(
                1,
                &[
                    "GET-MASTER-ADDR-BY-NAME",
                    "MASTER",
                    "MASTERS",
                    "REPLICAS",
                    "SLAVES",
                    "SENTINELS",
                ],
            ))
}

/// Sends one command on a connection and decodes its reply.
pub async fn exchange(conn: &mut Dedicated, args: &[&[u8]]) -> Option<OwnedFrame> {
    let mut out = Vec::new();
    encode_command(&mut out, args);
    let bytes = conn.exchange(&out).await.ok()?;
    crate::resp::value::decode_one(&bytes)
}

#[cfg(test)]
mod tests {
    use super::harmless;

    #[test]
    fn only_questions_that_change_nothing_are_asked_twice() {
        assert!(harmless(&[b"ROLE"]));
        assert!(harmless(&[b"info", b"replication"]));
        assert!(harmless(&[b"SENTINEL", b"get-master-addr-by-name", b"m"]));
        assert!(!harmless(&[b"SENTINEL", b"FAILOVER", b"m"]));
        assert!(!harmless(&[b"FAILOVER"]));
        assert!(!harmless(&[b"CLIENT", b"PAUSE", b"100", b"WRITE"]));
        assert!(!harmless(&[]));
    }
}
