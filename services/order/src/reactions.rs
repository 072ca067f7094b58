//! order-service's event consumer: applies inventory's answers to orders of the asynchronous
//! saga (durable consumer `order-service` on the inventory stream).
//!
//! | event | order | written with it (same transaction) |
//! |---|---|---|
//! | `StockReserved` | PENDING → CONFIRMED | `OrderConfirmed` |
//! | `StockRejected` | PENDING → COMPENSATING (shown PENDING), reason recorded | `StockReleaseRequested` (every line) |
//! | `StockReleased` (failing) | COMPENSATING → FAILED | `OrderFailed` |
//! | `StockReleased` (cancelling) | CANCELLING → CANCELLED | `OrderCancelled` |
//!
//! Every change is a conditional update on the order's status, so a duplicate, a redelivery
//! or a late event (a `StockReserved` after the order already failed) changes nothing and is
//! acknowledged as ignored. The first answer about an order decides it: when two deliveries
//! of one `OrderPlaced` raced and got different answers, the order follows the first, and a
//! failing order's release covers every line, so the books stay exact either way.

use std::sync::Arc;

use ferry_events::{Handler, Verdict};
use ferry_proto::events::v1::{EventEnvelope, ReleaseCause, StockReleased, event_envelope::Event};

use crate::{
    api::OrderMetrics,
    events::{self, EventLog},
    store::{Order, OrderStatus, OrderStore, Outgoing, Saga, StoreError},
};

/// The durable consumer's name (shared by every order replica).
pub const CONSUMER: &str = "order-service";

/// See the module docs.
pub struct Reactions {
    store: Arc<dyn OrderStore>,
    events: EventLog,
    metrics: Arc<OrderMetrics>,
}

impl Reactions {
    /// Applies answers to `store`, writing events through `events`.
    pub fn new(store: Arc<dyn OrderStore>, events: EventLog, metrics: Arc<OrderMetrics>) -> Self {
        Self { store, events, metrics }
    }

    /// Moves `order` from `from` to `to` with the event `build` makes.
    async fn advance(
        &self,
        order: &Order,
        from: OrderStatus,
        to: OrderStatus,
        reason: &str,
        build: impl FnOnce(&Order) -> Outgoing,
    ) -> Result<bool, StoreError> {
        if order.saga != Saga::Async || order.status != from {
            return Ok(false);
        }
        let event = build(order);
        let moved = self.store.advance_async(&order.order_id, from, to, reason, Some(&event)).await?;
        if moved.is_some() {
            self.events.committed(&order.order_id, true);
        }
        Ok(moved.is_some())
    }

    async fn apply(&self, order: &Order, event: &Event) -> Result<Verdict, StoreError> {
        use OrderStatus::{Cancelled, Cancelling, Compensating, Confirmed, Failed, Pending};
        let id = order.order_id.as_str();
        let moved = match event {
            Event::StockReserved(_) => {
                let moved = self.advance(order, Pending, Confirmed, "", |_| events::confirmed(id)).await?;
                if moved {
                    self.metrics.confirmed.inc();
                }
                moved
            }
            Event::StockRejected(rejected) => {
                let reason = if rejected.reason.is_empty() {
                    format!("inventory refused sku `{}`", rejected.sku)
                } else {
                    rejected.reason.clone()
                };
                let moved = self
                    .advance(order, Pending, Compensating, &reason, |o| {
                        events::release_requested(o, ReleaseCause::OrderFailing)
                    })
                    .await?;
                if moved {
                    tracing::info!(order_id = id, %reason, "order fails; every line is to be given back");
                }
                moved
            }
            Event::StockReleased(StockReleased { cause }) => match ReleaseCause::try_from(*cause) {
                Ok(ReleaseCause::OrderFailing) => {
                    let reason = order.failure_reason.clone();
                    let moved = self
                        .advance(order, Compensating, Failed, "", |_| events::failed(id, &reason))
                        .await?;
                    if moved {
                        self.metrics.failed.inc();
                    }
                    moved
                }
                Ok(ReleaseCause::OrderCancelling) => {
                    let moved =
                        self.advance(order, Cancelling, Cancelled, "", |_| events::cancelled(id)).await?;
                    if moved {
                        self.metrics.cancelled.inc();
                    }
                    moved
                }
                _ => return Ok(Verdict::Failed(format!("StockReleased with an unknown cause {cause}"))),
            },
            _ => return Ok(Verdict::Ignored("not an answer to order-service")),
        };
        Ok(if moved { Verdict::Done } else { Verdict::Ignored("the order has moved on") })
    }
}

impl Handler for Reactions {
    async fn handle(&self, envelope: EventEnvelope) -> Verdict {
        let Some(event) = envelope.event.as_ref() else { return Verdict::Failed("no event".into()) };
        let order = match self.store.get(&envelope.order_id).await {
            Ok(Some(order)) => order,
            Ok(None) => return Verdict::Ignored("unknown order"),
            Err(err) => return verdict_of(err),
        };
        match self.apply(&order, event).await {
            Ok(verdict) => verdict,
            Err(err) => verdict_of(err),
        }
    }
}

/// A store error as a verdict: an outage is retried as long as it lasts; anything else counts
/// towards parking.
fn verdict_of(err: StoreError) -> Verdict {
    match err {
        StoreError::Unavailable(e) => Verdict::Retry(e),
        other => Verdict::Failed(other.to_string()),
    }
}
