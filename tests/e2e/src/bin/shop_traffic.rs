//! `shop_traffic`: a bounded `CreateOrder` load on the shop's order Service
//! (`make demo` on kind runs one and prints what it saw; run it longer in a
//! second terminal to watch a blue-green rollout under live traffic).
//!
//! Talks to ClusterIPs, so it runs inside the kind node's network namespace:
//!
//! ```text
//! tests/e2e/kind/kind.sh netns env KUBECONFIG=target/kind/kubeconfig.node \
//!   target/release/shop_traffic --rate 20 --seconds 10
//! ```
//!
//! Exits non-zero when no order was acknowledged.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use clap::Parser;
use ferry_e2e::{TestContext, shop};

#[derive(Parser)]
#[command(about = "Send CreateOrder calls to the shop at a constant rate, for a bounded time")]
struct Args {
    /// The shop's namespace.
    #[arg(long, default_value = "shop")]
    namespace: String,
    /// Calls per second (open loop).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// How long to send, in seconds (at most one hour).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Set the widget stock first (SetStock through the inventory Service).
    #[arg(long)]
    stock: Option<i64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let client = ferry_e2e::client().await;
    let nodes = ferry_e2e::Nodes::of(&client).await;
    let ctx = TestContext { client, namespace: args.namespace.clone(), nodes };
    let inventory = shop::channels(&shop::service_endpoint(&ctx, "inventory").await, 1).await;
    if let Some(stock) = args.stock {
        shop::set_stock(inventory[0].clone(), stock).await;
    }
    let before = shop::get_stock(inventory[0].clone()).await;
    let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 2).await;
    println!(
        "sending CreateOrder (1 {}) at {}/s for {} s to the order Service in namespace {}",
        shop::SKU,
        args.rate,
        args.seconds,
        args.namespace
    );
    // The sender stays alive until the load ends on its own time limit.
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    let report =
        shop::create_order_load(order, args.rate, Duration::from_secs(args.seconds), 256, stop_rx).await;
    let after = shop::get_stock(inventory[0].clone()).await;

    let ms = |q| {
        report
            .latency_quantile(Duration::ZERO, report.elapsed, q)
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for failure in &report.failures {
        *failures.entry(format!("{:?}", failure.code)).or_default() += 1;
    }
    println!(
        "sent {}, acknowledged {}, failed {} {:?}",
        report.sent,
        report.acknowledged.len(),
        report.failures.len(),
        failures
    );
    println!("answered {:.0}/s, latency p50 {} p99 {}", report.rate(), ms(0.5), ms(0.99));
    println!("{} stock: {before} before, {after} after", shop::SKU);
    if let Some(failure) = report.failures.first() {
        println!("first failure: {:?} {}", failure.code, failure.message);
    }
    if report.acknowledged.is_empty() {
        eprintln!("no order was acknowledged");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
