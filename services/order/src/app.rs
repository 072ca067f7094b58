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
    events::EventLog,
    reactions::{self, Reactions},
    recovery::{self, RecoveryMetrics},
    relay::{self, RelayMetrics},
    saga::{SagaSettings, Sagas},
    store::{OrderStore, Saga},
    watch::Changes,
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
        (m("WatchOrder"), "orders:read"),
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
    /// Budget for giving stock back when an order is cancelled.
    pub compensation_timeout: Duration,
    /// Leases, the recoverer, and which saga new orders run.
    pub sagas: SagaSettings,
    /// The broker: `Some` writes every state change's event to the outbox, relays it, and
    /// consumes inventory's answers. Required by the asynchronous saga.
    pub events: Option<ferry_events::EventSettings>,
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

/// Binds, then serves in a background task until `opts.server.shutdown` is cancelled and
/// drained; the recoverer runs beside it. Sagas still running when the server has stopped get
/// the shutdown grace to finish (their leases run out otherwise, and another run resumes them).
pub async fn start(store: Arc<dyn OrderStore>, opts: ServeOptions) -> anyhow::Result<Running> {
    let ServeOptions { server, inventory, client, compensation_timeout, sagas: saga_settings, events } = opts;
    if saga_settings.mode == Saga::Async && events.is_none() {
        anyhow::bail!("the asynchronous saga needs a message broker (--nats-url)");
    }
    let grace = server.drain.grace;
    let event_log = EventLog::new(events.is_some(), Changes::default());
    let mut made = None;
    let running = app::start(server, |registry, plumbing| {
        let order_metrics = Arc::new(OrderMetrics::register(registry));
        let client_metrics = Arc::new(ClientMetrics::register(registry));
        let recovery_metrics = Arc::new(RecoveryMetrics::register(registry));
        let event_metrics = events.is_some().then(|| {
            (
                Arc::new(RelayMetrics::register(registry)),
                Arc::new(ferry_events::ConsumerMetrics::register(registry)),
            )
        });
        let client = InventoryClient::new(inventory, client, client_metrics);
        let sagas = Sagas::new(
            store.clone(),
            client.clone(),
            order_metrics.clone(),
            saga_settings,
            event_log.clone(),
        );
        let api = OrderServiceServer::new(
            OrderApi::new(
                store.clone(),
                sagas.clone(),
                client.clone(),
                order_metrics.clone(),
                plumbing.request_timeout_ms.clone(),
                compensation_timeout,
            )
            .with_events(event_log.clone()),
        );
        made = Some((client, sagas, recovery_metrics, order_metrics, event_metrics));
        let probe = {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.ping().await }
            }
        };
        Ok(app::Service::new(SERVICE_NAME, Routes::new(api), &[ferry_proto::ORDER_DESCRIPTOR_SET], probe))
    })
    .await?;
    let (client, sagas, recovery_metrics, order_metrics, event_metrics) =
        made.ok_or_else(|| anyhow::anyhow!("the order service was not built"))?;
    let app::Running { grpc_addr, http_addr, plumbing, shutdown, task } = running;
    let recoverer =
        tokio::spawn(recovery::run(sagas.clone(), store.clone(), recovery_metrics, shutdown.clone()));
    // The relay and the consumer outlive the drain: events written by the last calls and
    // sagas are still published before the process exits.
    let events_stop = CancellationToken::new();
    let mut event_tasks = Vec::new();
    if let (Some(settings), Some((relay_metrics, consumer_metrics))) = (events, event_metrics) {
        let broker = ferry_events::Broker::connect(&settings, "order-service").await?;
        event_tasks.push(tokio::spawn(relay::run(
            store.clone(),
            broker.clone(),
            relay_metrics,
            event_log.relay_signal(),
            events_stop.clone(),
        )));
        let spec = ferry_events::ConsumerSpec {
            stream: settings.names.inventory_stream(),
            durable: reactions::CONSUMER.into(),
            filter_subjects: Vec::new(),
        };
        let reactions = Arc::new(Reactions::new(store.clone(), event_log.clone(), order_metrics));
        event_tasks.push(tokio::spawn(ferry_events::consumer::run(
            broker,
            spec,
            reactions,
            settings,
            consumer_metrics,
            events_stop.clone(),
        )));
    }
    let task = tokio::spawn(async move {
        let stopped = task.await;
        let _ = recoverer.await;
        sagas.drain(grace).await;
        events_stop.cancel();
        for t in event_tasks {
            let _ = t.await;
        }
        stopped?
    });
    Ok(Running { grpc_addr, http_addr, plumbing, client, shutdown, task })
}
