//! `make bench-events` (numbers, not a test): the order saga end to end, synchronous against
//! asynchronous (events on NATS JetStream), at the same offered load, and the outbox relay's
//! lag through a broker outage.
//!
//! Everything is a real process on loopback: nats-server (JetStream in a temporary
//! directory), inventory-service and order-service (release builds, SQLite, auth off). Each
//! order is one unit of one sku with ample stock. Latency is from sending CreateOrder to
//! seeing the order CONFIRMED: the CreateOrder answer in the synchronous saga, a WatchOrder
//! stream opened right after the answer in the asynchronous one. Load is open-loop: orders
//! are sent at `--rate` per second whatever the answers do, for `--seconds`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use ferry_proto::{
    inventory::v1::{SetStockRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CreateOrderRequest, OrderItem, OrderStatus, WatchOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use tokio::{
    process::{Child, Command},
    time::Instant,
};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// The nats-server binary (`services/scripts/nats.sh path`).
    #[arg(long, env = "FERRY_NATS_SERVER")]
    nats_server: PathBuf,
    /// Orders per second offered in both modes.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of load per mode.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds the broker is down in the outage run.
    #[arg(long, default_value_t = 5)]
    outage_seconds: u64,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into())
}

fn sibling(bin: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(bin);
    anyhow::ensure!(path.exists(), "{} is missing: cargo build --release -p {bin}", path.display());
    Ok(path)
}

struct Nats {
    child: Option<Child>,
    bin: PathBuf,
    addr: SocketAddr,
    store: tempfile::TempDir,
}

impl Nats {
    async fn start(bin: &Path) -> anyhow::Result<Self> {
        let mut nats =
            Self { child: None, bin: bin.to_path_buf(), addr: free_port(), store: tempfile::tempdir()? };
        nats.resume().await?;
        Ok(nats)
    }

