//! Fault injection on the real `order-service` binary: the shared layer validates faults
//! against order's own methods and fails the named one with its code. Inventory's own tests
//! (`inventory/tests/faults.rs`) cover the rest. Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    process::{Child, Command},
    time::Duration,
};

use ferry_proto::order::v1::{GetOrderRequest, order_service_client::OrderServiceClient};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Order {
    child: Child,
    grpc: SocketAddr,
    dir: tempfile::TempDir,
}

impl Order {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let grpc = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .args([
                "--auth-disabled",
                "--allow-fault-injection",
                "--log-format",
                "text",
                "--drain-seconds",
                "0",
            ])
            .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &free_port().to_string()])
            .args(["--inventory-addr", &free_port().to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config-file")
            .arg(dir.path().join("config.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("start order-service");
        Self { child, grpc, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Order {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to `addr` once its health check answers.
async fn healthy(addr: SocketAddr) -> Channel {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await
                && HealthClient::new(ch.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .is_ok()
            {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("order-service answered health within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_on_an_order_method_fails_it_with_its_code_and_leaves_the_others() {
    let order = Order::start(
        "faults:\n  /ferry.order.v1.OrderService/GetOrder: {error_ratio: 1.0, error_code: ABORTED}\n",
    );
    let mut client = OrderServiceClient::new(healthy(order.grpc).await);
    for _ in 0..5 {
        let err = client.get_order(GetOrderRequest { order_id: "o-1".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{err:?}; stderr: {}", order.stderr());
    }
    let err =
        client.cancel_order(ferry_proto::order::v1::CancelOrderRequest { order_id: "o-1".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound, "CancelOrder reaches its handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_naming_an_inventory_method_is_refused_by_order_at_start() {
    let mut order =
        Order::start("faults:\n  /ferry.inventory.v1.InventoryService/DeductStock: {delay_ms: 1}\n");
    let exit = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(s) = order.child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stderr = order.stderr();
    assert!(exit.is_ok_and(|e| !e.success()), "{stderr}");
    assert!(
        stderr.contains("/ferry.inventory.v1.InventoryService/DeductStock")
            && stderr.contains("/ferry.order.v1.OrderService/CreateOrder"),
        "{stderr}"
    );
}
