//! The `MicroService` status: what the operator observed, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types the operator sets on every MicroService.
pub mod condition_type {
    /// The pods have minimum availability (mirrors the Deployment's `Available`).
    pub const AVAILABLE: &str = "Available";
    /// A rollout is in progress (True), finished (False, `RolloutComplete`) or stuck.
    pub const PROGRESSING: &str = "Progressing";
    /// The rollout is stuck past its deadline or pods cannot be created.
    pub const DEGRADED: &str = "Degraded";
    /// Every `dependsOn` MicroService exists and is Available.
    pub const DEPENDENCIES_READY: &str = "DependenciesReady";
    /// The ServiceMonitor exists (or why it does not).
    pub const SERVICE_MONITOR_READY: &str = "ServiceMonitorReady";
    /// The spec cannot be reconciled; the reason and message say why. Nothing is written until it changes.
    pub const INVALID_SPEC: &str = "InvalidSpec";

    /// Every type, in the order they appear in status.
    pub const ALL: [&str; 6] = [
        AVAILABLE,
        PROGRESSING,
        DEGRADED,
        DEPENDENCIES_READY,
        SERVICE_MONITOR_READY,
        INVALID_SPEC,
    ];
}

/// Coarse lifecycle phase, for humans and `kubectl get`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing rolled yet: waiting for dependencies or for the first reconcile.
    #[default]
    Pending,
    /// A rollout is in progress.
    Progressing,
    /// Every desired pod is updated and available.
    Healthy,
    /// The rollout is stuck or pods are failing.
    Degraded,
    /// The spec is invalid (see the `InvalidSpec` condition).
    Invalid,
}

impl Phase {
    /// The spelling used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::Healthy => "Healthy",
            Self::Degraded => "Degraded",
            Self::Invalid => "Invalid",
        }
    }
}

/// Observed state of a MicroService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MicroServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase: Pending, Progressing, Healthy, Degraded or Invalid.
    #[serde(default)]
    pub phase: Phase,
    /// A one-line human summary of the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Pods of the Deployment (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods available for at least `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods running the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the pods, in string form (the scale subresource and the HPA read this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Standard conditions: Available, Progressing, Degraded, DependenciesReady, ServiceMonitorReady,
    /// InvalidSpec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl MicroServiceStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of the given type is present with status "True".
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}
