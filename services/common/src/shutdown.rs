//! Graceful shutdown: SIGTERM (or SIGINT) → health NOT_SERVING → keep serving for the drain
//! period → stop accepting → give in-flight calls a bounded grace → return (exit 0).

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Timings of the drain sequence.
#[derive(Debug, Clone, Copy)]
pub struct DrainTimings {
    /// How long to keep serving with health NOT_SERVING.
    pub drain: Duration,
    /// How long in-flight calls get once the listener is closed.
    pub grace: Duration,
}

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight call finished.
    Drained,
    /// The grace period ran out with calls still in flight.
    GraceExpired,
}

/// Drives `serve` (a tonic server future that stops accepting when `stop` is cancelled) through
/// the drain sequence once `shutdown` is cancelled. `on_draining` runs first (flip health).
pub async fn drive<F, E>(
    serve: F,
    shutdown: CancellationToken,
    stop: CancellationToken,
    timings: DrainTimings,
    on_draining: impl FnOnce(),
) -> Result<Stopped, E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(serve);
    tokio::select! {
        res = &mut serve => return res.map(|()| Stopped::Drained),
        () = shutdown.cancelled() => {}
    }
    on_draining();
    tracing::info!(drain_ms = timings.drain.as_millis() as u64, "draining: health is NOT_SERVING");
    tokio::select! {
        res = &mut serve => return res.map(|()| Stopped::Drained),
        () = tokio::time::sleep(timings.drain) => {}
    }
    tracing::info!("closing the listener; waiting for in-flight calls");
    stop.cancel();
    match tokio::time::timeout(timings.grace, &mut serve).await {
        Ok(res) => res.map(|()| Stopped::Drained),
        Err(_) => {
            tracing::warn!(
                grace_ms = timings.grace.as_millis() as u64,
                "calls still in flight after the grace period"
            );
            Ok(Stopped::GraceExpired)
        }
    }
}
