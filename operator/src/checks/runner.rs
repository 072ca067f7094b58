//! Promotion checks off the reconcile path.
//!
//! A reconcile hands the checks its plan says are due to [`CheckRunner::start`] and returns at
//! once. Each measurement runs in its own tracked task (at most one per MicroService, stage,
//! check and revision at a time), however long the webhook or Prometheus takes to answer; its
//! outcome is kept here and the MicroService is requeued. The next reconcile reads the outcomes
//! ([`CheckRunner::measurements`]) as part of what it observed, the planner folds them into
//! `status.blueGreen.checks`, and once the status read back holds them they are dropped
//! ([`CheckRunner::settle`]).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::channel::mpsc;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{Api, Client, api::ListParams, runtime::reflector::ObjectRef};
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use ferry_operator_core::{
    crd::MicroService,
    plan::{DueCheck, PodTarget},
    rollout::checks::{Measurement, Stage},
};

use super::measure::{HttpChecks, measure};

/// How long a check whose pods could not be listed waits before it is due again.
const POD_LIST_RETRY: Duration = Duration::from_secs(2);

/// One measurement in flight: which MicroService, stage, check and revision.
type Key = (ObjectRef<MicroService>, Stage, String, String);

#[derive(Default)]
struct State {
    in_flight: HashMap<Key, AbortHandle>,
    measured: HashMap<ObjectRef<MicroService>, Vec<Measurement>>,
}

/// Runs due check measurements as background tasks and keeps their outcomes until the status
/// holds them.
#[derive(Clone)]
pub struct CheckRunner {
    client: Option<Client>,
    http: HttpChecks,
    state: Arc<Mutex<State>>,
    tracker: TaskTracker,
    trigger: mpsc::UnboundedSender<ObjectRef<MicroService>>,
}

impl CheckRunner {
    /// A runner that lists pods for gRPC health checks with `client` (none: such checks fail with
    /// "no pods"), calls webhooks and Prometheus with `http`, and requeues a MicroService through
    /// `trigger` when one of its measurements ends.
    pub fn new(
        client: Option<Client>,
        http: HttpChecks,
        trigger: mpsc::UnboundedSender<ObjectRef<MicroService>>,
    ) -> Self {
        Self { client, http, state: Arc::default(), tracker: TaskTracker::new(), trigger }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts every due check of `obj` that is not measuring already. Returns at once.
    pub fn start(&self, obj: &ObjectRef<MicroService>, due: &[DueCheck]) {
        for check in due {
            let key = (obj.clone(), check.stage, check.spec.name.clone(), check.context.revision.clone());
            let mut state = self.lock();
            if state.in_flight.contains_key(&key) {
                continue;
            }
            let task = self.tracker.spawn(run(self.clone(), key.clone(), check.clone()));
            state.in_flight.insert(key, task.abort_handle());
        }
    }

    /// The outcomes of `obj`'s measurements that the status may not hold yet.
    pub fn measurements(&self, obj: &ObjectRef<MicroService>) -> Vec<Measurement> {
        self.lock().measured.get(obj).cloned().unwrap_or_default()
    }

    /// Drops `settled` (measurements the status already holds, or that no longer apply).
    pub fn settle(&self, obj: &ObjectRef<MicroService>, settled: &[Measurement]) {
        if settled.is_empty() {
            return;
        }
        let mut state = self.lock();
        if let Some(list) = state.measured.get_mut(obj) {
            list.retain(|m| !settled.contains(m));
            if list.is_empty() {
                state.measured.remove(obj);
            }
        }
    }

    /// Stops `obj`'s measurements and drops its outcomes (the MicroService was deleted).
    pub fn forget(&self, obj: &ObjectRef<MicroService>) {
        let mut state = self.lock();
        state.measured.remove(obj);
        state.in_flight.retain(|key, task| {
            let mine = key.0 == *obj;
            if mine {
                task.abort();
            }
            !mine
        });
    }

    /// The MicroServices with measurements in flight or kept.
    pub fn objects(&self) -> Vec<ObjectRef<MicroService>> {
        let state = self.lock();
        let mut objects: Vec<_> = state.in_flight.keys().map(|k| k.0.clone()).collect();
        objects.extend(state.measured.keys().cloned());
        objects
    }

    /// How many measurements are in flight, and for how many MicroServices outcomes are kept.
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.lock();
        (state.in_flight.len(), state.measured.len())
    }

    /// Aborts every measurement in flight and waits for the tasks to end (on shutdown; a
    /// measurement lost this way is taken again by the next leader).
    pub async fn shutdown(&self) {
        self.tracker.close();
        for task in self.lock().in_flight.values() {
            task.abort();
        }
        self.tracker.wait().await;
    }
}

/// One measurement: its outcome is kept, the key leaves the in-flight set, and the MicroService
/// is requeued.
async fn run(runner: CheckRunner, key: Key, check: DueCheck) {
    let pods = match (&check.pods, &runner.client) {
        (Some(target), Some(client)) => ready_pods(client, target).await,
        _ => Ok(Vec::new()),
    };
    let pods = match pods {
        Ok(pods) => pods,
        Err(err) => {
            // NB: the API server did not answer: that says nothing about the revision, so no
            // measurement is recorded; the check is due again after a pause.
            warn!(microservice = %key.0.name, check = %key.2, error = %err, "cannot list the pods to check");
            tokio::time::sleep(POD_LIST_RETRY).await;
            runner.lock().in_flight.remove(&key);
            let _ = runner.trigger.unbounded_send(key.0);
            return;
        }
    };
    let outcome = measure(&runner.http, &check.spec, &check.context, &pods).await;
    debug!(microservice = %key.0.name, check = %key.2, ok = outcome.is_ok(), "check measured");
    let measurement = Measurement {
        stage: key.1,
        check: key.2.clone(),
        revision: key.3.clone(),
        outcome: outcome.map_err(|e| e.to_string()),
        at: Timestamp::now(),
    };
    {
        let mut state = runner.lock();
        state.in_flight.remove(&key);
        state.measured.entry(key.0.clone()).or_default().push(measurement);
    }
    let _ = runner.trigger.unbounded_send(key.0);
}

/// The addresses of the revision's ready pods, at the check's port.
async fn ready_pods(client: &Client, target: &PodTarget) -> Result<Vec<SocketAddr>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let list = pods.list(&ListParams::default().labels(&target.selector)).await?;
    let ready = |p: &Pod| {
        (p.status.as_ref().and_then(|s| s.conditions.as_ref()))
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    Ok((list.items.iter())
        .filter(|p| ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, target.port))
        .collect())
}

/// The set of keys in flight, for tests.
#[cfg(test)]
impl CheckRunner {
    pub(crate) fn in_flight(&self) -> std::collections::HashSet<String> {
        self.lock().in_flight.keys().map(|k| k.2.clone()).collect()
    }
}
