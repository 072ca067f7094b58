//! The real binaries on a real JetStream: with `--saga-mode async`, orders are taken while
//! inventory-service is down (killed with SIGKILL) and complete once it is back; nothing is
//! lost and nothing is deducted twice, including orders inventory was in the middle of when
//! it was killed. Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ferry_proto::{
    inventory::v1::{GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
};
use support::{
    eventually, nats, order,
    process::{OrderProcess, free_port, sample},
};
use tonic::transport::Channel;

/// The inventory-service binary beside order-service's (`cargo test --workspace`, which
/// `make unit` runs, builds both).
fn inventory_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_order-service")).with_file_name("inventory-service");
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p inventory-service` first (`make unit` builds every binary)",
        path.display()
    );
    path
}

/// inventory-service as a child process; SIGKILL on drop.
struct InventoryProcess {
    child: Child,
    grpc: SocketAddr,
}

impl InventoryProcess {
    fn spawn(data_dir: &Path, nats_url: &str, prefix: &str) -> Self {
        let grpc = free_port();
        let child = Command::new(inventory_binary())
            .args(["--auth-disabled", "--log-format", "text", "--log-level", "warn", "--drain-seconds", "0"])
            .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &free_port().to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--nats-url", nats_url, "--events-prefix", prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start inventory-service");
        Self { child, grpc }
    }

    async fn client(&self) -> InventoryServiceClient<Channel> {
        let addr = self.grpc;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
                    return InventoryServiceClient::new(ch);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("inventory-service did not listen within 30 s")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for InventoryProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn status(client: &OrderServiceClient<Channel>, order_id: &str) -> OrderStatus {
    let o = client.clone().get_order(GetOrderRequest { order_id: order_id.into() }).await.unwrap();
    o.into_inner().order.unwrap().status()
}

async fn all_confirmed(client: &OrderServiceClient<Channel>, ids: &[String]) {
    eventually("every order to be confirmed", Duration::from_secs(90), || async {
        for id in ids {
            if status(client, id).await != OrderStatus::Confirmed {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_complete_while_inventory_is_stopped_and_restarted() {
    const STOCK: i64 = 1_000;
    let url = nats::shared_url();
    let prefix = nats::fresh_names().prefix().to_string();
    let dir = tempfile::tempdir().unwrap();
    let inv_dir = dir.path().join("inventory");
    let mut inventory = InventoryProcess::spawn(&inv_dir, &url, &prefix);
    inventory.client().await.set_stock(SetStockRequest { sku: "a".into(), quantity: STOCK }).await.unwrap();
    let orders = OrderProcess::spawn(
        &[
            "--auth-disabled",
            "--data-dir",
            dir.path().join("orders").to_str().unwrap(),
            "--inventory-addr",
            &inventory.grpc.to_string(),
            "--saga-mode",
            "async",
            "--nats-url",
            &url,
            "--events-prefix",
            &prefix,
        ],
        // A fast recoverer, which must leave the asynchronous saga's orders alone.
        &[("RECOVERY_INTERVAL_MS", "100"), ("ORDER_LEASE_MS", "500")],
    );
    let client = orders.serving().await;
    let place = |i: usize| {
        let mut c = client.clone();
        async move {
            let started = tokio::time::Instant::now();
            let o = c.create_order(order(&format!("down-{i}"), "down", &[("a", 1)])).await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(5), "answered at once");
            o.into_inner().order.unwrap()
        }
    };
    let mut ids = vec![place(0).await.order_id];
    all_confirmed(&client, &ids).await;

    // Inventory is down: orders are taken, and stay PENDING.
    inventory.kill();
    for i in 1..=30 {
        let o = place(i).await;
        assert_eq!(o.status(), OrderStatus::Pending);
        ids.push(o.order_id);
    }
    for id in &ids[1..] {
        assert_eq!(status(&client, id).await, OrderStatus::Pending, "nothing settles without inventory");
    }

    // Back: every order completes. Then killed again while it works through a burst.
    let mut inventory = InventoryProcess::spawn(&inv_dir, &url, &prefix);
    all_confirmed(&client, &ids).await;
    let burst: Vec<_> = futures::future::join_all((31..=90).map(place)).await;
    ids.extend(burst.into_iter().map(|o| o.order_id));
    eventually("inventory to be in the middle of the burst", Duration::from_secs(30), || async {
        let mut confirmed = 0;
        for id in &ids[31..] {
            confirmed += usize::from(status(&client, id).await == OrderStatus::Confirmed);
        }
        confirmed >= 5
    })
    .await;
    inventory.kill();
    let inventory = InventoryProcess::spawn(&inv_dir, &url, &prefix);
    all_confirmed(&client, &ids).await;

    let left = inventory.client().await.get_stock(GetStockRequest { sku: "a".into() }).await.unwrap();
    assert_eq!(left.into_inner().quantity, STOCK - ids.len() as i64, "every order deducted exactly once");
    let page = orders.metrics().await;
    assert_eq!(sample(&page, "order_recoveries_total"), Some(0.0), "the recoverer left async orders alone");
    assert_eq!(sample(&page, "order_outbox_unsent_rows"), Some(0.0));
}
