//! The events order-service writes to its outbox, and what decides whether it writes them.
//!
//! Every state change of an order writes its event in the same database transaction
//! ([`crate::store::Outgoing`]) when events are on (`--nats-url` is set). The relay
//! ([`crate::relay`]) publishes them; the consumer ([`crate::reactions`]) applies inventory's
//! answers. Builders here are pure: an envelope with a fresh event id.

use std::sync::Arc;

use ferry_events::names::kind;
use ferry_proto::events::v1::{
    EventEnvelope, OrderCancelled, OrderConfirmed, OrderFailed, OrderPlaced, ReleaseCause,
    StockReleaseRequested, event_envelope::Event,
};
use prost::Message as _;
use tokio::sync::Notify;

use crate::{
    store::{Order, Outgoing},
    watch::Changes,
};

/// An outbox row for `event` about `order_id`, with a fresh event id.
pub fn outgoing(order_id: &str, event: Event) -> Outgoing {
    let envelope = EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        occurred_at_ms: ferry_events::now_ms(),
        event: Some(event),
    };
    let kind = envelope.event.as_ref().map_or("", kind);
    Outgoing { event_id: envelope.event_id.clone(), kind, payload: envelope.encode_to_vec() }
}

/// `OrderPlaced`; `reserve_stock` for the asynchronous saga.
pub fn placed(
    order_id: &str,
    customer_id: &str,
    lines: &[ferry_proto::domain::OrderLine],
    reserve_stock: bool,
) -> Outgoing {
    outgoing(
        order_id,
        Event::OrderPlaced(OrderPlaced {
            customer_id: customer_id.to_string(),
            lines: lines.iter().map(Into::into).collect(),
            reserve_stock,
        }),
    )
}

/// `OrderConfirmed`.
pub fn confirmed(order_id: &str) -> Outgoing {
    outgoing(order_id, Event::OrderConfirmed(OrderConfirmed {}))
}

/// `OrderFailed`.
pub fn failed(order_id: &str, reason: &str) -> Outgoing {
    outgoing(order_id, Event::OrderFailed(OrderFailed { reason: reason.to_string() }))
}

/// `OrderCancelled`.
pub fn cancelled(order_id: &str) -> Outgoing {
    outgoing(order_id, Event::OrderCancelled(OrderCancelled {}))
}

/// `StockReleaseRequested` for every line of `order`.
pub fn release_requested(order: &Order, cause: ReleaseCause) -> Outgoing {
    outgoing(
        &order.order_id,
        Event::StockReleaseRequested(StockReleaseRequested {
            lines: order.items.iter().map(Into::into).collect(),
            cause: cause.into(),
        }),
    )
}

/// Whether this replica writes events, and whom it tells after a change committed. Cheap
/// to clone.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    enabled: bool,
    relay: Arc<Notify>,
    changes: Changes,
}

impl EventLog {
    /// Events on (`enabled`) or off; `changes` wakes WatchOrder streams.
    pub fn new(enabled: bool, changes: Changes) -> Self {
        Self { enabled, relay: Arc::new(Notify::new()), changes }
    }

    /// `true` when state changes write events.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The event `build` makes, when events are on.
    pub fn event(&self, build: impl FnOnce() -> Outgoing) -> Option<Outgoing> {
        self.enabled.then(build)
    }

    /// After a state change of `order_id` committed: wakes the relay (when it wrote an event)
    /// and the order's watchers.
    pub fn committed(&self, order_id: &str, wrote_event: bool) {
        if wrote_event {
            self.relay.notify_one();
        }
        self.changes.changed(order_id);
    }

    /// What the relay waits on between passes.
    pub fn relay_signal(&self) -> Arc<Notify> {
        self.relay.clone()
    }

    /// The change announcements (for WatchOrder).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }
}
