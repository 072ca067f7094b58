//! Test data (feature `fixtures`, and this crate's own tests): MicroServices, children as the API
//! server answers them, and [`converge`], which plays the API server and the Deployment
//! controller for a plan so that scenarios can run reconcile after reconcile as plain data.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus},
    apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time},
    jiff::Timestamp,
};
use kube::{
    Resource, ResourceExt,
    core::{PartialObjectMeta, PartialObjectMetaExt},
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    crd::MicroService,
    keys::{FIELD_MANAGER, REPLICAS_ANNOTATION, SPEC_HASH_ANNOTATION},
    plan::{Child, ChildKind, Observed, Plan, Write},
};

/// A MicroService `order` in namespace `shop` with one grpc port and a uid (so owner refs build).
pub fn order() -> MicroService {
    from(json!({}))
}

/// `order` with `spec` fields merged over the defaults.
pub fn from(spec_overrides: Value) -> MicroService {
    let mut value = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "MicroService",
        "metadata": {"name": "order", "namespace": "shop", "uid": "u-1", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {
            "image": "ghcr.io/acme/order:1.0.0",
            "ports": [{"name": "grpc", "port": 50051, "protocol": "grpc"}],
        }
    });
    if let (Some(spec), Some(overrides)) = (value["spec"].as_object_mut(), spec_overrides.as_object()) {
        for (k, v) in overrides {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(value).expect("fixture deserialises")
}

/// A blue-green `order` (2 replicas, no scale-down delay unless `extra` says otherwise) with the
/// `blueGreen` settings of `extra`.
pub fn blue_green(image: &str, extra: Value) -> MicroService {
    from(json!({
        "image": image,
        "replicas": 2,
        "strategy": {"type": "BlueGreen", "blueGreen": extra},
    }))
}

/// The `fieldsV1` tree the API server records for a server-side apply of `value`: every field
/// of it, lists owned as a whole.
fn fields_of(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (format!("f:{k}"), fields_of(v))).collect(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// `obj` as the API server answers its first apply by [`FIELD_MANAGER`]: uid, resourceVersion,
/// generation 1, a creation time, and the operator's managedFields entry.
pub fn as_applied<K: Resource + Serialize + Clone>(obj: &K) -> K {
    let mut applied = obj.clone();
    let mut body = serde_json::to_value(obj).expect("json");
    if let Some(top) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            top.remove(k);
        }
        if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| ["labels", "annotations", "ownerReferences"].contains(&k.as_str()));
        }
    }
    let meta = applied.meta_mut();
    meta.uid = Some(format!("uid-{}", meta.name.clone().unwrap_or_default()));
    meta.resource_version = Some("1".into());
    meta.generation = Some(meta.generation.unwrap_or(0) + 1);
    meta.creation_timestamp = meta.creation_timestamp.clone().or(Some(Time(Timestamp::UNIX_EPOCH)));
    meta.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        fields_v1: Some(FieldsV1(fields_of(&body))),
        ..ManagedFieldsEntry::default()
    }]);
    applied
}

/// A metadata-only cache entry of `obj`.
pub fn metadata_of<K: Resource + Clone>(obj: &K) -> Arc<PartialObjectMeta<K>> {
    Arc::new(obj.meta().clone().into_response_partial::<K>())
}

/// A Deployment whose controller caught up: every pod updated and available.
pub fn rolled_out(mut d: Deployment) -> Deployment {
    let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let condition = |type_: &str| DeploymentCondition {
        type_: type_.into(),
        status: "True".into(),
        ..DeploymentCondition::default()
    };
    d.status = Some(DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(n),
        ready_replicas: Some(n),
        available_replicas: Some(n),
        updated_replicas: Some(n),
        conditions: Some(vec![condition("Available"), condition("Progressing")]),
        ..DeploymentStatus::default()
    });
    d
}

/// The cache entry a Deployment has once applied (pod template stripped).
fn cached(d: &Deployment) -> Arc<Deployment> {
    let mut d = as_applied(d);
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
    Arc::new(d)
}

