//! Pure builders: a `MicroService` (plus a few observed facts) → the child objects it should have.
//!
//! Nothing here talks to the API server. The reconciler gathers [`Inputs`], calls [`build`], and then
//! applies whatever differs from what it observed. Every child carries [`SPEC_HASH_ANNOTATION`], a
//! hash of the object as built, so the reconciler can tell "nothing changed" from a metadata-only
//! cache without reading the child's spec.

pub mod autoscaler;
pub mod config;
pub mod deployment;
pub mod disruption;
pub mod labels;
pub mod probes;
pub mod prometheus_rule;
pub mod scaled_object;
pub mod secrets;
pub mod security;
pub mod service;
pub mod service_monitor;

use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt, core::DynamicObject};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::dependencies::ResolvedDependency;
use crate::{
    crd::MicroService,
    keys::{SPEC_HASH_ANNOTATION, SPEC_HASH_LEN},
    validation::PodExtras,
};

/// Facts from outside the MicroService that the builders need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Parsed pass-through fields (from [`crate::validation::check`]).
    pub extras: PodExtras,
    /// Addresses of the `dependsOn` MicroServices that could be resolved.
    pub dependencies: Vec<ResolvedDependency>,
    /// Hash of the ConfigMap's data, when the config should roll pods on change.
    pub config_hash: Option<String>,
    /// Whether the ServiceMonitor CRD is served by the cluster.
    pub service_monitor_supported: bool,
    /// Whether the PrometheusRule CRD is served by the cluster.
    pub prometheus_rule_supported: bool,
    /// Whether the KEDA ScaledObject CRD is served by the cluster.
    pub scaled_object_supported: bool,
}

/// Every child a MicroService should have. `None` means "must not exist".
#[derive(Debug, Clone)]
pub struct Desired {
    /// The workload.
    pub deployment: Deployment,
    /// The Service in front of the pods.
    pub service: Service,
    /// The autoscaler, when `spec.autoscaling` is set without a gRPC target.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// The disruption budget, when `spec.disruptionBudget` is set.
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// The ServiceMonitor, when monitoring is on and its CRD is served.
    pub service_monitor: Option<DynamicObject>,
    /// The PrometheusRule, when alerts are on and its CRD is served.
    pub prometheus_rule: Option<DynamicObject>,
    /// The KEDA ScaledObject, when `spec.autoscaling` sets a gRPC target and its CRD is served
    /// (never together with [`Desired::autoscaler`]).
    pub scaled_object: Option<DynamicObject>,
}

/// Builds every desired child, each stamped with its spec hash.
pub fn build(ms: &MicroService, inputs: &Inputs) -> Desired {
    Desired {
        deployment: stamp(deployment::deployment(ms, inputs)),
        service: stamp(service::service(ms)),
        autoscaler: autoscaler::autoscaler(ms).map(stamp),
        scaled_object: if inputs.scaled_object_supported {
            scaled_object::scaled_object(ms).map(stamp)
        } else {
            None
        },
        disruption_budget: disruption::disruption_budget(ms).map(stamp),
        service_monitor: if inputs.service_monitor_supported {
            service_monitor::service_monitor(ms).map(stamp)
        } else {
            None
        },
        prometheus_rule: if inputs.prometheus_rule_supported {
            prometheus_rule::prometheus_rule(ms).map(stamp)
        } else {
            None
        },
    }
}

/// The number of pods the Deployment should run: `spec.replicas` (written by the user, `kubectl scale`
/// or the autoscaler), clamped to the autoscaling bounds, defaulting to `minReplicas` or 1.
pub fn effective_replicas(ms: &MicroService) -> i32 {
    match &ms.spec.autoscaling {
        Some(a) => {
            let max = a.max_replicas.max(a.min_replicas);
            ms.spec.replicas.unwrap_or(a.min_replicas).clamp(a.min_replicas, max)
        }
        None => ms.spec.replicas.unwrap_or(1),
    }
}

/// Metadata shared by every child: name, namespace, labels and the controller owner reference.
pub fn child_meta(ms: &MicroService) -> ObjectMeta {
    ObjectMeta {
        name: Some(ms.name_any()),
        namespace: ms.namespace(),
        labels: Some(labels::common_labels(ms)),
        owner_references: owner_reference(ms).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference pointing at the MicroService (garbage collection and `.owns()`).
pub fn owner_reference(ms: &MicroService) -> Option<OwnerReference> {
    ms.controller_owner_ref(&())
}

/// Hex SHA-256 (first [`SPEC_HASH_LEN`] characters) of the JSON form of a value.
pub fn hash_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..SPEC_HASH_LEN / 2])
}

