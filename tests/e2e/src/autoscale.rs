//! Order autoscaled on real pods (kind's node): the shop with order's
//! `spec.autoscaling` set, the HorizontalPodAutoscaler that acts on it
//! (Ferry's own `order` for a CPU target; KEDA's `keda-hpa-order`, derived
//! from the ScaledObject Ferry writes, for a gRPC p99 target), waits on that
//! HPA whose failures say what it saw, a bounded `CreateOrder` load, a
//! fault-injected `DeductStock` delay, and a blue-green rollout of an
//! autoscaled order.
//!
//! Shared by `tests/autoscaling.rs` (CPU, metrics-server), by
//! `tests/latency_autoscaling.rs` (KEDA, Prometheus) and by the
//! `bench_autoscale` binary, which runs both under the same load.

use std::time::{Duration, Instant};

use ferry_proto::inventory::v1::{DeductStockRequest, inventory_service_client::InventoryServiceClient};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
use kube::{
    Api,
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};
use tonic::{Request, transport::Endpoint};

use crate::{
    TestContext, WaitError,
    monitoring::PROMETHEUS_IN_CLUSTER,
    shop::{self, LoadReport, ShopOptions},
    tools, wait_until,
};

/// The label selector of order's pods (every revision).
pub const ORDER_PODS: &str = "ferry.dev/microservice=order";
/// Order's CPU request here (the shop's is 100m). The node has two cores and
/// the control plane requests about one: blue and green at four replicas
/// each, next to inventory, must still be schedulable.
pub const ORDER_CPU_REQUEST: &str = "50m";
/// Inventory's gRPC port in `examples/shop/` (its pods listen on it).
const INVENTORY_GRPC_PORT: u16 = 50051;

/// `spec.autoscaling.behavior` for the tests and the bench: no scale-up
/// stabilization, up to two pods per 15 s; scale-down after a 15 s window
/// (the default is 5 minutes) or, with `scale_down: false`, never
/// (`selectPolicy: Disabled`). The product keeps the Kubernetes defaults.
pub fn behavior(scale_down: bool) -> Value {
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

/// What order scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `targetCPUUtilizationPercentage`: Ferry writes an HPA `order` (metrics-server).
    CpuPercent(i32),
    /// `latencyP99Milliseconds`: Ferry writes a KEDA ScaledObject with a
    /// Prometheus trigger on order's gRPC p99 (window 30 s); KEDA's HPA acts.
    LatencyP99Ms(i32),
}

/// Order's `spec.autoscaling` and how to watch the HPA that carries it out.
#[derive(Clone, Copy, Debug)]
pub struct Autoscaling {
    pub min: i32,
    pub max: i32,
    pub target: Target,
    /// See [`behavior`].
    pub scale_down: bool,
}

impl Autoscaling {
    /// Order's `spec.autoscaling`.
    pub fn spec(&self) -> Value {
        let mut spec =
            json!({"minReplicas": self.min, "maxReplicas": self.max, "behavior": behavior(self.scale_down)});
        match self.target {
            Target::CpuPercent(percent) => spec["targetCPUUtilizationPercentage"] = json!(percent),
            Target::LatencyP99Ms(ms) => {
                spec["latencyP99Milliseconds"] = json!(ms);
                spec["prometheusAddress"] = json!(PROMETHEUS_IN_CLUSTER);
                spec["metricsWindow"] = json!("30s");
            }
        }
        spec
    }

