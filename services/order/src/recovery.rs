//! The recoverer: settles orders that nobody is working on any more, with no client retry.
//!
//! An order stays PENDING (or COMPENSATING) when its run was interrupted (inventory or the
//! database unreachable: the run gave its lease up and set a retry time) or when its replica
//! died mid-saga (its lease runs out). Every `recovery_interval` each replica claims up to
//! `recovery_batch` such orders whose retry time has come, in the database (replicas never
//! claim the same order), and runs their sagas with the same idempotency keys, so every
//! inventory call of an earlier run is replayed, not repeated. An order whose runs keep
//! being interrupted is retried less and less often (see [`crate::saga::retry_delay`]).
//!
//! Metrics: `orders_pending` (orders with saga work left, in the whole database) and
//! `orders_oldest_pending_age_seconds`, refreshed every pass, and `order_recoveries_total`.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    saga::Sagas,
    store::{Lease, OrderStore, Unsettled},
};

/// The recoverer's metrics.
#[derive(Debug, Clone, Default)]
pub struct RecoveryMetrics {
    /// `orders_pending`: orders with saga work left (PENDING or being compensated).
    pub pending: Gauge,
    /// `orders_oldest_pending_age_seconds`: age of the oldest of them (0 when there is none).
    pub oldest_age_seconds: Gauge<f64, AtomicU64>,
    /// `order_recoveries_total`: orders the recoverer claimed and ran.
    pub recoveries: Counter,
}

impl RecoveryMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "orders_pending",
            "Orders with saga work left (PENDING, including those being compensated), in the whole database",
            m.pending.clone(),
        );
        registry.register(
            "orders_oldest_pending_age_seconds",
            "Age of the oldest order with saga work left (0 when there is none)",
            m.oldest_age_seconds.clone(),
        );
        registry.register(
            "order_recoveries",
            "Unsettled orders the recoverer claimed and ran",
            m.recoveries.clone(),
        );
        m
    }

    fn show(&self, unsettled: Unsettled, now_ms: i64) {
        self.pending.set(i64::try_from(unsettled.count).unwrap_or(i64::MAX));
        let age_ms = unsettled.oldest_created_at_ms.map_or(0, |t| now_ms.saturating_sub(t).max(0));
        self.oldest_age_seconds.set(age_ms as f64 / 1000.0);
    }
}

/// Runs passes every `sagas.settings().recovery_interval` until `stop`.
pub async fn run(
    sagas: Sagas,
    store: Arc<dyn OrderStore>,
    metrics: Arc<RecoveryMetrics>,
    stop: CancellationToken,
) {
    let settings = sagas.settings();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.recovery_interval) => {}
        }
        match store.unsettled().await {
            Ok(unsettled) => metrics.show(unsettled, ferry_events::now_ms()),
            Err(err) => tracing::warn!(error = %err, "could not count unsettled orders"),
        }
        let lease = Lease::new_run(settings.lease);
        let claimed_at = Instant::now();
        let claimed = match store.claim_due(&lease, settings.recovery_batch).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "could not claim unsettled orders");
                continue;
            }
        };
        if claimed.is_empty() {
            continue;
        }
        tracing::info!(orders = claimed.len(), "resuming unsettled orders");
        metrics.recoveries.inc_by(claimed.len() as u64);
        tokio::select! {
            () = stop.cancelled() => return,
            () = sagas.recover(claimed, &lease, claimed_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauges_show_the_count_and_the_age_of_the_oldest() {
        let m = RecoveryMetrics::default();
        m.show(Unsettled { count: 3, oldest_created_at_ms: Some(10_000) }, 12_500);
        assert_eq!(m.pending.get(), 3);
        assert!((m.oldest_age_seconds.get() - 2.5).abs() < 1e-9);
        m.show(Unsettled::default(), 12_500);
        assert_eq!((m.pending.get(), m.oldest_age_seconds.get()), (0, 0.0));
    }
}
