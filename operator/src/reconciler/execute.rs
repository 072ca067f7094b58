//! Carries a [`Plan`] out: the batches of writes in order (the writes of one batch concurrently),
//! then the status (once, only when it changed), the Events, the dependents and the rollout
//! metrics. Every write first checks that this process may write (it leads).

use std::fmt::Debug;

use futures::future::join_all;
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        events::{Event as KubeEvent, EventType},
        reflector::ObjectRef,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::{debug, info, warn};

use ferry_operator_core::{
    crd::{MicroService, MicroServiceStatus},
    keys::{
        FIELD_MANAGER, REPLICAS_ANNOTATION, SCALE_FIELD_MANAGER, SPEC_HASH_ANNOTATION, STATUS_FIELD_MANAGER,
    },
    plan::{Child, ChildKind, Plan, Requeue, Write},
    status::{self, ChildFailure, EventKind, StatusEvent},
};

use super::{Context, Error, Result};

/// What became of a plan.
pub(super) enum Carried {
    /// Everything was written; reconcile again as the plan says.
    Done(Requeue),
    /// The API server refused a child as invalid: the status says so; wait for a spec change.
    Parked,
}

/// Carries `plan` out for `ms`.
pub(super) async fn carry_out(ctx: &Context, ms: &MicroService, plan: &Plan) -> Result<Carried> {
    if let Some(switch) = &plan.switch {
        info!(microservice = %ms.name_any(), from = ?switch.from, to = %switch.to, "switching the active Service");
    }
    for batch in &plan.batches {
        let outcomes = join_all(batch.0.iter().map(|w| write(ctx, ms, w))).await;
        if let Some(err) = outcomes.into_iter().find_map(Result::err) {
            return match err {
                Error::ChildWriteError(failure) => report_failed_write(ctx, ms, plan, failure).await,
                other => Err(other),
            };
        }
    }
    if let Some(next) = &plan.status {
        write_status(ctx, ms, next).await?;
        if plan.release_legacy_status {
            release_legacy_status(ctx, ms).await?;
        }
    }
    for event in &plan.events {
        publish(ctx, ms, event).await;
    }
    if plan.wake_dependents {
        wake_dependents(ctx, ms);
    }
    if let Some(rollout) = &plan.rollout {
        let (ns, name) = (ms.namespace().unwrap_or_default(), ms.name_any());
        ctx.metrics.rollout_transition(&ns, &name, rollout);
    }
    Ok(Carried::Done(plan.requeue))
}

/// A failed child write goes on the status (`Synced=False` naming the child with the API server's
/// message, and one Warning Event): a 422 then waits for a spec change like any invalid spec;
/// anything else is retried with the per-object backoff.
async fn report_failed_write(
    ctx: &Context,
    ms: &MicroService,
    plan: &Plan,
    failure: Box<ChildFailure>,
) -> Result<Carried> {
    warn!(microservice = %ms.name_any(), failure = %failure.describe(), "a child write failed");
    let previous = ms.status.as_ref();
    let next = status::after_failed_write(previous, plan.generation, &failure, &status::now());
    if previous != Some(&next) {
        write_status(ctx, ms, &next).await?;
    }
    for event in status::events(previous, &next) {
        publish(ctx, ms, &event).await;
    }
    if failure.is_invalid() { Ok(Carried::Parked) } else { Err(Error::ChildWriteError(failure)) }
}

/// One write.
async fn write(ctx: &Context, ms: &MicroService, write: &Write) -> Result<()> {
    ctx.ensure_leader()?;
    let ns = ms.namespace().unwrap_or_default();
    match write {
        Write::SeedReplicas { replicas, resource_version } => {
            seed_replicas(ctx, ms, *replicas, resource_version.as_deref()).await
        }
        Write::Apply { child, why, announce } => {
            if let Some(why) = why {
                debug!(kind = child.kind().as_str(), name = %child.name(), %why, "applying again");
            }
            apply_child(ctx, &ns, child).await?;
            if let Some(event) = announce {
                publish(ctx, ms, event).await;
            }
            Ok(())
        }
        Write::Scale { name, replicas } => scale(ctx, &ns, name, *replicas).await,
        Write::Delete { kind, name } => delete_child(ctx, &ns, *kind, name).await,
    }
}