    /// The name of the HPA acting on order.
    pub fn hpa_name(&self) -> &'static str {
        match self.target {
            Target::CpuPercent(_) => "order",
            Target::LatencyP99Ms(_) => KEDA_HPA,
        }
    }

    /// That HPA, when it exists.
    pub async fn hpa(&self, ctx: &TestContext) -> Option<HorizontalPodAutoscaler> {
        hpa(ctx, self.hpa_name()).await
    }

    /// The metric the HPA last read, as text: CPU percent or p99 milliseconds.
    pub fn metric(&self, hpa: &HorizontalPodAutoscaler) -> Option<String> {
        match self.target {
            Target::CpuPercent(_) => cpu_utilization(hpa).map(|c| c.to_string()),
            Target::LatencyP99Ms(_) => p99_metric(hpa),
        }
    }

    /// One line on what the HPA (and KEDA's ScaledObject) see and decide, for
    /// progress and failures.
    pub async fn state(&self, ctx: &TestContext) -> String {
        let name = self.hpa_name();
        let scaled = match self.target {
            Target::CpuPercent(_) => String::new(),
            Target::LatencyP99Ms(_) => match scaled_objects(ctx).get_opt("order").await {
                Ok(Some(so)) => format!("; ScaledObject: {}", so.data["status"]["conditions"]),
                other => format!("; no ScaledObject order ({other:?})"),
            },
        };
        let Some(hpa) = self.hpa(ctx).await else { return format!("no HPA {name}{scaled}") };
        let metric = match self.target {
            Target::CpuPercent(_) => format!("cpu {:?}%", cpu_utilization(&hpa)),
            Target::LatencyP99Ms(_) => format!("p99 {:?} ms", p99_metric(&hpa)),
        };
        let status = hpa.status.clone().unwrap_or_default();
        let conditions: Vec<String> = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.unwrap_or_default()))
            .collect();
        format!(
            "HPA {name}: {metric}, current {:?}, desired {}; {}{scaled}",
            status.current_replicas,
            desired_replicas(&hpa),
            conditions.join("; ")
        )
    }

    /// Waits for `check` on the HPA; the failure names its state.
    pub async fn wait_for<T>(
        &self,
        ctx: &TestContext,
        what: &str,
        limit: Duration,
        check: impl Fn(&HorizontalPodAutoscaler) -> Option<T>,
    ) -> T {
        let outcome =
            wait_until(what, limit, || async { self.hpa(ctx).await.as_ref().and_then(&check) }).await;
        match outcome {
            Ok(value) => value,
            Err(e) => panic!("{e}; {}", self.state(ctx).await),
        }
    }

    /// Waits until the scaler is ready to act with order at `minReplicas`:
    /// for a latency target, KEDA's ScaledObject `order` is Ready (returned);
    /// then the HPA has read its metric (returned as text) and wants `minReplicas`.
    pub async fn wait_idle(&self, ctx: &TestContext) -> (String, Option<DynamicObject>) {
        let mut scaled_object = None;
        if let Target::LatencyP99Ms(_) = self.target {
            let ready =
                wait_until("the ScaledObject order to be Ready", Duration::from_secs(120), || async {
                    let so = scaled_objects(ctx).get_opt("order").await.ok()??;
                    let conditions = so.data["status"]["conditions"].as_array()?.clone();
                    conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True").then_some(so)
                })
                .await;
            match ready {
                Ok(so) => scaled_object = Some(so),
                Err(e) => panic!("{e}; {}", self.state(ctx).await),
            }
        }
        let what = match self.target {
            Target::CpuPercent(_) => "the HPA to measure order's CPU at minReplicas",
            Target::LatencyP99Ms(_) => "KEDA's HPA to read order's p99 at minReplicas",
        };
        let idle = self
            .wait_for(ctx, what, Duration::from_secs(120), |h| {
                (desired_replicas(h) == self.min).then_some(())?;
                self.metric(h)
            })
            .await;
        (idle, scaled_object)
    }

    /// Waits, up to `limit`, until the HPA wants more than `minReplicas`,
    /// prints its state, then waits until that many order pods are Ready.
    /// Times are from `since`.
    pub async fn scale_out(&self, ctx: &TestContext, since: Instant, limit: Duration) -> ScaleOut {
        let what = match self.target {
            Target::CpuPercent(_) => "the HPA to want more order pods",
            Target::LatencyP99Ms(_) => "KEDA's HPA to want more order pods",
        };
        let desired = self
            .wait_for(ctx, what, limit, |h| (desired_replicas(h) > self.min).then(|| desired_replicas(h)))
            .await;
        let until_desired = since.elapsed();
        println!("{}", self.state(ctx).await);
        let ready = wait_until(&format!("{desired} Ready order pods"), Duration::from_secs(120), || async {
            let ready = shop::ready_pods(ctx, ORDER_PODS).await.len() as i32;
            (ready >= desired).then_some(ready)
        })
        .await;
        if let Err(e) = ready {
            panic!("{e}; {}", self.state(ctx).await);
        }
        ScaleOut { desired, until_desired, until_ready: since.elapsed() }
    }

    /// Waits until order's MicroService counts `minReplicas` and exactly
    /// that many order pods are Ready.
    pub async fn wait_back_at_min(&self, ctx: &TestContext) {
        let back = wait_until(
            "order back at minReplicas Ready pods and no more",
            Duration::from_secs(120),
            || async {
                let ms = ctx.microservices().get("order").await.ok()?;
                let replicas = ms.data["status"]["replicas"].as_i64()?;
                let ready = shop::ready_pods(ctx, ORDER_PODS).await.len() as i64;
                (replicas == i64::from(self.min) && ready == replicas).then_some(())
            },
        )
        .await;
        if let Err(e) = back {
            panic!("{e}; {}", self.state(ctx).await);
        }
    }
}

