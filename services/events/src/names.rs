//! Streams, subjects and durable consumer names, all derived from one prefix so that several
//! deployments (or tests) can share a broker without seeing each other's events.
//!
//! With the default prefix `ferry`:
//!
//! | stream | subjects | written by | read by (durable consumer) |
//! |---|---|---|---|
//! | `FERRY_ORDER_EVENTS` | `ferry.order.placed`, `.confirmed`, `.failed`, `.cancelled`, `.release_requested` | order-service's outbox relay | `inventory-service` (placed, release_requested) |
//! | `FERRY_INVENTORY_EVENTS` | `ferry.inventory.stock_reserved`, `.stock_rejected`, `.stock_released` | inventory-service | `order-service` |
//! | `FERRY_DEAD_LETTERS` | `ferry.dead.<consumer>` | any consumer, parking a poison message | people (and the tests) |

use ferry_proto::events::v1::event_envelope::Event;

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

/// A prefix that cannot name subjects and streams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid events prefix `{0}`: use 1 to 32 of [a-z0-9_-], starting with a letter")]
pub struct InvalidPrefix(pub String);

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "ferry";

impl Default for Names {
    fn default() -> Self {
        Self { prefix: DEFAULT_PREFIX.into() }
    }
}

impl Names {
    /// Names under `prefix` (a subject token and, upper-cased, a stream name prefix).
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let ok = (1..=32).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            return Err(InvalidPrefix(prefix.to_string()));
        }
        Ok(Self { prefix: prefix.to_string() })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.to_ascii_uppercase().replace('-', "_"))
    }

    /// The stream of order-service's events.
    pub fn order_stream(&self) -> String {
        self.stream("ORDER_EVENTS")
    }

    /// The stream of inventory-service's events.
    pub fn inventory_stream(&self) -> String {
        self.stream("INVENTORY_EVENTS")
    }

    /// The stream poison messages are parked in.
    pub fn dead_letter_stream(&self) -> String {
        self.stream("DEAD_LETTERS")
    }

    /// Every subject of the order stream.
    pub fn order_subjects(&self) -> String {
        format!("{}.order.>", self.prefix)
    }

    /// Every subject of the inventory stream.
    pub fn inventory_subjects(&self) -> String {
        format!("{}.inventory.>", self.prefix)
    }

    /// Every subject of the dead-letter stream.
    pub fn dead_letter_subjects(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// Where `consumer` parks its poison messages.
    pub fn dead_letter_subject(&self, consumer: &str) -> String {
        format!("{}.dead.{consumer}", self.prefix)
    }

    /// The subject `event` is published on.
    pub fn subject(&self, event: &Event) -> String {
        self.subject_of_kind(kind(event)).unwrap_or_default()
    }

    /// The subject of the event type named `kind` (see [`kind`]); `None` for a name this
    /// version does not know.
    pub fn subject_of_kind(&self, kind: &str) -> Option<String> {
        let (stream, name) = match kind {
            "OrderPlaced" => ("order", "placed"),
            "OrderConfirmed" => ("order", "confirmed"),
            "OrderFailed" => ("order", "failed"),
            "OrderCancelled" => ("order", "cancelled"),
            "StockReleaseRequested" => ("order", "release_requested"),
            "StockReserved" => ("inventory", "stock_reserved"),
            "StockRejected" => ("inventory", "stock_rejected"),
            "StockReleased" => ("inventory", "stock_released"),
            _ => return None,
        };
        Some(format!("{}.{stream}.{name}", self.prefix))
    }
}

/// The event's type name, for logs, metrics and the `Ferry-Event` header.
pub fn kind(event: &Event) -> &'static str {
    match event {
        Event::OrderPlaced(_) => "OrderPlaced",
        Event::OrderConfirmed(_) => "OrderConfirmed",
        Event::OrderFailed(_) => "OrderFailed",
        Event::OrderCancelled(_) => "OrderCancelled",
        Event::StockReleaseRequested(_) => "StockReleaseRequested",
        Event::StockReserved(_) => "StockReserved",
        Event::StockRejected(_) => "StockRejected",
        Event::StockReleased(_) => "StockReleased",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ferry_proto::events::v1::{OrderPlaced, StockReserved};

    use super::*;

    #[test]
    fn one_prefix_names_every_stream_and_subject() {
        let n = Names::new("t-1").unwrap();
        assert_eq!(n.order_stream(), "T_1_ORDER_EVENTS");
        assert_eq!(n.dead_letter_stream(), "T_1_DEAD_LETTERS");
        assert_eq!(n.subject(&Event::OrderPlaced(OrderPlaced::default())), "t-1.order.placed");
        assert_eq!(n.subject(&Event::StockReserved(StockReserved {})), "t-1.inventory.stock_reserved");
        assert_eq!(n.dead_letter_subject("inventory-service"), "t-1.dead.inventory-service");
        assert_eq!(Names::default().inventory_subjects(), "ferry.inventory.>");
    }

    #[test]
    fn prefixes_that_cannot_name_subjects_are_refused() {
        for bad in ["", "Ferry", "a.b", "a b", "1a", "a*", "a>", &"a".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
