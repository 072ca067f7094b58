//! The parts of a Deployment the status is derived from.

use k8s_openapi::api::apps::v1::Deployment;

/// One condition of a Deployment (`Available`, `Progressing`, `ReplicaFailure`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentCondition {
    /// `type`.
    pub type_: String,
    /// `status`: `True`, `False` or `Unknown`.
    pub status: String,
    /// `reason` (empty when absent).
    pub reason: String,
    /// `message` (empty when absent).
    pub message: String,
}

impl DeploymentCondition {
    /// A condition of `type_` with `status`, `reason` and `message`.
    pub fn new(type_: &str, status: &str, reason: &str, message: &str) -> Self {
        Self { type_: type_.into(), status: status.into(), reason: reason.into(), message: message.into() }
    }

    /// Whether the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The parts of a Deployment the status is derived from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentView {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas` (all pods, old and new).
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// The Deployment's conditions.
    pub conditions: Vec<DeploymentCondition>,
}

impl DeploymentView {
    /// Extracts the view from a Deployment (its spec may have been trimmed from the cache).
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        Self {
            generation: d.metadata.generation.unwrap_or_default(),
            observed_generation: status.observed_generation.unwrap_or_default(),
            replicas: status.replicas.unwrap_or_default(),
            ready_replicas: status.ready_replicas.unwrap_or_default(),
            available_replicas: status.available_replicas.unwrap_or_default(),
            updated_replicas: status.updated_replicas.unwrap_or_default(),
            conditions: status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason.unwrap_or_default(),
                    message: c.message.unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// The view right after a write that changed the Deployment's spec: the API server answers
    /// with the next generation, which its controller has not observed yet.
    pub fn after_spec_write(observed: Option<&Self>) -> Self {
        match observed {
            Some(view) => Self { generation: view.generation + 1, ..view.clone() },
            None => Self { generation: 1, ..Self::default() },
        }
    }

    /// The condition of `type_`, if the Deployment reports it.
    pub fn condition(&self, type_: &str) -> Option<&DeploymentCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of `type_` is `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(DeploymentCondition::is_true)
    }
}
