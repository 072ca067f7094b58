//! `ferry-bench`: the numbers behind `make bench-services` (see services/BENCHMARKS.md).
//!
//! Every server runs as a child process of this binary (the release `inventory-service` and
//! `order-service` next to it, and `ferry-bench bare-server` for the baseline), so the RSS read
//! from `/proc/<pid>/status` is the server's own. All traffic goes to 127.0.0.1. Every load loop
//! stops at a request count and at a time limit (at most 10 s per scenario), whichever is first.
//! Only successful calls count towards req/s and latency; every deduction scenario checks that
//! final stock = initial stock − successful deductions (no oversell, no lost or double deduction).

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::Parser;
use ferry_proto::{
    inventory::v1::{
        DeductStockRequest, DeductStockResponse, GetStockRequest, GetStockResponse, ReleaseStockRequest,
        ReleaseStockResponse, RestockRequest, RestockResponse, SetStockRequest, SetStockResponse,
        inventory_service_client::InventoryServiceClient,
        inventory_service_server::{InventoryService, InventoryServiceServer},
    },
    order::v1::{CreateOrderRequest, OrderItem, order_service_client::OrderServiceClient},
};
use ferry_service_common::auth::Claims;
use rand::Rng;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Code, Request, Response, Status, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const INVENTORY: &str = "ferry.inventory.v1.InventoryService";
const HARD_LIMIT: Duration = Duration::from_secs(10);
const SECRET: &str = "ferry-bench-secret-0123456789abcdef";

#[derive(Debug, Parser)]
#[command(name = "ferry-bench", about = "Ferry service benchmarks (numbers, not tests)")]
struct Args {
    /// Seconds per load scenario (capped at 10).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Request cap per load scenario.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Concurrent calls in flight (the PostgreSQL hot-sku rows use 100, like the naive baseline).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Paired bare/full rounds for the middleware comparison; the verdict is the median of the
    /// per-round full ÷ bare ratios.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Seconds per middleware round (capped at 10).
    #[arg(long, default_value_t = 3)]
    round_seconds: u64,
    /// PostgreSQL URL (127.0.0.1 only); the PostgreSQL rows are skipped without it.
    #[arg(long, env = "FERRY_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Run only these groups (comma-separated: middleware, sqlite, order, postgres); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run the baseline server instead (internal).
    #[arg(long, hide = true)]
    bare_server: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.bare_server {
        return tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bare_server());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(args))
}

// ---------------------------------------------------------------------------------------------
// The baseline: tonic with no middleware, serving grpc.health.v1 and a GetStock that only validates.

struct Bare;

#[tonic::async_trait]
impl InventoryService for Bare {
    async fn deduct_stock(
        &self,
        _: Request<DeductStockRequest>,
    ) -> Result<Response<DeductStockResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
    async fn release_stock(
        &self,
        _: Request<ReleaseStockRequest>,
    ) -> Result<Response<ReleaseStockResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
    async fn get_stock(&self, req: Request<GetStockRequest>) -> Result<Response<GetStockResponse>, Status> {
        // The same validation the real handler runs before it touches the database.
        let sku = ferry_proto::domain::Sku::try_from(req.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(GetStockResponse { sku: sku.to_string(), quantity: 0 }))
    }
    async fn set_stock(&self, _: Request<SetStockRequest>) -> Result<Response<SetStockResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
    async fn restock(&self, _: Request<RestockRequest>) -> Result<Response<RestockResponse>, Status> {
        Err(Status::unimplemented("bare baseline"))
    }
}

async fn bare_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTENING {}", listener.local_addr()?);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(INVENTORY, tonic_health::ServingStatus::Serving).await;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(InventoryServiceServer::new(Bare))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child servers.

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill().ok();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit", self.name))??;
        Ok(())
    }
}

