//! One reconcile against a mocked API server, per scenario: the exact requests it sends, in order.
//! The same scenarios are plain-data tests of `plan` in `ferry-operator-core` (`plan/tests.rs`);
//! here they also cover what only the executor does: batches, the write gate, the status write,
//! the Events, a refused write, and checks that run off the reconcile path.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{controller::Action, reflector::ObjectRef};
use serde_json::{Value, json};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

use ferry_operator_core::{
    crd::MicroService,
    desired::service_monitor,
    fixtures::{blue_green, converge, converged, order, roll_out},
    keys::{ABORT_ANNOTATION, FIELD_MANAGER},
    plan::{self, Observed, Write},
};

use super::{
    Error, Result, Stores,
    fixtures::{self, ApiServer, Seen, context, context_with_stores},
    reconcile,
};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments";
const SERVICE: &str = "/api/v1/namespaces/shop/services";
const HPA: &str = "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers";
const MICROSERVICE: &str = "/apis/ferry.dev/v1alpha1/namespaces/shop/microservices";
const EVENTS: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events?";
const APPLY: &str = "?&force=true&fieldManager=ferry-operator";

fn apply(collection: &str, name: &str) -> String {
    format!("PATCH {collection}/{name}{APPLY}")
}

fn status_apply() -> String {
    format!("PATCH {MICROSERVICE}/order/status?&force=true&fieldManager=ferry-operator-status")
}

/// One reconcile of `observed` (as the caches hold it) against a fake API server set up by
/// `setup`: its result and the requests, in order.
async fn reconcile_once(
    observed: &Observed,
    leader: bool,
    setup: impl FnOnce(ApiServer) -> ApiServer,
) -> (Result<Action>, Vec<Seen>) {
    reconcile_with_stores(observed, leader, fixtures::stores(observed), setup).await
}

/// [`reconcile_once`] with the caches given.
async fn reconcile_with_stores(
    observed: &Observed,
    leader: bool,
    stores: Stores,
    setup: impl FnOnce(ApiServer) -> ApiServer,
) -> (Result<Action>, Vec<Seen>) {
    let (ctx, server, _triggers) = context_with_stores(observed, leader, stores);
    let server = tokio::spawn(setup(server).serve());
    let result =
        tokio::time::timeout(Duration::from_secs(10), reconcile(observed.microservice.clone(), ctx.clone()))
            .await
            .expect("the reconcile ends");
    drop(ctx);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the fake API server ends with its last client")
        .expect("the fake API server does not panic");
    (result, seen)
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn event_reasons(seen: &[Seen]) -> Vec<String> {
    (seen.iter())
        .filter(|s| s.line() == EVENTS)
        .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn status_body(seen: &[Seen]) -> &Value {
    &seen.iter().find(|s| s.line() == status_apply()).expect("a status write").body["status"]
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    (status["conditions"].as_array().expect("conditions").iter())
        .find(|c| c["type"] == type_)
        .expect("condition")
}

fn with(observed: &Observed, edit: impl FnOnce(&mut MicroService)) -> Observed {
    let mut ms = observed.microservice.as_ref().clone();
    edit(&mut ms);
    Observed { microservice: Arc::new(ms), ..observed.clone() }
}

#[tokio::test]
async fn creating_applies_the_deployment_and_service_then_announces_and_writes_status_once() {
    let observed = Observed::new(Arc::new(order()));
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lines(&seen),
        [apply(DEPLOYMENT, "order"), apply(SERVICE, "order"), EVENTS.to_string(), status_apply(),]
    );
    assert_eq!(event_reasons(&seen), ["Created"]);
    assert_eq!(seen[0].body["spec"]["replicas"], 1);
    let status = status_body(&seen);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Synced")["status"], "True");
}

#[tokio::test]
async fn a_converged_microservice_sends_no_request() {
    let observed = converged(order(), Timestamp::now());
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok());
    assert_eq!(lines(&seen), Vec::<String>::new());
}

#[tokio::test]
async fn an_image_change_applies_the_deployment_announces_it_and_writes_status() {
    let observed = with(&converged(order(), Timestamp::now()), |ms| {
        ms.spec.image = "ghcr.io/acme/order:2.0.0".into();
        ms.metadata.generation = Some(2);
    });
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok());
    assert_eq!(lines(&seen), [apply(DEPLOYMENT, "order"), EVENTS.into(), status_apply()]);
    assert_eq!(event_reasons(&seen), ["Updated"]);
    let image = &seen[0].body["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "ghcr.io/acme/order:2.0.0");
    assert_eq!(status_body(&seen)["phase"], "Progressing");
}

