//! Order persistence: one trait, SQLite (embedded default) and PostgreSQL backends generated
//! from the same SQL (written with `$n` placeholders; SQLite gets `?n`).

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use ferry_proto::{
    domain::{CustomerId, OrderLine, Quantity, Sku},
    order::v1 as pb,
};
use serde::{Deserialize, Serialize};

/// Lifecycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Stock is being reserved.
    Pending,
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
            Self::Confirmed => "CONFIRMED",
            Self::Failed => "FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "CONFIRMED" => Self::Confirmed,
            "FAILED" => Self::Failed,
            "CANCELLING" => Self::Cancelling,
            "CANCELLED" => Self::Cancelled,
            other => {
                return Err(StoreError::Internal(format!("unknown order status `{other}` in the database")));
            }
        })
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::OrderStatus {
        match self {
            Self::Pending => pb::OrderStatus::Pending,
            Self::Confirmed => pb::OrderStatus::Confirmed,
            Self::Failed => pb::OrderStatus::Failed,
            Self::Cancelling => pb::OrderStatus::Cancelling,
            Self::Cancelled => pb::OrderStatus::Cancelled,
        }
    }
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

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(err.to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let sqlite_busy = code.parse::<u32>().map(|c| matches!(c & 0xff, 5 | 6)).unwrap_or(false);
                let pg_transient =
                    matches!(code.as_str(), "40001" | "40P01" | "55P03" | "57P01" | "57P03" | "53300");
                if sqlite_busy || pg_transient {
                    Self::Unavailable(err.to_string())
                } else {
                    Self::Internal(err.to_string())
                }
            }
            _ => Self::Internal(err.to_string()),
        }
    }
}

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

/// Order persistence.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Inserts `order` as PENDING, or returns the existing order for its request_id
    /// (`false` = it already existed). A different payload for a known request_id is an error.
    async fn create_or_get(&self, order: NewOrder) -> Result<(Order, bool), StoreError>;
    /// Moves the order to `to` if its status is one of `from`, recording `reason`. Returns the
    /// order as it is afterwards (unchanged if the guard did not match); `None` if unknown.
    async fn transition(
        &self,
        order_id: &str,
        from: &[OrderStatus],
        to: OrderStatus,
        reason: &str,
    ) -> Result<Option<Order>, StoreError>;
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

#[derive(Serialize, Deserialize)]
struct StoredLine {
    sku: String,
    quantity: i64,
}

fn encode_items(items: &[OrderLine]) -> Result<String, StoreError> {
    let lines: Vec<StoredLine> =
        items.iter().map(|l| StoredLine { sku: l.sku.to_string(), quantity: l.quantity.get() }).collect();
    serde_json::to_string(&lines).map_err(|e| StoreError::Internal(e.to_string()))
}

