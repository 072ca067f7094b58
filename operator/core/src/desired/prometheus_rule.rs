//! The Prometheus Operator PrometheusRule (`monitoring.coreos.com/v1`) holding a MicroService's
//! alerts, built as a `DynamicObject` like the ServiceMonitor.
//!
//! The gRPC alerts select the series scraped through the MicroService's own Service
//! (`namespace`, `service` labels the Prometheus Operator adds), so the `NAME-preview` Service of a
//! blue-green rollout, which selects some of the same pods, does not count them twice. The
//! kube-state-metrics alerts select the pods and the autoscaler by name: no label allowlist needed.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::child_meta;
use crate::crd::{AlertsSpec, GrpcCode, MicroService};

/// Name of the PrometheusRule CRD, watched to detect whether it is served.
pub const CRD_NAME: &str = "prometheusrules.monitoring.coreos.com";
/// Plural of the resource, as API discovery lists it.
pub const PLURAL: &str = "prometheusrules";
/// Default p99 latency threshold, in milliseconds.
pub const DEFAULT_LATENCY_P99_MS: i32 = 500;
/// Default error ratio threshold.
pub const DEFAULT_ERROR_RATIO: f64 = 0.05;
/// Default `for` of the latency alert.
pub const DEFAULT_LATENCY_FOR: &str = "10m";
/// Default `for` of the error ratio alert.
pub const DEFAULT_ERROR_RATIO_FOR: &str = "5m";
/// Default `for` of the pods-not-ready alert.
pub const DEFAULT_PODS_NOT_READY_FOR: &str = "15m";
/// Default `for` of the autoscaler-at-max alert.
pub const DEFAULT_MAX_REPLICAS_FOR: &str = "15m";
/// Default window the latency and error rates are taken over.
pub const DEFAULT_RATE_WINDOW: &str = "5m";
/// gRPC codes counted as errors by default: failures of the server, not answers to bad requests.
pub const DEFAULT_ERROR_CODES: [GrpcCode; 6] = [
    GrpcCode::Unknown,
    GrpcCode::DeadlineExceeded,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
];

/// The PrometheusRule's API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(super::service_monitor::GROUP, "v1", "PrometheusRule"),
        PLURAL,
    )
}

/// The alerts settings, when the spec asks for alerts.
pub fn wanted(ms: &MicroService) -> Option<&AlertsSpec> {
    ms.spec.monitoring.as_ref().and_then(|m| m.alerts.as_ref()).filter(|a| a.enabled != Some(false))
}

fn code_name(code: GrpcCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A number as PromQL reads it (`0.5`, not `5e-1`).
fn number(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// Pods of this MicroService's Deployments: `NAME-<rs hash>-<id>`, or with blue-green
/// `NAME-<revision hash>-<rs hash>-<id>`. Prometheus anchors the regex at both ends.
pub fn pod_regex(name: &str) -> String {
    format!("{name}(-[0-9a-f]{{{}}})?-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}", crate::keys::HASH_LEN)
}

/// One alerting rule. Every alert carries `microservice: NAME` and `severity`, then the spec's labels.
fn alert(
    ms: &MicroService,
    name: &str,
    expr: String,
    for_: &str,
    severity: &str,
    summary: String,
    extra: &AlertsSpec,
) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("severity".into(), json!(severity));
    labels.insert("microservice".into(), json!(ms.metadata.name));
    for (k, v) in extra.labels.iter().flatten() {
        labels.insert(k.clone(), json!(v));
    }
    json!({
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": format!(
                "msvc/{} in namespace {}: the value is {{{{ $value }}}}",
                ms.metadata.name.as_deref().unwrap_or_default(),
                ms.metadata.namespace.as_deref().unwrap_or_default()
            ),
        },
    })
}

