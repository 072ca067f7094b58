//! The KEDA ScaledObject (`keda.sh/v1alpha1`) that replaces the HorizontalPodAutoscaler when
//! `spec.autoscaling` sets a gRPC target (`latencyP99Milliseconds`, `requestsPerSecondPerPod`),
//! built as a `DynamicObject` like the ServiceMonitor.
//!
//! Like the HPA it targets the MicroService's own scale subresource, so the blue-green revisions
//! share one scaling decision and a switch does not reset it. KEDA creates and owns the HPA it
//! derives from the ScaledObject; Ferry then writes no HPA of its own (the planner deletes the
//! one it wrote before), so two autoscalers never fight over one MicroService. CPU and memory
//! targets become KEDA `cpu`/`memory` triggers of that same HPA, which takes the highest
//! recommendation of all its metrics.
//!
//! The Prometheus queries select the series scraped through the MicroService's own Service
//! (`namespace`, `service` labels), exactly as the PrometheusRule's gRPC alerts do, so the
//! `NAME-preview` Service of a blue-green rollout does not count the same pods twice.

use kube::{
    Resource, ResourceExt,
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};

use super::child_meta;
use crate::crd::{AutoscalingSpec, MicroService};

/// API group of KEDA.
pub const GROUP: &str = "keda.sh";
/// Name of the ScaledObject CRD, watched to detect whether it is served.
pub const CRD_NAME: &str = "scaledobjects.keda.sh";
/// Plural of the resource, as API discovery lists it.
pub const PLURAL: &str = "scaledobjects";
/// The window of the latency and rate queries when `metricsWindow` is not set.
pub const DEFAULT_METRICS_WINDOW: &str = "1m";

/// The ScaledObject's API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1alpha1", "ScaledObject"), PLURAL)
}

/// The autoscaling settings, when they set a gRPC target (and so want a ScaledObject, not an HPA).
pub fn wanted(ms: &MicroService) -> Option<&AutoscalingSpec> {
    ms.spec
        .autoscaling
        .as_ref()
        .filter(|a| a.latency_p99_milliseconds.is_some() || a.requests_per_second_per_pod.is_some())
}

/// The name of the HPA KEDA creates for the ScaledObject `name`.
pub fn keda_hpa_name(name: &str) -> String {
    format!("keda-hpa-{name}")
}

fn prometheus_trigger(address: &str, name: &str, metric_type: &str, query: String, threshold: i32) -> Value {
    json!({
        "type": "prometheus",
        "name": name,
        "metricType": metric_type,
        "metadata": {
            "serverAddress": address,
            "query": query,
            "threshold": threshold.to_string(),
        },
    })
}

fn resource_trigger(resource: &str, utilization: i32) -> Value {
    json!({
        "type": resource,
        "metricType": "Utilization",
        "metadata": {"value": utilization.to_string()},
    })
}

