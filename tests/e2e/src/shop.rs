//! The shop (`examples/shop/`) on real pods, on kind's node (`make kind-up`):
//! the operator installed by its Helm chart as a pod, order and inventory as
//! real pods sharing the kind tier's PostgreSQL, gRPC calls through their
//! Services, an open-loop `CreateOrder` load and per-pod request counters read
//! from each pod's `/metrics`.
//!
//! Everything here talks to addresses inside the kind node's network
//! namespace (ClusterIPs, pod IPs) or on the kind network (the PostgreSQL), so
//! the tests using it run inside that namespace (`tests/e2e/run.sh` enters it
//! with `tests/e2e/kind/kind.sh netns`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferry_proto::{
    inventory::v1::{GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{CreateOrderRequest, OrderItem, order_service_client::OrderServiceClient},
};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream, sync::Semaphore};
use tonic::{
    Code, Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{TestContext, tools, wait_until};

/// The kind tier's PostgreSQL (tests/e2e/kind/kind.sh: a host process
/// listening only on the kind network's gateway address): `FERRY_POSTGRES_HOST`
/// and `FERRY_POSTGRES_PORT`, which `tests/e2e/run.sh` reads from
/// `target/kind/env`.
#[derive(Clone, Debug)]
pub struct Postgres {
    pub host: String,
    pub port: u16,
}

impl Postgres {
    /// From the environment; panics with what to run when it is not set.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: run the real-pod tests as tests/e2e/run.sh does \
                     (make kind-up writes target/kind/env)"
                )
            })
        };
        let port = var("FERRY_POSTGRES_PORT");
        Self {
            host: var("FERRY_POSTGRES_HOST"),
            port: port.parse().unwrap_or_else(|_| panic!("FERRY_POSTGRES_PORT={port:?} is not a port")),
        }
    }

    /// `psql` connection arguments for the superuser.
    pub fn psql_args(&self) -> Vec<String> {
        ["-h", &self.host, "-p", &self.port.to_string(), "-U", "postgres"].map(str::to_string).to_vec()
    }

    /// Runs SQL statements through `psql`, stopping at the first error.
    pub fn execute(&self, statements: &[&str]) {
        let mut args = self.psql_args();
        args.extend(["-v".into(), "ON_ERROR_STOP=1".into()]);
        for statement in statements {
            args.extend(["-c".to_string(), (*statement).to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tools::run_ok("psql", &args, None, &[]);
    }

    /// The URL of database `name`, as pods use it.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@{}:{}/{name}", self.host, self.port)
    }
}
/// The published demo key of `examples/shop/10-jwt-secret.yaml`.
const DEMO_KEY: &str = "ferry-demo-only-hs256-key-do-not-use-in-production";
/// The revision label on pods and in the active Service's selector.
pub const REVISION_LABEL: &str = "ferry.dev/revision";
/// The one SKU the load buys.
pub const SKU: &str = "widget";

/// Panics unless the test runs inside the kind node's network namespace.
pub fn require_real_pods() {
    assert_eq!(
        std::env::var("FERRY_REAL_PODS").as_deref(),
        Ok("1"),
        "these tests need real pods: make kind-up, then run them inside the node's network \
         namespace as tests/e2e/run.sh does (tests/e2e/kind/kind.sh netns ..., FERRY_REAL_PODS=1)"
    );
}

/// An HS256 token signed with the demo key, valid for an hour.
pub fn token(scope: &str) -> MetadataValue<Ascii> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        scope: &'a str,
        exp: u64,
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() + 3600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: "ferry-e2e", scope, exp },
        &jsonwebtoken::EncodingKey::from_secret(DEMO_KEY.as_bytes()),
    )
    .expect("sign a token");
    format!("Bearer {jwt}").parse().expect("ASCII header")
}