fn decode_items(json: &str) -> Result<Vec<OrderLine>, StoreError> {
    let lines: Vec<StoredLine> =
        serde_json::from_str(json).map_err(|e| StoreError::Internal(e.to_string()))?;
    lines
        .into_iter()
        .map(|l| {
            Ok(OrderLine {
                sku: Sku::parse("sku", l.sku).map_err(|e| StoreError::Internal(e.to_string()))?,
                quantity: Quantity::parse("quantity", l.quantity)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            })
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rewrites `$n` placeholders to SQLite's `?n`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn pg_sql(sql: &str) -> String {
    sql.to_string()
}

const COLUMNS: &str =
    "order_id, request_id, customer_id, items, status, failure_reason, created_at_ms, updated_at_ms";

macro_rules! sql_store {
    ($name:ident, $db:ty, $fix:path) => {
        /// See the module docs.
        #[derive(Debug, Clone)]
        pub struct $name {
            writer: sqlx::Pool<$db>,
            reader: sqlx::Pool<$db>,
        }

        impl $name {
            fn q(sql: &str) -> sqlx::AssertSqlSafe<String> {
                sqlx::AssertSqlSafe($fix(sql))
            }

            fn row_to_order(row: &<$db as sqlx::Database>::Row) -> Result<Order, StoreError> {
                use sqlx::Row;
                Ok(Order {
                    order_id: row.try_get(0)?,
                    request_id: row.try_get(1)?,
                    customer_id: row.try_get(2)?,
                    items: decode_items(&row.try_get::<String, _>(3)?)?,
                    status: OrderStatus::parse(&row.try_get::<String, _>(4)?)?,
                    failure_reason: row.try_get(5)?,
                    created_at_ms: row.try_get(6)?,
                    updated_at_ms: row.try_get(7)?,
                })
            }

            async fn get_from(
                &self,
                pool: &sqlx::Pool<$db>,
                order_id: &str,
            ) -> Result<Option<Order>, StoreError> {
                let row = sqlx::query(Self::q(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1")))
                    .bind(order_id)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(Self::row_to_order).transpose()
            }
        }

        #[async_trait]
        impl OrderStore for $name {
            async fn create_or_get(&self, order: NewOrder) -> Result<(Order, bool), StoreError> {
                let now = now_ms();
                let items = encode_items(&order.items)?;
                let inserted = sqlx::query(Self::q(
                    "INSERT INTO orders (order_id, request_id, customer_id, items, status, failure_reason, \
                     created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, 'PENDING', '', $5, $5) \
                     ON CONFLICT (request_id) DO NOTHING",
                ))
                .bind(&order.order_id)
                .bind(&order.request_id)
                .bind(order.customer_id.as_str())
                .bind(&items)
                .bind(now)
                .execute(&self.writer)
                .await?
                .rows_affected();
                if inserted == 1 {
                    let created = Order {
                        order_id: order.order_id,
                        request_id: order.request_id,
                        customer_id: order.customer_id.to_string(),
                        items: order.items,
                        status: OrderStatus::Pending,
                        failure_reason: String::new(),
                        created_at_ms: now,
                        updated_at_ms: now,
                    };
                    return Ok((created, true));
                }
                let row =
                    sqlx::query(Self::q(&format!("SELECT {COLUMNS} FROM orders WHERE request_id = $1")))
                        .bind(&order.request_id)
                        .fetch_one(&self.writer)
                        .await?;
                let existing = Self::row_to_order(&row)?;
                if existing.customer_id != order.customer_id.as_str() || existing.items != order.items {
                    return Err(StoreError::RequestIdReused(order.request_id));
                }
                Ok((existing, false))
            }

            async fn transition(
                &self,
                order_id: &str,
                from: &[OrderStatus],
                to: OrderStatus,
                reason: &str,
            ) -> Result<Option<Order>, StoreError> {
                for f in from {
                    let done = sqlx::query(Self::q(
                        "UPDATE orders SET status = $1, failure_reason = $2, updated_at_ms = $3 \
                         WHERE order_id = $4 AND status = $5",
                    ))
                    .bind(to.as_str())
                    .bind(reason)
                    .bind(now_ms())
                    .bind(order_id)
                    .bind(f.as_str())
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                    if done == 1 {
                        break;
                    }
                }
                self.get_from(&self.writer, order_id).await
            }

            async fn get(&self, order_id: &str) -> Result<Option<Order>, StoreError> {
                self.get_from(&self.reader, order_id).await
            }

            async fn list(
                &self,
                customer_id: &str,
                limit: u32,
                after: Option<&Cursor>,
            ) -> Result<Vec<Order>, StoreError> {
                let rows = match after {
                    None => {
                        sqlx::query(Self::q(&format!(
                            "SELECT {COLUMNS} FROM orders WHERE customer_id = $1 \
                             ORDER BY created_at_ms DESC, order_id DESC LIMIT $2"
                        )))
                        .bind(customer_id)
                        .bind(i64::from(limit))
                        .fetch_all(&self.reader)
                        .await?
                    }
                    Some(c) => {
                        sqlx::query(Self::q(&format!(
                            "SELECT {COLUMNS} FROM orders WHERE customer_id = $1 \
                             AND (created_at_ms < $2 OR (created_at_ms = $2 AND order_id < $3)) \
                             ORDER BY created_at_ms DESC, order_id DESC LIMIT $4"
                        )))
                        .bind(customer_id)
                        .bind(c.created_at_ms)
                        .bind(&c.order_id)
                        .bind(i64::from(limit))
                        .fetch_all(&self.reader)
                        .await?
                    }
                };
                rows.iter().map(Self::row_to_order).collect()
            }

            async fn ping(&self) -> bool {
                sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
            }
        }
    };
}

sql_store!(SqliteOrderStore, sqlx::Sqlite, sqlite_sql);
sql_store!(PgOrderStore, sqlx::Postgres, pg_sql);

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://...` or `postgres://...`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Wait for a connection before answering UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// PostgreSQL schema (created if missing).
    pub pg_schema: Option<String>,
}

impl StoreOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            pg_schema: None,
        }
    }
}

/// Opens the backend the URL names and runs its migrations.
pub async fn open(opts: &StoreOptions) -> Result<Arc<dyn OrderStore>, StoreError> {
    use sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    };
    if opts.url.starts_with("postgres://") || opts.url.starts_with("postgresql://") {
        let mut options = PgConnectOptions::from_str(&opts.url)?;
        if let Some(schema) = &opts.pg_schema {
            if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::Internal(format!("invalid schema name `{schema}`")));
            }
            let admin = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
                .execute(&admin)
                .await?;
            admin.close().await;
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migrations: {e}")))?;
        Ok(Arc::new(PgOrderStore { writer: pool.clone(), reader: pool }))
    } else if opts.url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&opts.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(opts.acquire_timeout);
        if let Some(parent) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Internal(format!("creating data dir {}: {e}", parent.display())))?;
        }
        // NB: one writer connection, so writers queue instead of failing with SQLITE_BUSY.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migrations: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.clamp(1, 8))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Arc::new(SqliteOrderStore { writer, reader }))
    } else {
        Err(StoreError::Internal("unsupported database URL scheme: use sqlite:// or postgres://".into()))
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

    #[test]
    fn placeholders_are_rewritten_for_sqlite() {
        assert_eq!(sqlite_sql("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
    }
}
