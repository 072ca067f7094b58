//! The CreateOrder saga under concurrent retries and inventory outages, in process: order
//! replicas on 127.0.0.1:0 over SQLite or PostgreSQL, a real inventory service over in-memory
//! pipes. After every trial the books must balance: the stock taken equals the units of
//! CONFIRMED orders, exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_proto::order::v1::{OrderStatus, order_service_client::OrderServiceClient};
use order_service::{
    app::{self, ServeOptions},
    breaker::BreakerConfig,
    client::ClientSettings,
    retry::RetryPolicy,
    saga::SagaSettings,
    store as order_store,
};
use support::{Database, Inventory, StopOnDrop, eventually, is_settled, list_all, order, with_deadline};
use tonic::{Code, transport::Channel};

const LIMIT: Duration = Duration::from_secs(120);

fn client_settings(retry: RetryPolicy) -> ClientSettings {
    ClientSettings {
        retry,
        breaker: BreakerConfig { failure_threshold: 1000, open_for: Duration::from_secs(5) },
        token: None,
    }
}

/// One order-service replica in process.
struct Replica {
    client: OrderServiceClient<Channel>,
    _stop: StopOnDrop,
}

async fn replica(db: &Database, inventory: &Inventory, retry: RetryPolicy) -> Replica {
    let store = order_store::open(&db.store_options()).await.unwrap();
    let server = ferry_service_common::app::ServeOptions {
        request_timeout: Duration::from_secs(60),
        ..ferry_service_common::app::ServeOptions::local()
    };
    let stop = server.shutdown.clone();
    let running = app::start(
        store,
        ServeOptions {
            server,
            inventory: inventory.channel.clone(),
            client: client_settings(retry),
            compensation_timeout: Duration::from_secs(5),
            sagas: SagaSettings::default(),
            events: None,
        },
    )
    .await
    .unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    Replica { client: OrderServiceClient::new(channel), _stop: StopOnDrop(stop) }
}

/// Retries' client deadlines, in ms, and how long after the first call each is sent.
const RETRIES: [(u64, u64); 5] = [(40, 5), (10, 1), (80, 12), (25, 20), (60, 35)];
const LINES: usize = 50;
const STOCK: i64 = 1_000;

/// One trial: a 50-line order with a long deadline, and retries of its request_id with short
/// deadlines while it runs, spread over `replicas`. Then checks the books.
async fn retry_storm_trial(trial: usize, replicas: &[Replica], inventory: &Inventory) {
    let sku = format!("t{trial}");
    inventory.set(&sku, STOCK).await;
    let items: Vec<(&str, i64)> = vec![(sku.as_str(), 1); LINES];
    let request = order(&format!("storm-{trial}"), "storm", &items);
    let first = {
        let (mut c, r) = (replicas[0].client.clone(), request.clone());
        tokio::spawn(async move { c.create_order(with_deadline(r, Duration::from_secs(30))).await })
    };
    let retries: Vec<_> = RETRIES
        .iter()
        .enumerate()
        .map(|(i, &(deadline_ms, after_ms))| {
            let (mut c, r) = (replicas[(i + 1) % replicas.len()].client.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                c.create_order(with_deadline(r, Duration::from_millis(deadline_ms))).await
            })
        })
        .collect();
    for r in retries {
        // A retry may win, time out, or be told the order is still being processed.
        let _ = r.await.unwrap();
    }
    let first = first.await.unwrap();
    let request_id = request.request_id.clone();
    let find = || async {
        let orders = list_all(&replicas[0].client, "storm").await;
        orders.into_iter().find(|o| o.request_id == request_id).expect("the order was stored")
    };
    eventually("the order to settle", Duration::from_secs(30), || async {
        is_settled(find().await.status())
    })
    .await;
    inventory.quiet().await;
    let settled = find().await;
    let taken = STOCK - inventory.stock(&sku).await;
    let confirmed_units = if settled.status() == OrderStatus::Confirmed { LINES as i64 } else { 0 };
    assert_eq!(
        taken,
        confirmed_units,
        "trial {trial}: order is {:?} ({}), but {taken} units were taken",
        settled.status(),
        settled.failure_reason
    );
    // Stock is plentiful, so nothing may fail the order; the caller that waited gets it.
    assert_eq!(settled.status(), OrderStatus::Confirmed, "trial {trial}: {}", settled.failure_reason);
    let answered =
        first.unwrap_or_else(|s| panic!("trial {trial}: the call with a 30 s deadline failed: {s:?}"));
    assert_eq!(answered.into_inner().order.unwrap().status(), OrderStatus::Confirmed);
}

