//! `make bench-operator`: operator convergence, memory and idle API traffic
//! against the local cluster. Prints numbers from one run; it asserts nothing.
//!
//! For each size N (default 100 then 1000): a fresh namespace, a fresh
//! operator process (release build, scoped to that namespace), N
//! MicroServices with autoscaling and monitoring on, created as fast as the
//! client allows. Reported: time until every child exists and every status
//! shows the current generation; the operator's peak RSS; API requests by verb
//! during an idle window after convergence (from the apiserver's
//! `apiserver_request_total`, restricted to the kinds the operator manages,
//! plus the operator's own write counter); and HTTP 429s during the round.
//! Also printed, to read those numbers against: what one write costs the
//! apiserver on the idle cluster, the no-operator floor (the same children
//! applied directly, until every Deployment is Available: what
//! kube-controller-manager and kwok need anyway), CPU seconds per process, and
//! every API request made from the first create to convergence.
//!
//! With `ARGO_ROLLOUTS_BIN` set (the Makefile builds it), each size also runs an Argo
//! Rollouts round right after Ferry's ([`argo`]), and the two are printed side by side.

#[path = "bench_operator/argo.rs"]
mod argo;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ferry_e2e::{
    OperatorProcess, PAUSE_IMAGE, deployment_available, microservice_resource, unique_suffix, wait_until,
};
use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PartialObjectMeta, PostParams,
    },
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde_json::json;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream};

/// Resources whose requests count as the operator's traffic in the idle window.
const MANAGED: [&str; 6] = [
    "microservices",
    "deployments",
    "services",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "servicemonitors",
];

struct Round {
    n: usize,
    create: Duration,
    converge: Duration,
    /// Time until every MicroService reports `Available` (its pods Ready, on kwok's schedule).
    available: Duration,
    /// CPU seconds each process spent from the first create to convergence.
    cpu: BTreeMap<String, f64>,
    /// The operator's CPU seconds from the first create until every MicroService is Available.
    operator_cpu_available: f64,
    /// API requests from the first create to convergence, by "verb resource", all clients.
    requests: BTreeMap<String, f64>,
    peak_rss_kib: u64,
    idle_by_verb: BTreeMap<String, f64>,
    idle_operator_writes: f64,
    throttled: f64,
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers, e.g. 100,1000"))
        .collect();
    let idle: u64 = std::env::var("BENCH_IDLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let client = ferry_e2e::client().await;
    let costs = write_costs(&client).await;
    let mut rounds = Vec::new();
    let mut baselines = Vec::new();
    let mut argo_rounds = Vec::new();
    let argo_bin = argo::binary();
    for (i, n) in sizes.into_iter().enumerate() {
        baselines.push(baseline(&client, n).await);
        rounds.push(round(&client, n, Duration::from_secs(idle), 18090 + i as u16).await);
        if let Some(bin) = &argo_bin {
            let replicas = bench_spec()["autoscaling"]["minReplicas"].as_i64().unwrap_or(1);
            argo_rounds.push(
                argo::round(&client, bin, n, replicas, Duration::from_secs(idle), 18190 + i as u16).await,
            );
        }
    }
    print_side_by_side(&rounds, &argo_rounds, &baselines, idle);
    println!();
    println!(
        "Apiserver CPU per write on the idle cluster ({WRITES_PER_KIND} sequential writes of each kind, one connection):"
    );
    println!("| write | apiserver CPU per write |");
    println!("|---|---:|");
    for (kind, ms) in &costs {
        println!("| {kind} | {ms:.1} ms |");
    }
    println!();
    println!(
        "Baseline, no operator: the same children (Deployment, Service, HPA, PDB, ServiceMonitor) applied directly, 16 objects' children in flight"
    );
    println!(
        "| objects | all children exist after | every Deployment Available after | CPU seconds to Available (process: s) |"
    );
    println!("|---:|---:|---:|---|");
    for f in &baselines {
        println!(
            "| {} | {:.1} s | {:.1} s | {} |",
            f.n,
            f.applied.as_secs_f64(),
            f.ready.as_secs_f64(),
            cpu_line(&f.cpu)
        );
    }
    println!();
    println!("CPU seconds from the first create to convergence, per process:");
    for r in &rounds {
        println!("- {}: {}", r.n, cpu_line(&r.cpu));
    }
    println!();
    println!(
        "API requests from the first create to convergence (all clients, by count, those of 10 or more):"
    );
    for r in &rounds {
        let mut largest: Vec<_> = r.requests.iter().collect();
        largest.sort_by(|a, b| b.1.total_cmp(a.1));
        let line: Vec<_> =
            largest.iter().take_while(|(_, v)| **v >= 10.0).map(|(k, v)| format!("{k} {v}")).collect();
        println!("- {}: {}", r.n, line.join(", "));
    }
    println!();
    println!(
        "| MicroServices | create (client) | converged | all Available | operator peak RSS | API requests in {idle} s idle (managed kinds, by verb) | operator writes while idle | HTTP 429 |"
    );
    println!("|---:|---:|---:|---:|---:|---|---:|---:|");
    for r in rounds {
        let verbs = if r.idle_by_verb.is_empty() {
            "none".to_string()
        } else {
            r.idle_by_verb.iter().map(|(v, c)| format!("{v} {c}")).collect::<Vec<_>>().join(", ")
        };
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {:.1} MiB | {} | {} | {} |",
            r.n,
            r.create.as_secs_f64(),
            r.converge.as_secs_f64(),
            r.available.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            verbs,
            r.idle_operator_writes,
            r.throttled
        );
    }
}