/// With autoscaling and no replica count yet, `spec.replicas = minReplicas`, as a merge patch
/// carrying the observed resourceVersion: after any concurrent write (a `kubectl scale`, a spec
/// edit) it fails with a conflict and the reconcile is retried on the stored object.
async fn seed_replicas(
    ctx: &Context,
    ms: &MicroService,
    replicas: i32,
    resource_version: Option<&str>,
) -> Result<()> {
    ctx.metrics.wrote("MicroService", "seed_replicas");
    let api: Api<MicroService> = Api::namespaced(ctx.client.clone(), &ms.namespace().unwrap_or_default());
    let params = PatchParams { field_manager: Some(SCALE_FIELD_MANAGER.into()), ..PatchParams::default() };
    let body = json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"replicas": replicas},
    });
    api.patch(&ms.name_any(), &params, &Patch::Merge(&body)).await?;
    Ok(())
}

fn dynamic_api(ctx: &Context, ns: &str, kind: ChildKind) -> Option<(Api<DynamicObject>, ApiResource)> {
    let crd = match kind {
        ChildKind::ServiceMonitor => &ctx.crds.service_monitors,
        ChildKind::PrometheusRule => &ctx.crds.prometheus_rules,
        ChildKind::ScaledObject => &ctx.crds.scaled_objects,
        _ => return None,
    };
    let ar = crd.resource.clone();
    Some((Api::namespaced_with(ctx.client.clone(), ns, &ar), ar))
}

async fn apply_child(ctx: &Context, ns: &str, child: &Child) -> Result<()> {
    let (client, kind) = (ctx.client.clone(), child.kind().as_str());
    match child {
        Child::Deployment(o) => apply(ctx, &Api::<Deployment>::namespaced(client, ns), o, kind).await,
        Child::Service(o) => apply(ctx, &Api::<Service>::namespaced(client, ns), o, kind).await,
        Child::HorizontalPodAutoscaler(o) => {
            let api = Api::<HorizontalPodAutoscaler>::namespaced(client, ns);
            apply(ctx, &api, o, kind).await
        }
        Child::PodDisruptionBudget(o) => {
            apply(ctx, &Api::<PodDisruptionBudget>::namespaced(client, ns), o, kind).await
        }
        Child::ServiceMonitor(o) | Child::PrometheusRule(o) | Child::ScaledObject(o) => {
            match dynamic_api(ctx, ns, child.kind()) {
                Some((api, _)) => apply(ctx, &api, o, kind).await,
                None => Ok(()),
            }
        }
    }
}

/// A server-side apply as [`FIELD_MANAGER`], forcing ownership of the fields it sets.
async fn apply<K>(ctx: &Context, api: &Api<K>, obj: &K, kind: &str) -> Result<()>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    ctx.metrics.wrote(kind, "apply");
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| Error::child_write(kind, &name, e))
}

/// A revision Deployment's size: a merge patch of `spec.replicas` and the replicas annotation. The
/// spec-hash annotation is dropped so that re-adopting the revision later re-applies it in full.
async fn scale(ctx: &Context, ns: &str, name: &str, replicas: i32) -> Result<()> {
    ctx.metrics.wrote("Deployment", "scale");
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams { field_manager: Some(SCALE_FIELD_MANAGER.into()), ..PatchParams::default() };
    let body = json!({
        "metadata": {"annotations": {
            SPEC_HASH_ANNOTATION: null,
            REPLICAS_ANNOTATION: replicas.to_string(),
        }},
        "spec": {"replicas": replicas}
    });
    api.patch(name, &params, &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|e| Error::child_write("Deployment", name, e))
}

