//! The blue-green strategy: the observed revisions and Services → the rollout decision
//! ([`crate::rollout::decide`]) → the writes that carry it out, the due checks and the status.
//!
//! Order of writes: the current spec's revision, then the other revisions' sizes, then the active
//! Service (the switch, one apply carrying selector and annotations), then the preview Service (and
//! a plain RollingUpdate Deployment being replaced), then the revisions beyond the history limit.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{PodTemplateSpec, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::ResourceExt;

use super::{Batch, Child, ChildKind, Ctx, RolloutReport, Switch, Workload, Write, controlled_by, ensure};
use crate::{
    crd::{
        BlueGreenSpec, CheckResult, CheckSpec, MicroService, MicroServiceStatus, PortProtocol, RevisionRef,
        StrategyType,
    },
    desired::{self, Inputs, deployment::revision_deployment, service::service_selecting, stamp},
    drift::{Drift, deployment_drift, fields_in_line},
    keys::{
        ACTIVE_ANNOTATION, IMAGE_ANNOTATION, PREVIOUS_ANNOTATION, REPLICAS_ANNOTATION, REVISION_LABEL,
        ROLLED_BACK_ANNOTATION, SELECTOR_LABEL, SPEC_ANNOTATION, SWITCH_REASON_ANNOTATION,
        SWITCHED_AT_ANNOTATION, deployment_name, preview_service_name,
    },
    rollout::{
        Decision, Input, RevisionObs, ServiceObs, Settings,
        checks::{self, CheckContext, Measurement, Stage},
        control::Controls,
        decide, record,
        report::{surface_replica_failure, transitions},
    },
    status::{DeploymentView, RolloutSummary, StatusEvent},
};

/// A check measurement that is due now.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCheck {
    /// Its stage.
    pub stage: Stage,
    /// The check.
    pub spec: CheckSpec,
    /// What it measures against (POSTed to webhooks).
    pub context: CheckContext,
    /// For a gRPC health check: the pods to dial.
    pub pods: Option<PodTarget>,
}

/// The ready pods of a revision, for gRPC health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Their namespace.
    pub namespace: String,
    /// The label selector of the revision's pods.
    pub selector: String,
    /// The port to dial.
    pub port: u16,
}

/// What the rollout planned besides writes.
#[derive(Debug)]
pub(super) struct Rollout {
    /// The decision.
    pub decision: Decision,
    /// What it means for the status.
    pub summary: RolloutSummary,
    /// Measurements to take now.
    pub checks: Vec<DueCheck>,
    /// When to look again (deadlines, delays, the next check measurement).
    pub requeue: Option<Duration>,
    /// The active selector moves.
    pub switch: Option<Switch>,
    /// Measurements the stored status holds, or that no longer apply.
    pub settled: Vec<Measurement>,
}

impl Rollout {
    /// The Events and metric facts of the transition from `previous` to `next`.
    pub fn report(
        &self,
        previous: Option<&MicroServiceStatus>,
        next: &MicroServiceStatus,
        now: Timestamp,
    ) -> (RolloutReport, Vec<StatusEvent>) {
        let t = transitions(previous, next, &self.decision);
        let started = previous
            .and_then(|s| s.blue_green.as_ref())
            .and_then(|b| b.started_at.as_ref())
            .and_then(|t| t.parse::<Timestamp>().ok());
        let promotion_seconds =
            started.filter(|_| t.promoted).map(|s| now.duration_since(s).as_secs_f64().max(0.0));
        let report = RolloutReport {
            phase: next.phase,
            aborted: t.aborted,
            rolled_back: t.rolled_back,
            promotion_seconds,
        };
        (report, t.events)
    }
}

/// Whether the MicroService uses the blue-green strategy.
pub fn is_blue_green(ms: &MicroService) -> bool {
    (ms.spec.strategy.as_ref()).is_some_and(|s| s.type_ == StrategyType::BlueGreen)
}

fn blue_green_spec(ms: &MicroService) -> Option<&BlueGreenSpec> {
    ms.spec.strategy.as_ref().and_then(|s| s.blue_green.as_ref())
}

/// Whether the MicroService has a preview Service (`previewService`, default true).
fn preview_service_on(ms: &MicroService) -> bool {
    blue_green_spec(ms).and_then(|b| b.preview_service).unwrap_or(true)
}