/// Checks every trial's books once more after all of them: a late compensation from an
/// earlier trial would show up here.
async fn books_balance_at_the_end(trials: usize, replicas: &[Replica], inventory: &Inventory) {
    inventory.quiet().await;
    let orders = list_all(&replicas[0].client, "storm").await;
    assert_eq!(orders.len(), trials, "one order per request_id");
    for o in orders {
        let sku = &o.items[0].sku;
        let taken = STOCK - inventory.stock(sku).await;
        let confirmed = if o.status() == OrderStatus::Confirmed { LINES as i64 } else { 0 };
        assert_eq!(taken, confirmed, "order {} for {sku} is {:?}: {taken} taken", o.request_id, o.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_running_order_with_short_deadlines_never_unbalance_the_books() {
    tokio::time::timeout(LIMIT, async {
        let inventory = Inventory::start().await;
        let db = Database::sqlite();
        let replicas = [replica(&db, &inventory, RetryPolicy::default()).await];
        const TRIALS: usize = 20;
        for trial in 0..TRIALS {
            retry_storm_trial(trial, &replicas, &inventory).await;
        }
        books_balance_at_the_end(TRIALS, &replicas, &inventory).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spread_over_two_replicas_on_one_postgres_never_unbalance_the_books() {
    let Some(db) = Database::postgres("two order replicas on PostgreSQL under a retry storm") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let inventory = Inventory::start().await;
        let replicas = [
            replica(&db, &inventory, RetryPolicy::default()).await,
            replica(&db, &inventory, RetryPolicy::default()).await,
        ];
        const TRIALS: usize = 20;
        for trial in 0..TRIALS {
            retry_storm_trial(trial, &replicas, &inventory).await;
        }
        books_balance_at_the_end(TRIALS, &replicas, &inventory).await;
    })
    .await
    .expect("test timed out");
}

/// The outside client's reproduction: one attempt of 300 ms per inventory call, and inventory
/// stalls past it. The order must stay PENDING (nothing failed for a business reason), the
/// caller must be told to retry, and the retry must confirm it once inventory answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_stall_leaves_the_order_pending_and_a_retry_confirms_it() {
    tokio::time::timeout(LIMIT, async {
        let inventory = Inventory::start().await;
        inventory.set("a", 1_000_000).await;
        let db = Database::sqlite();
        let retry = RetryPolicy {
            max_attempts: 1,
            attempt_timeout: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let r = replica(&db, &inventory, retry).await;
        inventory.store.hold_all();
        let request = order("stall-1", "stall", &[("a", 1)]);
        let err = r
            .client
            .clone()
            .create_order(with_deadline(request.clone(), Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
            "an infrastructure failure answers a retryable code: {err:?}"
        );
        let stored = list_all(&r.client, "stall").await;
        assert_eq!(stored.len(), 1);
        assert_eq!(
            stored[0].status(),
            OrderStatus::Pending,
            "an inventory stall is not a business failure: {}",
            stored[0].failure_reason
        );
        inventory.store.release_hold();
        let retried = r.client.clone().create_order(with_deadline(request, Duration::from_secs(10))).await;
        let confirmed = retried.expect("the retry resumes the order").into_inner().order.unwrap();
        assert_eq!(confirmed.status(), OrderStatus::Confirmed);
        inventory.quiet().await;
        assert_eq!(inventory.stock("a").await, 1_000_000 - 1);
    })
    .await
    .expect("test timed out");
}

/// The saga is not bound to its caller's deadline: a caller that gives up gets
/// DEADLINE_EXCEEDED, and the order is confirmed anyway, with no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_deadline_passes_leaves_the_order_to_finish_without_it() {
    tokio::time::timeout(LIMIT, async {
        let inventory = Inventory::start().await;
        inventory.set("a", 10).await;
        let db = Database::sqlite();
        let r = replica(&db, &inventory, RetryPolicy::default()).await;
        inventory.store.hold_all();
        let request = order("impatient-1", "impatient", &[("a", 2), ("a", 3)]);
        let err = r
            .client
            .clone()
            .create_order(with_deadline(request, Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
        inventory.store.release_hold();
        eventually("the order to be confirmed without its caller", Duration::from_secs(20), || async {
            list_all(&r.client, "impatient")
                .await
                .first()
                .is_some_and(|o| o.status() == OrderStatus::Confirmed)
        })
        .await;
        inventory.quiet().await;
        assert_eq!(inventory.stock("a").await, 5);
    })
    .await
    .expect("test timed out");
}
