//! Plain-data scenarios of `plan`: what one reconcile writes, reports and asks for, from what the
//! caches hold. The same scenarios run through the operator's mocked API server
//! (`operator/src/reconciler/tests`), which checks the exact requests.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::{
    crd::{Phase, Reason, condition_type as ct},
    desired::deployment::{pod_template, revision_hash},
    fixtures::{self, blue_green, converge, converged, order, roll_out},
    keys::{ABORT_ANNOTATION, ACTIVE_ANNOTATION},
    rollout::{Step, checks::Stage},
    status::EventReason,
};

fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap()
}

/// `(verb, kind, name)` of every write, batch by batch.
fn writes(plan: &Plan) -> Vec<Vec<(&'static str, &'static str, String)>> {
    (plan.batches.iter())
        .map(|b| {
            (b.0.iter())
                .map(|w| {
                    let verb = match w {
                        Write::SeedReplicas { .. } => "seed",
                        Write::Apply { .. } => "apply",
                        Write::Scale { .. } => "scale",
                        Write::Delete { .. } => "delete",
                    };
                    (verb, w.kind(), w.name())
                })
                .collect()
        })
        .collect()
}

fn w(verb: &'static str, kind: &'static str, name: &str) -> (&'static str, &'static str, String) {
    (verb, kind, name.to_string())
}

fn reasons(plan: &Plan) -> Vec<EventReason> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn condition(plan: &Plan, type_: &str) -> (String, String) {
    let c = (plan.status.as_ref().expect("a status to write").condition(type_)).expect("condition");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_new_microservice_creates_its_deployment_and_service_in_one_batch() {
    let plan = plan(&Observed::new(Arc::new(order())), now());
    assert_eq!(writes(&plan), [[w("apply", "Deployment", "order"), w("apply", "Service", "order")]]);
    let status = plan.status.as_ref().expect("first status");
    assert_eq!(status.phase, Phase::Progressing, "{status:#?}");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(condition(&plan, ct::SYNCED), ("True".into(), "AllApplied".into()));
    assert!(reasons(&plan).is_empty(), "the Created Event goes with its write");
    let Some(Write::Apply { announce, why, .. }) = plan.writes().next() else {
        panic!("the Deployment apply comes first");
    };
    assert_eq!(announce.as_ref().map(|e| e.reason), Some(EventReason::Created));
    assert_eq!(*why, None, "a new child has no drift, it is created");
    assert_eq!(plan.requeue, Requeue::After(RESYNC));
    assert!(plan.wake_dependents, "a first status wakes the dependents");
}

#[test]
fn a_converged_microservice_plans_nothing() {
    let observed = converged(order(), now());
    let plan = plan(&observed, now());
    assert!(plan.batches.is_empty(), "{:#?}", plan.batches);
    assert_eq!(plan.status, None, "the stored status is current");
    assert!(plan.events.is_empty());
    assert!(!plan.wake_dependents);
    let stored = observed.microservice.status.as_ref().expect("status");
    assert_eq!(stored.phase, Phase::Healthy);
}

#[test]
fn an_image_change_applies_the_deployment_again_and_nothing_else() {
    let mut observed = converged(order(), now());
    let mut ms = observed.microservice.as_ref().clone();
    ms.spec.image = "ghcr.io/acme/order:2.0.0".into();
    ms.metadata.generation = Some(2);
    observed.microservice = Arc::new(ms);
    let plan = plan(&observed, now());
    assert_eq!(writes(&plan), [[w("apply", "Deployment", "order")]]);
    let Some(Write::Apply { why, announce, .. }) = plan.writes().next() else {
        panic!("an apply");
    };
    assert_eq!(*why, Some(crate::drift::Drift::SpecChanged));
    assert_eq!(announce.as_ref().map(|e| e.reason), Some(EventReason::Updated));
    let status = plan.status.as_ref().expect("status");
    assert_eq!(status.phase, Phase::Progressing, "the new generation is not rolled out yet");
    assert_eq!(status.observed_generation, Some(2));
}

#[test]
fn a_hand_scaled_deployment_is_applied_again_with_the_reason() {
    let mut observed = converged(order(), now());
    let mut d = observed.deployment.as_deref().cloned().expect("deployment");
    d.spec.as_mut().expect("spec").replicas = Some(5);
    observed.deployment = Some(Arc::new(d));
    let plan = plan(&observed, now());
    let Some(Write::Apply { why, .. }) = plan.writes().next() else {
        panic!("an apply");
    };
    assert_eq!(*why, Some(crate::drift::Drift::FieldTaken(".spec.replicas".into())));
}

#[test]
fn an_invalid_spec_writes_only_its_status_and_waits_for_a_change() {
    let mut observed = converged(order(), now());
    let mut ms = observed.microservice.as_ref().clone();
    ms.spec.env_from = Some(vec![json!({})]);
    ms.metadata.generation = Some(2);
    observed.microservice = Arc::new(ms);
    let plan = plan(&observed, now());
    assert!(plan.batches.is_empty());
    assert_eq!(condition(&plan, ct::INVALID_SPEC), ("True".into(), "InvalidEnvFrom".into()));
    assert_eq!(
        condition(&plan, ct::AVAILABLE),
        ("True".into(), "MinimumReplicasAvailable".into()),
        "the other conditions stay as they were"
    );
    assert_eq!(plan.status.as_ref().map(|s| s.phase), Some(Phase::Invalid));
    assert_eq!(reasons(&plan), [EventReason::InvalidSpec]);
    assert_eq!(plan.requeue, Requeue::AwaitChange);
}

#[test]
fn an_autoscaled_microservice_seeds_its_replicas_first_and_plans_the_rest_on_the_seeded_spec() {
    let ms = fixtures::from(json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 5}}));
    let plan = plan(&Observed::new(Arc::new(ms)), now());
    assert_eq!(writes(&plan)[0], [w("seed", "MicroService", "")]);
    assert_eq!(plan.batches[0].0[0], Write::SeedReplicas { replicas: 3, resource_version: Some("1".into()) });
    assert_eq!(plan.generation, Some(2), "the seed moves the generation on");
    assert_eq!(plan.status.as_ref().and_then(|s| s.observed_generation), Some(2));
    let deployment = plan.writes().find_map(|w| match w {
        Write::Apply { child: Child::Deployment(d), .. } => Some(d.clone()),
        _ => None,
    });
    assert_eq!(deployment.and_then(|d| d.spec).and_then(|s| s.replicas), Some(3));
    assert!(writes(&plan)[1].contains(&w("apply", "HorizontalPodAutoscaler", "order")));
}

