//! The event-driven shop on real pods (issue 20): `examples/shop-async/` on
//! kind's node, NATS JetStream as a Ferry MicroService from the locally built
//! image (tests/e2e/images/nats.sh), order with the asynchronous saga, both
//! services on the kind tier's PostgreSQL.
//!
//! `tests/e2e/run.sh` runs this file after phase 3, inside the node's network
//! namespace (`tests/e2e/kind/kind.sh netns`), one test at a time. Every load
//! is bounded in count and time, and every wait is on a condition with a
//! deadline.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ferry_e2e::{
    TestContext, in_namespace,
    shop::{self, ShopOptions},
    tools, wait_until,
};
use ferry_proto::order::v1::{GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient};
use futures::{StreamExt, stream};
use kube::ResourceExt;
use serde_json::json;
use tonic::transport::Channel;

/// How many `GetOrder` calls a poll keeps in flight.
const READ_CONCURRENCY: usize = 32;

async fn async_shop(ctx: &TestContext, stock: i64) -> tools::HelmRelease {
    shop::require_real_pods();
    shop::wait_for_a_quiet_node(ctx).await;
    let options = ShopOptions { example: shop::ASYNC_SHOP, ..ShopOptions::default() };
    shop::deploy(ctx, &options, stock).await
}

async fn stock(ctx: &TestContext) -> i64 {
    let inventory = shop::channels(&shop::service_endpoint(ctx, "inventory").await, 1).await;
    shop::get_stock(inventory[0].clone()).await
}

