//! SQLite backend: a file in the data dir, WAL with `synchronous=NORMAL`.
//!
//! NB: SQLite has one writer at a time. All writes go through a pool of exactly one
//! connection, so writers queue in the application instead of failing with SQLITE_BUSY;
//! reads use a separate pool and never block on writers (WAL). Deductions go through a
//! [`Lane`]: the writer runs every deduction that queued up while it was busy in one
//! transaction (group commit), answering each caller after the commit.

use async_trait::async_trait;
use ferry_proto::domain::{DeductStock, MAX_STOCK, ReleaseStock, Restock, SetStock, Sku};
use ferry_service_common::db::{self, Migrator, SqlitePools};
use sqlx::{Row, SqlitePool};

use super::{
    Deducted, InventoryStore, Released, RequestRecord, StoreError, StoreOptions,
    batch::{Lane, Outcome},
    now_ms,
};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// See the module docs.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    deductions: Lane,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and runs migrations.
    pub async fn connect(opts: &StoreOptions) -> Result<Self, StoreError> {
        let SqlitePools { writer, reader } = db::open_sqlite(opts, &MIGRATIONS).await?;
        let deductions = {
            let writer = writer.clone();
            Lane::spawn(move |cmds| deduct_batch(writer.clone(), cmds))
        };
        Ok(Self { writer, reader, deductions })
    }
}

/// Runs a batch of deductions in one transaction on the writer connection; if that
/// transaction fails as a whole, runs each deduction in its own transaction instead.
async fn deduct_batch(writer: SqlitePool, cmds: Vec<DeductStock>) -> Vec<Outcome> {
    match deduct_in_one_transaction(&writer, &cmds).await {
        Ok(outcomes) => outcomes,
        Err(err) if cmds.len() == 1 => vec![Err(err)],
        Err(err) => {
            tracing::debug!(error = %err, batch = cmds.len(), "batch failed; deducting one by one");
            let mut outcomes = Vec::with_capacity(cmds.len());
            for cmd in &cmds {
                let one = deduct_in_one_transaction(&writer, std::slice::from_ref(cmd)).await;
                outcomes.push(one.and_then(|mut o| o.pop().unwrap_or_else(|| Err(lost()))));
            }
            outcomes
        }
    }
}

fn lost() -> StoreError {
    StoreError::Internal("a deduction produced no outcome".into())
}

/// One transaction; per deduction, in order: the guarded decrement, which only applies when
/// the request_id has no record yet (the writer is the only connection that writes, so the
/// check and the decrement cannot race), then the idempotency record. A deduction that does
/// not apply writes nothing and answers from the record (replay, reused id, released) or from
/// the stock row (unknown sku, insufficient stock). `Err` = nothing of the batch committed.
async fn deduct_in_one_transaction(
    writer: &SqlitePool,
    cmds: &[DeductStock],
) -> Result<Vec<Outcome>, StoreError> {
    let now = now_ms();
    let mut tx = writer.begin().await?;
    let mut outcomes = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        let (rid, sku, qty) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get());
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity - ?1, updated_at_ms = ?2 \
             WHERE sku = ?3 AND quantity >= ?1 \
             AND NOT EXISTS (SELECT 1 FROM stock_requests WHERE request_id = ?4) \
             RETURNING quantity",
        )
        .bind(qty)
        .bind(now)
        .bind(sku)
        .bind(rid)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(remaining) = updated {
            sqlx::query(
                "INSERT INTO stock_requests (request_id, sku, quantity, state, remaining, created_at_ms) \
                 VALUES (?, ?, ?, 'deducted', ?, ?)",
            )
            .bind(rid)
            .bind(sku)
            .bind(qty)
            .bind(remaining)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            outcomes.push(Ok(Deducted { remaining, replayed: false }));
            continue;
        }
        // Nothing changed. A known id answers from its record, even when stock ran out since.
        if let Some(rec) = record(&mut tx, rid).await? {
            outcomes.push(rec.replay_deduct(cmd));
            continue;
        }
        outcomes.push(Err(match current_quantity(&mut tx, sku).await? {
            None => StoreError::NotFound(sku.to_string()),
            Some(available) => StoreError::Insufficient { sku: sku.to_string(), requested: qty, available },
        }));
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn record(
    tx: &mut sqlx::SqliteConnection,
    request_id: &str,
) -> Result<Option<RequestRecord>, sqlx::Error> {
    let row = sqlx::query("SELECT sku, quantity, state, remaining FROM stock_requests WHERE request_id = ?")
        .bind(request_id)
        .fetch_optional(tx)
        .await?;
    Ok(row.map(|r| RequestRecord { sku: r.get(0), quantity: r.get(1), state: r.get(2), remaining: r.get(3) }))
}

