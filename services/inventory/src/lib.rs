//! The Ferry inventory service.
//!
//! - [`store`]: the [`store::InventoryStore`] trait with SQLite and PostgreSQL backends.
//! - [`api`]: the gRPC handlers (validation through `ferry_proto::domain`, then the store).
//! - [`app`]: wiring: listeners, middleware, health, reflection, metrics port, drain.

pub mod api;
pub mod app;
pub mod store;
