//! A durable JetStream pull consumer with explicit acknowledgements, shared by both services.
//!
//! Each message is decoded as an `EventEnvelope` and handed to a [`Handler`], whose
//! [`Verdict`] decides the acknowledgement:
//!
//! | verdict | what happens |
//! |---|---|
//! | `Done`, `Ignored` | acknowledged |
//! | `Retry` (an outage: database, broker) | negatively acknowledged with a delay; redelivered as long as it takes |
//! | `Failed` (the handler cannot do it), and poison: undecodable bytes, an unknown event, a handler panic | redelivered with a growing delay up to `max_deliveries` times in all, then **parked**: copied to the dead-letter stream with the reason in its headers and terminated (`+TERM`), so it is never delivered again |
//!
//! Handlers must be idempotent: JetStream delivers at least once, a redelivery can overtake
//! a slow first delivery, and messages of one order can arrive in any order. Many messages
//! are handled at once ([`crate::EventSettings::concurrency`]), so one slow or poison message
//! never blocks the others. The loop survives broker outages: it sets its consumer up again
//! (streams included) until the broker is back, and stops only when told to.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::jetstream::{
    AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
    message::{Message, PublishMessage as Publish},
};
use ferry_proto::events::v1::EventEnvelope;
use futures::{FutureExt as _, StreamExt as _};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::{Broker, EventSettings, names::kind, redelivery_delay};

/// What a handler made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled (its effects are committed, or were already).
    Done,
    /// Nothing to do (a duplicate, an event about an order that has moved on); the reason is
    /// a metric label.
    Ignored(&'static str),
    /// Could not be handled now for a reason that passes (database or broker unavailable).
    Retry(String),
    /// Cannot be handled (bad content, a bug); parked after the bounded retries.
    Failed(String),
}

/// Handles decoded events. Must be idempotent (see the module docs).
pub trait Handler: Send + Sync + 'static {
    /// Handles one event; `envelope.event` is always set.
    fn handle(&self, envelope: EventEnvelope) -> impl Future<Output = Verdict> + Send;
}

/// Which stream a consumer reads and under which durable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The stream.
    pub stream: String,
    /// The durable consumer's name: replicas of one service share it, so each message goes
    /// to one of them (JetStream's equivalent of a consumer group).
    pub durable: String,
    /// Subjects to receive (empty: the whole stream).
    pub filter_subjects: Vec<String>,
}

/// How long JetStream waits for an acknowledgement before delivering a message again.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered and not yet acknowledged, per durable consumer.
pub const MAX_ACK_PENDING: i64 = 1024;
/// Pause before setting a consumer up again after the broker went away.
const SETUP_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    consumer: String,
    event: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParkedLabels {
    consumer: String,
    reason: String,
}

/// Consumer metrics.
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    handled: Family<HandledLabels, Counter>,
    parked: Family<ParkedLabels, Counter>,
}

impl ConsumerMetrics {
    /// Creates and registers `ferry_events_handled_total{consumer,event,outcome}` (outcome:
    /// done, ignored, retried, failed, parked) and `ferry_events_parked_total{consumer,reason}`
    /// (reason: undecodable, unknown_event, failed, panicked).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "ferry_events_handled",
            "Event deliveries handled by a consumer, by event type and outcome",
            m.handled.clone(),
        );
        registry.register(
            "ferry_events_parked",
            "Poison messages parked in the dead-letter stream after bounded retries",
            m.parked.clone(),
        );
        m
    }

    fn count(&self, consumer: &str, event: &str, outcome: &str) {
        self.handled
            .get_or_create(&HandledLabels {
                consumer: consumer.into(),
                event: event.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Deliveries of `event` with `outcome` seen by `consumer` (for tests).
    pub fn handled(&self, consumer: &str, event: &str, outcome: &str) -> u64 {
        self.handled
            .get_or_create(&HandledLabels {
                consumer: consumer.into(),
                event: event.into(),
                outcome: outcome.into(),
            })
            .get()
    }

    /// Messages `consumer` parked for `reason` (for tests).
    pub fn parked(&self, consumer: &str, reason: &str) -> u64 {
        self.parked.get_or_create(&ParkedLabels { consumer: consumer.into(), reason: reason.into() }).get()
    }
}

/// Why a message is a candidate for parking.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Poison {
    Undecodable(String),
    UnknownEvent,
    Failed(String),
    Panicked,
}

impl Poison {
    fn label(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::UnknownEvent => "unknown_event",
            Self::Failed(_) => "failed",
            Self::Panicked => "panicked",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Undecodable(e) => format!("undecodable: {e}"),
            Self::UnknownEvent => "unknown event: no event this version knows".into(),
            Self::Failed(e) => format!("failed: {e}"),
            Self::Panicked => "the handler panicked".into(),
        }
    }
}