async fn round(client: &Client, n: usize, idle: Duration, metrics_port: u16) -> Round {
    let ns = format!("bench-{n}-{}", unique_suffix());
    create_namespace(client, &ns).await;

    let before_round = apiserver_requests(client).await;
    let addr = format!("127.0.0.1:{metrics_port}");
    let concurrency = std::env::var("BENCH_OPERATOR_CONCURRENCY").unwrap_or_else(|_| "8".into());
    let operator =
        OperatorProcess::start(&ns, "bench", &["--metrics-addr", &addr, "--concurrency", &concurrency]);
    let pid = operator.pid().expect("operator pid");

    eprintln!("[bench] {n}: creating MicroServices in {ns}");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &microservice_resource());
    // NB: convergence is observed through watches, not by polling lists: listing 1,000 full
    // MicroServices five times a second cost the apiserver more CPU than the operator's own work.
    let watched = Watched::start(client, &ns);
    let cpu_before = cpu_seconds(Some(pid));
    let api_before = apiserver_requests(client).await;
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let obj = DynamicObject::new(&format!("svc-{i:04}"), &microservice_resource())
                    .data(json!({ "spec": bench_spec() }));
                api.create(&PostParams::default(), &obj).await.expect("create msvc");
            }
        })
        .await;
    let create = start.elapsed();

    let operator = std::sync::Mutex::new(operator);
    wait_until("convergence", Duration::from_secs(600), || async {
        if let Ok(mut op) = operator.lock() {
            assert!(op.is_running(), "the operator exited:\n{}", op.log_text());
        }
        let current = watched
            .microservices
            .state()
            .iter()
            .filter(|m| {
                m.metadata.generation.is_some()
                    && m.metadata.generation == m.data["status"]["observedGeneration"].as_i64()
            })
            .count();
        let mut counts = vec![current];
        counts.extend(watched.children.iter().map(|c| c.state().len()));
        counts.iter().all(|c| *c == n).then_some(())
    })
    .await
    .expect("converged");
    let converge = start.elapsed();
    let cpu = cpu_delta(&cpu_before, &cpu_seconds(Some(pid)));
    let requests = requests_by_verb(&api_before, &apiserver_requests(client).await, |_| true);
    eprintln!("[bench] {n}: converged after {:.1} s", converge.as_secs_f64());
    // NB: the idle window starts once nothing is left to observe: every pod Ready and every
    // MicroService Available. Before that the status still changes and is rightly written.
    wait_until("every MicroService Available", Duration::from_secs(600), || async {
        let available = watched
            .microservices
            .state()
            .iter()
            .filter(|m| {
                m.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Available" && c["status"] == "True"))
            })
            .count();
        (available == n).then_some(())
    })
    .await
    .expect("every MicroService Available");
    let available = start.elapsed();
    let operator_cpu_available =
        cpu_delta(&cpu_before, &cpu_seconds(Some(pid))).get("operator").copied().unwrap_or(0.0);
    eprintln!("[bench] {n}: all Available after {:.1} s; idle window {:?}", available.as_secs_f64(), idle);

    let idle_start_api = apiserver_requests(client).await;
    let idle_start_writes = operator_writes(metrics_port).await;
    // A measurement window, not synchronisation: we count what happens in it.
    tokio::time::sleep(idle).await;
    let idle_end_api = apiserver_requests(client).await;
    let idle_end_writes = operator_writes(metrics_port).await;
    // VmHWM is the kernel's own high-water mark of the process' RSS.
    let peak_rss_kib = rss_kib(pid, "VmHWM");

    let idle_by_verb =
        requests_by_verb(&idle_start_api, &idle_end_api, |resource| MANAGED.contains(&resource));
    let throttled: f64 = idle_end_api
        .iter()
        .filter(|((_, _, code), _)| code == "429")
        .map(|(k, v)| v - before_round.get(k).copied().unwrap_or(0.0))
        // NB: an empty float sum is -0.0, which would print as "-0".
        .fold(0.0, |total, d| total + d);
    drop(operator);
    delete_namespace(client, &ns).await;
    Round {
        n,
        create,
        converge,
        available,
        cpu,
        operator_cpu_available,
        requests,
        peak_rss_kib,
        idle_by_verb,
        idle_operator_writes: idle_end_writes - idle_start_writes,
        throttled,
    }
}

