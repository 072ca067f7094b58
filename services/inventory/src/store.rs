//! The inventory store: one trait, two real backends ([`sqlite::SqliteStore`], the embedded
//! default, and [`postgres::PgStore`] for scale).
//!
//! Invariants every backend keeps:
//! - stock never goes negative: the decrement is a guarded `UPDATE ... WHERE quantity >= n`,
//!   and the table has `CHECK (quantity >= 0)` as a second line of defence;
//! - a `request_id` executes at most once: the idempotency record is written in the same
//!   transaction as the stock change, keyed by the id (primary key), so two racing calls with
//!   the same id cannot both commit; a replay returns the recorded result;
//! - a reused id with a different payload is rejected ([`StoreError::RequestIdReused`]).

mod batch;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use ferry_proto::domain::{DeductStock, ReleaseStock, Restock, SetStock, Sku};
use ferry_service_common::db::Backend;
pub use ferry_service_common::db::StoreOptions;

/// Result of a deduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deducted {
    /// Units left right after the deduction executed.
    pub remaining: i64,
    /// `true` when this is a replay of an earlier execution.
    pub replayed: bool,
}

/// Result of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// `true` when this call gave stock back.
    pub released: bool,
    /// Units of the sku now (0 if the sku does not exist).
    pub remaining: i64,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The sku does not exist.
    #[error("sku `{0}` not found")]
    NotFound(String),
    /// Not enough stock; nothing was changed.
    #[error("insufficient stock for sku `{sku}`: requested {requested}, available {available}")]
    Insufficient {
        /// The sku.
        sku: String,
        /// Units asked for.
        requested: i64,
        /// Units there.
        available: i64,
    },
    /// The request_id was already used with a different sku or quantity.
    #[error("request_id `{0}` was already used with a different payload")]
    RequestIdReused(String),
    /// The request_id was released (compensated) before this deduction arrived.
    #[error("request_id `{0}` was already released; use a new request_id")]
    AlreadyReleased(String),
    /// A restock would exceed the maximum stock level.
    #[error("restocking sku `{0}` would exceed the maximum stock level")]
    WouldOverflow(String),
    /// The database is busy or unreachable; retrying may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a broken database.
    #[error("internal store error: {0}")]
    Internal(String),
}

ferry_service_common::store_error_from_db!(StoreError);

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        let msg = err.to_string();
        match err {
            StoreError::NotFound(_) => tonic::Status::not_found(msg),
            StoreError::Insufficient { .. } => tonic::Status::failed_precondition(msg),
            StoreError::RequestIdReused(_) => tonic::Status::already_exists(msg),
            StoreError::AlreadyReleased(_) => tonic::Status::aborted(msg),
            StoreError::WouldOverflow(_) => tonic::Status::out_of_range(msg),
            StoreError::Unavailable(_) => tonic::Status::unavailable(msg),
            StoreError::Internal(_) => {
                tracing::error!(error = %msg, "store failure");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// The recorded request for a request_id, used to answer replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestRecord {
    pub sku: String,
    pub quantity: i64,
    pub state: String,
    pub remaining: i64,
}

impl RequestRecord {
    /// What a deduction should answer given this existing record.
    pub(crate) fn replay_deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        if self.sku != cmd.sku.as_str() || self.quantity != cmd.quantity.get() {
            return Err(StoreError::RequestIdReused(cmd.request_id.to_string()));
        }
        match self.state.as_str() {
            "deducted" => Ok(Deducted { remaining: self.remaining, replayed: true }),
            _ => Err(StoreError::AlreadyReleased(cmd.request_id.to_string())),
        }
    }

    /// `Err` when a release names a different payload than the recorded request.
    pub(crate) fn check_release(&self, cmd: &ReleaseStock) -> Result<(), StoreError> {
        if self.sku != cmd.sku.as_str() || self.quantity != cmd.quantity.get() {
            return Err(StoreError::RequestIdReused(cmd.request_id.to_string()));
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Stock persistence.
#[async_trait]
pub trait InventoryStore: Send + Sync + 'static {
    /// Takes stock once per request_id.
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError>;
    /// Gives back what a deduction took, once.
    async fn release(&self, cmd: &ReleaseStock) -> Result<Released, StoreError>;
    /// Current quantity.
    async fn get(&self, sku: &Sku) -> Result<i64, StoreError>;
    /// Sets the absolute quantity (creating the sku).
    async fn set(&self, cmd: &SetStock) -> Result<i64, StoreError>;
    /// Adds stock to an existing sku.
    async fn restock(&self, cmd: &Restock) -> Result<i64, StoreError>;
    /// `true` if the database answers.
    async fn ping(&self) -> bool;
}

/// Opens the backend the URL names and runs its migrations.
pub async fn open(opts: &StoreOptions) -> Result<Arc<dyn InventoryStore>, StoreError> {
    match Backend::of(&opts.url) {
        Some(Backend::Postgres) => Ok(Arc::new(postgres::PgStore::connect(opts).await?)),
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::connect(opts).await?)),
        None => Err(StoreError::Internal(format!(
            "unsupported database URL scheme in `{}`: use sqlite:// or postgres://",
            opts.url.split(':').next().unwrap_or_default()
        ))),
    }
}
