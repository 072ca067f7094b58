//! The outbox relay: publishes the events that state changes wrote to the outbox, in order,
//! with each event's id as JetStream's de-duplication id (`Nats-Msg-Id`), and stamps the rows
//! sent.
//!
//! - **In order.** A pass reads unsent rows in `seq` order and sends them one after another
//!   on one connection, which JetStream stores in that order, then waits for every
//!   acknowledgement. A pass never holds two events of one order (it stops before the
//!   second), so one order's events reach the stream in outbox order even when a publish
//!   fails; across orders, a row whose publish failed is stored after the rows that followed
//!   it in the pass. (On PostgreSQL a transaction that took a lower `seq` can commit after a
//!   higher one; the two are then about different orders, since one order's changes are
//!   serialised by its row, and the late row is published on the next pass.)
//! - **Restarts and outages.** Rows are stamped after JetStream acknowledged them, so a crash
//!   or an outage between the two publishes them again, and JetStream drops the copy (its
//!   de-duplication window is [`ferry_events::broker::DUPLICATE_WINDOW`]). While the broker is
//!   away the outbox grows and the relay retries with a growing pause (at most
//!   [`MAX_BACKOFF`]); when it is back the outbox drains.
//! - **Several replicas.** One replica relays at a time: it holds the relay lease in the
//!   database (renewed every pass, [`RELAY_LEASE`]); the others stand by and take over when
//!   it stops renewing. A replica that lost the lease while stalled may still publish a row
//!   the new holder publishes too: de-duplication by event id makes that harmless, and the
//!   consumers are idempotent besides.
//! - **Lag** is a metric: `order_outbox_unsent_rows` and `order_outbox_oldest_unsent_age_seconds`
//!   (the whole outbox, on every replica), refreshed every pass.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use ferry_events::Broker;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{OrderStore, OutboxLag, OutboxRow};

/// Rows read (and published) per pass.
pub const BATCH: u32 = 256;
/// Longest wait between passes when nothing wakes the relay (changes made by other replicas
/// are found this way).
pub const POLL: Duration = Duration::from_millis(100);
/// How long the relay lease lasts without renewal.
pub const RELAY_LEASE: Duration = Duration::from_secs(5);
/// Longest pause between attempts while the broker is away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Sent rows are deleted this long after they were sent.
pub const KEEP_SENT: Duration = Duration::from_secs(3600);

/// The relay's metrics.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// `order_outbox_unsent_rows`.
    pub unsent: Gauge,
    /// `order_outbox_oldest_unsent_age_seconds`.
    pub oldest_age_seconds: Gauge<f64, AtomicU64>,
    /// `order_outbox_published_total`.
    pub published: Counter,
    /// `order_outbox_publish_failures_total`.
    pub failures: Counter,
    /// `order_outbox_relay_active`: 1 while this replica holds the relay lease.
    pub active: Gauge,
}

impl RelayMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "order_outbox_unsent_rows",
            "Outbox rows not yet published (whole outbox)",
            m.unsent.clone(),
        );
        registry.register(
            "order_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet published (0 when there is none)",
            m.oldest_age_seconds.clone(),
        );
        registry.register(
            "order_outbox_published",
            "Outbox rows published and acknowledged",
            m.published.clone(),
        );
        registry.register(
            "order_outbox_publish_failures",
            "Publish attempts that failed (broker away); the rows are retried",
            m.failures.clone(),
        );
        registry.register(
            "order_outbox_relay_active",
            "1 while this replica relays the outbox",
            m.active.clone(),
        );
        m
    }

    fn show(&self, lag: OutboxLag, now_ms: i64) {
        self.unsent.set(i64::try_from(lag.rows).unwrap_or(i64::MAX));
        let age_ms = lag.oldest_created_at_ms.map_or(0, |t| now_ms.saturating_sub(t).max(0));
        self.oldest_age_seconds.set(age_ms as f64 / 1000.0);
    }
}

/// Relays until `stop`. `wake` is notified after a change wrote an event in this process.
pub async fn run(
    store: Arc<dyn OrderStore>,
    broker: Broker,
    metrics: Arc<RelayMetrics>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let owner = uuid::Uuid::new_v4().to_string();
    let mut backoff = Duration::ZERO;
    let mut last_prune = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        let pass = pass(&*store, &broker, &metrics, &owner).await;
        if let Ok(lag) = store.outbox_lag().await {
            metrics.show(lag, ferry_events::now_ms());
        }
        let pause = match pass {
            Pass::Drained | Pass::Standby => {
                backoff = Duration::ZERO;
                POLL
            }
            Pass::More => {
                backoff = Duration::ZERO;
                continue;
            }
            Pass::Outage => {
                backoff = (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
                backoff
            }
        };
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = tokio::time::Instant::now();
            match store.prune_sent(KEEP_SENT).await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned sent outbox rows"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "could not prune the outbox"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
            () = wake.notified(), if !matches!(pass, Pass::Outage) => {}
        }
    }
    // Hands the lease over at once (it runs out now) instead of after RELAY_LEASE.
    if let Err(err) = store.claim_relay(&owner, Duration::ZERO).await {
        tracing::debug!(error = %err, "could not give the relay lease up; it runs out on its own");
    }
    metrics.active.set(0);
}

