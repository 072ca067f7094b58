//! Wiring of the inventory server: listeners, middleware, health, reflection, the metrics
//! port and the drain sequence. [`start`] is what `main` and the tests call.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ferry_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
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
use tonic_health::ServingStatus;

use crate::{
    api::{InventoryApi, InventoryMetrics},
    store::InventoryStore,
};

/// The gRPC service name (for health checks).
pub const SERVICE_NAME: &str = "ferry.inventory.v1.InventoryService";

/// Scope each method needs.
pub fn scopes() -> ScopeTable {
    let m = |name: &str| format!("/{SERVICE_NAME}/{name}");
    ScopeTable::new([
        (m("DeductStock"), "inventory:write"),
        (m("ReleaseStock"), "inventory:write"),
        (m("GetStock"), "inventory:read"),
        (m("SetStock"), "inventory:admin"),
        (m("Restock"), "inventory:admin"),
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
    /// Cancelled to start the drain (SIGTERM in `main`).
    pub shutdown: CancellationToken,
}

impl ServeOptions {
    /// Loopback, ephemeral ports, auth off, short drain: for tests and benchmarks.
    pub fn local() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: None,
            max_concurrent_requests: 0,
            request_timeout: Duration::from_secs(10),
            drain: DrainTimings { drain: Duration::ZERO, grace: Duration::from_secs(5) },
            max_connection_age: Duration::from_secs(300),
            health_probe_interval: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Runtime-adjustable middleware state (config reload).
    pub plumbing: Plumbing,
    /// Cancel to drain and stop.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub task: JoinHandle<anyhow::Result<Stopped>>,
}

/// Binds, then serves in a background task until `opts.shutdown` is cancelled and drained.
pub async fn start(store: Arc<dyn InventoryStore>, opts: ServeOptions) -> anyhow::Result<Running> {
    let grpc_listener = TcpListener::bind(opts.grpc_addr).await?;
    let http_listener = TcpListener::bind(opts.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let mut registry = Registry::default();
    let plumbing =
        Plumbing::new(&mut registry, opts.auth, opts.max_concurrent_requests, opts.request_timeout);
    let inv_metrics = Arc::new(InventoryMetrics::register(&mut registry));
    let registry = Arc::new(registry);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_all(&reporter, &[SERVICE_NAME], ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = InventoryServiceServer::new(InventoryApi::new(store.clone(), inv_metrics));

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
        tracing::info!(?stopped, "inventory server stopped");
        Ok(stopped?)
    });
    tracing::info!(%grpc_addr, %http_addr, "inventory service listening");
    Ok(Running { grpc_addr, http_addr, plumbing, shutdown: opts.shutdown, task })
}
