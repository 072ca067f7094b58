//! The HorizontalPodAutoscaler Ferry generates, fed by a real metrics-server,
//! acting on real pods: kind's node (`make kind-up`), metrics-server installed
//! by `tests/e2e/monitoring/metrics-server/install.sh`, the operator chart and
//! the shop as in `real_node.rs`.
//!
//! A bounded `CreateOrder` load against the order Service burns order's CPU
//! (request 50m here, target 70%); the generated HPA, which targets the
//! MicroService's scale subresource, must scale order out from `minReplicas`,
//! the new pods must become Ready, and once the load stops order must scale
//! back in. The stabilization windows are shortened through
//! `spec.autoscaling.behavior` here, in the test only; the product keeps the
//! Kubernetes defaults.
//!
//! Run like `real_node.rs`: inside the node's network namespace, one test at a
//! time, release build (tests/e2e/run.sh phase 3). Runtime: about 3 minutes a test.

use std::time::{Duration, Instant};

use ferry_e2e::{
    TestContext, in_namespace,
    shop::{self, LoadReport, ShopOptions},
    tools, wait_until,
};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
use kube::Api;
use serde_json::{Value, json};

/// Order's replica bounds in these tests (the shop's own are 2 and 8; four
/// fit the two cores next to inventory, PostgreSQL and the load).
const MIN_REPLICAS: i32 = 2;
const MAX_REPLICAS: i32 = 4;
/// `CreateOrder` calls per second: at 300/s two pods used 110% of a 100m
/// request; 200/s is well past 70% of two 50m requests.
const LOAD_RATE: u32 = 200;
/// The load never runs longer than this, scaled out or not.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
const ORDER_PODS: &str = "ferry.dev/microservice=order";
const RELEASE: &str = "ferry-hpa";
/// Order's CPU request in these tests (the shop's is 100m). The node has two
/// cores and the control plane requests about one: blue and green at
/// [`MAX_REPLICAS`] each, next to inventory, must still be schedulable.
const ORDER_CPU_REQUEST: &str = "50m";

/// `spec.autoscaling.behavior` for the tests: no scale-up stabilization, up
/// to two pods per 15 s; scale-down after a 15 s window (the default is 5
/// minutes) or, with `scale_down: false`, never (`selectPolicy: Disabled`).
fn behavior(scale_down: bool) -> Value {
    let down = if scale_down {
        json!({"stabilizationWindowSeconds": 15, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]})
    } else {
        json!({"selectPolicy": "Disabled"})
    };
    json!({
        "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 15}]},
        "scaleDown": down,
    })
}

async fn hpa(ctx: &TestContext) -> Option<HorizontalPodAutoscaler> {
    ctx.api::<HorizontalPodAutoscaler>().get_opt("order").await.ok().flatten()
}

fn desired_replicas(hpa: &HorizontalPodAutoscaler) -> i32 {
    hpa.status.as_ref().map(|s| s.desired_replicas).unwrap_or_default()
}

/// The CPU utilization (percent of the request) the HPA last computed.
fn cpu_utilization(hpa: &HorizontalPodAutoscaler) -> Option<i32> {
    let metrics = hpa.status.as_ref()?.current_metrics.as_ref()?;
    metrics.iter().find_map(|m| m.resource.as_ref()?.current.average_utilization)
}

/// One line on what the HPA sees and decides, for progress and failures.
async fn hpa_state(ctx: &TestContext) -> String {
    let Some(hpa) = hpa(ctx).await else { return "no HPA order".into() };
    let status = hpa.status.clone().unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.unwrap_or_default()))
        .collect();
    format!(
        "HPA order: cpu {:?}%, current {:?}, desired {}; {}",
        cpu_utilization(&hpa),
        status.current_replicas,
        desired_replicas(&hpa),
        conditions.join("; ")
    )
}

/// Waits for `check` on the HPA; the failure names the HPA's state.
async fn wait_for_hpa<T>(
    ctx: &TestContext,
    what: &str,
    limit: Duration,
    check: impl Fn(&HorizontalPodAutoscaler) -> Option<T>,
) -> T {
    let outcome = wait_until(what, limit, || async { hpa(ctx).await.as_ref().and_then(&check) }).await;
    match outcome {
        Ok(value) => value,
        Err(e) => panic!("{e}; {}", hpa_state(ctx).await),
    }
}

