//! The HorizontalPodAutoscaler (autoscaling/v2).
//!
//! It targets the MicroService's own scale subresource, not the Deployment. The autoscaler writes its
//! decision to `MicroService.spec.replicas` and the operator copies it into the Deployment, which the
//! operator alone writes: no server-side apply conflict, and the decision survives every reconcile
//! (and, later, a blue-green switch of Deployments).

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::{Resource, ResourceExt};

use super::child_meta;
use crate::crd::MicroService;

/// CPU utilization target when the spec sets no target at all.
pub const DEFAULT_CPU_TARGET: i32 = 80;

fn resource_metric(name: &str, utilization: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// Builds the autoscaler, when `spec.autoscaling` is set without a gRPC target (with one, KEDA's
/// ScaledObject takes its place: [`super::scaled_object`]).
pub fn autoscaler(ms: &MicroService) -> Option<HorizontalPodAutoscaler> {
    if super::scaled_object::wanted(ms).is_some() {
        return None;
    }
    let a = ms.spec.autoscaling.as_ref()?;
    let mut metrics = Vec::new();
    let cpu = match (a.target_cpu_utilization_percentage, a.target_memory_utilization_percentage) {
        (None, None) => Some(DEFAULT_CPU_TARGET),
        (cpu, _) => cpu,
    };
    if let Some(cpu) = cpu {
        metrics.push(resource_metric("cpu", cpu));
    }
    if let Some(memory) = a.target_memory_utilization_percentage {
        metrics.push(resource_metric("memory", memory));
    }
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(ms),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(MicroService::api_version(&()).into_owned()),
                kind: MicroService::kind(&()).into_owned(),
                name: ms.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: a.behavior.clone(),
        },
        status: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn the_autoscaler_targets_the_microservice_scale_subresource() {
        let ms = from(json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}));
        let spec = autoscaler(&ms).expect("hpa").spec;
        assert_eq!(spec.scale_target_ref.api_version.as_deref(), Some("ferry.dev/v1alpha1"));
        assert_eq!(spec.scale_target_ref.kind, "MicroService");
        assert_eq!(spec.scale_target_ref.name, "order");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    }

    #[test]
    fn with_no_target_the_autoscaler_aims_at_eighty_percent_cpu() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}));
        let metrics = autoscaler(&ms).expect("hpa").spec.metrics.expect("metrics");
        assert_eq!(metrics.len(), 1);
        let resource = metrics[0].resource.as_ref().expect("resource");
        assert_eq!(resource.name, "cpu");
        assert_eq!(resource.target.average_utilization, Some(80));
    }

    #[test]
    fn cpu_and_memory_targets_become_two_utilization_metrics() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 60, "targetMemoryUtilizationPercentage": 75}}));
        let metrics = autoscaler(&ms).expect("hpa").spec.metrics.expect("metrics");
        let targets: Vec<_> = metrics
            .iter()
            .map(|m| {
                let r = m.resource.as_ref().expect("resource");
                (r.name.as_str(), r.target.average_utilization)
            })
            .collect();
        assert_eq!(targets, [("cpu", Some(60)), ("memory", Some(75))]);
    }

    #[test]
    fn a_memory_only_target_does_not_add_the_default_cpu_target() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
            "targetMemoryUtilizationPercentage": 75}}));
        let metrics = autoscaler(&ms).expect("hpa").spec.metrics.expect("metrics");
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].resource.as_ref().expect("resource").name, "memory");
    }

    #[test]
    fn scaling_behavior_is_passed_through() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}}}}));
        let behavior = autoscaler(&ms).expect("hpa").spec.behavior.expect("behavior");
        assert_eq!(behavior.scale_down.expect("down").stabilization_window_seconds, Some(120));
    }

    #[test]
    fn a_grpc_target_means_no_hpa_of_ours() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3,
            "requestsPerSecondPerPod": 20, "targetCPUUtilizationPercentage": 60}}));
        assert!(autoscaler(&ms).is_none());
    }

    #[test]
    fn no_autoscaling_means_no_autoscaler() {
        assert!(autoscaler(&order()).is_none());
    }
}
