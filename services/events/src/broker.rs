//! The connection to NATS and JetStream: the streams (created when missing) and publishing.
//!
//! Connecting never blocks a service's start: the client connects (and reconnects) in the
//! background, and every publish or consumer setup made while the broker is away fails with
//! [`BrokerError`], which callers treat as an outage (they retry; nothing is lost, since what
//! they publish is still in a database or still unacknowledged in a stream).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    message::PublishMessage as Publish,
    stream::{self, StorageType},
};
use bytes::Bytes;
use ferry_proto::events::v1::EventEnvelope;
use prost::Message as _;

use crate::{EventSettings, Names, names::kind};

/// How long a publish waits for JetStream's acknowledgement.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long JetStream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long events stay in their streams (consumers read them long before).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The header naming the event's type.
pub const EVENT_HEADER: &str = "Ferry-Event";

/// The broker could not be used (down, unreachable, refused); retrying later may succeed.
#[derive(Debug, thiserror::Error)]
#[error("message broker: {0}")]
pub struct BrokerError(pub String);

impl BrokerError {
    fn from<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Self + '_ {
        move |e| Self(format!("{what}: {e}"))
    }
}

/// A connection to the broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
}

impl Broker {
    /// Starts connecting to `settings.nats_url` as `client_name`; returns at once (the client
    /// keeps reconnecting in the background: every 100 ms at first, at most every 2 s).
    pub async fn connect(settings: &EventSettings, client_name: &str) -> Result<Self, BrokerError> {
        let client = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100)
                    .saturating_mul(1 << attempts.min(5) as u32)
                    .min(Duration::from_secs(2))
            })
            .connect(settings.nats_url.as_str())
            .await
            .map_err(BrokerError::from("connecting"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(PUBLISH_TIMEOUT);
        Ok(Self { client, js, names: settings.names.clone() })
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The JetStream context (for consumers and tests).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// `true` while the client is connected.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the order, inventory and dead-letter streams when missing (file storage,
    /// [`DUPLICATE_WINDOW`], [`RETENTION`]); an existing stream is left as it is.
    pub async fn ensure_streams(&self) -> Result<(), BrokerError> {
        let n = &self.names;
        for (name, subjects) in [
            (n.order_stream(), n.order_subjects()),
            (n.inventory_stream(), n.inventory_subjects()),
            (n.dead_letter_stream(), n.dead_letter_subjects()),
        ] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subjects],
                    storage: StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    max_age: RETENTION,
                    ..Default::default()
                })
                .await
                .map_err(|e| BrokerError(format!("stream {name}: {e}")))?;
        }
        Ok(())
    }

    /// Publishes `envelope` on its event's subject with its event id as the de-duplication id,
    /// and waits for JetStream to store it. `Ok(true)` if JetStream had it already (a
    /// duplicate within the window, dropped).
    pub async fn publish(&self, envelope: &EventEnvelope) -> Result<bool, BrokerError> {
        let event =
            envelope.event.as_ref().ok_or_else(|| BrokerError("an envelope without an event".into()))?;
        let subject = self.names.subject(event);
        self.publish_encoded(&subject, &envelope.event_id, kind(event), envelope.encode_to_vec().into()).await
    }

    /// Publishes an encoded envelope (as the outbox keeps it) on `subject` with `event_id` as
    /// the de-duplication id; see [`Broker::publish`].
    pub async fn publish_encoded(
        &self,
        subject: &str,
        event_id: &str,
        kind: &str,
        payload: Bytes,
    ) -> Result<bool, BrokerError> {
        self.send_encoded(subject, event_id, kind, payload).await?.await
    }

    /// Sends an encoded envelope like [`Broker::publish_encoded`] without waiting for
    /// JetStream's acknowledgement: the returned future waits for it (`Ok(true)`: a duplicate).
    /// Messages sent one after another on this connection are stored in that order.
    pub async fn send_encoded(
        &self,
        subject: &str,
        event_id: &str,
        kind: &str,
        payload: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<bool, BrokerError>> + Send + use<>, BrokerError>
    {
        let message = Publish::build().payload(payload).message_id(event_id).header(EVENT_HEADER, kind);
        let ack = self
            .js
            .send_publish(subject.to_string(), message)
            .await
            .map_err(BrokerError::from("publishing"))?;
        Ok(async move {
            ack.await
                .map(|a| a.duplicate)
                .map_err(|e| BrokerError(format!("waiting for the publish acknowledgement: {e}")))
        })
    }

    /// Publishes a built message and waits for its acknowledgement.
    pub async fn publish_message(&self, subject: &str, message: Publish) -> Result<bool, BrokerError> {
        let ack = self
            .js
            .send_publish(subject.to_string(), message)
            .await
            .map_err(BrokerError::from("publishing"))?
            .await
            .map_err(BrokerError::from("waiting for the publish acknowledgement"))?;
        Ok(ack.duplicate)
    }
}
