//! The `reason` of every condition the operator sets. Reasons are part of the API (`kubectl wait`,
//! alerts and scripts match on them), so each has one stable wire string, and a test pins them all.

use std::fmt;

/// Why a condition has its status. [`Reason::as_str`] is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // --- Available
    /// The Deployment has minimum availability.
    MinimumReplicasAvailable,
    /// The Deployment does not have minimum availability.
    MinimumReplicasUnavailable,
    /// A Deployment change waits for `dependsOn` (Available and Progressing).
    WaitingForDependencies,
    /// The Deployment does not exist yet.
    DeploymentNotFound,
    // --- Progressing (RollingUpdate) and Degraded
    /// The Deployment (or the blue-green rollout) is past its progress deadline.
    ProgressDeadlineExceeded,
    /// Every pod runs the current template (also the blue-green step `Healthy`).
    RolloutComplete,
    /// Pods are being replaced.
    RolloutInProgress,
    /// Pods cannot be created (a quota, an admission policy).
    ReplicaFailure,
    /// Not degraded.
    AsExpected,
    /// A child write failed for another reason than an invalid spec.
    ChildWriteFailed,
    /// A pre-promotion check failed.
    PrePromotionCheckFailed,
    /// A post-promotion check failed.
    PostPromotionCheckFailed,
    // --- DependenciesReady
    /// No `dependsOn`.
    NoDependencies,
    /// Every dependency is Available.
    AllAvailable,
    /// Some dependency is missing, unresolvable, in a cycle or not Available.
    DependenciesNotReady,
    // --- ServiceMonitorReady, PrometheusRuleReady
    /// The child is not asked for.
    NotRequested,
    /// The child's CRD is not served by the cluster.
    CrdNotInstalled,
    /// The child is applied.
    Applied,
    /// Nothing is applied while the spec is invalid.
    InvalidSpec,
    // --- InvalidSpec
    /// The spec is valid.
    Valid,
    /// A pass-through field does not parse as its Kubernetes type.
    InvalidPassThroughField,
    /// An `envFrom` entry names no source or two.
    InvalidEnvFrom,
    /// The API server refused a child as invalid (422).
    RejectedByApiServer,
    // --- Synced
    /// Every child write was accepted.
    AllApplied,
    /// The API server refused a child write (4xx).
    ChildRejected,
    // --- Promoted and Progressing (blue-green steps)
    /// The active Service selects the current spec's revision.
    ActiveIsCurrent,
    /// The first revision starts.
    FirstRevision,
    /// The new revision starts at its preview size.
    WaitingForPreview,
    /// Pre-promotion checks run.
    PrePromotionChecks,
    /// The rollout waits for a promotion.
    Paused,
    /// The new revision is scaled to the full count before the switch.
    ScalingForPromotion,
    /// Traffic switched to the new revision.
    Switched,
    /// Post-promotion checks run.
    PostPromotionChecks,
    /// Traffic switched back after a failed post-promotion check.
    RolledBack,
    /// The previous revision is scaled up before switching back.
    ScalingForRollBack,
    /// The previous spec was re-applied; traffic went back at once.
    FastRollback,
    /// The rollout of the current spec is aborted.
    RolloutAborted,
    /// The previous revision waits for its scale-down deadline.
    WaitingForScaleDown,
}

