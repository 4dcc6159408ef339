//! Downstream side: accept clients and run one session per connection.

mod dispatch;
mod pinned;
pub mod reply;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{warn, Instrument};

use crate::command::SharedTable;
use crate::config::{Config, Consistency, Fallback};
use crate::resp::Limits;
use crate::topology::Topo;

/// Everything sessions share.
#[derive(Debug)]
pub struct Context {
    /// The live topology.
    pub topo: Arc<Topo>,
    /// The live command table.
    pub table: SharedTable,
    /// Read consistency.
    pub consistency: Consistency,
    /// No-replica behaviour.
    pub fallback: Fallback,
    /// Request scanner limits.
    pub limits: Limits,
    /// Per-client limit on bytes received and not yet forwarded.
    pub max_request_bytes: usize,
    /// Per-client limit on commands awaiting replies.
    pub max_inflight: usize,
    /// How long a write waits for a primary.
    pub write_hold: Duration,
    /// How long a read may take on one node before a retry elsewhere.
    pub read_timeout: Duration,
    /// Per-client limit on reply bytes waiting to be written.
    pub max_output: Option<usize>,
    /// Idle client timeout.
    pub idle_timeout: Option<Duration>,
    /// Most client connections.
    pub max_clients: usize,
    /// Client connections open now (across workers).
    pub clients: std::sync::atomic::AtomicUsize,
    /// Proxy-side client authentication, if configured.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    next_id: AtomicU64,
}

impl Context {
    /// A context; session ids start at 1.
    pub fn new(
        topo: Arc<Topo>,
        table: SharedTable,
        config: &Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Context> {
        Arc::new(Context {
            topo,
            table,
            consistency: config.consistency,
            fallback: config.fallback,
            limits: config.limits,
            max_request_bytes: config.max_request_bytes,
            max_inflight: config.max_client_inflight,
            write_hold: config.write_hold,
            read_timeout: config.read_timeout,
            max_output: config.max_client_output_bytes,
            idle_timeout: config.client_idle_timeout,
            max_clients: config.max_clients,
            clients: std::sync::atomic::AtomicUsize::new(0),
            auth: crate::auth::Auth::new(config.requirepass.clone(), config.users.clone()),
            metrics,
            next_id: AtomicU64::new(1),
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts clients until `cancel` fires. Each session runs on `tracker`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            // Shutdown: stop accepting; sessions finish on their own.
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    // Past the limit a client gets Redis's own error and is closed.
                    if ctx.clients.load(Ordering::Relaxed) >= ctx.max_clients {
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        });
                        ctx.metrics.rejected_clients.inc();
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let id = ctx.next_id();
                    let span = tracing::debug_span!("client", id, peer = %peer);
                    tracker.spawn(session::run(stream, peer, id, ctx.clone(), cancel.clone()).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}
