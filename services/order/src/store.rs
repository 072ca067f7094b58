//! Order persistence: one trait, SQLite (embedded default) and PostgreSQL backends generated
//! from the same SQL ([`sql`]).
//!
//! Each unsettled order carries a lease (`lease_owner`, `lease_until_ms`, in the database's
//! clock): the one saga run allowed to work on it. Claims, renewals and the decisions that
//! move an order out of PENDING are single conditional `UPDATE`s, so they hold across any
//! number of order replicas on one database.

mod sql;

pub use sql::{PgOrderStore, SqliteOrderStore};

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use ferry_proto::{
    domain::{CustomerId, OrderLine},
    order::v1 as pb,
};
pub use ferry_service_common::db::StoreOptions;
use ferry_service_common::db::{self, Backend, Migrator, SqlitePools};

/// Lifecycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Stock is being reserved.
    Pending,
    /// A line was refused for a business reason and the order will fail: every line is being
    /// given back. Shown as PENDING on the wire (the order is not settled yet).
    Compensating,
    /// Every item was deducted.
    Confirmed,
    /// An item could not be deducted; what was taken has been given back.
    Failed,
    /// Cancel accepted; stock is being given back.
    Cancelling,
    /// Cancelled; stock given back.
    Cancelled,
}

impl OrderStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Compensating => "COMPENSATING",
            Self::Confirmed => "CONFIRMED",
            Self::Failed => "FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "COMPENSATING" => Self::Compensating,
            "CONFIRMED" => Self::Confirmed,
            "FAILED" => Self::Failed,
            "CANCELLING" => Self::Cancelling,
            "CANCELLED" => Self::Cancelled,
            other => {
                return Err(StoreError::Internal(format!("unknown order status `{other}` in the database")));
            }
        })
    }

    /// `true` while the order's saga has work left (PENDING or COMPENSATING).
    pub fn is_unsettled(self) -> bool {
        matches!(self, Self::Pending | Self::Compensating)
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::OrderStatus {
        match self {
            Self::Pending | Self::Compensating => pb::OrderStatus::Pending,
            Self::Confirmed => pb::OrderStatus::Confirmed,
            Self::Failed => pb::OrderStatus::Failed,
            Self::Cancelling => pb::OrderStatus::Cancelling,
            Self::Cancelled => pb::OrderStatus::Cancelled,
        }
    }
}

/// Which saga runs an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Saga {
    /// order-service deducts over gRPC; the lease and the recoverer drive it.
    #[default]
    Sync,
    /// Events drive it (OrderPlaced, StockReserved/StockRejected, ...); the recoverer leaves
    /// it alone.
    Async,
}

impl Saga {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "sync" => Ok(Self::Sync),
            "async" => Ok(Self::Async),
            other => Err(StoreError::Internal(format!("unknown saga `{other}` in the database"))),
        }
    }
}

/// An event to write to the outbox in the transaction of the state change it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Unique; the broker's de-duplication id.
    pub event_id: String,
    /// The event's type name (`OrderPlaced`, ...): the relay publishes on its subject.
    pub kind: &'static str,
    /// The encoded `ferry.events.v1.EventEnvelope`.
    pub payload: Vec<u8>,
}

/// An outbox row not yet published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Position in the outbox (publication order).
    pub seq: i64,
    /// The de-duplication id.
    pub event_id: String,
    /// The order the event is about.
    pub order_id: String,
    /// The event's type name.
    pub kind: String,
    /// The encoded envelope.
    pub payload: Vec<u8>,
}

/// Unsent outbox rows, for the relay's lag metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxLag {
    /// How many.
    pub rows: u64,
    /// `created_at_ms` of the oldest, if any.
    pub oldest_created_at_ms: Option<i64>,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Server-assigned id.
    pub order_id: String,
    /// The creating request's idempotency key.
    pub request_id: String,
    /// Owner.
    pub customer_id: String,
    /// Lines, in request order.
    pub items: Vec<OrderLine>,
    /// Status.
    pub status: OrderStatus,
    /// Why it failed, when it did.
    pub failure_reason: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
    /// Which saga runs it.
    pub saga: Saga,
}