async fn current_quantity(tx: &mut sqlx::SqliteConnection, sku: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = ?").bind(sku).fetch_optional(tx).await
}

#[async_trait]
impl InventoryStore for SqliteStore {
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        self.deductions.deduct(cmd).await
    }

    async fn release(&self, cmd: &ReleaseStock) -> Result<Released, StoreError> {
        let (rid, sku, qty, now) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get(), now_ms());
        let mut tx = self.writer.begin().await?;
        let tombstone = sqlx::query(
            "INSERT INTO stock_requests (request_id, sku, quantity, state, remaining, created_at_ms) \
             VALUES (?, ?, ?, 'released', -1, ?) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(rid)
        .bind(sku)
        .bind(qty)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if tombstone == 1 {
            let remaining = current_quantity(&mut tx, sku).await?.unwrap_or(0);
            tx.commit().await?;
            return Ok(Released { released: false, remaining });
        }
        let row =
            sqlx::query("SELECT sku, quantity, state, remaining FROM stock_requests WHERE request_id = ?")
                .bind(rid)
                .fetch_one(&mut *tx)
                .await?;
        let rec =
            RequestRecord { sku: row.get(0), quantity: row.get(1), state: row.get(2), remaining: row.get(3) };
        rec.check_release(cmd)?;
        let flipped = sqlx::query(
            "UPDATE stock_requests SET state = 'released' WHERE request_id = ? AND state = 'deducted'",
        )
        .bind(rid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if flipped == 0 {
            let remaining = current_quantity(&mut tx, sku).await?.unwrap_or(0);
            tx.commit().await?;
            return Ok(Released { released: false, remaining });
        }
        let remaining: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity + ?, updated_at_ms = ? WHERE sku = ? RETURNING quantity",
        )
        .bind(qty)
        .bind(now)
        .bind(sku)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Released { released: true, remaining: remaining.unwrap_or(0) })
    }

    async fn get(&self, sku: &Sku) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = ?")
            .bind(sku.as_str())
            .fetch_optional(&self.reader)
            .await?
            .ok_or_else(|| StoreError::NotFound(sku.to_string()))
    }

    async fn set(&self, cmd: &SetStock) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO stock (sku, quantity, updated_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (sku) DO UPDATE SET quantity = excluded.quantity, updated_at_ms = excluded.updated_at_ms \
             RETURNING quantity",
        )
        .bind(cmd.sku.as_str())
        .bind(cmd.quantity.get())
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?)
    }

    async fn restock(&self, cmd: &Restock) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity + ?1, updated_at_ms = ?2 \
             WHERE sku = ?3 AND quantity <= ?4 - ?1 RETURNING quantity",
        )
        .bind(cmd.quantity.get())
        .bind(now_ms())
        .bind(cmd.sku.as_str())
        .bind(MAX_STOCK)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(q) = updated {
            tx.commit().await?;
            return Ok(q);
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT quantity FROM stock WHERE sku = ?")
            .bind(cmd.sku.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        Err(match exists {
            None => StoreError::NotFound(cmd.sku.to_string()),
            Some(_) => StoreError::WouldOverflow(cmd.sku.to_string()),
        })
    }

    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use ferry_service_common::testing::TempSqlite;

    use super::*;
    use crate::store::testing::{
        assert_only_the_poisoned_request_failed, deduct, mixed_batch, poisoned_batch, sku, stock_a5_b1,
    };

    async fn store() -> (SqliteStore, TempSqlite) {
        let dir = TempSqlite::new("inv.db");
        let url = dir.url();
        let store = SqliteStore::connect(&StoreOptions::new(url)).await.unwrap();
        stock_a5_b1(&store).await;
        (store, dir)
    }

    #[tokio::test]
    async fn one_batch_answers_every_request_on_its_own() {
        let (store, _dir) = store().await;
        store.deduct(&deduct("old", "a", 1)).await.unwrap();
        let (batch, expected) = mixed_batch();
        assert_eq!(deduct_batch(store.writer.clone(), batch).await, expected);
        assert_eq!(store.get(&sku("a")).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_request_that_breaks_the_batch_transaction_does_not_fail_the_others() {
        let (store, _dir) = store().await;
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON stock_requests WHEN NEW.request_id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        assert_only_the_poisoned_request_failed(&deduct_batch(store.writer.clone(), poisoned_batch()).await);
        // The poisoned deduction left nothing behind.
        assert_eq!(store.get(&sku("a")).await.unwrap(), 3);
    }
}
