//! The inventory server end to end, in process on 127.0.0.1:0: health, reflection, auth,
//! load shedding, deadlines, drain, metrics, malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ferry_proto::inventory::v1::{
    DeductStockRequest, GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
};
use ferry_service_common::testing::eventually;
use ferry_service_common::{
    auth::Authenticator,
    shutdown::Stopped,
    testing::{TempSqlite, hs256_token},
};
use inventory_service::{
    app::{self, Running, ServeOptions},
    store::{self, InventoryStore, StoreOptions},
    testing::FaultyStore,
};
use jsonwebtoken::Algorithm;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long a test waits for a condition.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &[u8] = b"test-secret";
const LIMIT: Duration = Duration::from_secs(30);

struct Fixture {
    running: Running,
    channel: Channel,
    _dir: TempSqlite,
}

async fn sqlite_store() -> (Arc<dyn InventoryStore>, TempSqlite) {
    let db = TempSqlite::new("inv.db");
    (store::open(&StoreOptions::new(db.url())).await.unwrap(), db)
}

async fn start_with(store: Arc<dyn InventoryStore>, dir: TempSqlite, opts: ServeOptions) -> Fixture {
    let running = app::start(store, opts).await.unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    Fixture { running, channel, _dir: dir }
}

async fn fixture() -> Fixture {
    let (store, dir) = sqlite_store().await;
    start_with(store, dir, ServeOptions::local()).await
}

fn client(f: &Fixture) -> InventoryServiceClient<Channel> {
    InventoryServiceClient::new(f.channel.clone())
}

fn deduct(id: &str, sku: &str, quantity: i64) -> DeductStockRequest {
    DeductStockRequest { request_id: id.into(), sku: sku.into(), quantity }
}

async fn set_stock(f: &Fixture, sku: &str, quantity: i64) {
    client(f).set_stock(SetStockRequest { sku: sku.into(), quantity }).await.unwrap();
}

async fn health_status(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let resp =
        HealthClient::new(channel).check(HealthCheckRequest { service: app::SERVICE_NAME.into() }).await?;
    Ok(resp.into_inner().status())
}

fn token(scope: &str, exp_offset: i64, secret: &[u8]) -> String {
    hs256_token(secret, "tester", scope, exp_offset)
}

fn with_auth<T>(msg: T, header: Option<String>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(h) = header {
        req.metadata_mut().insert("authorization", h.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn health_becomes_serving_and_reflection_lists_the_service() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        eventually("SERVING", WAIT, || async {
            health_status(f.channel.clone()).await.ok() == Some(ServingStatus::Serving)
        })
        .await;
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(f.channel.clone())
            .server_reflection_info(tokio_stream::once(req))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected {resp:?}")
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&app::SERVICE_NAME.to_string()), "{names:?}");
    })
    .await
    .expect("test timed out");
}

/// The services a reflection `ListServices` names, over v1 or v1alpha.
async fn reflected_services(channel: Channel, v1alpha: bool) -> Vec<String> {
    if v1alpha {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(req))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected {resp:?}")
        };
        return list.service.into_iter().map(|s| s.name).collect();
    }
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_only_this_servers_services_and_others_are_unimplemented() {
    tokio::time::timeout(LIMIT, async {
        let (store, dir) = sqlite_store().await;
        let auth = Authenticator::from_key_bytes(Algorithm::HS256, SECRET, app::scopes()).unwrap();
        let f = start_with(store, dir, ServeOptions { auth: Some(auth), ..ServeOptions::local() }).await;
        for v1alpha in [false, true] {
            let names = reflected_services(f.channel.clone(), v1alpha).await;
            assert!(names.contains(&app::SERVICE_NAME.to_string()), "v1alpha={v1alpha}: {names:?}");
            assert!(names.contains(&"grpc.health.v1.Health".to_string()), "v1alpha={v1alpha}: {names:?}");
            assert!(!names.iter().any(|n| n.contains("OrderService")), "v1alpha={v1alpha}: {names:?}");
        }
        let token = format!("Bearer {}", token("orders:write inventory:read", 60, SECRET));
        for header in [Some(token), None] {
            let mut orders =
                ferry_proto::order::v1::order_service_client::OrderServiceClient::new(f.channel.clone());
            let req = with_auth(ferry_proto::order::v1::GetOrderRequest { order_id: "o".into() }, header);
            let err = orders.get_order(req).await.unwrap_err();
            assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        }
    })
    .await
    .expect("test timed out");
}

