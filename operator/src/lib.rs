//! The Ferry operator: reconciles `MicroService` objects (`ferry.dev/v1alpha1`) into a Deployment,
//! a Service and, as asked, a HorizontalPodAutoscaler, a PodDisruptionBudget and a ServiceMonitor.
//!
//! The decisions live in [`ferry_operator_core`] (re-exported as [`core`]), which cannot do I/O.
//! This crate is the I/O around them:
//! - [`reconciler`]: the kube-runtime controller: observes the caches, plans, executes the writes.
//! - [`checks`]: promotion-check measurements (webhooks, Prometheus, gRPC health).
//! - [`runtime`], [`metrics`], [`telemetry`]: leader election, HTTP endpoints, logging.

pub use ferry_operator_core as core;
pub use ferry_operator_core::{crd, keys};

pub mod checks;
pub mod metrics;
pub mod reconciler;
pub mod runtime;
pub mod telemetry;

/// The field manager every server-side apply of children from the operator uses.
pub const FIELD_MANAGER: &str = ferry_operator_core::keys::FIELD_MANAGER;
