//! The Ferry order service.
//!
//! - [`store`]: the [`store::OrderStore`] trait with SQLite and PostgreSQL backends.
//! - [`breaker`] and [`retry`]: pure decision code for calls to inventory.
//! - [`client`]: the inventory client (deadlines, retries, breaker, token, trace context).
//! - [`saga`]: the CreateOrder saga (one run per order at a time, under a lease in the database).
//! - [`recovery`]: resumes orders nobody is working on any more, in the background.
//! - [`events`]: the events written to the transactional outbox with each state change.
//! - [`relay`]: publishes the outbox to NATS JetStream, in order, de-duplicated by event id.
//! - [`reactions`]: the asynchronous saga's consumer of inventory's answers.
//! - [`api`]: the gRPC handlers (create, get, list, cancel, watch).
//! - [`watch`]: WatchOrder's stream and the in-process change announcements that wake it.
//! - [`app`]: wiring: listeners, middleware, health, reflection, metrics port, drain.

pub mod api;
pub mod app;
pub mod breaker;
pub mod client;
pub mod events;
pub mod reactions;
pub mod recovery;
pub mod relay;
pub mod retry;
pub mod saga;
pub mod store;
pub mod watch;
