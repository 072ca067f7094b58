//! PostgreSQL backend.
//!
//! NB: a hot sku is one hot row; a hundred sessions fighting over its row lock are several
//! times slower than a few taking turns. Writes to the same sku therefore queue on an
//! in-process striped lock before they take a connection, so at most one transaction per
//! stripe contends for the row, and the others wait cheaply (and do not hold connections).
//!
//! Deductions go further: they queue in one of a few [`Lane`]s by sku, and each lane's writer
//! runs everything that queued up while it was busy as one transaction of a constant number
//! of statements: lock the batch's stock rows (`FOR UPDATE`, in sku order), read the records
//! of its request_ids, decide each deduction in arrival order against those locked rows, then
//! apply one guarded `UPDATE` per sku and insert all new idempotency records in one statement.
//! A hot row is then locked once per batch instead of once per request, and one commit (one
//! WAL flush) carries the whole batch. If anything in that transaction does not go as
//! decided (a request_id inserted concurrently by another process, a deadlock), it rolls back
//! and each deduction runs on its own in the per-request transaction.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use async_trait::async_trait;
use ferry_proto::domain::{DeductStock, MAX_STOCK, ReleaseStock, Restock, SetStock, Sku};
use ferry_service_common::db::{self, Migrator};
use sqlx::{PgPool, Row};
use tokio::sync::Mutex;

use super::{
    Deducted, InventoryStore, Released, RequestRecord, StoreError, StoreOptions,
    batch::{Lane, Outcome},
    now_ms,
};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

const STRIPES: usize = 256;
/// Deduction lanes (writer tasks); each holds at most one connection at a time.
const LANES: usize = 8;

/// See the module docs.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    stripes: Vec<Mutex<()>>,
    lanes: Vec<Lane>,
}

impl PgStore {
    /// Connects, creates the schema if one is configured, and runs migrations.
    pub async fn connect(opts: &StoreOptions) -> Result<Self, StoreError> {
        let pool = db::open_postgres(opts, &MIGRATIONS).await?;
        let lanes = (0..LANES)
            .map(|_| {
                let pool = pool.clone();
                Lane::spawn(move |cmds| deduct_batch(pool.clone(), cmds))
            })
            .collect();
        Ok(Self { pool, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), lanes })
    }

    fn stripe(&self, sku: &str) -> &Mutex<()> {
        &self.stripes[lane_of(sku, STRIPES)]
    }
}

fn lane_of(sku: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    sku.hash(&mut h);
    usize::try_from(h.finish() % n.max(1) as u64).unwrap_or(0)
}

async fn record(pool: &PgPool, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
    let row = sqlx::query("SELECT sku, quantity, state, remaining FROM stock_requests WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| RequestRecord { sku: r.get(0), quantity: r.get(1), state: r.get(2), remaining: r.get(3) }))
}

/// Runs a lane's batch: one request alone in the per-request transaction; several in one
/// batch transaction, or, if that fails as a whole, each in its own per-request transaction.
async fn deduct_batch(pool: PgPool, cmds: Vec<DeductStock>) -> Vec<Outcome> {
    if let [cmd] = cmds.as_slice() {
        return vec![deduct_one(&pool, cmd).await];
    }
    match deduct_in_one_transaction(&pool, &cmds).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::debug!(error = %err, batch = cmds.len(), "batch rolled back; deducting one by one");
            let mut outcomes = Vec::with_capacity(cmds.len());
            for cmd in &cmds {
                outcomes.push(deduct_one(&pool, cmd).await);
            }
            outcomes
        }
    }
}