/// The HPA KEDA derives from the ScaledObject `order`.
pub const KEDA_HPA: &str = "keda-hpa-order";

/// What a scale-out measured.
#[derive(Clone, Copy, Debug)]
pub struct ScaleOut {
    /// The HPA's desiredReplicas when it first went above `minReplicas`.
    pub desired: i32,
    pub until_desired: Duration,
    /// Until that many order pods were Ready.
    pub until_ready: Duration,
}

/// KEDA's ScaledObjects in the test's namespace.
pub fn scaled_objects(ctx: &TestContext) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
}

/// The HPA `name` in the test's namespace, when it exists.
pub async fn hpa(ctx: &TestContext, name: &str) -> Option<HorizontalPodAutoscaler> {
    ctx.api::<HorizontalPodAutoscaler>().get_opt(name).await.ok().flatten()
}

pub fn desired_replicas(hpa: &HorizontalPodAutoscaler) -> i32 {
    hpa.status.as_ref().map(|s| s.desired_replicas).unwrap_or_default()
}

/// The CPU utilization (percent of the request) the HPA last computed.
pub fn cpu_utilization(hpa: &HorizontalPodAutoscaler) -> Option<i32> {
    let metrics = hpa.status.as_ref()?.current_metrics.as_ref()?;
    metrics.iter().find_map(|m| m.resource.as_ref()?.current.average_utilization)
}

/// The external metric (order's p99, in ms) the HPA last read from KEDA.
pub fn p99_metric(hpa: &HorizontalPodAutoscaler) -> Option<String> {
    let metrics = hpa.status.as_ref()?.current_metrics.as_ref()?;
    metrics.iter().find_map(|m| m.external.as_ref()?.current.value.as_ref().map(|q| q.0.clone()))
}

