//! gRPC handlers for `ferry.inventory.v1.InventoryService`.

use std::sync::Arc;

use ferry_proto::{
    domain::{DeductStock, ReleaseStock, Restock, SetStock, Sku},
    inventory::v1::{
        DeductStockRequest, DeductStockResponse, GetStockRequest, GetStockResponse, ReleaseStockRequest,
        ReleaseStockResponse, RestockRequest, RestockResponse, SetStockRequest, SetStockResponse,
        inventory_service_server::InventoryService,
    },
};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tonic::{Request, Response, Status};

use crate::store::{InventoryStore, StoreError};

/// Domain metrics.
#[derive(Debug, Clone, Default)]
pub struct InventoryMetrics {
    /// `inventory_deductions_total`: deductions executed (not replays).
    pub deductions: Counter,
    /// `inventory_deducted_units_total`.
    pub deducted_units: Counter,
    /// `inventory_deduction_replays_total`: answers replayed for a known request_id.
    pub replays: Counter,
    /// `inventory_rejected_insufficient_stock_total`.
    pub rejected_for_stock: Counter,
    /// `inventory_releases_total`: releases that gave stock back.
    pub releases: Counter,
}

impl InventoryMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("inventory_deductions", "Stock deductions executed", m.deductions.clone());
        registry.register(
            "inventory_deducted_units",
            "Units taken by executed deductions",
            m.deducted_units.clone(),
        );
        registry.register(
            "inventory_deduction_replays",
            "Deductions answered from the idempotency record",
            m.replays.clone(),
        );
        registry.register(
            "inventory_rejected_insufficient_stock",
            "Deductions refused for lack of stock",
            m.rejected_for_stock.clone(),
        );
        registry.register("inventory_releases", "Releases that gave stock back", m.releases.clone());
        m
    }
}

impl InventoryMetrics {
    /// Counts a deduction `cmd` that answered `d` (executed or replayed).
    pub fn deducted(&self, cmd: &DeductStock, d: crate::store::Deducted) {
        if d.replayed {
            self.replays.inc();
        } else {
            self.deductions.inc();
            self.deducted_units.inc_by(cmd.quantity.get().unsigned_abs());
        }
    }
}

/// The handlers.
#[derive(Clone)]
pub struct InventoryApi {
    store: Arc<dyn InventoryStore>,
    metrics: Arc<InventoryMetrics>,
}

impl InventoryApi {
    /// Serves `store`.
    pub fn new(store: Arc<dyn InventoryStore>, metrics: Arc<InventoryMetrics>) -> Self {
        Self { store, metrics }
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn deduct_stock(
        &self,
        request: Request<DeductStockRequest>,
    ) -> Result<Response<DeductStockResponse>, Status> {
        let cmd = DeductStock::try_from(request.into_inner())?;
        match self.store.deduct(&cmd).await {
            Ok(d) => {
                self.metrics.deducted(&cmd, d);
                tracing::debug!(sku = %cmd.sku, quantity = cmd.quantity.get(), remaining = d.remaining, replayed = d.replayed, "deducted");
                Ok(Response::new(DeductStockResponse { remaining: d.remaining, replayed: d.replayed }))
            }
            Err(err) => {
                if matches!(err, StoreError::Insufficient { .. }) {
                    self.metrics.rejected_for_stock.inc();
                }
                Err(err.into())
            }
        }
    }

    async fn release_stock(
        &self,
        request: Request<ReleaseStockRequest>,
    ) -> Result<Response<ReleaseStockResponse>, Status> {
        let cmd = ReleaseStock::try_from(request.into_inner())?;
        let r = self.store.release(&cmd).await?;
        if r.released {
            self.metrics.releases.inc();
        }
        tracing::debug!(sku = %cmd.sku, request_id = %cmd.request_id, released = r.released, "release");
        Ok(Response::new(ReleaseStockResponse { released: r.released, remaining: r.remaining }))
    }

    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<GetStockResponse>, Status> {
        let sku = Sku::try_from(request.into_inner())?;
        let quantity = self.store.get(&sku).await?;
        Ok(Response::new(GetStockResponse { sku: sku.to_string(), quantity }))
    }

    async fn set_stock(
        &self,
        request: Request<SetStockRequest>,
    ) -> Result<Response<SetStockResponse>, Status> {
        let cmd = SetStock::try_from(request.into_inner())?;
        let quantity = self.store.set(&cmd).await?;
        tracing::info!(sku = %cmd.sku, quantity, "stock set");
        Ok(Response::new(SetStockResponse { sku: cmd.sku.to_string(), quantity }))
    }

    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<RestockResponse>, Status> {
        let cmd = Restock::try_from(request.into_inner())?;
        let quantity = self.store.restock(&cmd).await?;
        tracing::info!(sku = %cmd.sku, added = cmd.quantity.get(), quantity, "restocked");
        Ok(Response::new(RestockResponse { sku: cmd.sku.to_string(), quantity }))
    }
}
