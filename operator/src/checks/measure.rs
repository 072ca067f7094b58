//! One measurement of a promotion check: the I/O of rollouts besides the reconciler's API calls.
//! It runs in a background task ([`super::runner`]), never inside a reconcile; the planner folds
//! the outcome into status (`ferry_operator_core::rollout::checks`).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, pem::PemObject},
};
use serde_json::Value;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use ferry_operator_core::{
    crd::{CheckSpec, GrpcHealthCheck, PrometheusCheck, WebhookCheck},
    rollout::checks::CheckContext,
};

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL cannot be used.
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    /// The HTTP call failed or timed out.
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// The webhook answered with a non-2xx status.
    #[error("webhook answered {0}")]
    Status(u16),
    /// Prometheus answered something that is not one sample.
    #[error("unexpected Prometheus answer: {0}")]
    Prometheus(String),
    /// The query result is outside the threshold range.
    #[error("value {value} outside [{min}, {max}]")]
    OutOfRange {
        /// The measured value.
        value: f64,
        /// Lower bound (or -inf).
        min: f64,
        /// Upper bound (or +inf).
        max: f64,
    },
    /// No pod to check.
    #[error("no ready pod of the revision to check")]
    NoPods,
    /// A gRPC health call failed or did not answer SERVING.
    #[error("gRPC health of {addr}: {message}")]
    Grpc {
        /// The pod address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The check names none of grpcHealth, webhook or prometheus.
    #[error("check has no kind")]
    NoKind,
}

/// Why the HTTP client of the checks cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA bundle cannot be read or holds no certificate.
    #[error("CA bundle {path}: {message}")]
    CaBundle {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// TLS or the client could not be set up.
    #[error("HTTP client: {0}")]
    Setup(String),
}

/// The HTTP client of webhook and Prometheus checks: one connection pool, rustls with the ring
/// provider, `http://` and `https://`. Servers are verified against the system's trust store plus
/// any extra roots (`--check-ca-file`).
#[derive(Clone, Debug)]
pub struct HttpChecks {
    client: reqwest::Client,
}

impl HttpChecks {
    /// A client trusting the system's roots and `extra_roots`.
    pub fn new(extra_roots: Vec<CertificateDer<'static>>) -> Result<Self, ClientError> {
        let setup = |e: &dyn std::fmt::Display| ClientError::Setup(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
                .map_err(|e| setup(&e))?;
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let client =
            reqwest::Client::builder().tls_backend_preconfigured(tls).build().map_err(|e| setup(&e))?;
        Ok(Self { client })
    }

    /// A client trusting the system's roots and the certificates of a PEM bundle, if given.
    pub fn with_ca_file(path: Option<&Path>) -> Result<Self, ClientError> {
        let Some(path) = path else {
            return Self::new(Vec::new());
        };
        let bad = |message: String| ClientError::CaBundle { path: path.display().to_string(), message };
        let roots = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if roots.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        Self::new(roots)
    }
}

/// Takes one measurement: `Ok(message)` when it passed.
pub async fn measure(
    http: &HttpChecks,
    spec: &CheckSpec,
    ctx: &CheckContext,
    pods: &[SocketAddr],
) -> Result<String, CheckError> {
    if let Some(w) = &spec.webhook {
        webhook(http, w, ctx).await
    } else if let Some(p) = &spec.prometheus {
        prometheus(http, p, &ctx.revision).await
    } else if let Some(g) = &spec.grpc_health {
        grpc_health(g, pods).await
    } else {
        Err(CheckError::NoKind)
    }
}

fn timeout_of(seconds: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

/// Sends `request` with `timeout`: the answer's status and body.
async fn send(request: reqwest::RequestBuilder, timeout: Duration) -> Result<(u16, Vec<u8>), CheckError> {
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            CheckError::Http(format!("timed out after {timeout:?}"))
        } else if e.is_builder() {
            CheckError::InvalidUrl(e.to_string())
        } else {
            // NB: the error's sources say why (connection refused, certificate not trusted).
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            CheckError::Http(message)
        }
    };
    let response = request.timeout(timeout).send().await.map_err(failed)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(failed)?;
    Ok((status, body.to_vec()))
}

/// POSTs the context; any 2xx passes.
pub async fn webhook(http: &HttpChecks, w: &WebhookCheck, ctx: &CheckContext) -> Result<String, CheckError> {
    let body = serde_json::to_vec(ctx).map_err(|e| CheckError::Http(e.to_string()))?;
    let request =
        (http.client.post(&w.url)).header(http::header::CONTENT_TYPE, "application/json").body(body);
    let (status, _) = send(request, timeout_of(w.timeout_seconds, 10)).await?;
    if (200..300).contains(&status) {
        Ok(format!("webhook answered {status}"))
    } else {
        Err(CheckError::Status(status))
    }
}

/// The single value of a Prometheus instant-query answer (a scalar or a one-sample vector).
pub fn prometheus_value(answer: &Value) -> Result<f64, CheckError> {
    let data = &answer["data"];
    let raw = match data["resultType"].as_str() {
        Some("scalar") => &data["result"][1],
        Some("vector") => {
            let result = data["result"].as_array().map_or(&[][..], Vec::as_slice);
            if result.len() != 1 {
                return Err(CheckError::Prometheus(format!("{} samples (want exactly 1)", result.len())));
            }
            &result[0]["value"][1]
        }
        _ => return Err(CheckError::Prometheus(answer.to_string())),
    };
    raw.as_str().and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| CheckError::Prometheus(raw.to_string()))
}

/// Whether `value` is in the inclusive range (an unset bound is open; NaN never passes).
pub fn in_range(value: f64, min: Option<f64>, max: Option<f64>) -> Result<(), CheckError> {
    let (lo, hi) = (min.unwrap_or(f64::NEG_INFINITY), max.unwrap_or(f64::INFINITY));
    if value >= lo && value <= hi { Ok(()) } else { Err(CheckError::OutOfRange { value, min: lo, max: hi }) }
}

/// Runs the instant query and compares the value with the range.
pub async fn prometheus(
    http: &HttpChecks,
    p: &PrometheusCheck,
    revision: &str,
) -> Result<String, CheckError> {
    let query = p.query.replace("{{revision}}", revision);
    let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
    let request = http.client.get(url).query(&[("query", query)]);
    let (status, body) = send(request, timeout_of(p.timeout_seconds, 10)).await?;
    if status != 200 {
        return Err(CheckError::Status(status));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| CheckError::Prometheus(e.to_string()))?;
    let value = prometheus_value(&answer)?;
    in_range(value, p.threshold_range.min, p.threshold_range.max)?;
    Ok(format!("value {value}"))
}

/// `grpc.health.v1.Health/Check` against every address; passes when every one answers SERVING.
pub async fn grpc_health(g: &GrpcHealthCheck, pods: &[SocketAddr]) -> Result<String, CheckError> {
    if pods.is_empty() {
        return Err(CheckError::NoPods);
    }
    let timeout = timeout_of(g.timeout_seconds, 5);
    for addr in pods {
        let fail = |message: String| CheckError::Grpc { addr: *addr, message };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| fail(e.to_string()))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: g.service.clone().unwrap_or_default() })
            .await
            .map_err(|s| fail(format!("{}: {}", s.code(), s.message())))?;
        let status = answer.into_inner().status;
        if status != ServingStatus::Serving as i32 {
            let name = ServingStatus::try_from(status)
                .map_or_else(|_| status.to_string(), |s| s.as_str_name().to_string());
            return Err(fail(format!("status {name}")));
        }
    }
    Ok(format!("{} pods SERVING", pods.len()))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests;
