//! Shared fixtures for the order service's integration tests: a real inventory service (SQLite)
//! behind a fault-injecting store that can be held, switched down and watched, and order-service
//! replicas started in process on 127.0.0.1:0 over SQLite or PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use ferry_proto::{
    domain::{SetStock, Sku},
    inventory::v1::{
        inventory_service_client::InventoryServiceClient, inventory_service_server::InventoryServiceServer,
    },
    order::v1::{
        CreateOrderRequest, ListOrdersRequest, Order, OrderItem, OrderStatus,
        order_service_client::OrderServiceClient,
    },
};
pub use ferry_service_common::testing::{TempSqlite, eventually};
use inventory_service::{
    api::{InventoryApi, InventoryMetrics},
    store::InventoryStore,
    testing::FaultyStore,
};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A real inventory service on SQLite, reachable over in-memory pipes.
pub struct Inventory {
    pub store: Arc<FaultyStore>,
    pub channel: Channel,
    /// The TCP address, when started with [`Inventory::start_tcp`].
    pub addr: Option<std::net::SocketAddr>,
    /// The metrics address, when started over TCP.
    pub http: Option<std::net::SocketAddr>,
    _stop: Option<StopOnDrop>,
    _dir: TempSqlite,
}

impl Inventory {
    async fn store() -> (Arc<FaultyStore>, TempSqlite) {
        let db = TempSqlite::new("inv.db");
        let inner = inventory_service::store::open(&inventory_service::store::StoreOptions::new(db.url()))
            .await
            .unwrap();
        (FaultyStore::new(inner), db)
    }

    /// Reachable over in-memory pipes only.
    pub async fn start() -> Self {
        let (store, dir) = Self::store().await;
        let channel = over_duplex(store.clone());
        Self { store, channel, addr: None, http: None, _stop: None, _dir: dir }
    }

    /// The full inventory server (auth off) on 127.0.0.1, for order-service processes.
    pub async fn start_tcp() -> Self {
        Self::start_tcp_with(inventory_service::app::ServeOptions::local()).await
    }

    /// The full inventory server on 127.0.0.1 with `opts`.
    pub async fn start_tcp_with(opts: inventory_service::app::ServeOptions) -> Self {
        Self::serve(opts, None).await
    }

    /// The full inventory server (auth off) on 127.0.0.1 with the asynchronous saga's
    /// consumer on `events`.
    pub async fn start_with_events(events: ferry_events::EventSettings) -> Self {
        Self::serve(inventory_service::app::ServeOptions::local(), Some(events)).await
    }

    async fn serve(
        opts: inventory_service::app::ServeOptions,
        events: Option<ferry_events::EventSettings>,
    ) -> Self {
        let (store, dir) = Self::store().await;
        let stop = StopOnDrop(opts.shutdown.clone());
        let running = inventory_service::app::start_with_events(store.clone(), opts, events).await.unwrap();
        let channel =
            Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
        Self {
            store,
            channel,
            addr: Some(running.grpc_addr),
            http: Some(running.http_addr),
            _stop: Some(stop),
            _dir: dir,
        }
    }

    pub fn client(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.channel.clone())
    }

    /// Sets the stock of `sku` (straight in the store: no token needed).
    pub async fn set(&self, sku: &str, quantity: i64) {
        let cmd = SetStock {
            sku: Sku::parse("sku", sku).unwrap(),
            quantity: ferry_proto::domain::StockLevel::parse("quantity", quantity).unwrap(),
        };
        self.store.set(&cmd).await.unwrap();
    }

    /// The stock of `sku` (straight from the store).
    pub async fn stock(&self, sku: &str) -> i64 {
        self.store.get(&Sku::parse("sku", sku).unwrap()).await.unwrap()
    }

    /// Waits until no deduction or release is executing.
    pub async fn quiet(&self) {
        eventually("inventory calls to finish", Duration::from_secs(20), || async {
            self.store.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
    }
}

/// An inventory server on `store`, reachable over in-memory pipes (no sockets, no timers: safe
/// under a paused clock).
pub fn over_duplex(store: Arc<dyn InventoryStore>) -> Channel {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<tokio::io::DuplexStream>();
    let api = InventoryServiceServer::new(InventoryApi::new(store, Arc::new(InventoryMetrics::default())));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        let _ = tonic::transport::Server::builder().add_service(api).serve_with_incoming(incoming).await;
    });
    tonic::transport::Endpoint::from_static("http://inventory.test").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let sent = tx.send(server);
            async move {
                sent.map_err(|_| std::io::Error::other("inventory test server gone"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }),
    )
}