#[test]
fn a_dependency_that_is_not_available_holds_the_deployment_but_not_the_service() {
    let ms = fixtures::from(json!({"dependsOn": [{"name": "inventory"}]}));
    let plan = plan(&Observed::new(Arc::new(ms)), now());
    assert_eq!(writes(&plan), [[w("apply", "Service", "order")]]);
    assert_eq!(condition(&plan, ct::DEPENDENCIES_READY).1, "DependenciesNotReady");
    assert_eq!(plan.requeue, Requeue::After(DEPENDENCY_RECHECK));
}

#[test]
fn a_dependency_cycle_is_named() {
    let mut observed = Observed::new(Arc::new(fixtures::from(json!({"dependsOn": [{"name": "inventory"}]}))));
    let mut inventory = fixtures::from(json!({"dependsOn": [{"name": "order"}]}));
    inventory.metadata.name = Some("inventory".into());
    observed.dependencies.insert("inventory".into(), Arc::new(inventory));
    let plan = plan(&observed, now());
    let status = plan.status.expect("status");
    let message = &status.condition(ct::DEPENDENCIES_READY).expect("c").message;
    assert!(message.contains("order → inventory → order"), "{message}");
}

// === blue-green ===

const BLUE: &str = "ghcr.io/acme/order:1.0.0";
const GREEN: &str = "ghcr.io/acme/order:2.0.0";

fn hash_of(ms: &MicroService) -> String {
    revision_hash(&pod_template(ms, &Inputs::default()))
}

/// A blue-green `order` converged on `BLUE`, then changed to `GREEN` (one reconcile in).
fn rollout_started(extra: serde_json::Value) -> (Observed, String, String) {
    let blue = blue_green(BLUE, extra.clone());
    let mut observed = converged(blue.clone(), now());
    let mut green = blue_green(GREEN, extra);
    green.status = observed.microservice.status.clone();
    green.metadata.generation = Some(2);
    observed.microservice = Arc::new(green.clone());
    (observed, hash_of(&blue), hash_of(&green))
}

