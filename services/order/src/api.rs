//! gRPC handlers for `ferry.order.v1.OrderService`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ferry_proto::{
    domain::{CreateOrder, ListOrders, OrderId},
    inventory::v1::{DeductStockRequest, ReleaseStockRequest},
    order::v1::{
        CancelOrderRequest, CancelOrderResponse, CreateOrderRequest, CreateOrderResponse, GetOrderRequest,
        GetOrderResponse, ListOrdersRequest, ListOrdersResponse, order_service_server::OrderService,
    },
};
use ferry_service_common::{
    deadline::{effective_deadline, parse_grpc_timeout},
    telemetry::TraceContext,
};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use crate::{
    client::InventoryClient,
    store::{Cursor, NewOrder, Order, OrderStatus, OrderStore},
};

/// Domain metrics.
#[derive(Debug, Clone, Default)]
pub struct OrderMetrics {
    /// `orders_confirmed_total`.
    pub confirmed: Counter,
    /// `orders_failed_total`.
    pub failed: Counter,
    /// `orders_cancelled_total`.
    pub cancelled: Counter,
    /// `order_compensations_total`: releases sent to undo a partial order or a cancel.
    pub compensations: Counter,
    /// `order_compensation_failures_total`: releases that did not go through (retried later).
    pub compensation_failures: Counter,
}

impl OrderMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("orders_confirmed", "Orders whose every item was deducted", m.confirmed.clone());
        registry.register("orders_failed", "Orders that failed and were compensated", m.failed.clone());
        registry.register("orders_cancelled", "Orders cancelled and released", m.cancelled.clone());
        registry.register("order_compensations", "Stock releases sent to inventory", m.compensations.clone());
        registry.register(
            "order_compensation_failures",
            "Stock releases that failed (the order stays retryable)",
            m.compensation_failures.clone(),
        );
        m
    }
}

/// The handlers. Cheap to clone.
#[derive(Clone)]
pub struct OrderApi {
    store: Arc<dyn OrderStore>,
    inventory: InventoryClient,
    metrics: Arc<OrderMetrics>,
    server_timeout_ms: Arc<AtomicU64>,
    compensation_timeout: Duration,
}

