//! The real `inventory-service` binary: zero-config start, `kill -9` under load keeps every
//! acknowledged deduction, and SIGTERM exits 0. Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_proto::inventory::v1::{
    DeductStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn spawn(data_dir: &Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_inventory-service"))
        .args(["--auth-disabled", "--log-format", "text", "--log-level", "warn", "--drain-seconds", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--grpc-addr")
        .arg(addr.to_string())
        .arg("--metrics-addr")
        .arg(free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start inventory-service")
}

/// Waits until the server answers SERVING, and returns a connected channel.
async fn wait_serving(addr: SocketAddr) -> Channel {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
                let ok = HealthClient::new(ch.clone())
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                    .map(|r| r.into_inner().status() == ServingStatus::Serving)
                    .unwrap_or(false);
                if ok {
                    return ch;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("server did not become SERVING within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_keeps_every_acknowledged_deduction() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut child = spawn(dir.path(), addr);
    let ch = wait_serving(addr).await;
    let initial = 1_000_000;
    InventoryServiceClient::new(ch.clone())
        .set_stock(SetStockRequest { sku: "hot".into(), quantity: initial })
        .await
        .unwrap();

    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (ch, acked) = (ch.clone(), acked.clone());
            tokio::spawn(async move {
                let mut c = InventoryServiceClient::new(ch);
                for i in 0..100_000 {
                    let id = format!("w{w}-{i}");
                    let req = DeductStockRequest { request_id: id.clone(), sku: "hot".into(), quantity: 1 };
                    match c.deduct_stock(req).await {
                        Ok(r) => acked.lock().unwrap().push((id, r.into_inner().remaining)),
                        Err(_) => return, // the server died
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked.lock().unwrap().len() < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("500 deductions within 60 s");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(30), w).await.expect("worker ends").unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let addr = free_port();
    let mut child = spawn(dir.path(), addr);
    let ch = wait_serving(addr).await;
    let mut c = InventoryServiceClient::new(ch);
    for (id, remaining) in &acked {
        let r = c
            .deduct_stock(DeductStockRequest { request_id: id.clone(), sku: "hot".into(), quantity: 1 })
            .await
            .unwrap()
            .into_inner();
        assert!(r.replayed, "acknowledged deduction {id} was lost");
        assert_eq!(r.remaining, *remaining, "{id} replays its original answer");
    }
    let left = c
        .get_stock(ferry_proto::inventory::v1::GetStockRequest { sku: "hot".into() })
        .await
        .unwrap()
        .into_inner()
        .quantity;
    let taken = initial - left;
    assert!(taken >= acked.len() as i64, "stock shows {taken} taken but {} were acknowledged", acked.len());
    // At most one unacknowledged deduction per worker can have committed before the kill.
    assert!(taken <= acked.len() as i64 + 8, "taken {taken}, acked {}", acked.len());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_the_binary_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut child = spawn(dir.path(), addr);
    wait_serving(addr).await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("exit within 20 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_inventory-service")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config-file",
        "--grpc-addr",
        "--metrics-addr",
        "--data-dir",
        "--database-url",
        "--auth-disabled",
        "--jwt-key-file",
        "--max-concurrent-requests",
        "--drain-seconds",
        "--max-connection-age-seconds",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