/// Builds the PrometheusRule, when alerts are wanted.
pub fn prometheus_rule(ms: &MicroService) -> Option<DynamicObject> {
    let alerts = wanted(ms)?;
    let meta = child_meta(ms);
    let name = meta.name.clone().unwrap_or_default();
    let ns = meta.namespace.clone().unwrap_or_default();
    let grpc = format!(r#"namespace="{ns}",service="{name}""#);
    let window = alerts.rate_window.as_deref().unwrap_or(DEFAULT_RATE_WINDOW);

    let latency_ms = alerts.latency_p99_threshold_ms.unwrap_or(DEFAULT_LATENCY_P99_MS);
    let latency = alert(
        ms,
        "GrpcLatencyHigh",
        format!(
            "histogram_quantile(0.99, sum by (namespace, le) (rate(grpc_server_handling_seconds_bucket{{{grpc}}}[{window}]))) > {}",
            number(f64::from(latency_ms) / 1000.0)
        ),
        alerts.latency_for.as_deref().unwrap_or(DEFAULT_LATENCY_FOR),
        "warning",
        format!("p99 gRPC latency of {name} is above {latency_ms}ms"),
        alerts,
    );

    let ratio = alerts.error_ratio_threshold.unwrap_or(DEFAULT_ERROR_RATIO);
    let codes = alerts
        .error_codes
        .clone()
        .unwrap_or_else(|| DEFAULT_ERROR_CODES.to_vec())
        .into_iter()
        .map(code_name)
        .collect::<Vec<_>>()
        .join("|");
    let errors = alert(
        ms,
        "GrpcErrorRatioHigh",
        format!(
            r#"sum by (namespace, grpc_code) (rate(grpc_server_handled_total{{{grpc},grpc_code=~"{codes}"}}[{window}])) / ignoring (grpc_code) group_left sum by (namespace) (rate(grpc_server_handled_total{{{grpc}}}[{window}])) > {}"#,
            number(ratio)
        ),
        alerts.error_ratio_for.as_deref().unwrap_or(DEFAULT_ERROR_RATIO_FOR),
        "critical",
        format!(
            "more than {}% of {name}'s gRPC calls end with {{{{ $labels.grpc_code }}}}",
            number(ratio * 100.0)
        ),
        alerts,
    );

    let pods = alert(
        ms,
        "PodsNotReady",
        format!(
            r#"max by (namespace, pod) (kube_pod_status_ready{{namespace="{ns}",condition="false",pod=~"{}"}}) > 0"#,
            pod_regex(&name)
        ),
        alerts.pods_not_ready_for.as_deref().unwrap_or(DEFAULT_PODS_NOT_READY_FOR),
        "warning",
        format!("pod {{{{ $labels.pod }}}} of {name} is not ready"),
        alerts,
    );

    let mut rules = vec![latency, errors, pods];
    if ms.spec.autoscaling.is_some() {
        // NB: with a gRPC target the HPA is KEDA's, named after the ScaledObject.
        let hpa_name = match super::scaled_object::wanted(ms) {
            Some(_) => super::scaled_object::keda_hpa_name(&name),
            None => name.clone(),
        };
        let hpa = format!(r#"namespace="{ns}",horizontalpodautoscaler="{hpa_name}""#);
        rules.push(alert(
            ms,
            "AutoscalerAtMaxReplicas",
            format!(
                "max by (namespace, horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas{{{hpa}}}) >= on (namespace, horizontalpodautoscaler) max by (namespace, horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas{{{hpa}}})"
            ),
            alerts
                .max_replicas_for
                .as_deref()
                .unwrap_or(DEFAULT_MAX_REPLICAS_FOR),
            "warning",
            format!("the autoscaler of {name} has run at maxReplicas; it cannot add capacity"),
            alerts,
        ));
    }

    let mut meta = meta;
    if let Some(extra) = ms.spec.monitoring.as_ref().and_then(|m| m.labels.as_ref()) {
        let labels = meta.labels.get_or_insert_with(Default::default);
        for (k, v) in extra {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut rule = DynamicObject::new("", &api_resource()).data(json!({
        "spec": {"groups": [{"name": format!("ferry.{ns}.{name}"), "rules": rules}]}
    }));
    rule.metadata = meta;
    Some(rule)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    fn with_alerts(alerts: Value) -> MicroService {
        from(json!({
            "ports": [
                {"name": "grpc", "port": 50051, "protocol": "grpc"},
                {"name": "metrics", "port": 9090, "protocol": "http"}
            ],
            "monitoring": {"port": "metrics", "alerts": alerts, "labels": {"release": "prom"}}
        }))
    }

    fn rules(rule: &DynamicObject) -> Vec<Value> {
        rule.data["spec"]["groups"][0]["rules"].as_array().expect("rules").clone()
    }

    fn named<'a>(rules: &'a [Value], alert: &str) -> &'a Value {
        rules.iter().find(|r| r["alert"] == alert).unwrap_or_else(|| panic!("no {alert} in {rules:?}"))
    }

    #[test]
    fn no_alerts_are_built_unless_asked_for_or_when_disabled() {
        assert!(prometheus_rule(&order()).is_none());
        assert!(prometheus_rule(&from(json!({"monitoring": {}}))).is_none());
        assert!(prometheus_rule(&with_alerts(json!({"enabled": false}))).is_none());
    }

    #[test]
    fn the_rule_is_a_prometheus_rule_owned_like_every_child_and_labelled_for_the_rule_selector() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        let types = rule.types.as_ref().expect("types");
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("monitoring.coreos.com/v1", "PrometheusRule")
        );
        assert_eq!(rule.metadata.name.as_deref(), Some("order"));
        assert_eq!(rule.metadata.namespace.as_deref(), Some("shop"));
        assert!(rule.metadata.owner_references.is_some());
        let labels = rule.metadata.labels.expect("labels");
        assert_eq!(labels.get("release").map(String::as_str), Some("prom"));
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("ferry-operator"));
    }

    #[test]
    fn the_latency_alert_compares_the_p99_of_the_handling_histogram_with_500ms_by_default() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        let latency = named(&rules(&rule), "GrpcLatencyHigh").clone();
        let expr = latency["expr"].as_str().expect("expr");
        assert!(expr.contains("histogram_quantile(0.99"), "{expr}");
        assert!(
            expr.contains(r#"grpc_server_handling_seconds_bucket{namespace="shop",service="order"}"#),
            "{expr}"
        );
        assert!(expr.ends_with("> 0.5"), "{expr}");
        assert_eq!(latency["for"], "10m");
    }

    #[test]
    fn thresholds_and_durations_follow_the_spec() {
        let rule = prometheus_rule(&with_alerts(json!({
            "latencyP99ThresholdMs": 250, "latencyFor": "2m",
            "errorRatioThreshold": 0.01, "errorRatioFor": "1m",
            "podsNotReadyFor": "30m"
        })))
        .expect("rule");
        let rules = rules(&rule);
        assert!(named(&rules, "GrpcLatencyHigh")["expr"].as_str().expect("expr").ends_with("> 0.25"));
        assert_eq!(named(&rules, "GrpcLatencyHigh")["for"], "2m");
        assert!(named(&rules, "GrpcErrorRatioHigh")["expr"].as_str().expect("expr").ends_with("> 0.01"));
        assert_eq!(named(&rules, "GrpcErrorRatioHigh")["for"], "1m");
        assert_eq!(named(&rules, "PodsNotReady")["for"], "30m");
    }

    #[test]
    fn the_latency_and_error_rates_are_taken_over_five_minutes_unless_the_spec_names_a_window() {
        let windows = |alerts: Value| {
            let rule = prometheus_rule(&with_alerts(alerts)).expect("rule");
            let rules = rules(&rule);
            ["GrpcLatencyHigh", "GrpcErrorRatioHigh"].map(|alert| {
                let expr = named(&rules, alert)["expr"].as_str().expect("expr").to_string();
                (expr.matches("[5m]").count(), expr.matches("[1m]").count())
            })
        };
        assert_eq!(windows(json!({})), [(1, 0), (2, 0)]);
        assert_eq!(windows(json!({"rateWindow": "1m"})), [(0, 1), (0, 2)]);
    }

    #[test]
    fn the_error_ratio_is_computed_per_grpc_code_over_all_calls_for_server_failures_by_default() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        let expr = named(&rules(&rule), "GrpcErrorRatioHigh")["expr"].as_str().expect("expr").to_string();
        assert!(expr.contains("sum by (namespace, grpc_code)"), "{expr}");
        assert!(
            expr.contains(
                r#"grpc_code=~"Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss""#
            ),
            "{expr}"
        );
        assert!(expr.contains("ignoring (grpc_code) group_left"), "{expr}");
        assert!(!expr.contains("NotFound"), "{expr}");
    }

    #[test]
    fn the_error_codes_can_be_chosen() {
        let rule = prometheus_rule(&with_alerts(json!({"errorCodes": ["Internal", "ResourceExhausted"]})))
            .expect("rule");
        let expr = named(&rules(&rule), "GrpcErrorRatioHigh")["expr"].as_str().expect("expr").to_string();
        assert!(expr.contains(r#"grpc_code=~"Internal|ResourceExhausted""#), "{expr}");
    }

    #[test]
    fn pods_not_ready_are_found_by_kube_state_metrics_under_this_services_pod_names() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        let expr = named(&rules(&rule), "PodsNotReady")["expr"].as_str().expect("expr").to_string();
        assert!(
            expr.contains(r#"kube_pod_status_ready{namespace="shop",condition="false",pod=~"order(-[0-9a-f]{10})?-[a-z0-9]{1,10}-[a-z0-9]{5}"}"#),
            "{expr}"
        );
    }

    #[test]
    fn the_autoscaler_alert_exists_only_with_autoscaling_and_compares_current_with_max_replicas() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        assert!(!rules(&rule).iter().any(|r| r["alert"] == "AutoscalerAtMaxReplicas"));
        let mut ms = with_alerts(json!({"maxReplicasFor": "1h"}));
        ms.spec.autoscaling =
            Some(crate::crd::AutoscalingSpec { min_replicas: 1, max_replicas: 4, ..Default::default() });
        let rule = prometheus_rule(&ms).expect("rule");
        let rules = rules(&rule);
        let hpa = named(&rules, "AutoscalerAtMaxReplicas");
        let expr = hpa["expr"].as_str().expect("expr");
        assert!(
            expr.contains(r#"kube_horizontalpodautoscaler_status_current_replicas{namespace="shop",horizontalpodautoscaler="order"}"#),
            "{expr}"
        );
        assert!(expr.contains(">= on (namespace, horizontalpodautoscaler)"), "{expr}");
        assert!(expr.contains("kube_horizontalpodautoscaler_spec_max_replicas"), "{expr}");
        assert_eq!(hpa["for"], "1h");
    }

    #[test]
    fn with_a_grpc_autoscaling_target_the_autoscaler_alert_reads_the_hpa_keda_creates() {
        let mut ms = with_alerts(json!({}));
        ms.spec.autoscaling = Some(crate::crd::AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 4,
            latency_p99_milliseconds: Some(200),
            ..Default::default()
        });
        let rule = prometheus_rule(&ms).expect("rule");
        let rules = rules(&rule);
        let expr = named(&rules, "AutoscalerAtMaxReplicas")["expr"].as_str().expect("expr").to_string();
        assert!(expr.contains(r#"horizontalpodautoscaler="keda-hpa-order""#), "{expr}");
    }

    #[test]
    fn extra_labels_reach_every_alert_and_may_replace_the_severity() {
        let rule = prometheus_rule(&with_alerts(json!({"labels": {"team": "shop", "severity": "page"}})))
            .expect("rule");
        for r in rules(&rule) {
            assert_eq!(r["labels"]["team"], "shop", "{r}");
            assert_eq!(r["labels"]["severity"], "page", "{r}");
            assert!(r["annotations"]["summary"].as_str().is_some(), "{r}");
        }
    }

    #[test]
    fn every_alert_carries_the_microservice_label() {
        let rule = prometheus_rule(&with_alerts(json!({}))).expect("rule");
        for r in rules(&rule) {
            assert_eq!(r["labels"]["microservice"], "order", "{r}");
        }
    }

    #[test]
    fn numbers_are_written_the_way_promql_reads_them() {
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.001), "0.001");
    }
}
