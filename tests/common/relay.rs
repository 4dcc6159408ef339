//! A TCP relay on loopback that holds every byte for a fixed delay in both directions (a replica
//! replicating through it lags by that much, as across a slow link), or passes the server's bytes at
//! a limited rate (a thin link, a node streaming slowly).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running relay; stops when dropped.
pub struct Relay {
    /// Where to connect to reach the upstream through the relay.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays to `upstream`, holding bytes for `delay` each way.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Relay {
        Relay::shaped(upstream, delay, None).await
    }

    /// Relays to `upstream`, passing what it sends at `bytes_per_second` at most.
    pub async fn throttled(upstream: SocketAddr, bytes_per_second: u64) -> Relay {
        Relay::shaped(upstream, Duration::ZERO, Some(bytes_per_second)).await
    }

    async fn shaped(upstream: SocketAddr, delay: Duration, rate: Option<u64>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, delay, None));
                tokio::spawn(pump(ur, dw, delay, rate));
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it arrived, and no sooner than `rate`
/// (bytes per second) allows after the chunks before it.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin + Send + 'static,
    delay: Duration,
    rate: Option<u64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            // The delay is the point of the relay, not a wait for some condition.
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    // Throttled, chunks are small so the bytes flow evenly.
    let mut buf = vec![0u8; if rate.is_some() { 8 * 1024 } else { 64 * 1024 }];
    let mut free_at = Instant::now();
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut due = Instant::now() + delay;
                if let Some(rate) = rate {
                    free_at = free_at.max(Instant::now())
                        + Duration::from_secs_f64(n as f64 / rate as f64);
                    due = due.max(free_at);
                }
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
