//! Event-driven orders against a real NATS JetStream (the shared test server, or a private
//! nats-server process that a test stops and starts): the transactional outbox, the relay,
//! both services' consumers, poison messages, the asynchronous oversell storm and WatchOrder.
//! Loopback only, bounded in time. Without `FERRY_TEST_NATS_URL` (and, for the outage test,
//! `FERRY_TEST_NATS_SERVER`) these tests fail: `make unit` sets both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use ferry_events::{Broker, EventSettings};
use ferry_proto::{
    domain::{CustomerId, OrderLine, Quantity, Sku},
    events::v1::{
        EventEnvelope, OrderPlaced, ReleaseCause, StockRejected, StockReleaseRequested, event_envelope::Event,
    },
    order::v1::{
        CancelOrderRequest, GetOrderRequest, Order, OrderStatus, WatchOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use futures::StreamExt as _;
use order_service::{
    app::{self, ServeOptions},
    breaker::BreakerConfig,
    client::ClientSettings,
    events,
    relay::{self, RelayMetrics},
    retry::RetryPolicy,
    saga::SagaSettings,
    store::{self as order_store, NewOrder, OrderStatus as Stored, OrderStore, Outgoing, Saga},
};
use prost::Message as _;
use support::{
    Database, Inventory, StopOnDrop, eventually, is_settled, list_all,
    nats::{self, PrivateNats, header, stream_messages},
    order,
    process::{http_get, sample},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// One order-service replica in process, with events on.
struct Replica {
    client: OrderServiceClient<Channel>,
    http: SocketAddr,
    _stop: StopOnDrop,
}

async fn replica(db: &Database, inventory: &Inventory, events: &EventSettings, mode: Saga) -> Replica {
    let store = order_store::open(&db.store_options()).await.unwrap();
    let server = ferry_service_common::app::ServeOptions {
        request_timeout: Duration::from_secs(30),
        ..ferry_service_common::app::ServeOptions::local()
    };
    let stop = server.shutdown.clone();
    let running = app::start(
        store,
        ServeOptions {
            server,
            inventory: inventory.channel.clone(),
            client: ClientSettings {
                retry: RetryPolicy { base_backoff: Duration::from_millis(5), ..RetryPolicy::default() },
                breaker: BreakerConfig { failure_threshold: 1_000, open_for: Duration::from_secs(1) },
                token: None,
            },
            compensation_timeout: Duration::from_secs(5),
            // A fast recoverer: it must still leave the asynchronous saga's orders alone.
            sagas: SagaSettings {
                mode,
                lease: Duration::from_millis(500),
                recovery_interval: Duration::from_millis(100),
                ..SagaSettings::default()
            },
            events: Some(events.clone()),
        },
    )
    .await
    .unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    Replica { client: OrderServiceClient::new(channel), http: running.http_addr, _stop: StopOnDrop(stop) }
}

/// A shop on one broker: inventory with its consumer, one order replica on SQLite, and a
/// broker connection for the test to publish and read with.
struct Shop {
    settings: EventSettings,
    broker: Broker,
    inventory: Inventory,
    shop: Replica,
    _db: Database,
}

/// A shop on `url` (under names of its own) whose order replica runs `mode`, with `a` units of
/// sku `a` in stock.
async fn shop_on(url: &str, mode: Saga, a: i64) -> Shop {
    let settings = nats::settings(url);
    let broker = connect(&settings).await;
    let inventory = Inventory::start_with_events(settings.clone()).await;
    inventory.set("a", a).await;
    let db = Database::sqlite();
    let shop = replica(&db, &inventory, &settings, mode).await;
    Shop { settings, broker, inventory, shop, _db: db }
}

/// A sample of a labelled metric: the first line of `name` holding every one of `labels`.
fn labelled(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

async fn get(client: &OrderServiceClient<Channel>, order_id: &str) -> Order {
    client
        .clone()
        .get_order(GetOrderRequest { order_id: order_id.into() })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
}

async fn create(client: &OrderServiceClient<Channel>, request_id: &str, items: &[(&str, i64)]) -> Order {
    let started = tokio::time::Instant::now();
    let created = client.clone().create_order(order(request_id, "ev", items)).await.unwrap().into_inner();
    assert!(started.elapsed() < Duration::from_secs(5), "an asynchronous CreateOrder answers at once");
    created.order.unwrap()
}

async fn settles_as(client: &OrderServiceClient<Channel>, order_id: &str, status: OrderStatus) -> Order {
    let mut last = None;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let o = get(client, order_id).await;
            if o.status() == status {
                return o;
            }
            last = Some(o);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("order {order_id} did not become {status:?} within 60 s: {last:?}"))
}

async fn connect(events: &EventSettings) -> Broker {
    let broker = Broker::connect(events, "test").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while broker.ensure_streams().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the test broker answers");
    broker
}

fn envelope(event_id: &str, order_id: &str, event: Event) -> EventEnvelope {
    EventEnvelope {
        event_id: event_id.into(),
        order_id: order_id.into(),
        occurred_at_ms: 1,
        event: Some(event),
    }
}

fn lines(items: &[(&str, i64)]) -> Vec<ferry_proto::events::v1::OrderLine> {
    items.iter().map(|(s, q)| ferry_proto::events::v1::OrderLine { sku: (*s).into(), quantity: *q }).collect()
}

// ---- the outbox, in the store -------------------------------------------------------------

fn new_order(id: &str, request_id: &str, saga: Saga) -> NewOrder {
    NewOrder {
        order_id: id.into(),
        request_id: request_id.into(),
        customer_id: CustomerId::parse("c", "c").unwrap(),
        items: vec![OrderLine {
            sku: Sku::parse("s", "a").unwrap(),
            quantity: Quantity::parse("q", 1).unwrap(),
        }],
        saga,
    }
}

fn placed(id: &str) -> Outgoing {
    events::placed(id, "c", &new_order(id, "x", Saga::Async).items, true)
}

async fn outbox_atomicity(store: Arc<dyn OrderStore>) {
    let first = placed("o1");
    let (o1, created) =
        store.create_or_get(new_order("o1", "r1", Saga::Async), None, Some(&first)).await.unwrap();
    assert!(created && o1.saga == Saga::Async && o1.status == Stored::Pending);
    let rows = store.unsent(100).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].event_id.as_str(), rows[0].kind.as_str()), (first.event_id.as_str(), "OrderPlaced"));

    let (_, created) =
        store.create_or_get(new_order("o1b", "r1", Saga::Async), None, Some(&placed("o1b"))).await.unwrap();
    assert!(!created, "a known request_id");
    assert_eq!(store.unsent(100).await.unwrap().len(), 1, "a retried CreateOrder writes no second event");

    // An event that cannot be written (its id is taken) takes its state change down with it.
    let clash = Outgoing { event_id: first.event_id.clone(), ..placed("o2") };
    assert!(store.create_or_get(new_order("o2", "r2", Saga::Async), None, Some(&clash)).await.is_err());
    assert!(store.get("o2").await.unwrap().is_none(), "the order was rolled back with its event");
    let clash = Outgoing { event_id: first.event_id.clone(), ..events::confirmed("o1") };
    assert!(store.advance_async("o1", Stored::Pending, Stored::Confirmed, "", Some(&clash)).await.is_err());
    assert_eq!(store.get("o1").await.unwrap().unwrap().status, Stored::Pending, "the change was rolled back");

    // A guard that does not match writes nothing.
    let late = events::failed("o1", "x");
    assert!(
        store
            .advance_async("o1", Stored::Compensating, Stored::Failed, "", Some(&late))
            .await
            .unwrap()
            .is_none()
    );
    let sync = new_order("s1", "rs1", Saga::Sync);
    store.create_or_get(sync, None, None).await.unwrap();
    let confirm_sync = events::confirmed("s1");
    let moved =
        store.advance_async("s1", Stored::Pending, Stored::Confirmed, "", Some(&confirm_sync)).await.unwrap();
    assert!(moved.is_none(), "events never move an order of the synchronous saga");
    assert_eq!(store.unsent(100).await.unwrap().len(), 1);

    let confirmed = events::confirmed("o1");
    let moved =
        store.advance_async("o1", Stored::Pending, Stored::Confirmed, "", Some(&confirmed)).await.unwrap();
    assert_eq!(moved.unwrap().status, Stored::Confirmed);
    let rows = store.unsent(100).await.unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, [first.event_id.as_str(), confirmed.event_id.as_str()], "in the order of the changes");
    assert_eq!(store.outbox_lag().await.unwrap().rows, 2);
    store.mark_sent(&rows.iter().map(|r| r.seq).collect::<Vec<_>>()).await.unwrap();
    assert!(store.unsent(100).await.unwrap().is_empty());
    assert_eq!(store.outbox_lag().await.unwrap().rows, 0);

    // One relay at a time; a relay that stops hands over at once.
    let ttl = Duration::from_secs(60);
    assert!(store.claim_relay("a", ttl).await.unwrap());
    assert!(store.claim_relay("a", ttl).await.unwrap(), "the holder renews");
    assert!(!store.claim_relay("b", ttl).await.unwrap(), "held by a");
    store.claim_relay("a", Duration::ZERO).await.unwrap();
    eventually("b to take the released relay lease", Duration::from_secs(5), || async {
        store.claim_relay("b", ttl).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn every_state_change_and_its_event_commit_together_or_not_at_all_on_sqlite() {
    let db = Database::sqlite();
    outbox_atomicity(order_store::open(&db.store_options()).await.unwrap()).await;
}

#[tokio::test]
async fn every_state_change_and_its_event_commit_together_or_not_at_all_on_postgresql() {
    let Some(db) = Database::postgres("outbox atomicity on PostgreSQL") else { return };
    outbox_atomicity(order_store::open(&db.store_options()).await.unwrap()).await;
}

// ---- the relay ----------------------------------------------------------------------------

/// Starts a relay over `store`; cancel the token to stop it.
fn start_relay(
    store: &Arc<dyn OrderStore>,
    broker: &Broker,
) -> (Arc<RelayMetrics>, CancellationToken, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(RelayMetrics::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay::run(
        store.clone(),
        broker.clone(),
        metrics.clone(),
        Arc::new(tokio::sync::Notify::new()),
        stop.clone(),
    ));
    (metrics, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_in_outbox_order_with_event_ids_as_message_ids_and_restarts_without_repeats() {
    const EVENTS: usize = 300;
    let settings = nats::settings(&nats::shared_url());
    let broker = connect(&settings).await;
    let db = Database::sqlite();
    let store = order_store::open(&db.store_options()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let id = format!("o{i}");
        let event = placed(&id);
        ids.push(event.event_id.clone());
        store.create_or_get(new_order(&id, &format!("r{i}"), Saga::Async), None, Some(&event)).await.unwrap();
    }
    // Two relays, as two replicas run them: one relays, the other stands by.
    let (a, stop_a, task_a) = start_relay(&store, &broker);
    let (b, stop_b, task_b) = start_relay(&store, &broker);
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        store.outbox_lag().await.unwrap().rows == 0
    })
    .await;
    assert_eq!(a.active.get() + b.active.get(), 1, "exactly one replica relays");
    assert_eq!(a.published.get() + b.published.get(), EVENTS as u64);
    let stream = settings.names.order_stream();
    let published = stream_messages(&broker, &stream).await;
    let msg_ids: Vec<String> = published.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
    assert_eq!(msg_ids, ids, "every event once, in outbox order, its event id as the message id");
    for m in &published {
        let envelope = EventEnvelope::decode(m.payload.clone()).unwrap();
        assert_eq!(envelope.event_id, header(m, "Nats-Msg-Id"));
        assert_eq!(header(m, "Ferry-Event"), "OrderPlaced");
        assert_eq!(m.subject.as_str(), format!("{}.order.placed", settings.names.prefix()));
    }

    // A relay that died after publishing and before stamping: the rows go again, and
    // JetStream drops the copies by message id.
    stop_a.cancel();
    stop_b.cancel();
    let _ = (task_a.await, task_b.await);
    let Database::Sqlite(dir) = &db else { unreachable!() };
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.dir().join("orders.db").display()))
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET sent_at_ms = NULL").execute(&raw).await.unwrap();
    assert_eq!(store.outbox_lag().await.unwrap().rows, EVENTS as u64);
    let (again, stop, task) = start_relay(&store, &broker);
    eventually("the restarted relay to drain the outbox", Duration::from_secs(60), || async {
        store.outbox_lag().await.unwrap().rows == 0
    })
    .await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(again.published.get(), EVENTS as u64, "published again");
    let after = stream_messages(&broker, &stream).await;
    assert_eq!(after.len(), EVENTS, "and de-duplicated: nothing twice in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_grows_while_the_broker_is_down_and_drains_when_it_is_back() {
    const ORDERS: usize = 40;
    let mut nats = PrivateNats::start().await;
    let Shop { inventory, shop, _db, .. } = shop_on(&nats.url(), Saga::Async, 1_000).await;
    let first = create(&shop.client, "before", &[("a", 1)]).await;
    settles_as(&shop.client, &first.order_id, OrderStatus::Confirmed).await;
    eventually("its OrderConfirmed to be published too", Duration::from_secs(20), || async {
        sample(&metrics(shop.http).await, "order_outbox_unsent_rows") == Some(0.0)
    })
    .await;

    nats.stop();
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let o = create(&shop.client, &format!("outage-{i}"), &[("a", 1)]).await;
        assert_eq!(o.status(), OrderStatus::Pending);
        ids.push(o.order_id);
    }
    eventually("the outbox lag to show every order", Duration::from_secs(20), || async {
        let page = metrics(shop.http).await;
        sample(&page, "order_outbox_unsent_rows") == Some(ORDERS as f64)
            && sample(&page, "order_outbox_oldest_unsent_age_seconds").is_some_and(|age| age > 0.0)
    })
    .await;
    for id in &ids {
        assert_eq!(
            get(&shop.client, id).await.status(),
            OrderStatus::Pending,
            "nothing moves without the broker"
        );
    }

    nats.resume().await;
    for id in &ids {
        settles_as(&shop.client, id, OrderStatus::Confirmed).await;
    }
    eventually("the outbox to drain", Duration::from_secs(20), || async {
        sample(&metrics(shop.http).await, "order_outbox_unsent_rows") == Some(0.0)
    })
    .await;
    inventory.quiet().await;
    assert_eq!(inventory.stock("a").await, 1_000 - 1 - ORDERS as i64, "each order deducted exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_pass_sent_into_a_broker_outage_gives_up_within_the_publish_timeout() {
    const EVENTS: usize = 100;
    let mut nats = PrivateNats::start().await;
    let settings = nats::settings(&nats.url());
    let broker = connect(&settings).await;
    nats.stop();
    let db = Database::sqlite();
    let store = order_store::open(&db.store_options()).await.unwrap();
    for i in 0..EVENTS {
        let id = format!("o{i}");
        store
            .create_or_get(new_order(&id, &format!("r{i}"), Saga::Async), None, Some(&placed(&id)))
            .await
            .unwrap();
    }
    let (metrics, stop, task) = start_relay(&store, &broker);
    // The acknowledgements of a pass are awaited together: the pass ends after one publish
    // timeout (2 s), not one per row.
    eventually("the relay to report the outage", Duration::from_secs(8), || async {
        metrics.failures.get() >= 1
    })
    .await;
    assert_eq!(store.outbox_lag().await.unwrap().rows, EVENTS as u64, "nothing stamped without the broker");
    nats.resume().await;
    eventually("the outbox to drain once the broker is back", Duration::from_secs(30), || async {
        store.outbox_lag().await.unwrap().rows == 0
    })
    .await;
    stop.cancel();
    let _ = task.await;
    let published = stream_messages(&broker, &settings.names.order_stream()).await;
    assert_eq!(published.len(), EVENTS, "each event once, whatever the client sent while disconnected");
}

// ---- consumers: duplicates, redelivery, reordering, poison ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_redeliveries_and_reordering_never_deduct_twice_or_lose_a_deduction() {
    let Shop { settings, broker, inventory, shop, _db } =
        shop_on(&nats::shared_url(), Saga::Async, 100).await;

    // Redelivery: inventory's database is down; the consumer retries until it is back.
    inventory.store.down.store(true, Ordering::SeqCst);
    let o1 = create(&shop.client, "dup-1", &[("a", 2)]).await;
    eventually("inventory to be asked more than once", Duration::from_secs(20), || async {
        inventory.store.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(get(&shop.client, &o1.order_id).await.status(), OrderStatus::Pending);
    inventory.store.down.store(false, Ordering::SeqCst);
    settles_as(&shop.client, &o1.order_id, OrderStatus::Confirmed).await;
    assert_eq!(inventory.stock("a").await, 98);

    // A duplicate delivery of the same OrderPlaced (under another message id, so JetStream
    // cannot drop it): inventory replays the deduction and takes nothing.
    let placed = envelope(
        "dup-copy",
        &o1.order_id,
        Event::OrderPlaced(OrderPlaced {
            customer_id: "ev".into(),
            lines: lines(&[("a", 2)]),
            reserve_stock: true,
        }),
    );
    broker.publish(&placed).await.unwrap();
    let inv_http = inventory.http.unwrap();
    eventually("inventory to replay the duplicate", Duration::from_secs(20), || async {
        sample(&metrics(inv_http).await, "inventory_deduction_replays_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(inventory.stock("a").await, 98, "a duplicate never deducts twice");

    // An answer out of turn: a rejection of a confirmed order changes nothing.
    let late = envelope(
        "late-reject",
        &o1.order_id,
        Event::StockRejected(StockRejected { line: 0, sku: "a".into(), reason: "made up".into() }),
    );
    broker.publish(&late).await.unwrap();
    eventually("order-service to ignore the late answer", Duration::from_secs(20), || async {
        let page = metrics(shop.http).await;
        labelled(&page, "ferry_events_handled_total", &["event=\"StockRejected\"", "outcome=\"ignored\""])
            >= 1.0
    })
    .await;
    assert_eq!(get(&shop.client, &o1.order_id).await.status(), OrderStatus::Confirmed);

    // Reordering: the release of an order arrives before its placement. The release leaves
    // tombstones, so the late placement takes nothing and is answered with a rejection.
    let w = "reordered-order";
    let release = envelope(
        "w-release",
        w,
        Event::StockReleaseRequested(StockReleaseRequested {
            lines: lines(&[("a", 5)]),
            cause: ReleaseCause::OrderFailing.into(),
        }),
    );
    broker.publish(&release).await.unwrap();
    let placed_late = envelope(
        "w-placed",
        w,
        Event::OrderPlaced(OrderPlaced {
            customer_id: "ev".into(),
            lines: lines(&[("a", 5)]),
            reserve_stock: true,
        }),
    );
    broker.publish(&placed_late).await.unwrap();
    let inventory_stream = settings.names.inventory_stream();
    eventually(
        "inventory to reject the placement that came after its release",
        Duration::from_secs(20),
        || async {
            stream_messages(&broker, &inventory_stream)
                .await
                .iter()
                .any(|m| header(m, "Nats-Msg-Id") == format!("{w}/stock-rejected"))
        },
    )
    .await;
    inventory.quiet().await;
    assert_eq!(inventory.stock("a").await, 98, "a deduction after its release takes nothing");

    // Nothing lost either: a new order still goes through.
    let o2 = create(&shop.client, "dup-2", &[("a", 3)]).await;
    settles_as(&shop.client, &o2.order_id, OrderStatus::Confirmed).await;
    assert_eq!(inventory.stock("a").await, 95);
}

/// An envelope with a field this version does not know in the `event` oneof (a newer
/// producer's event): it decodes, with `event` unset.
fn envelope_of_an_unknown_event() -> Vec<u8> {
    let mut bytes =
        EventEnvelope { event_id: "future".into(), order_id: "o".into(), occurred_at_ms: 1, event: None }
            .encode_to_vec();
    // Field 99, wire type 2 (length-delimited), 0 bytes: tag = 99 << 3 | 2 = 794 = 0x9a 0x06.
    bytes.extend_from_slice(&[0x9a, 0x06, 0x00]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_parked_after_bounded_retries_and_the_stream_goes_on() {
    let Shop { settings, broker, inventory, shop, _db } = shop_on(&nats::shared_url(), Saga::Async, 10).await;
    let p = settings.names.prefix();
    let raw = |subject: String, id: &str, payload: Vec<u8>| {
        let broker = broker.clone();
        let id = id.to_string();
        async move { broker.publish_encoded(&subject, &id, "test", payload.into()).await.unwrap() }
    };
    raw(format!("{p}.order.placed"), "garbage", b"\xff\xfenot protobuf at all".to_vec()).await;
    raw(format!("{p}.order.placed"), "unknown", envelope_of_an_unknown_event()).await;
    let bad_sku = envelope(
        "bad-sku",
        "o-bad",
        Event::OrderPlaced(OrderPlaced {
            customer_id: "c".into(),
            lines: lines(&[("no spaces!", 1)]),
            reserve_stock: true,
        }),
    );
    broker.publish(&bad_sku).await.unwrap();
    raw(format!("{p}.inventory.stock_reserved"), "garbage-answer", b"\x0a\xff".to_vec()).await;

    // The streams are not blocked: an order placed after the poison goes through.
    let o = create(&shop.client, "after-poison", &[("a", 1)]).await;
    settles_as(&shop.client, &o.order_id, OrderStatus::Confirmed).await;

    let dead = settings.names.dead_letter_stream();
    eventually("four poison messages to be parked", Duration::from_secs(30), || async {
        stream_messages(&broker, &dead).await.len() >= 4
    })
    .await;
    let parked = stream_messages(&broker, &dead).await;
    assert_eq!(parked.len(), 4, "each parked once");
    let by_consumer = |c: &str| parked.iter().filter(|m| header(m, "Ferry-Dead-Consumer") == c).count();
    assert_eq!((by_consumer("inventory-service"), by_consumer("order-service")), (3, 1));
    let reasons: Vec<String> = parked.iter().map(|m| header(m, "Ferry-Dead-Reason")).collect();
    for want in ["undecodable", "unknown event", "invalid field `lines[0].sku`"] {
        assert!(reasons.iter().any(|r| r.contains(want)), "a reason naming {want:?} in {reasons:?}");
    }
    for m in &parked {
        assert_eq!(header(m, "Ferry-Dead-Deliveries"), "3", "parked after the bounded retries");
        assert!(!header(m, "Ferry-Dead-Subject").is_empty());
    }
    let inv = metrics(inventory.http.unwrap()).await;
    for reason in ["undecodable", "unknown_event", "failed"] {
        let parked = labelled(
            &inv,
            "ferry_events_parked_total",
            &["consumer=\"inventory-service\"", &format!("reason=\"{reason}\"")],
        );
        assert_eq!(parked, 1.0, "{reason}: {inv}");
    }
    assert_eq!(inventory.stock("a").await, 9, "poison took nothing");
}

// ---- the asynchronous saga end to end ------------------------------------------------------

/// 500 orders of one unit for 100 units, through the asynchronous saga, over `replicas`.
async fn oversell_storm(db: Database, replicas: usize) {
    const ORDERS: usize = 500;
    const STOCK: i64 = 100;
    let settings = nats::settings(&nats::shared_url());
    let inventory = Inventory::start_with_events(settings.clone()).await;
    inventory.set("hot", STOCK).await;
    let mut shops = Vec::new();
    for _ in 0..replicas {
        shops.push(replica(&db, &inventory, &settings, Saga::Async).await);
    }
    let clients: Vec<_> = shops.iter().map(|s| s.client.clone()).collect();
    let answers: Vec<_> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            async move { c.create_order(order(&format!("storm-{i}"), "storm", &[("hot", 1)])).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for a in &answers {
        let o = a.as_ref().expect("CreateOrder is answered").get_ref().order.as_ref().unwrap();
        assert!(matches!(o.status(), OrderStatus::Pending | OrderStatus::Confirmed | OrderStatus::Failed));
    }
    let client = &clients[0];
    eventually("every order to settle", Duration::from_secs(120), || async {
        let orders = list_all(client, "storm").await;
        orders.len() == ORDERS && orders.iter().all(|o| is_settled(o.status()))
    })
    .await;
    inventory.quiet().await;
    let orders = list_all(client, "storm").await;
    let confirmed = orders.iter().filter(|o| o.status() == OrderStatus::Confirmed).count();
    let failed = orders.iter().filter(|o| o.status() == OrderStatus::Failed).count();
    assert_eq!((confirmed, failed), (STOCK as usize, ORDERS - STOCK as usize));
    assert_eq!(inventory.stock("hot").await, 0, "the books: stock taken == confirmed units");
    for o in orders.iter().filter(|o| o.status() == OrderStatus::Failed) {
        assert!(o.failure_reason.contains("insufficient stock"), "{}", o.failure_reason);
    }
    for shop in &shops {
        let page = metrics(shop.http).await;
        assert_eq!(sample(&page, "order_recoveries_total"), Some(0.0), "the recoverer left them alone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_oversell_storm_of_500_orders_for_100_units_confirms_exactly_100_on_sqlite() {
    oversell_storm(Database::sqlite(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_oversell_storm_of_500_orders_for_100_units_confirms_exactly_100_on_postgresql_with_two_replicas()
 {
    let Some(db) = Database::postgres("the async oversell storm on PostgreSQL") else { return };
    oversell_storm(db, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_streams_pending_then_the_outcome_and_ends() {
    let Shop { inventory, shop, _db, .. } = shop_on(&nats::shared_url(), Saga::Async, 1).await;
    inventory.store.hold_all();
    let o = create(&shop.client, "watched", &[("a", 1)]).await;
    let mut stream = shop
        .client
        .clone()
        .watch_order(WatchOrderRequest { order_id: o.order_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().order.unwrap();
    assert_eq!(first.status(), OrderStatus::Pending);
    inventory.store.release_hold();
    let next =
        tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.order.unwrap().status(), OrderStatus::Confirmed);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap();
    assert!(end.is_none(), "the stream ends once the order is settled");

    // A failing order: the watcher sees it fail.
    let f = create(&shop.client, "watched-fail", &[("a", 1)]).await;
    let mut stream = shop
        .client
        .clone()
        .watch_order(WatchOrderRequest { order_id: f.order_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(item) =
        tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap()
    {
        last = item.order;
    }
    let last = last.unwrap();
    assert_eq!(last.status(), OrderStatus::Failed, "{}", last.failure_reason);
    let unknown =
        shop.client.clone().watch_order(WatchOrderRequest { order_id: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_async_order_gives_its_stock_back_through_events() {
    let Shop { settings, broker, inventory, shop, _db } = shop_on(&nats::shared_url(), Saga::Async, 10).await;
    let o = create(&shop.client, "to-cancel", &[("a", 4)]).await;
    settles_as(&shop.client, &o.order_id, OrderStatus::Confirmed).await;
    assert_eq!(inventory.stock("a").await, 6);
    let cancel = CancelOrderRequest { order_id: o.order_id.clone() };
    let answered =
        shop.client.clone().cancel_order(cancel.clone()).await.unwrap().into_inner().order.unwrap();
    assert!(matches!(answered.status(), OrderStatus::Cancelling | OrderStatus::Cancelled));
    settles_as(&shop.client, &o.order_id, OrderStatus::Cancelled).await;
    assert_eq!(inventory.stock("a").await, 10);
    let again = shop.client.clone().cancel_order(cancel).await.unwrap().into_inner().order.unwrap();
    assert_eq!(
        again.status(),
        OrderStatus::Cancelled,
        "a repeated cancel is answered, nothing released twice"
    );
    inventory.quiet().await;
    assert_eq!(inventory.stock("a").await, 10);
    let kinds: Vec<String> = stream_messages(&broker, &settings.names.order_stream())
        .await
        .iter()
        .filter(|m| EventEnvelope::decode(m.payload.clone()).unwrap().order_id == o.order_id)
        .map(|m| header(m, "Ferry-Event"))
        .collect();
    assert_eq!(kinds, ["OrderPlaced", "OrderConfirmed", "StockReleaseRequested", "OrderCancelled"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_order_publishes_its_events_and_inventory_leaves_them_alone() {
    let Shop { settings, broker, inventory, shop, _db } = shop_on(&nats::shared_url(), Saga::Sync, 10).await;
    let o = shop.client.clone().create_order(order("sync-1", "ev", &[("a", 2)])).await.unwrap().into_inner();
    let o = o.order.unwrap();
    assert_eq!(o.status(), OrderStatus::Confirmed, "the synchronous saga answers the outcome");
    let stream = settings.names.order_stream();
    eventually("both events to be published", Duration::from_secs(20), || async {
        stream_messages(&broker, &stream).await.len() == 2
    })
    .await;
    let published = stream_messages(&broker, &stream).await;
    let placed = EventEnvelope::decode(published[0].payload.clone()).unwrap();
    let Some(Event::OrderPlaced(p)) = placed.event else { panic!("OrderPlaced first: {placed:?}") };
    assert!(!p.reserve_stock, "inventory is not asked to reserve a synchronous order");
    assert_eq!(header(&published[1], "Ferry-Event"), "OrderConfirmed");
    let inv_http = inventory.http.unwrap();
    eventually("inventory to see the placement", Duration::from_secs(20), || async {
        let page = metrics(inv_http).await;
        labelled(&page, "ferry_events_handled_total", &["event=\"OrderPlaced\"", "outcome=\"ignored\""])
            == 1.0
    })
    .await;
    let page = metrics(inv_http).await;
    assert_eq!(sample(&page, "inventory_deduction_replays_total"), Some(0.0), "no second deduction attempt");
    assert_eq!(inventory.stock("a").await, 8);
}