async fn delete_child(ctx: &Context, ns: &str, kind: ChildKind, name: &str) -> Result<()> {
    ctx.metrics.wrote(kind.as_str(), "delete");
    let client = ctx.client.clone();
    let params = DeleteParams::background();
    let result = match kind {
        ChildKind::Deployment => {
            Api::<Deployment>::namespaced(client, ns).delete(name, &params).await.map(|_| ())
        }
        ChildKind::Service => Api::<Service>::namespaced(client, ns).delete(name, &params).await.map(|_| ()),
        ChildKind::HorizontalPodAutoscaler => {
            (Api::<HorizontalPodAutoscaler>::namespaced(client, ns).delete(name, &params).await).map(|_| ())
        }
        ChildKind::PodDisruptionBudget => {
            (Api::<PodDisruptionBudget>::namespaced(client, ns).delete(name, &params).await).map(|_| ())
        }
        ChildKind::ServiceMonitor | ChildKind::PrometheusRule | ChildKind::ScaledObject => {
            match dynamic_api(ctx, ns, kind) {
                Some((api, _)) => api.delete(name, &params).await.map(|_| ()),
                None => Ok(()),
            }
        }
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map_err(|e| Error::child_write(kind.as_str(), name, e)),
    }
}

/// The status subresource, by server-side apply as [`STATUS_FIELD_MANAGER`].
async fn write_status(ctx: &Context, ms: &MicroService, next: &MicroServiceStatus) -> Result<()> {
    apply_status(ctx, ms, STATUS_FIELD_MANAGER, Some(next), "status").await
}

/// An operator from before the status had its own manager wrote it as [`FIELD_MANAGER`]: that
/// manager applies an empty status, giving up every field; the ones the current status manager
/// owns stay, the ones nobody sets any more go.
async fn release_legacy_status(ctx: &Context, ms: &MicroService) -> Result<()> {
    apply_status(ctx, ms, FIELD_MANAGER, None, "status_release").await
}

async fn apply_status(
    ctx: &Context,
    ms: &MicroService,
    manager: &str,
    status: Option<&MicroServiceStatus>,
    verb: &str,
) -> Result<()> {
    ctx.ensure_leader()?;
    ctx.metrics.wrote("MicroService", verb);
    let api: Api<MicroService> = Api::namespaced(ctx.client.clone(), &ms.namespace().unwrap_or_default());
    let mut body = json!({
        "apiVersion": MicroService::api_version(&()),
        "kind": MicroService::kind(&()),
    });
    if let Some(status) = status {
        body["status"] = json!(status);
    }
    let params = PatchParams::apply(manager).force();
    api.patch_status(&ms.name_any(), &params, &Patch::Apply(&body)).await?;
    Ok(())
}

async fn publish(ctx: &Context, ms: &MicroService, event: &StatusEvent) {
    if ctx.ensure_leader().is_err() {
        return;
    }
    ctx.metrics.wrote("Event", "event");
    let event = KubeEvent {
        type_: match event.kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        },
        reason: event.reason.as_str().into(),
        note: Some(event.note.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // NB: an Event that cannot be published is not worth failing (and retrying) the reconcile.
    if let Err(err) = ctx.recorder.publish(&event, &ms.object_ref(&())).await {
        warn!(error = %err, reason = %event.reason, "cannot publish event");
    }
}

/// Requests a reconcile of every MicroService that depends on `ms`.
fn wake_dependents(ctx: &Context, ms: &MicroService) {
    let name = ms.name_any();
    let ns = ms.namespace();
    for other in ctx.stores.microservices.state() {
        let depends = (other.spec.depends_on.iter().flatten()).any(|d| d.name == name);
        if depends && other.namespace() == ns {
            let _ = ctx.trigger.unbounded_send(ObjectRef::from_obj(other.as_ref()));
        }
    }
}