/// One number from the order service's database (`shop::shop_manifests`
/// names it after the namespace), through `psql`.
fn order_db_count(ctx: &TestContext, sql: &str) -> i64 {
    let postgres = shop::Postgres::from_env();
    let database = format!("{}_order", ctx.namespace.replace('-', "_"));
    let mut args = postgres.psql_args();
    args.extend(["-d".into(), database, "-tAc".into(), sql.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tools::run_ok("psql", &args, None, &[]);
    out.trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
}

fn orders_with_status(ctx: &TestContext, status: &str) -> i64 {
    order_db_count(ctx, &format!("SELECT count(*) FROM orders WHERE status = '{status}'"))
}

fn unsent_outbox_rows(ctx: &TestContext) -> i64 {
    order_db_count(ctx, "SELECT count(*) FROM outbox WHERE sent_at_ms IS NULL")
}

/// `GetOrder` of each of `ids`: the status of those it could read.
async fn statuses(channel: &Channel, ids: &[String]) -> BTreeMap<String, OrderStatus> {
    let read = shop::token("orders:read");
    stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut client = OrderServiceClient::new(channel.clone());
            let read = read.clone();
            async move {
                let mut request = tonic::Request::new(GetOrderRequest { order_id: id.clone() });
                request.metadata_mut().insert("authorization", read);
                request.set_timeout(Duration::from_secs(10));
                let order = client.get_order(request).await.ok()?.into_inner().order?;
                Some((id, order.status()))
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

fn is_final(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Confirmed | OrderStatus::Failed | OrderStatus::Cancelled)
}

/// Waits until every order of `ids` is CONFIRMED, FAILED or CANCELLED (read
/// with `GetOrder`; an order in a final state is not read again); returns
/// the count of each final status.
async fn settle(channel: &Channel, ids: &[String], limit: Duration) -> BTreeMap<OrderStatus, usize> {
    let state = Mutex::new((ids.to_vec(), BTreeMap::<OrderStatus, usize>::new()));
    let what = format!("all {} orders to reach a final state", ids.len());
    wait_until(&what, limit, || async {
        let remaining = state.lock().expect("state").0.clone();
        let seen = statuses(channel, &remaining).await;
        let mut state = state.lock().expect("state");
        state.0.retain(|id| !seen.get(id).copied().is_some_and(is_final));
        for status in seen.values().copied().filter(|s| is_final(*s)) {
            *state.1.entry(status).or_default() += 1;
        }
        state.0.is_empty().then(|| state.1.clone())
    })
    .await
    .unwrap_or_else(|e| {
        let left = state.lock().expect("state").0.len();
        panic!("{e}: {left} orders still PENDING or CANCELLING")
    })
}

fn count(outcomes: &BTreeMap<OrderStatus, usize>, status: OrderStatus) -> usize {
    outcomes.get(&status).copied().unwrap_or(0)
}

/// Sends `CreateOrder` at `rate` per second for `limit` (open loop, bounded by
/// both); returns the load's report.
async fn bounded_load(order: &[Channel], rate: u32, limit: Duration) -> shop::LoadReport {
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    shop::create_order_load(order.to_vec(), rate, limit, 256, stop_rx).await
}

fn summary(name: &str, report: &shop::LoadReport) {
    println!(
        "{name}: sent {}, acknowledged {}, failed {}, offered {:.0}/s",
        report.sent,
        report.acknowledged.len(),
        report.failures.len(),
        report.offered_rate()
    );
    for failure in report.failures.iter().take(5) {
        println!("  failed at {:?}: {:?} {}", failure.at, failure.code, failure.message);
    }
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn orders_taken_while_inventory_is_scaled_to_zero_all_confirm_after_it_is_restored_none_lost_none_deducted_twice()
 {
    in_namespace("events-inventory-zero", |ctx| async move {
        const STOCK: i64 = 10_000;
        let _release = async_shop(&ctx, STOCK).await;
        let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 4).await;
        // The wiring works: one order confirms through the broker.
        let first = shop::create_order(order[0].clone(), &shop::token("orders:write"), format!("first-{}", ferry_e2e::unique_suffix()))
            .await
            .expect("CreateOrder");
        settle(&order[0], std::slice::from_ref(&first), Duration::from_secs(60)).await;

        // Inventory goes away: no autoscaler, zero replicas.
        shop::patch_inventory(
            &ctx,
            &json!([{"op": "remove", "path": "/spec/autoscaling"}, {"op": "add", "path": "/spec/replicas", "value": 0}]),
        );
        wait_until("no inventory pod is left", Duration::from_secs(120), || async {
            shop::inventory_pods(&ctx).await.is_empty().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        let started = Instant::now();
        let report = bounded_load(&order, 50, Duration::from_secs(10)).await;
        summary("inventory at zero", &report);
        assert!(report.failures.is_empty(), "CreateOrder needs no inventory in the async saga");
        assert!(report.acknowledged.len() >= 300, "the load ran: {} orders", report.acknowledged.len());
        let taken = statuses(&order[0], &report.acknowledged).await;
        assert_eq!(taken.len(), report.acknowledged.len(), "every acknowledged order is readable");
        assert!(
            taken.values().all(|s| *s == OrderStatus::Pending),
            "nothing settles without inventory: {:?}",
            taken.values().filter(|s| **s != OrderStatus::Pending).count()
        );

        shop::patch_inventory(&ctx, &json!([{"op": "add", "path": "/spec/replicas", "value": 2}]));
        let outcomes = settle(&order[0], &report.acknowledged, Duration::from_secs(240)).await;
        println!(
            "inventory restored: {} orders settled {:.1} s after the load started: {outcomes:?}",
            report.acknowledged.len(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(count(&outcomes, OrderStatus::Confirmed), report.acknowledged.len(), "{outcomes:?}");
        let confirmed = orders_with_status(&ctx, "CONFIRMED");
        assert_eq!(confirmed, report.acknowledged.len() as i64 + 1, "the database agrees");
        assert_eq!(stock(&ctx).await, STOCK - confirmed, "one unit taken per confirmed order, once");
    })
    .await;
}

/// The broker runs as the MicroService renders it (HTTP probes on its
/// monitoring port, non-root), and both services got its address from
/// `dependsOn`.
async fn broker_is_wired_through_the_operator(ctx: &TestContext) {
    let broker = shop::ready_pods(ctx, "ferry.dev/microservice=nats").await;
    assert_eq!(broker.len(), 1, "one Ready broker pod");
    let container = &broker[0].spec.as_ref().expect("spec").containers[0];
    let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    let security = container.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    let address = format!("nats.{}.svc:4222", ctx.namespace);
    for name in ["inventory", "order"] {
        let pods = shop::ready_pods(ctx, &format!("ferry.dev/microservice={name}")).await;
        let env = pods[0].spec.as_ref().expect("spec").containers[0].env.clone().unwrap_or_default();
        let url = env.iter().find(|e| e.name == "NATS_URL").and_then(|e| e.value.clone());
        assert_eq!(url.as_deref(), Some(address.as_str()), "{name}: NATS_URL from dependsOn");
    }
}

/// SIGKILLs the main process of the container `container_id` (a CRI id), found
/// by its cgroup from the host's process namespace (the tests enter only the
/// node's network namespace): a crash, after which the kubelet restarts the
/// container in the same pod, on the same emptyDir. Returns the pid killed.
fn kill_container(container_id: &str, command: &str) -> u32 {
    let proc = std::fs::read_dir("/proc").expect("read /proc");
    let pid = proc
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            cgroup.contains(container_id) && comm.trim() == command
        })
        .unwrap_or_else(|| {
            panic!("no {command} process in container {container_id} (run as root on kind's host)")
        });
    tools::run_ok("kill", &["-KILL", &pid.to_string()], None, &[]);
    pid
}

/// The broker pod: (name, container id, restart count), when it is Ready.
async fn ready_broker(ctx: &TestContext) -> Option<(String, String, i32)> {
    let pod = shop::ready_pods(ctx, "ferry.dev/microservice=nats").await.into_iter().next()?;
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
    let id = status.container_id?.rsplit("://").next()?.to_string();
    Some((pod.name_any(), id, status.restart_count))
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn a_broker_crash_under_a_bounded_load_loses_no_order_and_the_outbox_drains_after_it_restarts() {
    in_namespace("events-broker-kill", |ctx| async move {
        const STOCK: i64 = 1_000_000;
        let _release = async_shop(&ctx, STOCK).await;
        let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 4).await;
        let (broker, container, restarts) = ready_broker(&ctx).await.expect("a Ready broker pod");
        let load = tokio::spawn({
            let order = order.clone();
            async move { bounded_load(&order, 100, Duration::from_secs(20)).await }
        });
        wait_until("300 orders are taken", Duration::from_secs(30), || async {
            (order_db_count(&ctx, "SELECT count(*) FROM orders") >= 300).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let pid = kill_container(&container, "nats-server");
        let killed = Instant::now();
        // While the broker is away the outbox holds the new orders' events.
        let max_unsent = Mutex::new(0);
        wait_until("the broker is back (restarted and Ready)", Duration::from_secs(120), || async {
            let unsent = unsent_outbox_rows(&ctx);
            {
                let mut max = max_unsent.lock().expect("max");
                *max = (*max).max(unsent);
            }
            let (name, _, now) = ready_broker(&ctx).await?;
            (name == broker && now > restarts).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let back_after = killed.elapsed();
        let report = load.await.expect("load");
        summary("broker killed", &report);
        let max_unsent = *max_unsent.lock().expect("max");
        println!("killed nats-server (pid {pid}); Ready again after {back_after:?}; outbox peak {max_unsent} unsent");
        assert!(max_unsent > 0, "the outbox held events while the broker was away");
        assert!(report.failures.is_empty(), "CreateOrder needs no broker in the async saga");

        let settled = Instant::now();
        let outcomes = settle(&order[0], &report.acknowledged, Duration::from_secs(240)).await;
        wait_until("the outbox drains", Duration::from_secs(120), || async {
            (unsent_outbox_rows(&ctx) == 0).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        println!("settled and drained {:.1} s after the load: {outcomes:?}", settled.elapsed().as_secs_f64());
        assert_eq!(count(&outcomes, OrderStatus::Confirmed), report.acknowledged.len(), "{outcomes:?}");
        assert_eq!(orders_with_status(&ctx, "PENDING"), 0, "no order is left behind");
        let confirmed = orders_with_status(&ctx, "CONFIRMED");
        assert_eq!(confirmed, report.acknowledged.len() as i64, "the database agrees");
        assert_eq!(stock(&ctx).await, STOCK - confirmed, "the books balance: one unit per confirmed order");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs real pods (make kind-up); run by tests/e2e/run.sh"]
async fn five_hundred_orders_for_one_hundred_units_through_the_async_path_confirm_exactly_one_hundred() {
    in_namespace("events-oversell", |ctx| async move {
        const ORDERS: usize = 500;
        const STOCK: i64 = 100;
        let _release = async_shop(&ctx, STOCK).await;
        broker_is_wired_through_the_operator(&ctx).await;
        let order = shop::channels(&shop::service_endpoint(&ctx, "order").await, 8).await;
        let write = shop::token("orders:write");
        let run = ferry_e2e::unique_suffix();
        let started = Instant::now();
        let answers: Vec<Result<String, tonic::Status>> = stream::iter(0..ORDERS)
            .map(|n| shop::create_order(order[n % order.len()].clone(), &write, format!("storm-{run}-{n}")))
            .buffer_unordered(64)
            .collect()
            .await;
        let storm = started.elapsed();
        let ids: Vec<String> = answers.iter().filter_map(|a| a.as_ref().ok().cloned()).collect();
        let failed: Vec<&tonic::Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        println!("storm: {ORDERS} CreateOrder in {storm:?}, {} failed: {:?}", failed.len(), failed.first());
        assert_eq!(ids.len(), ORDERS, "every CreateOrder is taken");

        let outcomes = settle(&order[0], &ids, Duration::from_secs(240)).await;
        println!("settled {:.1} s after the storm began: {outcomes:?}", started.elapsed().as_secs_f64());
        assert_eq!(count(&outcomes, OrderStatus::Confirmed), STOCK as usize, "{outcomes:?}");
        assert_eq!(count(&outcomes, OrderStatus::Failed), ORDERS - STOCK as usize, "{outcomes:?}");
        assert_eq!(orders_with_status(&ctx, "CONFIRMED"), STOCK, "the database agrees");
        assert_eq!(stock(&ctx).await, 0, "sold out, not oversold");
    })
    .await;
}
