//! The RollingUpdate strategy: one Deployment named after the MicroService, and its Service.

use kube::ResourceExt;

use super::{Batch, Child, ChildKind, Ctx, Workload, Write, controlled_by, ensure};
use crate::{
    desired::{self, Desired},
    drift::{Drift, deployment_drift},
    keys::{REVISION_LABEL, SELECTOR_LABEL, preview_service_name},
    status::{DeploymentView, EventReason, StatusEvent},
};

/// The Deployment (unless it is current, or a change of it waits for `dependsOn`) and the Service
/// in one batch; after them, when the MicroService left the blue-green strategy and the plain
/// Deployment is available, the revision Deployments and the preview Service go.
pub(super) fn plan(ctx: &Ctx<'_>, desired: &Desired) -> Workload {
    let (ms, observed) = (ctx.ms, ctx.observed);
    let have = observed.deployment.as_deref();
    // NB: hand edits (made while the operator runs or while it is down) are read from the object:
    // a field the operator applied and no longer owns, or another replica count.
    let drift = have.map(|d| deployment_drift(d, &desired.deployment));
    let current = matches!(drift, Some(None));
    let mut view = have.map(DeploymentView::from_deployment);
    let mut first = Vec::new();
    let held = !current && !ctx.deps.ready();
    if !current && ctx.deps.ready() {
        let why = drift.flatten();
        if why.as_ref().is_none_or(Drift::changes_spec) {
            // NB: the status describes the Deployment as the API server will answer the apply: at
            // the next generation, not yet observed by its controller.
            view = Some(DeploymentView::after_spec_write(view.as_ref()));
        }
        first.push(Write::Apply {
            child: Child::Deployment(Box::new(desired.deployment.clone())),
            announce: Some(announcement(ctx, have.is_none())),
            why,
        });
    }
    first.extend(ensure(
        ms,
        observed.service.as_deref(),
        Some(&desired.service),
        Child::Service,
        ChildKind::Service,
    ));
    let available = view.as_ref().is_some_and(|v| v.is_true("Available"));
    let leaving = if available { leave_blue_green(ctx) } else { Vec::new() };
    Workload { batches: vec![Batch(first), Batch(leaving)], view, held, rollout: None }
}

/// The Normal Event of a Deployment the operator creates or updates.
fn announcement(ctx: &Ctx<'_>, created: bool) -> StatusEvent {
    let (name, image) = (ctx.ms.name_any(), &ctx.ms.spec.image);
    if created {
        let note = format!("created Deployment {name} running {image}");
        StatusEvent::normal(EventReason::Created, note)
    } else {
        let replicas = desired::effective_replicas(ctx.ms);
        let note = format!("updated Deployment {name}: image {image}, {replicas} replicas");
        StatusEvent::normal(EventReason::Updated, note)
    }
}

/// Leaving the blue-green strategy: once the plain Deployment is available, the revision
/// Deployments and the preview Service go.
fn leave_blue_green(ctx: &Ctx<'_>) -> Vec<Write> {
    let (ms, observed) = (ctx.ms, ctx.observed);
    let name = ms.name_any();
    let mut writes: Vec<Write> = (observed.revisions.iter())
        .filter(|d| {
            d.labels().get(SELECTOR_LABEL) == Some(&name)
                && d.labels().contains_key(REVISION_LABEL)
                && controlled_by(d.as_ref(), ms)
        })
        .map(|d| Write::Delete { kind: ChildKind::Deployment, name: d.name_any() })
        .collect();
    let preview = observed.preview_service.as_deref();
    debug_assert!(preview.is_none_or(|p| p.name_any() == preview_service_name(&name)));
    writes.extend(ensure(
        ms,
        preview,
        None::<&k8s_openapi::api::core::v1::Service>,
        Child::Service,
        ChildKind::Service,
    ));
    writes
}
