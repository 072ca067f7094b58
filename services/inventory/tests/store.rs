//! Store contract tests, run against SQLite and (when `FERRY_TEST_POSTGRES_URL` is set) a real
//! PostgreSQL; each test gets its own database file or schema, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use ferry_proto::domain::{
    DeductStock, Quantity, ReleaseStock, RequestId, Restock, SetStock, Sku, StockLevel,
};
use ferry_service_common::testing::TempSqlite;
use inventory_service::store::{self, Deducted, InventoryStore, StoreError, StoreOptions};

struct Backend {
    store: Arc<dyn InventoryStore>,
    _dir: Option<TempSqlite>,
}

async fn sqlite() -> Backend {
    let db = TempSqlite::new("inv.db");
    Backend { store: store::open(&StoreOptions::new(db.url())).await.unwrap(), _dir: Some(db) }
}

async fn postgres() -> Option<Backend> {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        println!("SKIPPED: PostgreSQL store test (FERRY_TEST_POSTGRES_URL is not set; `make test` sets it)");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let opts = StoreOptions { pg_schema: Some(schema), max_connections: 8, ..StoreOptions::new(url) };
    Some(Backend { store: store::open(&opts).await.expect("connect to FERRY_TEST_POSTGRES_URL"), _dir: None })
}

fn sku(s: &str) -> Sku {
    Sku::parse("sku", s).unwrap()
}

fn deduct(id: &str, s: &str, q: i64) -> DeductStock {
    DeductStock {
        request_id: RequestId::parse("r", id).unwrap(),
        sku: sku(s),
        quantity: Quantity::parse("q", q).unwrap(),
    }
}

fn release(id: &str, s: &str, q: i64) -> ReleaseStock {
    ReleaseStock {
        request_id: RequestId::parse("r", id).unwrap(),
        sku: sku(s),
        quantity: Quantity::parse("q", q).unwrap(),
    }
}

async fn set(store: &dyn InventoryStore, s: &str, q: i64) {
    store.set(&SetStock { sku: sku(s), quantity: StockLevel::parse("q", q).unwrap() }).await.unwrap();
}

async fn same_request_id_twice_deducts_once(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 10).await;
    let first = store.deduct(&deduct("r1", "a", 3)).await.unwrap();
    let second = store.deduct(&deduct("r1", "a", 3)).await.unwrap();
    assert_eq!(first, Deducted { remaining: 7, replayed: false });
    assert_eq!(second, Deducted { remaining: 7, replayed: true });
    assert_eq!(store.get(&sku("a")).await.unwrap(), 7);
}

async fn concurrent_calls_with_one_request_id_deduct_once(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 100).await;
    let calls = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.deduct(&deduct("same", "a", 5)).await })
    });
    let results = futures::future::join_all(calls).await;
    let ok: Vec<Deducted> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(ok.iter().filter(|d| !d.replayed).count(), 1);
    assert!(ok.iter().all(|d| d.remaining == 95));
    assert_eq!(store.get(&sku("a")).await.unwrap(), 95);
}

async fn two_hundred_concurrent_deductions_never_oversell(store: Arc<dyn InventoryStore>) {
    let initial = 150;
    set(&*store, "hot", initial).await;
    let calls = (0..200).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.deduct(&deduct(&format!("d{i}"), "hot", 1)).await })
    });
    let results = futures::future::join_all(calls).await;
    let mut successes = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => successes += 1,
            Err(StoreError::Insufficient { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    let left = store.get(&sku("hot")).await.unwrap();
    assert_eq!(left, initial - successes);
    assert_eq!(successes, initial, "every unit should sell, and no more");
}

async fn reused_request_id_with_a_different_payload_is_rejected(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 10).await;
    set(&*store, "b", 10).await;
    store.deduct(&deduct("r1", "a", 1)).await.unwrap();
    assert_eq!(store.deduct(&deduct("r1", "a", 2)).await, Err(StoreError::RequestIdReused("r1".into())));
    assert_eq!(store.deduct(&deduct("r1", "b", 1)).await, Err(StoreError::RequestIdReused("r1".into())));
    assert_eq!(store.get(&sku("a")).await.unwrap(), 9);
    assert_eq!(store.get(&sku("b")).await.unwrap(), 10);
}

async fn insufficient_stock_changes_nothing_and_is_not_recorded(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 2).await;
    let err = store.deduct(&deduct("r1", "a", 3)).await.unwrap_err();
    assert_eq!(err, StoreError::Insufficient { sku: "a".into(), requested: 3, available: 2 });
    assert_eq!(store.get(&sku("a")).await.unwrap(), 2);
    // Not recorded: once restocked, the same id may succeed.
    store.restock(&Restock { sku: sku("a"), quantity: Quantity::parse("q", 1).unwrap() }).await.unwrap();
    assert_eq!(store.deduct(&deduct("r1", "a", 3)).await.unwrap().remaining, 0);
}

