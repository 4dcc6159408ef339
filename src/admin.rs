//! Admin HTTP server: liveness now; readiness, metrics and the topology view build on it.

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Serves the admin endpoints until `cancel` fires.
pub async fn serve(listener: TcpListener, cancel: CancellationToken) {
    let app = Router::new().route("/live", get(|| async { "ok\n" }));
    let shutdown = async move { cancel.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "admin server failed");
    }
}
