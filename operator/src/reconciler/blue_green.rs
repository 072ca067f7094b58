//! The I/O half of blue-green rollouts: gathers the observed state for [`crate::rollout::decide`],
//! then makes the revision Deployments and the Services match its plan, and takes due check
//! measurements. Order of writes: the new revision first, then scaling, then the active Service (the
//! switch, one apply carrying selector and annotations), then the preview Service, then deletions.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use tracing::info;

use super::{Context, Result, apply, as_spec_error, controlled_by, delete, ensure_child, lookup};
use crate::{
    FIELD_MANAGER,
    crd::{CheckResult, CheckSpec, MicroService, PortProtocol, StrategyType},
    desired::{
        self, Inputs, deployment::revision_deployment, labels, service::service_selecting,
        spec_hash_of, stamp,
    },
    rollout::{
        ACTIVE_ANNOTATION, IMAGE_ANNOTATION, Input, PREVIOUS_ANNOTATION, Plan, REVISION_LABEL,
        ROLLED_BACK_ANNOTATION, RevisionObs, SWITCHED_AT_ANNOTATION, ServiceObs, Settings,
        checks::{self, Stage},
        control::Controls,
        decide, deployment_name, preview_service_name,
        runner::{self, CheckContext},
    },
    status::DeploymentView,
    validation::SpecError,
};

/// Annotation on the active Service: why the selector last switched.
pub const SWITCH_REASON_ANNOTATION: &str = "ferry.dev/switch-reason";

/// Whether the MicroService uses the blue-green strategy.
pub fn is_blue_green(ms: &MicroService) -> bool {
    ms.spec
        .strategy
        .as_ref()
        .is_some_and(|s| s.type_ == StrategyType::BlueGreen)
}

/// What the blue-green reconcile produced, for status.
pub struct Outcome {
    /// The plan that was carried out.
    pub plan: Plan,
    /// Check results to keep in status.
    pub checks: Vec<CheckResult>,
    /// The active revision's Deployment.
    pub active_view: Option<DeploymentView>,
    /// Reconcile again after this long.
    pub requeue: Option<Duration>,
    /// The current spec's revision waits for `dependsOn`.
    pub held: bool,
}

/// Either the outcome, or a spec problem the API server reported.
pub enum BlueGreenResult {
    /// Done.
    Done(Box<Outcome>),
    /// The apply was rejected: park behind InvalidSpec.
    Invalid(SpecError),
}

fn settings(ms: &MicroService) -> Settings {
    let bg = ms
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.clone())
        .unwrap_or_default();
    let d = Settings::default();
    Settings {
        target: desired::effective_replicas(ms),
        preview_replicas: bg.preview_replica_count,
        auto_promotion: bg.auto_promotion_enabled.unwrap_or(true),
        auto_promotion_seconds: bg.auto_promotion_seconds.map_or(0, i64::from),
        scale_down_delay: bg
            .scale_down_delay_seconds
            .map_or(d.scale_down_delay, i64::from),
        abort_scale_down_delay: bg
            .abort_scale_down_delay_seconds
            .map_or(d.abort_scale_down_delay, i64::from),
        progress_deadline: bg
            .progress_deadline_seconds
            .map_or(d.progress_deadline, i64::from),
        deadline_abort: bg.progress_deadline_abort.unwrap_or(false),
        history_limit: bg
            .revision_history_limit
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(d.history_limit),
    }
}

fn stage_checks(ms: &MicroService, stage: Stage) -> Vec<CheckSpec> {
    let bg = ms
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.as_ref());
    match stage {
        Stage::Pre => bg.and_then(|b| b.pre_promotion_checks.clone()),
        Stage::Post => bg.and_then(|b| b.post_promotion_checks.clone()),
    }
    .unwrap_or_default()
}

