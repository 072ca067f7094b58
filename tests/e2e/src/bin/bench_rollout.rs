//! `make bench-rollout`: blue-green promotion, Ferry and Argo Rollouts side by side from one
//! run on the local cluster. Prints numbers; asserts nothing.
//!
//! ```sh
//! KUBECONFIG=target/cluster/kubeconfig FERRY_OPERATOR_BIN=$PWD/target/release/operator \
//!   ARGO_ROLLOUTS_BIN=$(tests/e2e/argo-rollouts/build.sh install target/cluster/kubeconfig) \
//!   target/release/bench_rollout 30
//! ```
//!
//! Ferry: a fresh namespace and a fresh operator process (scoped to it) run N rollouts of one
//! MicroService (2 replicas, `strategy.blueGreen.scaleDownDelaySeconds: 0`, no checks,
//! auto-promotion), each a new `VERSION` env value. Argo Rollouts (with `ARGO_ROLLOUTS_BIN`;
//! empty skips it): another namespace, its controller as a process scoped to it, one Rollout
//! (blue-green, active and preview Services, `autoPromotionEnabled: true`, 2 replicas, the pod
//! template Ferry rendered for its first revision) and N rollouts of it, each the same `VERSION`
//! change to the Rollout's pod template. The two alternate, one rollout each, the order flipped
//! every rollout, so machine noise hits both.
//!
//! Argo's `scaleDownDelaySeconds: 0` keeps the old ReplicaSet up for good in v1.9.1 (no
//! scale-down deadline is ever set), so Argo's round also sets `scaleDownDelayRevisionLimit: 0`:
//! the old ReplicaSet is scaled to zero as soon as nothing references it, as Ferry's
//! `scaleDownDelaySeconds: 0` does.
//!
//! Per controller, one merged watch of the revisions' workloads (Ferry's Deployments, Argo's
//! ReplicaSets), the active Service and the pods timestamps, on arrival: (a) the first event
//! showing the new revision with every pod available and its controller caught up, (b) the first
//! showing the active Service selecting it, (c) the first moment no pod of the old revision is
//! left. Reported: (b) − (a), the promotion overhead; patch → (b); patch → (c).

use std::time::{Duration, Instant};

use ferry_e2e::{
    OperatorProcess, TestContext,
    argo_rollouts::{self, POD_TEMPLATE_HASH_LABEL, blue_green_app, rollout_resource},
    deployment_available, in_namespace, microservice_resource,
    shop::REVISION_LABEL,
};
use futures::{StreamExt, stream, stream::BoxStream};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde_json::{Value, json};

/// The MicroService, the Rollout and their active Service.
const NAME: &str = "bench";
const REPLICAS: i32 = 2;
/// How long one rollout (patch to old pods gone) may take.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(120);
/// Argo's metrics port (health: +100).
const ARGO_PORT: u16 = 18390;

#[tokio::main]
async fn main() {
    let rollouts: usize =
        std::env::args().nth(1).map(|s| s.parse().expect("ROLLOUTS is a number")).unwrap_or(30);
    let argo_bin = argo_rollouts::binary();
    in_namespace("bench-rollout-ferry", |ferry_ns| async move {
        let _operator = OperatorProcess::start_with_env(
            &ferry_ns.namespace,
            "bench-rollout",
            &[],
            &[("RUST_LOG", "warn")],
        );
        let mut ferry = Target::ferry(&ferry_ns).await;
        let Some(bin) = argo_bin else {
            alternate(&mut ferry, None, rollouts).await;
            print_results(&ferry, None);
            return;
        };
        let (template, service) = ferry_template_and_service(&ferry_ns, &ferry.active).await;
        in_namespace("bench-rollout-argo", |argo_ns| async move {
            let controller = argo_rollouts::start_controller(&bin, &argo_ns.namespace, ARGO_PORT);
            let mut argo = Target::argo(&argo_ns, template, service).await;
            alternate(&mut ferry, Some(&mut argo), rollouts).await;
            drop(controller);
            print_results(&ferry, Some(&argo));
        })
        .await;
    })
    .await;
}

