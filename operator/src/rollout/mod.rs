//! Blue-green rollouts.
//!
//! - [`machine`]: the pure state machine, observed state → the next desired world (which revision
//!   the active and preview Services select, how many pods each revision runs, what is deleted, the
//!   phase and the status). It keeps no memory: every input comes from the child objects and the
//!   MicroService (spec, annotations, status), so a restarted operator decides exactly the same.
//! - [`checks`]: pure bookkeeping of promotion checks (which are due, verdicts).
//! - [`runner`]: the I/O of one check measurement (gRPC health, webhook, Prometheus).
//! - [`control`]: the annotations `kubectl ferry` (or `kubectl patch`) sets to promote, abort,
//!   retry.

pub mod checks;
pub mod control;
pub mod machine;
pub mod report;
pub mod runner;

pub use machine::{Input, Plan, RevisionObs, ServiceObs, Settings, Step, decide};

/// Label carrying the revision (pod template hash) on revision Deployments and their pods.
pub const REVISION_LABEL: &str = "ferry.dev/revision";
/// Annotation on a revision Deployment: the container image.
pub const IMAGE_ANNOTATION: &str = "ferry.dev/image";
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

/// Length of the revision hash in names and labels.
pub const HASH_LEN: usize = 10;

/// The name of a revision's Deployment.
pub fn deployment_name(microservice: &str, hash: &str) -> String {
    format!("{microservice}-{hash}")
}

/// The name of the preview Service.
pub fn preview_service_name(microservice: &str) -> String {
    format!("{microservice}-preview")
}