impl Reason {
    /// The spelling in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MinimumReplicasAvailable => "MinimumReplicasAvailable",
            Self::MinimumReplicasUnavailable => "MinimumReplicasUnavailable",
            Self::WaitingForDependencies => "WaitingForDependencies",
            Self::DeploymentNotFound => "DeploymentNotFound",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::RolloutComplete => "RolloutComplete",
            Self::RolloutInProgress => "RolloutInProgress",
            Self::ReplicaFailure => "ReplicaFailure",
            Self::AsExpected => "AsExpected",
            Self::ChildWriteFailed => "ChildWriteFailed",
            Self::PrePromotionCheckFailed => "PrePromotionCheckFailed",
            Self::PostPromotionCheckFailed => "PostPromotionCheckFailed",
            Self::NoDependencies => "NoDependencies",
            Self::AllAvailable => "AllAvailable",
            Self::DependenciesNotReady => "DependenciesNotReady",
            Self::NotRequested => "NotRequested",
            Self::CrdNotInstalled => "CRDNotInstalled",
            Self::Applied => "Applied",
            Self::InvalidSpec => "InvalidSpec",
            Self::Valid => "Valid",
            Self::InvalidPassThroughField => "InvalidPassThroughField",
            Self::InvalidEnvFrom => "InvalidEnvFrom",
            Self::RejectedByApiServer => "RejectedByAPIServer",
            Self::AllApplied => "AllApplied",
            Self::ChildRejected => "ChildRejected",
            Self::ActiveIsCurrent => "ActiveIsCurrent",
            Self::FirstRevision => "FirstRevision",
            Self::WaitingForPreview => "WaitingForPreview",
            Self::PrePromotionChecks => "PrePromotionChecks",
            Self::Paused => "Paused",
            Self::ScalingForPromotion => "ScalingForPromotion",
            Self::Switched => "Switched",
            Self::PostPromotionChecks => "PostPromotionChecks",
            Self::RolledBack => "RolledBack",
            Self::ScalingForRollBack => "ScalingForRollBack",
            Self::FastRollback => "FastRollback",
            Self::RolloutAborted => "RolloutAborted",
            Self::WaitingForScaleDown => "WaitingForScaleDown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::Reason::*;

    #[test]
    fn every_reason_keeps_its_wire_string() {
        let pinned = [
            (MinimumReplicasAvailable, "MinimumReplicasAvailable"),
            (MinimumReplicasUnavailable, "MinimumReplicasUnavailable"),
            (WaitingForDependencies, "WaitingForDependencies"),
            (DeploymentNotFound, "DeploymentNotFound"),
            (ProgressDeadlineExceeded, "ProgressDeadlineExceeded"),
            (RolloutComplete, "RolloutComplete"),
            (RolloutInProgress, "RolloutInProgress"),
            (ReplicaFailure, "ReplicaFailure"),
            (AsExpected, "AsExpected"),
            (ChildWriteFailed, "ChildWriteFailed"),
            (PrePromotionCheckFailed, "PrePromotionCheckFailed"),
            (PostPromotionCheckFailed, "PostPromotionCheckFailed"),
            (NoDependencies, "NoDependencies"),
            (AllAvailable, "AllAvailable"),
            (DependenciesNotReady, "DependenciesNotReady"),
            (NotRequested, "NotRequested"),
            (CrdNotInstalled, "CRDNotInstalled"),
            (Applied, "Applied"),
            (InvalidSpec, "InvalidSpec"),
            (Valid, "Valid"),
            (InvalidPassThroughField, "InvalidPassThroughField"),
            (InvalidEnvFrom, "InvalidEnvFrom"),
            (RejectedByApiServer, "RejectedByAPIServer"),
            (AllApplied, "AllApplied"),
            (ChildRejected, "ChildRejected"),
            (ActiveIsCurrent, "ActiveIsCurrent"),
            (FirstRevision, "FirstRevision"),
            (WaitingForPreview, "WaitingForPreview"),
            (PrePromotionChecks, "PrePromotionChecks"),
            (Paused, "Paused"),
            (ScalingForPromotion, "ScalingForPromotion"),
            (Switched, "Switched"),
            (PostPromotionChecks, "PostPromotionChecks"),
            (RolledBack, "RolledBack"),
            (ScalingForRollBack, "ScalingForRollBack"),
            (FastRollback, "FastRollback"),
            (RolloutAborted, "RolloutAborted"),
            (WaitingForScaleDown, "WaitingForScaleDown"),
        ];
        for (reason, wire) in pinned {
            assert_eq!(reason.as_str(), wire);
            assert_eq!(reason.to_string(), wire);
        }
    }
}