/// The shop as `shop::deploy` makes it, with order's `autoscaling` and CPU
/// request set in its manifest (the test's, not the product's), under a chart
/// release name of its own: the chart's ClusterRoles are named after the
/// release, so another suite's `ferry` release on the same cluster (the
/// monitoring tests) cannot collide with this one.
async fn deploy_shop(ctx: &TestContext, autoscaling: Value) -> tools::HelmRelease {
    let watch = format!("watchNamespace={}", ctx.namespace);
    let release =
        tools::HelmRelease::install(RELEASE, &ctx.namespace, &["--set", &watch, "--set", "image.tag=dev"]);
    wait_until("the operator pod is Ready", Duration::from_secs(120), || async {
        let pods = shop::ready_pods(ctx, "app.kubernetes.io/name=ferry-operator").await;
        (!pods.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut list: Value =
        serde_json::from_str(&shop::shop_manifests(ctx, &ShopOptions::default())).expect("JSON list");
    for item in list["items"].as_array_mut().expect("items") {
        if item["kind"] == "MicroService" && item["metadata"]["name"] == "order" {
            item["spec"]["autoscaling"] = autoscaling.clone();
            item["spec"]["resources"]["requests"]["cpu"] = json!(ORDER_CPU_REQUEST);
        }
    }
    let manifests = list.to_string();
    tools::run_ok("kubectl", &["apply", "-n", &ctx.namespace, "-f", "-"], Some(&manifests), &[]);
    for name in ["inventory", "order"] {
        let target = format!("microservice/{name}");
        let args = ["wait", "-n", &ctx.namespace, "--for=condition=Available", &target, "--timeout=180s"];
        tools::run_ok("kubectl", &args, None, &[]);
    }
    let inventory = shop::channels(&shop::service_endpoint(ctx, "inventory").await, 1).await;
    shop::set_stock(inventory[0].clone(), 10_000_000).await;
    release
}

/// The shop with order autoscaled between [`MIN_REPLICAS`] and
/// [`MAX_REPLICAS`] at 70% CPU, once the HPA has a CPU measurement from
/// metrics-server and order runs at `minReplicas`.
async fn autoscaled_shop(ctx: &TestContext, scale_down: bool) -> tools::HelmRelease {
    shop::require_real_pods();
    let autoscaling = json!({
        "minReplicas": MIN_REPLICAS,
        "maxReplicas": MAX_REPLICAS,
        "targetCPUUtilizationPercentage": 70,
        "behavior": behavior(scale_down),
    });
    let release = deploy_shop(ctx, autoscaling).await;
    let deployments: Api<Deployment> = ctx.api();
    let order = deployments.list(&kube::api::ListParams::default().labels(ORDER_PODS)).await.expect("list");
    let request =
        order.items[0].spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| {
            p.containers[0].resources.as_ref()?.requests.as_ref()?.get("cpu").map(|q| q.0.clone())
        });
    assert_eq!(request.as_deref(), Some(ORDER_CPU_REQUEST), "order's rendered CPU request");
    let idle =
        wait_for_hpa(ctx, "the HPA to measure order's CPU at minReplicas", Duration::from_secs(120), |h| {
            (desired_replicas(h) == MIN_REPLICAS).then_some(())?;
            cpu_utilization(h)
        })
        .await;
    println!("order idle at {MIN_REPLICAS} pods: {idle}% of its {ORDER_CPU_REQUEST} CPU request");
    release
}

/// What one load run measured, from the load's start.
struct ScaleOut {
    /// The HPA's desiredReplicas when it first went above `minReplicas`.
    desired: i32,
    until_desired: Duration,
    until_ready: Duration,
    /// When the load stopped (once the new pods were Ready).
    stopped_at: Duration,
    load: LoadReport,
}

/// Runs the load against the order Service until the HPA wants more than
/// `minReplicas` and that many order pods are Ready, then stops it.
async fn scale_out_under_load(ctx: &TestContext) -> ScaleOut {
    let order = shop::channels(&shop::service_endpoint(ctx, "order").await, 8).await;
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    let load = tokio::spawn(shop::create_order_load(order, LOAD_RATE, LOAD_LIMIT, 2048, stop_rx));
    let desired = wait_for_hpa(ctx, "the HPA to want more order pods", Duration::from_secs(180), |h| {
        (desired_replicas(h) > MIN_REPLICAS).then(|| desired_replicas(h))
    })
    .await;
    let until_desired = started.elapsed();
    println!("{}", hpa_state(ctx).await);
    let ready = wait_until(&format!("{desired} Ready order pods"), Duration::from_secs(120), || async {
        let ready = shop::ready_pods(ctx, ORDER_PODS).await.len() as i32;
        (ready >= desired).then_some(ready)
    })
    .await;
    if let Err(e) = ready {
        panic!("{e}; {}", hpa_state(ctx).await);
    }
    let until_ready = started.elapsed();
    let top = tools::run_ok("kubectl", &["top", "pods", "-n", &ctx.namespace, "-l", ORDER_PODS], None, &[]);
    println!("kubectl top pods -l {ORDER_PODS}:\n{top}");
    assert!(top.lines().skip(1).count() >= MIN_REPLICAS as usize, "kubectl top lists order's pods:\n{top}");
    let _ = stop.send(());
    let stopped_at = started.elapsed();
    let load = load.await.expect("load task");
    println!(
        "load: {} sent at {:.0}/s offered, {} acknowledged, {} failed",
        load.sent,
        load.offered_rate(),
        load.acknowledged.len(),
        load.failures.len()
    );
    assert!(load.acknowledged.len() > 1000, "the load ran: {} acknowledged", load.acknowledged.len());
    ScaleOut { desired, until_desired, until_ready, stopped_at, load }
}

#[tokio::test]
#[ignore = "needs real pods and metrics-server (make kind-up); run by tests/e2e/run.sh"]
async fn the_generated_autoscaler_scales_order_out_under_cpu_load_and_back_in_after_it() {
    in_namespace("real-hpa", |ctx| async move {
        let _release = autoscaled_shop(&ctx, true).await;
        let out = scale_out_under_load(&ctx).await;
        let load_ended = Instant::now();
        wait_for_hpa(&ctx, "the HPA to want minReplicas again", Duration::from_secs(240), |h| {
            (desired_replicas(h) == MIN_REPLICAS).then_some(())
        })
        .await;
        let until_desired_min = load_ended.elapsed();
        wait_until("order back at minReplicas Ready pods and no more", Duration::from_secs(120), || async {
            let ms = ctx.microservices().get("order").await.ok()?;
            let replicas = ms.data["status"]["replicas"].as_i64()?;
            let ready = shop::ready_pods(&ctx, ORDER_PODS).await.len() as i64;
            (replicas == i64::from(MIN_REPLICAS) && ready == replicas).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let until_min = load_ended.elapsed();
        println!(
            "HPA timings: load start → desiredReplicas {} (> min {MIN_REPLICAS}) {:.1} s, → {} new pods Ready {:.1} s \
             (load stopped at {:.1} s, {} calls); load end → desiredReplicas {MIN_REPLICAS} {:.1} s, → {MIN_REPLICAS} pods {:.1} s",
            out.desired,
            out.until_desired.as_secs_f64(),
            out.desired - MIN_REPLICAS,
            out.until_ready.as_secs_f64(),
            out.stopped_at.as_secs_f64(),
            out.load.sent,
            until_desired_min.as_secs_f64(),
            until_min.as_secs_f64(),
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods and metrics-server (make kind-up); run by tests/e2e/run.sh"]
async fn a_blue_green_rollout_started_while_the_autoscaler_has_scaled_order_out_starts_green_at_its_count() {
    in_namespace("real-hpa-bg", |ctx| async move {
        // Scale-down disabled: the count the HPA chose under load stays while green rolls.
        let _release = autoscaled_shop(&ctx, false).await;
        let out = scale_out_under_load(&ctx).await;
        let api = ctx.microservices();
        let ms = api.get("order").await.expect("get order");
        let count = ms.data["spec"]["replicas"].as_i64().expect("the HPA wrote spec.replicas") as i32;
        assert!(count >= out.desired, "spec.replicas {count} carries the HPA's decision {}", out.desired);
        let blue = shop::active_revision(&ctx, "order").await.expect("order's active revision");
        let patch =
            json!([{"op": "add", "path": "/spec/env/-", "value": {"name": "ROLLOUT", "value": "green"}}]);
        tools::run_ok(
            "kubectl",
            &["patch", "-n", &ctx.namespace, "microservice/order", "--type=json", "-p", &patch.to_string()],
            None,
            &[],
        );
        let deployments: Api<Deployment> = ctx.api();
        let (green, replicas) = wait_until("order's green Deployment", Duration::from_secs(60), || async {
            let ms = api.get("order").await.ok()?;
            let green = ms.data["status"]["blueGreen"]["previewRevision"]["hash"].as_str()?.to_string();
            let d = deployments.get_opt(&format!("order-{green}")).await.ok()??;
            Some((green, d.spec?.replicas?))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(green, blue);
        assert_eq!(replicas, count, "green starts at the HPA's count, not at minReplicas {MIN_REPLICAS}");
        let selector = format!("{ORDER_PODS},{}={green}", shop::REVISION_LABEL);
        let green_ready =
            wait_until(&format!("{count} Ready green order pods"), Duration::from_secs(180), || async {
                (shop::ready_pods(&ctx, &selector).await.len() as i32 >= count).then_some(())
            })
            .await;
        if let Err(e) = green_ready {
            panic!("{e}; {}", hpa_state(&ctx).await);
        }
        let blue_ready =
            shop::ready_pods(&ctx, &format!("{ORDER_PODS},{}={blue}", shop::REVISION_LABEL)).await;
        assert_eq!(
            blue_ready.len() as i32,
            count,
            "blue keeps serving at the HPA's count during the preview"
        );
        println!("green {green} started at {count} replicas, the HPA's count (blue {blue}); all Ready");
    })
    .await;
}
