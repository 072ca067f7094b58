//! The plain-HTTP side port: `/metrics`, `/healthz` (the process is up) and `/readyz` (serving:
//! not draining and the database answers).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What readiness depends on.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    db_ok: Arc<AtomicBool>,
}

impl Readiness {
    /// Not draining, database not yet checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the server as draining; it never becomes ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Records the latest database check.
    pub fn set_db_ok(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::SeqCst);
    }

    /// `true` while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready to take traffic.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.db_ok.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The side-port router.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, readiness })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::encode(&state.registry),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if state.readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
    }
}

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
}
