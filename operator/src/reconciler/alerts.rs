//! The PrometheusRule child of `spec.monitoring.alerts`, handled exactly like the ServiceMonitor:
//! API discovery says whether its CRD is served, a metadata-only watch of that CRD keeps the answer
//! current (and re-reconciles everything when it changes), the rules themselves are watched
//! metadata-only once the CRD is served, and without the CRD the `PrometheusRuleReady` condition
//! says why and nothing else is affected.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tracing::{debug, info};

use super::{Context, Result, child_watch_config, ensure_child};
use crate::{
    crd::{MicroService, MicroServiceStatus, condition_type::PROMETHEUS_RULE_READY},
    desired::prometheus_rule::{self, CRD_NAME, PLURAL},
    status::{EventKind, StatusEvent, cond, merge_condition},
};

/// Reason of the condition when the CRD is not served.
pub const CRD_NOT_INSTALLED: &str = "CRDNotInstalled";

/// What happened to the PrometheusRule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertsState {
    /// `monitoring.alerts` is absent or disabled.
    NotRequested,
    /// Alerts are asked for but the PrometheusRule CRD is not served.
    CrdNotInstalled,
    /// The PrometheusRule is applied.
    Applied,
}

/// Whether the cluster serves PrometheusRules (API discovery of `monitoring.coreos.com/v1`).
pub async fn served(client: &Client) -> bool {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == PLURAL),
        Err(_) => false,
    }
}