impl OrderApi {
    /// Handlers over `store`, deducting through `inventory`. Calls are bounded by the client's
    /// deadline or `server_timeout_ms`; compensation gets its own `compensation_timeout`.
    pub fn new(
        store: Arc<dyn OrderStore>,
        inventory: InventoryClient,
        metrics: Arc<OrderMetrics>,
        server_timeout_ms: Arc<AtomicU64>,
        compensation_timeout: Duration,
    ) -> Self {
        Self { store, inventory, metrics, server_timeout_ms, compensation_timeout }
    }

    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let client = req.metadata().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let server = Duration::from_millis(self.server_timeout_ms.load(Ordering::Relaxed));
        Instant::now() + effective_deadline(client, server)
    }

    /// Deducts every line; on a failure gives back what was taken (and the failed line, which
    /// may have executed if the failure was a timeout) and marks the order FAILED.
    async fn reserve(
        &self,
        order: Order,
        deadline: Instant,
        trace: Option<TraceContext>,
    ) -> Result<Order, Status> {
        let mut taken = Vec::with_capacity(order.items.len());
        for (i, line) in order.items.iter().enumerate() {
            let req = DeductStockRequest {
                request_id: order.line_key(i),
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
            };
            let status = match self.inventory.deduct(req, deadline, trace).await {
                Ok(_) => {
                    taken.push(i);
                    continue;
                }
                Err(status) => status,
            };
            let sku = &line.sku;
            let reason = match status.code() {
                Code::FailedPrecondition => format!("insufficient stock for sku `{sku}`"),
                Code::NotFound => format!("sku `{sku}` not found"),
                code => format!("inventory failed for sku `{sku}`: {code:?}: {}", status.message()),
            };
            tracing::info!(order_id = %order.order_id, %reason, "order failed; compensating");
            taken.push(i);
            if !self.compensate(&order, &taken, trace).await {
                return Err(Status::unavailable(format!(
                    "{reason}; giving stock back did not complete, retry CreateOrder with the same request_id"
                )));
            }
            self.store
                .transition(&order.order_id, &[OrderStatus::Pending], OrderStatus::Failed, &reason)
                .await?;
            self.metrics.failed.inc();
            return Err(match status.code() {
                Code::FailedPrecondition | Code::NotFound => Status::failed_precondition(reason),
                Code::DeadlineExceeded => Status::deadline_exceeded(reason),
                Code::InvalidArgument | Code::AlreadyExists | Code::Aborted => Status::aborted(reason),
                _ => Status::unavailable(reason),
            });
        }
        let after = self
            .store
            .transition(&order.order_id, &[OrderStatus::Pending], OrderStatus::Confirmed, "")
            .await?
            .ok_or_else(|| Status::internal("order vanished"))?;
        match after.status {
            OrderStatus::Failed => Err(Status::failed_precondition(after.failure_reason)),
            _ => {
                self.metrics.confirmed.inc();
                Ok(after)
            }
        }
    }

    /// Releases lines `indices` of `order`; `true` if all went through.
    async fn compensate(&self, order: &Order, indices: &[usize], trace: Option<TraceContext>) -> bool {
        let deadline = Instant::now() + self.compensation_timeout;
        let mut ok = true;
        for &i in indices {
            let Some(line) = order.items.get(i) else { continue };
            let req = ReleaseStockRequest {
                request_id: order.line_key(i),
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
            };
            self.metrics.compensations.inc();
            if let Err(status) = self.inventory.release(req, deadline, trace).await {
                ok = false;
                self.metrics.compensation_failures.inc();
                tracing::error!(order_id = %order.order_id, line = i, code = ?status.code(), message = status.message(), "release failed");
            }
        }
        ok
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let deadline = self.deadline(&request);
        let trace = request.extensions().get::<TraceContext>().copied();
        let cmd = CreateOrder::try_from(request.into_inner())?;
        let (order, created) = self
            .store
            .create_or_get(NewOrder {
                order_id: uuid::Uuid::new_v4().to_string(),
                request_id: cmd.request_id.to_string(),
                customer_id: cmd.customer_id,
                items: cmd.items,
            })
            .await?;
        match order.status {
            OrderStatus::Pending => {}
            OrderStatus::Failed => return Err(Status::failed_precondition(order.failure_reason)),
            _ => return Ok(Response::new(CreateOrderResponse { order: Some(order.to_proto()) })),
        }
        tracing::info!(order_id = %order.order_id, created, "reserving stock");
        // NB: runs in its own task so that a caller hanging up mid-way cannot stop the
        // compensation half-way; the order's status is always settled.
        let this = self.clone();
        let order = tokio::spawn(async move { this.reserve(order, deadline, trace).await })
            .await
            .map_err(|e| Status::internal(format!("order task failed: {e}")))??;
        Ok(Response::new(CreateOrderResponse { order: Some(order.to_proto()) }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let id = OrderId::try_from(request.into_inner())?;
        let order = self
            .store
            .get(id.as_str())
            .await?
            .ok_or_else(|| Status::not_found(format!("order `{id}` not found")))?;
        Ok(Response::new(GetOrderResponse { order: Some(order.to_proto()) }))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let q = ListOrders::try_from(request.into_inner())?;
        let cursor = q
            .page_token
            .as_deref()
            .map(|t| {
                Cursor::parse(t).ok_or_else(|| {
                    Status::invalid_argument("invalid field `page_token`: not a token this server issued")
                })
            })
            .transpose()?;
        let mut orders = self.store.list(q.customer_id.as_str(), q.page_size + 1, cursor.as_ref()).await?;
        let more = orders.len() > q.page_size as usize;
        orders.truncate(q.page_size as usize);
        let next_page_token = match orders.last() {
            Some(last) if more => {
                Cursor { created_at_ms: last.created_at_ms, order_id: last.order_id.clone() }.token()
            }
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: orders.iter().map(Order::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let trace = request.extensions().get::<TraceContext>().copied();
        let id = OrderId::try_from(request.into_inner())?;
        let order = self
            .store
            .get(id.as_str())
            .await?
            .ok_or_else(|| Status::not_found(format!("order `{id}` not found")))?;
        match order.status {
            OrderStatus::Cancelled => {
                return Ok(Response::new(CancelOrderResponse { order: Some(order.to_proto()) }));
            }
            OrderStatus::Pending | OrderStatus::Failed => {
                return Err(Status::failed_precondition(format!(
                    "order `{id}` is {} and cannot be cancelled",
                    order.status.as_str()
                )));
            }
            OrderStatus::Confirmed | OrderStatus::Cancelling => {}
        }
        let this = self.clone();
        let order = tokio::spawn(async move {
            let order = this
                .store
                .transition(&order.order_id, &[OrderStatus::Confirmed], OrderStatus::Cancelling, "")
                .await?
                .ok_or_else(|| Status::not_found("order vanished"))?;
            if order.status == OrderStatus::Cancelled {
                return Ok(order);
            }
            let all: Vec<usize> = (0..order.items.len()).collect();
            if !this.compensate(&order, &all, trace).await {
                return Err(Status::unavailable("giving stock back did not complete; retry CancelOrder"));
            }
            let done = this
                .store
                .transition(&order.order_id, &[OrderStatus::Cancelling], OrderStatus::Cancelled, "")
                .await?
                .ok_or_else(|| Status::not_found("order vanished"))?;
            this.metrics.cancelled.inc();
            Ok::<_, Status>(done)
        })
        .await
        .map_err(|e| Status::internal(format!("cancel task failed: {e}")))??;
        Ok(Response::new(CancelOrderResponse { order: Some(order.to_proto()) }))
    }
}
