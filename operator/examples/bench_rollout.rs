//! Blue-green promotion overhead, against a live cluster: the time from the new revision's
//! Deployment being fully available to the active Service selecting it. Prints numbers; asserts
//! nothing.
//!
//! ```sh
//! KUBECONFIG=target/cluster/kubeconfig FERRY_OPERATOR_BIN=$PWD/target/debug/operator \
//!   cargo run -p ferry-operator --example bench_rollout -- 30
//! ```
//!
//! A fresh namespace and a fresh operator process (scoped to it) run N rollouts of one MicroService
//! (2 replicas, `scaleDownDelaySeconds: 0`, no checks). One merged watch of the namespace's
//! Deployments and the Service timestamps, on arrival, (a) the first event showing the new revision
//! with every pod available and the Deployment controller caught up, and (b) the first event showing
//! the Service selecting it. Both are seen through the same watch connection kind, so the watch
//! delivery latency largely cancels out.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use ferry_operator::{crd::MicroService, keys::REVISION_LABEL};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

enum Seen {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
}

fn fully_available(d: &Deployment, n: i32) -> bool {
    let spec_n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
    let s = d.status.clone().unwrap_or_default();
    spec_n == n
        && s.available_replicas.unwrap_or(0) >= n
        && s.updated_replicas.unwrap_or(0) >= n
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() as f64 - 1.0)).round();
    sorted[(rank as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rollouts: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let replicas = 2;
    let bin = std::env::var("FERRY_OPERATOR_BIN")
        .map_err(|_| anyhow::anyhow!("set FERRY_OPERATOR_BIN to the operator binary"))?;
    let client = Client::try_default().await?;
    let ns = format!(
        "bench-rollout-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta { name: Some(ns.clone()), ..ObjectMeta::default() },
                ..Namespace::default()
            },
        )
        .await?;
    let mut operator = tokio::process::Command::new(&bin)
        .args(["--namespace", &ns, "--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;

    let result = run(&client, &ns, rollouts, replicas).await;
    let _ = operator.kill().await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    let (overheads, totals) = result?;

    let mut sorted = overheads.clone();
    sorted.sort_by(f64::total_cmp);
    let mut totals_sorted = totals.clone();
    totals_sorted.sort_by(f64::total_cmp);
    println!("rollouts: {}", overheads.len());
    println!(
        "promotion overhead (green fully available -> active selector on green), ms: p50 {:.0}  p99 {:.0}  max {:.0}  min {:.0}",
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
        sorted.first().copied().unwrap_or(f64::NAN),
    );
    println!(
        "whole rollout (spec patch -> active selector on green), ms: p50 {:.0}  p99 {:.0}",
        percentile(&totals_sorted, 50.0),
        percentile(&totals_sorted, 99.0),
    );
    println!(
        "each overhead, ms: {}",
        overheads.iter().map(|o| format!("{o:.0}")).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

async fn run(
    client: &Client,
    ns: &str,
    rollouts: usize,
    replicas: i32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let microservices: Api<MicroService> = Api::namespaced(client.clone(), ns);
    let d_stream = watcher(deployments, watcher::Config::default())
        .applied_objects()
        .map(|r| r.map(|d| Seen::Deployment(Box::new(d))));
    let s_stream = watcher(services, watcher::Config::default().fields("metadata.name=bench"))
        .applied_objects()
        .map(|r| r.map(|s| Seen::Service(Box::new(s))));
    let mut events = stream::select(d_stream.boxed(), s_stream.boxed());

    let spec = |version: usize| {
        json!({
            "image": "registry.k8s.io/pause:3.10",
            "replicas": replicas,
            "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}],
            "env": [{"name": "VERSION", "value": version.to_string()}],
            "strategy": {"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 0}}
        })
    };
    let ms: MicroService = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "MicroService",
        "metadata": {"name": "bench"}, "spec": spec(0)
    }))?;
    microservices.create(&PostParams::default(), &ms).await?;

    let selected = |s: &Service| {
        s.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| s.get(REVISION_LABEL).cloned())
    };
    // Wait for the first revision to be active and available.
    let mut active: Option<String> = None;
    let mut active_ready = false;
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    while !(active.is_some() && active_ready) {
        let next = tokio::time::timeout(limit.saturating_sub(start.elapsed()), events.next())
            .await
            .map_err(|_| anyhow::anyhow!("the first revision did not become active"))?;
        match next.transpose()? {
            Some(Seen::Service(s)) => active = selected(&s),
            Some(Seen::Deployment(d)) => {
                if d.labels().get(REVISION_LABEL) == active.as_ref() && active.is_some() {
                    active_ready = fully_available(&d, replicas);
                }
            }
            None => anyhow::bail!("watch ended"),
        }
    }

    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    for i in 1..=rollouts {
        let old = active.clone();
        let patched = Instant::now();
        microservices
            .patch("bench", &PatchParams::default(), &Patch::Merge(json!({"spec": spec(i)})))
            .await?;
        let mut available_at: Option<(String, Instant)> = None;
        let switched_at = loop {
            let next = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .map_err(|_| anyhow::anyhow!("rollout {i} did not switch within 60 s"))?;
            match next.transpose()? {
                Some(Seen::Deployment(d)) => {
                    let hash = d.labels().get(REVISION_LABEL).cloned();
                    if available_at.is_none()
                        && hash.is_some()
                        && hash != old
                        && fully_available(&d, replicas)
                    {
                        available_at = hash.map(|h| (h, Instant::now()));
                    }
                }
                Some(Seen::Service(s)) => {
                    let sel = selected(&s);
                    if sel.is_some() && sel != old {
                        break (sel, Instant::now());
                    }
                }
                None => anyhow::bail!("watch ended"),
            }
        };
        let (green, t_switch) = switched_at;
        let overhead = match &available_at {
            Some((h, t)) if Some(h) == green.as_ref() => {
                t_switch.saturating_duration_since(*t).as_secs_f64() * 1000.0
            }
            // NB: the Service event arrived before the Deployment event that showed green
            // available (two watch connections): the overhead is below what can be observed.
            _ => 0.0,
        };
        overheads.push(overhead);
        totals.push(t_switch.duration_since(patched).as_secs_f64() * 1000.0);
        active = green;
    }
    Ok((overheads, totals))
}