/// Runs `rollouts` rollouts of each target, one of each in turn, the first of a pair alternating.
async fn alternate(ferry: &mut Target, mut argo: Option<&mut Target>, rollouts: usize) {
    for i in 1..=rollouts {
        match argo.as_deref_mut() {
            Some(argo) if i % 2 == 0 => {
                argo.rollout(i).await;
                ferry.rollout(i).await;
            }
            Some(argo) => {
                ferry.rollout(i).await;
                argo.rollout(i).await;
            }
            None => ferry.rollout(i).await,
        }
        eprintln!("[bench] rollout {i}/{rollouts} done");
    }
}

/// Ferry's MicroService spec at `version`.
fn ferry_spec(version: usize) -> Value {
    json!({
        "image": ferry_e2e::PAUSE_IMAGE,
        "replicas": REPLICAS,
        "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}],
        "env": [{"name": "VERSION", "value": version.to_string()}],
        "strategy": {"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 0}}
    })
}

/// The pod template Ferry rendered for `revision`, as Argo's Rollout carries it (labelled only
/// `app.kubernetes.io/name`), and a body for Argo's Services with the ports of Ferry's.
async fn ferry_template_and_service(ctx: &TestContext, revision: &str) -> (Value, Value) {
    let deployments: Api<Deployment> = ctx.api();
    let listed = deployments
        .list(&ListParams::default().labels(&format!("{REVISION_LABEL}={revision}")))
        .await
        .expect("list Ferry's Deployments");
    let template = listed.items.first().and_then(|d| d.spec.as_ref()).map(|s| s.template.clone());
    let mut template = serde_json::to_value(template.expect("Ferry's active Deployment")).expect("template");
    template["metadata"]["labels"] = json!({"app.kubernetes.io/name": NAME});
    let service: Api<Service> = ctx.api();
    let ports = service.get(NAME).await.expect("Ferry's Service").spec.and_then(|s| s.ports);
    let service = json!({"spec": {"selector": {"app.kubernetes.io/name": NAME}, "ports": ports}});
    (template, service)
}

/// `template` with its first container's `VERSION` env set to `version`.
fn with_version(template: &Value, version: usize) -> Value {
    let mut template = template.clone();
    let env = &mut template["spec"]["containers"][0]["env"];
    if !env.is_array() {
        *env = json!([]);
    }
    let list = env.as_array_mut().expect("env is a list");
    list.retain(|e| e["name"] != "VERSION");
    list.push(json!({"name": "VERSION", "value": version.to_string()}));
    template
}

/// What a watch showed.
enum Seen {
    /// A workload of a revision, and whether every pod of it is available and its controller
    /// caught up.
    Workload { revision: Option<String>, available: bool },
    /// The revision the active Service selects.
    Service(Option<String>),
    /// The pods changed (see [`Watched::pods`]).
    Pods,
}

/// A revision's Deployment at its full size (not one scaled to zero) with every pod available.
fn revision_available(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.replicas) == Some(REPLICAS) && deployment_available(d)
}

fn replica_set_available(rs: &ReplicaSet) -> bool {
    let spec_n = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
    let s = rs.status.clone().unwrap_or_default();
    spec_n == REPLICAS
        && s.available_replicas.unwrap_or(0) >= REPLICAS
        && s.observed_generation.unwrap_or(0) >= rs.metadata.generation.unwrap_or(0)
}

/// One namespace's merged watch: workloads, the active Service, pods.
struct Watched {
    /// The label naming a revision on workloads and pods and in the Service's selector.
    label: &'static str,
    events: BoxStream<'static, Result<Seen, watcher::Error>>,
    pods: Store<Pod>,
}

impl Watched {
    fn new(
        client: &Client,
        ns: &str,
        label: &'static str,
        workloads: BoxStream<'static, Result<Seen, watcher::Error>>,
    ) -> Self {
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        let service = watcher(services, watcher::Config::default().fields(&format!("metadata.name={NAME}")))
            .default_backoff()
            .applied_objects()
            .map(move |r| {
                r.map(|s| Seen::Service(s.spec.and_then(|s| s.selector).and_then(|s| s.get(label).cloned())))
            });
        let writer = reflector::store::Writer::default();
        let pods = writer.as_reader();
        let pod_events = reflector(
            writer,
            watcher(Api::<Pod>::namespaced(client.clone(), ns), watcher::Config::default()),
        )
        .default_backoff()
        .map(|r| r.map(|_| Seen::Pods));
        let events = stream::select_all([workloads, service.boxed(), pod_events.boxed()]).boxed();
        Self { label, events, pods }
    }