/// Ferry and Argo Rollouts, size by size: the same applications on the same apiserver.
fn print_side_by_side(ferry: &[Round], argo: &[argo::ArgoRound], floors: &[Floor], idle: u64) {
    if argo.is_empty() {
        return;
    }
    let ratio = |f: f64, a: f64| if a > 0.0 { format!("{:.2}", f / a) } else { "-".into() };
    println!();
    println!(
        "Ferry vs Argo Rollouts (rollouts-controller), same apiserver, one after the other; ratio = Ferry / Argo; \
         floor = the children applied with no controller, until every Deployment is Available:"
    );
    println!(
        "| apps | create (client) Ferry / Argo | all reconciled Ferry / Argo | all Ready Ferry / Argo (ratio) | floor (Ferry / floor) | controller CPU s to all Ready Ferry / Argo (ratio) | peak RSS Ferry / Argo (ratio) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for a in argo {
        let Some(f) = ferry.iter().find(|f| f.n == a.n) else { continue };
        let floor = floors.iter().find(|b| b.n == a.n).map_or(0.0, |b| b.ready.as_secs_f64());
        let (f_rss, a_rss) = (f.peak_rss_kib as f64 / 1024.0, a.peak_rss_kib as f64 / 1024.0);
        println!(
            "| {} | {:.1} s / {:.1} s | {:.1} s / {:.1} s | {:.1} s / {:.1} s ({}) | {:.1} s ({}) | {:.1} / {:.1} ({}) | {:.1} MiB / {:.1} MiB ({}) |",
            a.n,
            f.create.as_secs_f64(),
            a.create.as_secs_f64(),
            f.converge.as_secs_f64(),
            a.reconciled.as_secs_f64(),
            f.available.as_secs_f64(),
            a.healthy.as_secs_f64(),
            ratio(f.available.as_secs_f64(), a.healthy.as_secs_f64()),
            floor,
            ratio(f.available.as_secs_f64(), floor),
            f.operator_cpu_available,
            a.controller_cpu(),
            ratio(f.operator_cpu_available, a.controller_cpu()),
            f_rss,
            a_rss,
            ratio(f_rss, a_rss),
        );
    }
    println!();
    println!("Argo round, CPU seconds per process to all Healthy, and API requests in {idle} s idle:");
    for a in argo {
        let verbs: Vec<_> = a.idle_by_verb.iter().map(|(v, c)| format!("{v} {c}")).collect();
        let verbs = if verbs.is_empty() { "none".to_string() } else { verbs.join(", ") };
        println!("- {}: {}; idle: {verbs}", a.n, cpu_line(&a.cpu));
    }
}