#[tokio::test]
async fn an_invalid_spec_writes_its_status_and_one_warning_and_waits() {
    let observed = with(&converged(order(), Timestamp::now()), |ms| {
        ms.spec.env_from = Some(vec![json!({})]);
        ms.metadata.generation = Some(2);
    });
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert_eq!(result.ok(), Some(Action::await_change()));
    assert_eq!(lines(&seen), [status_apply(), EVENTS.to_string()]);
    assert_eq!(event_reasons(&seen), ["InvalidSpec"]);
    assert_eq!(condition(status_body(&seen), "InvalidSpec")["reason"], "InvalidEnvFrom");
}

#[tokio::test]
async fn a_replica_that_is_not_the_leader_sends_nothing() {
    let observed = Observed::new(Arc::new(order()));
    let (result, seen) = reconcile_once(&observed, false, |s| s).await;
    assert!(matches!(result, Err(Error::NotLeaderError)), "{result:?}");
    assert_eq!(lines(&seen), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_child_write_is_reported_once_in_status_and_retried() {
    let observed = Observed::new(Arc::new(ferry_operator_core::fixtures::from(json!({
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "replicas": 1,
    }))));
    let (result, seen) = reconcile_once(&observed, true, |s| {
        s.fail("horizontalpodautoscalers", 403, "exceeded quota: no-hpas")
    })
    .await;
    assert!(matches!(result, Err(Error::ChildWriteError(_))), "{result:?}");
    let lines = lines(&seen);
    assert_eq!(
        lines[..3],
        [apply(DEPLOYMENT, "order"), apply(SERVICE, "order"), apply(HPA, "order")],
        "one batch, all three sent"
    );
    assert!(lines.contains(&status_apply()));
    let status = status_body(&seen);
    assert_eq!(condition(status, "Synced")["reason"], "ChildRejected");
    assert_eq!(
        condition(status, "Synced")["message"],
        "HorizontalPodAutoscaler order: exceeded quota: no-hpas"
    );
    assert!(event_reasons(&seen).contains(&"ChildWriteFailed".to_string()));
}

// === blue-green ===

const BLUE: &str = "ghcr.io/acme/order:1.0.0";
const GREEN: &str = "ghcr.io/acme/order:2.0.0";

/// A blue-green `order` converged on BLUE, changed to GREEN, and reconciled until the next plan
/// would move traffic (`promote`) or as far as the new revision's creation.
fn rollout(extra: Value, promote: bool) -> Observed {
    let now = Timestamp::now();
    let mut observed = converged(blue_green(BLUE, extra.clone()), now);
    let mut green = blue_green(GREEN, extra);
    green.status = observed.microservice.status.clone();
    green.metadata.generation = Some(2);
    observed.microservice = Arc::new(green);
    for _ in 0..4 {
        let next = plan::plan(&observed, now);
        let switches = next.switch.is_some();
        if (promote && switches) || (!promote && next.batches.is_empty()) {
            break;
        }
        converge(&mut observed, &next);
        if promote {
            roll_out(&mut observed);
        }
    }
    observed
}

#[tokio::test]
async fn a_promotion_is_one_apply_of_the_active_service_then_the_status_and_events() {
    let observed = rollout(json!({}), true);
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok());
    let lines = lines(&seen);
    assert_eq!(lines[..2], [apply(SERVICE, "order"), status_apply()], "{lines:#?}");
    let selector = &seen[0].body["spec"]["selector"];
    let green = seen[0].body["metadata"]["annotations"]["ferry.dev/active-revision"].clone();
    assert_eq!(selector["ferry.dev/revision"], green);
    assert!(event_reasons(&seen).contains(&"Switched".to_string()));
    let status = status_body(&seen);
    assert_eq!(status["blueGreen"]["lastSwitch"]["active"], green);
}

#[tokio::test]
async fn an_abort_writes_only_the_status_and_its_events() {
    let observed = rollout(json!({}), false);
    let green = observed
        .microservice
        .status
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .and_then(|b| b.preview_revision.as_ref())
        .map(|r| r.hash.clone())
        .expect("a preview revision");
    let observed = with(&observed, |ms| {
        ms.metadata.annotations = Some([(ABORT_ANNOTATION.to_string(), green)].into());
    });
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok());
    assert_eq!(lines(&seen)[0], status_apply(), "no switch, no scale before the status");
    assert!(!lines(&seen).contains(&apply(SERVICE, "order")));
    assert_eq!(status_body(&seen)["phase"], "Aborted");
    assert!(event_reasons(&seen).contains(&"RolloutAborted".to_string()));
}

