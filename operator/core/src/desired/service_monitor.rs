//! The Prometheus Operator ServiceMonitor (`monitoring.coreos.com/v1`), built as a `DynamicObject`
//! so the operator does not depend on the Prometheus Operator's types.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{child_meta, labels};
use crate::crd::{MicroService, PortProtocol, PortSpec};

/// API group of the ServiceMonitor.
pub const GROUP: &str = "monitoring.coreos.com";
/// Name of the ServiceMonitor CRD, watched to detect whether it is served.
pub const CRD_NAME: &str = "servicemonitors.monitoring.coreos.com";
/// Default scrape interval.
pub const DEFAULT_INTERVAL: &str = "30s";
/// Default scrape timeout (capped at the interval).
pub const DEFAULT_SCRAPE_TIMEOUT: &str = "10s";
/// Default metrics path.
pub const DEFAULT_PATH: &str = "/metrics";

/// The ServiceMonitor's API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// Whether the spec asks for a ServiceMonitor.
pub fn wanted(ms: &MicroService) -> bool {
    ms.spec.monitoring.as_ref().is_some_and(|m| m.enabled != Some(false))
}

/// The port scraped: `monitoring.port`, else a port named `metrics`, else the first http port, else the
/// first port.
pub fn metrics_port(ms: &MicroService) -> Option<&PortSpec> {
    let ports = &ms.spec.ports;
    if let Some(name) = ms.spec.monitoring.as_ref().and_then(|m| m.port.as_deref()) {
        return ports.iter().find(|p| p.name == name);
    }
    ports
        .iter()
        .find(|p| p.name == "metrics")
        .or_else(|| ports.iter().find(|p| p.protocol == PortProtocol::Http))
        .or_else(|| ports.first())
}

fn seconds(duration: &str) -> u64 {
    // Durations are validated by the CRD pattern `^([0-9]+(ms|s|m|h))+$`.
    let mut total_ms: u64 = 0;
    let mut number: u64 = 0;
    let mut chars = duration.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(d) = c.to_digit(10) {
            number = number.saturating_mul(10).saturating_add(u64::from(d));
            continue;
        }
        let unit_ms = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => 0,
        };
        total_ms = total_ms.saturating_add(number.saturating_mul(unit_ms));
        number = 0;
    }
    total_ms / 1000
}

/// Builds the ServiceMonitor, when monitoring is wanted.
pub fn service_monitor(ms: &MicroService) -> Option<DynamicObject> {
    if !wanted(ms) {
        return None;
    }
    let monitoring = ms.spec.monitoring.clone().unwrap_or_default();
    let port = metrics_port(ms)?;
    let interval = monitoring.interval.clone().unwrap_or_else(|| DEFAULT_INTERVAL.into());
    let timeout = match monitoring.scrape_timeout.clone() {
        Some(t) => t,
        None if seconds(DEFAULT_SCRAPE_TIMEOUT) > seconds(&interval) => interval.clone(),
        None => DEFAULT_SCRAPE_TIMEOUT.into(),
    };
    let mut meta = child_meta(ms);
    if let Some(extra) = &monitoring.labels {
        let labels = meta.labels.get_or_insert_with(Default::default);
        for (k, v) in extra {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut sm = DynamicObject::new("", &api_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": labels::selector_labels(ms)},
            "endpoints": [{
                "port": port.name,
                "path": monitoring.path.clone().unwrap_or_else(|| DEFAULT_PATH.into()),
                "interval": interval,
                "scrapeTimeout": timeout,
            }],
        }
    }));
    sm.metadata = meta;
    Some(sm)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    fn with_metrics(monitoring: serde_json::Value) -> MicroService {
        from(json!({
            "ports": [
                {"name": "grpc", "port": 50051, "protocol": "grpc"},
                {"name": "metrics", "port": 9090, "protocol": "http"}
            ],
            "monitoring": monitoring
        }))
    }

    #[test]
    fn the_service_monitor_scrapes_the_metrics_port_of_this_service_with_defaults() {
        let sm = service_monitor(&with_metrics(json!({}))).expect("sm");
        assert_eq!(sm.types.as_ref().expect("types").api_version, "monitoring.coreos.com/v1");
        assert_eq!(sm.types.as_ref().expect("types").kind, "ServiceMonitor");
        assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["ferry.dev/microservice"], "order");
        let endpoint = &sm.data["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "30s");
        assert_eq!(endpoint["scrapeTimeout"], "10s");
    }

    #[test]
    fn extra_labels_reach_the_service_monitor_without_replacing_managed_ones() {
        let ms = with_metrics(json!({"labels": {"release": "prom", "app.kubernetes.io/managed-by": "me"}}));
        let labels = service_monitor(&ms).expect("sm").metadata.labels.expect("labels");
        assert_eq!(labels.get("release").map(String::as_str), Some("prom"));
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("ferry-operator"));
    }

    #[test]
    fn interval_timeout_path_and_port_follow_the_spec() {
        let ms =
            with_metrics(json!({"port": "grpc", "path": "/m", "interval": "1m", "scrapeTimeout": "20s"}));
        let sm = service_monitor(&ms).expect("sm");
        let endpoint = &sm.data["spec"]["endpoints"][0];
        assert_eq!((endpoint["port"].as_str(), endpoint["path"].as_str()), (Some("grpc"), Some("/m")));
        assert_eq!(
            (endpoint["interval"].as_str(), endpoint["scrapeTimeout"].as_str()),
            (Some("1m"), Some("20s"))
        );
    }

    #[test]
    fn the_default_timeout_is_capped_at_a_short_interval() {
        let sm = service_monitor(&with_metrics(json!({"interval": "5s"}))).expect("sm");
        assert_eq!(sm.data["spec"]["endpoints"][0]["scrapeTimeout"], "5s");
    }

    #[test]
    fn durations_are_read_in_seconds() {
        assert_eq!(seconds("1m30s"), 90);
        assert_eq!(seconds("1500ms"), 1);
        assert_eq!(seconds("2h"), 7200);
    }

    #[test]
    fn monitoring_disabled_or_absent_builds_nothing() {
        assert!(service_monitor(&with_metrics(json!({"enabled": false}))).is_none());
        assert!(service_monitor(&order()).is_none());
    }

    #[test]
    fn without_a_metrics_port_the_first_http_port_then_the_first_port_is_scraped() {
        let ms = from(json!({"ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc"},
            {"name": "web", "port": 8080, "protocol": "http"}
        ], "monitoring": {}}));
        assert_eq!(metrics_port(&ms).expect("port").name, "web");
        let ms = from(json!({"monitoring": {}}));
        assert_eq!(metrics_port(&ms).expect("port").name, "grpc");
    }
}