/// The strategy settings, defaults applied.
fn settings(ms: &MicroService) -> Settings {
    let bg = blue_green_spec(ms).cloned().unwrap_or_default();
    let d = Settings::default();
    let or = |v: Option<i32>, default: i64| v.map_or(default, i64::from);
    Settings {
        target: desired::effective_replicas(ms),
        preview_replicas: bg.preview_replica_count,
        auto_promotion: bg.auto_promotion_enabled.unwrap_or(true),
        auto_promotion_seconds: or(bg.auto_promotion_seconds, 0),
        scale_down_delay: or(bg.scale_down_delay_seconds, d.scale_down_delay),
        abort_scale_down_delay: or(bg.abort_scale_down_delay_seconds, d.abort_scale_down_delay),
        progress_deadline: or(bg.progress_deadline_seconds, d.progress_deadline),
        deadline_abort: bg.progress_deadline_abort.unwrap_or(false),
        history_limit: (bg.revision_history_limit.and_then(|n| usize::try_from(n).ok()))
            .unwrap_or(d.history_limit),
    }
}

/// The checks of a stage.
fn stage_checks(ms: &MicroService, stage: Stage) -> &[CheckSpec] {
    let bg = blue_green_spec(ms);
    match stage {
        Stage::Pre => bg.and_then(|b| b.pre_promotion_checks.as_deref()),
        Stage::Post => bg.and_then(|b| b.post_promotion_checks.as_deref()),
    }
    .unwrap_or_default()
}

fn revision_obs(d: &Deployment) -> Option<RevisionObs> {
    let hash = d.labels().get(REVISION_LABEL)?.clone();
    let view = DeploymentView::from_deployment(d);
    let annotations = d.annotations();
    Some(RevisionObs {
        hash,
        image: annotations.get(IMAGE_ANNOTATION).cloned().unwrap_or_default(),
        // NB: the count the operator gave it; `spec.replicas` may have been changed by hand.
        replicas: (annotations.get(REPLICAS_ANNOTATION).and_then(|n| n.parse().ok()))
            .or_else(|| d.spec.as_ref().and_then(|s| s.replicas))
            .unwrap_or(1),
        available: view.available_replicas,
        updated: view.updated_replicas,
        current: view.observed_generation >= view.generation,
        created_at: d.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

fn service_obs(meta: Option<&ObjectMeta>) -> ServiceObs {
    let Some(a) = meta.and_then(|m| m.annotations.as_ref()) else {
        return ServiceObs::default();
    };
    ServiceObs {
        active: a.get(ACTIVE_ANNOTATION).cloned(),
        previous: a.get(PREVIOUS_ANNOTATION).cloned(),
        switched_at: a.get(SWITCHED_AT_ANNOTATION).and_then(|t| t.parse::<Timestamp>().ok()),
        rolled_back: a.get(ROLLED_BACK_ANNOTATION).cloned(),
        switch_reason: a.get(SWITCH_REASON_ANNOTATION).cloned(),
    }
}

/// The active Service: the selector of the active revision and the switch facts, in one object.
fn active_service(ms: &MicroService, decision: &Decision) -> Service {
    let mut annotations = BTreeMap::from([(ACTIVE_ANNOTATION.to_string(), decision.active.clone())]);
    let optional = [
        (PREVIOUS_ANNOTATION, decision.previous.clone()),
        (SWITCHED_AT_ANNOTATION, decision.switched_at.map(|t| t.to_string())),
        (ROLLED_BACK_ANNOTATION, decision.rolled_back.clone()),
        (SWITCH_REASON_ANNOTATION, decision.switch_reason.clone()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            annotations.insert(k.into(), v);
        }
    }
    stamp(service_selecting(ms, Some((&ms.name_any(), &decision.active)), annotations))
}

/// The revisions as observed.
struct Seen<'a> {
    /// The current spec's revision and its pod template.
    hash: String,
    template: PodTemplateSpec,
    /// Every revision Deployment of the MicroService, by hash.
    by_hash: BTreeMap<String, &'a Deployment>,
    obs: Vec<RevisionObs>,
    /// The switch facts decided from (see `rollout::record`).
    service: ServiceObs,
}

fn see<'a>(ctx: &Ctx<'a>) -> Seen<'a> {
    let (ms, observed) = (ctx.ms, ctx.observed);
    let template = desired::deployment::pod_template(ms, ctx.inputs);
    let hash = desired::deployment::revision_hash(&template);
    let name = ms.name_any();
    let by_hash: BTreeMap<String, &'a Deployment> = (observed.revisions.iter())
        .filter(|d| d.labels().get(SELECTOR_LABEL) == Some(&name) && controlled_by(d.as_ref(), ms))
        .filter_map(|d| Some((d.labels().get(REVISION_LABEL)?.clone(), d.as_ref())))
        .collect();
    let obs: Vec<RevisionObs> = by_hash.values().filter_map(|d| revision_obs(d)).collect();
    let recorded =
        (ms.status.as_ref()).and_then(|s| s.blue_green.as_ref()).and_then(|s| s.last_switch.as_ref());
    // NB: the status, not the Service, records what was promoted (see `rollout::record`).
    let service =
        record::effective(service_obs(observed.service.as_deref().map(|s| &s.metadata)), recorded, &obs);
    Seen { hash, template, by_hash, obs, service }
}

