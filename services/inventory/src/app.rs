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
    app::start(opts, |registry, _| {
        let metrics = Arc::new(InventoryMetrics::register(registry));
        let api = InventoryServiceServer::new(InventoryApi::new(store.clone(), metrics));
        let probe = move || {
            let store = store.clone();
            async move { store.ping().await }
        };
        Ok(app::Service::new(SERVICE_NAME, Routes::new(api), &[ferry_proto::FILE_DESCRIPTOR_SET], probe))
    })
    .await
}