/// The requests made between two `apiserver_requests` readings, by "verb resource",
/// for the resources `counted` accepts.
fn requests_by_verb(
    before: &BTreeMap<(String, String, String), f64>,
    after: &BTreeMap<(String, String, String), f64>,
    counted: impl Fn(&str) -> bool,
) -> BTreeMap<String, f64> {
    let mut by_verb = BTreeMap::new();
    for ((verb, resource, code), v) in after {
        let d = v - before.get(&(verb.clone(), resource.clone(), code.clone())).copied().unwrap_or(0.0);
        if counted(resource) && d > 0.0 {
            *by_verb.entry(format!("{verb} {resource}")).or_insert(0.0) += d;
        }
    }
    by_verb
}

/// `apiserver_request_total` by (verb, resource, code), from the apiserver's /metrics.
async fn apiserver_requests(client: &Client) -> BTreeMap<(String, String, String), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(request).await.expect("apiserver /metrics");
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let (labels, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let label = |name: &str| {
            let key = format!("{name}=\"");
            labels.find(&key).map(|i| {
                let rest = &labels[i + key.len()..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_string()
            })
        };
        let key = (
            label("verb").unwrap_or_default(),
            label("resource").unwrap_or_default(),
            label("code").unwrap_or_default(),
        );
        *totals.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    totals
}

/// The operator's `ferry_operator_api_writes_total`, summed over kinds and verbs.
async fn operator_writes(port: u16) -> f64 {
    // A one-shot HTTP/1.0 GET on loopback; the response ends when the server closes.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("operator metrics port");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body.lines()
        .filter(|l| l.starts_with("ferry_operator_api_writes_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The MicroService every round creates (and [`write_costs`] writes to): autoscaling and
/// monitoring on, as the benchmark asks.
fn bench_spec() -> serde_json::Value {
    json!({
        "image": PAUSE_IMAGE,
        "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}, {"name": "metrics", "port": 9090, "protocol": "http"}],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "monitoring": {"enabled": true, "port": "metrics"}
    })
}

/// Writes of each kind sent by [`write_costs`].
const WRITES_PER_KIND: usize = 200;

/// The writes [`write_costs`] prices.
#[derive(Clone, Copy)]
enum WriteKind {
    MicroServiceStatus,
    MicroServiceAnnotation,
    ConfigMapAnnotation,
}

impl WriteKind {
    const ALL: [Self; 3] =
        [Self::MicroServiceStatus, Self::MicroServiceAnnotation, Self::ConfigMapAnnotation];

    fn label(self) -> &'static str {
        match self {
            Self::MicroServiceStatus => "MicroService status, server-side apply (as the operator writes it)",
            Self::MicroServiceAnnotation => "MicroService, merge patch of one annotation",
            Self::ConfigMapAnnotation => "ConfigMap, merge patch of one annotation",
        }
    }
}

/// What one write costs this apiserver, by kind: its CPU time (from `/proc`) over
/// [`WRITES_PER_KIND`] sequential writes, on the otherwise idle cluster. The floor the
/// convergence numbers stand on: every status write and seed of a MicroService pays it.
async fn write_costs(client: &Client) -> Vec<(&'static str, f64)> {
    let ns = format!("bench-writes-{}", unique_suffix());
    create_namespace(client, &ns).await;
    let microservices: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &microservice_resource());
    let obj = DynamicObject::new("cost", &microservice_resource()).data(json!({ "spec": bench_spec() }));
    microservices.create(&PostParams::default(), &obj).await.expect("create the MicroService");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta { name: Some("cost".into()), ..ObjectMeta::default() },
        ..Default::default()
    };
    config_maps.create(&PostParams::default(), &cm).await.expect("create the ConfigMap");

    let annotation = |i: usize| json!({"metadata": {"annotations": {"ferry.dev/bench": i.to_string()}}});
    // A status shaped like the operator's: six conditions, counts, a message that changes.
    let status = |i: usize| {
        let conditions: Vec<_> = [
            "Available",
            "Progressing",
            "Degraded",
            "DependenciesReady",
            "ServiceMonitorReady",
            "InvalidSpec",
        ]
        .iter()
        .map(|t| {
            json!({"type": t, "status": "False", "reason": "Bench", "message": format!("{t} {i}"),
                "lastTransitionTime": "2026-11-26T10:00:00Z", "observedGeneration": 1})
        })
        .collect();
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "MicroService", "status": {
            "observedGeneration": 1, "phase": "Progressing", "message": format!("write {i}"),
            "replicas": 1, "readyReplicas": 0, "availableReplicas": 0, "updatedReplicas": 1,
            "ready": "0/1", "selector": "app.kubernetes.io/name=cost", "conditions": conditions}})
    };
    let apiserver_cpu = || cpu_seconds(None).get("kube-apiserver").copied().unwrap_or(0.0);
    let merge = kube::api::PatchParams::default();
    let apply = kube::api::PatchParams::apply("ferry-bench").force();
    let mut costs = Vec::new();
    for kind in WriteKind::ALL {
        let before = apiserver_cpu();
        for i in 0..WRITES_PER_KIND {
            let written = match kind {
                WriteKind::MicroServiceStatus => microservices
                    .patch_status("cost", &apply, &kube::api::Patch::Apply(status(i)))
                    .await
                    .map(drop),
                WriteKind::MicroServiceAnnotation => microservices
                    .patch("cost", &merge, &kube::api::Patch::Merge(annotation(i)))
                    .await
                    .map(drop),
                WriteKind::ConfigMapAnnotation => {
                    config_maps.patch("cost", &merge, &kube::api::Patch::Merge(annotation(i))).await.map(drop)
                }
            };
            written.unwrap_or_else(|e| panic!("{}: {e}", kind.label()));
        }
        let per_write_ms = (apiserver_cpu() - before) * 1000.0 / WRITES_PER_KIND as f64;
        eprintln!("[bench] {}: {per_write_ms:.1} ms apiserver CPU per write", kind.label());
        costs.push((kind.label(), per_write_ms));
    }
    delete_namespace(client, &ns).await;
    costs
}

