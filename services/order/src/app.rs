//! Wiring of the order server. [`start`] is what `main` and the tests call; the listeners,
//! middleware, health, reflection, metrics port and drain sequence are
//! [`ferry_service_common::app`]'s.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ferry_proto::order::v1::order_service_server::OrderServiceServer;
use ferry_service_common::{app, auth::ScopeTable, server::Plumbing, shutdown::Stopped};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Channel};

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
    /// Listeners, limits, auth, drain: what every Ferry server takes.
    pub server: app::ServeOptions,
    /// Channel to inventory (lazy).
    pub inventory: Channel,
    /// Retry, breaker and token settings for inventory.
    pub client: ClientSettings,
    /// Budget for giving stock back after a failure.
    pub compensation_timeout: Duration,
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

/// Binds, then serves in a background task until `opts.server.shutdown` is cancelled and drained.
pub async fn start(store: Arc<dyn OrderStore>, opts: ServeOptions) -> anyhow::Result<Running> {
    let ServeOptions { server, inventory, client, compensation_timeout } = opts;
    let mut made = None;
    let running = app::start(server, |registry, plumbing| {
        let order_metrics = Arc::new(OrderMetrics::register(registry));
        let client_metrics = Arc::new(ClientMetrics::register(registry));
        let client = InventoryClient::new(inventory, client, client_metrics);
        let api = OrderServiceServer::new(OrderApi::new(
            store.clone(),
            client.clone(),
            order_metrics,
            plumbing.request_timeout_ms.clone(),
            compensation_timeout,
        ));
        made = Some(client);
        let probe = move || {
            let store = store.clone();
            async move { store.ping().await }
        };
        Ok(app::Service::new(SERVICE_NAME, Routes::new(api), &[ferry_proto::FILE_DESCRIPTOR_SET], probe))
    })
    .await?;
    let client = made.ok_or_else(|| anyhow::anyhow!("the order service was not built"))?;
    let app::Running { grpc_addr, http_addr, plumbing, shutdown, task } = running;
    Ok(Running { grpc_addr, http_addr, plumbing, client, shutdown, task })
}
