//! Blue-green rollouts.
//!
//! - [`machine`]: the pure state machine, observed state → the next desired world (which revision
//!   the active and preview Services select, how many pods each revision runs, what is deleted, the
//!   phase and the status). It keeps no memory: every input comes from the child objects and the
//!   MicroService (spec, annotations, status), so a restarted operator decides exactly the same.
//! - [`record`]: which switch facts to decide from when the active Service and the status disagree.
//! - [`checks`]: pure bookkeeping of promotion checks (which are due, verdicts).
//! - [`control`]: the annotations `kubectl ferry` (or `kubectl patch`) sets to promote, abort,
//!   retry.

pub mod checks;
pub mod control;
pub mod machine;
pub mod record;
pub mod report;

pub use machine::{
    AbortReason, Decision, Input, RevisionObs, ServiceObs, Settings, Step, SwitchReason, decide,
};