/// The check results of the current revision, with the measurements taken since the last status;
/// and the measurements the stored status already holds or that no longer apply (settled).
fn check_results(ctx: &Ctx<'_>, hash: &str) -> (Vec<CheckResult>, Vec<Measurement>) {
    let ms = ctx.ms;
    let stored = (ms.status.as_ref())
        .and_then(|s| s.blue_green.as_ref())
        .map(|s| s.checks.as_slice())
        .unwrap_or_default();
    let specs: Vec<(Stage, &CheckSpec)> = [Stage::Pre, Stage::Post]
        .into_iter()
        .flat_map(|stage| stage_checks(ms, stage).iter().map(move |s| (stage, s)))
        .collect();
    let settled = (ctx.observed.measurements.iter())
        .filter(|m| {
            let known = specs.iter().any(|(stage, spec)| *stage == m.stage && spec.name == m.check);
            m.revision != hash || !known || checks::recorded(stored, m)
        })
        .cloned()
        .collect();
    (checks::fold(stored, &ctx.observed.measurements, &specs, hash), settled)
}

pub(super) fn plan(ctx: &Ctx<'_>) -> Workload {
    let ms = ctx.ms;
    let seen = see(ctx);
    let (results, settled) = check_results(ctx, &seen.hash);
    let held = !ctx.deps.ready() && !seen.by_hash.contains_key(&seen.hash);
    let controls = Controls::read(ms.annotations(), ms.spec.paused.unwrap_or(false));
    let status = ms.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let mut decision = decide(&Input {
        desired: RevisionRef { hash: seen.hash.clone(), image: ms.spec.image.clone() },
        revisions: &seen.obs,
        service: seen.service.clone(),
        status,
        controls: &controls,
        settings: settings(ms),
        pre: checks::stage_state(stage_checks(ms, Stage::Pre), &results, Stage::Pre, &seen.hash),
        post: checks::stage_state(stage_checks(ms, Stage::Post), &results, Stage::Post, &seen.hash),
        held,
        now: ctx.now,
    });
    surface_failures(&seen, &mut decision);
    let mut batches = vec![
        Batch(current_revision(ctx, &seen, &decision).into_iter().collect()),
        Batch(other_revisions(ctx, &seen, &decision)),
    ];
    batches.extend(services(ctx, &seen, &mut decision));
    batches.push(Batch(
        (decision.delete.iter())
            .map(|h| Write::Delete { kind: ChildKind::Deployment, name: deployment_name(&ms.name_any(), h) })
            .collect(),
    ));
    let (checks, check_requeue) = due_checks(ctx, &seen, &decision, &results);
    let view = seen.by_hash.get(&decision.active).map(|d| DeploymentView::from_deployment(d));
    let mut rollout = summarize(ctx, &seen, decision, results, checks, check_requeue);
    rollout.settled = settled;
    Workload { batches, view, held, rollout: Some(rollout) }
}