/// See the module docs. `Err` = the transaction rolled back and nothing of the batch changed.
async fn deduct_in_one_transaction(pool: &PgPool, cmds: &[DeductStock]) -> Result<Vec<Outcome>, StoreError> {
    let now = now_ms();
    let mut skus: Vec<&str> = cmds.iter().map(|c| c.sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();
    let ids: Vec<&str> = cmds.iter().map(|c| c.request_id.as_str()).collect();
    let mut tx = pool.begin().await?;
    let mut stock: HashMap<String, (i64, i64)> = sqlx::query_as::<_, (String, i64)>(
        "SELECT sku, quantity FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(&skus)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(sku, q)| (sku, (q, q)))
    .collect();
    let mut records: HashMap<String, RequestRecord> = sqlx::query(
        "SELECT request_id, sku, quantity, state, remaining FROM stock_requests WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        let rec = RequestRecord { sku: r.get(1), quantity: r.get(2), state: r.get(3), remaining: r.get(4) };
        (r.get::<String, _>(0), rec)
    })
    .collect();

    // Decide each deduction in arrival order against the locked quantities.
    let mut outcomes = Vec::with_capacity(cmds.len());
    let (mut new_ids, mut new_skus, mut new_qty, mut new_remaining) = (vec![], vec![], vec![], vec![]);
    for cmd in cmds {
        let (rid, sku, qty) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get());
        if let Some(rec) = records.get(rid) {
            outcomes.push(rec.replay_deduct(cmd));
            continue;
        }
        let outcome = match stock.get_mut(sku) {
            None => Err(StoreError::NotFound(sku.to_string())),
            Some((_, available)) if *available < qty => {
                Err(StoreError::Insufficient { sku: sku.to_string(), requested: qty, available: *available })
            }
            Some((_, available)) => {
                *available -= qty;
                let remaining = *available;
                records.insert(
                    rid.to_string(),
                    RequestRecord {
                        sku: sku.to_string(),
                        quantity: qty,
                        state: "deducted".into(),
                        remaining,
                    },
                );
                new_ids.push(rid);
                new_skus.push(sku);
                new_qty.push(qty);
                new_remaining.push(remaining);
                Ok(Deducted { remaining, replayed: false })
            }
        };
        outcomes.push(outcome);
    }
    if new_ids.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }

    // One guarded decrement per sku (the row lock makes the guard hold; it stays as a check).
    let (upd_skus, upd_totals): (Vec<&str>, Vec<i64>) = stock
        .iter()
        .filter(|(_, (before, after))| before != after)
        .map(|(sku, (before, after))| (sku.as_str(), before - after))
        .unzip();
    let updated = sqlx::query(
        "UPDATE stock AS s SET quantity = s.quantity - d.total, updated_at_ms = $3 \
         FROM UNNEST($1::text[], $2::bigint[]) AS d(sku, total) \
         WHERE s.sku = d.sku AND s.quantity >= d.total",
    )
    .bind(&upd_skus)
    .bind(&upd_totals)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated != upd_skus.len() as u64 {
        return Err(StoreError::Internal(format!(
            "locked stock rows changed: {updated} of {} guarded decrements applied",
            upd_skus.len()
        )));
    }
    // A request_id being inserted by a concurrent transaction (another process) makes this
    // wait for it; if that one commits, fewer rows insert and the batch rolls back.
    let inserted = sqlx::query(
        "INSERT INTO stock_requests (request_id, sku, quantity, state, remaining, created_at_ms) \
         SELECT r, s, q, 'deducted', m, $5 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(r, s, q, m) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&new_ids)
    .bind(&new_skus)
    .bind(&new_qty)
    .bind(&new_remaining)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted != new_ids.len() as u64 {
        return Err(StoreError::Unavailable(format!(
            "{} of {} request_ids were recorded concurrently",
            new_ids.len() as u64 - inserted,
            new_ids.len()
        )));
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// One deduction in its own transaction: guarded `UPDATE`, then the idempotency record.
async fn deduct_one(pool: &PgPool, cmd: &DeductStock) -> Result<Deducted, StoreError> {
    let (rid, sku, qty, now) = (cmd.request_id.as_str(), cmd.sku.as_str(), cmd.quantity.get(), now_ms());
    let mut tx = pool.begin().await?;
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
        // A replay of an earlier success must answer as before even when stock ran out since.
        if let Some(rec) = record(pool, rid).await? {
            return rec.replay_deduct(cmd);
        }
        return Err(match available {
            None => StoreError::NotFound(sku.to_string()),
            Some(available) => StoreError::Insufficient { sku: sku.to_string(), requested: qty, available },
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
        let rec = record(pool, rid)
            .await?
            .ok_or_else(|| StoreError::Internal(format!("request `{rid}` conflicted but has no record")))?;
        return rec.replay_deduct(cmd);
    }
    tx.commit().await?;
    Ok(Deducted { remaining, replayed: false })
}

#[async_trait]
impl InventoryStore for PgStore {
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        self.lanes[lane_of(cmd.sku.as_str(), self.lanes.len())].deduct(cmd).await
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::testing::{
        assert_only_the_poisoned_request_failed, deduct, mixed_batch, poisoned_batch, sku, stock_a5_b1,
    };

    /// A store in a fresh schema, with `a` = 5 and `b` = 1; `None` without a server.
    async fn store() -> Option<PgStore> {
        let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            println!("SKIPPED: PostgreSQL batch test (FERRY_TEST_POSTGRES_URL is not set)");
            return None;
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let opts = StoreOptions { pg_schema: Some(schema), max_connections: 4, ..StoreOptions::new(url) };
        let store = PgStore::connect(&opts).await.expect("connect to FERRY_TEST_POSTGRES_URL");
        stock_a5_b1(&store).await;
        Some(store)
    }

    #[tokio::test]
    async fn one_batch_answers_every_request_on_its_own() {
        let Some(store) = store().await else { return };
        store.deduct(&deduct("old", "a", 1)).await.unwrap();
        let (batch, expected) = mixed_batch();
        assert_eq!(deduct_in_one_transaction(&store.pool, &batch).await.unwrap(), expected);
        assert_eq!(store.get(&sku("a")).await.unwrap(), 0);
        // Each executed deduction has its own record: r1 and r4 replay with their own answers.
        assert_eq!(store.deduct(&deduct("r1", "a", 2)).await, Ok(Deducted { remaining: 2, replayed: true }));
        assert_eq!(store.deduct(&deduct("r4", "a", 2)).await, Ok(Deducted { remaining: 0, replayed: true }));
    }

    #[tokio::test]
    async fn a_request_that_breaks_the_batch_transaction_does_not_fail_the_others() {
        let Some(store) = store().await else { return };
        sqlx::raw_sql(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.request_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON stock_requests FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        assert_only_the_poisoned_request_failed(&deduct_batch(store.pool.clone(), poisoned_batch()).await);
        // The poisoned deduction left nothing behind.
        assert_eq!(store.get(&sku("a")).await.unwrap(), 3);
    }
}
