//! OTLP span export: an in-process collector on 127.0.0.1:0 receives the inventory server's
//! span for a call, in the trace named by the call's `traceparent`.

use std::{sync::Arc, time::Duration};

use ferry_proto::inventory::v1::{
    DeductStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
};
use ferry_service_common::{
    telemetry::{self, TraceContext},
    testing::TempSqlite,
};
use inventory_service::{
    app::{self, ServeOptions},
    store::{self, StoreOptions},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, transport::Channel};
use tracing_subscriber::layer::SubscriberExt;

const LIMIT: Duration = Duration::from_secs(30);

/// A collector that forwards every span it receives, with its service name, to a channel.
struct Collector {
    spans: mpsc::UnboundedSender<(String, Span)>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let _ = self.spans.send((service.clone(), span));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_collector() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
    let addr = listener.local_addr().expect("collector address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { spans: tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

#[tokio::test]
async fn an_inventory_call_is_exported_over_otlp_in_the_trace_of_its_traceparent() {
    tokio::time::timeout(LIMIT, async {
        let (endpoint, mut spans) = start_collector().await;
        let provider = telemetry::exporter_for(Some((&endpoint, "inventory-service")))
            .expect("exporter builds")
            .expect("an endpoint turns export on");
        // Thread-local subscriber: this test's runtime is single-threaded, so the server's
        // tasks run on this thread and report to it.
        let subscriber = tracing_subscriber::registry().with(telemetry::otel_layer(&provider));
        let _guard = tracing::subscriber::set_default(subscriber);

        let db = TempSqlite::new("inv.db");
        let store = store::open(&StoreOptions::new(db.url())).await.expect("open the store");
        let running = app::start(Arc::clone(&store), ServeOptions::local()).await.expect("start inventory");
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = InventoryServiceClient::new(channel);
        client.set_stock(SetStockRequest { sku: "otel-sku".into(), quantity: 5 }).await.expect("set stock");

        let caller = TraceContext::generate();
        let mut request = Request::new(DeductStockRequest {
            request_id: "otel-1".into(),
            sku: "otel-sku".into(),
            quantity: 1,
        });
        request.metadata_mut().insert("traceparent", caller.header_value().parse().expect("header"));
        client.deduct_stock(request).await.expect("deduct");

        // Flush off this thread: the exporter's channel is driven by this runtime.
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .expect("flush task")
            .expect("flush succeeds");

        loop {
            let (service, span) = spans.recv().await.expect("collector is running");
            if span.trace_id != caller.trace_id.to_be_bytes() {
                continue;
            }
            assert_eq!(span.name, "ferry.inventory.v1.InventoryService/DeductStock");
            assert_eq!(span.parent_span_id, caller.span_id.to_be_bytes(), "parent is the caller's span");
            assert!(service.contains("inventory-service"), "service.name was {service}");
            break;
        }
        running.shutdown.cancel();
        running.task.await.expect("join").expect("clean stop");
    })
    .await
    .expect("test finished in time");
}
