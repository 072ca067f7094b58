//! Wiring of the inventory server. [`start`] is what `main` and the tests call; the listeners,
//! middleware, health, reflection, metrics port and drain sequence are
//! [`ferry_service_common::app`]'s.

use std::sync::Arc;

use ferry_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
pub use ferry_service_common::app::{Running, ServeOptions};
use ferry_service_common::{app, auth::ScopeTable};
use tonic::service::Routes;

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

/// Binds, then serves in a background task until `opts.shutdown` is cancelled and drained.
pub async fn start(store: Arc<dyn InventoryStore>, opts: ServeOptions) -> anyhow::Result<Running> {
    start_with_events(store, opts, None).await
}

/// [`start`], and with `events` the asynchronous saga's consumer
/// ([`crate::events::StockEvents`]), which runs until the server has stopped.
pub async fn start_with_events(
    store: Arc<dyn InventoryStore>,
    opts: ServeOptions,
    events: Option<ferry_events::EventSettings>,
) -> anyhow::Result<Running> {
    let mut made = None;
    let running = app::start(opts, |registry, _| {
        let metrics = Arc::new(InventoryMetrics::register(registry));
        let consumer_metrics =
            events.is_some().then(|| Arc::new(ferry_events::ConsumerMetrics::register(registry)));
        made = Some((metrics.clone(), consumer_metrics));
        let api = InventoryServiceServer::new(InventoryApi::new(store.clone(), metrics));
        let probe = {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.ping().await }
            }
        };
        Ok(app::Service::new(SERVICE_NAME, Routes::new(api), &[ferry_proto::INVENTORY_DESCRIPTOR_SET], probe))
    })
    .await?;
    let (Some(settings), Some((metrics, Some(consumer_metrics)))) = (events, made) else {
        return Ok(running);
    };
    let broker = ferry_events::Broker::connect(&settings, "inventory-service").await?;
    let spec = ferry_events::ConsumerSpec {
        stream: settings.names.order_stream(),
        durable: crate::events::CONSUMER.into(),
        filter_subjects: vec![
            settings.names.subject_of_kind("OrderPlaced").unwrap_or_default(),
            settings.names.subject_of_kind("StockReleaseRequested").unwrap_or_default(),
        ],
    };
    let handler = Arc::new(crate::events::StockEvents::new(store, broker.clone(), metrics));
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(ferry_events::consumer::run(
        broker,
        spec,
        handler,
        settings,
        consumer_metrics,
        stop.clone(),
    ));
    let Running { grpc_addr, http_addr, plumbing, shutdown, task } = running;
    let task = tokio::spawn(async move {
        let stopped = task.await;
        stop.cancel();
        let _ = consumer.await;
        stopped?
    });
    Ok(Running { grpc_addr, http_addr, plumbing, shutdown, task })
}
