//! The Ferry operator: reconciles `MicroService` objects (`ferry.dev/v1alpha1`) into a Deployment,
//! a Service and, as asked, a HorizontalPodAutoscaler, a PodDisruptionBudget and a ServiceMonitor.
//!
//! Layout (data flows top to bottom):
//! - [`crd`]: the API types; the CRD is generated from them.
//! - [`validation`]: checks the CRD schema cannot express.
//! - [`desired`]: pure builders, `MicroService` → desired child objects.
//! - [`status`]: pure derivation of conditions, phase and events from observed state.
//! - [`reconciler`]: the kube-runtime controller that applies the above (all I/O lives here).
//! - [`runtime`], [`metrics`], [`telemetry`]: leader election, HTTP endpoints, logging.

pub mod crd;
pub mod desired;
pub mod metrics;
pub mod reconciler;
pub mod rollout;
pub mod runtime;
pub mod status;
pub mod telemetry;
pub mod validation;

/// The field manager every server-side apply from the operator uses.
pub const FIELD_MANAGER: &str = "ferry-operator";
