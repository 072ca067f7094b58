//! The writes a plan asks for, as data: which object, which verb, and why.

use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt, core::DynamicObject};
use serde::Serialize;

use crate::{
    crd::MicroService,
    drift::{Drift, drift},
    status::StatusEvent,
};

/// The kinds of children the operator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `v1` Service.
    Service,
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    HorizontalPodAutoscaler,
    /// `policy/v1` PodDisruptionBudget.
    PodDisruptionBudget,
    /// `monitoring.coreos.com/v1` ServiceMonitor.
    ServiceMonitor,
    /// `monitoring.coreos.com/v1` PrometheusRule.
    PrometheusRule,
    /// `keda.sh/v1alpha1` ScaledObject.
    ScaledObject,
}

impl ChildKind {
    /// The kind's name, as in `kind:`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Service => "Service",
            Self::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
            Self::ServiceMonitor => "ServiceMonitor",
            Self::PrometheusRule => "PrometheusRule",
            Self::ScaledObject => "ScaledObject",
        }
    }
}

/// A child object to apply, complete with its spec-hash annotation.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// A Deployment (the RollingUpdate one, or a blue-green revision).
    Deployment(Box<Deployment>),
    /// A Service (the active one, or the preview one).
    Service(Box<Service>),
    /// The autoscaler.
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    /// The disruption budget.
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    /// The ServiceMonitor.
    ServiceMonitor(Box<DynamicObject>),
    /// The PrometheusRule.
    PrometheusRule(Box<DynamicObject>),
    /// The KEDA ScaledObject.
    ScaledObject(Box<DynamicObject>),
}

impl Child {
    /// The child's kind.
    pub fn kind(&self) -> ChildKind {
        match self {
            Self::Deployment(_) => ChildKind::Deployment,
            Self::Service(_) => ChildKind::Service,
            Self::HorizontalPodAutoscaler(_) => ChildKind::HorizontalPodAutoscaler,
            Self::PodDisruptionBudget(_) => ChildKind::PodDisruptionBudget,
            Self::ServiceMonitor(_) => ChildKind::ServiceMonitor,
            Self::PrometheusRule(_) => ChildKind::PrometheusRule,
            Self::ScaledObject(_) => ChildKind::ScaledObject,
        }
    }

    /// The child's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Deployment(o) => o.meta(),
            Self::Service(o) => o.meta(),
            Self::HorizontalPodAutoscaler(o) => o.meta(),
            Self::PodDisruptionBudget(o) => o.meta(),
            Self::ServiceMonitor(o) | Self::PrometheusRule(o) | Self::ScaledObject(o) => o.meta(),
        }
    }

    /// The child's name.
    pub fn name(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }
}

/// One write to the API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Seeds `MicroService.spec.replicas` (a JSON merge patch carrying the observed
    /// resourceVersion, so it lands only on the object that was validated).
    SeedReplicas {
        /// The count (`autoscaling.minReplicas`).
        replicas: i32,
        /// The resourceVersion the patch is conditional on.
        resource_version: Option<String>,
    },
    /// A server-side apply of a child, forcing ownership of the fields it sets.
    Apply {
        /// The object.
        child: Child,
        /// Why an existing child is applied again (`None` when it does not exist yet).
        why: Option<Drift>,
        /// An Event to publish once the apply succeeded.
        announce: Option<StatusEvent>,
    },
    /// A merge patch of a revision Deployment's size: `spec.replicas` and the replicas
    /// annotation, dropping its spec-hash so that adopting the revision again re-applies it.
    Scale {
        /// The Deployment.
        name: String,
        /// Its new size.
        replicas: i32,
    },
    /// A delete (background propagation; an object already gone is not an error).
    Delete {
        /// The child's kind.
        kind: ChildKind,
        /// Its name.
        name: String,
    },
}

impl Write {
    /// The kind written, for logs and metrics (`MicroService` for the seed).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SeedReplicas { .. } => "MicroService",
            Self::Apply { child, .. } => child.kind().as_str(),
            Self::Scale { .. } => ChildKind::Deployment.as_str(),
            Self::Delete { kind, .. } => kind.as_str(),
        }
    }

    /// The name of the object written (empty for the seed: the MicroService itself).
    pub fn name(&self) -> String {
        match self {
            Self::SeedReplicas { .. } => String::new(),
            Self::Apply { child, .. } => child.name(),
            Self::Scale { name, .. } | Self::Delete { name, .. } => name.clone(),
        }
    }

    fn apply(child: Child, why: Option<Drift>) -> Self {
        Self::Apply { child, why, announce: None }
    }
}

/// Writes that do not depend on each other: an executor may issue them concurrently. Batches run
/// in order, each once the one before it succeeded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch(pub Vec<Write>);

/// Whether a child is controlled by this MicroService (never touch someone else's object).
pub fn controlled_by<K: Resource>(child: &K, ms: &MicroService) -> bool {
    let uid = ms.uid();
    (child.owner_references().iter()).any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The write that makes one child match: an apply when it is missing or drifted from `desired`, a
/// delete when it must not exist but does (and is ours), nothing otherwise.
pub fn ensure<O, K>(
    ms: &MicroService,
    observed: Option<&O>,
    desired: Option<&K>,
    wrap: fn(Box<K>) -> Child,
    kind: ChildKind,
) -> Option<Write>
where
    O: Resource,
    K: Resource + Serialize + Clone,
{
    match (desired, observed) {
        (Some(want), Some(have)) => {
            drift(have, want).map(|why| Write::apply(wrap(Box::new(want.clone())), Some(why)))
        }
        (Some(want), None) => Some(Write::apply(wrap(Box::new(want.clone())), None)),
        (None, Some(have)) if controlled_by(have, ms) => Some(Write::Delete { kind, name: have.name_any() }),
        (None, _) => None,
    }
}