impl Order {
    /// The wire message.
    pub fn to_proto(&self) -> pb::Order {
        pb::Order {
            order_id: self.order_id.clone(),
            request_id: self.request_id.clone(),
            customer_id: self.customer_id.clone(),
            items: self.items.iter().map(pb::OrderItem::from).collect(),
            status: self.status.to_proto().into(),
            failure_reason: self.failure_reason.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// The idempotency key for deducting (and releasing) line `index`.
    pub fn line_key(&self, index: usize) -> String {
        format!("{}/{index}", self.order_id)
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The request_id was used before for a different order.
    #[error("request_id `{0}` was already used with a different payload")]
    RequestIdReused(String),
    /// Busy or unreachable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A bug or a broken database.
    #[error("internal store error: {0}")]
    Internal(String),
}

ferry_service_common::store_error_from_db!(StoreError);

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::RequestIdReused(_) => tonic::Status::already_exists(err.to_string()),
            StoreError::Unavailable(_) => tonic::Status::unavailable(err.to_string()),
            StoreError::Internal(_) => {
                tracing::error!(error = %err, "order store failure");
                tonic::Status::internal("internal error")
            }
        }
    }
}

/// A new order to insert as PENDING.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Id to assign.
    pub order_id: String,
    /// Idempotency key.
    pub request_id: String,
    /// Owner.
    pub customer_id: CustomerId,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Which saga runs it.
    pub saga: Saga,
}

/// Where a page starts: after this `(created_at_ms, order_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Created at, ms.
    pub created_at_ms: i64,
    /// Tie-breaker.
    pub order_id: String,
}

impl Cursor {
    /// The opaque page token.
    pub fn token(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.order_id)
    }

    /// Parses a token from [`Cursor::token`].
    pub fn parse(token: &str) -> Option<Self> {
        let (ms, id) = token.split_once('.')?;
        Some(Self { created_at_ms: ms.parse().ok()?, order_id: id.to_string() })
            .filter(|c| !c.order_id.is_empty())
    }
}

/// A saga run's claim on an order: only the run named `owner` may advance the order while the
/// claim lasts, and nobody else can claim it until `ttl` after it was last taken or renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run holding the claim (a fresh id per run).
    pub owner: String,
    /// How long the claim lasts without renewal.
    pub ttl: Duration,
}

impl Lease {
    /// A claim for a new run.
    pub fn new_run(ttl: Duration) -> Self {
        Self { owner: uuid::Uuid::new_v4().to_string(), ttl }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// An unsettled order a run has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// The order as claimed (PENDING or COMPENSATING).
    pub order: Order,
    /// Earlier runs that ended without settling it.
    pub attempts: u32,
}

/// Answer to [`OrderStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller's run now holds the order.
    Claimed(Leased),
    /// Another run holds the order.
    Busy(Order),
    /// The order has no saga work left (CONFIRMED, FAILED, CANCELLING or CANCELLED).
    Settled(Order),
}

/// Orders with saga work left (PENDING or COMPENSATING), for the recoverer's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unsettled {
    /// How many.
    pub count: u64,
    /// `created_at_ms` of the oldest, if any.
    pub oldest_created_at_ms: Option<i64>,
}

