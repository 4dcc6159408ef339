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

    /// Ensures a connection; true if one is open.
    pub async fn connect(&mut self) -> bool {
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
pub async fn call(c: &mut Control, args: &[&[u8]]) -> Option<OwnedFrame> {
    if !c.connect().await {
        return None;
    }
    let conn = c.conn.as_mut()?;
    let reply = match tokio::time::timeout(c.timeout, exchange(conn, args)).await {
        Ok(Some(frame)) => Some(frame),
        _ => None,
    };
    if reply.is_none() {
        c.conn = None;
    }
    reply
}

/// Sends one command on a connection and decodes its reply.
pub async fn exchange(conn: &mut Dedicated, args: &[&[u8]]) -> Option<OwnedFrame> {
    let mut out = Vec::new();
    encode_command(&mut out, args);
    let bytes = conn.exchange(&out).await.ok()?;
    crate::resp::value::decode_one(&bytes)
}