/// A webhook that accepts the connection and answers only when told to.
async fn held_webhook() -> (String, tokio::sync::oneshot::Sender<()>) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let released = released.clone();
            async move {
                if let Some(rx) = released.lock().await.take() {
                    let _ = rx.await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}/hook"), release)
}

#[tokio::test]
async fn a_slow_webhook_check_runs_off_the_reconcile_and_requeues_the_microservice_when_done() {
    let (url, release) = held_webhook().await;
    let checks =
        json!({"prePromotionChecks": [{"name": "smoke", "webhook": {"url": url, "timeoutSeconds": 60}}]});
    let observed = rollout(checks, true);
    let (ctx, server, mut triggers) = context(&observed, true);
    let server = tokio::spawn(server.serve());
    let obj = ObjectRef::from_obj(observed.microservice.as_ref());
    // The reconcile finishes while the webhook has not answered.
    let result =
        tokio::time::timeout(Duration::from_secs(10), reconcile(observed.microservice.clone(), ctx.clone()))
            .await
            .expect("the reconcile does not wait for the webhook");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.checks.in_flight(), ["smoke".to_string()].into());
    assert!(ctx.checks.measurements(&obj).is_empty());
    // Another reconcile meanwhile starts no second measurement.
    reconcile(observed.microservice.clone(), ctx.clone()).await.expect("reconcile");
    assert_eq!(ctx.checks.in_flight().len(), 1);
    // The webhook answers: the outcome is kept and the MicroService requeued.
    release.send(()).expect("release");
    let requeued = tokio::time::timeout(Duration::from_secs(10), triggers.next()).await.expect("a requeue");
    assert_eq!(requeued, Some(obj.clone()));
    let measured = ctx.checks.measurements(&obj);
    assert_eq!(measured.len(), 1);
    assert_eq!(measured[0].outcome, Ok("webhook answered 200".to_string()));
    assert!(ctx.checks.in_flight().is_empty());
    drop(ctx);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

#[tokio::test]
async fn deleting_a_microservice_forgets_its_failures_phase_series_and_measurements() {
    let observed = rollout(json!({}), true);
    let (ctx, server, _triggers) = context(&observed, true);
    let server = tokio::spawn(server.serve());
    let obj = ObjectRef::from_obj(observed.microservice.as_ref());
    reconcile(observed.microservice.clone(), ctx.clone()).await.expect("reconcile");
    let _ = super::error_policy(observed.microservice.clone(), &Error::NotLeaderError, ctx.clone());
    assert!(ctx.metrics.render().contains("name=\"order\""));
    assert!(ctx.failures().contains_key(&obj));
    ctx.forget(&obj);
    assert!(!ctx.metrics.render().contains("name=\"order\""), "the phase series is gone");
    assert!(ctx.failures().is_empty());
    assert_eq!(ctx.checks.sizes(), (0, 0));
    drop(ctx);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

#[tokio::test]
async fn revisions_are_scaled_by_a_merge_patch_under_the_scale_field_manager() {
    let mut observed = rollout(json!({"scaleDownDelaySeconds": 0}), true);
    // Switch, then the previous revision's scale-down is due.
    let now = Timestamp::now();
    for _ in 0..3 {
        let next = plan::plan(&observed, now);
        if next.writes().any(|w| matches!(w, Write::Scale { .. })) {
            break;
        }
        converge(&mut observed, &next);
        roll_out(&mut observed);
    }
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    let scale = (seen.iter())
        .find(|s| s.line().starts_with(&format!("PATCH {DEPLOYMENT}/order-")) && !s.line().contains("force"))
        .expect("a scale patch");
    assert!(scale.uri.ends_with("?&fieldManager=ferry-operator-scale"), "{}", scale.uri);
    assert_eq!(scale.body["spec"]["replicas"], 0);
    assert_eq!(scale.body["metadata"]["annotations"]["ferry.dev/spec-hash"], Value::Null);
}

#[tokio::test]
async fn an_autoscaled_microservice_is_seeded_under_the_scale_field_manager_before_anything_else() {
    let observed = Observed::new(Arc::new(ferry_operator_core::fixtures::from(json!({
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4}
    }))));
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(seen[0].line(), format!("PATCH {MICROSERVICE}/order?&fieldManager=ferry-operator-scale"));
    assert_eq!(seen[0].body, json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 2}}));
}