/// Adds [`SPEC_HASH_ANNOTATION`] to a built object.
pub fn stamp<K: Resource + Serialize>(mut obj: K) -> K {
    let hash = hash_of(&obj);
    obj.meta_mut().annotations.get_or_insert_with(Default::default).insert(SPEC_HASH_ANNOTATION.into(), hash);
    obj
}

/// The spec hash a child carries, if any.
pub fn spec_hash_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().annotations.as_ref()?.get(SPEC_HASH_ANNOTATION).map(String::as_str)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders of test MicroServices.
    pub use crate::fixtures::{from, order};
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::{fixtures::*, *};

    #[test]
    fn replicas_default_to_one_without_autoscaling() {
        assert_eq!(effective_replicas(&order()), 1);
        assert_eq!(effective_replicas(&from(json!({"replicas": 4}))), 4);
    }

    #[test]
    fn replicas_start_at_min_replicas_with_autoscaling() {
        let ms = from(json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 9}}));
        assert_eq!(effective_replicas(&ms), 3);
    }

    #[test]
    fn the_autoscalers_replica_count_is_kept_and_clamped_to_the_bounds() {
        let ms = from(json!({"replicas": 7, "autoscaling": {"minReplicas": 2, "maxReplicas": 9}}));
        assert_eq!(effective_replicas(&ms), 7);
        let ms = from(json!({"replicas": 12, "autoscaling": {"minReplicas": 2, "maxReplicas": 9}}));
        assert_eq!(effective_replicas(&ms), 9);
    }

    #[test]
    fn every_child_is_controlled_by_the_microservice() {
        let ms = from(json!({
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "disruptionBudget": {"maxUnavailable": 1},
            "monitoring": {}
        }));
        let desired = build(&ms, &Inputs { service_monitor_supported: true, ..Inputs::default() });
        let metas = [
            desired.deployment.meta(),
            desired.service.meta(),
            desired.autoscaler.as_ref().expect("hpa").meta(),
            desired.disruption_budget.as_ref().expect("pdb").meta(),
            desired.service_monitor.as_ref().expect("sm").meta(),
        ];
        for meta in metas {
            let owners = meta.owner_references.as_ref().expect("owner refs");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "MicroService");
            assert_eq!(owners[0].uid, "u-1");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("shop"));
            assert!(meta.annotations.as_ref().expect("annotations").contains_key(SPEC_HASH_ANNOTATION));
        }
    }

    #[test]
    fn optional_children_are_absent_unless_asked_for() {
        let desired = build(&order(), &Inputs { service_monitor_supported: true, ..Inputs::default() });
        assert!(desired.autoscaler.is_none());
        assert!(desired.disruption_budget.is_none());
        assert!(desired.service_monitor.is_none());
    }

    #[test]
    fn the_prometheus_rule_is_built_only_when_alerts_are_asked_for_and_its_crd_is_served() {
        let ms = from(json!({"monitoring": {"alerts": {}}}));
        assert!(build(&ms, &Inputs::default()).prometheus_rule.is_none());
        let served = Inputs { prometheus_rule_supported: true, ..Inputs::default() };
        let rule = build(&ms, &served).prometheus_rule.expect("rule");
        assert!(spec_hash_of(&rule).is_some());
        assert!(build(&order(), &served).prometheus_rule.is_none());
    }

    #[test]
    fn a_grpc_target_builds_a_scaled_object_instead_of_the_hpa_and_only_when_keda_is_served() {
        let ms = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 4,
            "latencyP99Milliseconds": 200, "prometheusAddress": "http://prom:9090"}}));
        let absent = build(&ms, &Inputs::default());
        assert!(absent.autoscaler.is_none() && absent.scaled_object.is_none());
        let served = Inputs { scaled_object_supported: true, ..Inputs::default() };
        let desired = build(&ms, &served);
        assert!(desired.autoscaler.is_none());
        assert!(spec_hash_of(desired.scaled_object.as_ref().expect("so")).is_some());
        let cpu_only = from(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}));
        let desired = build(&cpu_only, &served);
        assert!(desired.autoscaler.is_some() && desired.scaled_object.is_none());
    }

    #[test]
    fn no_service_monitor_is_built_when_its_crd_is_not_served() {
        let ms = from(json!({"monitoring": {}}));
        assert!(build(&ms, &Inputs::default()).service_monitor.is_none());
    }

    #[test]
    fn the_spec_hash_is_stable_and_changes_with_the_spec() {
        let a = build(&order(), &Inputs::default());
        let b = build(&order(), &Inputs::default());
        let c = build(&from(json!({"image": "ghcr.io/acme/order:2.0.0"})), &Inputs::default());
        assert_eq!(spec_hash_of(&a.deployment), spec_hash_of(&b.deployment));
        assert_ne!(spec_hash_of(&a.deployment), spec_hash_of(&c.deployment));
        assert_eq!(spec_hash_of(&a.service), spec_hash_of(&c.service));
    }
}