/// The triggers, in a fixed order: latency, request rate, CPU, memory.
fn triggers(a: &AutoscalingSpec, ns: &str, name: &str) -> Vec<Value> {
    let address = a.prometheus_address.as_deref().unwrap_or_default();
    let window = a.metrics_window.as_deref().unwrap_or(DEFAULT_METRICS_WINDOW);
    let series = format!(r#"namespace="{ns}",service="{name}""#);
    let mut out = Vec::new();
    if let Some(ms) = a.latency_p99_milliseconds {
        // NB: metricType Value, not AverageValue: a p99 is not a sum over pods, so dividing it by
        // the pod count (what AverageValue does) means nothing. With Value the HPA compares the
        // service's p99 itself with the target (desired = ceil(current × p99 / target)). The query
        // is in milliseconds so the threshold is the spec's number as written. `> 0` drops the NaN
        // of a window without calls, and `or vector(0)` reads that as "no latency", not an error.
        let query = format!(
            "(histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{series}}}[{window}]))) * 1000 > 0) or vector(0)"
        );
        out.push(prometheus_trigger(address, "grpc-latency-p99", "Value", query, ms));
    }
    if let Some(rps) = a.requests_per_second_per_pod {
        // AverageValue: the query is the service's total rate, and the HPA divides it by the
        // number of pods before comparing it with the per-pod target.
        let query = format!("sum(rate(grpc_server_handled_total{{{series}}}[{window}])) or vector(0)");
        out.push(prometheus_trigger(address, "grpc-requests-per-second", "AverageValue", query, rps));
    }
    if let Some(cpu) = a.target_cpu_utilization_percentage {
        out.push(resource_trigger("cpu", cpu));
    }
    if let Some(memory) = a.target_memory_utilization_percentage {
        out.push(resource_trigger("memory", memory));
    }
    out
}

/// Builds the ScaledObject, when `spec.autoscaling` sets a gRPC target.
pub fn scaled_object(ms: &MicroService) -> Option<DynamicObject> {
    let a = wanted(ms)?;
    let meta = child_meta(ms);
    let name = meta.name.clone().unwrap_or_default();
    let ns = meta.namespace.clone().unwrap_or_default();
    let mut spec = json!({
        "scaleTargetRef": {
            "apiVersion": MicroService::api_version(&()),
            "kind": MicroService::kind(&()),
            "name": ms.name_any(),
        },
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "triggers": triggers(a, &ns, &name),
    });
    if let Some(behavior) = &a.behavior {
        spec["advanced"] = json!({"horizontalPodAutoscalerConfig": {"behavior": behavior}});
    }
    let mut object = DynamicObject::new("", &api_resource()).data(json!({"spec": spec}));
    object.metadata = meta;
    Some(object)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    const PROM: &str = "http://prometheus.monitoring.svc:9090";

    fn with_autoscaling(extra: Value) -> MicroService {
        let mut autoscaling = json!({"minReplicas": 2, "maxReplicas": 10, "prometheusAddress": PROM});
        for (k, v) in extra.as_object().expect("object") {
            autoscaling[k] = v.clone();
        }
        from(json!({
            "ports": [
                {"name": "grpc", "port": 50051, "protocol": "grpc"},
                {"name": "metrics", "port": 9090, "protocol": "http"}
            ],
            "monitoring": {"port": "metrics"},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "autoscaling": autoscaling
        }))
    }

    fn triggers_of(object: &DynamicObject) -> Vec<Value> {
        object.data["spec"]["triggers"].as_array().expect("triggers").clone()
    }

    fn kinds(object: &DynamicObject) -> Vec<(String, String)> {
        triggers_of(object)
            .iter()
            .map(|t| {
                (
                    t["type"].as_str().unwrap_or_default().into(),
                    t["metricType"].as_str().unwrap_or_default().into(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn no_grpc_target_means_no_scaled_object() {
        assert!(scaled_object(&order()).is_none());
        assert!(scaled_object(&from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}))).is_none());
        let cpu = from(
            json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 60}}),
        );
        assert!(scaled_object(&cpu).is_none());
    }

    #[test]
    fn the_scaled_object_targets_the_microservice_scale_subresource_like_the_hpa_did() {
        let object = scaled_object(&with_autoscaling(json!({"latencyP99Milliseconds": 250}))).expect("so");
        let types = object.types.as_ref().expect("types");
        assert_eq!((types.api_version.as_str(), types.kind.as_str()), ("keda.sh/v1alpha1", "ScaledObject"));
        assert_eq!(object.metadata.name.as_deref(), Some("order"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("shop"));
        assert!(object.metadata.owner_references.is_some());
        let spec = &object.data["spec"];
        assert_eq!(
            spec["scaleTargetRef"],
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "MicroService", "name": "order"})
        );
        assert_eq!((spec["minReplicaCount"].clone(), spec["maxReplicaCount"].clone()), (json!(2), json!(10)));
        assert!(spec.get("advanced").is_none());
    }

    #[test]
    fn a_latency_target_alone_is_one_prometheus_trigger_on_the_p99_in_milliseconds_as_a_value() {
        let object = scaled_object(&with_autoscaling(json!({"latencyP99Milliseconds": 250}))).expect("so");
        assert_eq!(kinds(&object), pairs(&[("prometheus", "Value")]));
        let trigger = &triggers_of(&object)[0];
        assert_eq!(trigger["metadata"]["serverAddress"], PROM);
        assert_eq!(trigger["metadata"]["threshold"], "250");
        let query = trigger["metadata"]["query"].as_str().expect("query");
        assert!(query.contains("histogram_quantile(0.99, sum by (le)"), "{query}");
        assert!(
            query.contains(r#"grpc_server_handling_seconds_bucket{namespace="shop",service="order"}[1m]"#),
            "{query}"
        );
        assert!(query.contains("* 1000"), "{query}");
    }

    #[test]
    fn a_request_rate_target_alone_is_the_services_total_rate_averaged_over_the_pods() {
        let object = scaled_object(&with_autoscaling(json!({"requestsPerSecondPerPod": 40}))).expect("so");
        assert_eq!(kinds(&object), pairs(&[("prometheus", "AverageValue")]));
        let trigger = &triggers_of(&object)[0];
        assert_eq!(trigger["metadata"]["threshold"], "40");
        let query = trigger["metadata"]["query"].as_str().expect("query");
        assert!(
            query
                .starts_with(r#"sum(rate(grpc_server_handled_total{namespace="shop",service="order"}[1m]))"#),
            "{query}"
        );
    }

    #[test]
    fn latency_and_request_rate_together_are_two_triggers_over_the_chosen_window() {
        let object = scaled_object(&with_autoscaling(json!({
            "latencyP99Milliseconds": 300, "requestsPerSecondPerPod": 50, "metricsWindow": "2m"
        })))
        .expect("so");
        assert_eq!(kinds(&object), pairs(&[("prometheus", "Value"), ("prometheus", "AverageValue")]));
        for t in triggers_of(&object) {
            assert!(t["metadata"]["query"].as_str().expect("query").contains("[2m]"), "{t}");
        }
    }

    #[test]
    fn a_cpu_target_becomes_a_keda_cpu_trigger_next_to_the_grpc_ones() {
        let object = scaled_object(&with_autoscaling(json!({
            "latencyP99Milliseconds": 300, "requestsPerSecondPerPod": 50, "targetCPUUtilizationPercentage": 70
        })))
        .expect("so");
        assert_eq!(
            kinds(&object),
            pairs(&[("prometheus", "Value"), ("prometheus", "AverageValue"), ("cpu", "Utilization")])
        );
        assert_eq!(triggers_of(&object)[2]["metadata"], json!({"value": "70"}));
    }

    #[test]
    fn a_memory_target_becomes_a_keda_memory_trigger_and_no_default_cpu_is_added() {
        let object = scaled_object(&with_autoscaling(json!({
            "requestsPerSecondPerPod": 50, "targetMemoryUtilizationPercentage": 75
        })))
        .expect("so");
        assert_eq!(kinds(&object), pairs(&[("prometheus", "AverageValue"), ("memory", "Utilization")]));
        assert_eq!(triggers_of(&object)[1]["metadata"], json!({"value": "75"}));
    }

    #[test]
    fn cpu_and_memory_with_latency_are_three_triggers() {
        let object = scaled_object(&with_autoscaling(json!({
            "latencyP99Milliseconds": 300,
            "targetCPUUtilizationPercentage": 60, "targetMemoryUtilizationPercentage": 75
        })))
        .expect("so");
        assert_eq!(
            kinds(&object),
            pairs(&[("prometheus", "Value"), ("cpu", "Utilization"), ("memory", "Utilization")])
        );
    }

    #[test]
    fn scaling_behavior_is_carried_into_the_hpa_keda_creates() {
        let object = scaled_object(&with_autoscaling(json!({
            "latencyP99Milliseconds": 300,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}}
        })))
        .expect("so");
        assert_eq!(
            object.data["spec"]["advanced"],
            json!({"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}}}})
        );
    }

    #[test]
    fn keda_names_its_hpa_after_the_scaled_object() {
        assert_eq!(keda_hpa_name("order"), "keda-hpa-order");
    }
}
