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
    /// `monitoring.alerts` only: the PrometheusRule exists (or why it does not).
    pub const PROMETHEUS_RULE_READY: &str = "PrometheusRuleReady";
    /// `autoscaling` with a gRPC target only: the KEDA ScaledObject exists (or why it does not).
    pub const SCALED_OBJECT_READY: &str = "ScaledObjectReady";
    /// The spec cannot be reconciled; the reason and message say why. Nothing is written until it changes.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Every child write of the last reconcile was accepted by the API server (False names the
    /// child and quotes the API server's answer).
    pub const SYNCED: &str = "Synced";
    /// Blue-green only: the active Service selects the revision of the current spec
    /// (`kubectl wait --for=condition=Promoted`).
    pub const PROMOTED: &str = "Promoted";

    /// Every type, in the order they appear in status.
    pub const ORDER: [&str; 10] = [
        AVAILABLE,
        PROGRESSING,
        DEGRADED,
        DEPENDENCIES_READY,
        SERVICE_MONITOR_READY,
        INVALID_SPEC,
        SYNCED,
        PROMETHEUS_RULE_READY,
        SCALED_OBJECT_READY,
        PROMOTED,
    ];

    /// The types every MicroService's status carries: the first six of [`ORDER`].
    pub const STANDARD: usize = 6;
}

/// Coarse lifecycle phase, for humans and `kubectl get`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing rolled yet: waiting for dependencies or for the first reconcile.
    #[default]
    Pending,
    /// A rollout is in progress.
    Progressing,
    /// A blue-green rollout waits before promotion (`spec.paused`, or auto-promotion off).
    Paused,
    /// A blue-green rollout scales the new revision to full size and switches traffic to it.
    Promoting,
    /// A blue-green rollout was aborted by request; traffic stays on the active revision.
    Aborted,
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
            Self::Paused => "Paused",
            Self::Promoting => "Promoting",
            Self::Aborted => "Aborted",
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
    /// Blue-green rollout state (only with `strategy.type: BlueGreen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
}

/// One revision: the hash of its pod template (its Deployment is `NAME-<hash>`) and its image.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// Pod template hash.
    pub hash: String,
    /// Container image.
    #[serde(default)]
    pub image: String,
}

/// A recorded abort of one revision.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AbortRecord {
    /// Hash of the aborted revision.
    pub hash: String,
    /// Why: `Requested`, `ProgressDeadlineExceeded`, `PrePromotionCheckFailed`, `PostPromotionCheckFailed`.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// The `ferry.dev/retry` annotation when aborted; a new value retries the revision.
    #[serde(default)]
    pub retry_mark: String,
}

/// Where a check stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CheckVerdict {
    /// More measurements are due.
    #[default]
    Running,
    /// `count` measurements taken with no more than `failureLimit` failures.
    Passed,
    /// More than `failureLimit` measurements failed.
    Failed,
}

/// Results of one check against one revision, kept inline.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// `PrePromotion` or `PostPromotion`.
    pub stage: String,
    /// The check's name.
    pub name: String,
    /// Hash of the revision it measured.
    pub revision: String,
    /// Verdict so far.
    #[serde(default)]
    pub verdict: CheckVerdict,
    /// Measurements that passed.
    #[serde(default)]
    pub successes: i32,
    /// Measurements that failed.
    #[serde(default)]
    pub failures: i32,
    /// When the last measurement was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measured_at: Option<String>,
    /// What the last measurement saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Blue-green rollout state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// The revision the active Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<RevisionRef>,
    /// The revision of the current spec, while it is not active yet (the preview Service selects it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_revision: Option<RevisionRef>,
    /// The revision traffic was switched away from last (kept up until the scale-down deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<RevisionRef>,
    /// When the previous revision is scaled to zero (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_deadline: Option<String>,
    /// When the rollout paused before promotion (RFC 3339; for `autoPromotionSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// When the rollout of the preview revision started (RFC 3339; the progress deadline counts
    /// from it, or from a later retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The last abort, if the current spec's revision is aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortRecord>,
    /// Pre- and post-promotion check results of the current rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub checks: Vec<CheckResult>,
    /// The active Service's selector and rollout annotations as the operator last wrote them. This
    /// is the record of what was promoted: a Service deleted or edited by hand is restored from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switch: Option<SwitchRecord>,
}

/// What the active Service says about the last switch (its `ferry.dev/*` annotations).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SwitchRecord {
    /// The revision the active Service selects.
    pub active: String,
    /// The revision it was switched away from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Why: `Promotion`, `FastRollback` or `RollBack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `<hash>/<retry mark>` of a revision rolled back after a failed post-promotion check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
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
