//! What Ferry generates for monitoring, read by the real consumers: the shop on
//! kind's node, scraped by a Prometheus (v3.16.0) run by prometheus-operator
//! through the ServiceMonitors Ferry generated, its PrometheusRules evaluated,
//! alerts routed by Alertmanager (v0.35.0) to a webhook receiver in this test
//! process, the shipped dashboard's queries and the blue-green `prometheus`
//! promotion check answered by that Prometheus.
//!
//! Needs the stack: `tests/e2e/monitoring/prometheus/install.sh
//! target/kind/kubeconfig`. Runs like real_node.rs, inside the node's network
//! namespace, one test at a time (the webhook receiver listens on a fixed port
//! of the node):
//!
//! ```sh
//! tests/e2e/kind/kind.sh netns env KUBECONFIG=$KIND_NODE_KUBECONFIG FERRY_REAL_PODS=1 \
//!   FERRY_POSTGRES_HOST=$FERRY_POSTGRES_HOST FERRY_POSTGRES_PORT=$FERRY_POSTGRES_PORT \
//!   cargo test -p ferry-e2e --test monitoring -- --ignored --test-threads=1
//! ```

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use ferry_e2e::{
    TestContext, in_namespace,
    monitoring::{self, Prometheus, WebhookReceiver},
    shop::{self, ShopOptions},
    tools, wait_until,
};
use ferry_proto::inventory::v1::{GetStockRequest, inventory_service_client::InventoryServiceClient};
use kube::{Api, core::DynamicObject, discovery::ApiResource};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// Installs the operator chart (with its own ServiceMonitor, for the
/// dashboard's rollout panel) and the shop, whose MicroServices carry
/// `monitoring.labels: {release: kube-prometheus-stack}` (examples/shop).
async fn monitored_shop(ctx: &TestContext, options: &ShopOptions) -> tools::HelmRelease {
    shop::require_real_pods();
    let watch = format!("watchNamespace={}", ctx.namespace);
    let release = tools::HelmRelease::install(
        "ferry",
        &ctx.namespace,
        &[
            "--set",
            &watch,
            "--set",
            "image.tag=dev",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        ],
    );
    wait_until("the operator pod is Ready", Duration::from_secs(120), || async {
        let pods = shop::ready_pods(ctx, "app.kubernetes.io/name=ferry-operator").await;
        (!pods.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    shop::apply_shop(ctx, options).await;
    let inventory = shop::channels(&shop::service_endpoint(ctx, "inventory").await, 1).await;
    shop::set_stock(inventory[0].clone(), 1_000_000).await;
    release
}

/// Calls on the inventory Service until dropped: `GetStock` every 50 ms, one
/// in `bad_every` of them without a token (answered `Unauthenticated`; 0: none),
/// and a `CreateOrder` through order every 10th tick.
struct Traffic(tokio::task::JoinHandle<()>);

impl Traffic {
    async fn start(ctx: &TestContext, bad_every: u64) -> Self {
        let inventory = shop::channels(&shop::service_endpoint(ctx, "inventory").await, 1).await.remove(0);
        let order = shop::channels(&shop::service_endpoint(ctx, "order").await, 1).await.remove(0);
        Self(tokio::spawn(traffic_loop(inventory, order, bad_every)))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn traffic_loop(inventory: Channel, order: Channel, bad_every: u64) {
    let read = shop::token("inventory:read");
    let write = shop::token("orders:write");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let run = ferry_e2e::unique_suffix();
    for n in 0u64.. {
        tick.tick().await;
        let mut request = tonic::Request::new(GetStockRequest { sku: shop::SKU.into() });
        if bad_every == 0 || n % bad_every != 0 {
            request.metadata_mut().insert("authorization", read.clone());
        }
        let _ = InventoryServiceClient::new(inventory.clone()).get_stock(request).await;
        if n % 10 == 0 {
            let _ = shop::create_order(order.clone(), &write, format!("e2e-mon-{run}-{n}")).await;
        }
    }
}

/// Names of the ServiceMonitors in the namespace that a MicroService controls.
async fn generated_service_monitors(ctx: &TestContext) -> BTreeSet<String> {
    let resource = ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource);
    let list = api.list(&Default::default()).await.expect("list ServiceMonitors");
    list.items
        .into_iter()
        .filter(|sm| {
            sm.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "MicroService" && o.controller == Some(true))
        })
        .filter_map(|sm| sm.metadata.name)
        .collect()
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn every_shop_pod_is_an_up_target_found_only_through_the_service_monitors_ferry_generated() {
    in_namespace("mon-targets", |ctx| async move {
        let _release = monitored_shop(&ctx, &ShopOptions::default()).await;
        let _traffic = Traffic::start(&ctx, 5).await;
        let prometheus = Prometheus::connect(&ctx.client).await;
        let generated = generated_service_monitors(&ctx).await;
        assert_eq!(
            generated,
            BTreeSet::from(["inventory".to_string(), "order".to_string()]),
            "Ferry generated one ServiceMonitor per MicroService"
        );
        let pods: Vec<String> = [
            shop::ready_pods(&ctx, "ferry.dev/microservice=inventory").await,
            shop::ready_pods(&ctx, "ferry.dev/microservice=order").await,
        ]
        .concat()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
        assert!(pods.len() >= 4, "two pods of each service: {pods:?}");
        let started = Instant::now();
        let ns = ctx.namespace.clone();
        let found = match wait_until(
            "every shop pod is an up target of a generated ServiceMonitor",
            Duration::from_secs(120),
            || async {
                let targets = prometheus.targets().await;
                let ours: Vec<&Value> =
                    targets.iter().filter(|t| t["labels"]["namespace"] == ns.as_str()).collect();
                let up_pods: BTreeSet<String> = ours
                    .iter()
                    .filter(|t| t["health"] == "up")
                    .filter(|t| {
                        let pool = t["scrapePool"].as_str().unwrap_or_default();
                        generated.iter().any(|sm| pool.starts_with(&format!("serviceMonitor/{ns}/{sm}/")))
                    })
                    .filter_map(|t| t["labels"]["pod"].as_str().map(str::to_string))
                    .collect();
                pods.iter()
                    .all(|p| up_pods.contains(p))
                    .then(|| ours.iter().map(|t| t["scrapePool"].to_string()).collect::<BTreeSet<_>>())
            },
        )
        .await
        {
            Ok(value) => value,
            Err(e) => panic!("{e}; targets: {:#?}", prometheus.targets().await),
        };
        println!(
            "every shop pod up as a target after {:.1} s; scrape pools {found:?}",
            started.elapsed().as_secs_f64()
        );
        for pod in &pods {
            let up = prometheus
                .query(&format!(r#"up{{namespace="{ns}",pod="{pod}"}} == 1"#))
                .await
                .expect("query up");
            assert!(!up.is_empty(), "up == 1 for {pod}");
        }

        // The labels the alerts (namespace, service, grpc_code) and the
        // dashboard (service, grpc_code, le) read, on both metrics.
        for (metric, extra) in
            [("grpc_server_handled_total", "grpc_code"), ("grpc_server_handling_seconds_bucket", "le")]
        {
            let promql = format!(r#"{metric}{{namespace="{ns}",service="inventory"}}"#);
            let series = wait_until(&format!("{metric} of inventory"), Duration::from_secs(90), || async {
                prometheus.query(&promql).await.ok().filter(|s| !s.is_empty())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            for s in &series {
                for name in ["namespace", "service", "pod", "grpc_service", "grpc_method", "grpc_type", extra]
                {
                    assert!(!label(s, name).is_empty(), "{metric} has no {name} label: {s}");
                }
            }
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn prometheus_loads_the_generated_alert_rules_and_evaluates_them_without_errors() {
    in_namespace("mon-rules", |ctx| async move {
        let _release = monitored_shop(&ctx, &ShopOptions::default()).await;
        let prometheus = Prometheus::connect(&ctx.client).await;
        let ns = ctx.namespace.clone();
        let wanted: BTreeSet<String> = ["inventory", "order"].map(|s| format!("ferry.{ns}.{s}")).into();
        let started = Instant::now();
        let groups = match wait_until("both rule groups evaluated", Duration::from_secs(120), || async {
            let groups: Vec<Value> = prometheus
                .rule_groups()
                .await
                .into_iter()
                .filter(|g| wanted.contains(g["name"].as_str().unwrap_or_default()))
                .collect();
            let evaluated = groups.len() == wanted.len()
                && groups
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .all(|r| r["health"] != "unknown");
            evaluated.then_some(groups)
        })
        .await
        {
            Ok(value) => value,
            Err(e) => panic!("{e}; groups: {:#?}", prometheus.rule_groups().await),
        };
        println!("rules loaded and evaluated after {:.1} s", started.elapsed().as_secs_f64());
        for group in &groups {
            let rules = group["rules"].as_array().cloned().unwrap_or_default();
            let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
            assert_eq!(
                names,
                BTreeSet::from([
                    "GrpcLatencyHigh",
                    "GrpcErrorRatioHigh",
                    "PodsNotReady",
                    "AutoscalerAtMaxReplicas"
                ]),
                "{}",
                group["name"]
            );
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{} {}: {rule}", group["name"], rule["name"]);
                assert!(rule["lastError"].as_str().unwrap_or_default().is_empty(), "{rule}");
            }
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn every_query_of_the_shipped_dashboard_returns_at_least_one_series() {
    in_namespace("mon-dashboard", |ctx| async move {
        let _release = monitored_shop(&ctx, &ShopOptions::default()).await;
        let _traffic = Traffic::start(&ctx, 5).await;
        let prometheus = Prometheus::connect(&ctx.client).await;
        let path = tools::repo_root().join("charts/ferry-operator/dashboards/ferry-microservices.json");
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard")).expect("JSON");
        let queries = monitoring::dashboard_queries(&dashboard);
        assert!(queries.len() >= 8, "the dashboard's queries: {queries:?}");
        let started = Instant::now();
        for (title, expr) in queries {
            let promql = monitoring::instantiate(&expr, &ctx.namespace);
            let last = std::sync::Mutex::new(String::new());
            wait_until(&format!("a series for {title:?}: {promql}"), Duration::from_secs(150), || async {
                match prometheus.query(&promql).await {
                    Ok(series) if !series.is_empty() => Some(()),
                    Ok(_) => None,
                    Err(e) => {
                        *last.lock().expect("last") = e;
                        None
                    }
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e} (last error: {})", last.lock().expect("last")));
        }
        println!("every dashboard query answered after {:.1} s", started.elapsed().as_secs_f64());
    })
    .await;
}

/// Waits for a firing alert in the webhook receiver; returns seconds since `since`.
async fn wait_for_alert(
    ctx: &TestContext,
    webhook: &WebhookReceiver,
    alertname: &str,
    since: Instant,
) -> f64 {
    let found = wait_until(&format!("{alertname} reaches the webhook"), Duration::from_secs(240), || async {
        webhook.firing(alertname, &ctx.namespace)
    })
    .await;
    match found {
        Ok((at, labels)) => {
            assert_eq!(labels["microservice"], "inventory", "{labels}");
            assert_eq!(labels["team"], "shop", "the MicroService's alert labels: {labels}");
            at.duration_since(since).as_secs_f64()
        }
        Err(e) => panic!(
            "{e}; webhook: {}; Alertmanager: {}",
            webhook.summary(),
            monitoring::alertmanager_alerts(&ctx.client).await
        ),
    }
}

/// The shop with fault injection allowed on inventory, and inventory's alerts
/// set to fire after 5 s (`for`) on rates over one minute, labelled
/// `team: shop`, plus `extra` settings. Over the default five minutes, the
/// error ratio would average in the healthy minutes before a fault: it crossed
/// 5 % after 120 s in one run and did not within 240 s in another.
async fn shop_with_fast_alerts(ctx: &TestContext, extra: Value) -> tools::HelmRelease {
    let options = ShopOptions { inventory_fault_injection: true, ..ShopOptions::default() };
    let release = monitored_shop(ctx, &options).await;
    let mut alerts = json!({
        "latencyFor": "5s", "errorRatioFor": "5s", "podsNotReadyFor": "5s", "maxReplicasFor": "5s",
        "rateWindow": "1m",
        "labels": {"team": "shop"}
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        alerts[key] = value.clone();
    }
    shop::patch_inventory(
        ctx,
        &json!([{"op": "replace", "path": "/spec/monitoring/alerts", "value": alerts}]),
    );
    release
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn the_error_ratio_and_latency_alerts_fire_on_injected_faults_and_reach_alertmanagers_webhook() {
    in_namespace("mon-alerts", |ctx| async move {
        // Inventory's thresholds: p99 above 200 ms, more than 5% of calls
        // failing with a server error (the default error codes).
        let _release =
            shop_with_fast_alerts(&ctx, json!({"latencyP99ThresholdMs": 200, "errorRatioThreshold": 0.05})).await;
        let webhook = WebhookReceiver::start().await;
        let _traffic = Traffic::start(&ctx, 0).await;
        // Every GetStock 300 ms slower, one in five answered UNAVAILABLE: the
        // ConfigMap reaches the pods through the kubelet's sync (up to about a
        // minute), then the service's reload; both count in the measured time.
        let started = Instant::now();
        shop::set_inventory_faults(&ctx, &[shop::inventory_fault("GetStock", 300, 0.2)]);
        let errors = wait_for_alert(&ctx, &webhook, "GrpcErrorRatioHigh", started).await;
        let latency = wait_for_alert(&ctx, &webhook, "GrpcLatencyHigh", started).await;
        println!(
            "from the faults' ConfigMap edit to the webhook: GrpcErrorRatioHigh {errors:.1} s, GrpcLatencyHigh {latency:.1} s"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn the_autoscaler_at_max_and_pods_not_ready_alerts_fire_from_kube_state_metrics() {
    in_namespace("mon-ksm-alerts", |ctx| async move {
        let _release = shop_with_fast_alerts(&ctx, json!({})).await;
        let webhook = WebhookReceiver::start().await;
        // The autoscaler may not go above the two pods it has.
        let started = Instant::now();
        shop::patch_inventory(&ctx, &json!([{"op": "replace", "path": "/spec/autoscaling/maxReplicas", "value": 2}]));
        let at_max = wait_for_alert(&ctx, &webhook, "AutoscalerAtMaxReplicas", started).await;
        // A rollout whose pods cannot start: green never becomes Ready (and is
        // never promoted), which kube-state-metrics reports per pod.
        let started = Instant::now();
        shop::patch_inventory(
            &ctx,
            &json!([{"op": "add", "path": "/spec/env/-", "value": {"name": "GRPC_ADDR", "value": "not-an-address"}}]),
        );
        let not_ready = wait_for_alert(&ctx, &webhook, "PodsNotReady", started).await;
        println!("to the webhook: AutoscalerAtMaxReplicas {at_max:.1} s, PodsNotReady {not_ready:.1} s");
    })
    .await;
}

/// Share of inventory's calls answered `Unauthenticated` over the last minute.
/// With no such call there is no numerator series: `or vector(0)` makes that a
/// 0 (the check wants exactly one sample, as Argo Rollouts' and Flagger's do).
fn error_ratio_query(ns: &str) -> String {
    format!(
        r#"(sum(rate(grpc_server_handled_total{{namespace="{ns}",service="inventory",grpc_code="Unauthenticated"}}[1m])) or vector(0)) / sum(rate(grpc_server_handled_total{{namespace="{ns}",service="inventory"}}[1m]))"#
    )
}

/// Adds a `prometheus` pre-promotion check on inventory's error ratio (at most
/// 1% `Unauthenticated`, measured by this Prometheus) and starts a rollout.
fn roll_inventory_with_an_error_ratio_check(ctx: &TestContext) {
    let ns = &ctx.namespace;
    let query = error_ratio_query(ns);
    let check = json!({
        "name": "error-ratio", "count": 2, "intervalSeconds": 5,
        "prometheus": {"address": monitoring::PROMETHEUS_IN_CLUSTER, "query": query, "thresholdRange": {"max": 0.01}}
    });
    shop::patch_inventory(
        ctx,
        &json!([
            {"op": "add", "path": "/spec/strategy/blueGreen/prePromotionChecks", "value": [check]},
            {"op": "add", "path": "/spec/env/-", "value": {"name": "ROLLOUT", "value": "green"}}
        ]),
    );
}

async fn inventory_status(ctx: &TestContext) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ferry_e2e::microservice_resource());
    api.get("inventory").await.map(|ms| ms.data["status"].clone()).unwrap_or_default()
}

/// Waits until the error ratio Prometheus sees for inventory is > or <= 1%.
async fn wait_for_error_ratio(ctx: &TestContext, prometheus: &Prometheus, faulty: bool) {
    let ns = &ctx.namespace;
    let promql = error_ratio_query(ns);
    wait_until(
        &format!("Prometheus sees inventory's error ratio (faulty: {faulty})"),
        Duration::from_secs(120),
        || async {
            let series = prometheus.query(&promql).await.ok()?;
            let value: f64 = series.first()?["value"][1].as_str()?.parse().ok()?;
            (value.is_finite() && (value > 0.01) == faulty).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn a_prometheus_promotion_check_on_healthy_data_promotes_green() {
    in_namespace("mon-check-pass", |ctx| async move {
        let _release = monitored_shop(&ctx, &ShopOptions::default()).await;
        let _traffic = Traffic::start(&ctx, 0).await;
        let prometheus = Prometheus::connect(&ctx.client).await;
        wait_for_error_ratio(&ctx, &prometheus, false).await;
        let blue = shop::active_revision(&ctx, "inventory").await.expect("an active revision");
        roll_inventory_with_an_error_ratio_check(&ctx);
        match wait_until("green promoted after its check passed", Duration::from_secs(240), || async {
            let status = inventory_status(&ctx).await;
            assert!(status["blueGreen"]["aborted"].is_null(), "aborted: {status}");
            let active = shop::active_revision(&ctx, "inventory").await?;
            (active != blue && status["phase"] == "Healthy").then_some(())
        })
        .await
        {
            Ok(value) => value,
            Err(e) => panic!("{e}; status {}", inventory_status(&ctx).await),
        };
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods and the monitoring stack; run in kind's netns"]
async fn a_prometheus_promotion_check_on_faulty_data_aborts_and_traffic_stays_on_blue() {
    in_namespace("mon-check-fail", |ctx| async move {
        let _release = monitored_shop(&ctx, &ShopOptions::default()).await;
        let _traffic = Traffic::start(&ctx, 2).await;
        let prometheus = Prometheus::connect(&ctx.client).await;
        wait_for_error_ratio(&ctx, &prometheus, true).await;
        let blue = shop::active_revision(&ctx, "inventory").await.expect("an active revision");
        roll_inventory_with_an_error_ratio_check(&ctx);
        let status =
            match wait_until("the rollout aborted by the failing check", Duration::from_secs(240), || async {
                let status = inventory_status(&ctx).await;
                (status["blueGreen"]["aborted"]["reason"] == "PrePromotionCheckFailed").then_some(status)
            })
            .await
            {
                Ok(value) => value,
                Err(e) => panic!("{e}; status {}", inventory_status(&ctx).await),
            };
        assert_eq!(
            shop::active_revision(&ctx, "inventory").await.as_deref(),
            Some(blue.as_str()),
            "{status}"
        );
    })
    .await;
}