/// Order persistence.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Inserts `order` as PENDING, claimed by `lease` (none for an asynchronous saga), with
    /// `placed` in the outbox in the same transaction, or returns the existing order for its
    /// request_id (`false` = it already existed; nothing was written). A different payload
    /// for a known request_id is an error.
    async fn create_or_get(
        &self,
        order: NewOrder,
        lease: Option<&Lease>,
        placed: Option<&Outgoing>,
    ) -> Result<(Order, bool), StoreError>;
    /// Claims an unsettled order for `lease` if no other run holds it.
    async fn claim(&self, order_id: &str, lease: &Lease) -> Result<Claim, StoreError>;
    /// Claims up to `limit` unsettled orders that nobody holds and whose retry time has come,
    /// oldest retry time first. Replicas sharing the database never claim the same order.
    async fn claim_due(&self, lease: &Lease, limit: u32) -> Result<Vec<Leased>, StoreError>;
    /// Extends `lease` by its ttl from now; `false` if the run no longer holds the order.
    async fn renew(&self, order_id: &str, lease: &Lease) -> Result<bool, StoreError>;
    /// Moves the order from `from` to `to` only while the run `owner` holds it (the fence that
    /// keeps two runs from deciding one order), writing `event` to the outbox in the same
    /// transaction. Moving to a settled status gives the claim up. `None` if the order was
    /// not in `from` or `owner` no longer holds it (then nothing was written).
    async fn advance(
        &self,
        order_id: &str,
        owner: &str,
        from: OrderStatus,
        to: OrderStatus,
        reason: &str,
        event: Option<&Outgoing>,
    ) -> Result<Option<Order>, StoreError>;
    /// Moves an order of the asynchronous saga from `from` to `to` with `event` in the outbox,
    /// in one transaction. `None` (and nothing written) if it is not an asynchronous order in
    /// `from`: a duplicate or late event. (`reason` is kept when empty.)
    async fn advance_async(
        &self,
        order_id: &str,
        from: OrderStatus,
        to: OrderStatus,
        reason: &str,
        event: Option<&Outgoing>,
    ) -> Result<Option<Order>, StoreError>;
    /// Gives up `owner`'s claim on an order left unsettled, and tells the recoverer to try it
    /// again `retry_after` from now (it also counts the attempt).
    async fn unlease(&self, order_id: &str, owner: &str, retry_after: Duration) -> Result<(), StoreError>;
    /// How many orders have saga work left, and how old the oldest is.
    async fn unsettled(&self) -> Result<Unsettled, StoreError>;
    /// Moves the order to `to` if its status is one of `from`, recording `reason`, with
    /// `event` in the outbox in the same transaction (only when it moved). Returns the order
    /// as it is afterwards (unchanged if the guard did not match); `None` if unknown. For the
    /// cancel path, which runs no lease.
    async fn transition(
        &self,
        order_id: &str,
        from: &[OrderStatus],
        to: OrderStatus,
        reason: &str,
        event: Option<&Outgoing>,
    ) -> Result<Option<Order>, StoreError>;
    /// Up to `limit` unsent outbox rows, in `seq` order.
    async fn unsent(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
    /// Stamps the rows `seqs` as sent.
    async fn mark_sent(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// How many outbox rows are unsent, and how old the oldest is.
    async fn outbox_lag(&self) -> Result<OutboxLag, StoreError>;
    /// Deletes rows sent more than `age` ago; how many.
    async fn prune_sent(&self, age: Duration) -> Result<u64, StoreError>;
    /// Takes (or renews) the relay's lease for `owner` for `ttl`; `false` while another
    /// replica's lease runs.
    async fn claim_relay(&self, owner: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// One order.
    async fn get(&self, order_id: &str) -> Result<Option<Order>, StoreError>;
    /// Newest first, at most `limit`, strictly after `after`.
    async fn list(
        &self,
        customer_id: &str,
        limit: u32,
        after: Option<&Cursor>,
    ) -> Result<Vec<Order>, StoreError>;
    /// `true` if the database answers.
    async fn ping(&self) -> bool;
}

/// Opens the backend the URL names and runs its migrations.
pub async fn open(opts: &StoreOptions) -> Result<Arc<dyn OrderStore>, StoreError> {
    static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
    static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
    match Backend::of(&opts.url) {
        Some(Backend::Postgres) => {
            let pool = db::open_postgres(opts, &POSTGRES).await?;
            Ok(Arc::new(PgOrderStore::new(pool.clone(), pool)))
        }
        Some(Backend::Sqlite) => {
            let SqlitePools { writer, reader } = db::open_sqlite(opts, &SQLITE).await?;
            Ok(Arc::new(SqliteOrderStore::new(writer, reader)))
        }
        None => {
            Err(StoreError::Internal("unsupported database URL scheme: use sqlite:// or postgres://".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_token_round_trips() {
        let c = Cursor { created_at_ms: 42, order_id: "ab-c".into() };
        assert_eq!(Cursor::parse(&c.token()), Some(c));
        assert_eq!(Cursor::parse("x.y"), None);
        assert_eq!(Cursor::parse("12."), None);
    }
}
