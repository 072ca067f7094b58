//! The shop on real pods: kind's node (`make kind-up`, tests/e2e/kind/), the
//! operator installed by its chart and running as a pod with in-cluster
//! config, order and inventory as pods under the `restricted` Pod Security
//! level, both on the kind tier's PostgreSQL.
//!
//! `tests/e2e/run.sh` runs this file in its phase 3, inside the node's network
//! namespace (`tests/e2e/kind/kind.sh netns`), one test at a time (they measure
//! traffic; parallel tests would share two cores and blur each other's
//! numbers). Runtime: about 4 minutes, plus the image build
//! (tests/e2e/images/build.sh) and `make kind-up`.

use std::time::Duration;

use ferry_e2e::{
    TestContext, in_namespace,
    shop::{self, Ending, ShopOptions},
    tools, wait_until,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::DeleteParams};

async fn shop(ctx: &TestContext, options: ShopOptions, stock: i64) -> tools::HelmRelease {
    shop::require_real_pods();
    shop::wait_for_a_quiet_node(ctx).await;
    shop::deploy(ctx, &options, stock).await
}

async fn stock(ctx: &TestContext) -> i64 {
    let inventory = shop::channels(&shop::service_endpoint(ctx, "inventory").await, 1).await;
    shop::get_stock(inventory[0].clone()).await
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn the_shop_runs_on_real_pods_behind_generated_grpc_probes_and_an_order_reaches_inventory_by_dns() {
    in_namespace("real-shop", |ctx| async move {
        let _release = shop(&ctx, ShopOptions::default(), 100).await;

        // The operator is a pod of the chart, Ready, so it reached the API
        // server through the kubernetes Service with in-cluster config.
        let operator = shop::ready_pods(&ctx, "app.kubernetes.io/name=ferry-operator").await;
        assert_eq!(operator.len(), 1, "one Ready operator pod");
        // Every shop pod is Ready behind the native gRPC probes Ferry generated.
        for name in ["inventory", "order"] {
            let pods = shop::ready_pods(&ctx, &format!("ferry.dev/microservice={name}")).await;
            assert!(pods.len() >= 2, "{name}: {} Ready pods", pods.len());
            for pod in &pods {
                let container = &pod.spec.as_ref().expect("spec").containers[0];
                for (kind, probe) in [
                    ("startup", &container.startup_probe),
                    ("readiness", &container.readiness_probe),
                    ("liveness", &container.liveness_probe),
                ] {
                    let grpc = probe.as_ref().and_then(|p| p.grpc.as_ref());
                    assert!(grpc.is_some(), "{}: {kind} probe is not gRPC", pod.name_any());
                }
            }
        }
        // Order finds inventory by its DNS name, injected from dependsOn.
        let order_pods = shop::ready_pods(&ctx, "ferry.dev/microservice=order").await;
        let env = order_pods[0].spec.as_ref().expect("spec").containers[0].env.clone().unwrap_or_default();
        let addr = env
            .iter()
            .find(|e| e.name == "INVENTORY_ADDR")
            .and_then(|e| e.value.clone())
            .expect("INVENTORY_ADDR injected");
        assert!(
            addr.contains(&format!("inventory.{}.svc", ctx.namespace)),
            "INVENTORY_ADDR is a cluster DNS name: {addr}"
        );

        let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 1).await;
        let order_id = shop::create_order(
            order[0].clone(),
            &shop::token("orders:write"),
            format!("e2e-first-{}", ferry_e2e::unique_suffix()),
        )
        .await
        .expect("CreateOrder through the order Service");
        assert!(!order_id.is_empty());
        assert_eq!(stock(&ctx).await, 99, "one widget deducted in inventory");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn killing_an_inventory_pod_under_load_loses_no_acknowledged_order() {
    in_namespace("real-kill", |ctx| async move {
        const STOCK: i64 = 1_000_000;
        let _release = shop(&ctx, ShopOptions::default(), STOCK).await;
        let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 4).await;
        let (_stop, stop_rx) = tokio::sync::oneshot::channel();
        let load =
            tokio::spawn(shop::create_order_load(order.clone(), 200, Duration::from_secs(20), 512, stop_rx));
        // Let the load run on both pods, then SIGKILL one (grace period 0).
        let pods: Api<Pod> = ctx.api();
        let victim = wait_until("inventory has served load", Duration::from_secs(30), || async {
            let counts = shop::deductions_by_pod(&ctx).await;
            counts.iter().find(|(_, (_, n))| *n >= 200.0).map(|(name, _)| name.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        pods.delete(&victim, &DeleteParams::default().grace_period(0)).await.expect("kill the pod");
        let report = load.await.expect("load");
        println!(
            "kill test: sent {}, acknowledged {}, failed {}, rate {:.0}/s",
            report.sent,
            report.acknowledged.len(),
            report.failures.len(),
            report.rate()
        );
        assert!(report.acknowledged.len() > 1000, "the load ran: {} acknowledged", report.acknowledged.len());

        // Every acknowledged order is stored and its deduction kept: the stock
        // went down by at least the acknowledged orders (a call that failed on
        // the client after committing may also count) and by no more than sent.
        let remaining = stock(&ctx).await;
        let acknowledged = report.acknowledged.len() as i64;
        assert!(
            remaining <= STOCK - acknowledged,
            "acknowledged deductions lost: stock {remaining}, acknowledged {acknowledged}"
        );
        assert!(remaining >= STOCK - report.sent as i64, "oversold: stock {remaining}");
        let mut client =
            ferry_proto::order::v1::order_service_client::OrderServiceClient::new(order[0].clone());
        let read = shop::token("orders:read");
        for id in &report.acknowledged {
            let mut request =
                tonic::Request::new(ferry_proto::order::v1::GetOrderRequest { order_id: id.clone() });
            request.metadata_mut().insert("authorization", read.clone());
            client
                .get_order(request)
                .await
                .unwrap_or_else(|s| panic!("acknowledged order {id} is gone: {s}"));
        }
        // The killed pod is replaced and the service is whole again.
        wait_until("inventory has two Ready pods again", Duration::from_secs(120), || async {
            let ready = shop::ready_pods(&ctx, "ferry.dev/microservice=inventory").await;
            (ready.len() >= 2 && ready.iter().all(|p| p.name_any() != victim)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn a_blue_green_rollout_under_500_orders_per_second_fails_no_call_and_moves_traffic_to_green_within_5s()
{
    in_namespace("real-cutover", |ctx| async move {
        const STOCK: i64 = 1_000_000;
        let _release = shop(&ctx, ShopOptions::default(), STOCK).await;
        let report = shop::rollout_under_load(
            &ctx,
            500,
            Duration::from_secs(5),
            Duration::from_secs(8),
            Ending::Promote,
        )
        .await;
        println!("{}", report.table());
        let failures: Vec<_> = report.load.failures.iter().take(5).collect();
        assert!(
            report.load.failures.is_empty(),
            "{} of {} calls failed during the cutover, e.g. {failures:?}",
            report.load.failures.len(),
            report.load.sent
        );
        // The offered load stayed at 500/s the whole time (open loop, nothing
        // thinned); every call was answered, none failed (checked above).
        assert!(
            report.load.offered_rate() >= 490.0 && report.load.skipped == 0,
            "the load held 500/s: {:.0}/s offered, {} ticks skipped",
            report.load.offered_rate(),
            report.load.skipped
        );
        let switch = report.switched_at.expect("the active Service switched to green");
        let until_green = report.seconds_until_all_on_green().expect("switched");
        println!(
            "switch at {:.1} s, all traffic on green {until_green:.1} s after it, green handled {} deductions",
            switch.as_secs_f64(),
            report.green_calls
        );
        assert!(until_green <= 5.0, "blue still served calls {until_green:.1} s after the switch");
        assert!(report.green_calls > 0.0, "green served nothing");
        let acknowledged = report.load.acknowledged.len() as i64;
        assert_eq!(stock(&ctx).await, STOCK - acknowledged, "every acknowledged order deducted once");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn an_aborted_rollout_under_load_keeps_all_traffic_on_blue() {
    in_namespace("real-abort", |ctx| async move {
        let options = ShopOptions { inventory_auto_promotion: false, ..ShopOptions::default() };
        let _release = shop(&ctx, options, 1_000_000).await;
        let report = shop::rollout_under_load(
            &ctx,
            300,
            Duration::from_secs(3),
            Duration::from_secs(5),
            Ending::Abort,
        )
        .await;
        println!("{}", report.table());
        assert!(report.aborted_at.is_some(), "the green preview became Ready and was aborted");
        assert!(report.load.failures.is_empty(), "calls failed: {:?}", &report.load.failures[..]);
        assert_eq!(report.green_calls, 0.0, "green served traffic although aborted");
        assert_eq!(
            shop::active_revision(&ctx, "inventory").await.as_deref(),
            Some(report.blue.as_str()),
            "the active Service still selects blue"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn a_grpc_health_pre_promotion_check_passes_against_real_green_pods_and_gates_the_switch() {
    in_namespace("real-check", |ctx| async move {
        let _release = shop(&ctx, ShopOptions::default(), 100).await;
        let blue = shop::active_revision(&ctx, "inventory").await.expect("active revision");
        // The operator pod dials every green pod's grpc.health.v1 before it
        // moves traffic: two measurements, a second apart, none may fail.
        let patch = serde_json::json!([
            {"op": "add", "path": "/spec/env/-", "value": {"name": "ROLLOUT", "value": "checked"}},
            {"op": "add", "path": "/spec/strategy/blueGreen/prePromotionChecks", "value": [
                {"name": "grpc-health", "intervalSeconds": 1, "count": 2, "grpcHealth": {}}
            ]}
        ]);
        shop::patch_inventory(&ctx, &patch);
        let api = ctx.microservices();
        let ms = wait_until("inventory promoted past its check", Duration::from_secs(180), || async {
            let ms = api.get("inventory").await.ok()?;
            let status = &ms.data["status"];
            let current = ms.metadata.generation? == status["observedGeneration"].as_i64()?;
            let active = status["blueGreen"]["activeRevision"]["hash"].as_str()?;
            (current && status["phase"] == "Healthy" && active != blue).then_some(ms)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let checks = &ms.data["status"]["blueGreen"]["checks"];
        assert_eq!(checks[0]["name"], "grpc-health", "{checks}");
        assert_eq!(checks[0]["verdict"], "Passed", "{checks}");
        assert_eq!(checks[0]["successes"], 2, "{checks}");
        assert_ne!(shop::active_revision(&ctx, "inventory").await, Some(blue));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn a_green_whose_grpc_health_answers_not_serving_is_not_promoted_and_traffic_stays_on_blue() {
    in_namespace("real-notserving", |ctx| async move {
        let _release = shop(&ctx, ShopOptions::default(), 100).await;
        let blue = shop::active_revision(&ctx, "inventory").await.expect("active revision");
        // Green gets a database of its own that is taken away once green is
        // Ready: inventory then answers NOT_SERVING (its database is
        // unreachable) while the pod keeps running. Readiness and liveness are
        // off for green so the kubelet leaves it Ready and running; the check
        // is what must stop it.
        let green_db_name = format!("{}_green", ctx.namespace.replace('-', "_"));
        let green_db = shop::create_database(&green_db_name);
        let api = ctx.microservices();
        let ms = api.get("inventory").await.expect("get inventory");
        let env = ms.data["spec"]["env"].as_array().expect("env");
        let db_index = env.iter().position(|e| e["name"] == "DATABASE_URL").expect("DATABASE_URL in env");
        let patch = serde_json::json!([
            {"op": "replace", "path": format!("/spec/env/{db_index}/value"), "value": green_db},
            {"op": "replace", "path": "/spec/health", "value": {
                "port": "grpc", "readiness": {"disabled": true}, "liveness": {"disabled": true}
            }},
            {"op": "add", "path": "/spec/strategy/blueGreen/prePromotionChecks", "value": [
                {"name": "grpc-health", "intervalSeconds": 3, "count": 3, "grpcHealth": {}}
            ]}
        ]);
        shop::patch_inventory(&ctx, &patch);
        wait_until("green's pods are Ready", Duration::from_secs(120), || async {
            let ready = shop::ready_pods(&ctx, "ferry.dev/microservice=inventory").await;
            let green = ready.iter().filter(|p| p.labels().get(shop::REVISION_LABEL) != Some(&blue)).count();
            (green >= 2).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        shop::Postgres::from_env().execute(&[
            &format!("ALTER DATABASE {green_db_name} WITH ALLOW_CONNECTIONS false"),
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{green_db_name}'"
            ),
        ]);

        let ms = wait_until("the check aborts green", Duration::from_secs(90), || async {
            let ms = api.get("inventory").await.ok()?;
            (ms.data["status"]["blueGreen"]["aborted"]["reason"] == "PrePromotionCheckFailed").then_some(ms)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let checks = &ms.data["status"]["blueGreen"]["checks"];
        assert_eq!(checks[0]["verdict"], "Failed", "{checks}");
        let message = checks[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("NOT_SERVING"), "the check saw NOT_SERVING: {checks}");
        assert_eq!(shop::active_revision(&ctx, "inventory").await, Some(blue), "traffic stays on blue");
    })
    .await;
}