/// Starts `cmd` and waits (at most 60 s) for the line that names its gRPC address; the rest
/// of its output is drained in the background.
async fn spawn(name: &'static str, mut cmd: Command) -> anyhow::Result<Server> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("LISTENING ") {
                return Ok::<_, anyhow::Error>(Some(rest.trim().parse::<SocketAddr>()?));
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v.pointer("/fields/grpc_addr").and_then(|a| a.as_str())
            {
                return Ok(Some(addr.parse::<SocketAddr>()?));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| format!("{name} did not report its address within 60 s"))??;
    let addr = found.with_context(|| format!("{name} exited before listening"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { name, child, addr })
}

fn sibling(bin: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(bin);
    if !path.exists() {
        bail!("{} not found: build it first (cargo build --release -p {bin})", path.display());
    }
    Ok(path)
}

fn server_cmd(bin: &Path, data: &Path, key: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--grpc-addr=127.0.0.1:0")
        .arg("--metrics-addr=127.0.0.1:0")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--jwt-key-file={}", key.display()))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("DATABASE_URL")
        .env_remove("FERRY_CONFIG_FILE");
    cmd
}

/// Resident set size of `pid` in KiB (`VmRSS`, or `VmHWM` for the peak).
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Load.

enum Outcome {
    /// Counted: a successful call.
    Ok,
    /// An expected refusal (e.g. out of stock); not counted.
    Refused,
    /// Anything else.
    Error(Code),
}

#[derive(Debug, Default, Clone)]
struct LoadResult {
    ok: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    peak_rss_kib: Vec<(&'static str, u64)>,
    /// The server's CPU time per call over the load (middleware rounds only).
    server_cpu_ns_per_call: Option<f64>,
    /// This load generator's CPU time per call over the load (middleware rounds only).
    client_cpu_ns_per_call: Option<f64>,
    /// Share of the machine's CPU time left idle during the load (middleware rounds only).
    idle_share: Option<f64>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Runs `call(worker, seq)` from `concurrency` workers until `max` calls or `duration` (never
/// more than 10 s), sampling the RSS of `watch` every 100 ms.
async fn load<F, Fut>(
    concurrency: usize,
    duration: Duration,
    max: u64,
    watch: &[(&'static str, u32)],
    call: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let duration = duration.min(HARD_LIMIT);
    let call = Arc::new(call);
    let seq = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let watch = watch.to_vec();
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = vec![0u64; watch.len()];
            while !done.load(Ordering::Relaxed) {
                for (i, (_, pid)) in watch.iter().enumerate() {
                    peak[i] = peak[i].max(rss_kib(*pid, "VmRSS:").unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            watch.iter().map(|(n, _)| *n).zip(peak).collect::<Vec<_>>()
        })
    };
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (call, seq) = (call.clone(), seq.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut refused, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                if i >= max || start.elapsed() >= duration {
                    break;
                }
                let t = Instant::now();
                match call(w, i).await {
                    Outcome::Ok => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Outcome::Refused => refused += 1,
                    Outcome::Error(code) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{code:?}"));
                    }
                }
            }
            (lat, refused, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut result = LoadResult::default();
    for w in workers {
        if let Ok((lat, refused, errors, first_error)) = w.await {
            all.extend(lat);
            result.refused += refused;
            result.errors += errors;
            if result.first_error.is_none() {
                result.first_error = first_error;
            }
        }
    }
    result.elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    result.peak_rss_kib = sampler.await.unwrap_or_default();
    all.sort_unstable();
    result.ok = all.len() as u64;
    let pct = |p: f64| -> Duration {
        if all.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        Duration::from_micros(u64::from(all[idx]))
    };
    result.p50 = pct(0.50);
    result.p99 = pct(0.99);
    result
}

fn classify<T>(r: Result<T, Status>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(s) if s.code() == Code::FailedPrecondition => Outcome::Refused,
        Err(s) => Outcome::Error(s.code()),
    }
}

fn token(scope: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = Claims { sub: "ferry-bench".into(), exp, scope: scope.into() };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

fn authed<T>(msg: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

struct Ctx {
    args: Args,
    run: String,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    rows: Vec<Row>,
    checks: Vec<String>,
    rss: Vec<(String, u64, u64)>,
    /// Per-round full ÷ bare ratios (Health/Check, GetStock), when the middleware group ran.
    middleware_ratios: Option<(Vec<f64>, Vec<f64>)>,
}

struct Row {
    scenario: String,
    result: LoadResult,
    note: String,
}

impl Ctx {
    fn wants(&self, group: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|g| g == group)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.args.seconds.clamp(1, 10))
    }

    fn push(&mut self, scenario: impl Into<String>, result: LoadResult, note: impl Into<String>) {
        let scenario = scenario.into();
        eprintln!(
            "  {scenario}: {:.0}/s ok={} refused={} errors={}{} p50={:?} p99={:?}",
            result.rate(),
            result.ok,
            result.refused,
            result.errors,
            result.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            result.p50,
            result.p99
        );
        self.rows.push(Row { scenario, result, note: note.into() });
    }

    fn record_rss(&mut self, label: &str, server: &Server, under_load: u64) {
        let hwm = server.pid().and_then(|p| rss_kib(p, "VmHWM:")).unwrap_or(0);
        self.rss.push((label.to_string(), under_load, hwm));
    }
}

fn peak_of(results: &[&LoadResult], name: &str) -> u64 {
    results
        .iter()
        .flat_map(|r| r.peak_rss_kib.iter())
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(0)
}

async fn health_load(ctx: &Ctx, server: &Server, duration: Duration) -> anyhow::Result<LoadResult> {
    let chans = Arc::new(channels(server.addr, ctx.args.connections).await?);
    let pid = server.pid().unwrap_or(0);
    Ok(load(ctx.args.concurrency, duration, ctx.args.max_requests, &[(server.name, pid)], move |w, _| {
        let ch = chans[w % chans.len()].clone();
        async move {
            let r = HealthClient::new(ch).check(HealthCheckRequest { service: INVENTORY.into() }).await;
            match r {
                Ok(_) => Outcome::Ok,
                Err(s) => Outcome::Error(s.code()),
            }
        }
    })
    .await)
}

/// GetStock with a malformed sku: every layer runs (for the full stack: trace, metrics, load
/// shedding, JWT verification and scope check, deadline), then validation answers
/// INVALID_ARGUMENT without touching the database.
async fn invalid_get_load(ctx: &Ctx, server: &Server, duration: Duration) -> anyhow::Result<LoadResult> {
    let chans = Arc::new(channels(server.addr, ctx.args.connections).await?);
    let pid = server.pid().unwrap_or(0);
    let bearer = ctx.bearer.clone();
    Ok(load(ctx.args.concurrency, duration, ctx.args.max_requests, &[(server.name, pid)], move |w, _| {
        let mut client = InventoryServiceClient::new(chans[w % chans.len()].clone());
        let req = authed(GetStockRequest { sku: "not a sku!".into() }, &bearer);
        async move {
            match client.get_stock(req).await {
                Err(s) if s.code() == Code::InvalidArgument => Outcome::Ok,
                Ok(_) => Outcome::Error(Code::Ok),
                Err(s) => Outcome::Error(s.code()),
            }
        }
    })
    .await)
}

async fn set_stock(
    client: &mut InventoryServiceClient<Channel>,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    sku: &str,
    q: i64,
) -> anyhow::Result<()> {
    client.set_stock(authed(SetStockRequest { sku: sku.into(), quantity: q }, bearer)).await?;
    Ok(())
}

async fn get_stock(
    client: &mut InventoryServiceClient<Channel>,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    sku: &str,
) -> anyhow::Result<i64> {
    Ok(client.get_stock(authed(GetStockRequest { sku: sku.into() }, bearer)).await?.into_inner().quantity)
}

/// DeductStock of 1 unit over `skus` (chosen at random per call); checks stock afterwards.
/// How hard and how long one scenario runs.
#[derive(Debug, Clone, Copy)]
struct Budget {
    concurrency: usize,
    max: u64,
    duration: Duration,
}

const fn budget(concurrency: usize, max: u64, duration: Duration) -> Budget {
    Budget { concurrency, max, duration }
}

async fn deduct_load(
    ctx: &mut Ctx,
    server: &Server,
    label: &str,
    skus: Vec<String>,
    initial: i64,
    budget: Budget,
) -> anyhow::Result<LoadResult> {
    let Budget { concurrency, max, duration } = budget;
    let mut admin = InventoryServiceClient::new(channels(server.addr, 1).await?.remove(0));
    for sku in &skus {
        set_stock(&mut admin, &ctx.bearer, sku, initial).await?;
    }
    let chans = Arc::new(channels(server.addr, ctx.args.connections).await?);
    let pid = server.pid().unwrap_or(0);
    let bearer = ctx.bearer.clone();
    let skus = Arc::new(skus);
    let prefix = format!("{}-{label}", ctx.run);
    let shared = skus.clone();
    let result = load(concurrency, duration, max, &[(server.name, pid)], move |w, i| {
        let mut client = InventoryServiceClient::new(chans[w % chans.len()].clone());
        let sku = if shared.len() == 1 {
            shared[0].clone()
        } else {
            shared[rand::rng().random_range(0..shared.len())].clone()
        };
        let req =
            authed(DeductStockRequest { request_id: format!("{prefix}-{i}"), sku, quantity: 1 }, &bearer);
        async move { classify(client.deduct_stock(req).await) }
    })
    .await;
    let mut remaining = 0i64;
    let mut negative = false;
    for sku in skus.iter() {
        let q = get_stock(&mut admin, &ctx.bearer, sku).await?;
        negative |= q < 0;
        remaining += q;
    }
    let expected = initial * skus.len() as i64 - result.ok as i64;
    let ok = remaining == expected && !negative;
    ctx.checks.push(format!(
        "{} {label}: initial {} − {} successful deductions = {expected}; final {remaining} → {}",
        if ok { "OK  " } else { "FAIL" },
        initial * skus.len() as i64,
        result.ok,
        if ok { "no oversell" } else { "MISMATCH" }
    ));
    Ok(result)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let run = format!("r{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
    let bearer: MetadataValue<_> = format!(
        "Bearer {}",
        token("inventory:read inventory:write inventory:admin orders:read orders:write")?
    )
    .parse()?;
    let tmp = tempfile::tempdir()?;
    let key = tmp.path().join("jwt.key");
    std::fs::write(&key, SECRET)?;
    let inv_token = tmp.path().join("inventory.token");
    std::fs::write(&inv_token, token("inventory:write")?)?;
    let mut ctx = Ctx {
        args,
        run,
        bearer,
        rows: Vec::new(),
        checks: Vec::new(),
        rss: Vec::new(),
        middleware_ratios: None,
    };
    let inventory_bin = sibling("inventory-service")?;
    let order_bin = sibling("order-service")?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!(
        "ferry-bench: {cpus} CPUs, {} s per scenario, {} in flight over {} connections",
        ctx.duration().as_secs(),
        ctx.args.concurrency,
        ctx.args.connections
    );

    // --- middleware: bare tonic vs the full stack, alternating rounds --------------------------
    let sqlite_dir = tmp.path().join("inventory-sqlite");
    let inv = spawn("inventory-sqlite", server_cmd(&inventory_bin, &sqlite_dir, &key)).await?;
    wait_serving(inv.addr).await?;
    if ctx.wants("middleware") {
        middleware(&mut ctx, &inv).await?;
    }

    // --- SQLite, then CreateOrder end to end (order on SQLite → inventory on SQLite) ---------------
    let mut inv_results = sqlite_rounds(&mut ctx, &inv).await?;
    if ctx.wants("order") {
        let order_paths = (order_bin.as_path(), key.as_path(), inv_token.as_path(), tmp.path());
        inv_results.push(create_order_round(&mut ctx, &inv, order_paths).await?);
    }
    let inv_peak = peak_of(&inv_results.iter().collect::<Vec<_>>(), "inventory-sqlite");
    ctx.record_rss("inventory-service (SQLite)", &inv, inv_peak);
    inv.stop().await?;

    // --- PostgreSQL ----------------------------------------------------------------------------
    if !ctx.wants("postgres") {
        eprintln!("PostgreSQL rows not selected");
    } else if let Some(url) = ctx.args.postgres_url.clone() {
        postgres(&mut ctx, &inventory_bin, &key, &url, tmp.path()).await?;
    } else {
        eprintln!("no --postgres-url: PostgreSQL rows skipped");
    }

    print_report(&ctx, cpus);
    if ctx.checks.iter().any(|c| c.starts_with("FAIL")) {
        bail!("a stock check failed");
    }
    Ok(())
}

/// DeductStock on SQLite: one hot sku, 1,000 skus, and a scarce sku (the oversell check).
async fn sqlite_rounds(ctx: &mut Ctx, inv: &Server) -> anyhow::Result<Vec<LoadResult>> {
    let mut inv_results = Vec::new();
    let c = ctx.args.concurrency;
    let max = ctx.args.max_requests;
    let run = ctx.run.clone();
    let dur = ctx.duration();
    if ctx.wants("sqlite") {
        eprintln!("inventory on SQLite");
        let r = deduct_load(
            ctx,
            inv,
            "sqlite-hot",
            vec![format!("{run}-hot")],
            1_000_000_000,
            budget(c, max, dur),
        )
        .await?;
        inv_results.push(r.clone());
        ctx.push("DeductStock, SQLite, 1 hot sku", r, format!("{c} in flight"));
        let skus: Vec<String> = (0..1000).map(|i| format!("{}-s{i}", ctx.run)).collect();
        let r = deduct_load(ctx, inv, "sqlite-1000", skus, 1_000_000, budget(c, max, dur)).await?;
        inv_results.push(r.clone());
        ctx.push("DeductStock, SQLite, 1,000 skus", r, format!("{c} in flight"));
        let r = deduct_load(
            ctx,
            inv,
            "sqlite-scarce",
            vec![format!("{run}-scarce")],
            500,
            budget(100, 2000, HARD_LIMIT),
        )
        .await?;
        scarce_check(ctx, "SQLite", &r, 500);
    }
    Ok(inv_results)
}

/// CreateOrder end to end against `inv`: order on SQLite, 1,000 skus, the books checked after.
/// `paths`: the order-service binary, the JWT key, inventory's token and a scratch directory.
async fn create_order_round(
    ctx: &mut Ctx,
    inv: &Server,
    (order_bin, key, inv_token, tmp): (&Path, &Path, &Path, &Path),
) -> anyhow::Result<LoadResult> {
    let (c, max) = (ctx.args.concurrency, ctx.args.max_requests);
    eprintln!("CreateOrder end to end");
    let mut cmd = server_cmd(order_bin, &tmp.join("order-sqlite"), key);
    cmd.arg(format!("--inventory-addr=127.0.0.1:{}", inv.addr.port()))
        .arg(format!("--inventory-token-file={}", inv_token.display()));
    let order = spawn("order", cmd).await?;
    wait_serving_named(order.addr, "ferry.order.v1.OrderService").await?;
    let order_skus: Vec<String> = (0..1000).map(|i| format!("{}-o{i}", ctx.run)).collect();
    let mut admin = InventoryServiceClient::new(channels(inv.addr, 1).await?.remove(0));
    for sku in &order_skus {
        set_stock(&mut admin, &ctx.bearer, sku, 1_000_000).await?;
    }
    let chans = Arc::new(channels(order.addr, ctx.args.connections).await?);
    let watch = [("order", order.pid().unwrap_or(0)), ("inventory-sqlite", inv.pid().unwrap_or(0))];
    let bearer = ctx.bearer.clone();
    let (prefix, shared) = (format!("{}-order", ctx.run), Arc::new(order_skus.clone()));
    let r = load(c, ctx.duration(), max, &watch, move |w, i| {
        let mut client = OrderServiceClient::new(chans[w % chans.len()].clone());
        let sku = shared[rand::rng().random_range(0..shared.len())].clone();
        let req = authed(
            CreateOrderRequest {
                request_id: format!("{prefix}-{i}"),
                customer_id: format!("c{w}"),
                items: vec![OrderItem { sku, quantity: 1 }],
            },
            &bearer,
        );
        async move { classify(client.create_order(req).await) }
    })
    .await;
    let mut remaining = 0i64;
    for sku in &order_skus {
        remaining += get_stock(&mut admin, &ctx.bearer, sku).await?;
    }
    let expected = 1_000_000 * order_skus.len() as i64 - r.ok as i64;
    ctx.checks.push(format!(
        "{} CreateOrder: initial {} − {} confirmed orders = {expected}; final {remaining}{}",
        if remaining == expected { "OK  " } else { "FAIL" },
        1_000_000 * order_skus.len() as i64,
        r.ok,
        if r.errors > 0 {
            format!(" ({} calls failed with errors; an order left PENDING may hold stock)", r.errors)
        } else {
            String::new()
        }
    ));
    let order_peak = peak_of(&[&r], "order");
    ctx.push(
        "CreateOrder end to end (1 item; order + inventory on SQLite)",
        r.clone(),
        format!("{c} in flight"),
    );
    ctx.record_rss("order-service (SQLite)", &order, order_peak);
    order.stop().await?;
    Ok(r)
}

/// The two no-DB calls of the middleware comparison.
#[derive(Clone, Copy)]
enum NoDbCall {
    Health,
    GetStock,
}

async fn no_db_load(
    ctx: &Ctx,
    server: &Server,
    call: NoDbCall,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let pid = server.pid().unwrap_or(0);
    let before = cpu_ns(pid);
    let client_before = cpu_ns(std::process::id());
    let idle_before = machine_idle();
    let mut result = match call {
        NoDbCall::Health => health_load(ctx, server, duration).await,
        NoDbCall::GetStock => invalid_get_load(ctx, server, duration).await,
    }?;
    let calls = result.ok + result.refused + result.errors;
    let per_call = |before: Option<u64>, after: Option<u64>| {
        before.zip(after).filter(|_| calls > 0).map(|(b, a)| a.saturating_sub(b) as f64 / calls as f64)
    };
    result.server_cpu_ns_per_call = per_call(before, cpu_ns(pid));
    result.client_cpu_ns_per_call = per_call(client_before, cpu_ns(std::process::id()));
    result.idle_share = idle_before
        .zip(machine_idle())
        .and_then(|((i0, t0), (i1, t1))| (t1 > t0).then(|| i1.saturating_sub(i0) as f64 / (t1 - t0) as f64));
    Ok(result)
}

/// CPU time all of `pid`'s threads have run, in ns (the first field of each thread's
/// `schedstat`). Threads that ended in between are not counted; the servers' pools are fixed.
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .sum(),
    )
}

/// The machine's idle and total CPU time so far, in clock ticks (the `cpu` line of /proc/stat;
/// idle counts `idle` and `iowait`).
fn machine_idle() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((idle, ticks.iter().take(8).sum()))
}

/// Loads `bare` and `full` back to back with `call` (full first when `full_first`); returns
/// `(bare, full)`.
async fn paired(
    ctx: &Ctx,
    bare: &Server,
    full: &Server,
    call: NoDbCall,
    duration: Duration,
    full_first: bool,
) -> anyhow::Result<(LoadResult, LoadResult)> {
    if full_first {
        let f = no_db_load(ctx, full, call, duration).await?;
        Ok((no_db_load(ctx, bare, call, duration).await?, f))
    } else {
        let b = no_db_load(ctx, bare, call, duration).await?;
        Ok((b, no_db_load(ctx, full, call, duration).await?))
    }
}

/// Bare tonic vs the full stack in paired rounds. Each round loads both servers back to back,
/// bare first in even rounds and full first in odd ones, so a machine that slows down or
/// speeds up during the run weighs on both sides alike; the verdict is the median of the
/// per-round full ÷ bare ratios. One short warm-up round per server is not counted.
async fn middleware(ctx: &mut Ctx, inv: &Server) -> anyhow::Result<()> {
    let bare = spawn("bare", {
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("--bare-server");
        c
    })
    .await?;
    let rounds = ctx.args.rounds.max(1);
    let round = Duration::from_secs(ctx.args.round_seconds.clamp(1, 10));
    eprintln!("middleware comparison ({rounds} paired rounds of {} s)", round.as_secs());
    for server in [&bare, inv] {
        no_db_load(ctx, server, NoDbCall::Health, Duration::from_secs(1)).await?;
        no_db_load(ctx, server, NoDbCall::GetStock, Duration::from_secs(1)).await?;
    }
    let (mut bare_h, mut full_h, mut bare_g, mut full_g) = (vec![], vec![], vec![], vec![]);
    let (mut ratio_h, mut ratio_g) = (vec![], vec![]);
    for i in 0..rounds {
        let full_first = i % 2 == 1;
        let (bh, fh) = paired(ctx, &bare, inv, NoDbCall::Health, round, full_first).await?;
        let (bg, fg) = paired(ctx, &bare, inv, NoDbCall::GetStock, round, full_first).await?;
        ratio_h.push(fh.rate() / bh.rate().max(1e-9));
        ratio_g.push(fg.rate() / bg.rate().max(1e-9));
        let us = |ns: Option<f64>| ns.map_or(f64::NAN, |ns| ns / 1000.0);
        let cpu = |f: &LoadResult, b: &LoadResult| {
            format!(
                "server CPU {:.1}/{:.1} µs per call, client {:.1}/{:.1}, idle {:.0}%/{:.0}%",
                us(f.server_cpu_ns_per_call),
                us(b.server_cpu_ns_per_call),
                us(f.client_cpu_ns_per_call),
                us(b.client_cpu_ns_per_call),
                f.idle_share.map_or(f64::NAN, |x| x * 100.0),
                b.idle_share.map_or(f64::NAN, |x| x * 100.0),
            )
        };
        eprintln!(
            "  round {}: Health {:.0}/{:.0} = {:.2}× ({}), GetStock {:.0}/{:.0} = {:.2}× ({})",
            i + 1,
            fh.rate(),
            bh.rate(),
            ratio_h[i],
            cpu(&fh, &bh),
            fg.rate(),
            bg.rate(),
            ratio_g[i],
            cpu(&fg, &bg),
        );
        bare_h.push(bh);
        full_h.push(fh);
        bare_g.push(bg);
        full_g.push(fg);
    }
    let bare_peak = peak_of(&bare_h.iter().chain(&bare_g).collect::<Vec<_>>(), "bare");
    ctx.record_rss("bare tonic (baseline)", &bare, bare_peak);
    bare.stop().await?;
    for (name, runs) in [
        ("Health/Check, bare tonic (no middleware)", bare_h),
        ("Health/Check, full stack", full_h),
        ("GetStock, invalid sku (no DB), bare tonic", bare_g),
        ("GetStock, invalid sku (no DB), full stack + JWT", full_g),
    ] {
        let m = median(runs);
        let note = format!("median of {rounds} rounds × {} s", round.as_secs());
        ctx.push(name, m, note);
    }
    ctx.middleware_ratios = Some((ratio_h, ratio_g));
    Ok(())
}

fn scarce_check(ctx: &mut Ctx, backend: &str, r: &LoadResult, stock: u64) {
    // All 2,000 attempts finish well inside the 10 s bound unless the machine is very slow;
    // exactly `stock` may succeed then. Fewer attempts can only mean fewer successes.
    let attempts = r.ok + r.refused + r.errors;
    let ok = r.ok <= stock && (attempts < 2000 || r.ok == stock);
    ctx.checks.push(format!(
        "{} {backend} scarce sku: stock {stock}, 100 racing callers, 2,000 attempts → {} succeeded, {} refused (FAILED_PRECONDITION), {} errors",
        if ok { "OK  " } else { "FAIL" },
        r.ok,
        r.refused,
        r.errors
    ));
}

async fn postgres(
    ctx: &mut Ctx,
    inventory_bin: &Path,
    key: &Path,
    url: &str,
    tmp: &Path,
) -> anyhow::Result<()> {
    let parsed: sqlx::postgres::PgConnectOptions = url.parse()?;
    let host = parsed.get_host();
    if !(host == "127.0.0.1" || host == "localhost" || host == "::1" || host.starts_with('/')) {
        bail!("refusing to benchmark PostgreSQL at `{host}`: loopback only");
    }
    eprintln!("inventory on PostgreSQL");
    let mut cmd = server_cmd(inventory_bin, &tmp.join("inventory-pg"), key);
    cmd.arg(format!("--database-url={url}"));
    let inv = spawn("inventory-pg", cmd).await?;
    wait_serving(inv.addr).await?;
    let max = ctx.args.max_requests;
    let run = ctx.run.clone();
    let dur = ctx.duration();
    let r_hot =
        deduct_load(ctx, &inv, "pg-hot", vec![format!("{run}-pghot")], 1_000_000_000, budget(100, max, dur))
            .await?;
    ctx.push("DeductStock, PostgreSQL, 1 hot sku", r_hot.clone(), "100 in flight");
    let c = ctx.args.concurrency;
    let skus: Vec<String> = (0..1000).map(|i| format!("{}-p{i}", ctx.run)).collect();
    let r = deduct_load(ctx, &inv, "pg-1000", skus, 1_000_000, budget(c, max, dur)).await?;
    let peak = peak_of(&[&r_hot, &r], "inventory-pg");
    ctx.push("DeductStock, PostgreSQL, 1,000 skus", r, format!("{c} in flight"));
    let r = deduct_load(
        ctx,
        &inv,
        "pg-scarce",
        vec![format!("{run}-pgscarce")],
        500,
        budget(100, 2000, HARD_LIMIT),
    )
    .await?;
    scarce_check(ctx, "PostgreSQL", &r, 500);
    ctx.record_rss("inventory-service (PostgreSQL)", &inv, peak);
    inv.stop().await?;

    // The naive baseline: 100 connections, each running the guarded UPDATE in autocommit.
    eprintln!("naive PostgreSQL baseline");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(100)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(parsed)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS ferry_bench_naive (sku TEXT PRIMARY KEY, quantity BIGINT NOT NULL CHECK (quantity >= 0))")
        .execute(&pool)
        .await?;
    let initial: i64 = 1_000_000_000;
    sqlx::query("INSERT INTO ferry_bench_naive (sku, quantity) VALUES ('hot', $1) ON CONFLICT (sku) DO UPDATE SET quantity = $1")
        .bind(initial)
        .execute(&pool)
        .await?;
    let mut conns = Vec::with_capacity(100);
    for _ in 0..100 {
        conns.push(Arc::new(tokio::sync::Mutex::new(pool.acquire().await?)));
    }
    let conns = Arc::new(conns);
    let r = load(100, ctx.duration(), max, &[], move |w, _| {
        let conn = conns[w].clone();
        async move {
            let mut conn = conn.lock().await;
            match sqlx::query(
                "UPDATE ferry_bench_naive SET quantity = quantity - 1 WHERE sku = 'hot' AND quantity >= 1",
            )
            .execute(&mut **conn)
            .await
            {
                Ok(done) if done.rows_affected() == 1 => Outcome::Ok,
                Ok(_) => Outcome::Refused,
                Err(_) => Outcome::Error(Code::Unavailable),
            }
        }
    })
    .await;
    let final_q: i64 = sqlx::query_scalar("SELECT quantity FROM ferry_bench_naive WHERE sku = 'hot'")
        .fetch_one(&pool)
        .await?;
    ctx.checks.push(format!(
        "{} naive PostgreSQL: initial {initial} − {} = {}; final {final_q}",
        if final_q == initial - r.ok as i64 { "OK  " } else { "FAIL" },
        r.ok,
        initial - r.ok as i64
    ));
    ctx.push(
        "naive UPDATE, PostgreSQL, 1 hot row (baseline)",
        r,
        "100 connections, no service, no idempotency row",
    );
    pool.close().await;
    Ok(())
}

async fn wait_serving(addr: SocketAddr) -> anyhow::Result<()> {
    wait_serving_named(addr, INVENTORY).await
}

async fn wait_serving_named(addr: SocketAddr, service: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))?.connect().await
            && let Ok(r) = HealthClient::new(ch).check(HealthCheckRequest { service: service.into() }).await
            && r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{service} at {addr} did not become SERVING within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(mut runs: Vec<LoadResult>) -> LoadResult {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn rate_of(ctx: &Ctx, scenario: &str) -> Option<f64> {
    ctx.rows.iter().find(|r| r.scenario.starts_with(scenario)).map(|r| r.result.rate())
}

fn print_report(ctx: &Ctx, cpus: usize) {
    println!();
    println!(
        "## Results ({cpus} CPUs; client and servers share them; {} s per scenario)",
        ctx.duration().as_secs()
    );
    println!();
    println!("| scenario | successful req/s | p50 ms | p99 ms | ok | refused | errors | note |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for row in &ctx.rows {
        let r = &row.result;
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {}{} | {} |",
            row.scenario,
            r.rate(),
            ms(r.p50),
            ms(r.p99),
            r.ok,
            r.refused,
            r.errors,
            r.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            row.note
        );
    }
    println!();
    println!("| server process | peak RSS under load (MiB) | VmHWM at end (MiB) |");
    println!("|---|---:|---:|");
    for (name, load, hwm) in &ctx.rss {
        println!("| {name} | {:.1} | {:.1} |", *load as f64 / 1024.0, *hwm as f64 / 1024.0);
    }
    println!();
    println!("Stock checks (final = initial − successful deductions):");
    for c in &ctx.checks {
        println!("- {c}");
    }
    println!();
    println!("Targets:");
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b.max(1e-9));
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let Some((health, get)) = &ctx.middleware_ratios {
        for (call, ratios) in [("Health/Check", health), ("GetStock, no DB, with JWT", get)] {
            let mut sorted = ratios.clone();
            sorted.sort_by(f64::total_cmp);
            let mid = sorted.len() / 2;
            // An even count has two middle values: their mean is the median.
            let x = if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] };
            let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "- middleware ≥ 0.9× bare ({call}): {x:.2}× (median of per-round ratios {}) → {}",
                all.join(", "),
                verdict(x >= 0.9)
            );
        }
    }
    if let Some(x) = rate_of(ctx, "DeductStock, SQLite, 1 hot") {
        println!("- SQLite hot sku ≥ 5,000 deductions/s: {x:.0}/s → {}", verdict(x >= 5000.0));
    }
    if let Some(x) = ratio(rate_of(ctx, "DeductStock, PostgreSQL, 1 hot"), rate_of(ctx, "naive UPDATE")) {
        println!("- PostgreSQL hot sku ≥ 3× naive: {x:.2}× → {}", verdict(x >= 3.0));
    }
    let max_rss =
        ctx.rss.iter().filter(|(n, _, _)| !n.starts_with("bare")).map(|(_, l, _)| *l).max().unwrap_or(0);
    println!(
        "- RSS ≤ 30 MiB under load (largest service): {:.1} MiB → {}",
        max_rss as f64 / 1024.0,
        verdict(max_rss <= 30 * 1024)
    );
    let oversell = ctx.checks.iter().all(|c| c.starts_with("OK"));
    println!("- zero oversells: {}", verdict(oversell));
}
