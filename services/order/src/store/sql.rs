//! The SQLite and PostgreSQL order stores, generated from one set of SQL statements written
//! with `$n` placeholders and a `NOW_MS` marker for the database's clock in Unix ms (SQLite
//! gets `?n` and its own clock expression).
//!
//! Lease times are the database's clock, never a replica's: replicas with skewed clocks still
//! agree on when a claim has run out.

use async_trait::async_trait;
use ferry_proto::domain::{OrderLine, Quantity, Sku};
use serde::{Deserialize, Serialize};

use super::{
    Claim, Cursor, Lease, Leased, NewOrder, Order, OrderStatus, OrderStore, OutboxLag, OutboxRow, Outgoing,
    Saga, StoreError, Unsettled,
};

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

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// SQLite's clock in Unix ms (`julianday` works on every SQLite version; the value is fixed
/// for the duration of one statement).
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
const PG_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// Rewrites `$n` placeholders to SQLite's `?n`, and `NOW_MS` to SQLite's clock.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?").replace("NOW_MS", SQLITE_NOW_MS)
}

fn pg_sql(sql: &str) -> String {
    sql.replace("NOW_MS", PG_NOW_MS)
}

const COLUMNS: &str =
    "order_id, request_id, customer_id, items, status, failure_reason, created_at_ms, updated_at_ms, saga";

/// Both saga statuses, for `status IN (...)`.
const UNSETTLED: &str = "('PENDING', 'COMPENSATING')";

/// Orders the recoverer may take: synchronous, unsettled, nobody's claim running, retry time
/// come. (Events drive the asynchronous saga.)
const DUE: &str = "status IN ('PENDING', 'COMPENSATING') AND saga = 'sync' AND lease_until_ms < NOW_MS \
                   AND next_attempt_ms <= NOW_MS";

/// The outbox insert; `$1..$5` = event_id, order_id, kind, payload, created_at_ms.
const INSERT_EVENT: &str =
    "INSERT INTO outbox (event_id, order_id, kind, payload, created_at_ms) VALUES ($1, $2, $3, $4, $5)";

