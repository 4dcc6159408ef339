//! A connection owned by one session at a time: transactions, blocking commands, pub/sub, MONITOR, tracking.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect, ConnKey, Error, Node, Stream};
use crate::resp::{ReplyFrame, ReplyScanner};

/// A greeted connection with its own read buffer. Reads are cancel-safe: a frame half received when a
/// `select!` drops [`Dedicated::next_frame`] is finished by the next call.
#[derive(Debug)]
pub struct Dedicated {
    stream: Stream,
    buf: BytesMut,
    scanner: ReplyScanner,
    /// The node it is connected to.
    pub node: Arc<Node>,
    /// The state it was greeted with.
    pub key: ConnKey,
    /// Its client id on the node, once asked (see [`Dedicated::learn_id`]).
    pub upstream_id: Option<u64>,
    clean: bool,
}

impl Dedicated {
    /// Connects and greets.
    pub async fn open(node: Arc<Node>, key: ConnKey) -> Result<Dedicated, Error> {
        let stream = connect(&node.addr, &key, node.settings()).await?;
        let scanner = ReplyScanner::new(node.settings().limits);
        Ok(Dedicated {
            stream,
            buf: BytesMut::with_capacity(4096),
            scanner,
            node,
            key,
            upstream_id: None,
            clean: true,
        })
    }

    /// Asks the node for this connection's client id (`CLIENT ID`), once: what `CLIENT TRACKING ...
    /// REDIRECT` of another connection must name. Left unknown if the node does not say.
    pub async fn learn_id(&mut self) {
        if self.upstream_id.is_some() {
            return;
        }
        if let Ok(reply) = self.exchange(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").await {
            self.upstream_id = crate::resp::value::decode_one(&reply)
                .and_then(|v| crate::resp::value::int(&v))
                .and_then(|n| u64::try_from(n).ok());
        }
    }

    /// Writes request bytes. On failure the connection is unusable and the bytes may have been received.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.clean = false;
        let lost = |_| Error::Lost {
            addr: self.node.addr.clone(),
        };
        self.stream.write_all(bytes).await.map_err(lost)?;
        // TLS keeps what the socket did not take until flushed (a no-op on plain TCP).
        self.stream.flush().await.map_err(lost)
    }

    /// The next reply or push frame.
    pub async fn next_frame(&mut self) -> Result<(Bytes, ReplyFrame), Error> {
        loop {
            match self.scanner.scan(&self.buf) {
                Ok(Some(f)) => return Ok((self.buf.split_to(f.len).freeze(), f)),
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Protocol {
                        addr: self.node.addr.clone(),
                        source,
                    })
                }
            }
            if self.buf.is_empty() && self.buf.capacity() > 256 * 1024 {
                // Let a large reply's allocation go with the reply.
                self.buf = BytesMut::with_capacity(16 * 1024);
            } else if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    return Err(Error::Lost {
                        addr: self.node.addr.clone(),
                    })
                }
                Ok(_) => {}
            }
        }
    }

    /// Sends one request and waits for its single reply (blocking commands).
    pub async fn exchange(&mut self, bytes: &[u8]) -> Result<Bytes, Error> {
        self.send(bytes).await?;
        loop {
            let (frame, info) = self.next_frame().await?;
            if !info.is_push() {
                return Ok(frame);
            }
        }
    }

    /// False if the node closed the connection while it sat idle (timeout, CLIENT KILL, restart), or sent
    /// something unasked (over TLS: any record, a close_notify included). Never blocks. Looks at the socket
    /// itself: a connection with bytes waiting is not reused, so consuming one does no harm.
    pub fn is_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.tcp().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Declares the connection back in its greeted state, fit for reuse by another session.
    pub fn mark_clean(&mut self) {
        self.clean = self.buf.is_empty();
    }

    /// True if the connection is in its greeted state.
    pub fn is_clean(&self) -> bool {
        self.clean
    }
}