fn authed<T>(message: T, bearer: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

/// How the shop is deployed for one test.
#[derive(Clone, Debug)]
pub struct ShopOptions {
    /// Inventory's `max_connection_age_seconds`: how soon order's long-lived
    /// HTTP/2 connections to old pods are GOAWAY'd after a switch.
    pub inventory_max_connection_age_seconds: u64,
    /// Inventory's blue-green auto promotion.
    pub inventory_auto_promotion: bool,
    /// Both services' `max_concurrent_requests` (in-flight calls before load
    /// shedding answers RESOURCE_EXHAUSTED; the shop's default is 512).
    pub max_concurrent_requests: usize,
    /// Start inventory with `FERRY_ALLOW_FAULT_INJECTION=true`, so that
    /// [`set_inventory_faults`] can make it slow or failing (off by default).
    pub inventory_fault_injection: bool,
    /// The example deployed: `examples/shop` (the synchronous saga, the
    /// default) or [`ASYNC_SHOP`] (the asynchronous saga and its broker).
    pub example: &'static str,
}

/// The asynchronous shop: `examples/shop` plus NATS JetStream as a MicroService,
/// order with `SAGA_MODE=async` (services/README.md, *Events*).
pub const ASYNC_SHOP: &str = "examples/shop-async";

impl Default for ShopOptions {
    fn default() -> Self {
        Self {
            inventory_max_connection_age_seconds: 2,
            inventory_auto_promotion: true,
            // Two cores run the control plane, the node, six service pods,
            // PostgreSQL and this load: while green starts, latency peaks near
            // 1.5 s and 500/s piles up more than 512 calls in flight on the
            // inventory pod both order pods happen to be connected to. Queue
            // them instead of shedding, for a cutover measurement.
            max_concurrent_requests: 4096,
            inventory_fault_injection: false,
            example: "examples/shop",
        }
    }
}

/// `config` (a service's config.yaml) with `key: value` set.
fn set_config_line(config: &str, key: &str, value: &str) -> String {
    let mut lines: Vec<String> =
        config.lines().filter(|l| !l.starts_with(&format!("{key}:"))).map(str::to_string).collect();
    lines.push(format!("{key}: {value}"));
    lines.join("\n") + "\n"
}

/// Creates an empty database on the kind tier's PostgreSQL; returns its URL.
pub fn create_database(name: &str) -> String {
    let postgres = Postgres::from_env();
    postgres.execute(&[&format!("CREATE DATABASE {name}")]);
    postgres.url(name)
}

/// The shop's manifests for `ctx`'s namespace: both services on their own
/// database of the kind tier's PostgreSQL (so blue and green share state and any
/// order pod can read any order), and the inventory settings of `options`.
pub fn shop_manifests(ctx: &TestContext, options: &ShopOptions) -> String {
    let db_prefix = ctx.namespace.replace('-', "_");
    let inventory_db = create_database(&format!("{db_prefix}_inventory"));
    let order_db = create_database(&format!("{db_prefix}_order"));
    let mut list: Value = serde_json::from_str(&tools::example_manifests_in(options.example, &ctx.namespace))
        .expect("JSON list");
    for item in list["items"].as_array_mut().expect("items") {
        let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match (item["kind"].as_str().unwrap_or_default(), name.as_str()) {
            ("ConfigMap", config_map) => {
                let mut config = item["data"]["config.yaml"].as_str().expect("config.yaml").to_string();
                config = set_config_line(
                    &config,
                    "max_concurrent_requests",
                    &options.max_concurrent_requests.to_string(),
                );
                if config_map == "inventory-config" {
                    config = set_config_line(
                        &config,
                        "max_connection_age_seconds",
                        &options.inventory_max_connection_age_seconds.to_string(),
                    );
                }
                item["data"]["config.yaml"] = json!(config);
            }
            ("MicroService", service @ ("inventory" | "order")) => {
                let url = if service == "inventory" { &inventory_db } else { &order_db };
                let env = item["spec"]["env"].as_array_mut().expect("env");
                env.retain(|e| e["name"] != "DATA_DIR");
                env.push(json!({"name": "DATABASE_URL", "value": url}));
                if service == "inventory" && options.inventory_fault_injection {
                    env.push(json!({"name": "FERRY_ALLOW_FAULT_INJECTION", "value": "true"}));
                }
                if service == "inventory" {
                    item["spec"]["strategy"]["blueGreen"]["autoPromotionEnabled"] =
                        json!(options.inventory_auto_promotion);
                }
            }
            _ => {}
        }
    }
    list.to_string()
}

/// Waits until no other test namespace is left on the node (deleting one
/// stops its pods, drains them and tears down their sandboxes: seconds of
/// CPU the next measurement should not share).
pub async fn wait_for_a_quiet_node(ctx: &TestContext) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    wait_until("the previous tests' namespaces are gone", Duration::from_secs(180), || async {
        let list = namespaces.list(&ListParams::default()).await.ok()?;
        let others = list
            .items
            .iter()
            .filter(|ns| ns.name_any().starts_with("e2e-") && ns.name_any() != ctx.namespace)
            .count();
        (others == 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Installs the operator chart in the test's namespace, watching only it, and
/// waits until the operator pod is Ready.
pub async fn install_operator(ctx: &TestContext) -> tools::HelmRelease {
    install_operator_as(ctx, "ferry").await
}

/// [`install_operator`] under the chart release name `release` (the chart's
/// ClusterRoles are named after it).
pub async fn install_operator_as(ctx: &TestContext, release: &str) -> tools::HelmRelease {
    let watch = format!("watchNamespace={}", ctx.namespace);
    let release =
        tools::HelmRelease::install(release, &ctx.namespace, &["--set", &watch, "--set", "image.tag=dev"]);
    wait_until("the operator pod is Ready", Duration::from_secs(120), || async {
        let pods = ready_pods(ctx, "app.kubernetes.io/name=ferry-operator").await;
        (!pods.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    release
}

/// Applies the shop and waits until every MicroService of it is Available.
pub async fn apply_shop(ctx: &TestContext, options: &ShopOptions) {
    let manifests = shop_manifests(ctx, options);
    tools::run_ok("kubectl", &["apply", "-n", &ctx.namespace, "-f", "-"], Some(&manifests), &[]);
    let list: Value = serde_json::from_str(&manifests).expect("JSON list");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| item["kind"] == "MicroService")
        .filter_map(|item| item["metadata"]["name"].as_str())
        .collect();
    for name in names {
        tools::run_ok(
            "kubectl",
            &[
                "wait",
                "-n",
                &ctx.namespace,
                "--for=condition=Available",
                &format!("microservice/{name}"),
                "--timeout=180s",
            ],
            None,
            &[],
        );
    }
}

/// `kubectl patch --type=json` of the inventory MicroService (JSON patch, so
/// single list entries such as one env var can be added or replaced).
pub fn patch_inventory(ctx: &TestContext, patch: &Value) {
    tools::run_ok(
        "kubectl",
        &["patch", "-n", &ctx.namespace, "microservice/inventory", "--type=json", "-p", &patch.to_string()],
        None,
        &[],
    );
}

/// One inventory fault as a `faults:` entry (services/README.md, *Fault
/// injection*): `delay_ms` added to `method` (e.g. `DeductStock`) and
/// `error_ratio` of its calls answered UNAVAILABLE.
pub fn inventory_fault(method: &str, delay_ms: u64, error_ratio: f64) -> String {
    format!(
        "\"/ferry.inventory.v1.InventoryService/{method}\": {{delay_ms: {delay_ms}, error_ratio: {error_ratio}}}"
    )
}

/// Sets inventory's `faults:` in its ConfigMap (`{}` with no `faults`:
/// faults off). The pods reload it without a restart once the kubelet has
/// updated the mounted file (its sync period: 10 s on kind.sh's node, a minute
/// by default) and the service's next poll; needs
/// [`ShopOptions::inventory_fault_injection`], or the service rejects the new
/// file and keeps the old one.
pub fn set_inventory_faults(ctx: &TestContext, faults: &[String]) {
    let config = tools::run_ok(
        "kubectl",
        &["get", "-n", &ctx.namespace, "configmap/inventory-config", "-o", "jsonpath={.data.config\\.yaml}"],
        None,
        &[],
    );
    let config = set_config_line(&config, "faults", &format!("{{{}}}", faults.join(", ")));
    let patch = json!({"data": {"config.yaml": config}});
    tools::run_ok(
        "kubectl",
        &[
            "patch",
            "-n",
            &ctx.namespace,
            "configmap/inventory-config",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
        &[],
    );
}

/// The operator chart plus the shop, both Available, with `stock` widgets.
pub async fn deploy(ctx: &TestContext, options: &ShopOptions, stock: i64) -> tools::HelmRelease {
    let release = install_operator(ctx).await;
    apply_shop(ctx, options).await;
    let inventory = channels(&service_endpoint(ctx, "inventory").await, 1).await;
    set_stock(inventory[0].clone(), stock).await;
    release
}

/// Running pods whose Ready condition is True, by label selector.
pub async fn ready_pods(ctx: &TestContext, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = ctx.api();
    let list = pods.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// `http://<clusterIP>:<port>` of a Service's port named `grpc`.
pub async fn service_endpoint(ctx: &TestContext, name: &str) -> String {
    let services: Api<Service> = ctx.api();
    let svc = services.get(name).await.expect("get service");
    let spec = svc.spec.expect("service spec");
    let ip = spec.cluster_ip.expect("cluster IP");
    let port = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("a port named grpc")
        .port;
    format!("http://{ip}:{port}")
}

/// The revision the active Service of `name` selects.
pub async fn active_revision(ctx: &TestContext, name: &str) -> Option<String> {
    let services: Api<Service> = ctx.api();
    let svc = services.get(name).await.ok()?;
    svc.spec?.selector?.get(REVISION_LABEL).cloned()
}

/// Channels to a Service, each its own HTTP/2 connection (so kube-proxy
/// spreads them over the pods).
pub async fn channels(endpoint: &str, count: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        // A Service that just got its endpoints may not be in kube-proxy's
        // rules yet (it REJECTs until its next sync): wait for a connection.
        let channel = wait_until(&format!("a connection to {endpoint}"), Duration::from_secs(30), || async {
            Endpoint::from_shared(endpoint.to_string())
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        out.push(channel);
    }
    out
}

/// Sets the stock of [`SKU`] through the inventory Service.
pub async fn set_stock(channel: Channel, quantity: i64) {
    let admin = token("inventory:admin");
    InventoryServiceClient::new(channel)
        .set_stock(authed(SetStockRequest { sku: SKU.into(), quantity }, &admin))
        .await
        .expect("SetStock");
}

/// The stock of [`SKU`] through the inventory Service.
pub async fn get_stock(channel: Channel) -> i64 {
    let read = token("inventory:read");
    InventoryServiceClient::new(channel)
        .get_stock(authed(GetStockRequest { sku: SKU.into() }, &read))
        .await
        .expect("GetStock")
        .into_inner()
        .quantity
}

/// One `CreateOrder` of one [`SKU`].
pub async fn create_order(
    channel: Channel,
    bearer: &MetadataValue<Ascii>,
    request_id: String,
) -> Result<String, tonic::Status> {
    let mut request = authed(
        CreateOrderRequest {
            request_id,
            customer_id: "e2e".into(),
            items: vec![OrderItem { sku: SKU.into(), quantity: 1 }],
        },
        bearer,
    );
    request.set_timeout(Duration::from_secs(10));
    let response = OrderServiceClient::new(channel).create_order(request).await?;
    Ok(response.into_inner().order.map(|o| o.order_id).unwrap_or_default())
}

/// A failed call of the load.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Since the load started.
    pub at: Duration,
    pub code: Code,
    pub message: String,
}

/// What an open-loop load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Order ids of acknowledged (OK) calls.
    pub acknowledged: Vec<String>,
    pub failures: Vec<Failure>,
    /// (offset from start, latency) of every completed call.
    pub latencies: Vec<(Duration, Duration)>,
    /// Ticks skipped because `max_in_flight` calls were outstanding.
    pub skipped: u64,
    /// From the start until the last call was sent.
    pub send_window: Duration,
    /// From the start until the last answer.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Calls per second the generator sent (the offered load).
    pub fn offered_rate(&self) -> f64 {
        self.sent as f64 / self.send_window.as_secs_f64()
    }

    /// Calls per second that got an answer.
    pub fn rate(&self) -> f64 {
        (self.acknowledged.len() + self.failures.len()) as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latencies of calls started in `[from, to)`.
    pub fn latency_quantile(&self, from: Duration, to: Duration, q: f64) -> Option<Duration> {
        let mut window: Vec<Duration> =
            self.latencies.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, l)| *l).collect();
        if window.is_empty() {
            return None;
        }
        window.sort();
        let index = ((window.len() - 1) as f64 * q).round() as usize;
        Some(window[index])
    }
}

/// Sends `CreateOrder` at `rate` per second (open loop: calls start on a
/// clock, not when the previous one ends) until `stop` resolves or `limit`
/// passes, over `channels` round robin, with at most `max_in_flight` calls
/// outstanding. Waits for every started call before returning.
pub async fn create_order_load(
    channels: Vec<Channel>,
    rate: u32,
    limit: Duration,
    max_in_flight: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> LoadReport {
    let bearer = token("orders:write orders:read");
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let run_id = crate::unique_suffix();
    let mut stop = stop;
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        if start.elapsed() >= limit {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            report.lock().expect("report").skipped += 1;
            continue;
        };
        n += 1;
        let channel = channels[(n as usize) % channels.len()].clone();
        let bearer = bearer.clone();
        let report = report.clone();
        let request_id = format!("e2e-{run_id}-{n}");
        tasks.spawn(async move {
            let sent_at = start.elapsed();
            let began = Instant::now();
            let outcome = create_order(channel, &bearer, request_id).await;
            let latency = began.elapsed();
            let mut report = report.lock().expect("report");
            report.latencies.push((sent_at, latency));
            match outcome {
                Ok(order_id) => report.acknowledged.push(order_id),
                Err(status) => report.failures.push(Failure {
                    at: sent_at,
                    code: status.code(),
                    message: status.message().to_string(),
                }),
            }
            drop(permit);
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let send_window = start.elapsed();
    while tasks.join_next().await.is_some() {}
    let mut report = Arc::try_unwrap(report).expect("all tasks done").into_inner().expect("report");
    report.sent = n;
    report.send_window = send_window;
    report.elapsed = start.elapsed();
    report
}

/// `GET /metrics` of a pod's metrics port (9090), as text.
async fn scrape(pod_ip: &str) -> Option<String> {
    let fetch = async {
        let mut stream = TcpStream::connect((pod_ip, 9090)).await.ok()?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.0\r\nHost: {pod_ip}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch).await.ok().flatten()
}

/// The sum of `grpc_server_handled_total` for `method` in a metrics text.
pub fn handled_total(metrics: &str, method: &str) -> f64 {
    let needle = format!("grpc_method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Inventory pods with an IP: (name, revision, IP).
pub async fn inventory_pods(ctx: &TestContext) -> Vec<(String, String, String)> {
    let pods: Api<Pod> = ctx.api();
    let list = pods
        .list(&ListParams::default().labels("ferry.dev/microservice=inventory"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            let revision = pod.labels().get(REVISION_LABEL).cloned().unwrap_or_default();
            Some((pod.name_any(), revision, ip))
        })
        .collect()
}

/// `DeductStock` calls each of `pods` has handled, keyed by pod name, with
/// the pod's revision. Pods that cannot be scraped are left out.
pub async fn deductions_of(pods: &[(String, String, String)]) -> BTreeMap<String, (String, f64)> {
    let mut out = BTreeMap::new();
    for (name, revision, ip) in pods {
        if let Some(text) = scrape(ip).await {
            out.insert(name.clone(), (revision.clone(), handled_total(&text, "DeductStock")));
        }
    }
    out
}

/// [`deductions_of`] every inventory pod.
pub async fn deductions_by_pod(ctx: &TestContext) -> BTreeMap<String, (String, f64)> {
    deductions_of(&inventory_pods(ctx).await).await
}

/// How a blue-green rollout of inventory ends in [`rollout_under_load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Auto promotion: traffic moves to green.
    Promote,
    /// `ferry.dev/abort` on the preview: traffic must stay on blue.
    Abort,
}

/// What one rollout under load measured. Times are offsets from the load's start.
#[derive(Debug)]
pub struct CutoverReport {
    pub load: LoadReport,
    pub blue: String,
    pub green: Option<String>,
    /// When the MicroService was patched to the new revision.
    pub patched_at: Duration,
    /// When the active Service was first seen selecting green (promotion only).
    pub switched_at: Option<Duration>,
    /// The last time a blue pod's `DeductStock` counter was seen to grow.
    pub last_blue_call_at: Option<Duration>,
    /// `DeductStock` calls green pods handled.
    pub green_calls: f64,
    /// When the abort annotation was set (abort only).
    pub aborted_at: Option<Duration>,
}

impl CutoverReport {
    /// Seconds from the switch until blue handled its last call.
    pub fn seconds_until_all_on_green(&self) -> Option<f64> {
        let switched = self.switched_at?;
        let last = self.last_blue_call_at.unwrap_or(switched);
        Some(last.saturating_sub(switched).as_secs_f64())
    }

    /// Table rows: failed calls and p50/p99 before, during and after the switch.
    pub fn table(&self) -> String {
        let end = self.load.elapsed;
        let pivot = self.switched_at.or(self.aborted_at).unwrap_or(end);
        let windows = [
            ("before (start → patch)", Duration::ZERO, self.patched_at),
            ("during (patch → switch + 5 s)", self.patched_at, pivot + Duration::from_secs(5)),
            ("after (switch + 5 s → end)", pivot + Duration::from_secs(5), end),
        ];
        let mut out = String::from("| window | calls | failed | p50 | p99 |\n|---|---:|---:|---:|---:|\n");
        for (name, from, to) in windows {
            let calls = self.load.latencies.iter().filter(|(at, _)| *at >= from && *at < to).count();
            let failed = self.load.failures.iter().filter(|f| f.at >= from && f.at < to).count();
            let ms = |q| {
                self.load
                    .latency_quantile(from, to, q)
                    .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "-".into())
            };
            out += &format!("| {name} | {calls} | {failed} | {} | {} |\n", ms(0.5), ms(0.99));
        }
        out
    }
}

/// Runs `CreateOrder` load at `rate`/s, rolls inventory to a new revision
/// after `warmup`, and ends the rollout as `ending` says; keeps the load
/// `settle` past the switch (or the abort), sampling every inventory pod's
/// `DeductStock` counter every 200 ms.
pub async fn rollout_under_load(
    ctx: &TestContext,
    rate: u32,
    warmup: Duration,
    settle: Duration,
    ending: Ending,
) -> CutoverReport {
    let blue = active_revision(ctx, "inventory").await.expect("inventory has an active revision");
    let order = channels(&service_endpoint(ctx, "order").await, 8).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    let load = tokio::spawn(create_order_load(
        order,
        rate,
        warmup + settle + Duration::from_secs(240),
        // Open loop: up to 8 s of backlog at 500/s queues rather than thinning
        // the offered load; a call slower than its 10 s deadline fails and counts.
        4096,
        stop_rx,
    ));
    // The warm-up is part of the experiment (a "before" window), not a wait
    // for some condition.
    tokio::time::sleep(warmup).await;
    patch_inventory(
        ctx,
        &json!([{"op": "add", "path": "/spec/env/-", "value": {"name": "ROLLOUT", "value": "green"}}]),
    );
    let patched_at = started.elapsed();
    let mut report = CutoverReport {
        load: LoadReport::default(),
        blue: blue.clone(),
        green: None,
        patched_at,
        switched_at: None,
        last_blue_call_at: None,
        green_calls: 0.0,
        aborted_at: None,
    };
    let mut last_blue_total = -1.0;
    let deadline = started + warmup + Duration::from_secs(180);
    let mut sampler = tokio::time::interval(Duration::from_millis(200));
    // The pod list is refreshed once a second (not every sample) to keep
    // the measurement's own API traffic off the two cores it measures.
    let mut pods = inventory_pods(ctx).await;
    let mut pods_listed = Instant::now();
    while Instant::now() < deadline {
        sampler.tick().await;
        let now = started.elapsed();
        if pods_listed.elapsed() >= Duration::from_secs(1) {
            pods = inventory_pods(ctx).await;
            pods_listed = Instant::now();
        }
        let counts = deductions_of(&pods).await;
        let blue_total: f64 = counts.values().filter(|(r, _)| *r == blue).map(|(_, n)| n).sum();
        if blue_total > last_blue_total {
            if last_blue_total >= 0.0 {
                report.last_blue_call_at = Some(now);
            }
            last_blue_total = blue_total;
        }
        report.green_calls = counts.values().filter(|(r, _)| *r != blue).map(|(_, n)| n).sum();
        if report.green.is_none() {
            report.green = counts.values().map(|(r, _)| r.clone()).find(|r| *r != blue);
        }
        match ending {
            Ending::Promote => {
                if report.switched_at.is_none() {
                    let active = active_revision(ctx, "inventory").await;
                    if active.is_some() && active.as_deref() != Some(blue.as_str()) {
                        report.switched_at = Some(now);
                        report.green = active;
                    }
                }
                if report.switched_at.is_some_and(|s| now >= s + settle) {
                    break;
                }
            }
            Ending::Abort => {
                if report.aborted_at.is_none()
                    && let Some(green) = report.green.clone()
                    && !ready_pods(ctx, &format!("{REVISION_LABEL}={green}")).await.is_empty()
                {
                    tools::run_ok(
                        "kubectl",
                        &[
                            "annotate",
                            "-n",
                            &ctx.namespace,
                            "microservice/inventory",
                            &format!("ferry.dev/abort={green}"),
                        ],
                        None,
                        &[],
                    );
                    report.aborted_at = Some(started.elapsed());
                }
                if report.aborted_at.is_some_and(|a| now >= a + settle) {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(());
    report.load = load.await.expect("load task");
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_line_is_replaced_not_duplicated() {
        let config = "a: 1\nmax_connection_age_seconds: 300\nb: 2\n";
        let changed = set_config_line(config, "max_connection_age_seconds", "2");
        assert_eq!(changed, "a: 1\nb: 2\nmax_connection_age_seconds: 2\n");
        assert_eq!(set_config_line("a: 1\n", "c", "3"), "a: 1\nc: 3\n");
    }

    #[test]
    fn inventory_faults_land_as_one_faults_line_keyed_by_method_path() {
        let config = "log_level: info\nfaults: {}\n";
        let faults = [inventory_fault("DeductStock", 800, 0.0), inventory_fault("GetStock", 0, 1.0)];
        let changed = set_config_line(config, "faults", &format!("{{{}}}", faults.join(", ")));
        let value: serde_yaml::Value = serde_yaml::from_str(&changed).expect("YAML");
        let deduct = &value["faults"]["/ferry.inventory.v1.InventoryService/DeductStock"];
        assert_eq!(deduct["delay_ms"].as_u64(), Some(800), "{changed}");
        let get = &value["faults"]["/ferry.inventory.v1.InventoryService/GetStock"];
        assert_eq!(get["error_ratio"].as_f64(), Some(1.0), "{changed}");
        assert_eq!(changed.matches("faults:").count(), 1, "{changed}");
    }

    #[test]
    fn the_async_example_is_the_shop_plus_a_broker_both_services_depend_on() {
        let sync = tools::example_manifests("examples/shop");
        let docs = tools::example_manifests(ASYNC_SHOP);
        let kinds = |docs: &[Value]| {
            docs.iter()
                .filter(|d| d["kind"] != "MicroService")
                .map(|d| d["metadata"]["name"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&docs), kinds(&sync), "the same namespace, Secret and ConfigMaps");
        let service =
            |name: &str| docs.iter().find(|d| d["kind"] == "MicroService" && d["metadata"]["name"] == name);
        let nats = service("nats").expect("a nats MicroService");
        assert_eq!(nats["spec"]["health"]["port"], "monitor");
        assert!(
            nats["spec"]["args"].as_array().expect("args").iter().any(|a| a == "--store_dir=/tmp/jetstream")
        );
        for name in ["inventory", "order"] {
            let deps = service(name).expect(name)["spec"]["dependsOn"].clone();
            assert!(
                deps.as_array()
                    .expect("dependsOn")
                    .iter()
                    .any(|d| d["name"] == "nats" && d["env"] == "NATS_URL"),
                "{name}: {deps}"
            );
        }
        let env = service("order").expect("order")["spec"]["env"].clone();
        assert!(
            env.as_array().expect("env").iter().any(|e| e["name"] == "SAGA_MODE" && e["value"] == "async")
        );
    }

    #[test]
    fn handled_total_sums_every_code_of_one_method_only() {
        let text = "# HELP x\n\
            grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"DeductStock\",grpc_code=\"OK\"} 7\n\
            grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"DeductStock\",grpc_code=\"NotFound\"} 2\n\
            grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"GetStock\",grpc_code=\"OK\"} 5\n";
        assert_eq!(handled_total(text, "DeductStock"), 9.0);
        assert_eq!(handled_total(text, "SetStock"), 0.0);
    }

    #[test]
    fn a_latency_quantile_looks_only_at_calls_started_in_the_window() {
        let report = LoadReport {
            latencies: vec![
                (Duration::from_secs(1), Duration::from_millis(10)),
                (Duration::from_secs(2), Duration::from_millis(20)),
                (Duration::from_secs(3), Duration::from_millis(900)),
            ],
            ..LoadReport::default()
        };
        let window = report.latency_quantile(Duration::ZERO, Duration::from_secs(3), 1.0);
        assert_eq!(window, Some(Duration::from_millis(20)));
        assert_eq!(report.latency_quantile(Duration::from_secs(9), Duration::from_secs(10), 0.5), None);
    }
}
