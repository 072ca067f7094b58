//! Harness for Ferry's end-to-end tests.
//!
//! Every test runs against a real API server: the local cluster from
//! `make cluster-up` (or kind via `make kind-up`), found through `KUBECONFIG`.
//! Each test gets its own namespace, enforcing the `restricted` Pod Security
//! level; when a test fails, the harness prints that namespace's pods and events
//! and the tail of any operator log before the namespace is deleted.

pub mod argo_rollouts;
pub mod autoscale;
mod diagnostics;
mod microservice;
pub mod monitoring;
pub mod oci;
mod operator;
pub mod shop;
pub mod tools;
mod wait;
mod workload;

pub use diagnostics::{dump_namespace, register_log_file};
pub use microservice::{condition, condition_status, microservice_resource};
pub use operator::OperatorProcess;
pub use wait::{WaitError, wait_until};
pub use workload::{Nodes, WORKLOAD_PORT, deployment_available};

use std::{collections::BTreeMap, future::Future, panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, PostParams},
};

/// A client for the cluster named by `KUBECONFIG`.
///
/// Panics with the command to run when there is no cluster: an e2e test that
/// silently skips proves nothing.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: run `make cluster-up` and export the line it prints, or `make test-e2e`"
        );
    }
    Client::try_default().await.unwrap_or_else(|e| panic!("cannot build a client from KUBECONFIG: {e}"))
}

/// A namespace owned by one test.
#[derive(Clone)]
pub struct TestContext {
    pub client: Client,
    pub namespace: String,
    /// Whether the cluster's nodes run containers (kind) or fake them (kwok).
    pub nodes: Nodes,
}

impl TestContext {
    /// A namespaced API for `K` in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Runs `body` in a fresh namespace named after the test, then deletes it.
/// On failure (a panic in `body`) the namespace's pods, events and the
/// registered operator logs are printed first, then the panic is resumed.
pub async fn in_namespace<F, Fut>(test: &str, body: F)
where
    F: FnOnce(TestContext) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await;
    let namespace = create_namespace(&client, test).await;
    let nodes = Nodes::of(&client).await;
    let ctx = TestContext { client: client.clone(), namespace: namespace.clone(), nodes };
    let outcome = AssertUnwindSafe(body(ctx)).catch_unwind().await;
    if outcome.is_err() {
        dump_namespace(&client, &namespace).await;
    }
    let namespaces: Api<Namespace> = Api::all(client);
    // Deletion is asynchronous; the next test never reuses the name.
    let _ = namespaces.delete(&namespace, &DeleteParams::background()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The default deadline for a condition in these tests. The local cluster
/// converges in a few seconds; the margin absorbs a loaded CI machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The image of placeholder pods. kwok never pulls it; on kind it is the
/// node image's preloaded pause container, so it runs there too.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// A short random suffix for cluster-scoped names that must not collide
/// between tests running in parallel or reruns.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

async fn create_namespace(client: &Client, test: &str) -> String {
    let prefix: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    let name = format!("e2e-{}-{}", prefix.trim_matches('-'), unique_suffix());
    let labels = BTreeMap::from([
        ("ferry.dev/e2e".to_string(), "true".to_string()),
        // Everything Ferry renders must pass the restricted profile.
        ("pod-security.kubernetes.io/enforce".to_string(), "restricted".to_string()),
    ]);
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(name.clone()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    // Pods are rejected until the ServiceAccount controller made `default`.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_until(&format!("the default ServiceAccount in {name}"), DEFAULT_TIMEOUT, || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    name
}