async fn unknown_sku_is_not_found(store: Arc<dyn InventoryStore>) {
    assert_eq!(store.deduct(&deduct("r1", "nope", 1)).await, Err(StoreError::NotFound("nope".into())));
    assert_eq!(store.get(&sku("nope")).await, Err(StoreError::NotFound("nope".into())));
    let err = store.restock(&Restock { sku: sku("nope"), quantity: Quantity::parse("q", 1).unwrap() }).await;
    assert_eq!(err, Err(StoreError::NotFound("nope".into())));
}

async fn release_gives_stock_back_exactly_once(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 10).await;
    store.deduct(&deduct("r1", "a", 4)).await.unwrap();
    let first = store.release(&release("r1", "a", 4)).await.unwrap();
    let second = store.release(&release("r1", "a", 4)).await.unwrap();
    assert!(first.released && !second.released);
    assert_eq!(first.remaining, 10);
    assert_eq!(store.get(&sku("a")).await.unwrap(), 10);
    // A release with a different payload than the deduction is refused.
    store.deduct(&deduct("r2", "a", 1)).await.unwrap();
    assert_eq!(store.release(&release("r2", "a", 5)).await, Err(StoreError::RequestIdReused("r2".into())));
}

async fn concurrent_releases_give_stock_back_once(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 10).await;
    store.deduct(&deduct("r1", "a", 4)).await.unwrap();
    let calls = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.release(&release("r1", "a", 4)).await })
    });
    let released = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().as_ref().unwrap().released)
        .count();
    assert_eq!(released, 1);
    assert_eq!(store.get(&sku("a")).await.unwrap(), 10);
}

async fn release_before_the_deduction_blocks_a_late_deduction(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 10).await;
    let r = store.release(&release("late", "a", 2)).await.unwrap();
    assert!(!r.released);
    assert_eq!(store.deduct(&deduct("late", "a", 2)).await, Err(StoreError::AlreadyReleased("late".into())));
    assert_eq!(store.get(&sku("a")).await.unwrap(), 10);
}

async fn replay_after_stock_ran_out_answers_the_original_result(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 1).await;
    store.deduct(&deduct("r1", "a", 1)).await.unwrap();
    assert_eq!(store.deduct(&deduct("r1", "a", 1)).await, Ok(Deducted { remaining: 0, replayed: true }));
}

async fn restock_refuses_to_exceed_the_maximum(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", ferry_proto::domain::MAX_STOCK).await;
    let err = store.restock(&Restock { sku: sku("a"), quantity: Quantity::parse("q", 1).unwrap() }).await;
    assert_eq!(err, Err(StoreError::WouldOverflow("a".into())));
}

async fn concurrent_good_and_bad_deductions_are_answered_each_on_their_own(store: Arc<dyn InventoryStore>) {
    set(&*store, "a", 1000).await;
    store.deduct(&deduct("taken", "a", 1)).await.unwrap();
    // Racing calls land in shared batches; each must get its own answer.
    let calls = (0..120).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let cmd = match i % 4 {
                0 | 1 => deduct(&format!("ok{i}"), "a", 1),
                2 => deduct(&format!("missing{i}"), "nope", 1),
                _ => deduct("taken", "a", 2),
            };
            (i % 4, store.deduct(&cmd).await)
        })
    });
    let mut executed = 0;
    for r in futures::future::join_all(calls).await {
        match r.unwrap() {
            (0 | 1, Ok(d)) => {
                assert!(!d.replayed);
                executed += 1;
            }
            (2, Err(StoreError::NotFound(s))) => assert_eq!(s, "nope"),
            (3, Err(StoreError::RequestIdReused(id))) => assert_eq!(id, "taken"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(executed, 60);
    assert_eq!(store.get(&sku("a")).await.unwrap(), 1000 - 1 - 60);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let b = super::sqlite().await;
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(b.store.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(b) = super::postgres().await else { return };
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(b.store.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
    };
}

contract!(
    same_request_id_twice_deducts_once,
    concurrent_calls_with_one_request_id_deduct_once,
    two_hundred_concurrent_deductions_never_oversell,
    reused_request_id_with_a_different_payload_is_rejected,
    insufficient_stock_changes_nothing_and_is_not_recorded,
    unknown_sku_is_not_found,
    release_gives_stock_back_exactly_once,
    concurrent_releases_give_stock_back_once,
    release_before_the_deduction_blocks_a_late_deduction,
    replay_after_stock_ran_out_answers_the_original_result,
    restock_refuses_to_exceed_the_maximum,
    concurrent_good_and_bad_deductions_are_answered_each_on_their_own,
);

#[tokio::test]
async fn sqlite_database_is_created_in_a_missing_data_dir() {
    let db = TempSqlite::new("nested/deeper/inv.db");
    let store = store::open(&StoreOptions::new(db.url())).await.unwrap();
    assert!(store.ping().await);
    let _ = Duration::ZERO;
}