    async fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args([
                "--addr",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--jetstream",
                "--store_dir",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

struct Service {
    _child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn spawn(bin: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Service> {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(bin)
        .args([
            "--auth-disabled",
            "--log-level",
            "error",
            "--drain-seconds",
            "0",
            "--max-concurrent-requests",
            "0",
        ])
        .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &http.to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Channel::from_shared(format!("http://{grpc}"))?.connect().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{} did not listen", bin.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Service { _child: child, grpc, http })
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// One order, from CreateOrder to CONFIRMED; `None` if it did not confirm within 120 s.
async fn one_order(client: OrderServiceClient<Channel>, request_id: String) -> Option<Duration> {
    let started = Instant::now();
    let req = CreateOrderRequest {
        request_id,
        customer_id: "bench".into(),
        items: vec![OrderItem { sku: "bench".into(), quantity: 1 }],
    };
    let watched = async {
        let order = client.clone().create_order(req).await.ok()?.into_inner().order?;
        if order.status() == OrderStatus::Confirmed {
            return Some(());
        }
        // A watch ends at the call's deadline (the server's 10 s): watch again until settled.
        loop {
            let watch = WatchOrderRequest { order_id: order.order_id.clone() };
            let mut stream = client.clone().watch_order(watch).await.ok()?.into_inner();
            while let Ok(Some(item)) = stream.message().await {
                match item.order.map(|o| o.status()) {
                    Some(OrderStatus::Confirmed) => return Some(()),
                    Some(OrderStatus::Failed | OrderStatus::Cancelled) => return None,
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), watched).await.ok().flatten().map(|()| started.elapsed())
}

struct Run {
    latencies: Vec<Duration>,
    sent: usize,
    elapsed: Duration,
}

/// Offers `rate` orders/s for `seconds` (open loop); waits for every order.
async fn offer(order: SocketAddr, rate: u32, seconds: u64, tag: &str) -> anyhow::Result<Run> {
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(channel(order).await?);
        }
        v
    };
    let total = (u64::from(rate) * seconds) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let client = OrderServiceClient::new(channels[i % channels.len()].clone());
        tasks.spawn(one_order(client, format!("{tag}-{i}")));
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(latency)) = done {
            latencies.push(latency);
        }
    }
    latencies.sort();
    Ok(Run { latencies, sent: total, elapsed: started.elapsed() })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn scrape(addr: SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).await.ok()?;
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (inventory_bin, order_bin) = (sibling("inventory-service")?, sibling("order-service")?);
    let dir = tempfile::tempdir()?;
    let mut nats = Nats::start(&args.nats_server).await?;
    let url = nats.url();
    let events = ["--nats-url", url.as_str(), "--events-prefix", "bench"];
    let inventory = spawn(&inventory_bin, &dir.path().join("inventory"), &events).await?;
    InventoryServiceClient::new(channel(inventory.grpc).await?)
        .set_stock(SetStockRequest { sku: "bench".into(), quantity: 1_000_000_000 })
        .await?;
    let inv_addr = inventory.grpc.to_string();
    println!(
        "bench-events: {} orders/s for {} s per mode, 1 unit each, SQLite, loopback",
        args.rate, args.seconds
    );
    println!();
    println!("| saga | offered | confirmed | throughput | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for (mode, extra) in [("sync", vec![]), ("async", vec!["--saga-mode", "async"])] {
        let mut flags = vec!["--inventory-addr", inv_addr.as_str()];
        if mode == "async" {
            flags.extend(events);
        }
        flags.extend(extra);
        let order = spawn(&order_bin, &dir.path().join(format!("orders-{mode}")), &flags).await?;
        // Warm up connections and the first streams.
        offer(order.grpc, args.rate, 1, &format!("warm-{mode}")).await?;
        let run = offer(order.grpc, args.rate, args.seconds, mode).await?;
        let (p50, p99) = (pct(&run.latencies, 0.50), pct(&run.latencies, 0.99));
        p50s.push(p50);
        println!(
            "| {mode} | {} | {}/{} | {:.0} orders/s | {} | {} | {} |",
            args.rate,
            run.latencies.len(),
            run.sent,
            run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(run.latencies.last().copied().unwrap_or_default())
        );
    }
    if let [sync, asynchronous] = p50s[..] {
        println!();
        println!("async/sync p50: {:.2}x", asynchronous.as_secs_f64() / sync.as_secs_f64().max(1e-9));
    }

    // The relay through a broker outage, under the same load.
    let mut flags = vec!["--inventory-addr", inv_addr.as_str(), "--saga-mode", "async"];
    flags.extend(events);
    let order = spawn(&order_bin, &dir.path().join("orders-outage"), &flags).await?;
    let load = tokio::spawn(offer(order.grpc, args.rate, args.seconds + args.outage_seconds, "outage"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.kill().await;
    let down_at = Instant::now();
    let (mut peak_rows, mut peak_age) = (0.0_f64, 0.0_f64);
    while down_at.elapsed() < Duration::from_secs(args.outage_seconds) {
        peak_rows = peak_rows.max(scrape(order.http, "order_outbox_unsent_rows").await.unwrap_or(0.0));
        peak_age =
            peak_age.max(scrape(order.http, "order_outbox_oldest_unsent_age_seconds").await.unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.resume().await?;
    let back_at = Instant::now();
    loop {
        let rows = scrape(order.http, "order_outbox_unsent_rows").await.unwrap_or(f64::MAX);
        peak_rows = peak_rows.max(if rows == f64::MAX { 0.0 } else { rows });
        if rows == 0.0 || back_at.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = back_at.elapsed();
    let run = load.await??;
    println!();
    println!(
        "Relay through a {} s broker outage at {} orders/s (async saga):",
        args.outage_seconds, args.rate
    );
    println!();
    println!(
        "| peak unsent rows | peak age of oldest unsent | outbox drained after broker back | orders confirmed | p99 over the run |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {peak_rows:.0} | {peak_age:.1} s | {} | {}/{} | {} |",
        ms(drained_in),
        run.latencies.len(),
        run.sent,
        ms(pct(&run.latencies, 0.99))
    );
    Ok(())
}