/// A revision that should run pods and reports `ReplicaFailure` makes the rollout Degraded: the
/// current spec's first, then the active one.
fn surface_failures(seen: &Seen<'_>, decision: &mut Decision) {
    let views: Vec<(String, DeploymentView)> = [&seen.hash, &decision.active]
        .into_iter()
        .filter(|h| decision.replicas.get(*h).is_some_and(|n| *n > 0))
        .filter_map(|h| Some((h.clone(), DeploymentView::from_deployment(seen.by_hash.get(h)?))))
        .collect();
    let views: Vec<(&str, &DeploymentView)> = views.iter().map(|(h, v)| (h.as_str(), v)).collect();
    surface_replica_failure(decision, &views);
}

/// The current spec's revision, held while dependencies are not ready (unless it already exists);
/// applied when it is missing, another size, or drifted from what the operator applied.
fn current_revision(ctx: &Ctx<'_>, seen: &Seen<'_>, decision: &Decision) -> Option<Write> {
    let n = decision.replicas.get(&seen.hash).copied()?;
    let existing = seen.by_hash.get(&seen.hash).copied();
    if !ctx.deps.ready() && existing.is_none() {
        return None;
    }
    let want = stamp(revision_deployment(ctx.ms, ctx.inputs, &seen.template, &seen.hash, n));
    let drift = existing.map(|have| deployment_drift(have, &want));
    if matches!(drift, Some(None)) {
        return None;
    }
    Some(Write::Apply { child: Child::Deployment(Box::new(want)), why: drift.flatten(), announce: None })
}

/// Other revisions keep their templates and get the size the decision gives them, by a scale
/// patch. A revision that keeps pods and was edited by hand (its template no longer owned by the
/// operator) is applied again in full, rebuilt from the spec it recorded.
fn other_revisions(ctx: &Ctx<'_>, seen: &Seen<'_>, decision: &Decision) -> Vec<Write> {
    let mut writes = Vec::new();
    for (h, n) in &decision.replicas {
        let Some(dep) = seen.by_hash.get(h).filter(|_| *h != seen.hash) else {
            continue;
        };
        if let Some((want, why)) = rebuilt_if_drifted(ctx.ms, ctx.inputs, dep, h, *n) {
            writes.push(Write::Apply {
                child: Child::Deployment(Box::new(stamp(want))),
                why: Some(why),
                announce: None,
            });
            continue;
        }
        let have = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let recorded = dep.annotations().get(REPLICAS_ANNOTATION);
        if have != *n || recorded != Some(&n.to_string()) {
            writes.push(Write::Scale { name: dep.name_any(), replicas: *n });
        }
    }
    writes
}

/// An older revision that keeps pods, rebuilt from its recorded spec at `replicas`, when someone
/// else changed or removed a field the operator applied to it. Idle revisions are left alone: they
/// are applied in full when they are adopted again.
fn rebuilt_if_drifted(
    ms: &MicroService,
    inputs: &Inputs,
    observed: &Deployment,
    hash: &str,
    replicas: i32,
) -> Option<(Deployment, Drift)> {
    if replicas == 0 {
        return None;
    }
    let recorded = observed.annotations().get(SPEC_ANNOTATION)?;
    let want = desired::deployment::rebuild_revision(ms, inputs, recorded, hash, replicas)?;
    let why = fields_in_line(&observed.metadata, &want).err()?;
    Some((want, why))
}

/// The active Service (selector and switch annotations in one apply), then the preview Service.
/// While a plain (RollingUpdate) Deployment still serves and the first revision is not available,
/// the active Service keeps selecting it; the plain Deployment goes once the revision serves.
/// Records the switch facts the Service carries in `status.blueGreen.lastSwitch`.
fn services(ctx: &Ctx<'_>, seen: &Seen<'_>, decision: &mut Decision) -> [Batch; 2] {
    let (ms, observed) = (ctx.ms, ctx.observed);
    let legacy = (observed.deployment.as_deref()).filter(|d| controlled_by(*d, ms));
    let first_ready = (seen.obs.iter())
        .find(|r| r.hash == decision.active)
        .is_some_and(|r| r.available_at(r.replicas.max(1)));
    let mut active = Vec::new();
    if seen.service.active.is_some() || legacy.is_none() || first_ready {
        let svc = active_service(ms, decision);
        active.extend(ensure(
            ms,
            observed.service.as_deref(),
            Some(&svc),
            Child::Service,
            ChildKind::Service,
        ));
        decision.status.last_switch = Some(record::written_by(decision));
    } else {
        decision.status.last_switch =
            (ms.status.as_ref()).and_then(|s| s.blue_green.as_ref()).and_then(|s| s.last_switch.clone());
    }
    let mut after = Vec::new();
    if let Some(legacy) = legacy.filter(|_| seen.service.active.is_some() && first_ready) {
        after.push(Write::Delete { kind: ChildKind::Deployment, name: legacy.name_any() });
    }
    let preview_name = preview_service_name(&ms.name_any());
    let preview = preview_service_on(ms)
        .then(|| stamp(service_selecting(ms, Some((&preview_name, &decision.preview)), BTreeMap::new())));
    after.extend(ensure(
        ms,
        observed.preview_service.as_deref(),
        preview.as_ref(),
        Child::Service,
        ChildKind::Service,
    ));
    [Batch(active), Batch(after)]
}

