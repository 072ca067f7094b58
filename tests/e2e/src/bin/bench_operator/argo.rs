//! The Argo Rollouts round of `make bench-operator` (issue 21 item 6): the same N
//! applications run by Argo Rollouts' own controller, against the same apiserver, right
//! after Ferry's round of that size.
//!
//! Per application the client creates what an Argo user writes for what one MicroService
//! gives: a Rollout (blue-green, auto-promotion on, the pod template of the baseline's
//! Deployment, as many replicas as Ferry's Deployment gets), its active and preview
//! Services ([`ferry_e2e::argo_rollouts::blue_green_app`]), an HPA on the Rollout and a
//! PDB. The controller runs as a process, namespaced to the round's namespace, without
//! leader election ([`ferry_e2e::argo_rollouts::start_controller`]).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

pub use ferry_e2e::argo_rollouts::binary;
use ferry_e2e::{
    argo_rollouts::{blue_green_app, rollout_resource, start_controller},
    unique_suffix, wait_until,
};
use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde_json::json;

use super::{
    apiserver_requests, baseline_child, cpu_delta, cpu_seconds, create_namespace, delete_namespace, rss_kib,
};

/// Resources whose requests count as the controller's traffic in the idle window.
const MANAGED: [&str; 5] =
    ["rollouts", "replicasets", "services", "horizontalpodautoscalers", "poddisruptionbudgets"];

/// One Argo round's numbers.
pub struct ArgoRound {
    pub n: usize,
    /// Time to create the 5 objects of every application (client side).
    pub create: Duration,
    /// Time until every Rollout's status shows its current generation.
    pub reconciled: Duration,
    /// Time until every Rollout reports `status.phase: Healthy`.
    pub healthy: Duration,
    /// CPU seconds per process from the first create until every Rollout is Healthy.
    pub cpu: BTreeMap<String, f64>,
    pub peak_rss_kib: u64,
    pub idle_by_verb: BTreeMap<String, f64>,
}

impl ArgoRound {
    pub fn controller_cpu(&self) -> f64 {
        self.cpu.get("rollouts-controller").copied().unwrap_or(0.0)
    }
}

/// The objects of one application, in creation order: Services first, as a user applying
/// a manifest would have them before the Rollout naming them; then its HPA and PDB.
fn app_objects(name: &str, replicas: i64) -> Vec<(ApiResource, DynamicObject)> {
    let gvk = |g: &str, v: &str, k: &str, p: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), p)
    };
    let template = baseline_child("Deployment", name)["spec"]["template"].clone();
    let mut objects = blue_green_app(name, replicas, template, baseline_child("Service", name), json!({}));
    let mut hpa = baseline_child("HorizontalPodAutoscaler", name);
    hpa["spec"]["scaleTargetRef"] =
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": name});
    objects.extend(
        [
            (gvk("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"), hpa),
            (
                gvk("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
                baseline_child("PodDisruptionBudget", name),
            ),
        ]
        .into_iter()
        .map(|(ar, data)| {
            let obj = DynamicObject::new(name, &ar).data(data);
            (ar, obj)
        }),
    );
    objects
}

/// How many watched Rollouts satisfy `ok`.
fn count(store: &Store<DynamicObject>, ok: impl Fn(&DynamicObject) -> bool) -> usize {
    store.state().iter().filter(|r| ok(r)).count()
}

fn reconciled(r: &DynamicObject) -> bool {
    // Argo writes observedGeneration as a string; compare it as text.
    let observed = &r.data["status"]["observedGeneration"];
    let observed = observed.as_str().map(str::to_string).or_else(|| observed.as_i64().map(|g| g.to_string()));
    r.metadata.generation.is_some_and(|g| observed == Some(g.to_string()))
}

/// One round: `n` applications, a fresh namespace, a fresh controller; `replicas` per app.
pub async fn round(
    client: &Client,
    bin: &str,
    n: usize,
    replicas: i64,
    idle: Duration,
    port: u16,
) -> ArgoRound {
    let ns = format!("bench-argo-{n}-{}", unique_suffix());
    create_namespace(client, &ns).await;
    let controller = std::sync::Mutex::new(start_controller(bin, &ns, port));
    let pid = controller.lock().expect("controller").id().expect("controller pid");

    let writer = reflector::store::Writer::new(rollout_resource());
    let rollouts = writer.as_reader();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &rollout_resource());
    tokio::spawn(
        watcher(api, watcher::Config::default()).default_backoff().reflect(writer).for_each(|_| async {}),
    );

    eprintln!("[bench] argo {n}: creating Rollouts, Services, HPAs and PDBs in {ns}");
    let cpu_before = cpu_seconds(Some(pid));
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                for (ar, obj) in app_objects(&format!("svc-{i:04}"), replicas) {
                    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                    api.create(&PostParams::default(), &obj)
                        .await
                        .unwrap_or_else(|e| panic!("create {}: {e}", ar.kind));
                }
            }
        })
        .await;
    let create = start.elapsed();
    let alive = || {
        if let Ok(mut c) = controller.lock() {
            assert!(
                matches!(c.try_wait(), Ok(None)),
                "rollouts-controller exited; see target/bench/{ns}-rollouts-controller.log"
            );
        }
    };
    wait_until("every Rollout reconciled", Duration::from_secs(600), || async {
        alive();
        (count(&rollouts, reconciled) == n).then_some(())
    })
    .await
    .expect("every Rollout reconciled");
    let reconciled_after = start.elapsed();
    wait_until("every Rollout Healthy", Duration::from_secs(600), || async {
        alive();
        (count(&rollouts, |r| r.data["status"]["phase"] == "Healthy") == n).then_some(())
    })
    .await
    .expect("every Rollout Healthy");
    let healthy = start.elapsed();
    let mut cpu = cpu_delta(&cpu_before, &cpu_seconds(Some(pid)));
    if let Some(c) = cpu.remove("operator") {
        cpu.insert("rollouts-controller".into(), c);
    }
    eprintln!("[bench] argo {n}: all Healthy after {:.1} s; idle window {idle:?}", healthy.as_secs_f64());

    let idle_start = apiserver_requests(client).await;
    // A measurement window, not synchronisation: we count what happens in it.
    tokio::time::sleep(idle).await;
    let idle_by_verb =
        super::requests_by_verb(&idle_start, &apiserver_requests(client).await, |r| MANAGED.contains(&r));
    let peak_rss_kib = rss_kib(pid, "VmHWM");
    drop(controller);
    delete_namespace(client, &ns).await;
    ArgoRound { n, create, reconciled: reconciled_after, healthy, cpu, peak_rss_kib, idle_by_verb }
}
