//! One measurement of a promotion check. This is the only I/O of rollouts besides the reconciler's
//! API calls; [`super::checks`] turns the outcomes into verdicts and [`super::machine`] reads them
//! from status.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Serialize;
use serde_json::Value;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::crd::{CheckSpec, GrpcHealthCheck, PrometheusCheck, WebhookCheck};

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

/// The rollout context POSTed to webhooks, and what checks measure against.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckContext {
    /// Namespace of the MicroService.
    pub namespace: String,
    /// Name of the MicroService.
    pub microservice: String,
    /// `PrePromotion` or `PostPromotion`.
    pub stage: String,
    /// The check's name.
    pub check: String,
    /// Hash of the revision checked.
    pub revision: String,
    /// Its image.
    pub image: String,
    /// Revision traffic is on.
    pub active_revision: String,
    /// Service that selects the revision checked (`NAME-preview` before promotion, `NAME` after).
    pub service: String,
    /// Ready pod addresses (IP and the gRPC port) of the revision, for gRPC health checks.
    #[serde(skip)]
    pub pods: Vec<SocketAddr>,
}

/// Takes one measurement: `Ok(message)` when it passed.
pub async fn measure(spec: &CheckSpec, ctx: &CheckContext) -> Result<String, CheckError> {
    if let Some(w) = &spec.webhook {
        webhook(w, ctx).await
    } else if let Some(p) = &spec.prometheus {
        prometheus(p, &ctx.revision).await
    } else if let Some(g) = &spec.grpc_health {
        grpc_health(g, &ctx.pods).await
    } else {
        Err(CheckError::NoKind)
    }
}

fn timeout_of(seconds: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(
        seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(default),
    )
}

async fn http(
    method: http::Method,
    url: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, Bytes), CheckError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| CheckError::InvalidUrl(url.into()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| CheckError::Http(e.to_string()))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CheckError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CheckError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CheckError::Http(format!("timed out after {timeout:?}")))?
}

/// POSTs the context; any 2xx passes.
pub async fn webhook(w: &WebhookCheck, ctx: &CheckContext) -> Result<String, CheckError> {
    let body = serde_json::to_vec(ctx).map_err(|e| CheckError::Http(e.to_string()))?;
    let (status, _) = http(
        http::Method::POST,
        &w.url,
        Some(body),
        timeout_of(w.timeout_seconds, 10),
    )
    .await?;
    if (200..300).contains(&status) {
        Ok(format!("webhook answered {status}"))
    } else {
        Err(CheckError::Status(status))
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of a Prometheus instant-query answer (a scalar or a one-sample vector).
pub fn prometheus_value(answer: &Value) -> Result<f64, CheckError> {
    let data = &answer["data"];
    let raw = match data["resultType"].as_str() {
        Some("scalar") => &data["result"][1],
        Some("vector") => {
            let result = data["result"].as_array().map_or(&[][..], Vec::as_slice);
            if result.len() != 1 {
                return Err(CheckError::Prometheus(format!(
                    "{} samples (want exactly 1)",
                    result.len()
                )));
            }
            &result[0]["value"][1]
        }
        _ => return Err(CheckError::Prometheus(answer.to_string())),
    };
    raw.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| CheckError::Prometheus(raw.to_string()))
}

/// Whether `value` is in the inclusive range (an unset bound is open; NaN never passes).
pub fn in_range(value: f64, min: Option<f64>, max: Option<f64>) -> Result<(), CheckError> {
    let (lo, hi) = (
        min.unwrap_or(f64::NEG_INFINITY),
        max.unwrap_or(f64::INFINITY),
    );
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(CheckError::OutOfRange {
            value,
            min: lo,
            max: hi,
        })
    }
}

/// Runs the instant query and compares the value with the range.
pub async fn prometheus(p: &PrometheusCheck, revision: &str) -> Result<String, CheckError> {
    let query = p.query.replace("{{revision}}", revision);
    let url = format!(
        "{}/api/v1/query?query={}",
        p.address.trim_end_matches('/'),
        url_encode(&query)
    );
    let (status, body) = http(
        http::Method::GET,
        &url,
        None,
        timeout_of(p.timeout_seconds, 10),
    )
    .await?;
    if status != 200 {
        return Err(CheckError::Status(status));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| CheckError::Prometheus(e.to_string()))?;
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
        let fail = |message: String| CheckError::Grpc {
            addr: *addr,
            message,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| fail(e.to_string()))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: g.service.clone().unwrap_or_default(),
            })
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
