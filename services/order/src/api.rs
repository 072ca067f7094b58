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
    inventory::v1::ReleaseStockRequest,
    order::v1::{
        CancelOrderRequest, CancelOrderResponse, CreateOrderRequest, CreateOrderResponse, GetOrderRequest,
        GetOrderResponse, ListOrdersRequest, ListOrdersResponse, WatchOrderRequest, WatchOrderResponse,
        order_service_server::OrderService,
    },
};
use ferry_service_common::{
    deadline::{effective_deadline, parse_grpc_timeout},
    telemetry::TraceContext,
};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    client::InventoryClient,
    events::{self, EventLog},
    saga::Sagas,
    store::{Cursor, Order, OrderStatus, OrderStore, Saga},
    watch,
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
        registry.register(
            "orders_failed",
            "Orders that failed for a business reason and gave every line back",
            m.failed.clone(),
        );
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
    sagas: Sagas,
    inventory: InventoryClient,
    metrics: Arc<OrderMetrics>,
    server_timeout_ms: Arc<AtomicU64>,
    compensation_timeout: Duration,
    events: EventLog,
}

impl OrderApi {
    /// Handlers over `store`: CreateOrder runs `sagas`; CancelOrder releases through
    /// `inventory` within its own `compensation_timeout`. A caller waits no longer than its
    /// deadline or `server_timeout_ms`.
    pub fn new(
        store: Arc<dyn OrderStore>,
        sagas: Sagas,
        inventory: InventoryClient,
        metrics: Arc<OrderMetrics>,
        server_timeout_ms: Arc<AtomicU64>,
        compensation_timeout: Duration,
    ) -> Self {
        Self {
            store,
            sagas,
            inventory,
            metrics,
            server_timeout_ms,
            compensation_timeout,
            events: EventLog::default(),
        }
    }

    /// Writes events (and wakes WatchOrder streams) through `events`, shared with whatever
    /// else changes orders in this process.
    pub fn with_events(mut self, events: EventLog) -> Self {
        self.events = events;
        self
    }

    /// Cancels an order of the asynchronous saga: CONFIRMED → CANCELLING with
    /// StockReleaseRequested in the outbox, in one transaction. Inventory's StockReleased
    /// makes it CANCELLED. A CANCELLING order is answered as it is (its release is on its way).
    async fn cancel_through_events(&self, order: Order) -> Result<Order, Status> {
        if order.status != OrderStatus::Confirmed {
            return Ok(order);
        }
        let event = events::release_requested(&order, ferry_proto::events::v1::ReleaseCause::OrderCancelling);
        let moved = self
            .store
            .advance_async(&order.order_id, OrderStatus::Confirmed, OrderStatus::Cancelling, "", Some(&event))
            .await?;
        match moved {
            Some(cancelling) => {
                self.events.committed(&order.order_id, true);
                Ok(cancelling)
            }
            // Changed meanwhile (a concurrent cancel): answer what it is now.
            None => self.store.get(&order.order_id).await?.ok_or_else(|| Status::not_found("order vanished")),
        }
    }

    /// The order `id`, or `NOT_FOUND`.
    async fn order(&self, id: &OrderId) -> Result<Order, Status> {
        self.store.get(id.as_str()).await?.ok_or_else(|| Status::not_found(format!("order `{id}` not found")))
    }

    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let client = req.metadata().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let server = Duration::from_millis(self.server_timeout_ms.load(Ordering::Relaxed));
        Instant::now() + effective_deadline(client, server)
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
        let order = self.sagas.create(cmd, trace, deadline).await?;
        Ok(Response::new(CreateOrderResponse { order: Some(order.to_proto()) }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let id = OrderId::try_from(request.into_inner())?;
        let order = self.order(&id).await?;
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

    type WatchOrderStream = tokio_stream::wrappers::ReceiverStream<Result<WatchOrderResponse, Status>>;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let deadline = self.deadline(&request);
        let id = OrderId::try_from(request.into_inner())?;
        let order = self.order(&id).await?;
        Ok(Response::new(watch::watch(self.store.clone(), self.events.changes(), order, deadline)))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let trace = request.extensions().get::<TraceContext>().copied();
        let id = OrderId::try_from(request.into_inner())?;
        let order = self.order(&id).await?;
        match order.status {
            OrderStatus::Cancelled => {
                return Ok(Response::new(CancelOrderResponse { order: Some(order.to_proto()) }));
            }
            OrderStatus::Pending | OrderStatus::Compensating | OrderStatus::Failed => {
                return Err(Status::failed_precondition(format!(
                    "order `{id}` is {} and cannot be cancelled",
                    order.status.as_str()
                )));
            }
            OrderStatus::Confirmed | OrderStatus::Cancelling => {}
        }
        if order.saga == Saga::Async {
            let order = self.cancel_through_events(order).await?;
            return Ok(Response::new(CancelOrderResponse { order: Some(order.to_proto()) }));
        }
        let this = self.clone();
        let order = tokio::spawn(async move {
            let order = this
                .store
                .transition(&order.order_id, &[OrderStatus::Confirmed], OrderStatus::Cancelling, "", None)
                .await?
                .ok_or_else(|| Status::not_found("order vanished"))?;
            this.events.committed(&order.order_id, false);
            if order.status == OrderStatus::Cancelled {
                return Ok(order);
            }
            let all: Vec<usize> = (0..order.items.len()).collect();
            if !this.compensate(&order, &all, trace).await {
                return Err(Status::unavailable("giving stock back did not complete; retry CancelOrder"));
            }
            let event = this.events.event(|| events::cancelled(&order.order_id));
            let done = this
                .store
                .transition(
                    &order.order_id,
                    &[OrderStatus::Cancelling],
                    OrderStatus::Cancelled,
                    "",
                    event.as_ref(),
                )
                .await?
                .ok_or_else(|| Status::not_found("order vanished"))?;
            this.metrics.cancelled.inc();
            this.events.committed(&order.order_id, event.is_some());
            Ok::<_, Status>(done)
        })
        .await
        .map_err(|e| Status::internal(format!("cancel task failed: {e}")))??;
        Ok(Response::new(CancelOrderResponse { order: Some(order.to_proto()) }))
    }
}