macro_rules! sql_store {
    ($name:ident, $db:ty, $fix:path, $skip_locked:expr) => {
        /// See the module docs.
        #[derive(Debug, Clone)]
        pub struct $name {
            writer: sqlx::Pool<$db>,
            reader: sqlx::Pool<$db>,
        }

        impl $name {
            /// A store writing through `writer` and reading through `reader` (migrated).
            pub fn new(writer: sqlx::Pool<$db>, reader: sqlx::Pool<$db>) -> Self {
                Self { writer, reader }
            }

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
                    saga: Saga::parse(&row.try_get::<String, _>(8)?)?,
                })
            }

            /// Writes `event` to the outbox inside `tx`.
            async fn insert_event(
                tx: &mut <$db as sqlx::Database>::Connection,
                order_id: &str,
                event: &Outgoing,
            ) -> Result<(), StoreError> {
                sqlx::query(Self::q(INSERT_EVENT))
                    .bind(&event.event_id)
                    .bind(order_id)
                    .bind(event.kind)
                    .bind(&event.payload)
                    .bind(now_ms())
                    .execute(tx)
                    .await?;
                Ok(())
            }

            /// A row of `COLUMNS, attempts`.
            fn row_to_leased(row: &<$db as sqlx::Database>::Row) -> Result<Leased, StoreError> {
                use sqlx::Row;
                let attempts: i32 = row.try_get(9)?;
                Ok(Leased { order: Self::row_to_order(row)?, attempts: u32::try_from(attempts).unwrap_or(0) })
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

            async fn existing(&self, order: NewOrder) -> Result<(Order, bool), StoreError> {
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

            /// Ends a state change's transaction: with `event` in the outbox when the change
            /// applied (`row` is the order after it), rolled back otherwise.
            async fn finish(
                &self,
                mut tx: sqlx::Transaction<'static, $db>,
                order_id: &str,
                row: Option<<$db as sqlx::Database>::Row>,
                event: Option<&Outgoing>,
            ) -> Result<Option<Order>, StoreError> {
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let order = Self::row_to_order(&row)?;
                if let Some(event) = event {
                    Self::insert_event(&mut tx, order_id, event).await?;
                }
                tx.commit().await?;
                Ok(Some(order))
            }
        }

        #[async_trait]
        impl OrderStore for $name {
            async fn create_or_get(
                &self,
                order: NewOrder,
                lease: Option<&Lease>,
                placed: Option<&Outgoing>,
            ) -> Result<(Order, bool), StoreError> {
                let now = now_ms();
                let items = encode_items(&order.items)?;
                let (owner, ttl_ms) = lease.map_or(("", -1), |l| (l.owner.as_str(), l.ttl_ms()));
                let mut tx = self.writer.begin().await?;
                let inserted = sqlx::query(Self::q(
                    "INSERT INTO orders (order_id, request_id, customer_id, items, status, failure_reason, \
                     created_at_ms, updated_at_ms, lease_owner, lease_until_ms, saga) \
                     VALUES ($1, $2, $3, $4, 'PENDING', '', $5, $5, $6, \
                     CASE WHEN $7 < 0 THEN 0 ELSE NOW_MS + $7 END, $8) \
                     ON CONFLICT (request_id) DO NOTHING",
                ))
                .bind(&order.order_id)
                .bind(&order.request_id)
                .bind(order.customer_id.as_str())
                .bind(&items)
                .bind(now)
                .bind(owner)
                .bind(ttl_ms)
                .bind(order.saga.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    return self.existing(order).await;
                }
                if let Some(event) = placed {
                    Self::insert_event(&mut tx, &order.order_id, event).await?;
                }
                tx.commit().await?;
                let created = Order {
                    order_id: order.order_id,
                    request_id: order.request_id,
                    customer_id: order.customer_id.to_string(),
                    items: order.items,
                    status: OrderStatus::Pending,
                    failure_reason: String::new(),
                    created_at_ms: now,
                    updated_at_ms: now,
                    saga: order.saga,
                };
                Ok((created, true))
            }

            async fn claim(&self, order_id: &str, lease: &Lease) -> Result<Claim, StoreError> {
                let row = sqlx::query(Self::q(&format!(
                    "UPDATE orders SET lease_owner = $1, lease_until_ms = NOW_MS + $2 \
                     WHERE order_id = $3 AND status IN {UNSETTLED} AND saga = 'sync' AND lease_until_ms < NOW_MS \
                     RETURNING {COLUMNS}, attempts"
                )))
                .bind(&lease.owner)
                .bind(lease.ttl_ms())
                .bind(order_id)
                .fetch_optional(&self.writer)
                .await?;
                if let Some(row) = row {
                    return Ok(Claim::Claimed(Self::row_to_leased(&row)?));
                }
                let order = self
                    .get_from(&self.writer, order_id)
                    .await?
                    .ok_or_else(|| StoreError::Internal(format!("order `{order_id}` vanished")))?;
                Ok(if order.status.is_unsettled() { Claim::Busy(order) } else { Claim::Settled(order) })
            }

            async fn claim_due(&self, lease: &Lease, limit: u32) -> Result<Vec<Leased>, StoreError> {
                let rows = sqlx::query(Self::q(&format!(
                    "UPDATE orders SET lease_owner = $1, lease_until_ms = NOW_MS + $2 \
                     WHERE order_id IN (SELECT order_id FROM orders WHERE {DUE} \
                                        ORDER BY next_attempt_ms LIMIT $3{}) \
                     AND {DUE} \
                     RETURNING {COLUMNS}, attempts",
                    $skip_locked
                )))
                .bind(&lease.owner)
                .bind(lease.ttl_ms())
                .bind(i64::from(limit))
                .fetch_all(&self.writer)
                .await?;
                rows.iter().map(Self::row_to_leased).collect()
            }

            async fn renew(&self, order_id: &str, lease: &Lease) -> Result<bool, StoreError> {
                let renewed = sqlx::query(Self::q(&format!(
                    "UPDATE orders SET lease_until_ms = NOW_MS + $1 \
                     WHERE order_id = $2 AND lease_owner = $3 AND status IN {UNSETTLED}"
                )))
                .bind(lease.ttl_ms())
                .bind(order_id)
                .bind(&lease.owner)
                .execute(&self.writer)
                .await?
                .rows_affected();
                Ok(renewed == 1)
            }

            async fn advance(
                &self,
                order_id: &str,
                owner: &str,
                from: OrderStatus,
                to: OrderStatus,
                reason: &str,
                event: Option<&Outgoing>,
            ) -> Result<Option<Order>, StoreError> {
                let keep = if to.is_unsettled() { owner } else { "" };
                let mut tx = self.writer.begin().await?;
                let row = sqlx::query(Self::q(&format!(
                    "UPDATE orders SET status = $1, failure_reason = $2, updated_at_ms = $3, lease_owner = $4, \
                     lease_until_ms = CASE WHEN $4 = '' THEN 0 ELSE lease_until_ms END \
                     WHERE order_id = $5 AND status = $6 AND lease_owner = $7 \
                     RETURNING {COLUMNS}"
                )))
                .bind(to.as_str())
                .bind(reason)
                .bind(now_ms())
                .bind(keep)
                .bind(order_id)
                .bind(from.as_str())
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
                self.finish(tx, order_id, row, event).await
            }

            async fn advance_async(
                &self,
                order_id: &str,
                from: OrderStatus,
                to: OrderStatus,
                reason: &str,
                event: Option<&Outgoing>,
            ) -> Result<Option<Order>, StoreError> {
                let mut tx = self.writer.begin().await?;
                let row = sqlx::query(Self::q(&format!(
                    "UPDATE orders SET status = $1, updated_at_ms = $2, \
                     failure_reason = CASE WHEN $3 = '' THEN failure_reason ELSE $3 END \
                     WHERE order_id = $4 AND status = $5 AND saga = 'async' \
                     RETURNING {COLUMNS}"
                )))
                .bind(to.as_str())
                .bind(now_ms())
                .bind(reason)
                .bind(order_id)
                .bind(from.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                self.finish(tx, order_id, row, event).await
            }

            async fn unlease(
                &self,
                order_id: &str,
                owner: &str,
                retry_after: std::time::Duration,
            ) -> Result<(), StoreError> {
                sqlx::query(Self::q(
                    "UPDATE orders SET lease_owner = '', lease_until_ms = 0, attempts = attempts + 1, \
                     next_attempt_ms = NOW_MS + $1 WHERE order_id = $2 AND lease_owner = $3",
                ))
                .bind(duration_ms(retry_after))
                .bind(order_id)
                .bind(owner)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn unsettled(&self) -> Result<Unsettled, StoreError> {
                use sqlx::Row;
                let row = sqlx::query(Self::q(&format!(
                    "SELECT COUNT(*), MIN(created_at_ms) FROM orders WHERE status IN {UNSETTLED}"
                )))
                .fetch_one(&self.reader)
                .await?;
                let count: i64 = row.try_get(0)?;
                Ok(Unsettled {
                    count: u64::try_from(count).unwrap_or(0),
                    oldest_created_at_ms: row.try_get(1)?,
                })
            }

            async fn transition(
                &self,
                order_id: &str,
                from: &[OrderStatus],
                to: OrderStatus,
                reason: &str,
                event: Option<&Outgoing>,
            ) -> Result<Option<Order>, StoreError> {
                for f in from {
                    let mut tx = self.writer.begin().await?;
                    let row = sqlx::query(Self::q(&format!(
                        "UPDATE orders SET status = $1, failure_reason = $2, updated_at_ms = $3 \
                         WHERE order_id = $4 AND status = $5 RETURNING {COLUMNS}"
                    )))
                    .bind(to.as_str())
                    .bind(reason)
                    .bind(now_ms())
                    .bind(order_id)
                    .bind(f.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(moved) = self.finish(tx, order_id, row, event).await? {
                        return Ok(Some(moved));
                    }
                }
                self.get_from(&self.writer, order_id).await
            }

            async fn unsent(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(Self::q(
                    "SELECT seq, event_id, order_id, kind, payload FROM outbox WHERE sent_at_ms IS NULL \
                     ORDER BY seq LIMIT $1",
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.writer)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(OutboxRow {
                            seq: r.try_get(0)?,
                            event_id: r.try_get(1)?,
                            order_id: r.try_get(2)?,
                            kind: r.try_get(3)?,
                            payload: r.try_get(4)?,
                        })
                    })
                    .collect()
            }

            async fn mark_sent(&self, seqs: &[i64]) -> Result<(), StoreError> {
                if seqs.is_empty() {
                    return Ok(());
                }
                // Integers read from the table: safe to inline.
                let list = seqs.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                sqlx::query(Self::q(&format!(
                    "UPDATE outbox SET sent_at_ms = $1 WHERE seq IN ({list}) AND sent_at_ms IS NULL"
                )))
                .bind(now_ms())
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn outbox_lag(&self) -> Result<OutboxLag, StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT COUNT(*), MIN(created_at_ms) FROM outbox WHERE sent_at_ms IS NULL")
                    .fetch_one(&self.reader)
                    .await?;
                let rows: i64 = row.try_get(0)?;
                Ok(OutboxLag { rows: u64::try_from(rows).unwrap_or(0), oldest_created_at_ms: row.try_get(1)? })
            }

            async fn prune_sent(&self, age: std::time::Duration) -> Result<u64, StoreError> {
                Ok(sqlx::query(Self::q("DELETE FROM outbox WHERE sent_at_ms < $1"))
                    .bind(now_ms().saturating_sub(duration_ms(age)))
                    .execute(&self.writer)
                    .await?
                    .rows_affected())
            }

            async fn claim_relay(&self, owner: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
                let taken = sqlx::query(Self::q(
                    "INSERT INTO relay_lease (name, owner, until_ms) VALUES ('outbox', $1, NOW_MS + $2) \
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms \
                     WHERE relay_lease.owner = excluded.owner OR relay_lease.until_ms < NOW_MS",
                ))
                .bind(owner)
                .bind(duration_ms(ttl))
                .execute(&self.writer)
                .await?
                .rows_affected();
                Ok(taken == 1)
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

// SQLite has one writer connection, so claims are serialised there; PostgreSQL replicas skip
// the rows another replica is claiming instead of waiting for them.
sql_store!(SqliteOrderStore, sqlx::Sqlite, sqlite_sql, "");
sql_store!(PgOrderStore, sqlx::Postgres, pg_sql, " FOR UPDATE SKIP LOCKED");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_the_clock_are_rewritten_for_sqlite() {
        assert_eq!(sqlite_sql("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
        assert_eq!(sqlite_sql("t < NOW_MS + $2"), format!("t < {SQLITE_NOW_MS} + ?2"));
        assert_eq!(pg_sql("t < NOW_MS + $2"), format!("t < {PG_NOW_MS} + $2"));
    }
}