#[tokio::test]
async fn status_fields_an_older_operator_owns_are_handed_to_the_status_manager_once() {
    let converged = converged(order(), Timestamp::now());
    let legacy = with(&converged, |ms| {
        ms.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(FIELD_MANAGER.into()),
            operation: Some("Apply".into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(json!({"f:status": {"f:phase": {}}}))),
            ..ManagedFieldsEntry::default()
        }]);
    });
    let (result, seen) = reconcile_once(&legacy, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lines(&seen),
        [status_apply(), format!("PATCH {MICROSERVICE}/order/status{APPLY}")],
        "the unchanged status is written by the status manager, then the old manager lets go"
    );
    assert_eq!(seen[1].body.get("status"), None, "the old manager applies no status");
    let (_, seen) = reconcile_once(&converged, true, |s| s).await;
    assert!(seen.is_empty(), "without the old entry nothing is written");
}

/// `order` autoscaled with a gRPC latency target (and what it needs), reconciled until converged
/// with the KEDA and ServiceMonitor CRDs served as `keda` says.
fn converged_grpc_autoscaled(latency: bool, keda: bool) -> Observed {
    let mut autoscaling = json!({"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70});
    if latency {
        autoscaling["latencyP99Milliseconds"] = json!(250);
        autoscaling["prometheusAddress"] = json!("http://prometheus.monitoring.svc:9090");
    }
    let ms = ferry_operator_core::fixtures::from(json!({
        "ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc"},
            {"name": "metrics", "port": 9090, "protocol": "http"}
        ],
        "monitoring": {"port": "metrics"},
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": autoscaling
    }));
    let mut observed = Observed::new(Arc::new(ms));
    observed.crds =
        plan::ServedCrds { service_monitors: true, prometheus_rules: false, scaled_objects: keda };
    for _ in 0..8 {
        let next = plan::plan(&observed, Timestamp::now());
        if next.batches.is_empty() && next.status.is_none() {
            return observed;
        }
        converge(&mut observed, &next);
        roll_out(&mut observed);
    }
    panic!("no convergence: {observed:#?}");
}

#[tokio::test]
async fn a_latency_target_deletes_the_hpa_and_applies_a_keda_scaled_object() {
    let hpa_only = converged_grpc_autoscaled(false, true);
    let target = converged_grpc_autoscaled(true, true);
    let observed = with(&hpa_only, |ms| {
        ms.spec.autoscaling = target.microservice.spec.autoscaling.clone();
        ms.metadata.generation = ms.metadata.generation.map(|g| g + 1);
    });
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    let lines = lines(&seen);
    let scaled_objects = "/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects";
    assert!(lines.contains(&apply(scaled_objects, "order")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("DELETE {HPA}/order"))), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with(&format!("PATCH {HPA}"))), "{lines:#?}");
    let so = seen.iter().find(|s| s.line() == apply(scaled_objects, "order")).expect("the apply");
    assert_eq!(so.body["spec"]["scaleTargetRef"]["kind"], "MicroService");
    assert_eq!(condition(status_body(&seen), "ScaledObjectReady")["status"], "True");
}

#[tokio::test]
async fn without_keda_a_latency_target_converges_with_its_condition_and_then_sends_nothing() {
    let observed = converged_grpc_autoscaled(true, false);
    let status = observed.microservice.status.as_ref().expect("status");
    let c = status.condition("ScaledObjectReady").expect("the condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "CRDNotInstalled"));
    let (result, seen) = reconcile_once(&observed, true, |s| s).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lines(&seen), Vec::<String>::new(), "converged: nothing more to write");
}

/// Right after a (re)start: `filling` is the one child cache still listing.
async fn reconcile_while_filling(filling: &str) -> (Result<Action>, Vec<Seen>) {
    let observed = converged_grpc_autoscaled(false, false);
    let mut stores = fixtures::stores(&observed);
    let _writer = match filling {
        "HorizontalPodAutoscaler" => {
            let (store, writer) = fixtures::still_filling(());
            stores.autoscalers = store;
            writer
        }
        "PodDisruptionBudget" => {
            let (store, writer) = fixtures::still_filling(());
            stores.disruption_budgets = store;
            writer
        }
        "ServiceMonitor" => {
            let (store, writer) = fixtures::still_filling(service_monitor::api_resource());
            stores.service_monitors = store;
            writer
        }
        other => panic!("no cache {other}"),
    };
    reconcile_with_stores(&observed, true, stores, |s| s).await
}

#[tokio::test]
async fn a_reconcile_waits_for_every_child_cache_it_reads_before_it_writes() {
    for filling in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"] {
        let (result, seen) = reconcile_while_filling(filling).await;
        assert_eq!(result.ok(), Some(Action::requeue(super::CACHE_RETRY)), "{filling} filling");
        assert_eq!(lines(&seen), Vec::<String>::new(), "{filling} filling: nothing is written");
    }
}