/// The measurements due now in the stage the decision runs, and when the next one is due.
fn due_checks(
    ctx: &Ctx<'_>,
    seen: &Seen<'_>,
    decision: &Decision,
    results: &[CheckResult],
) -> (Vec<DueCheck>, Option<Duration>) {
    let Some(stage) = decision.run_checks else {
        return (Vec::new(), None);
    };
    let (mut due, mut requeue) = (Vec::new(), None::<Duration>);
    for spec in stage_checks(ctx.ms, stage) {
        let previous = checks::result_for(results, stage, &spec.name, &seen.hash);
        match checks::due_in(spec, previous, ctx.now) {
            None => {}
            Some(wait) if wait.is_zero() => due.push(due_check(ctx, seen, decision, stage, spec)),
            Some(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
        }
    }
    (due, requeue)
}

fn due_check(
    ctx: &Ctx<'_>,
    seen: &Seen<'_>,
    decision: &Decision,
    stage: Stage,
    spec: &CheckSpec,
) -> DueCheck {
    let ms = ctx.ms;
    let (name, namespace) = (ms.name_any(), ms.namespace().unwrap_or_default());
    let service = match stage {
        Stage::Pre if preview_service_on(ms) => preview_service_name(&name),
        Stage::Pre => String::new(),
        Stage::Post => name.clone(),
    };
    let pods = spec.grpc_health.as_ref().map(|g| {
        let port = (ms.spec.ports.iter())
            .find(|p| match &g.port {
                Some(port) => p.name == *port,
                None => p.protocol == PortProtocol::Grpc,
            })
            .or_else(|| ms.spec.ports.first())
            .and_then(|p| u16::try_from(p.port).ok())
            .unwrap_or(0);
        PodTarget {
            namespace: namespace.clone(),
            selector: format!("{SELECTOR_LABEL}={name},{REVISION_LABEL}={}", seen.hash),
            port,
        }
    });
    DueCheck {
        stage,
        spec: spec.clone(),
        context: CheckContext {
            namespace,
            microservice: name,
            stage: stage.as_str().into(),
            check: spec.name.clone(),
            revision: seen.hash.clone(),
            image: ms.spec.image.clone(),
            active_revision: decision.active.clone(),
            service,
        },
        pods,
    }
}

/// What the decision means for the status, the log and the requeue.
fn summarize(
    ctx: &Ctx<'_>,
    seen: &Seen<'_>,
    decision: Decision,
    results: Vec<CheckResult>,
    checks: Vec<DueCheck>,
    check_requeue: Option<Duration>,
) -> Rollout {
    let name = ctx.ms.name_any();
    let mut blue_green = decision.status.clone();
    blue_green.checks = results;
    let summary = RolloutSummary {
        phase: decision.phase,
        message: decision.message.clone(),
        step: decision.step.reason(),
        progressing: decision.progressing,
        degraded: decision.degraded.clone(),
        promoted: decision.promoted,
        active: decision.active.clone(),
        selector: format!("{SELECTOR_LABEL}={name},{REVISION_LABEL}={}", decision.active),
        blue_green,
    };
    let switch = (seen.service.active.as_deref() != Some(decision.active.as_str()))
        .then(|| Switch { from: seen.service.active.clone(), to: decision.active.clone() });
    let requeue = match (decision.requeue, check_requeue) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Rollout { decision, summary, checks, requeue, switch, settled: Vec::new() }
}
