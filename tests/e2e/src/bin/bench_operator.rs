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

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ferry_e2e::{OperatorProcess, PAUSE_IMAGE, microservice_resource, unique_suffix, wait_until};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Namespace,
    core::v1::Service,
};
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta,
        PostParams,
    },
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
    let idle: u64 = std::env::var("BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let client = ferry_e2e::client().await;
    let mut rounds = Vec::new();
    for (i, n) in sizes.into_iter().enumerate() {
        rounds.push(round(&client, n, Duration::from_secs(idle), 18090 + i as u16).await);
    }
    println!();
    println!(
        "| MicroServices | create (client) | converged | operator peak RSS | API requests in {idle} s idle (managed kinds, by verb) | operator writes while idle | HTTP 429 |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|");
    for r in rounds {
        let verbs = if r.idle_by_verb.is_empty() {
            "none".to_string()
        } else {
            r.idle_by_verb
                .iter()
                .map(|(v, c)| format!("{v} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} MiB | {} | {} | {} |",
            r.n,
            r.create.as_secs_f64(),
            r.converge.as_secs_f64(),
            r.peak_rss_kib as f64 / 1024.0,
            verbs,
            r.idle_operator_writes,
            r.throttled
        );
    }
}

async fn round(client: &Client, n: usize, idle: Duration, metrics_port: u16) -> Round {
    let ns = format!("bench-{n}-{}", unique_suffix());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    wait_until(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await
    .expect("namespace ready");

    let before_round = apiserver_requests(client).await;
    let addr = format!("127.0.0.1:{metrics_port}");
    let operator = OperatorProcess::start(
        &ns,
        "bench",
        &["--metrics-addr", &addr, "--concurrency", "8"],
    );
    let pid = operator.pid().expect("operator pid");

    eprintln!("[bench] {n}: creating MicroServices in {ns}");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &microservice_resource());
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let obj = DynamicObject::new(&format!("svc-{i:04}"), &microservice_resource()).data(json!({"spec": {
                    "image": PAUSE_IMAGE,
                    "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}, {"name": "metrics", "port": 9090, "protocol": "http"}],
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                    "monitoring": {"enabled": true, "port": "metrics"}
                }}));
                api.create(&PostParams::default(), &obj).await.expect("create msvc");
            }
        })
        .await;
    let create = start.elapsed();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let sm_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let sms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &sm_resource);
    let operator = std::sync::Mutex::new(operator);
    wait_until("convergence", Duration::from_secs(600), || async {
        if let Ok(mut op) = operator.lock() {
            assert!(op.is_running(), "the operator exited:\n{}", op.log_text());
        }
        let lp = ListParams::default();
        let current = api
            .list(&lp)
            .await
            .ok()?
            .items
            .iter()
            .filter(|m| {
                m.metadata.generation.is_some()
                    && m.metadata.generation == m.data["status"]["observedGeneration"].as_i64()
            })
            .count();
        let counts = [
            current,
            deployments.list_metadata(&lp).await.ok()?.items.len(),
            services.list_metadata(&lp).await.ok()?.items.len(),
            hpas.list_metadata(&lp).await.ok()?.items.len(),
            sms.list_metadata(&lp).await.ok()?.items.len(),
        ];
        counts.iter().all(|c| *c == n).then_some(())
    })
    .await
    .expect("converged");
    let converge = start.elapsed();
    eprintln!(
        "[bench] {n}: converged after {:.1} s; idle window {:?}",
        converge.as_secs_f64(),
        idle
    );

    let idle_start_api = apiserver_requests(client).await;
    let idle_start_writes = operator_writes(metrics_port).await;
    // A measurement window, not synchronisation: we count what happens in it.
    tokio::time::sleep(idle).await;
    let idle_end_api = apiserver_requests(client).await;
    let idle_end_writes = operator_writes(metrics_port).await;
    // VmHWM is the kernel's own high-water mark of the process' RSS.
    let peak_rss_kib = rss_kib(pid, "VmHWM");

    let mut idle_by_verb = BTreeMap::new();
    for (key, v) in &idle_end_api {
        let (verb, resource, _) = key;
        if MANAGED.contains(&resource.as_str()) {
            let d = v - idle_start_api.get(key).copied().unwrap_or(0.0);
            if d > 0.0 {
                *idle_by_verb
                    .entry(format!("{verb} {resource}"))
                    .or_insert(0.0) += d;
            }
        }
    }
    let throttled: f64 = idle_end_api
        .iter()
        .filter(|((_, _, code), _)| code == "429")
        .map(|(k, v)| v - before_round.get(k).copied().unwrap_or(0.0))
        .sum();
    drop(operator);
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::background())
        .await;
    Round {
        n,
        create,
        converge,
        peak_rss_kib,
        idle_by_verb,
        idle_operator_writes: idle_end_writes - idle_start_writes,
        throttled,
    }
}

/// `apiserver_request_total` by (verb, resource, code), from the apiserver's /metrics.
async fn apiserver_requests(client: &Client) -> BTreeMap<(String, String, String), f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("apiserver /metrics");
    let mut totals = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
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
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("operator metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
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