fn revision_obs(d: &Deployment) -> Option<RevisionObs> {
    let hash = d.labels().get(REVISION_LABEL)?.clone();
    let view = DeploymentView::from_deployment(d);
    Some(RevisionObs {
        hash,
        image: d
            .annotations()
            .get(IMAGE_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        available: view.available_replicas,
        updated: view.updated_replicas,
        current: view.observed_generation >= view.generation,
        created_at: d.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

/// The revision Deployments of `ms` in the cache.
pub fn revisions(ctx: &Context, ms: &MicroService, ns: &str) -> Vec<Arc<Deployment>> {
    let name = ms.name_any();
    ctx.stores
        .deployments
        .state()
        .into_iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(ns)
                && d.labels().get(labels::SELECTOR_LABEL) == Some(&name)
                && d.labels().contains_key(REVISION_LABEL)
                && controlled_by(d.as_ref(), ms)
        })
        .collect()
}

fn service_obs(svc: Option<&Service>) -> ServiceObs {
    let Some(a) = svc.and_then(|s| s.metadata.annotations.as_ref()) else {
        return ServiceObs::default();
    };
    ServiceObs {
        active: a.get(ACTIVE_ANNOTATION).cloned(),
        previous: a.get(PREVIOUS_ANNOTATION).cloned(),
        switched_at: a
            .get(SWITCHED_AT_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok()),
        rolled_back: a.get(ROLLED_BACK_ANNOTATION).cloned(),
        switch_reason: a.get(SWITCH_REASON_ANNOTATION).cloned(),
    }
}

fn active_service(ms: &MicroService, plan: &Plan) -> Service {
    let mut annotations = BTreeMap::from([(ACTIVE_ANNOTATION.to_string(), plan.active.clone())]);
    let optional = [
        (PREVIOUS_ANNOTATION, plan.previous.clone()),
        (
            SWITCHED_AT_ANNOTATION,
            plan.switched_at.map(|t| t.to_string()),
        ),
        (ROLLED_BACK_ANNOTATION, plan.rolled_back.clone()),
        (SWITCH_REASON_ANNOTATION, plan.switch_reason.clone()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            annotations.insert(k.into(), v);
        }
    }
    stamp(service_selecting(
        ms,
        Some((&ms.name_any(), &plan.active)),
        annotations,
    ))
}

/// Reconciles the revisions and Services of a blue-green MicroService.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    ctx: &Context,
    ms: &MicroService,
    ns: &str,
    name: &str,
    inputs: &Inputs,
    dependencies_ready: bool,
) -> Result<BlueGreenResult> {
    let client = ctx.client.clone();
    let template = desired::deployment::pod_template(ms, inputs);
    let hash = desired::deployment::revision_hash(&template);
    let observed = revisions(ctx, ms, ns);
    let obs: Vec<RevisionObs> = observed.iter().filter_map(|d| revision_obs(d)).collect();
    let by_hash: BTreeMap<String, Arc<Deployment>> = observed
        .iter()
        .filter_map(|d| Some((d.labels().get(REVISION_LABEL)?.clone(), d.clone())))
        .collect();

    // NB: the Services are cached metadata-only; the rollout annotations are metadata.
    let svc_meta = lookup(&ctx.stores.services, ns, name);
    let svc_full = svc_meta.as_ref().map(|m| Service {
        metadata: m.metadata.clone(),
        ..Service::default()
    });
    let service = service_obs(svc_full.as_ref());

    let status = ms.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let results: Vec<CheckResult> = status.map(|s| s.checks.clone()).unwrap_or_default();
    let pre_specs = stage_checks(ms, Stage::Pre);
    let post_specs = stage_checks(ms, Stage::Post);
    let held = !dependencies_ready && !by_hash.contains_key(&hash);
    let controls = Controls::read(ms.annotations(), ms.spec.paused.unwrap_or(false));
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
    let input = Input {
        desired: crate::crd::RevisionRef {
            hash: hash.clone(),
            image: ms.spec.image.clone(),
        },
        revisions: &obs,
        service: service.clone(),
        status,
        controls: &controls,
        settings: settings(ms),
        pre: checks::stage_state(&pre_specs, &results, Stage::Pre, &hash),
        post: checks::stage_state(&post_specs, &results, Stage::Post, &hash),
        held,
        now,
    };
    let plan = decide(&input);
    if service.active.as_deref() != Some(plan.active.as_str()) {
        info!(microservice = name, from = ?service.active, to = %plan.active, step = ?plan.step, "switching the active Service");
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    // 1. The desired revision (held while dependencies are not ready, unless it already exists).
    let want = plan.replicas.get(&hash).copied();
    if let Some(n) = want
        && (dependencies_ready || by_hash.contains_key(&hash))
    {
        let desired_deployment = stamp(revision_deployment(ms, inputs, &template, &hash, n));
        let current = by_hash
            .get(&hash)
            .is_some_and(|d| spec_hash_of(d.as_ref()) == spec_hash_of(&desired_deployment));
        if !current {
            match apply(ctx, &deployments, &desired_deployment, "Deployment").await {
                Ok(_) => {}
                Err(err) => match as_spec_error(&err) {
                    Some(spec_err) => return Ok(BlueGreenResult::Invalid(spec_err)),
                    None => return Err(err),
                },
            }
        }
    }
    // 2. Other revisions: scaled by a merge patch (their templates are not rebuilt). The spec-hash
    // annotation is dropped so that re-adopting the revision later re-applies it in full.
    for (h, n) in &plan.replicas {
        if *h == hash {
            continue;
        }
        let Some(d) = by_hash.get(h) else { continue };
        let have = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if have != *n {
            ctx.ensure_leader()?;
            ctx.metrics.wrote("Deployment", "scale");
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            deployments
                .patch(
                    &d.name_any(),
                    &params,
                    &Patch::Merge(json!({
                        "metadata": {"annotations": {desired::SPEC_HASH_ANNOTATION: null}},
                        "spec": {"replicas": n}
                    })),
                )
                .await?;
        }
    }
    // 3. The active Service: selector and rollout annotations in one apply. While a plain
    // (RollingUpdate) Deployment still serves and the first revision is not available, the Service
    // keeps selecting it.
    let legacy =
        lookup(&ctx.stores.deployments, ns, name).filter(|d| controlled_by(d.as_ref(), ms));
    let first_ready = obs
        .iter()
        .find(|r| r.hash == plan.active)
        .is_some_and(|r| r.available_at(r.replicas.max(1)));
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    if service.active.is_some() || legacy.is_none() || first_ready {
        let svc = active_service(ms, &plan);
        if let Err(err) = ensure_child(ctx, ms, &services, svc_meta, Some(&svc), "Service").await {
            return match as_spec_error(&err) {
                Some(spec_err) => Ok(BlueGreenResult::Invalid(spec_err)),
                None => Err(err),
            };
        }
    }
    if let Some(legacy) = legacy.filter(|_| service.active.is_some() && first_ready) {
        delete(ctx, &deployments, &legacy.name_any(), "Deployment").await?;
    }
    // 4. The preview Service.
    let preview_name = preview_service_name(name);
    let preview_on = ms
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .and_then(|b| b.preview_service)
        .unwrap_or(true);
    let preview = preview_on.then(|| {
        stamp(service_selecting(
            ms,
            Some((&preview_name, &plan.preview)),
            BTreeMap::new(),
        ))
    });
    ensure_child(
        ctx,
        ms,
        &services,
        lookup(&ctx.stores.services, ns, &preview_name),
        preview.as_ref(),
        "Service",
    )
    .await?;
    // 5. Revisions beyond the history limit.
    for h in &plan.delete {
        delete(ctx, &deployments, &deployment_name(name, h), "Deployment").await?;
    }

    // 6. Checks: take the measurements that are due.
    let mut kept: Vec<CheckResult> = results.into_iter().filter(|r| r.revision == hash).collect();
    let mut requeue = plan.requeue;
    if let Some(stage) = plan.run_checks {
        let specs = match stage {
            Stage::Pre => &pre_specs,
            Stage::Post => &post_specs,
        };
        let pods = if specs.iter().any(|s| s.grpc_health.is_some()) {
            pod_addresses(ctx, ms, ns, &hash, specs).await?
        } else {
            BTreeMap::new()
        };
        for spec in specs {
            let previous = checks::result_for(&kept, stage, &spec.name, &hash).cloned();
            let Some(due) = checks::due_in(spec, previous.as_ref(), now) else {
                continue;
            };
            if !due.is_zero() {
                requeue = Some(requeue.map_or(due, |r| r.min(due)));
                continue;
            }
            let check_ctx = CheckContext {
                namespace: ns.into(),
                microservice: name.into(),
                stage: stage.as_str().into(),
                check: spec.name.clone(),
                revision: hash.clone(),
                image: ms.spec.image.clone(),
                active_revision: plan.active.clone(),
                service: match stage {
                    Stage::Pre => preview_name.clone(),
                    Stage::Post => name.to_string(),
                },
                pods: pods.get(&spec.name).cloned().unwrap_or_default(),
            };
            let outcome = runner::measure(spec, &check_ctx)
                .await
                .map_err(|e| e.to_string());
            let result = checks::record(spec, previous.as_ref(), stage, &hash, outcome, now);
            let interval = checks::due_in(spec, Some(&result), now);
            if let Some(i) = interval {
                requeue = Some(requeue.map_or(i, |r| r.min(i)));
            }
            kept.retain(|r| !(r.stage == stage.as_str() && r.name == spec.name));
            kept.push(result);
        }
    }

    let active_view = by_hash
        .get(&plan.active)
        .map(|d| DeploymentView::from_deployment(d));
    Ok(BlueGreenResult::Done(Box::new(Outcome {
        plan,
        checks: kept,
        active_view,
        requeue,
        held,
    })))
}

/// Ready pod addresses of revision `hash`, per gRPC health check (each may name its own port).
async fn pod_addresses(
    ctx: &Context,
    ms: &MicroService,
    ns: &str,
    hash: &str,
    specs: &[CheckSpec],
) -> Result<BTreeMap<String, Vec<SocketAddr>>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!(
        "{}={},{REVISION_LABEL}={hash}",
        labels::SELECTOR_LABEL,
        ms.name_any()
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let ready_ips: Vec<std::net::IpAddr> = list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .collect();
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some(g) = &spec.grpc_health else { continue };
        let port = ms
            .spec
            .ports
            .iter()
            .find(|p| match &g.port {
                Some(name) => p.name == *name,
                None => p.protocol == PortProtocol::Grpc,
            })
            .or_else(|| ms.spec.ports.first())
            .and_then(|p| u16::try_from(p.port).ok())
            .unwrap_or(0);
        out.insert(
            spec.name.clone(),
            ready_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        );
    }
    Ok(out)
}