    fn ferry(client: &Client, ns: &str) -> Self {
        let workloads =
            watcher(Api::<Deployment>::namespaced(client.clone(), ns), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .map(|r| {
                    r.map(|d| Seen::Workload {
                        revision: d.labels().get(REVISION_LABEL).cloned(),
                        available: revision_available(&d),
                    })
                });
        Self::new(client, ns, REVISION_LABEL, workloads.boxed())
    }

    fn argo(client: &Client, ns: &str) -> Self {
        let workloads =
            watcher(Api::<ReplicaSet>::namespaced(client.clone(), ns), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .map(|r| {
                    r.map(|rs| Seen::Workload {
                        revision: rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned(),
                        available: replica_set_available(&rs),
                    })
                });
        Self::new(client, ns, POD_TEMPLATE_HASH_LABEL, workloads.boxed())
    }

    /// The next event, before `deadline`; watch errors are retried (with backoff) and skipped.
    async fn next(&mut self, deadline: tokio::time::Instant, what: &str) -> Seen {
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(None) => panic!("the watch ended while waiting for {what}"),
                Ok(Some(Err(e))) => eprintln!("[bench] watch error (retrying): {e}"),
                Ok(Some(Ok(seen))) => return seen,
            }
        }
    }

    /// How many pods of `revision` exist (terminating ones included).
    fn pods_of(&self, revision: &str) -> usize {
        self.pods
            .state()
            .iter()
            .filter(|p| p.labels().get(self.label).map(String::as_str) == Some(revision))
            .count()
    }

    /// Waits until the active Service selects a revision whose workload is available and all of
    /// whose pods exist; returns that revision.
    async fn first_revision(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + ROLLOUT_LIMIT;
        let (mut active, mut ready) = (None::<String>, None::<String>);
        loop {
            match self.next(deadline, "the first revision to be active and available").await {
                Seen::Service(selected) => active = selected,
                Seen::Workload { revision, available: true } => ready = revision,
                _ => {}
            }
            if let Some(r) = active.as_ref().filter(|r| ready.as_ref() == Some(r))
                && self.pods_of(r) >= REPLICAS as usize
            {
                return r.clone();
            }
        }
    }
}

/// One rollout's times, in milliseconds.
struct Sample {
    /// New revision available → active Service selecting it (0 when the Service's event came
    /// first: below what can be observed).
    overhead: f64,
    /// Patch → active Service selecting the new revision.
    switch: f64,
    /// Patch → no pod of the old revision left.
    old_gone: f64,
}