/// Where order replicas keep their orders.
pub enum Database {
    Sqlite(TempSqlite),
    /// A PostgreSQL URL and a schema of this test's own.
    Postgres {
        url: String,
        schema: String,
    },
}

impl Database {
    pub fn sqlite() -> Self {
        Self::Sqlite(TempSqlite::new("orders.db"))
    }

    /// `None` (after printing `SKIPPED:`) when `FERRY_TEST_POSTGRES_URL` is not set.
    pub fn postgres(what: &str) -> Option<Self> {
        let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            println!("SKIPPED: {what} (FERRY_TEST_POSTGRES_URL is not set; `make test` sets it)");
            return None;
        };
        Some(Self::Postgres { url, schema: format!("o_{}", uuid::Uuid::new_v4().simple()) })
    }

    pub fn store_options(&self) -> order_service::store::StoreOptions {
        use order_service::store::StoreOptions;
        match self {
            Self::Sqlite(db) => StoreOptions::new(db.url()),
            Self::Postgres { url, schema } => {
                StoreOptions { pg_schema: Some(schema.clone()), max_connections: 8, ..StoreOptions::new(url) }
            }
        }
    }
}

/// A CreateOrder request.
pub fn order(request_id: &str, customer: &str, items: &[(&str, i64)]) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        customer_id: customer.into(),
        items: items.iter().map(|(s, q)| OrderItem { sku: (*s).into(), quantity: *q }).collect(),
    }
}

/// `request` with a client deadline (sent as `grpc-timeout`).
pub fn with_deadline<T>(request: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request);
    r.set_timeout(deadline);
    r
}

/// Every order of `customer` (all pages).
pub async fn list_all(client: &OrderServiceClient<Channel>, customer: &str) -> Vec<Order> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .clone()
            .list_orders(ListOrdersRequest {
                customer_id: customer.into(),
                page_size: 100,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// `true` once the order can no longer change on its own.
pub fn is_settled(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Confirmed | OrderStatus::Failed | OrderStatus::Cancelled)
}

pub mod nats;

/// Cancels on drop.
pub struct StopOnDrop(pub CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The real `order-service` binary as a child process.
pub mod process {
    use std::{
        net::SocketAddr,
        process::{Child, Command, Stdio},
        time::Duration,
    };

    use ferry_proto::order::v1::order_service_client::OrderServiceClient;
    use tonic::transport::Channel;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    pub fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    /// A running order-service; killed (SIGKILL) on drop.
    pub struct OrderProcess {
        pub child: Child,
        pub grpc: SocketAddr,
        pub http: SocketAddr,
    }

    impl OrderProcess {
        /// Starts order-service with `args` after the listen addresses, auth off, and `envs`.
        pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Self {
            let (grpc, http) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_order-service"))
                .args(["--log-format", "text", "--log-level", "warn", "--drain-seconds", "0"])
                .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &http.to_string()])
                .args(args)
                .envs(envs.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start order-service");
            Self { child, grpc, http }
        }

        /// Waits until the server answers SERVING, and returns a client.
        pub async fn serving(&self) -> OrderServiceClient<Channel> {
            let addr = self.grpc;
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
                        let ok = HealthClient::new(ch.clone())
                            .check(HealthCheckRequest { service: String::new() })
                            .await
                            .map(|r| r.into_inner().status() == ServingStatus::Serving)
                            .unwrap_or(false);
                        if ok {
                            return OrderServiceClient::new(ch);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("order-service did not become SERVING within 30 s")
        }

        /// SIGKILL, and waits for the process to go.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// The `/metrics` page.
        pub async fn metrics(&self) -> String {
            http_get(self.http, "/metrics").await
        }
    }

    impl Drop for OrderProcess {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A minimal HTTP/1.0 GET.
    pub async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
        if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// The value of an unlabelled sample in a metrics page.
    pub fn sample(page: &str, name: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}