#[test]
fn a_new_blue_green_spec_creates_its_revision_while_traffic_stays() {
    let (observed, blue, green) = rollout_started(json!({}));
    let plan = plan(&observed, now());
    assert_eq!(
        writes(&plan),
        [
            vec![w("apply", "Deployment", &format!("order-{green}"))],
            vec![w("apply", "Service", "order-preview")],
        ]
    );
    let status = plan.status.as_ref().expect("status");
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(condition(&plan, ct::PROMOTED).0, "False");
    let bg = status.blue_green.as_ref().expect("blueGreen");
    assert_eq!(bg.active_revision.as_ref().map(|r| r.hash.as_str()), Some(blue.as_str()));
    assert!(reasons(&plan).contains(&EventReason::RolloutStarted));
}

#[test]
fn a_fully_available_new_revision_is_promoted_by_one_service_apply() {
    let (mut observed, blue, green) = rollout_started(json!({}));
    for _ in 0..3 {
        let p = plan(&observed, now());
        if p.writes().any(|w| w.kind() == "Service" && w.name() == "order") {
            break;
        }
        converge(&mut observed, &p);
        roll_out(&mut observed);
    }
    let plan = plan(&observed, now());
    assert_eq!(writes(&plan), [[w("apply", "Service", "order")]]);
    let Some(Write::Apply { child: Child::Service(svc), .. }) = plan.writes().next() else {
        panic!("the active Service");
    };
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(ACTIVE_ANNOTATION), Some(&green));
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    assert_eq!(selector.get(crate::keys::REVISION_LABEL), Some(&green));
    assert_eq!(plan.switch, Some(Switch { from: Some(blue), to: green.clone() }));
    assert!(reasons(&plan).contains(&EventReason::Switched));
    let report = plan.rollout.as_ref().expect("rollout report");
    assert!(report.promotion_seconds.is_some());
    let status = plan.status.as_ref().expect("status");
    let record = status.blue_green.as_ref().and_then(|b| b.last_switch.as_ref()).expect("record");
    assert_eq!(record.active, green, "the status records the switch the Service carries");
}

#[test]
fn an_abort_keeps_traffic_and_scales_nothing_up() {
    let (mut observed, blue, green) = rollout_started(json!({}));
    let p = plan(&observed, now());
    converge(&mut observed, &p);
    let mut ms = observed.microservice.as_ref().clone();
    ms.metadata.annotations = Some([(ABORT_ANNOTATION.to_string(), green.clone())].into());
    observed.microservice = Arc::new(ms);
    let plan = plan(&observed, now());
    assert!(!plan.writes().any(|w| w.kind() == "Service" && w.name() == "order"), "no switch");
    let status = plan.status.as_ref().expect("status");
    assert_eq!(status.phase, Phase::Aborted);
    let bg = status.blue_green.as_ref().expect("bg");
    assert_eq!(bg.active_revision.as_ref().map(|r| r.hash.as_str()), Some(blue.as_str()));
    assert_eq!(bg.aborted.as_ref().map(|a| a.reason.as_str()), Some("Requested"));
    assert_eq!(condition(&plan, ct::PROGRESSING).1, Reason::RolloutAborted.as_str());
    assert!(reasons(&plan).contains(&EventReason::RolloutAborted));
    assert_eq!(plan.rollout.as_ref().map(|r| r.aborted), Some(true));
}

