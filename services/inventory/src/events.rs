//! inventory-service's event consumer (durable consumer `inventory-service` on the order
//! stream): reserves the stock of orders placed in the asynchronous saga and gives stock back
//! when order-service asks, answering each with an event.
//!
//! | consumes | does | answers |
//! |---|---|---|
//! | `OrderPlaced` (`reserve_stock`) | deducts each line with the key `<order_id>/<index>`, as the synchronous saga does | `StockReserved`, or `StockRejected` at the first line refused for a business reason |
//! | `StockReleaseRequested` | releases every line by its key (a line never deducted gets a tombstone) | `StockReleased` |
//!
//! **Idempotent without an outbox.** The consumed message stays unacknowledged until the
//! answer is published and acknowledged by JetStream. A crash or an outage in between
//! redelivers it; the deductions replay (same keys: nothing is taken twice), and the answer
//! goes out again under the same deterministic event id (`<order_id>/stock-reserved`, ...),
//! which JetStream de-duplicates. A deduction arriving after its line was released (a
//! redelivery overtaken by a failure's release) meets the tombstone and takes nothing.

use std::sync::Arc;

use ferry_events::{Broker, Handler, Verdict};
use ferry_proto::{
    domain::{DeductStock, ReleaseStock, event_lines},
    events::v1::{
        EventEnvelope, OrderLine, StockRejected, StockReleased, StockReserved, event_envelope::Event,
    },
    inventory::v1::{DeductStockRequest, ReleaseStockRequest},
};

use crate::{
    api::InventoryMetrics,
    store::{InventoryStore, StoreError},
};

/// The durable consumer's name (shared by every inventory replica).
pub const CONSUMER: &str = "inventory-service";

/// See the module docs.
pub struct StockEvents {
    store: Arc<dyn InventoryStore>,
    broker: Broker,
    metrics: Arc<InventoryMetrics>,
}

/// Why a line stopped the handling of an event.
enum LineStop {
    /// A business refusal: answer `StockRejected`.
    Refused(String),
    /// Try again later / park.
    Verdict(Verdict),
}

impl StockEvents {
    /// Handles events against `store`, answering through `broker`.
    pub fn new(store: Arc<dyn InventoryStore>, broker: Broker, metrics: Arc<InventoryMetrics>) -> Self {
        Self { store, broker, metrics }
    }

    async fn reserve(&self, order_id: &str, lines: Vec<OrderLine>) -> Verdict {
        let lines = match event_lines(lines) {
            Ok(lines) => lines,
            Err(err) => return Verdict::Failed(err.to_string()),
        };
        for (i, line) in lines.iter().enumerate() {
            let req = DeductStockRequest {
                request_id: format!("{order_id}/{i}"),
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
            };
            match self.deduct(req).await {
                Ok(()) => {}
                Err(LineStop::Refused(reason)) => {
                    let answer = Event::StockRejected(StockRejected {
                        line: u32::try_from(i).unwrap_or(u32::MAX),
                        sku: line.sku.to_string(),
                        reason,
                    });
                    return self.answer(order_id, "stock-rejected", answer).await;
                }
                Err(LineStop::Verdict(verdict)) => return verdict,
            }
        }
        self.answer(order_id, "stock-reserved", Event::StockReserved(StockReserved {})).await
    }

    async fn deduct(&self, req: DeductStockRequest) -> Result<(), LineStop> {
        let cmd =
            DeductStock::try_from(req).map_err(|e| LineStop::Verdict(Verdict::Failed(e.to_string())))?;
        match self.store.deduct(&cmd).await {
            Ok(d) => {
                self.metrics.deducted(&cmd, d);
                Ok(())
            }
            Err(err) => Err(match err {
                StoreError::Insufficient { .. } => {
                    self.metrics.rejected_for_stock.inc();
                    LineStop::Refused(err.to_string())
                }
                StoreError::NotFound(_) | StoreError::AlreadyReleased(_) | StoreError::RequestIdReused(_) => {
                    LineStop::Refused(err.to_string())
                }
                StoreError::Unavailable(e) => LineStop::Verdict(Verdict::Retry(e)),
                other => LineStop::Verdict(Verdict::Failed(other.to_string())),
            }),
        }
    }

    async fn release(&self, order_id: &str, lines: Vec<OrderLine>, cause: i32) -> Verdict {
        let lines = match event_lines(lines) {
            Ok(lines) => lines,
            Err(err) => return Verdict::Failed(err.to_string()),
        };
        for (i, line) in lines.iter().enumerate() {
            let req = ReleaseStockRequest {
                request_id: format!("{order_id}/{i}"),
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
            };
            let cmd = match ReleaseStock::try_from(req) {
                Ok(cmd) => cmd,
                Err(err) => return Verdict::Failed(err.to_string()),
            };
            match self.store.release(&cmd).await {
                Ok(r) if r.released => {
                    self.metrics.releases.inc();
                }
                Ok(_) => {}
                Err(StoreError::Unavailable(e)) => return Verdict::Retry(e),
                Err(err) => return Verdict::Failed(err.to_string()),
            }
        }
        let answer = Event::StockReleased(StockReleased { cause });
        self.answer(order_id, &format!("stock-released/{cause}"), answer).await
    }

    /// Publishes the answer under a deterministic event id, so a redelivered command's
    /// answer is de-duplicated; `Retry` while the broker is away.
    async fn answer(&self, order_id: &str, what: &str, event: Event) -> Verdict {
        let envelope = EventEnvelope {
            event_id: format!("{order_id}/{what}"),
            order_id: order_id.to_string(),
            occurred_at_ms: ferry_events::now_ms(),
            event: Some(event),
        };
        match self.broker.publish(&envelope).await {
            Ok(_) => Verdict::Done,
            Err(err) => Verdict::Retry(err.to_string()),
        }
    }
}

impl Handler for StockEvents {
    async fn handle(&self, envelope: EventEnvelope) -> Verdict {
        let EventEnvelope { order_id, event, .. } = envelope;
        match event {
            Some(Event::OrderPlaced(placed)) if placed.reserve_stock => {
                self.reserve(&order_id, placed.lines).await
            }
            Some(Event::OrderPlaced(_)) => Verdict::Ignored("the synchronous saga reserves this order"),
            Some(Event::StockReleaseRequested(req)) => self.release(&order_id, req.lines, req.cause).await,
            _ => Verdict::Ignored("not for inventory"),
        }
    }
}
