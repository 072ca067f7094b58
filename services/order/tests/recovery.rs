//! The real `order-service` binary killed with SIGKILL in the middle of its sagas: every order
//! it left PENDING must settle with no client retry, by the restarted process (SQLite) or by
//! the surviving replica (PostgreSQL, two replicas). Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use ferry_proto::order::v1::{OrderStatus, order_service_client::OrderServiceClient};
use support::{
    Database, Inventory, eventually, is_settled, list_all, order,
    process::{OrderProcess, sample},
    with_deadline,
};
use tonic::transport::Channel;

const ORDERS: usize = 12;
const CUSTOMER: &str = "crash";

/// Recovery settings short enough for a test (flags read from the environment too).
const FAST_RECOVERY: &[(&str, &str)] = &[("ORDER_LEASE_MS", "1500"), ("RECOVERY_INTERVAL_MS", "200")];

/// Order `i`: "fast" then "slow" (held by inventory), and every odd one also more "scarce"
/// units than there are, so it must fail and give back what it took.
fn items(i: usize) -> Vec<(&'static str, i64)> {
    let mut items = vec![("fast", 1), ("slow", 1)];
    if i % 2 == 1 {
        items.push(("scarce", 10));
    }
    items
}

/// Sends the orders to `victim`, waits until every one of them is held in inventory (mid-saga:
/// "fast" taken, "slow" in flight), then kills the victim with SIGKILL and lets inventory go.
async fn kill_mid_saga(inventory: &Inventory, victim: &mut OrderProcess) {
    inventory.set("fast", 1_000).await;
    inventory.set("slow", 1_000).await;
    inventory.set("scarce", 5).await;
    inventory.store.hold_sku("slow");
    let client = victim.serving().await;
    let calls: Vec<_> = (0..ORDERS)
        .map(|i| {
            let mut c = client.clone();
            let req = order(&format!("crash-{i}"), CUSTOMER, &items(i));
            tokio::spawn(async move { c.create_order(with_deadline(req, Duration::from_secs(60))).await })
        })
        .collect();
    eventually("every order to be mid-saga", Duration::from_secs(30), || async {
        inventory.store.held.load(Ordering::SeqCst) >= ORDERS
    })
    .await;
    victim.kill();
    inventory.store.release_hold();
    for call in calls {
        let cut = call.await.unwrap();
        assert!(cut.is_err(), "the killed server cannot have answered: {cut:?}");
    }
}

/// Waits for every order to settle through `client` (no CreateOrder is retried), then checks
/// the outcome of each and the books.
async fn every_order_settles(client: &OrderServiceClient<Channel>, inventory: &Inventory) {
    eventually("every order to settle without a client retry", Duration::from_secs(60), || async {
        let orders = list_all(client, CUSTOMER).await;
        orders.len() == ORDERS && orders.iter().all(|o| is_settled(o.status()))
    })
    .await;
    inventory.quiet().await;
    let orders = list_all(client, CUSTOMER).await;
    let mut confirmed = 0;
    for o in &orders {
        let i: usize = o.request_id.trim_start_matches("crash-").parse().unwrap();
        let expected = if i % 2 == 1 { OrderStatus::Failed } else { OrderStatus::Confirmed };
        assert_eq!(o.status(), expected, "{}: {}", o.request_id, o.failure_reason);
        confirmed += i64::from(o.status() == OrderStatus::Confirmed);
    }
    assert_eq!(1_000 - inventory.stock("fast").await, confirmed, "fast: taken == confirmed units");
    assert_eq!(1_000 - inventory.stock("slow").await, confirmed, "slow: taken == confirmed units");
    assert_eq!(inventory.stock("scarce").await, 5, "scarce was never taken");
}

/// The recoverer's metrics on `replica`: nothing pending in the end, and it did the work.
async fn recoverer_reports_no_pending_orders(replica: &OrderProcess) {
    eventually("orders_pending to reach 0", Duration::from_secs(10), || async {
        sample(&replica.metrics().await, "orders_pending") == Some(0.0)
    })
    .await;
    let page = replica.metrics().await;
    assert!(sample(&page, "orders_oldest_pending_age_seconds").is_some(), "{page}");
    let recovered = sample(&page, "order_recoveries_total").unwrap_or(0.0);
    assert!(recovered >= ORDERS as f64, "order_recoveries_total = {recovered}:\n{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_left_pending_by_a_killed_process_settle_after_it_restarts_on_sqlite() {
    let inventory = Inventory::start_tcp().await;
    let inventory_addr = inventory.addr.unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let args =
        ["--auth-disabled", "--inventory-addr", &inventory_addr, "--data-dir", data.path().to_str().unwrap()];
    let mut first = OrderProcess::spawn(&args, FAST_RECOVERY);
    kill_mid_saga(&inventory, &mut first).await;
    let restarted = OrderProcess::spawn(&args, FAST_RECOVERY);
    let client = restarted.serving().await;
    every_order_settles(&client, &inventory).await;
    recoverer_reports_no_pending_orders(&restarted).await;
}

/// `url` with PostgreSQL's `search_path` set to `schema` (libpq's `options` parameter).
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_left_pending_by_a_killed_replica_are_settled_by_the_other_replica_on_postgres() {
    let Some(db) = Database::postgres("order recovery across two replicas on PostgreSQL") else { return };
    let Database::Postgres { url, schema } = &db else { unreachable!() };
    // Creates the schema and runs the migrations once, before the replicas race to.
    drop(order_service::store::open(&db.store_options()).await.expect("connect to PostgreSQL"));
    let inventory = Inventory::start_tcp().await;
    let inventory_addr = inventory.addr.unwrap().to_string();
    let database_url = with_search_path(url, schema);
    let args = ["--auth-disabled", "--inventory-addr", &inventory_addr, "--database-url", &database_url];
    let mut victim = OrderProcess::spawn(&args, FAST_RECOVERY);
    let survivor = OrderProcess::spawn(&args, FAST_RECOVERY);
    let client = survivor.serving().await;
    kill_mid_saga(&inventory, &mut victim).await;
    every_order_settles(&client, &inventory).await;
    recoverer_reports_no_pending_orders(&survivor).await;
}
