//! Keeps `grpc.health.v1` and `/readyz` in step with the database and the drain state.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::http::Readiness;

/// Sets `services` (and the overall `""` entry) to `status`.
pub async fn set_all(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in services {
        reporter.set_service_status(*s, status).await;
    }
}

/// Every `interval`, runs `probe` (a cheap database query) and publishes the result, until
/// `stop`. Once draining, the status stays NOT_SERVING.
pub async fn probe_loop<P, Fut>(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    readiness: Readiness,
    interval: Duration,
    stop: CancellationToken,
    probe: P,
) where
    P: Fn() -> Fut + Send,
    Fut: Future<Output = bool> + Send,
{
    let mut last = None;
    loop {
        let ok =
            tokio::time::timeout(interval.max(Duration::from_millis(100)), probe()).await.unwrap_or(false);
        readiness.set_db_ok(ok);
        let serving = ok && !readiness.is_draining();
        if last != Some(serving) {
            if !serving && !readiness.is_draining() {
                tracing::warn!("database unreachable: health NOT_SERVING");
            }
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_all(&reporter, &services, status).await;
            last = Some(serving);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
