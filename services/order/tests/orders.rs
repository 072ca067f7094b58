//! The order service end to end against a real in-process inventory service, plus the
//! inventory client's retries and circuit breaker over an in-memory transport (paused clock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_trait::async_trait;
use ferry_proto::{
    domain::{DeductStock, ReleaseStock, Restock, SetStock, Sku},
    inventory::v1::{
        DeductStockRequest, GetStockRequest, SetStockRequest,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, OrderItem, OrderStatus,
        order_service_client::OrderServiceClient,
    },
};
use ferry_service_common::testing::TempSqlite;
use inventory_service::{
    store::{Deducted, InventoryStore, Released, StoreError},
    testing::FaultyStore,
};
use order_service::{
    app::{self, ServeOptions},
    breaker::BreakerConfig,
    client::{ClientMetrics, ClientSettings, InventoryClient},
    retry::RetryPolicy,
    store::{self as order_store, StoreOptions},
};
use support::over_duplex;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

const LIMIT: Duration = Duration::from_secs(30);

async fn flaky_inventory_store(db: &TempSqlite) -> Arc<FaultyStore> {
    let inner =
        inventory_service::store::open(&inventory_service::store::StoreOptions::new(db.url())).await.unwrap();
    FaultyStore::new(inner)
}

struct Shop {
    orders: OrderServiceClient<Channel>,
    inventory: InventoryServiceClient<Channel>,
    flaky: Arc<FaultyStore>,
    shutdown: CancellationToken,
    _dirs: (TempSqlite, TempSqlite),
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn client_settings() -> ClientSettings {
    ClientSettings {
        retry: RetryPolicy { base_backoff: Duration::from_millis(1), ..RetryPolicy::default() },
        breaker: BreakerConfig { failure_threshold: 50, open_for: Duration::from_secs(5) },
        token: None,
    }
}

async fn shop() -> Shop {
    let inv_dir = TempSqlite::new("inv.db");
    let flaky = flaky_inventory_store(&inv_dir).await;
    let inventory_channel = over_duplex(flaky.clone());
    let ord_dir = TempSqlite::new("orders.db");
    let store = order_store::open(&StoreOptions::new(ord_dir.url())).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = app::start(
        store,
        ServeOptions {
            server: ferry_service_common::app::ServeOptions {
                shutdown: shutdown.clone(),
                ..ferry_service_common::app::ServeOptions::local()
            },
            inventory: inventory_channel.clone(),
            client: client_settings(),
            compensation_timeout: Duration::from_secs(5),
            sagas: order_service::saga::SagaSettings::default(),
            events: None,
        },
    )
    .await
    .unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    Shop {
        orders: OrderServiceClient::new(channel),
        inventory: InventoryServiceClient::new(inventory_channel),
        flaky,
        shutdown,
        _dirs: (inv_dir, ord_dir),
    }
}

impl Shop {
    async fn set(&self, sku: &str, quantity: i64) {
        self.inventory.clone().set_stock(SetStockRequest { sku: sku.into(), quantity }).await.unwrap();
    }
    async fn stock(&self, sku: &str) -> i64 {
        self.inventory
            .clone()
            .get_stock(GetStockRequest { sku: sku.into() })
            .await
            .unwrap()
            .into_inner()
            .quantity
    }
}

fn order(request_id: &str, customer: &str, items: &[(&str, i64)]) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        customer_id: customer.into(),
        items: items.iter().map(|(s, q)| OrderItem { sku: (*s).into(), quantity: *q }).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_order_deducts_every_item_and_confirms() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 10).await;
        s.set("b", 10).await;
        let o = s
            .orders
            .clone()
            .create_order(order("r1", "c1", &[("a", 2), ("b", 3)]))
            .await
            .unwrap()
            .into_inner();
        let o = o.order.unwrap();
        assert_eq!(o.status(), OrderStatus::Confirmed);
        assert_eq!((s.stock("a").await, s.stock("b").await), (8, 7));
        let got = s.orders.clone().get_order(GetOrderRequest { order_id: o.order_id.clone() }).await.unwrap();
        assert_eq!(got.into_inner().order.unwrap(), o);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_item_releases_what_was_taken_and_names_the_sku() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 10).await;
        s.set("b", 1).await;
        s.set("c", 10).await;
        let err = s
            .orders
            .clone()
            .create_order(order("r1", "c1", &[("a", 2), ("b", 5), ("c", 1)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("`b`"), "{}", err.message());
        assert_eq!((s.stock("a").await, s.stock("b").await, s.stock("c").await), (10, 1, 10));
        let listed = s
            .orders
            .clone()
            .list_orders(ListOrdersRequest {
                customer_id: "c1".into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.orders.len(), 1);
        assert_eq!(listed.orders[0].status(), OrderStatus::Failed);
        // A replay answers the same failure without touching stock.
        let again = s
            .orders
            .clone()
            .create_order(order("r1", "c1", &[("a", 2), ("b", 5), ("c", 1)]))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);
        let err = s.orders.clone().create_order(order("r2", "c1", &[("nope", 1)])).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("`nope`"), "{}", err.message());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_twice_and_concurrently_creates_one_order_and_deducts_once() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 100).await;
        let calls = (0..10).map(|_| {
            let mut c = s.orders.clone();
            tokio::spawn(async move { c.create_order(order("same", "c1", &[("a", 3)])).await })
        });
        let ids: std::collections::HashSet<String> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap().into_inner().order.unwrap().order_id)
            .collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(s.stock("a").await, 97);
        let err = s.orders.clone().create_order(order("same", "c1", &[("a", 4)])).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_stock_exactly_once() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 10).await;
        let o = s
            .orders
            .clone()
            .create_order(order("r1", "c1", &[("a", 4)]))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(s.stock("a").await, 6);
        for _ in 0..3 {
            let c = s
                .orders
                .clone()
                .cancel_order(CancelOrderRequest { order_id: o.order_id.clone() })
                .await
                .unwrap();
            assert_eq!(c.into_inner().order.unwrap().status(), OrderStatus::Cancelled);
        }
        assert_eq!(s.stock("a").await, 10);
        let err = s
            .orders
            .clone()
            .cancel_order(CancelOrderRequest { order_id: "unknown".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_orders_pages_newest_first_per_customer() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 100).await;
        for i in 0..5 {
            s.orders.clone().create_order(order(&format!("r{i}"), "c1", &[("a", 1)])).await.unwrap();
        }
        s.orders.clone().create_order(order("other", "c2", &[("a", 1)])).await.unwrap();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = s
                .orders
                .clone()
                .list_orders(ListOrdersRequest { customer_id: "c1".into(), page_size: 2, page_token: token })
                .await
                .unwrap()
                .into_inner();
            assert!(page.orders.len() <= 2);
            seen.extend(page.orders.into_iter().map(|o| (o.created_at_ms, o.request_id)));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 5);
        assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0), "{seen:?}");
        let err = s
            .orders
            .clone()
            .list_orders(ListOrdersRequest {
                customer_id: "c1".into(),
                page_size: 2,
                page_token: "bogus".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_outage_leaves_the_order_retryable_with_the_same_request_id() {
    tokio::time::timeout(LIMIT, async {
        let s = shop().await;
        s.set("a", 10).await;
        s.set("b", 10).await;
        // "a" is taken, then inventory goes down before "b": the order cannot settle.
        s.flaky.down.store(true, Ordering::SeqCst);
        let err = s.orders.clone().create_order(order("r1", "c1", &[("a", 1), ("b", 1)])).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        s.flaky.down.store(false, Ordering::SeqCst);
        let o = s.orders.clone().create_order(order("r1", "c1", &[("a", 1), ("b", 1)])).await.unwrap();
        assert_eq!(o.into_inner().order.unwrap().status(), OrderStatus::Confirmed);
        assert_eq!((s.stock("a").await, s.stock("b").await), (9, 9));
    })
    .await
    .expect("test timed out");
}

fn deduct(id: &str) -> DeductStockRequest {
    DeductStockRequest { request_id: id.into(), sku: "a".into(), quantity: 1 }
}

/// In-memory inventory (no threads, no I/O): what a paused clock needs.
#[derive(Default)]
struct MemStore {
    stock: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

#[async_trait]
impl InventoryStore for MemStore {
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        let mut stock = self.stock.lock().unwrap();
        let q = stock.get_mut(cmd.sku.as_str()).ok_or_else(|| StoreError::NotFound(cmd.sku.to_string()))?;
        if *q < cmd.quantity.get() {
            return Err(StoreError::Insufficient {
                sku: cmd.sku.to_string(),
                requested: cmd.quantity.get(),
                available: *q,
            });
        }
        *q -= cmd.quantity.get();
        Ok(Deducted { remaining: *q, replayed: false })
    }
    async fn release(&self, _: &ReleaseStock) -> Result<Released, StoreError> {
        Err(StoreError::Internal("not used".into()))
    }
    async fn get(&self, sku: &Sku) -> Result<i64, StoreError> {
        self.stock
            .lock()
            .unwrap()
            .get(sku.as_str())
            .copied()
            .ok_or_else(|| StoreError::NotFound(sku.to_string()))
    }
    async fn set(&self, cmd: &SetStock) -> Result<i64, StoreError> {
        self.stock.lock().unwrap().insert(cmd.sku.to_string(), cmd.quantity.get());
        Ok(cmd.quantity.get())
    }
    async fn restock(&self, _: &Restock) -> Result<i64, StoreError> {
        Err(StoreError::Internal("not used".into()))
    }
    async fn ping(&self) -> bool {
        true
    }
}

async fn direct_client(
    settings: ClientSettings,
) -> (InventoryClient, Arc<FaultyStore>, Arc<ClientMetrics>, ()) {
    let flaky = FaultyStore::new(Arc::new(MemStore::default()));
    flaky
        .set(&SetStock {
            sku: Sku::parse("sku", "a").unwrap(),
            quantity: ferry_proto::domain::StockLevel::parse("q", 100).unwrap(),
        })
        .await
        .unwrap();
    let metrics = Arc::new(ClientMetrics::default());
    let client = InventoryClient::new(over_duplex(flaky.clone()), settings, metrics.clone());
    (client, flaky, metrics, ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_the_deduction_executes_once() {
    tokio::time::timeout(LIMIT, async {
        let (client, flaky, metrics, _dir) = direct_client(client_settings()).await;
        flaky.fail_next.store(2, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let r = client.deduct(deduct("x"), deadline, None).await.unwrap();
        assert_eq!(r.remaining, 99);
        assert_eq!(metrics.retries.get(), 2);
        assert_eq!(flaky.deductions.load(Ordering::SeqCst), 1);
        // Not-enough-stock is a business answer: no retry.
        let err = client
            .deduct(
                DeductStockRequest { request_id: "big".into(), sku: "a".into(), quantity: 1000 },
                deadline,
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(metrics.retries.get(), 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_consecutive_failures_fails_fast_and_recovers_after_the_open_period() {
    let settings = ClientSettings {
        retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        breaker: BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(10) },
        token: None,
    };
    let (client, flaky, metrics, _dir) = direct_client(settings).await;
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
    flaky.down.store(true, Ordering::SeqCst);
    for i in 0..3 {
        let err = client.deduct(deduct(&format!("f{i}")), deadline(), None).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(!err.message().contains("circuit breaker"), "{err:?}");
    }
    assert_eq!(metrics.breaker_state.get(), 2, "open");
    // Inventory is healthy again, but the breaker holds until the open period ends.
    flaky.down.store(false, Ordering::SeqCst);
    let err = client.deduct(deduct("fast"), deadline(), None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit breaker is open"), "{err:?}");
    assert_eq!(flaky.deductions.load(Ordering::SeqCst), 0, "failed fast, never reached inventory");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(client.deduct(deduct("still"), deadline(), None).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    // Half-open probe succeeds and closes the breaker.
    client.deduct(deduct("probe"), deadline(), None).await.unwrap();
    assert_eq!(metrics.breaker_state.get(), 0, "closed");
    client.deduct(deduct("after"), deadline(), None).await.unwrap();
    assert_eq!(metrics.breaker_opened.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_when_inventory_refuses_connections() {
    tokio::time::timeout(LIMIT, async {
        // A port nobody listens on: every connection attempt is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let settings = ClientSettings {
            retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
            breaker: BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(60) },
            token: None,
        };
        let metrics = Arc::new(ClientMetrics::default());
        let channel = order_service::client::lazy_channel(&closed.to_string()).unwrap();
        let client = InventoryClient::new(channel, settings, metrics.clone());
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
        for i in 0..3 {
            let err = client.deduct(deduct(&format!("refused-{i}")), deadline(), None).await.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        }
        assert_eq!(metrics.breaker_opened.get(), 1, "three refused connections open the breaker");
        assert_eq!(metrics.breaker_state.get(), 2, "open");
        let err = client.deduct(deduct("fast-fail"), deadline(), None).await.unwrap_err();
        assert!(err.message().contains("circuit breaker is open"), "{err:?}");
    })
    .await
    .expect("test timed out");
}

mod order_store_contract {
    use ferry_proto::domain::{CustomerId, OrderLine, Quantity};
    use order_service::store::{Cursor, Lease, NewOrder, OrderStatus, OrderStore};

    use super::*;

    fn new_order(id: &str, rid: &str, customer: &str, q: i64) -> NewOrder {
        NewOrder {
            order_id: id.into(),
            request_id: rid.into(),
            customer_id: CustomerId::parse("c", customer).unwrap(),
            items: vec![OrderLine {
                sku: Sku::parse("s", "a").unwrap(),
                quantity: Quantity::parse("q", q).unwrap(),
            }],
            saga: Default::default(),
        }
    }

    async fn contract(store: Arc<dyn OrderStore>) {
        let lease = Lease::new_run(Duration::from_secs(60));
        let (o, created) =
            store.create_or_get(new_order("o1", "r1", "c", 1), Some(&lease), None).await.unwrap();
        assert!(created && o.status == OrderStatus::Pending);
        let (again, created) =
            store.create_or_get(new_order("o2", "r1", "c", 1), Some(&lease), None).await.unwrap();
        assert!(!created);
        assert_eq!(again.order_id, "o1");
        assert!(
            store.create_or_get(new_order("o3", "r1", "c", 2), Some(&lease), None).await.is_err(),
            "payload mismatch"
        );
        let moved = store
            .transition("o1", &[OrderStatus::Pending], OrderStatus::Confirmed, "", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.status, OrderStatus::Confirmed);
        let guarded = store
            .transition("o1", &[OrderStatus::Pending], OrderStatus::Failed, "x", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(guarded.status, OrderStatus::Confirmed, "guard holds");
        for i in 0..3 {
            store
                .create_or_get(new_order(&format!("p{i}"), &format!("rp{i}"), "pager", 1), Some(&lease), None)
                .await
                .unwrap();
        }
        let first = store.list("pager", 2, None).await.unwrap();
        assert_eq!(first.len(), 2);
        let last = first.last().unwrap();
        let cursor = Cursor { created_at_ms: last.created_at_ms, order_id: last.order_id.clone() };
        let rest = store.list("pager", 2, Some(&cursor)).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(store.get("missing").await.unwrap().is_none());
        leases(&*store).await;
        let unsettled = store.unsettled().await.unwrap();
        assert_eq!(unsettled.count, 4, "p0..p2 and l2 are PENDING");
        assert!(unsettled.oldest_created_at_ms.is_some());
    }

    /// One run per order at a time: the creator holds it, others are fenced off, an
    /// interrupted run hands it on, and a lease that runs out frees it for the recoverer.
    async fn leases(store: &dyn OrderStore) {
        use order_service::store::Claim;
        let creator = Lease::new_run(Duration::from_secs(60));
        let other = Lease::new_run(Duration::from_secs(60));
        store.create_or_get(new_order("l1", "rl1", "c", 1), Some(&creator), None).await.unwrap();
        assert!(matches!(store.claim("l1", &other).await.unwrap(), Claim::Busy(_)), "held by its creator");
        assert!(store.claim_due(&other, 100).await.unwrap().is_empty(), "nothing is due");
        assert!(store.renew("l1", &creator).await.unwrap());
        assert!(!store.renew("l1", &other).await.unwrap());
        let fenced =
            store.advance("l1", &other.owner, OrderStatus::Pending, OrderStatus::Confirmed, "", None);
        assert!(fenced.await.unwrap().is_none(), "only the holder decides");
        store.unlease("l1", &creator.owner, Duration::from_secs(3600)).await.unwrap();
        assert!(store.claim_due(&other, 100).await.unwrap().is_empty(), "its retry time has not come");
        let Claim::Claimed(leased) = store.claim("l1", &other).await.unwrap() else {
            panic!("a caller claims an order nobody holds")
        };
        assert_eq!(leased.attempts, 1);
        let owner = &other.owner;
        let decided =
            store.advance("l1", owner, OrderStatus::Pending, OrderStatus::Compensating, "no stock", None);
        assert_eq!(decided.await.unwrap().unwrap().status, OrderStatus::Compensating);
        let failed =
            store.advance("l1", owner, OrderStatus::Compensating, OrderStatus::Failed, "no stock", None);
        let failed = failed.await.unwrap().unwrap();
        assert_eq!((failed.status, failed.failure_reason.as_str()), (OrderStatus::Failed, "no stock"));
        assert!(matches!(store.claim("l1", &creator).await.unwrap(), Claim::Settled(_)));

        let short = Lease::new_run(Duration::from_millis(50));
        store.create_or_get(new_order("l2", "rl2", "c", 1), Some(&short), None).await.unwrap();
        let recoverer = Lease::new_run(Duration::from_secs(60));
        let mut claimed = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while claimed.is_empty() {
                claimed = store.claim_due(&recoverer, 100).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the recoverer claims an order whose lease ran out");
        let ids: Vec<_> = claimed.iter().map(|l| l.order.order_id.as_str()).collect();
        assert_eq!(ids, ["l2"], "the pager orders are still held by their creator");
        assert!(!store.renew("l2", &short).await.unwrap(), "the old holder lost it");
    }

    #[tokio::test]
    async fn sqlite_order_store_keeps_the_contract() {
        let db = TempSqlite::new("o.db");
        contract(order_store::open(&StoreOptions::new(db.url())).await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres_order_store_keeps_the_contract() {
        let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            println!(
                "SKIPPED: PostgreSQL order store test (FERRY_TEST_POSTGRES_URL is not set; `make test` sets it)"
            );
            return;
        };
        let schema = format!("o_{}", uuid::Uuid::new_v4().simple());
        let opts = StoreOptions { pg_schema: Some(schema), ..StoreOptions::new(url) };
        contract(order_store::open(&opts).await.expect("connect")).await;
    }
}

mod malformed {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn malformed_orders_get_invalid_argument(
            customer in prop_oneof![Just(String::new()), ".{129,140}", "[a-z]{1,4}"],
            items in proptest::collection::vec((prop_oneof![Just(String::new()), "[a-z]{1,3}", ".{65,70}"], -5i64..=0), 0..60),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async {
                let s = shop().await;
                let req = CreateOrderRequest {
                    request_id: "r".into(),
                    customer_id: customer.clone(),
                    items: items.iter().map(|(sku, q)| OrderItem { sku: sku.clone(), quantity: *q }).collect(),
                };
                let err = s.orders.clone().create_order(req).await.unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            });
        }
    }
}
