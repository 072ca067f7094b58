//! PostgreSQL backend.
//!
//! NB: a hot sku is one hot row; a hundred sessions fighting over its row lock are several
//! times slower than a few taking turns. Writes to the same sku therefore queue on an
//! in-process striped lock before they take a connection, so at most one transaction per
//! stripe contends for the row, and the others wait cheaply (and do not hold connections).

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    str::FromStr,
};

use async_trait::async_trait;
use ferry_proto::domain::{DeductStock, MAX_STOCK, ReleaseStock, Restock, SetStock, Sku};
use sqlx::{
    PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::Mutex;

use super::{Deducted, InventoryStore, Released, RequestRecord, StoreError, StoreOptions, now_ms};

const STRIPES: usize = 256;

/// See the module docs.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    stripes: Vec<Mutex<()>>,
}

impl PgStore {
    /// Connects, creates the schema if one is configured, and runs migrations.
    pub async fn connect(opts: &StoreOptions) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(&opts.url)?;
        if let Some(schema) = &opts.pg_schema {
            if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || schema.is_empty() {
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
        Ok(Self { pool, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() })
    }

    fn stripe(&self, sku: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        sku.hash(&mut h);
        let idx = usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0);
        &self.stripes[idx]
    }

    async fn record(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let row =
            sqlx::query("SELECT sku, quantity, state, remaining FROM stock_requests WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| RequestRecord {
            sku: r.get(0),
            quantity: r.get(1),
            state: r.get(2),
            remaining: r.get(3),
        }))
    }
}

#[async_trait]
impl InventoryStore for PgStore {
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        let (rid, sku, qty, now) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get(), now_ms());
        let guard = self.stripe(sku).lock().await;
        let mut tx = self.pool.begin().await?;
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity - $1, updated_at_ms = $2 \
             WHERE sku = $3 AND quantity >= $1 RETURNING quantity",
        )
        .bind(qty)
        .bind(now)
        .bind(sku)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(remaining) = updated else {
            let available: Option<i64> = sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            drop(guard);
            // A replay of an earlier success must answer as before even when stock ran out since.
            if let Some(rec) = self.record(rid).await? {
                return rec.replay_deduct(cmd);
            }
            return Err(match available {
                None => StoreError::NotFound(sku.to_string()),
                Some(available) => {
                    StoreError::Insufficient { sku: sku.to_string(), requested: qty, available }
                }
            });
        };
        // A concurrent transaction inserting the same request_id makes this INSERT wait for it;
        // if that one commits, this one conflicts and rolls back its decrement.
        let inserted = sqlx::query(
            "INSERT INTO stock_requests (request_id, sku, quantity, state, remaining, created_at_ms) \
             VALUES ($1, $2, $3, 'deducted', $4, $5) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(rid)
        .bind(sku)
        .bind(qty)
        .bind(remaining)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            drop(guard);
            let rec = self.record(rid).await?.ok_or_else(|| {
                StoreError::Internal(format!("request `{rid}` conflicted but has no record"))
            })?;
            return rec.replay_deduct(cmd);
        }
        tx.commit().await?;
        drop(guard);
        Ok(Deducted { remaining, replayed: false })
    }

    async fn release(&self, cmd: &ReleaseStock) -> Result<Released, StoreError> {
        let (rid, sku, qty, now) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get(), now_ms());
        let _guard = self.stripe(sku).lock().await;
        let mut tx = self.pool.begin().await?;
        let tombstone = sqlx::query(
            "INSERT INTO stock_requests (request_id, sku, quantity, state, remaining, created_at_ms) \
             VALUES ($1, $2, $3, 'released', -1, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(rid)
        .bind(sku)
        .bind(qty)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if tombstone == 1 {
            let remaining: Option<i64> = sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Released { released: false, remaining: remaining.unwrap_or(0) });
        }
        let row = sqlx::query(
            "SELECT sku, quantity, state, remaining FROM stock_requests WHERE request_id = $1 FOR UPDATE",
        )
        .bind(rid)
        .fetch_one(&mut *tx)
        .await?;
        let rec =
            RequestRecord { sku: row.get(0), quantity: row.get(1), state: row.get(2), remaining: row.get(3) };
        rec.check_release(cmd)?;
        let flipped = sqlx::query(
            "UPDATE stock_requests SET state = 'released' WHERE request_id = $1 AND state = 'deducted'",
        )
        .bind(rid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let remaining: Option<i64> = if flipped == 0 {
            sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?
        } else {
            sqlx::query_scalar(
                "UPDATE stock SET quantity = quantity + $1, updated_at_ms = $2 WHERE sku = $3 RETURNING quantity",
            )
            .bind(qty)
            .bind(now)
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(Released { released: flipped == 1, remaining: remaining.unwrap_or(0) })
    }

    async fn get(&self, sku: &Sku) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = $1")
            .bind(sku.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(sku.to_string()))
    }

    async fn set(&self, cmd: &SetStock) -> Result<i64, StoreError> {
        let _guard = self.stripe(cmd.sku.as_str()).lock().await;
        Ok(sqlx::query_scalar(
            "INSERT INTO stock (sku, quantity, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (sku) DO UPDATE SET quantity = excluded.quantity, updated_at_ms = excluded.updated_at_ms \
             RETURNING quantity",
        )
        .bind(cmd.sku.as_str())
        .bind(cmd.quantity.get())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn restock(&self, cmd: &Restock) -> Result<i64, StoreError> {
        let _guard = self.stripe(cmd.sku.as_str()).lock().await;
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity + $1, updated_at_ms = $2 \
             WHERE sku = $3 AND quantity <= $4 - $1 RETURNING quantity",
        )
        .bind(cmd.quantity.get())
        .bind(now_ms())
        .bind(cmd.sku.as_str())
        .bind(MAX_STOCK)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(q) = updated {
            return Ok(q);
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = $1")
            .bind(cmd.sku.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Err(match exists {
            None => StoreError::NotFound(cmd.sku.to_string()),
            Some(_) => StoreError::WouldOverflow(cmd.sku.to_string()),
        })
    }

    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