/// Keeps `tx` current: watches the PrometheusRule CRD (metadata only) and re-runs discovery on
/// every change. Runs until the process ends.
pub async fn track_crd(client: Client, tx: watch::Sender<bool>) {
    let crds: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("metadata.name={CRD_NAME}"));
    let mut events = watcher(crds, wc).default_backoff().boxed();
    while let Some(event) = events.next().await {
        if let Err(err) = event {
            debug!(error = %err, "PrometheusRule CRD watch error");
            continue;
        }
        // NB: a CRD that was just created is served a moment later; look a few times.
        for attempt in 0..10u64 {
            let now = served(&client).await;
            if now != *tx.borrow() {
                info!(served = now, "PrometheusRule CRD availability changed");
                tx.send_replace(now);
                break;
            }
            if attempt < 9 {
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
}

/// The metadata-only, reflected watch of PrometheusRules, started only once the CRD is served, as a
/// trigger stream for `owns_stream_with(.., prometheus_rule::api_resource())`.
pub fn watch_rules(
    client: &Client,
    namespace: Option<&str>,
    served_rx: watch::Receiver<bool>,
) -> (
    Store<PartialObjectMeta<DynamicObject>>,
    impl Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + use<>,
) {
    let ar = prometheus_rule::api_resource();
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut served_wait = served_rx;
    let stream = futures::stream::once(async move {
        let _ = served_wait.wait_for(|served| *served).await;
    })
    .map(move |()| watcher(api.clone(), child_watch_config()).default_backoff())
    .flatten()
    .modify(|m| {
        m.managed_fields_mut().clear();
    })
    .reflect(writer)
    .touched_objects();
    (reader, stream)
}

/// Fires whenever the CRD's availability changes (for `reconcile_all_on`).
pub fn served_changes(served_rx: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send + use<> {
    futures::stream::unfold(served_rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// Applies, keeps or deletes the PrometheusRule of `ms`, and says what became of it.
pub async fn ensure(
    ctx: &Context,
    ms: &MicroService,
    ns: &str,
    name: &str,
    desired: Option<&DynamicObject>,
) -> Result<AlertsState> {
    let served = *ctx.prometheus_rules_served.borrow();
    let state = if prometheus_rule::wanted(ms).is_none() {
        AlertsState::NotRequested
    } else if !served {
        AlertsState::CrdNotInstalled
    } else {
        AlertsState::Applied
    };
    if served {
        let ar = prometheus_rule::api_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        let observed: Option<Arc<PartialObjectMeta<DynamicObject>>> = ctx
            .stores
            .prometheus_rules
            .get(&ObjectRef::new_with(name, ar.clone()).within(ns));
        ensure_child(ctx, ms, &api, observed, desired, "PrometheusRule").await?;
    }
    Ok(state)
}

/// Sets the `PrometheusRuleReady` condition on the derived status (keeping its transition time
/// while its status holds). A MicroService that never asked for alerts gets no such condition.
pub fn overlay(
    next: &mut MicroServiceStatus,
    previous: Option<&MicroServiceStatus>,
    state: AlertsState,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let had = previous.is_some_and(|p| p.condition(PROMETHEUS_RULE_READY).is_some());
    let new = match state {
        AlertsState::NotRequested if !had => {
            next.conditions.retain(|c| c.type_ != PROMETHEUS_RULE_READY);
            return;
        }
        AlertsState::NotRequested => cond(
            PROMETHEUS_RULE_READY,
            false,
            "NotRequested",
            "monitoring.alerts is off",
        ),
        AlertsState::CrdNotInstalled => cond(
            PROMETHEUS_RULE_READY,
            false,
            CRD_NOT_INSTALLED,
            "prometheusrules.monitoring.coreos.com is not served by this cluster; install the Prometheus Operator CRDs to get the alert rules",
        ),
        AlertsState::Applied => cond(
            PROMETHEUS_RULE_READY,
            true,
            "Applied",
            "the PrometheusRule is applied",
        ),
    };
    let merged = merge_condition(previous, new, next.observed_generation, now);
    next.conditions.retain(|c| c.type_ != PROMETHEUS_RULE_READY);
    next.conditions.push(merged);
}

/// A Warning event the first time the rule cannot be created for want of its CRD.
pub fn event(
    previous: Option<&MicroServiceStatus>,
    next: &MicroServiceStatus,
) -> Option<StatusEvent> {
    let missing = |s: &MicroServiceStatus| {
        s.condition(PROMETHEUS_RULE_READY)
            .is_some_and(|c| c.reason == CRD_NOT_INSTALLED)
    };
    (missing(next) && !previous.is_some_and(missing)).then(|| StatusEvent {
        kind: EventKind::Warning,
        reason: "PrometheusRuleUnavailable",
        note: next
            .condition(PROMETHEUS_RULE_READY)
            .map(|c| c.message.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;

    fn t(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    fn status(
        state: AlertsState,
        previous: Option<&MicroServiceStatus>,
        at: i64,
    ) -> MicroServiceStatus {
        let mut next = MicroServiceStatus {
            observed_generation: Some(1),
            ..MicroServiceStatus::default()
        };
        overlay(&mut next, previous, state, &t(at));
        next
    }

    #[test]
    fn a_missing_prometheus_rule_crd_is_explained_and_announced_once() {
        let first = status(AlertsState::CrdNotInstalled, None, 10);
        let c = first.condition(PROMETHEUS_RULE_READY).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", CRD_NOT_INSTALLED)
        );
        assert!(c.message.contains("prometheusrules.monitoring.coreos.com"));
        assert!(event(None, &first).is_some());
        let second = status(AlertsState::CrdNotInstalled, Some(&first), 20);
        assert!(event(Some(&first), &second).is_none());
        assert_eq!(
            second
                .condition(PROMETHEUS_RULE_READY)
                .expect("c")
                .last_transition_time,
            t(10)
        );
    }

    #[test]
    fn an_applied_rule_makes_the_condition_true() {
        let previous = status(AlertsState::CrdNotInstalled, None, 10);
        let next = status(AlertsState::Applied, Some(&previous), 20);
        let c = next.condition(PROMETHEUS_RULE_READY).expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Applied"));
        assert_eq!(c.last_transition_time, t(20));
        assert!(event(Some(&previous), &next).is_none());
    }

    #[test]
    fn a_service_that_never_asked_for_alerts_gets_no_condition_and_one_that_stopped_is_told() {
        assert!(
            status(AlertsState::NotRequested, None, 10)
                .condition(PROMETHEUS_RULE_READY)
                .is_none()
        );
        let applied = status(AlertsState::Applied, None, 10);
        let off = status(AlertsState::NotRequested, Some(&applied), 20);
        assert_eq!(
            off.condition(PROMETHEUS_RULE_READY).expect("c").reason,
            "NotRequested"
        );
    }
}
