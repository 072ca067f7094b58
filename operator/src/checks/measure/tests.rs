//! The check runner against in-process servers on 127.0.0.1: a tonic health server and a small
//! HTTP server. Nothing here dials a pod.

use std::net::SocketAddr;

use axum::{
    Router,
    http::{StatusCode, Uri},
    routing::{get, post},
};
use bytes::Bytes;
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
        let _ = tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming).await;
        drop(reporter);
    });
    addr
}

fn http() -> HttpChecks {
    HttpChecks::new(Vec::new()).expect("client")
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
    }
}

fn grpc(service: &str) -> GrpcHealthCheck {
    GrpcHealthCheck { service: Some(service.into()), timeout_seconds: Some(2), ..GrpcHealthCheck::default() }
}

#[tokio::test]
async fn grpc_health_passes_when_every_pod_is_serving() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let b = health_server("order.Order", HealthStatus::Serving).await;
    let out = grpc_health(&grpc("order.Order"), &[a, b]).await.expect("passes");
    assert_eq!(out, "2 pods SERVING");
}

#[tokio::test]
async fn grpc_health_fails_when_one_pod_is_not_serving() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let b = health_server("order.Order", HealthStatus::NotServing).await;
    let err = grpc_health(&grpc("order.Order"), &[a, b]).await.expect_err("fails");
    assert!(err.to_string().contains("NOT_SERVING"), "{err}");
}

#[tokio::test]
async fn grpc_health_fails_for_an_unknown_service_and_for_no_pods_and_for_a_closed_port() {
    let a = health_server("order.Order", HealthStatus::Serving).await;
    let err = grpc_health(&grpc("other.Svc"), &[a]).await.expect_err("unknown service");
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(matches!(grpc_health(&grpc(""), &[]).await, Err(CheckError::NoPods)));
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
    let w = WebhookCheck { url: format!("http://{addr}/ok"), timeout_seconds: Some(2) };
    webhook(&http(), &w, &context()).await.expect("2xx passes");
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
    let w = WebhookCheck { url: format!("http://{addr}/no"), timeout_seconds: Some(2) };
    assert!(matches!(webhook(&http(), &w, &context()).await, Err(CheckError::Status(500))));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let w = WebhookCheck { url: format!("http://{closed}/"), timeout_seconds: Some(2) };
    assert!(matches!(webhook(&http(), &w, &context()).await, Err(CheckError::Http(_))));
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
        query: "sum(rate(grpc_server_handled_total{revision=\"{{revision}}\",grpc_code=\"OK\"}[1m]))".into(),
        threshold_range: crate::crd::ThresholdRange { min: Some(0.99), max: None },
        timeout_seconds: Some(2),
    };
    assert_eq!(prometheus(&http(), &p, "abc").await.expect("in range"), "value 0.995");
    p.threshold_range.min = Some(0.999);
    assert!(matches!(prometheus(&http(), &p, "abc").await, Err(CheckError::OutOfRange { .. })));
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
    let spec = CheckSpec { name: "health".into(), grpc_health: Some(grpc("")), ..CheckSpec::default() };
    let ctx = context();
    assert!(measure(&http(), &spec, &ctx, &[a]).await.is_ok());
    let none = CheckSpec { name: "none".into(), ..CheckSpec::default() };
    assert!(matches!(measure(&http(), &none, &ctx, &[a]).await, Err(CheckError::NoKind)));
}

// === https ===

/// A CA and a certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca: rcgen::Certificate,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "ferry test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &issuer).expect("cert");
    Pki { ca: ca_cert, cert, key }
}

/// A TLS listener for `axum::serve`: a connection is handed over once its handshake succeeded.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `router` over https with the certificate of `pki`.
async fn serve_tls(router: Router, pki: &Pki) -> SocketAddr {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.der().clone(), pki.ca.der().clone()], key)
        .expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener =
        TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)) };
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

#[tokio::test]
async fn an_https_webhook_signed_by_a_trusted_ca_passes_and_an_untrusted_one_fails_naming_the_certificate() {
    let pki = pki();
    let router = Router::new().route("/ok", post(|| async { StatusCode::OK }));
    let addr = serve_tls(router, &pki).await;
    let w = WebhookCheck { url: format!("https://localhost:{}/ok", addr.port()), timeout_seconds: Some(5) };
    let trusting = HttpChecks::new(vec![pki.ca.der().clone()]).expect("client");
    assert_eq!(webhook(&trusting, &w, &context()).await.expect("trusted"), "webhook answered 200");
    match webhook(&http(), &w, &context()).await {
        Err(CheckError::Http(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("an untrusted server must fail: {other:?}"),
    }
}

#[tokio::test]
async fn an_https_prometheus_is_queried_with_the_ca_of_a_pem_bundle() {
    let pki = pki();
    let router = Router::new().route(
        "/api/v1/query",
        get(|| async { json!({"data": {"resultType": "scalar", "result": [1.0, "1"]}}).to_string() }),
    );
    let addr = serve_tls(router, &pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, pki.ca.pem()).expect("write");
    let client = HttpChecks::with_ca_file(Some(&bundle)).expect("client from the bundle");
    let p = PrometheusCheck {
        address: format!("https://127.0.0.1:{}", addr.port()),
        query: "up".into(),
        threshold_range: crate::crd::ThresholdRange { min: Some(1.0), max: None },
        timeout_seconds: Some(5),
    };
    assert_eq!(prometheus(&client, &p, "abc").await.expect("trusted"), "value 1");
    std::fs::write(&bundle, "not a certificate").expect("write");
    assert!(matches!(HttpChecks::with_ca_file(Some(&bundle)), Err(ClientError::CaBundle { .. })));
}