/// The operator chart under release `release` (the chart's ClusterRoles are
/// named after it, so another suite's release on the same cluster cannot
/// collide) and the shop of `options` with order's `autoscaling` (replacing
/// the shop's) and [`ORDER_CPU_REQUEST`] set in its manifest, both Available,
/// stock set.
pub async fn deploy_shop(
    ctx: &TestContext,
    release: &str,
    options: &ShopOptions,
    autoscaling: &Autoscaling,
) -> tools::HelmRelease {
    let release = shop::install_operator_as(ctx, release).await;
    let mut list: Value = serde_json::from_str(&shop::shop_manifests(ctx, options)).expect("JSON list");
    for item in list["items"].as_array_mut().expect("items") {
        if item["kind"] == "MicroService" && item["metadata"]["name"] == "order" {
            item["spec"]["autoscaling"] = autoscaling.spec();
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

/// Order's CPU request as rendered in its Deployment.
pub async fn rendered_order_cpu_request(ctx: &TestContext) -> Option<String> {
    let deployments: Api<Deployment> = ctx.api();
    let order = deployments.list(&kube::api::ListParams::default().labels(ORDER_PODS)).await.ok()?;
    let pod = order.items.first()?.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers[0].resources.as_ref()?.requests.as_ref()?.get("cpu").map(|q| q.0.clone())
}

/// A bounded open-loop `CreateOrder` load on the order Service, running.
pub struct Load {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<LoadReport>,
    pub started: Instant,
}

impl Load {
    /// `rate` calls per second over `connections` HTTP/2 connections, for at
    /// most `limit`, with at most `max_in_flight` calls outstanding.
    pub async fn start(
        ctx: &TestContext,
        rate: u32,
        limit: Duration,
        connections: usize,
        max_in_flight: usize,
    ) -> Self {
        let order = shop::channels(&shop::service_endpoint(ctx, "order").await, connections).await;
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let task = tokio::spawn(shop::create_order_load(order, rate, limit, max_in_flight, stop_rx));
        Self { stop, task, started }
    }

    /// Stops the load (a load past its limit has stopped already), waits for
    /// its calls and prints what it did.
    pub async fn stop(self) -> LoadReport {
        let _ = self.stop.send(());
        let load = self.task.await.expect("load task");
        println!(
            "load: {} sent at {:.0}/s offered over {:.1} s, {} acknowledged, {} failed",
            load.sent,
            load.offered_rate(),
            load.elapsed.as_secs_f64(),
            load.acknowledged.len(),
            load.failures.len()
        );
        load
    }
}

/// Sets a `DeductStock` delay of `delay_ms` on inventory (see
/// [`shop::set_inventory_faults`]; the shop needs
/// `inventory_fault_injection`) and waits until every inventory pod applies
/// it: a `DeductStock` sent straight to each pod takes at least the delay.
/// The probes bypass order, so order's latency metric does not see them.
pub async fn inject_deduct_stock_delay(ctx: &TestContext, delay_ms: u64) -> Result<(), WaitError> {
    shop::set_inventory_faults(ctx, &[shop::inventory_fault("DeductStock", delay_ms, 0.0)]);
    let delay = Duration::from_millis(delay_ms);
    let write = shop::token("inventory:write");
    // The kubelet updates the mounted ConfigMap within its sync period (10 s on kind.sh's node).
    wait_until("every inventory pod delaying DeductStock", Duration::from_secs(180), || async {
        let pods = shop::inventory_pods(ctx).await;
        if pods.is_empty() {
            return None;
        }
        for (_, _, ip) in pods {
            let endpoint = format!("http://{ip}:{INVENTORY_GRPC_PORT}");
            let channel = Endpoint::from_shared(endpoint).ok()?.connect().await.ok()?;
            let mut request = Request::new(DeductStockRequest {
                request_id: format!("bench-probe-{}", crate::unique_suffix()),
                sku: shop::SKU.into(),
                quantity: 1,
            });
            request.metadata_mut().insert("authorization", write.clone());
            let began = Instant::now();
            InventoryServiceClient::new(channel).deduct_stock(request).await.ok()?;
            if began.elapsed() < delay {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// Rolls order to a new revision (an env change) and waits for its green
/// Deployment: returns green's revision and that Deployment's replicas.
pub async fn start_order_rollout(ctx: &TestContext) -> (String, i32) {
    let patch = json!([{"op": "add", "path": "/spec/env/-", "value": {"name": "ROLLOUT", "value": "green"}}]);
    tools::run_ok(
        "kubectl",
        &["patch", "-n", &ctx.namespace, "microservice/order", "--type=json", "-p", &patch.to_string()],
        None,
        &[],
    );
    let api = ctx.microservices();
    let deployments: Api<Deployment> = ctx.api();
    wait_until("order's green Deployment", Duration::from_secs(60), || async {
        let ms = api.get("order").await.ok()?;
        let green = ms.data["status"]["blueGreen"]["previewRevision"]["hash"].as_str()?.to_string();
        let d = deployments.get_opt(&format!("order-{green}")).await.ok()??;
        Some((green, d.spec?.replicas?))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `count` order pods of `revision` are Ready.
pub async fn wait_order_revision_ready(
    ctx: &TestContext,
    revision: &str,
    count: i32,
) -> Result<(), WaitError> {
    let selector = format!("{ORDER_PODS},{}={revision}", shop::REVISION_LABEL);
    wait_until(&format!("{count} Ready order pods of {revision}"), Duration::from_secs(180), || async {
        (shop::ready_pods(ctx, &selector).await.len() as i32 >= count).then_some(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_target_renders_keda_fields_and_no_cpu_target() {
        let a = Autoscaling { min: 2, max: 6, target: Target::LatencyP99Ms(200), scale_down: true };
        let spec = a.spec();
        assert_eq!(spec["latencyP99Milliseconds"], 200);
        assert_eq!(spec["prometheusAddress"], PROMETHEUS_IN_CLUSTER);
        assert_eq!(spec["metricsWindow"], "30s");
        assert!(spec.get("targetCPUUtilizationPercentage").is_none(), "{spec}");
        assert_eq!(a.hpa_name(), KEDA_HPA);
    }

    #[test]
    fn a_cpu_target_renders_only_the_cpu_field_and_ferrys_own_hpa() {
        let a = Autoscaling { min: 2, max: 4, target: Target::CpuPercent(70), scale_down: false };
        let spec = a.spec();
        assert_eq!((spec["minReplicas"].as_i64(), spec["maxReplicas"].as_i64()), (Some(2), Some(4)));
        assert_eq!(spec["targetCPUUtilizationPercentage"], 70);
        assert!(spec.get("latencyP99Milliseconds").is_none(), "{spec}");
        assert_eq!(spec["behavior"]["scaleDown"]["selectPolicy"], "Disabled");
        assert_eq!(a.hpa_name(), "order");
    }
}
