//! `make bench-autoscale`: order scaled out on its gRPC p99 through KEDA
//! against order scaled out on CPU by an HPA, under the same load in one run,
//! on kind's node with real pods. Numbers from one run; it asserts nothing.
//!
//! Each round gets its own namespace, operator release and shop, one after
//! the other on a quiet node: order at 2..=6 replicas, CPU request 50m,
//! either `latencyP99Milliseconds: 200` (KEDA ScaledObject, Prometheus
//! trigger, 30 s window) or `targetCPUUtilizationPercentage: 70` (HPA `order`,
//! metrics-server); the behavior of the e2e tests (no scale-up
//! stabilization, two pods per 15 s). The load is the same in both rounds: a
//! `DeductStock` delay (default 400 ms) injected on inventory and awaited
//! on every inventory pod first, then `CreateOrder` at a constant rate
//! (default 200/s) for a fixed window (default 150 s). Every second it reads
//! the HPA's desiredReplicas and order's Ready pods.
//!
//! Clock: from the load's start. The breach is also printed: the start of the
//! first 1 s window of calls (by send time) whose client-observed p99 is
//! above the target.
//!
//! Runs inside the kind node's network namespace (the Makefile enters it with
//! `tests/e2e/kind/kind.sh netns`), with metrics-server, Prometheus and KEDA
//! installed.

use std::time::Duration;

use ferry_e2e::{
    TestContext,
    autoscale::{self, Autoscaling, Load, ORDER_PODS, Target},
    in_namespace,
    shop::{self, LoadReport, ShopOptions},
};

const MIN_REPLICAS: i32 = 2;
const MAX_REPLICAS: i32 = 6;
const LATENCY_TARGET_MS: i32 = 200;
const CPU_TARGET_PERCENT: i32 = 70;

/// The load of both rounds.
#[derive(Clone, Copy, Debug)]
struct Params {
    rate: u32,
    delay_ms: u64,
    window: Duration,
}

/// What one round measured; times from the load's start.
#[derive(Debug, Default)]
struct Round {
    name: &'static str,
    idle_metric: String,
    breach: Option<Duration>,
    until_desired: Option<Duration>,
    first_desired: i32,
    /// The metric the HPA read when it first wanted more pods.
    metric_at_desired: Option<String>,
    until_ready: Option<Duration>,
    max_desired: i32,
    max_ready: i32,
    load: LoadReport,
}

fn arg<T: std::str::FromStr>(n: usize, default: T, what: &str) -> T {
    std::env::args().nth(n).map(|a| a.parse().unwrap_or_else(|_| panic!("{what}: {a:?}"))).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    shop::require_real_pods();
    let params = Params {
        rate: arg(1, 200, "rate: CreateOrder calls per second"),
        delay_ms: arg(2, 400, "delay: DeductStock milliseconds"),
        window: Duration::from_secs(arg(3, 150, "window: seconds of load")),
    };
    let scalers = [
        ("KEDA, gRPC p99", "bench-keda", Target::LatencyP99Ms(LATENCY_TARGET_MS)),
        ("HPA, CPU only", "bench-hpa", Target::CpuPercent(CPU_TARGET_PERCENT)),
    ];
    let mut rounds = Vec::new();
    for (name, release, target) in scalers {
        let scaler = Autoscaling { min: MIN_REPLICAS, max: MAX_REPLICAS, target, scale_down: true };
        let (tx, rx) = tokio::sync::oneshot::channel();
        in_namespace(release, |ctx| async move {
            let _ = tx.send(round(&ctx, name, release, scaler, params).await);
        })
        .await;
        rounds.push(rx.await.expect("the round's result"));
    }
    print_report(&rounds, params);
}

/// One round: the shop autoscaled by `scaler`, the delay in effect, the
/// scaler idle at `minReplicas`, then the load for the window, sampled.
async fn round(
    ctx: &TestContext,
    name: &'static str,
    release: &str,
    scaler: Autoscaling,
    params: Params,
) -> Round {
    shop::wait_for_a_quiet_node(ctx).await;
    let options = ShopOptions { inventory_fault_injection: true, ..ShopOptions::default() };
    let _release = autoscale::deploy_shop(ctx, release, &options, &scaler).await;
    autoscale::inject_deduct_stock_delay(ctx, params.delay_ms).await.unwrap_or_else(|e| panic!("{e}"));
    let unit = match scaler.target {
        Target::CpuPercent(_) => "% CPU",
        Target::LatencyP99Ms(_) => " ms p99",
    };
    let (idle, _) = scaler.wait_idle(ctx).await;
    let idle_metric = format!("{}{unit}", quantity(&idle));
    eprintln!(
        "[bench] {name}: delay in effect; idle at {MIN_REPLICAS} pods, metric {idle_metric}; load starts"
    );
    let load = Load::start(ctx, params.rate, params.window, 8, 4096).await;
    let started = load.started;
    let mut r = Round { name, idle_metric, max_desired: MIN_REPLICAS, ..Round::default() };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A fixed measurement window, sampled once a second (not a wait for a condition).
    while started.elapsed() < params.window {
        tick.tick().await;
        let now = started.elapsed();
        let hpa = scaler.hpa(ctx).await;
        let desired = hpa.as_ref().map(autoscale::desired_replicas).unwrap_or_default();
        let ready = shop::ready_pods(ctx, ORDER_PODS).await.len() as i32;
        r.max_desired = r.max_desired.max(desired);
        r.max_ready = r.max_ready.max(ready);
        if r.until_desired.is_none() && desired > MIN_REPLICAS {
            r.until_desired = Some(now);
            r.first_desired = desired;
            r.metric_at_desired =
                hpa.as_ref().and_then(|h| scaler.metric(h)).map(|m| format!("{}{unit}", quantity(&m)));
            eprintln!("[bench] {name}: {:.0} s {}", now.as_secs_f64(), scaler.state(ctx).await);
        }
        if r.until_ready.is_none() && r.until_desired.is_some() && ready >= r.first_desired {
            r.until_ready = Some(now);
        }
    }
    eprintln!("[bench] {name}: end of window: {}", scaler.state(ctx).await);
    r.load = load.stop().await;
    r.breach = first_breach(&r.load, Duration::from_millis(LATENCY_TARGET_MS as u64));
    r
}