/// Runs `spec`'s consumer with `handler` until `stop` is cancelled.
pub async fn run<H: Handler>(
    broker: Broker,
    spec: ConsumerSpec,
    handler: Arc<H>,
    settings: EventSettings,
    metrics: Arc<ConsumerMetrics>,
    stop: CancellationToken,
) {
    let worker = Worker { broker, spec, handler, settings, metrics };
    while !stop.is_cancelled() {
        match worker.messages().await {
            Ok(messages) => {
                tracing::info!(consumer = %worker.spec.durable, stream = %worker.spec.stream, "consuming events");
                messages
                    .take_until(stop.cancelled())
                    .for_each_concurrent(worker.settings.concurrency.max(1), |message| async {
                        match message {
                            Ok(message) => worker.one(message).await,
                            Err(err) => tracing::warn!(consumer = %worker.spec.durable, error = %err, "event stream error"),
                        }
                    })
                    .await;
            }
            Err(err) => {
                tracing::warn!(consumer = %worker.spec.durable, error = %err, "cannot consume events yet")
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(SETUP_RETRY) => {}
        }
    }
}

struct Worker<H> {
    broker: Broker,
    spec: ConsumerSpec,
    handler: Arc<H>,
    settings: EventSettings,
    metrics: Arc<ConsumerMetrics>,
}

impl<H: Handler> Worker<H> {
    async fn messages(&self) -> Result<pull::Stream, crate::BrokerError> {
        let err = |what: &'static str| move |e: String| crate::BrokerError(format!("{what}: {e}"));
        self.broker.ensure_streams().await?;
        let stream = self
            .broker
            .jetstream()
            .get_stream(&self.spec.stream)
            .await
            .map_err(|e| err("stream")(e.to_string()))?;
        let consumer = stream
            .get_or_create_consumer(
                &self.spec.durable,
                pull::Config {
                    durable_name: Some(self.spec.durable.clone()),
                    filter_subjects: self.spec.filter_subjects.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    // Unbounded here: outages are retried as long as they last; poison is
                    // bounded by this loop (max_deliveries), which parks it.
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err("consumer")(e.to_string()))?;
        consumer.messages().await.map_err(|e| err("messages")(e.to_string()))
    }

    /// Handles one delivery and acknowledges it as its verdict says.
    async fn one(&self, message: Message) {
        let delivered = message.info().map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX)).unwrap_or(1);
        let consumer = &self.spec.durable;
        let (event, verdict) = match EventEnvelope::decode(message.payload.clone()) {
            Err(e) => ("undecodable", Err(Poison::Undecodable(e.to_string()))),
            Ok(envelope) => match envelope.event.as_ref().map(kind) {
                None => ("unknown", Err(Poison::UnknownEvent)),
                Some(event) => {
                    let handled = AssertUnwindSafe(self.handler.handle(envelope)).catch_unwind().await;
                    (event, handled.map_err(|_| Poison::Panicked))
                }
            },
        };
        match verdict {
            Ok(Verdict::Done) => self.ack(&message, AckKind::Ack, event, "done").await,
            Ok(Verdict::Ignored(why)) => {
                tracing::debug!(consumer, event, why, "event ignored");
                self.ack(&message, AckKind::Ack, event, "ignored").await;
            }
            Ok(Verdict::Retry(reason)) => {
                tracing::warn!(consumer, event, delivered, %reason, "event not handled yet; it is delivered again");
                self.ack(&message, AckKind::Nak(Some(redelivery_delay(delivered))), event, "retried").await;
            }
            Ok(Verdict::Failed(reason)) => {
                self.failed(&message, event, delivered, Poison::Failed(reason)).await
            }
            Err(poison) => self.failed(&message, event, delivered, poison).await,
        }
    }

    /// Delivers a failing message again, up to `max_deliveries` deliveries, then parks it.
    async fn failed(&self, message: &Message, event: &str, delivered: u32, poison: Poison) {
        if delivered >= self.settings.max_deliveries {
            return self.park(message, event, delivered, &poison).await;
        }
        let consumer = &self.spec.durable;
        tracing::warn!(consumer, event, delivered, reason = %poison.detail(), "event failed; it is delivered again");
        self.ack(message, AckKind::Nak(Some(redelivery_delay(delivered))), event, "failed").await;
    }

    async fn ack(&self, message: &Message, kind: AckKind, event: &str, outcome: &str) {
        self.metrics.count(&self.spec.durable, event, outcome);
        if let Err(err) = message.ack_with(kind).await {
            // The message comes back after ACK_WAIT; handlers are idempotent.
            tracing::warn!(consumer = %self.spec.durable, event, error = %err, "could not acknowledge");
        }
    }

    /// Copies the message to the dead-letter stream with why, then terminates it.
    async fn park(&self, message: &Message, event: &str, delivered: u32, poison: &Poison) {
        let consumer = &self.spec.durable;
        let (stream, sequence) =
            message.info().map(|i| (i.stream.to_string(), i.stream_sequence)).unwrap_or_default();
        let copy = Publish::build()
            .payload(message.payload.clone())
            .message_id(format!("dead/{consumer}/{stream}/{sequence}"))
            .header("Ferry-Dead-Reason", poison.detail().as_str())
            .header("Ferry-Dead-Consumer", consumer.as_str())
            .header("Ferry-Dead-Subject", message.subject.as_str())
            .header("Ferry-Dead-Stream", stream.as_str())
            .header("Ferry-Dead-Sequence", sequence.to_string().as_str())
            .header("Ferry-Dead-Deliveries", delivered.to_string().as_str());
        let subject = self.broker.names().dead_letter_subject(consumer);
        match self.broker.publish_message(&subject, copy).await {
            Ok(_) => {
                tracing::error!(consumer, event, delivered, stream, sequence, reason = %poison.detail(), "poison message parked in the dead-letter stream");
                self.metrics
                    .parked
                    .get_or_create(&ParkedLabels {
                        consumer: consumer.clone(),
                        reason: poison.label().into(),
                    })
                    .inc();
                self.ack(message, AckKind::Term, event, "parked").await;
            }
            Err(err) => {
                tracing::warn!(consumer, event, error = %err, "could not park a poison message; it is delivered again");
                self.ack(message, AckKind::Nak(Some(redelivery_delay(delivered))), event, "failed").await;
            }
        }
    }
}