#[test]
fn a_due_pre_promotion_check_is_handed_out_and_its_measurement_folded_into_status() {
    let checks =
        json!({"prePromotionChecks": [{"name": "smoke", "webhook": {"url": "https://hooks.example/ok"}}]});
    let (mut observed, _, green) = rollout_started(checks);
    for _ in 0..2 {
        let p = plan(&observed, now());
        converge(&mut observed, &p);
        roll_out(&mut observed);
    }
    let plan1 = plan(&observed, now());
    assert_eq!(plan1.checks.len(), 1, "{plan1:#?}");
    let due = &plan1.checks[0];
    assert_eq!((due.stage, due.context.revision.as_str()), (Stage::Pre, green.as_str()));
    assert_eq!(due.context.service, "order-preview");
    assert!(due.pods.is_none(), "a webhook needs no pods");
    converge(&mut observed, &plan1);
    // The measurement comes in: folded into status, the switch follows in the same plan.
    observed.measurements = vec![crate::rollout::checks::Measurement {
        stage: Stage::Pre,
        check: "smoke".into(),
        revision: green.clone(),
        outcome: Ok("webhook answered 200".into()),
        at: now(),
    }];
    let plan2 = plan(&observed, now());
    let checks = &plan2.status.as_ref().and_then(|s| s.blue_green.clone()).expect("bg").checks;
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].verdict, crate::crd::CheckVerdict::Passed);
    assert!(plan2.checks.is_empty(), "nothing more to measure");
    assert!(plan2.settled.is_empty(), "kept until the status read back holds it");
    converge(&mut observed, &plan2);
    let plan3 = plan(&observed, now());
    assert_eq!(plan3.settled, observed.measurements, "the status holds it now");
}

#[test]
fn a_blue_green_plan_decides_the_step_in_the_status() {
    let (observed, _, _) = rollout_started(json!({}));
    let plan = plan(&observed, now());
    assert_eq!(condition(&plan, ct::PROGRESSING).1, Step::WaitForPreview.reason().as_str());
}

#[test]
fn an_older_operators_status_entry_makes_the_status_written_once_and_released() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    let mut observed = converged(order(), now());
    let mut ms = observed.microservice.as_ref().clone();
    ms.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(crate::keys::FIELD_MANAGER.into()),
        subresource: Some("status".into()),
        ..ManagedFieldsEntry::default()
    }]);
    observed.microservice = Arc::new(ms);
    let plan = plan(&observed, now());
    assert!(plan.release_legacy_status);
    assert_eq!(plan.status, observed.microservice.status, "the same status, written by the status manager");
    assert!(plan.batches.is_empty());
}

/// `order` autoscaled on CPU, plus the gRPC targets in `grpc` (with what they need: a metrics
/// port, monitoring and the Prometheus address).
fn autoscaled(grpc: serde_json::Value) -> MicroService {
    let mut autoscaling = json!({"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70,
        "prometheusAddress": "http://prometheus.monitoring.svc:9090"});
    for (k, v) in grpc.as_object().expect("object") {
        autoscaling[k] = v.clone();
    }
    fixtures::from(json!({
        "ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc"},
            {"name": "metrics", "port": 9090, "protocol": "http"}
        ],
        "monitoring": {"port": "metrics"},
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": autoscaling
    }))
}

/// Reconciled until nothing changes, with the given CRDs served.
fn converged_with(ms: MicroService, crds: ServedCrds) -> Observed {
    let mut observed = Observed::new(Arc::new(ms));
    observed.crds = crds;
    for _ in 0..8 {
        let plan = plan(&observed, now());
        if plan.batches.is_empty() && plan.status.is_none() {
            return observed;
        }
        converge(&mut observed, &plan);
        roll_out(&mut observed);
    }
    panic!("no convergence after 8 reconciles: {observed:#?}");
}

/// The converged MicroService with a new `spec.autoscaling` (replicas kept), one generation on.
fn with_autoscaling(observed: &Observed, from: &MicroService) -> Observed {
    let mut ms = observed.microservice.as_ref().clone();
    ms.spec.autoscaling = from.spec.autoscaling.clone();
    ms.metadata.generation = ms.metadata.generation.map(|g| g + 1);
    let mut next = observed.clone();
    next.microservice = Arc::new(ms);
    next
}

const KEDA: ServedCrds = ServedCrds { service_monitors: true, prometheus_rules: false, scaled_objects: true };
const NO_KEDA: ServedCrds =
    ServedCrds { service_monitors: true, prometheus_rules: false, scaled_objects: false };