/// How a pass ended.
enum Pass {
    /// Everything unsent was published.
    Drained,
    /// A full batch was published; there may be more.
    More,
    /// Another replica relays.
    Standby,
    /// The broker (or the database) is away.
    Outage,
}

async fn pass(store: &dyn OrderStore, broker: &Broker, metrics: &RelayMetrics, owner: &str) -> Pass {
    match store.claim_relay(owner, RELAY_LEASE).await {
        Ok(true) => {
            metrics.active.set(1);
        }
        Ok(false) => {
            metrics.active.set(0);
            return Pass::Standby;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot take the relay lease");
            return Pass::Outage;
        }
    }
    let rows = match store.unsent(BATCH).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the outbox");
            return Pass::Outage;
        }
    };
    let full = rows.len() == BATCH as usize;
    let window = one_per_order(&rows);
    let (sent, failed) = publish_window(broker, &rows[..window]).await;
    metrics.published.inc_by(sent.len() as u64);
    if let Err(err) = store.mark_sent(&sent).await {
        // Published but not stamped: they go again on the next pass, and JetStream drops the copies.
        tracing::warn!(error = %err, rows = sent.len(), "cannot stamp published rows");
        return Pass::Outage;
    }
    if let Some(err) = failed {
        metrics.failures.inc();
        tracing::warn!(error = %err, unsent = rows.len() - sent.len(), "cannot publish; the outbox keeps the rest");
        return Pass::Outage;
    }
    if full || window < rows.len() { Pass::More } else { Pass::Drained }
}

/// How many rows from the start hold no two events of one order: a pass publishes those at
/// once, so two events of one order are never in flight together, and one order's events
/// reach the stream in outbox order even when a publish fails.
fn one_per_order(rows: &[OutboxRow]) -> usize {
    let mut seen = std::collections::HashSet::new();
    rows.iter().position(|r| !seen.insert(r.order_id.as_str())).unwrap_or(rows.len())
}

/// Sends `rows` one after another on the connection (stored in that order), then waits for
/// every acknowledgement. Returns the seqs acknowledged and the first failure.
async fn publish_window(
    broker: &Broker,
    rows: &[OutboxRow],
) -> (Vec<i64>, Option<ferry_events::BrokerError>) {
    let mut acks = Vec::with_capacity(rows.len());
    let mut failed = None;
    for row in rows {
        let Some(subject) = broker.names().subject_of_kind(&row.kind) else {
            // A corrupt row: logged, stamped, published nowhere, so it cannot block the outbox.
            tracing::error!(seq = row.seq, kind = %row.kind, "outbox row of an unknown kind; skipped");
            acks.push((row.seq, None));
            continue;
        };
        match broker.send_encoded(&subject, &row.event_id, &row.kind, row.payload.clone().into()).await {
            Ok(ack) => acks.push((row.seq, Some(ack))),
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    // Waited for together: each acknowledgement's timeout runs from when it is awaited, so one
    // after the other a pass sent into an outage would wait that long once per row.
    let (seqs, acks): (Vec<i64>, Vec<_>) = acks.into_iter().unzip();
    let answers = futures::future::join_all(acks.into_iter().map(|ack| async move {
        match ack {
            None => Ok(false),
            Some(ack) => ack.await,
        }
    }))
    .await;
    let mut sent = Vec::with_capacity(seqs.len());
    for (seq, answer) in seqs.into_iter().zip(answers) {
        match answer {
            Ok(_) => sent.push(seq),
            Err(err) => {
                failed.get_or_insert(err);
            }
        }
    }
    (sent, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, order_id: &str) -> OutboxRow {
        OutboxRow {
            seq,
            event_id: seq.to_string(),
            order_id: order_id.into(),
            kind: "OrderPlaced".into(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn a_pass_stops_before_a_second_event_of_one_order() {
        assert_eq!(one_per_order(&[]), 0);
        assert_eq!(one_per_order(&[row(1, "a"), row(2, "b"), row(3, "c")]), 3);
        assert_eq!(one_per_order(&[row(1, "a"), row(2, "b"), row(3, "a"), row(4, "c")]), 2);
        assert_eq!(one_per_order(&[row(1, "a"), row(2, "a")]), 1);
    }
}
