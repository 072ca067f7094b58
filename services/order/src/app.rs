//! Wiring of the order server. [`start`] is what `main` and the tests call.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ferry_proto::order::v1::order_service_server::OrderServiceServer;
use ferry_service_common::{
    auth::{Authenticator, ScopeTable},
    health,
    http::{self as side, Readiness},
    server::{self, Plumbing},
    shutdown::{self, DrainTimings, Stopped},
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::ServingStatus;

use crate::{
    api::{OrderApi, OrderMetrics},
    client::{ClientMetrics, ClientSettings, InventoryClient},
    store::OrderStore,
};

/// The gRPC service name (for health checks).
pub const SERVICE_NAME: &str = "ferry.order.v1.OrderService";

/// Scope each method needs.
pub fn scopes() -> ScopeTable {
    let m = |name: &str| format!("/{SERVICE_NAME}/{name}");
    ScopeTable::new([
        (m("CreateOrder"), "orders:write"),
        (m("CancelOrder"), "orders:write"),
        (m("GetOrder"), "orders:read"),
        (m("ListOrders"), "orders:read"),
    ])
}

/// What [`start`] needs beyond the store.
#[derive(Debug)]
pub struct ServeOptions {
    /// gRPC address (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// Metrics/health HTTP address.
    pub http_addr: SocketAddr,
    /// `None` disables auth.
    pub auth: Option<Authenticator>,
    /// Concurrency limit (0 = unlimited).
    pub max_concurrent_requests: usize,
    /// Server-side per-call bound.
    pub request_timeout: Duration,
    /// Drain timings.
    pub drain: DrainTimings,
    /// GOAWAY after this age.
    pub max_connection_age: Duration,
    /// Database probe interval for health.
    pub health_probe_interval: Duration,
    /// Channel to inventory (lazy).
    pub inventory: Channel,
    /// Retry, breaker and token settings for inventory.
    pub client: ClientSettings,
    /// Budget for giving stock back after a failure.
    pub compensation_timeout: Duration,
    /// Cancelled to start the drain.
    pub shutdown: CancellationToken,
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Runtime-adjustable middleware state.
    pub plumbing: Plumbing,
    /// The inventory client (reconfigurable).
    pub client: InventoryClient,
    /// Cancel to drain and stop.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub task: JoinHandle<anyhow::Result<Stopped>>,
}

/// Binds, then serves in a background task until `opts.shutdown` is cancelled and drained.
pub async fn start(store: Arc<dyn OrderStore>, opts: ServeOptions) -> anyhow::Result<Running> {
    let grpc_listener = TcpListener::bind(opts.grpc_addr).await?;
    let http_listener = TcpListener::bind(opts.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let mut registry = Registry::default();
    let plumbing =
        Plumbing::new(&mut registry, opts.auth, opts.max_concurrent_requests, opts.request_timeout);
    let order_metrics = Arc::new(OrderMetrics::register(&mut registry));
    let client_metrics = Arc::new(ClientMetrics::register(&mut registry));
    let registry = Arc::new(registry);

    let client = InventoryClient::new(opts.inventory, opts.client, client_metrics);
    let api = OrderServiceServer::new(OrderApi::new(
        store.clone(),
        client.clone(),
        order_metrics,
        plumbing.request_timeout_ms.clone(),
        opts.compensation_timeout,
    ));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_all(&reporter, &[SERVICE_NAME], ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let readiness = Readiness::new();
    let background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    tokio::spawn(health::probe_loop(
        reporter.clone(),
        vec![SERVICE_NAME],
        readiness.clone(),
        opts.health_probe_interval,
        background.clone(),
        move || {
            let store = store.clone();
            async move { store.ping().await }
        },
    ));
    let http = tokio::spawn(side::serve(
        http_listener,
        side::router(registry, readiness.clone()),
        background.clone(),
    ));

    let serve = server::builder(opts.max_connection_age)
        .layer(plumbing.layers())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(api)
        .serve_with_incoming_shutdown(
            server::incoming(grpc_listener),
            stop_accepting.clone().cancelled_owned(),
        );

    let shutdown = opts.shutdown.clone();
    let timings = opts.drain;
    let task = tokio::spawn(async move {
        let on_draining = {
            let reporter = reporter.clone();
            let readiness = readiness.clone();
            move || {
                readiness.set_draining();
                tokio::spawn(async move {
                    health::set_all(&reporter, &[SERVICE_NAME], ServingStatus::NotServing).await;
                });
            }
        };
        let stopped = shutdown::drive(serve, shutdown, stop_accepting, timings, on_draining).await;
        background.cancel();
        let _ = http.await;
        tracing::info!(?stopped, "order server stopped");
        Ok(stopped?)
    });
    tracing::info!(%grpc_addr, %http_addr, "order service listening");
    Ok(Running { grpc_addr, http_addr, plumbing, client, shutdown: opts.shutdown, task })
}