/// Watches one rollout away from `old`, patched at `patched`; returns the new revision.
async fn measure(w: &mut Watched, old: &str, patched: Instant, i: usize) -> (String, Sample) {
    let deadline = tokio::time::Instant::from_std(patched) + ROLLOUT_LIMIT;
    let mut available_at: Option<(String, Instant)> = None;
    let mut switched: Option<(String, Instant)> = None;
    loop {
        match w.next(deadline, &format!("rollout {i} to switch and its old pods to go")).await {
            Seen::Workload { revision: Some(r), available: true }
                if r != old && available_at.is_none() && switched.is_none() =>
            {
                available_at = Some((r, Instant::now()));
            }
            Seen::Service(Some(selected)) if selected != old && switched.is_none() => {
                switched = Some((selected, Instant::now()));
            }
            _ => {}
        }
        let Some((new, switched_at)) = &switched else { continue };
        if w.pods_of(old) > 0 {
            continue;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let overhead = match &available_at {
            Some((r, t)) if r == new => ms(switched_at.saturating_duration_since(*t)),
            _ => 0.0,
        };
        let sample = Sample {
            overhead,
            switch: ms(switched_at.duration_since(patched)),
            old_gone: ms(patched.elapsed()),
        };
        return (new.clone(), sample);
    }
}

/// One controller's application under test.
struct Target {
    label: &'static str,
    watched: Watched,
    /// The MicroService or the Rollout.
    api: Api<DynamicObject>,
    /// The merge patch that makes rollout `i`.
    patch: Box<dyn Fn(usize) -> Value + Send>,
    active: String,
    samples: Vec<Sample>,
}

impl Target {
    async fn ferry(ctx: &TestContext) -> Self {
        let watched = Watched::ferry(&ctx.client, &ctx.namespace);
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &microservice_resource());
        let ms = DynamicObject::new(NAME, &microservice_resource()).data(json!({"spec": ferry_spec(0)}));
        api.create(&PostParams::default(), &ms).await.expect("create the MicroService");
        let patch = Box::new(|i| json!({"spec": ferry_spec(i)}));
        Self::started("Ferry", watched, api, patch).await
    }

    async fn argo(ctx: &TestContext, template: Value, service: Value) -> Self {
        let watched = Watched::argo(&ctx.client, &ctx.namespace);
        // Argo's smallest scale-down delay that scales down at all (see the module doc).
        let blue_green = json!({"scaleDownDelaySeconds": 0, "scaleDownDelayRevisionLimit": 0});
        for (ar, obj) in
            blue_green_app(NAME, REPLICAS.into(), with_version(&template, 0), service, blue_green)
        {
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ar);
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("create {}: {e}", ar.kind));
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &rollout_resource());
        let patch = Box::new(move |i| json!({"spec": {"template": with_version(&template, i)}}));
        Self::started("Argo Rollouts", watched, api, patch).await
    }

    async fn started(
        label: &'static str,
        mut watched: Watched,
        api: Api<DynamicObject>,
        patch: Box<dyn Fn(usize) -> Value + Send>,
    ) -> Self {
        let active = watched.first_revision().await;
        eprintln!("[bench] {label}: revision {active} active");
        Self { label, watched, api, patch, active, samples: Vec::new() }
    }

    async fn rollout(&mut self, i: usize) {
        let patched = Instant::now();
        self.api
            .patch(NAME, &PatchParams::default(), &Patch::Merge((self.patch)(i)))
            .await
            .unwrap_or_else(|e| panic!("{}: patch {i}: {e}", self.label));
        let (new, sample) = measure(&mut self.watched, &self.active, patched, i).await;
        self.active = new;
        self.samples.push(sample);
    }

    fn sorted(&self, field: Field) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(field).collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() as f64 - 1.0)).round();
    sorted[(rank as usize).min(sorted.len() - 1)]
}

/// One number of a [`Sample`].
type Field = fn(&Sample) -> f64;

const ROWS: [(&str, Field); 3] = [
    ("promotion overhead: new revision available → active Service switched", |s| s.overhead),
    ("patch → active Service switched", |s| s.switch),
    ("patch → old revision's pods gone", |s| s.old_gone),
];

fn print_results(ferry: &Target, argo: Option<&Target>) {
    println!(
        "rollouts: {} each, alternating; medians, ms; ratio = Ferry / Argo Rollouts",
        ferry.samples.len()
    );
    println!();
    println!("| median | Ferry | Argo Rollouts | ratio |");
    println!("|---|---:|---:|---:|");
    for (row, field) in ROWS {
        let f = percentile(&ferry.sorted(field), 50.0);
        let a = argo.map(|a| percentile(&a.sorted(field), 50.0));
        let (a_text, ratio) = match a {
            Some(a) if a > 0.0 => (format!("{a:.0}"), format!("{:.2}", f / a)),
            Some(a) => (format!("{a:.0}"), "–".into()),
            None => ("–".into(), "–".into()),
        };
        println!("| {row} | {f:.0} | {a_text} | {ratio} |");
    }
    println!();
    for t in std::iter::once(ferry).chain(argo) {
        for (row, field) in ROWS {
            let s = t.sorted(field);
            println!(
                "{}, {row}, ms: p99 {:.0}  max {:.0}  min {:.0}",
                t.label,
                percentile(&s, 99.0),
                s.last().copied().unwrap_or(f64::NAN),
                s.first().copied().unwrap_or(f64::NAN),
            );
        }
        let each: Vec<String> = t.samples.iter().map(|s| format!("{:.0}", s.overhead)).collect();
        println!("{}, each overhead, ms: {}", t.label, each.join(" "));
    }
}
