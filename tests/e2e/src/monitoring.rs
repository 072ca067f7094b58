//! The monitoring stack on kind (tests/e2e/monitoring/prometheus/install.sh):
//! Prometheus's and Alertmanager's HTTP APIs through their Services, and the
//! webhook receiver Alertmanager sends every alert to (a server in the test
//! process, listening in the node's network namespace, where pods reach it at
//! the node's IP).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, routing::post};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use serde_json::Value;

/// The namespace install.sh installs the stack in.
pub const NAMESPACE: &str = "monitoring";
/// The label Prometheus selects ServiceMonitors and PrometheusRules by
/// (what a MicroService sets in `spec.monitoring.labels`).
pub const RELEASE_LABEL: (&str, &str) = ("release", "kube-prometheus-stack");
/// The port of the Alertmanager webhook on the node (install.sh's
/// `MONITORING_WEBHOOK_PORT`).
pub const WEBHOOK_PORT: u16 = 19093;
/// The in-cluster address of Prometheus, as the operator's promotion checks dial it.
pub const PROMETHEUS_IN_CLUSTER: &str = "http://prometheus.monitoring.svc:9090";

fn http() -> reqwest::Client {
    // reqwest is built without a rustls provider (the workspace picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client")
}

async fn service_base(client: &Client, name: &str, port: u16) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let svc = services.get(name).await.unwrap_or_else(|e| {
        panic!(
            "no service {NAMESPACE}/{name} ({e}): install the monitoring stack first \
             (tests/e2e/monitoring/prometheus/install.sh target/kind/kubeconfig)"
        )
    });
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    format!("http://{ip}:{port}")
}

/// Prometheus's HTTP API.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Through the ClusterIP of `monitoring/prometheus` (the test runs in the node's netns).
    pub async fn connect(client: &Client) -> Self {
        Self { base: service_base(client, "prometheus", 9090).await, http: http() }
    }

    /// `GET /api/v1/<path>` with `query`; the `data` field, or why not.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("{}/api/v1/{path}", self.base);
        let response = self.http.get(&url).query(query).send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("{url}: {e}"))?;
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: {status} {e}: {body}"))?;
        if value["status"] != "success" {
            return Err(format!("{url} {query:?}: {status} {body}"));
        }
        Ok(value["data"].clone())
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.get("query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The active targets.
    pub async fn targets(&self) -> Vec<Value> {
        let data = self.get("targets", &[("state", "active")]).await.unwrap_or_default();
        data["activeTargets"].as_array().cloned().unwrap_or_default()
    }

    /// The rule groups (`/api/v1/rules`).
    pub async fn rule_groups(&self) -> Vec<Value> {
        let data = self.get("rules", &[]).await.unwrap_or_default();
        data["groups"].as_array().cloned().unwrap_or_default()
    }
}

/// One notification Alertmanager POSTed, with when it arrived.
#[derive(Clone, Debug)]
pub struct Notification {
    pub received: Instant,
    pub body: Value,
}

impl Notification {
    /// `(alertname, status, labels)` of each alert in the notification.
    pub fn alerts(&self) -> Vec<(String, String, Value)> {
        let alerts = self.body["alerts"].as_array().cloned().unwrap_or_default();
        alerts
            .into_iter()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap_or_default().to_string();
                let status = a["status"].as_str().unwrap_or_default().to_string();
                (name, status, a["labels"].clone())
            })
            .collect()
    }
}

type Received = Arc<Mutex<Vec<Notification>>>;

/// Alertmanager's webhook receiver: every POST to `/alerts` is kept.
pub struct WebhookReceiver {
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Listens on `0.0.0.0:WEBHOOK_PORT` (in the node's netns: the node IP).
    pub async fn start() -> Self {
        let received: Received = Arc::default();
        async fn keep(State(received): State<Received>, body: String) {
            // Alertmanager's webhook payload (JSON); anything else is kept as a string.
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            received.lock().expect("received").push(Notification { received: Instant::now(), body });
        }
        let app = Router::new().route("/alerts", post(keep)).with_state(received.clone());
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", WEBHOOK_PORT))
            .await
            .unwrap_or_else(|e| panic!("bind the webhook receiver on :{WEBHOOK_PORT}: {e}"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { received, server }
    }

    /// The first firing alert named `alertname` with label `namespace`, and when it arrived.
    pub fn firing(&self, alertname: &str, namespace: &str) -> Option<(Instant, Value)> {
        let received = self.received.lock().expect("received");
        received.iter().find_map(|n| {
            n.alerts()
                .into_iter()
                .find(|(name, status, labels)| {
                    name == alertname && status == "firing" && labels["namespace"] == namespace
                })
                .map(|(_, _, labels)| (n.received, labels))
        })
    }

    /// Every notification so far, for a failure message.
    pub fn summary(&self) -> String {
        let received = self.received.lock().expect("received");
        let lines: Vec<String> = received
            .iter()
            .flat_map(|n| n.alerts())
            .map(|(name, status, labels)| format!("{name} {status} {labels}"))
            .collect();
        format!("{} notifications: [{}]", received.len(), lines.join("; "))
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Alertmanager's `/api/v2/alerts`, for a failure message.
pub async fn alertmanager_alerts(client: &Client) -> String {
    let url = format!("{}/api/v2/alerts", service_base(client, "alertmanager", 9093).await);
    match http().get(&url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("{url}: {e}"),
    }
}

/// The dashboard's PromQL with Grafana's variables replaced: `$namespace`,
/// `$microservice` (every MicroService: `.*`), `$__rate_interval` (1m).
pub fn instantiate(expr: &str, namespace: &str) -> String {
    expr.replace("${microservice:regex}", ".*")
        .replace("$microservice", ".*")
        .replace("$namespace", namespace)
        .replace("$__rate_interval", "1m")
}

/// Every PromQL expression of the shipped dashboard (panel targets and
/// templating queries), with the panel's title.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.to_string(), expr.to_string()));
            }
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = var["query"]["query"].as_str()
            && let Some(inner) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'))
        {
            // label_values(SELECTOR, LABEL): the series Grafana reads the label from.
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            out.push((
                format!("variable {}", var["name"].as_str().unwrap_or_default()),
                selector.to_string(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_variables_become_a_namespace_and_every_microservice() {
        let expr = r#"sum(rate(x{namespace="$namespace",service=~"$microservice"}[$__rate_interval])) + y{d=~"(${microservice:regex})"}"#;
        assert_eq!(
            instantiate(expr, "ns"),
            r#"sum(rate(x{namespace="ns",service=~".*"}[1m])) + y{d=~"(.*)"}"#
        );
    }

    #[test]
    fn dashboard_queries_include_panels_and_label_values_selectors() {
        let dashboard = serde_json::json!({
            "panels": [{"title": "A", "targets": [{"expr": "up"}, {"expr": "down"}]}, {"title": "row"}],
            "templating": {"list": [
                {"name": "ms", "query": {"query": "label_values(x{namespace=\"$namespace\"}, service)"}},
                {"name": "datasource", "query": "prometheus"}
            ]}
        });
        let queries = dashboard_queries(&dashboard);
        assert_eq!(
            queries,
            vec![
                ("A".to_string(), "up".to_string()),
                ("A".to_string(), "down".to_string()),
                ("variable ms".to_string(), "x{namespace=\"$namespace\"}".to_string()),
            ]
        );
    }
}