#[test]
fn a_latency_target_with_keda_served_applies_a_scaled_object_and_no_hpa() {
    let plan = plan(
        &Observed {
            crds: KEDA,
            ..Observed::new(Arc::new(autoscaled(json!({"latencyP99Milliseconds": 200}))))
        },
        now(),
    );
    let all: Vec<_> = writes(&plan).concat();
    assert!(all.contains(&w("apply", "ScaledObject", "order")), "{all:?}");
    assert!(!all.iter().any(|(_, kind, _)| *kind == "HorizontalPodAutoscaler"), "{all:?}");
    assert_eq!(condition(&plan, ct::SCALED_OBJECT_READY), ("True".into(), "Applied".into()));
}

#[test]
fn without_keda_a_grpc_target_is_explained_by_a_condition_and_everything_else_reconciles() {
    let observed = Observed {
        crds: NO_KEDA,
        ..Observed::new(Arc::new(autoscaled(json!({"requestsPerSecondPerPod": 30}))))
    };
    let plan = plan(&observed, now());
    let all: Vec<_> = writes(&plan).concat();
    for child in [("apply", "Deployment"), ("apply", "Service"), ("apply", "ServiceMonitor")] {
        assert!(all.contains(&w(child.0, child.1, "order")), "{all:?}");
    }
    assert!(
        !all.iter().any(|(_, kind, _)| ["ScaledObject", "HorizontalPodAutoscaler"].contains(kind)),
        "{all:?}"
    );
    assert_eq!(condition(&plan, ct::SCALED_OBJECT_READY), ("False".into(), "CRDNotInstalled".into()));
    let message =
        &plan.status.as_ref().expect("status").condition(ct::SCALED_OBJECT_READY).expect("c").message;
    assert!(message.contains("scaledobjects.keda.sh"), "{message}");
    assert!(reasons(&plan).contains(&EventReason::ScaledObjectUnavailable));
    assert_eq!(condition(&plan, ct::SYNCED), ("True".into(), "AllApplied".into()));
}

#[test]
fn an_hpa_only_microservice_gets_no_scaled_object_condition() {
    let plan = plan(&Observed { crds: KEDA, ..Observed::new(Arc::new(autoscaled(json!({})))) }, now());
    let all: Vec<_> = writes(&plan).concat();
    assert!(all.contains(&w("apply", "HorizontalPodAutoscaler", "order")), "{all:?}");
    assert!(!all.iter().any(|(_, kind, _)| *kind == "ScaledObject"), "{all:?}");
    assert!(plan.status.as_ref().expect("status").condition(ct::SCALED_OBJECT_READY).is_none());
}

#[test]
fn adding_a_grpc_target_replaces_the_hpa_by_a_scaled_object_in_one_batch() {
    let observed = converged_with(autoscaled(json!({})), KEDA);
    assert!(observed.autoscaler.is_some() && observed.scaled_object.is_none());
    let next = with_autoscaling(&observed, &autoscaled(json!({"latencyP99Milliseconds": 250})));
    let plan = plan(&next, now());
    assert_eq!(
        writes(&plan),
        [[w("delete", "HorizontalPodAutoscaler", "order"), w("apply", "ScaledObject", "order")]]
    );
    let mut after = next;
    converge(&mut after, &plan);
    assert!(after.autoscaler.is_none() && after.scaled_object.is_some());
}

#[test]
fn removing_the_grpc_targets_replaces_the_scaled_object_by_an_hpa_and_says_so() {
    let observed = converged_with(autoscaled(json!({"requestsPerSecondPerPod": 40})), KEDA);
    assert!(observed.autoscaler.is_none() && observed.scaled_object.is_some());
    let mut cpu_only = autoscaled(json!({}));
    cpu_only.spec.autoscaling.as_mut().expect("autoscaling").prometheus_address = None;
    let next = with_autoscaling(&observed, &cpu_only);
    let plan = plan(&next, now());
    assert_eq!(
        writes(&plan),
        [[w("apply", "HorizontalPodAutoscaler", "order"), w("delete", "ScaledObject", "order")]]
    );
    assert_eq!(condition(&plan, ct::SCALED_OBJECT_READY), ("False".into(), "NotRequested".into()));
}

#[test]
fn a_converged_scaled_object_plans_nothing() {
    let observed = converged_with(autoscaled(json!({"latencyP99Milliseconds": 250})), KEDA);
    let plan = plan(&observed, now());
    assert!(plan.batches.is_empty(), "{:#?}", plan.batches);
    assert_eq!(plan.status, None);
}