/// The start of the first 1 s window of calls (by send time) whose p99 is above `target`.
fn first_breach(load: &LoadReport, target: Duration) -> Option<Duration> {
    let seconds = load.send_window.as_secs();
    (0..=seconds).map(Duration::from_secs).find(|from| {
        load.latency_quantile(*from, *from + Duration::from_secs(1), 0.99).is_some_and(|p99| p99 > target)
    })
}

/// A Kubernetes quantity as a plain number: `497479m` → `497.5`; others as they are.
fn quantity(q: &str) -> String {
    match q.strip_suffix('m').and_then(|n| n.parse::<f64>().ok()) {
        Some(milli) => format!("{:.1}", milli / 1000.0),
        None => q.to_string(),
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0} s", d.as_secs_f64())).unwrap_or_else(|| "none".into())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

fn print_report(rounds: &[Round], p: Params) {
    println!(
        "\nOrder scaled out on gRPC p99 (KEDA) vs CPU (HPA), one run: CreateOrder at {}/s for {} s, \
         DeductStock +{} ms on inventory (in effect before the load), order {MIN_REPLICAS}..={MAX_REPLICAS} \
         replicas, CPU request 50m; targets p99 {LATENCY_TARGET_MS} ms / CPU {CPU_TARGET_PERCENT}%. \
         Times from the load's start.\n",
        p.rate,
        p.window.as_secs(),
        p.delay_ms
    );
    println!(
        "| scaler | idle metric | client p99 > {LATENCY_TARGET_MS} ms from | → desired > {MIN_REPLICAS} (desired, metric) \
         | → those pods Ready | max desired / Ready pods | load p50 / p99 | calls sent / failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rounds {
        println!(
            "| {} | {} | {} | {} ({}, {}) | {} | {} / {} | {} / {} | {} / {} |",
            r.name,
            r.idle_metric,
            seconds(r.breach),
            seconds(r.until_desired),
            r.first_desired,
            r.metric_at_desired.as_deref().unwrap_or("-"),
            seconds(r.until_ready),
            r.max_desired,
            r.max_ready,
            ms(r.load.latency_quantile(Duration::ZERO, Duration::MAX, 0.5)),
            ms(r.load.latency_quantile(Duration::ZERO, Duration::MAX, 0.99)),
            r.load.sent,
            r.load.failures.len(),
        );
    }
    if let [keda, cpu] = rounds {
        println!(
            "| ratio KEDA / HPA | | | {} | {} | {:.2} / {:.2} | | |",
            ratio(keda.until_desired, cpu.until_desired),
            ratio(keda.until_ready, cpu.until_ready),
            f64::from(keda.max_desired) / f64::from(cpu.max_desired.max(1)),
            f64::from(keda.max_ready) / f64::from(cpu.max_ready.max(1)),
        );
    }
    for r in rounds {
        for failure in r.load.failures.iter().take(3) {
            println!(
                "{}: failure at {:.2} s: {:?} {}",
                r.name,
                failure.at.as_secs_f64(),
                failure.code,
                failure.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_milli_quantity_reads_as_a_plain_number_and_others_unchanged() {
        assert_eq!(quantity("497479m"), "497.5");
        assert_eq!(quantity("495m"), "0.5");
        assert_eq!(quantity("143"), "143");
    }

    #[test]
    fn the_breach_is_the_first_second_whose_p99_is_above_the_target() {
        let load = LoadReport {
            latencies: vec![
                (Duration::from_millis(100), Duration::from_millis(20)),
                (Duration::from_millis(1500), Duration::from_millis(30)),
                (Duration::from_millis(2200), Duration::from_millis(450)),
            ],
            send_window: Duration::from_secs(3),
            ..LoadReport::default()
        };
        assert_eq!(first_breach(&load, Duration::from_millis(200)), Some(Duration::from_secs(2)));
        assert_eq!(first_breach(&load, Duration::from_millis(500)), None);
    }
}