/// Plays the API server for every write of `plan` (and its status): what the caches hold after.
/// Deployments come back as the API server answers them, not rolled out (see [`roll_out`]).
pub fn converge(observed: &mut Observed, plan: &Plan) {
    let mut ms = observed.microservice.as_ref().clone();
    for write in plan.writes() {
        match write {
            Write::SeedReplicas { replicas, .. } => {
                ms.spec.replicas = Some(*replicas);
                ms.metadata.generation = ms.metadata.generation.map(|g| g + 1);
            }
            Write::Apply { child, .. } => store(observed, &ms, child),
            Write::Scale { name, replicas } => scale(observed, name, *replicas),
            Write::Delete { kind, name } => delete(observed, *kind, name),
        }
    }
    if let Some(status) = &plan.status {
        ms.status = Some(status.clone());
    }
    observed.microservice = Arc::new(ms);
}

fn store(observed: &mut Observed, ms: &MicroService, child: &Child) {
    let name = ms.name_any();
    match child {
        Child::Deployment(d) if d.name_any() == name => observed.deployment = Some(cached(d)),
        Child::Deployment(d) => {
            observed.revisions.retain(|r| r.name_any() != d.name_any());
            observed.revisions.push(cached(d));
        }
        Child::Service(s) if s.name_any() == name => {
            observed.service = Some(metadata_of(&as_applied(s.as_ref())))
        }
        Child::Service(s) => observed.preview_service = Some(metadata_of(&as_applied(s.as_ref()))),
        Child::HorizontalPodAutoscaler(h) => observed.autoscaler = Some(metadata_of(&as_applied(h.as_ref()))),
        Child::PodDisruptionBudget(p) => {
            observed.disruption_budget = Some(metadata_of(&as_applied(p.as_ref())))
        }
        Child::ServiceMonitor(m) => {
            observed.service_monitor = Some(Arc::new(as_applied(m.as_ref()).metadata.into_response_partial()))
        }
        Child::PrometheusRule(r) => {
            observed.prometheus_rule = Some(Arc::new(as_applied(r.as_ref()).metadata.into_response_partial()))
        }
        Child::ScaledObject(o) => {
            observed.scaled_object = Some(Arc::new(as_applied(o.as_ref()).metadata.into_response_partial()))
        }
    }
}

fn scale(observed: &mut Observed, name: &str, replicas: i32) {
    for d in observed.revisions.iter_mut().filter(|d| d.name_any() == name) {
        let mut next = d.as_ref().clone();
        let annotations = next.metadata.annotations.get_or_insert_with(Default::default);
        annotations.remove(SPEC_HASH_ANNOTATION);
        annotations.insert(REPLICAS_ANNOTATION.into(), replicas.to_string());
        if let Some(spec) = next.spec.as_mut()
            && spec.replicas != Some(replicas)
        {
            spec.replicas = Some(replicas);
            next.metadata.generation = next.metadata.generation.map(|g| g + 1);
        }
        *d = Arc::new(next);
    }
}

fn delete(observed: &mut Observed, kind: ChildKind, name: &str) {
    match kind {
        ChildKind::Deployment => {
            observed.revisions.retain(|d| d.name_any() != name);
            observed.deployment = observed.deployment.take().filter(|d| d.name_any() != name);
        }
        ChildKind::Service => {
            observed.service = observed.service.take().filter(|s| s.name_any() != name);
            observed.preview_service = observed.preview_service.take().filter(|s| s.name_any() != name);
        }
        ChildKind::HorizontalPodAutoscaler => observed.autoscaler = None,
        ChildKind::PodDisruptionBudget => observed.disruption_budget = None,
        ChildKind::ServiceMonitor => observed.service_monitor = None,
        ChildKind::PrometheusRule => observed.prometheus_rule = None,
        ChildKind::ScaledObject => observed.scaled_object = None,
    }
}

/// Plays the Deployment controller: every Deployment runs all of its pods, available.
pub fn roll_out(observed: &mut Observed) {
    if let Some(d) = observed.deployment.as_mut() {
        *d = Arc::new(rolled_out(d.as_ref().clone()));
    }
    for d in observed.revisions.iter_mut() {
        *d = Arc::new(rolled_out(d.as_ref().clone()));
    }
}

/// A MicroService reconciled until nothing changes, its Deployments rolled out: what the caches
/// hold for a converged, healthy MicroService.
pub fn converged(ms: MicroService, now: Timestamp) -> Observed {
    let mut observed = Observed::new(Arc::new(ms));
    for _ in 0..8 {
        let plan = crate::plan::plan(&observed, now);
        if plan.batches.is_empty() && plan.status.is_none() {
            return observed;
        }
        converge(&mut observed, &plan);
        roll_out(&mut observed);
    }
    panic!("no convergence after 8 reconciles: {observed:#?}");
}
