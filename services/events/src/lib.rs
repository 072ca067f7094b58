//! The Ferry shop's event plumbing on NATS JetStream, shared by order-service and
//! inventory-service.
//!
//! - [`args`]: the broker flags both services take.
//! - [`names`]: the streams, subjects and consumers a deployment uses (one prefix names them
//!   all), and which subject each event goes to.
//! - [`broker`]: the connection, the streams (created if missing), and publishing with the
//!   event id as JetStream's de-duplication id (`Nats-Msg-Id`).
//! - [`consumer`]: a durable pull consumer with explicit acks that hands each decoded event
//!   to a handler, retries what may succeed later, and parks poison messages (undecodable,
//!   unknown, or failing every time) in a dead-letter stream after bounded retries.
//!
//! The payloads are `ferry.events.v1.EventEnvelope` messages (`ferry_proto::events::v1`).

pub mod args;
pub mod broker;
pub mod consumer;
pub mod names;

pub use broker::{Broker, BrokerError};
pub use consumer::{ConsumerMetrics, ConsumerSpec, Handler, Verdict};
pub use names::Names;

use std::time::Duration;

/// How a service reaches the broker and handles what it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub nats_url: String,
    /// Names the streams, subjects and consumers (see [`Names`]).
    pub names: Names,
    /// Deliveries of a message that fails for a reason other than an outage (undecodable,
    /// unknown event, a handler error) before it is parked in the dead-letter stream.
    pub max_deliveries: u32,
    /// Messages one consumer handles at once.
    pub concurrency: usize,
}

impl EventSettings {
    /// Settings with the defaults: 5 deliveries, 64 messages at once.
    pub fn new(nats_url: impl Into<String>, names: Names) -> Self {
        Self { nats_url: nats_url.into(), names, max_deliveries: 5, concurrency: 64 }
    }
}

/// Delay before a message is redelivered after its `delivered`-th delivery failed: 100 ms,
/// doubling, at most 5 s.
pub fn redelivery_delay(delivered: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1u32 << delivered.saturating_sub(1).min(10))
        .min(MAX_REDELIVERY_DELAY)
}

/// Longest wait before a failed message is delivered again.
pub const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(5);

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redelivery_delay_doubles_from_100_ms_up_to_its_cap() {
        assert_eq!(redelivery_delay(0), Duration::from_millis(100));
        assert_eq!(redelivery_delay(1), Duration::from_millis(100));
        assert_eq!(redelivery_delay(2), Duration::from_millis(200));
        assert_eq!(redelivery_delay(4), Duration::from_millis(800));
        assert_eq!(redelivery_delay(7), MAX_REDELIVERY_DELAY);
        assert_eq!(redelivery_delay(u32::MAX), MAX_REDELIVERY_DELAY);
    }
}
