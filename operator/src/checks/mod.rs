//! Promotion checks, measured by the operator off the reconcile path.
//!
//! - [`runner`]: the tracked background tasks and the outcomes they keep for the next reconcile.
//! - [`measure`]: one measurement (a webhook, a Prometheus query, gRPC health of every pod).

pub mod measure;
pub mod runner;

pub use runner::CheckRunner;
