//! A child kind whose CRD may or may not be served (the Prometheus Operator's ServiceMonitor and
//! PrometheusRule, KEDA's ScaledObject). API discovery says whether it is served at start; a
//! metadata-only watch of the CRD by name keeps the answer current (and every MicroService is
//! reconciled again when it changes); the children themselves are watched metadata-only once the
//! CRD is served, so a cluster without the Prometheus Operator or KEDA sees no watch errors.
//! Without the CRD, the child's condition says why and nothing else is affected.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tracing::{debug, info};

use ferry_operator_core::drift::keep_own_fields;

/// How often, at most, discovery is asked again after the CRD changed: a CRD that was just
/// created is served a moment later.
const DISCOVERY_ATTEMPTS: u64 = 10;
const DISCOVERY_STEP: Duration = Duration::from_millis(200);

/// One optional CRD and whether the cluster serves it now.
#[derive(Clone)]
pub struct OptionalCrd {
    /// The child kind's API resource.
    pub resource: ApiResource,
    /// The CRD's name (`<plural>.<group>`).
    pub crd_name: String,
    served: watch::Receiver<bool>,
}

impl OptionalCrd {
    /// Asks discovery whether `resource` is served and keeps the answer current in a background
    /// task (for as long as the process runs).
    pub async fn track(client: &Client, resource: ApiResource) -> Self {
        let crd_name = format!("{}.{}", resource.plural, resource.group);
        let (tx, served) = watch::channel(is_served(client, &resource).await);
        info!(crd = %crd_name, served = *served.borrow(), "optional CRD detection");
        tokio::spawn(follow(client.clone(), resource.clone(), crd_name.clone(), tx));
        Self { resource, crd_name, served }
    }

    /// A CRD whose state is fixed (tests).
    pub fn fixed(resource: ApiResource, served: bool) -> Self {
        let crd_name = format!("{}.{}", resource.plural, resource.group);
        let (tx, served) = watch::channel(served);
        // NB: the receiver keeps the last value after the sender is gone.
        drop(tx);
        Self { resource, crd_name, served }
    }

    /// Whether the cluster serves the CRD now.
    pub fn served(&self) -> bool {
        *self.served.borrow()
    }

    /// Fires whenever the CRD's availability changes (for `reconcile_all_on`).
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + use<> {
        futures::stream::unfold(self.served.clone(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    /// The metadata-only cache of the children (only the operator's own managedFields kept) and
    /// its trigger stream, for `owns_stream_with(.., resource)`. The watch starts once the CRD is
    /// served.
    pub fn reflector(
        &self,
        client: &Client,
        namespace: Option<&str>,
        config: watcher::Config,
    ) -> (
        Store<PartialObjectMeta<DynamicObject>>,
        impl Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + use<>,
    ) {
        let writer = reflector::store::Writer::new(self.resource.clone());
        let reader = writer.as_reader();
        let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        };
        let mut served = self.served.clone();
        let stream = futures::stream::once(async move {
            let _ = served.wait_for(|served| *served).await;
        })
        .map(move |()| watcher(api.clone(), config.clone()).default_backoff())
        .flatten()
        .modify(|m| keep_own_fields(&mut m.metadata))
        .reflect(writer)
        .touched_objects();
        (reader, stream)
    }
}

/// Whether the cluster serves `resource` (API discovery of its group version).
async fn is_served(client: &Client, resource: &ApiResource) -> bool {
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource.plural),
        Err(_) => false,
    }
}

/// Watches the CRD (metadata only, by name) and re-runs discovery on every change.
async fn follow(client: Client, resource: ApiResource, crd_name: String, tx: watch::Sender<bool>) {
    let crds: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client.clone());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={crd_name}"));
    let mut events = watcher(crds, by_name).default_backoff().boxed();
    while let Some(event) = events.next().await {
        if let Err(err) = event {
            debug!(crd = %crd_name, error = %err, "CRD watch error");
            continue;
        }
        for attempt in 0..DISCOVERY_ATTEMPTS {
            let now = is_served(&client, &resource).await;
            if now != *tx.borrow() {
                info!(crd = %crd_name, served = now, "optional CRD availability changed");
                tx.send_replace(now);
                break;
            }
            if attempt + 1 < DISCOVERY_ATTEMPTS {
                tokio::time::sleep(DISCOVERY_STEP * u32::try_from(attempt + 1).unwrap_or(1)).await;
            }
        }
    }
}
