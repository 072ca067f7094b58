//! The check runner against in-process servers on 127.0.0.1: a tonic health server and a small
//! HTTP server. Nothing here dials a pod.

use std::net::SocketAddr;

use axum::{
    Router,
    http::{StatusCode, Uri},
    routing::{get, post},
};
use serde_json::json;
use tokio::net::TcpListener;
use tonic_health::ServingStatus as HealthStatus;

use super::*;

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// A tonic health server reporting `status` for `service` (and SERVING for the whole server).
async fn health_server(service: &str, status: HealthStatus) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(service, status).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await;
        drop(reporter);
    });
    addr
}

fn context() -> CheckContext {
    CheckContext {
        namespace: "shop".into(),
        microservice: "order".into(),
        stage: "PrePromotion".into(),
        check: "smoke".into(),
        revision: "abc".into(),
        image: "img:2".into(),
        active_revision: "old".into(),
        service: "order-preview".into(),
        pods: vec![],
    }
}

fn grpc(service: &str) -> GrpcHealthCheck {
    GrpcHealthCheck {
        service: Some(service.into()),
        timeout_seconds: Some(2),
        ..GrpcHealthCheck::default()
    }
}

#[tokio::test]
async fn grpc_health_passes_when_every_pod_is_serving() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let b = health_server("order.Order", HealthStatus::Serving).await;
    let out = grpc_health(&grpc("order.Order"), &[a, b])
        .await
        .expect("passes");
    assert_eq!(out, "2 pods SERVING");
}

#[tokio::test]
async fn grpc_health_fails_when_one_pod_is_not_serving() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let b = health_server("order.Order", HealthStatus::NotServing).await;
    let err = grpc_health(&grpc("order.Order"), &[a, b])
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("NOT_SERVING"), "{err}");
}

#[tokio::test]
async fn grpc_health_fails_for_an_unknown_service_and_for_no_pods_and_for_a_closed_port() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let err = grpc_health(&grpc("other.Svc"), &[a])
        .await
        .expect_err("unknown service");
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(matches!(
        grpc_health(&grpc(""), &[]).await,
        Err(CheckError::NoPods)
    ));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    assert!(grpc_health(&grpc(""), &[closed]).await.is_err());
}

#[tokio::test]
async fn a_webhook_passes_on_2xx_and_receives_the_rollout_context() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let router = Router::new().route(
        "/ok",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let addr = serve(router).await;
    let w = WebhookCheck {
        url: format!("http://{addr}/ok"),
        timeout_seconds: Some(2),
    };
    webhook(&w, &context()).await.expect("2xx passes");
    let body = rx.recv().await.expect("body");
    assert_eq!(body["revision"], "abc");
    assert_eq!(body["stage"], "PrePromotion");
    assert_eq!(body["microservice"], "order");
    assert_eq!(body["service"], "order-preview");
}

#[tokio::test]
async fn a_webhook_fails_on_a_non_2xx_answer_and_on_a_closed_port() {
    let router = Router::new().route("/no", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
    let addr = serve(router).await;
    let w = WebhookCheck {
        url: format!("http://{addr}/no"),
        timeout_seconds: Some(2),
    };
    assert!(matches!(
        webhook(&w, &context()).await,
        Err(CheckError::Status(500))
    ));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let w = WebhookCheck {
        url: format!("http://{closed}/"),
        timeout_seconds: Some(2),
    };
    assert!(matches!(
        webhook(&w, &context()).await,
        Err(CheckError::Http(_))
    ));
}

#[tokio::test]
async fn a_prometheus_check_compares_the_query_result_with_the_range() {
    let router = Router::new().route(
        "/api/v1/query",
        get(|uri: Uri| async move {
            let query = uri.query().unwrap_or_default().to_string();
            // The revision placeholder is substituted before the query is sent.
            let value = if query.contains("abc") { "0.995" } else { "0" };
            json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {}, "value": [1.0, value]}]}})
            .to_string()
        }),
    );
    let addr = serve(router).await;
    let mut p = PrometheusCheck {
        address: format!("http://{addr}"),
        query:
            "sum(rate(grpc_server_handled_total{revision=\"{{revision}}\",grpc_code=\"OK\"}[1m]))"
                .into(),
        threshold_range: crate::crd::ThresholdRange {
            min: Some(0.99),
            max: None,
        },
        timeout_seconds: Some(2),
    };
    assert_eq!(
        prometheus(&p, "abc").await.expect("in range"),
        "value 0.995"
    );
    p.threshold_range.min = Some(0.999);
    assert!(matches!(
        prometheus(&p, "abc").await,
        Err(CheckError::OutOfRange { .. })
    ));
}

#[test]
fn prometheus_answers_must_hold_exactly_one_sample() {
    let scalar = json!({"data": {"resultType": "scalar", "result": [1.0, "42"]}});
    assert_eq!(prometheus_value(&scalar).expect("scalar"), 42.0);
    let empty = json!({"data": {"resultType": "vector", "result": []}});
    assert!(prometheus_value(&empty).is_err());
    assert!(in_range(f64::NAN, None, None).is_err());
    assert!(in_range(5.0, Some(1.0), Some(5.0)).is_ok());
}

#[tokio::test]
async fn measure_dispatches_on_the_check_kind() {
    let a = health_server("", HealthStatus::Serving).await;
    let spec = CheckSpec {
        name: "health".into(),
        grpc_health: Some(grpc("")),
        ..CheckSpec::default()
    };
    let ctx = CheckContext {
        pods: vec![a],
        ..context()
    };
    assert!(measure(&spec, &ctx).await.is_ok());
    let none = CheckSpec {
        name: "none".into(),
        ..CheckSpec::default()
    };
    assert!(matches!(
        measure(&none, &ctx).await,
        Err(CheckError::NoKind)
    ));
}