/// Sends a call the way order's inventory client does: a transport error (a call that raced
/// its connection's GOAWAY; it carries a hyper error as its source) is retried, at most three
/// attempts with backoff from 25 ms. A status the server answered is never retried. Returns
/// the response and the number of attempts it took.
async fn retrying_transport_errors<T, F, Fut>(mut call: F) -> Result<(T, u32), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 1u32;
    loop {
        match call().await {
            Ok(response) => return Ok((response, attempt)),
            Err(status) if attempt < 3 && std::error::Error::source(&status).is_some() => {
                tokio::time::sleep(Duration::from_millis(25 << (attempt - 1))).await;
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// A blue-green switch only moves a client's calls when its long-lived HTTP/2 connection is
/// replaced: the server's maximum connection age must end in a GOAWAY the client follows to a
/// new connection (tonic's `max_connection_age_grace` once turned that into a hard close
/// after age + grace, and a client stayed on one connection for its whole life).
///
/// The server never fails a call for it. A bare client can still lose the race between
/// sending a request and reading the GOAWAY (hyper reports "connection closed"); such a
/// call is a transport error, and retrying it under the same request id, as order's inventory
/// client does, succeeds and never deducts twice.
#[tokio::test]
async fn a_connection_past_its_maximum_age_is_replaced_and_no_call_fails() {
    tokio::time::timeout(LIMIT, async {
        let (store, _dir) = sqlite_store().await;
        let opts = ServeOptions { max_connection_age: Duration::from_millis(300), ..ServeOptions::local() };
        let running = app::start(store, opts).await.unwrap();
        let addr = running.grpc_addr;
        let connects = Arc::new(AtomicUsize::new(0));
        let counter = connects.clone();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        let mut inventory = InventoryServiceClient::new(channel);
        const STOCK: i64 = 1_000_000;
        inventory.set_stock(SetStockRequest { sku: "a".into(), quantity: STOCK }).await.unwrap();
        let started = std::time::Instant::now();
        let (mut calls, mut raced) = (0i64, 0i64);
        while started.elapsed() < Duration::from_millis(1500) {
            // Eight calls in flight at a time, so some straddle each GOAWAY.
            let batch = (0..8).map(|i| {
                let client = inventory.clone();
                let id = format!("age-{calls}-{i}");
                async move {
                    retrying_transport_errors(|| {
                        let mut c = client.clone();
                        let request = deduct(&id, "a", 1);
                        async move { c.deduct_stock(request).await }
                    })
                    .await
                }
            });
            for result in futures::future::join_all(batch).await {
                let (_, attempts) =
                    result.expect("the server fails no call across a connection's maximum age");
                raced += i64::from(attempts > 1);
                calls += 1;
            }
        }
        let connections = connects.load(Ordering::SeqCst);
        assert!(
            connections >= 3,
            "{calls} calls over 1.5 s used {connections} connection(s); max age is 300 ms"
        );
        eprintln!("{calls} calls, {connections} connections, {raced} raced a GOAWAY and were retried");
        // The connection keeps rotating, so this read can race a GOAWAY too.
        let (left, _) = retrying_transport_errors(|| {
            let mut c = inventory.clone();
            async move { c.get_stock(GetStockRequest { sku: "a".into() }).await }
        })
        .await
        .expect("reading the stock back");
        let left = left.into_inner();
        assert_eq!(left.quantity, STOCK - calls, "each of {calls} calls deducted exactly once");
        drop(running);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn same_request_id_twice_over_grpc_deducts_once() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        set_stock(&f, "a", 5).await;
        let first = client(&f).deduct_stock(deduct("r1", "a", 2)).await.unwrap().into_inner();
        let second = client(&f).deduct_stock(deduct("r1", "a", 2)).await.unwrap().into_inner();
        assert_eq!((first.remaining, first.replayed), (3, false));
        assert_eq!((second.remaining, second.replayed), (3, true));
        let err = client(&f).deduct_stock(deduct("r1", "a", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn errors_map_to_the_documented_codes() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        set_stock(&f, "a", 1).await;
        let c = client(&f);
        assert_eq!(
            c.clone().deduct_stock(deduct("r", "a", 2)).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        assert_eq!(c.clone().deduct_stock(deduct("r", "zz", 1)).await.unwrap_err().code(), Code::NotFound);
        let err = c.clone().deduct_stock(deduct("r", "", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("sku"), "{}", err.message());
        let err = c.clone().deduct_stock(deduct("r", "a", 0)).await.unwrap_err();
        assert!(err.message().contains("quantity"), "{}", err.message());
        let err = c.clone().get_stock(GetStockRequest { sku: "x".repeat(500) }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn every_auth_case_gets_its_status_code() {
    tokio::time::timeout(LIMIT, async {
        let (store, dir) = sqlite_store().await;
        let auth = Authenticator::from_key_bytes(Algorithm::HS256, SECRET, app::scopes()).unwrap();
        let f = start_with(store, dir, ServeOptions { auth: Some(auth), ..ServeOptions::local() }).await;
        let get = || GetStockRequest { sku: "a".into() };
        let code = |header: Option<String>| {
            let mut c = client(&f);
            async move {
                match c.get_stock(with_auth(get(), header)).await {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                }
            }
        };
        let admin = token("inventory:admin", 60, SECRET);
        client(&f)
            .set_stock(with_auth(
                SetStockRequest { sku: "a".into(), quantity: 1 },
                Some(format!("Bearer {admin}")),
            ))
            .await
            .unwrap();
        assert_eq!(code(None).await, Code::Unauthenticated, "missing");
        assert_eq!(code(Some("Bearer garbage".into())).await, Code::Unauthenticated, "malformed");
        assert_eq!(
            code(Some(format!("Bearer {}", token("inventory:read", -3600, SECRET)))).await,
            Code::Unauthenticated,
            "expired"
        );
        assert_eq!(
            code(Some(format!("Bearer {}", token("inventory:read", 60, b"wrong")))).await,
            Code::Unauthenticated,
            "bad signature"
        );
        assert_eq!(
            code(Some(format!("Bearer {}", token("inventory:write", 60, SECRET)))).await,
            Code::PermissionDenied,
            "wrong scope"
        );
        assert_eq!(
            code(Some(format!("Bearer {}", token("inventory:read", 60, SECRET)))).await,
            Code::Ok,
            "valid"
        );
        // Health stays open.
        eventually("SERVING without a token", WAIT, || async {
            health_status(f.channel.clone()).await.ok() == Some(ServingStatus::Serving)
        })
        .await;
    })
    .await
    .expect("test timed out");
}

/// A fixture whose store holds every deduction until `release_hold`, so tests can keep calls
/// in flight.
async fn gated_fixture(opts: ServeOptions) -> (Fixture, Arc<FaultyStore>) {
    let (inner, dir) = sqlite_store().await;
    let gated = FaultyStore::new(inner);
    gated.hold_all();
    let f = start_with(gated.clone(), dir, opts).await;
    (f, gated)
}

#[tokio::test]
async fn calls_over_the_concurrency_limit_are_shed_with_resource_exhausted() {
    tokio::time::timeout(LIMIT, async {
        let (f, gated) =
            gated_fixture(ServeOptions { max_concurrent_requests: 2, ..ServeOptions::local() }).await;
        set_stock(&f, "a", 10).await;
        let held: Vec<_> = (0..2)
            .map(|i| {
                let mut c = client(&f);
                tokio::spawn(async move { c.deduct_stock(deduct(&format!("h{i}"), "a", 1)).await })
            })
            .collect();
        eventually("two calls in flight", WAIT, || async { gated.held.load(Ordering::SeqCst) == 2 }).await;
        let err = client(&f).deduct_stock(deduct("x", "a", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        // Health is never shed.
        assert!(health_status(f.channel.clone()).await.is_ok());
        gated.release_hold();
        for h in held {
            h.await.unwrap().unwrap();
        }
        client(&f).deduct_stock(deduct("after", "a", 1)).await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_call_past_its_deadline_gets_deadline_exceeded() {
    tokio::time::timeout(LIMIT, async {
        let opts = ServeOptions { request_timeout: Duration::from_millis(150), ..ServeOptions::local() };
        let (f, _gated) = gated_fixture(opts).await;
        set_stock(&f, "a", 10).await;
        // NB: with a client-side timeout tonic's client races the server and reports its own
        // CANCELLED; the grpc-timeout parsing and min() are unit-tested in ferry-service-common.
        // The server's own bound when the client sets none.
        let err = client(&f).deduct_stock(deduct("slow2", "a", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(err.message().contains("150 ms"), "{err:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn sigterm_drain_finishes_calls_in_flight_and_reports_not_serving_first() {
    tokio::time::timeout(LIMIT, async {
        let opts = ServeOptions {
            drain: ferry_service_common::shutdown::DrainTimings {
                drain: Duration::from_millis(200),
                grace: Duration::from_secs(10),
            },
            ..ServeOptions::local()
        };
        let (f, gated) = gated_fixture(opts).await;
        set_stock(&f, "a", 10).await;
        eventually("SERVING", WAIT, || async {
            health_status(f.channel.clone()).await.ok() == Some(ServingStatus::Serving)
        })
        .await;
        let in_flight: Vec<_> = (0..3)
            .map(|i| {
                let mut c = client(&f);
                tokio::spawn(async move { c.deduct_stock(deduct(&format!("f{i}"), "a", 1)).await })
            })
            .collect();
        eventually("three calls in flight", WAIT, || async { gated.held.load(Ordering::SeqCst) == 3 }).await;

        f.running.shutdown.cancel();
        eventually("NOT_SERVING", WAIT, || async {
            health_status(f.channel.clone()).await.ok() == Some(ServingStatus::NotServing)
        })
        .await;
        gated.release_hold();
        for h in in_flight {
            let resp = h.await.unwrap().expect("in-flight call should finish during the drain");
            assert!(resp.into_inner().remaining >= 7);
        }
        let stopped = f.running.task.await.unwrap().unwrap();
        assert_eq!(stopped, Stopped::Drained);
        // The listener is closed: a new connection is refused.
        let addr = f.running.grpc_addr;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn metrics_port_serves_grpc_and_domain_metrics_and_probes() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        set_stock(&f, "a", 1).await;
        client(&f).deduct_stock(deduct("m1", "a", 1)).await.unwrap();
        let _ = client(&f).deduct_stock(deduct("m2", "a", 1)).await.unwrap_err();
        let body = http_get(f.running.http_addr, "/metrics").await;
        assert!(
            body.contains(
                r#"grpc_server_handled_total{grpc_type="unary",grpc_service="ferry.inventory.v1.InventoryService",grpc_method="DeductStock",grpc_code="OK"} 1"#
            ),
            "{body}"
        );
        assert!(body.contains(r#"grpc_code="FailedPrecondition"} 1"#), "{body}");
        assert!(body.contains("grpc_server_handling_seconds_bucket"), "{body}");
        assert!(body.contains("inventory_deductions_total 1"), "{body}");
        assert!(body.contains("inventory_rejected_insufficient_stock_total 1"), "{body}");
        assert!(http_get(f.running.http_addr, "/healthz").await.contains("200 OK"));
        let addr = f.running.http_addr;
        eventually("/readyz 200", WAIT, || async move { http_get(addr, "/readyz").await.contains("200 OK") }).await;
    })
    .await
    .expect("test timed out");
}

/// A minimal HTTP/1.0 GET (the tests need no HTTP client crate).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Sends `body` as the raw message of a unary call to `path`, bypassing prost on the client.
async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(Request::new(body), path, raw::Raw).await.map(tonic::Response::into_inner)
}

/// A codec that sends and receives bytes as they are.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::{
        Status,
        codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    };

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Raw;

    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }
}

/// Bodies no protobuf decoder accepts: a truncated length, wrong wire types, field number 0,
/// the reserved wire types, and a string field holding invalid UTF-8.
fn undecodable_bodies() -> Vec<Vec<u8>> {
    vec![
        vec![0x0a, 0x05, b'a'],       // field 1, length 5, one byte follows
        vec![0x0a],                   // field 1, length missing
        vec![0x08, 0x01],             // field 1 (a string) as a varint
        vec![0x0d, 0, 0, 0, 0],       // field 1 (a string) as fixed32
        vec![0x00, 0x01],             // field number 0
        vec![0x0f],                   // wire type 7
        vec![0x0b],                   // wire type 3 (start group) without an end
        vec![0x0a, 0x02, 0xff, 0xfe], // field 1: invalid UTF-8
        vec![0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // varint of 11 bytes
    ]
}

/// Deterministic pseudo-random bodies (xorshift), kept only if prost refuses them as `M`.
fn random_undecodable_bodies<M: prost::Message + Default>(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    while out.len() < count {
        let len = (next() % 64 + 1) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if M::decode(body.as_slice()).is_err() {
            out.push(body);
        }
    }
    out
}

#[tokio::test]
async fn undecodable_request_bodies_get_invalid_argument_on_every_method() {
    use ferry_proto::inventory::v1 as pb;
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let methods: [(&'static str, Vec<Vec<u8>>); 6] = [
            (
                "/ferry.inventory.v1.InventoryService/DeductStock",
                random_undecodable_bodies::<pb::DeductStockRequest>(1, 30),
            ),
            (
                "/ferry.inventory.v1.InventoryService/ReleaseStock",
                random_undecodable_bodies::<pb::ReleaseStockRequest>(2, 30),
            ),
            (
                "/ferry.inventory.v1.InventoryService/GetStock",
                random_undecodable_bodies::<pb::GetStockRequest>(3, 30),
            ),
            (
                "/ferry.inventory.v1.InventoryService/SetStock",
                random_undecodable_bodies::<pb::SetStockRequest>(4, 30),
            ),
            (
                "/ferry.inventory.v1.InventoryService/Restock",
                random_undecodable_bodies::<pb::RestockRequest>(5, 30),
            ),
            ("/grpc.health.v1.Health/Check", Vec::new()),
        ];
        for (path, random) in methods {
            for body in undecodable_bodies().into_iter().chain(random) {
                let err = raw_call(f.channel.clone(), path, body.clone()).await.unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument, "{path} with {body:02x?}: {err:?}");
            }
        }
        let page = http_get(f.running.http_addr, "/metrics").await;
        assert!(
            page.contains(r#"grpc_method="DeductStock",grpc_code="InvalidArgument"} 39"#),
            "undecodable bodies are counted as InvalidArgument:\n{page}"
        );
        assert!(!page.contains(r#"grpc_code="Internal""#), "{page}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn oversized_headers_and_messages_get_resource_exhausted_and_other_calls_on_the_connection_go_on() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        set_stock(&f, "a", 1).await;
        // One connection carries both the ordinary calls and the oversized ones: four workers
        // keep ordinary calls in flight the whole time.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (mut c, done) = (client(&f), done.clone());
                tokio::spawn(async move {
                    let mut calls = 0u32;
                    while !done.load(Ordering::SeqCst) || calls < 50 {
                        let stock = c.get_stock(GetStockRequest { sku: "a".into() }).await;
                        let stock = stock.expect("an ordinary call on the same connection");
                        assert_eq!(stock.into_inner().quantity, 1);
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        for kib in [16, 32, 64, 128, 200] {
            let header = format!("Bearer {}", "x".repeat(kib * 1024));
            let err = client(&f)
                .get_stock(with_auth(GetStockRequest { sku: "a".into() }, Some(header)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::ResourceExhausted, "{kib} KiB of headers: {err:?}");
        }
        let err =
            client(&f).get_stock(GetStockRequest { sku: "a".repeat(5 * 1024 * 1024) }).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "a 5 MiB message: {err:?}");
        done.store(true, Ordering::SeqCst);
        for w in workers {
            assert!(w.await.unwrap() >= 50);
        }
        let after = client(&f).get_stock(GetStockRequest { sku: "a".into() }).await;
        assert!(after.is_ok(), "the connection still works: {after:?}");
    })
    .await
    .expect("test timed out");
}

mod malformed {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn malformed_deductions_get_invalid_argument_and_never_crash_the_server(
            request_id in prop_oneof![Just(String::new()), ".{129,200}", "[ \\x00-\\x1f\u{80}-\u{10ffff}]{1,10}"],
            sku in prop_oneof![Just(String::new()), ".{65,100}", "[a-z]{1,5}"],
            quantity in prop_oneof![Just(0i64), Just(i64::MIN), -1000i64..=0, Just(i64::MAX)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let f = fixture().await;
                let err = client(&f).deduct_stock(deduct(&request_id, &sku, quantity)).await.unwrap_err();
                assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
                // Still alive.
                assert!(health_status(f.channel.clone()).await.is_ok());
            });
        }
    }
}
