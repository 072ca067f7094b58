//! Rollout control through annotations on the MicroService. `kubectl ferry` sets exactly these, so
//! `kubectl annotate`/`kubectl patch` does the same.
//!
//! - `ferry.dev/promote: <hash>` promotes the preview revision `<hash>` (skips the pause).
//! - `ferry.dev/abort: <hash>` aborts the rollout of revision `<hash>`; traffic stays where it is.
//! - `ferry.dev/retry: <RFC 3339 time>` retries an aborted revision (a new value each time); the
//!   progress deadline restarts at that time. Retrying also removes `ferry.dev/abort`.
//!
//! Values name a revision (or carry a time), so a stale annotation never acts on a later rollout.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::keys::{ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION};

/// The control requests, read from the annotations and `spec.paused`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    /// `spec.paused`.
    pub paused: bool,
    /// Hash named by `ferry.dev/promote`.
    pub promote: Option<String>,
    /// Hash named by `ferry.dev/abort`.
    pub abort: Option<String>,
    /// Raw value of `ferry.dev/retry` (empty when absent).
    pub retry: String,
    /// `ferry.dev/retry` parsed as a time.
    pub retry_at: Option<Timestamp>,
}

impl Controls {
    /// Reads the controls from a MicroService's annotations and `spec.paused`.
    pub fn read(annotations: &BTreeMap<String, String>, paused: bool) -> Self {
        let retry = annotations.get(RETRY_ANNOTATION).cloned().unwrap_or_default();
        Self {
            paused,
            promote: annotations.get(PROMOTE_ANNOTATION).cloned(),
            abort: annotations.get(ABORT_ANNOTATION).cloned(),
            retry_at: retry.parse().ok(),
            retry,
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_read_from_the_annotations() {
        let a = BTreeMap::from([
            (PROMOTE_ANNOTATION.to_string(), "abc".to_string()),
            (RETRY_ANNOTATION.to_string(), "2026-01-01T00:00:00Z".to_string()),
        ]);
        let c = Controls::read(&a, true);
        assert!(c.paused);
        assert_eq!(c.promote.as_deref(), Some("abc"));
        assert_eq!(c.abort, None);
        assert_eq!(c.retry_at, Some("2026-01-01T00:00:00Z".parse().expect("time")));
    }
}
