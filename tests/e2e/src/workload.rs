//! What runs inside the MicroServices of the cluster-agnostic tests.
//!
//! The same tests run on kwok's fake nodes (`make test`) and on kind's real
//! node (`make test-e2e-kind`). On fake nodes no container starts: the pause
//! image stands in and kwok marks pods Ready. On a real node Ready means the
//! generated gRPC probe passed, so the pods run inventory-service (loaded into
//! kind by `kind.sh load`), told by its flags to listen on the port the tests
//! declare and to keep its SQLite database on the pod's writable `/tmp`.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Node};
use kube::{Api, Client, api::ListParams};
use serde_json::{Value, json};

use crate::PAUSE_IMAGE;

/// The gRPC port every test MicroService declares; its probes target it.
pub const WORKLOAD_PORT: u16 = 8080;

/// The gRPC server run on real nodes: it answers `grpc.health.v1`.
const SERVING_IMAGE: &str = "docker.io/ferry/inventory-service:dev";
/// Another image that serves the same way (order-service takes the same flags).
const OTHER_SERVING_IMAGE: &str = "docker.io/ferry/order-service:dev";
/// A second tag of the pause image; kwok never pulls it.
const OTHER_PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// Available as `kubectl rollout status` sees it: the current generation observed, every replica
/// of `spec.replicas` updated and available.
pub fn deployment_available(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else { return false };
    let replicas = spec.replicas.unwrap_or(1);
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) >= replicas
        && status.available_replicas.unwrap_or(0) >= replicas
}

/// kwok's annotation on the nodes it fakes (tests/e2e/cluster/up.sh).
const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// Whether the cluster's nodes run containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    /// kwok's nodes: pods are bound and marked Ready, nothing runs.
    Fake,
    /// kubelets (kind): probes run against real containers.
    Real,
}

impl Nodes {
    /// `Real` when any node is not one of kwok's; a cluster without nodes
    /// counts as fake (nothing would run on it either).
    pub async fn of(client: &Client) -> Nodes {
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot list nodes: {e}"));
        Self::classify(
            nodes
                .items
                .iter()
                .map(|n| n.metadata.annotations.as_ref().and_then(|a| a.get(KWOK_NODE_ANNOTATION)).is_some()),
        )
    }

    fn classify(kwok_flags: impl IntoIterator<Item = bool>) -> Nodes {
        if kwok_flags.into_iter().any(|is_kwok| !is_kwok) { Nodes::Real } else { Nodes::Fake }
    }

    /// The image of the test workload.
    pub fn image(self) -> &'static str {
        match self {
            Nodes::Fake => PAUSE_IMAGE,
            Nodes::Real => SERVING_IMAGE,
        }
    }

    /// An image to change to that runs as well: an image change becomes Available on both.
    pub fn other_image(self) -> &'static str {
        match self {
            Nodes::Fake => OTHER_PAUSE_IMAGE,
            Nodes::Real => OTHER_SERVING_IMAGE,
        }
    }

    /// The spec fields that run the workload: `image`, `args` and the gRPC port.
    pub fn workload(self) -> Value {
        json!({
            "image": self.image(),
            "args": self.args(WORKLOAD_PORT),
            "ports": [{"name": "grpc", "port": WORKLOAD_PORT, "protocol": "grpc"}],
        })
    }

    /// A spec patch that keeps the pods of the next revision from ever
    /// becoming Ready: kwok skips pods with the annotation; on a real node the
    /// server listens one port beside the probed one, so every probe fails
    /// while the container keeps running.
    pub fn never_ready(self) -> Value {
        let mut patch = json!({"pod": {"annotations": {"e2e.ferry.dev/never-ready": "true"}}});
        if self == Nodes::Real {
            patch["args"] = self.args(WORKLOAD_PORT + 1);
        }
        patch
    }

    fn args(self, grpc_port: u16) -> Value {
        match self {
            Nodes::Fake => json!([]),
            Nodes::Real => {
                json!(
                    ["--auth-disabled", "--data-dir=/tmp/data", format!("--grpc-addr=0.0.0.0:{grpc_port}"),]
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_real_as_soon_as_one_node_is_not_kwoks() {
        assert_eq!(Nodes::classify([true, true]), Nodes::Fake);
        assert_eq!(Nodes::classify([]), Nodes::Fake);
        assert_eq!(Nodes::classify([true, false]), Nodes::Real);
        assert_eq!(Nodes::classify([false]), Nodes::Real);
    }

    #[test]
    fn the_workload_on_fake_nodes_is_the_pause_image_without_arguments() {
        let w = Nodes::Fake.workload();
        assert_eq!(w["image"], PAUSE_IMAGE);
        assert_eq!(w["args"], json!([]));
        assert_eq!(w["ports"][0]["port"], WORKLOAD_PORT);
    }

    #[test]
    fn the_workload_on_real_nodes_serves_grpc_on_the_declared_port_without_auth() {
        let w = Nodes::Real.workload();
        assert_eq!(w["image"], SERVING_IMAGE);
        let args: Vec<&str> = w["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
        assert!(args.contains(&"--grpc-addr=0.0.0.0:8080"), "{args:?}");
        assert!(args.contains(&"--auth-disabled"), "{args:?}");
    }

    #[test]
    fn a_never_ready_revision_on_real_nodes_listens_beside_the_probed_port() {
        let p = Nodes::Real.never_ready();
        assert_eq!(p["pod"]["annotations"]["e2e.ferry.dev/never-ready"], "true");
        assert!(p["args"].as_array().expect("args").iter().any(|a| a == "--grpc-addr=0.0.0.0:8081"));
        assert!(Nodes::Fake.never_ready().get("args").is_none());
    }
}
