//! The watches, the caches and the kube-runtime controller.
//!
//! Memory stays flat as objects grow: MicroServices are cached in full (the reconciler needs their
//! spec and status), Deployments are cached with their pod template stripped (the status is what is
//! read), and Services, HPAs, PDBs, ServiceMonitors, PrometheusRules and ConfigMaps are watched
//! metadata-only. Every cache drops `managedFields` but the operator's own, and lists in pages of
//! [`PAGE_SIZE`].

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use futures::{Stream, StreamExt, channel::mpsc};
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use ferry_operator_core::{
    crd::MicroService,
    desired::{prometheus_rule, scaled_object, service_monitor},
    drift::{is_legacy_status, keep_own_fields},
    keys::{self, FIELD_MANAGER},
};

use super::{Context, Error, OptionalCrd, OptionalCrds, Stores, error_policy, reconcile};
use crate::{
    checks::{CheckRunner, measure::HttpChecks},
    metrics::Metrics,
};

/// Page size of every list: small pages keep the peak memory of the initial list low.
pub const PAGE_SIZE: u32 = 50;

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Watch one namespace only (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Quiet period before a reconcile, merging bursts of events for one MicroService.
    pub debounce: Duration,
    /// Watch ConfigMaps (metadata only) so `rollOnChange` reacts at once.
    pub watch_config_maps: bool,
    /// Name of this instance, for Events.
    pub instance: String,
    /// A PEM bundle of extra roots trusted by https webhook and Prometheus checks.
    pub check_ca_file: Option<std::path::PathBuf>,
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn child_watch_config() -> watcher::Config {
    watcher::Config::default().labels(&keys::managed_by_selector()).page_size(PAGE_SIZE).any_semantic()
}

/// A metadata-only, trimmed, reflected watch of one child kind, as a trigger stream for `owns_stream`.
fn metadata_reflector<K>(
    api: Api<PartialObjectMeta<K>>,
) -> (Store<PartialObjectMeta<K>>, impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, child_watch_config())
        .default_backoff()
        .modify(|m| keep_own_fields(&mut m.metadata))
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// The Deployment cache (pod templates stripped, only the operator's managedFields kept) and its
/// trigger stream.
fn deployment_reflector(
    api: Api<Deployment>,
) -> (Store<Deployment>, impl Stream<Item = Result<Deployment, watcher::Error>> + Send) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, child_watch_config())
        .default_backoff()
        .modify(|d: &mut Deployment| {
            keep_own_fields(&mut d.metadata);
            if let Some(spec) = d.spec.as_mut() {
                spec.template = Default::default();
            }
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// What the MicroService watch says besides the objects: which were deleted, and when a re-list
/// finished (objects deleted meanwhile have no delete event).
enum Gone {
    Deleted(ObjectRef<MicroService>),
    Relisted,
}

/// The MicroService cache and the controller's trigger stream. NB: our own reflector instead of
/// `Controller::new`'s, so the cache drops what no decision reads: managedFields (one entry per
/// writer: the user, the autoscaler, our status) and kubectl's last-applied copy of the spec, which
/// can be larger than the rest of the object (BENCHMARKS.md: the peak RSS before and after).
fn microservice_reflector(
    api: Api<MicroService>,
    gone: mpsc::UnboundedSender<Gone>,
) -> (Store<MicroService>, impl Stream<Item = Result<MicroService, watcher::Error>> + Send) {
    let config = watcher::Config::default().page_size(PAGE_SIZE).any_semantic();
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|ms: &mut MicroService| {
            // NB: only an old operator's status entry is kept (see `drift::is_legacy_status`).
            ms.managed_fields_mut().retain(is_legacy_status);
            if let Some(annotations) = ms.metadata.annotations.as_mut() {
                annotations.remove(keys::LAST_APPLIED_ANNOTATION);
            }
        })
        .reflect(writer)
        .inspect(move |event| {
            let note = match event {
                Ok(watcher::Event::Delete(ms)) => Some(Gone::Deleted(ObjectRef::from_obj(ms))),
                Ok(watcher::Event::InitDone) => Some(Gone::Relisted),
                _ => None,
            };
            if let Some(note) = note {
                let _ = gone.unbounded_send(note);
            }
        })
        .applied_objects();
    (store, stream)
}

/// Prunes per-object memory as MicroServices go.
async fn forget_gone(ctx: Arc<Context>, mut gone: mpsc::UnboundedReceiver<Gone>) {
    while let Some(note) = gone.next().await {
        match note {
            Gone::Deleted(obj) => ctx.forget(&obj),
            Gone::Relisted => ctx.forget_missing(),
        }
    }
}

/// The MicroServices that mount ConfigMap `cm`.
fn mounting(store: &Store<MicroService>, cm: &PartialObjectMeta<ConfigMap>) -> Vec<ObjectRef<MicroService>> {
    let (cm_name, cm_ns) = (cm.name_any(), cm.namespace());
    (store.state().into_iter())
        .filter(|ms| ms.namespace() == cm_ns && ms.spec.config.as_ref().is_some_and(|c| c.name == cm_name))
        .map(|ms| ObjectRef::from_obj(ms.as_ref()))
        .collect()
}

async fn log_outcome<E: std::fmt::Display>(
    result: Result<(ObjectRef<MicroService>, Action), controller::Error<Error, E>>,
) {
    match result {
        Ok((obj, _)) => {
            debug!(microservice = %obj.name, namespace = ?obj.namespace, "reconciled")
        }
        Err(controller::Error::ReconcilerFailed(err, obj)) => {
            debug!(microservice = %obj.name, error = %err, "reconcile failed")
        }
        Err(err) => warn!(error = %err, "controller error"),
    }
}

/// Builds the controller and runs it until `shutdown` resolves, then drains in-flight reconciles
/// and stops the check measurements.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    may_write: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let ns = config.namespace.as_deref();
    let microservices: Api<MicroService> = api_for(&client, ns);
    if let Err(err) = microservices.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list MicroServices ({err}); is the CRD installed? `kubectl apply -f crds/microservice.yaml`"
        );
    }
    let http = HttpChecks::with_ca_file(config.check_ca_file.as_deref())?;
    let crds = OptionalCrds {
        service_monitors: OptionalCrd::track(&client, service_monitor::api_resource()).await,
        prometheus_rules: OptionalCrd::track(&client, prometheus_rule::api_resource()).await,
        scaled_objects: OptionalCrd::track(&client, scaled_object::api_resource()).await,
    };
    let (gone_tx, gone_rx) = mpsc::unbounded();
    let (ms_store, ms_stream) = microservice_reflector(microservices, gone_tx);
    let (deploy_reader, deploy_stream) = deployment_reflector(api_for(&client, ns));
    let (svc_reader, svc_stream) = metadata_reflector::<Service>(api_for(&client, ns));
    let (hpa_reader, hpa_stream) = metadata_reflector::<HorizontalPodAutoscaler>(api_for(&client, ns));
    let (pdb_reader, pdb_stream) = metadata_reflector::<PodDisruptionBudget>(api_for(&client, ns));
    let (sm_reader, sm_stream) = crds.service_monitors.reflector(&client, ns, child_watch_config());
    let (pr_reader, pr_stream) = crds.prometheus_rules.reflector(&client, ns, child_watch_config());
    let (so_reader, so_stream) = crds.scaled_objects.reflector(&client, ns, child_watch_config());
    let stores = Stores {
        microservices: ms_store.clone(),
        deployments: deploy_reader,
        services: svc_reader,
        autoscalers: hpa_reader,
        disruption_budgets: pdb_reader,
        service_monitors: sm_reader,
        prometheus_rules: pr_reader,
        scaled_objects: so_reader,
    };
    tokio::spawn(report_cache_sizes(stores.clone(), metrics.clone()));

    let (trigger_tx, trigger_rx) = mpsc::unbounded();
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.instance.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        stores,
        crds: crds.clone(),
        may_write,
        failures: Mutex::new(HashMap::new()),
        checks: CheckRunner::new(Some(client.clone()), http, trigger_tx.clone()),
        trigger: trigger_tx,
    });
    tokio::spawn(forget_gone(ctx.clone(), gone_rx));

    let mut controller = Controller::for_stream(ms_stream, ms_store.clone())
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(hpa_stream)
        .owns_stream(pdb_stream)
        .owns_stream_with(sm_stream, crds.service_monitors.resource.clone())
        .owns_stream_with(pr_stream, crds.prometheus_rules.resource.clone())
        .owns_stream_with(so_stream, crds.scaled_objects.resource.clone())
        .reconcile_on(trigger_rx)
        .reconcile_all_on(crds.service_monitors.changes())
        .reconcile_all_on(crds.prometheus_rules.changes())
        .reconcile_all_on(crds.scaled_objects.changes());
    if config.watch_config_maps {
        let cm_api: Api<PartialObjectMeta<ConfigMap>> = api_for(&client, ns);
        let cm_stream = watcher(cm_api, watcher::Config::default().page_size(PAGE_SIZE))
            .default_backoff()
            .touched_objects();
        let store = ms_store.clone();
        controller = controller.watches_stream(cm_stream, move |cm| mounting(&store, &cm));
    }

    info!(concurrency = config.concurrency, namespace = ?config.namespace, "controller starting");
    controller
        .with_config(controller::Config::default().concurrency(config.concurrency).debounce(config.debounce))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(log_outcome)
        .await;
    ctx.checks.shutdown().await;
    info!("controller stopped; in-flight reconciles drained, check measurements stopped");
    Ok(())
}

async fn report_cache_sizes(stores: Stores, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        metrics.set_managed("MicroService", stores.microservices.len());
        metrics.set_managed("Deployment", stores.deployments.len());
        metrics.set_managed("Service", stores.services.len());
        metrics.set_managed("HorizontalPodAutoscaler", stores.autoscalers.len());
        metrics.set_managed("PodDisruptionBudget", stores.disruption_budgets.len());
        metrics.set_managed("ServiceMonitor", stores.service_monitors.len());
        metrics.set_managed("PrometheusRule", stores.prometheus_rules.len());
        metrics.set_managed("ScaledObject", stores.scaled_objects.len());
    }
}