/// The floor of a round of `n`: the children one MicroService produces, applied directly by
/// the client with no controller, and how long kube-controller-manager and kwok then take
/// to make every Deployment Available. No controller that writes Deployments can be faster on
/// this cluster (Argo Rollouts writes ReplicaSets itself and can: operator/BENCHMARKS.md).
struct Floor {
    n: usize,
    /// Until every child exists (the client's applies, 16 applications at a time).
    applied: Duration,
    /// Until every Deployment is Available with its current generation observed.
    ready: Duration,
    /// CPU seconds per cluster process from the first apply to all Ready.
    cpu: BTreeMap<String, f64>,
}

/// Control-plane throughput without the operator: for `n` objects, applies the
/// children a MicroService would get (similar objects, no owner) with the same
/// concurrency as the MicroService creates, each object's children in sequence,
/// then waits until every Deployment is Available.
async fn baseline(client: &Client, n: usize) -> Floor {
    let ns = format!("bench-base-{n}-{}", unique_suffix());
    create_namespace(client, &ns).await;
    let kinds = [
        ("apps", "v1", "Deployment", "deployments"),
        ("", "v1", "Service", "services"),
        ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
    ];
    let deployments = watch_deployments(client, &ns);
    let cpu_before = cpu_seconds(None);
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let name = format!("svc-{i:04}");
                for (group, version, kind, plural) in kinds {
                    let ar = ApiResource::from_gvk_with_plural(
                        &GroupVersionKind::gvk(group, version, kind),
                        plural,
                    );
                    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                    let mut obj = DynamicObject::new(&name, &ar).data(baseline_child(kind, &name));
                    obj.metadata.labels = Some(BTreeMap::from([
                        ("app.kubernetes.io/name".to_string(), name.clone()),
                        ("app.kubernetes.io/managed-by".to_string(), "ferry-bench-baseline".to_string()),
                    ]));
                    api.patch(
                        &name,
                        &kube::api::PatchParams::apply("ferry-bench-baseline").force(),
                        &kube::api::Patch::Apply(&obj),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("baseline apply {kind} {name}: {e}"));
                }
            }
        })
        .await;
    let applied = start.elapsed();
    eprintln!("[bench] baseline {n}: children applied in {:.1} s", applied.as_secs_f64());
    wait_until("every baseline Deployment Available", Duration::from_secs(900), || async {
        (deployments.state().iter().filter(|d| deployment_available(d)).count() == n).then_some(())
    })
    .await
    .expect("every baseline Deployment Available");
    let ready = start.elapsed();
    let cpu = cpu_delta(&cpu_before, &cpu_seconds(None));
    eprintln!("[bench] baseline {n}: every Deployment Available after {:.1} s", ready.as_secs_f64());
    delete_namespace(client, &ns).await;
    Floor { n, applied, ready, cpu }
}

