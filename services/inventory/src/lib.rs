//! The Ferry inventory service.
//!
//! - [`store`]: the [`store::InventoryStore`] trait with SQLite and PostgreSQL backends.
//! - [`api`]: the gRPC handlers (validation through `ferry_proto::domain`, then the store).
//! - [`events`]: the asynchronous saga's consumer (OrderPlaced, StockReleaseRequested).
//! - [`app`]: wiring: listeners, middleware, health, reflection, metrics port, drain.
//! - `testing` (feature `testing`, for tests only): a fault-injecting store.

pub mod api;
pub mod app;
pub mod events;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
