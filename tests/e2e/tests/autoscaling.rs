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
    TestContext,
    autoscale::{self, Autoscaling, ORDER_CPU_REQUEST, ORDER_PODS, ScaleOut, Target},
    in_namespace,
    shop::{self, LoadReport, ShopOptions},
    tools,
};

/// Order's replica bounds in these tests (the shop's own are 2 and 8; four
/// fit the two cores next to inventory, PostgreSQL and the load).
const MIN_REPLICAS: i32 = 2;
const MAX_REPLICAS: i32 = 4;
/// `CreateOrder` calls per second: at 300/s two pods used 110% of a 100m
/// request; 200/s is well past 70% of two 50m requests.
const LOAD_RATE: u32 = 200;
/// The load never runs longer than this, scaled out or not.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
const RELEASE: &str = "ferry-hpa";

/// Order autoscaled between [`MIN_REPLICAS`] and [`MAX_REPLICAS`] at 70% CPU.
fn autoscaling(scale_down: bool) -> Autoscaling {
    Autoscaling { min: MIN_REPLICAS, max: MAX_REPLICAS, target: Target::CpuPercent(70), scale_down }
}

/// The shop with order autoscaled by [`autoscaling`], once the HPA has a CPU
/// measurement from metrics-server and order runs at `minReplicas`.
async fn autoscaled_shop(ctx: &TestContext, scale_down: bool) -> tools::HelmRelease {
    shop::require_real_pods();
    let scaler = autoscaling(scale_down);
    let release = autoscale::deploy_shop(ctx, RELEASE, &ShopOptions::default(), &scaler).await;
    let request = autoscale::rendered_order_cpu_request(ctx).await;
    assert_eq!(request.as_deref(), Some(ORDER_CPU_REQUEST), "order's rendered CPU request");
    let (idle, _) = scaler.wait_idle(ctx).await;
    println!("order idle at {MIN_REPLICAS} pods: {idle}% of its {ORDER_CPU_REQUEST} CPU request");
    release
}

/// Runs the load against the order Service until the HPA wants more than
/// `minReplicas` and that many order pods are Ready, then stops it; times are
/// from the load's start. Also returns when the load stopped.
async fn scale_out_under_load(ctx: &TestContext, scaler: &Autoscaling) -> (ScaleOut, Duration, LoadReport) {
    let load = autoscale::Load::start(ctx, LOAD_RATE, LOAD_LIMIT, 8, 2048).await;
    let started = load.started;
    let out = scaler.scale_out(ctx, started, Duration::from_secs(180)).await;
    let top = tools::run_ok("kubectl", &["top", "pods", "-n", &ctx.namespace, "-l", ORDER_PODS], None, &[]);
    println!("kubectl top pods -l {ORDER_PODS}:\n{top}");
    assert!(top.lines().skip(1).count() >= MIN_REPLICAS as usize, "kubectl top lists order's pods:\n{top}");
    let stopped_at = started.elapsed();
    let load = load.stop().await;
    assert!(load.acknowledged.len() > 1000, "the load ran: {} acknowledged", load.acknowledged.len());
    (out, stopped_at, load)
}

#[tokio::test]
#[ignore = "needs real pods and metrics-server (make kind-up); run by tests/e2e/run.sh"]
async fn the_generated_autoscaler_scales_order_out_under_cpu_load_and_back_in_after_it() {
    in_namespace("real-hpa", |ctx| async move {
        let _release = autoscaled_shop(&ctx, true).await;
        let scaler = autoscaling(true);
        let (out, stopped_at, load) = scale_out_under_load(&ctx, &scaler).await;
        let load_ended = Instant::now();
        scaler
            .wait_for(&ctx, "the HPA to want minReplicas again", Duration::from_secs(240), |h| {
                (autoscale::desired_replicas(h) == MIN_REPLICAS).then_some(())
            })
            .await;
        let until_desired_min = load_ended.elapsed();
        scaler.wait_back_at_min(&ctx).await;
        let until_min = load_ended.elapsed();
        println!(
            "HPA timings: load start → desiredReplicas {} (> min {MIN_REPLICAS}) {:.1} s, → {} new pods Ready {:.1} s \
             (load stopped at {:.1} s, {} calls); load end → desiredReplicas {MIN_REPLICAS} {:.1} s, → {MIN_REPLICAS} pods {:.1} s",
            out.desired,
            out.until_desired.as_secs_f64(),
            out.desired - MIN_REPLICAS,
            out.until_ready.as_secs_f64(),
            stopped_at.as_secs_f64(),
            load.sent,
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
        let scaler = autoscaling(false);
        let (out, _, _) = scale_out_under_load(&ctx, &scaler).await;
        let api = ctx.microservices();
        let ms = api.get("order").await.expect("get order");
        let count = ms.data["spec"]["replicas"].as_i64().expect("the HPA wrote spec.replicas") as i32;
        assert!(count >= out.desired, "spec.replicas {count} carries the HPA's decision {}", out.desired);
        let blue = shop::active_revision(&ctx, "order").await.expect("order's active revision");
        let (green, replicas) = autoscale::start_order_rollout(&ctx).await;
        assert_ne!(green, blue);
        assert_eq!(replicas, count, "green starts at the HPA's count, not at minReplicas {MIN_REPLICAS}");
        if let Err(e) = autoscale::wait_order_revision_ready(&ctx, &green, count).await {
            panic!("{e}; {}", scaler.state(&ctx).await);
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