/// Deployments of `ns`, kept by a watch (not list polling, which loads the apiserver measured).
fn watch_deployments(client: &Client, ns: &str) -> Store<Deployment> {
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    tokio::spawn(
        watcher(api, watcher::Config::default()).default_backoff().reflect(writer).for_each(|_| async {}),
    );
    reader
}

/// The body of one baseline child, shaped like the operator's.
fn baseline_child(kind: &str, name: &str) -> serde_json::Value {
    let labels =
        json!({"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "ferry-bench-baseline"});
    let selector = json!({"matchLabels": {"app.kubernetes.io/name": name}});
    match kind {
        "Deployment" => json!({"spec": {
            "replicas": 1,
            "selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": PAUSE_IMAGE,
                    "ports": [{"name": "grpc", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                    "readinessProbe": {"grpc": {"port": 8080}},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                        "capabilities": {"drop": ["ALL"]}}
                }]
            }}
        }}),
        "Service" => json!({"spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "grpc", "port": 8080, "appProtocol": "kubernetes.io/h2c"},
                      {"name": "metrics", "port": 9090, "appProtocol": "http"}]
        }}),
        "HorizontalPodAutoscaler" => json!({"spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }}),
        "PodDisruptionBudget" => {
            json!({"spec": {"maxUnavailable": 1, "selector": selector}})
        }
        _ => json!({"spec": {
            "selector": selector,
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
        }}),
    }
}

async fn create_namespace(client: &Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta { name: Some(ns.to_string()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait_until("the default ServiceAccount", Duration::from_secs(60), || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await
    .expect("namespace ready");
}

/// CPU seconds (user + system) so far of every local-cluster process (from
/// `target/cluster/pids`) and of the operator, by name. Empty for an external cluster.
fn cpu_seconds(operator: Option<u32>) -> BTreeMap<String, f64> {
    let mut pids: Vec<(String, u32)> = std::fs::read_dir("target/cluster/pids")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect();
    pids.extend(operator.map(|p| ("operator".to_string(), p)));
    pids.into_iter()
        .filter_map(|(name, pid)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces) start at state (field 3);
            // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((name, ticks / 100.0))
        })
        .collect()
}

fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

fn cpu_line(cpu: &BTreeMap<String, f64>) -> String {
    let total: f64 = cpu.values().sum();
    let mut parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    parts.push(format!("total {total:.1}"));
    parts.join(", ")
}

/// In-memory views of the bench namespace, kept by watches.
struct Watched {
    microservices: Store<DynamicObject>,
    /// Deployments, Services, HPAs and ServiceMonitors (metadata only).
    children: Vec<Store<PartialObjectMeta<DynamicObject>>>,
}

impl Watched {
    fn start(client: &Client, ns: &str) -> Self {
        let ms_ar = microservice_resource();
        let writer = reflector::store::Writer::new(ms_ar.clone());
        let microservices = writer.as_reader();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ms_ar);
        tokio::spawn(
            watcher(api, watcher::Config::default()).default_backoff().reflect(writer).for_each(|_| async {}),
        );
        let children = [
            ("apps", "v1", "Deployment", "deployments"),
            ("", "v1", "Service", "services"),
            ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
        ]
        .into_iter()
        .map(|(group, version, kind, plural)| {
            let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let writer = reflector::store::Writer::new(ar.clone());
            let reader = writer.as_reader();
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::namespaced_with(client.clone(), ns, &ar);
            tokio::spawn(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .reflect(writer)
                    .for_each(|_| async {}),
            );
            reader
        })
        .collect();
        Self { microservices, children }
    }
}

/// Deletes a bench namespace and waits until it is gone: tearing down 1,000 objects loads the
/// control plane, and the next measurement must not pay for it.
async fn delete_namespace(client: &Client, ns: &str) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::background()).await;
    eprintln!("[bench] deleting namespace {ns}");
    wait_until("the namespace to be gone", Duration::from_secs(900), || async {
        matches!(namespaces.get_opt(ns).await, Ok(None)).then_some(())
    })
    .await
    .expect("namespace deleted");
}
