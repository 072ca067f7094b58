//! Every key and name the operator writes onto objects or derives from them: field managers,
//! labels, annotations, hash lengths and the names of generated children. One module, so a key is
//! spelled once and every reader (the operator, `kubectl ferry`, the tests) reads the same constant.
//!
//! This module depends on nothing else in the crate.

// === field managers ===

/// The field manager of the operator's server-side applies of children (and the name it publishes
/// Events under). Drift detection reads this manager's `managedFields` entries.
pub const FIELD_MANAGER: &str = "ferry-operator";
/// The field manager of the operator's merge patches that only change a replica count: a revision
/// Deployment scaled up or down, and the seed of `MicroService.spec.replicas`. Separate from
/// [`FIELD_MANAGER`] so `managedFields` show which fields came from an apply and which from scaling.
pub const SCALE_FIELD_MANAGER: &str = "ferry-operator-scale";
/// The field manager of the operator's server-side applies of `MicroService` status.
pub const STATUS_FIELD_MANAGER: &str = "ferry-operator-status";

// === labels ===

/// The pod selector label; its value is the MicroService name. Reserved: users cannot set it.
pub const SELECTOR_LABEL: &str = "ferry.dev/microservice";
/// Standard label naming the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Standard label naming the manager; the operator's watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ferry-operator";
/// Label carrying the revision (pod template hash) on revision Deployments and their pods.
pub const REVISION_LABEL: &str = "ferry.dev/revision";

/// `app.kubernetes.io/managed-by=ferry-operator`, the label selector of the operator's child watches.
pub fn managed_by_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

// === annotations on children ===

/// Annotation on every child: the hash of the child as built (without this annotation).
pub const SPEC_HASH_ANNOTATION: &str = "ferry.dev/spec-hash";
/// Pod-template annotation: hash of the mounted ConfigMap's data, when `rollOnChange` is on.
pub const CONFIG_HASH_ANNOTATION: &str = "ferry.dev/config-hash";
/// Annotation on a revision Deployment: the container image.
pub const IMAGE_ANNOTATION: &str = "ferry.dev/image";
/// Annotation on a revision Deployment: the replica count the operator gave it. The rollout reads
/// this, not `spec.replicas`, so a revision scaled by hand is scaled back to what it should run.
pub const REPLICAS_ANNOTATION: &str = "ferry.dev/replicas";
/// Annotation on a revision Deployment: the MicroService spec (JSON, without `replicas`) it was built
/// from, so `kubectl ferry undo` can re-apply it.
pub const SPEC_ANNOTATION: &str = "ferry.dev/spec";
/// Annotations on the active Service, written in the same apply as its selector, so the switch and
/// what it switched from are one atomic fact.
pub const ACTIVE_ANNOTATION: &str = "ferry.dev/active-revision";
/// The revision traffic was switched away from.
pub const PREVIOUS_ANNOTATION: &str = "ferry.dev/previous-revision";
/// When the switch happened (RFC 3339).
pub const SWITCHED_AT_ANNOTATION: &str = "ferry.dev/switched-at";
/// `<hash>/<retry mark>` of a revision rolled back after a failed post-promotion check.
pub const ROLLED_BACK_ANNOTATION: &str = "ferry.dev/rolled-back";
/// Why the selector last switched (`Promotion`, `FastRollback`, `RollBack`).
pub const SWITCH_REASON_ANNOTATION: &str = "ferry.dev/switch-reason";

// === annotations on the MicroService (rollout control; `kubectl ferry` writes them) ===

/// `ferry.dev/promote: <hash>` promotes the preview revision `<hash>` (skips the pause).
pub const PROMOTE_ANNOTATION: &str = "ferry.dev/promote";
/// `ferry.dev/abort: <hash>` aborts the rollout of revision `<hash>`; traffic stays where it is.
pub const ABORT_ANNOTATION: &str = "ferry.dev/abort";
/// `ferry.dev/retry: <RFC 3339 time>` retries an aborted revision (a new value each time).
pub const RETRY_ANNOTATION: &str = "ferry.dev/retry";
/// Client-side `kubectl apply` keeps a full copy of the object here; the operator never reads it.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

// === hashes and derived names ===

/// Hex characters of the revision hash in names and labels.
pub const HASH_LEN: usize = 10;
/// Hex characters of the spec-hash annotation (and of the ConfigMap data hash).
pub const SPEC_HASH_LEN: usize = 16;

/// The name of a revision's Deployment.
pub fn deployment_name(microservice: &str, hash: &str) -> String {
    format!("{microservice}-{hash}")
}

/// The name of the preview Service.
pub fn preview_service_name(microservice: &str) -> String {
    format!("{microservice}-preview")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_manager_is_distinct_and_names_the_operator() {
        let managers = [FIELD_MANAGER, SCALE_FIELD_MANAGER, STATUS_FIELD_MANAGER];
        for (i, a) in managers.iter().enumerate() {
            assert!(a.starts_with("ferry-operator"), "{a}");
            for b in &managers[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn derived_names_follow_the_microservice_name() {
        assert_eq!(deployment_name("order", "0123456789"), "order-0123456789");
        assert_eq!(preview_service_name("order"), "order-preview");
        assert_eq!(managed_by_selector(), "app.kubernetes.io/managed-by=ferry-operator");
    }
}
