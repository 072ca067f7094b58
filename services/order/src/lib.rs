//! The Ferry order service.
//!
//! - [`store`]: the [`store::OrderStore`] trait with SQLite and PostgreSQL backends.
//! - [`breaker`] and [`retry`]: pure decision code for calls to inventory.
//! - [`client`]: the inventory client (deadlines, retries, breaker, token, trace context).
//! - [`api`]: the gRPC handlers (create with compensation, get, list, cancel).
//! - [`app`]: wiring: listeners, middleware, health, reflection, metrics port, drain.

pub mod api;
pub mod app;
pub mod breaker;
pub mod client;
pub mod retry;
pub mod store;
