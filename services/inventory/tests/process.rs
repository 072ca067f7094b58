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
use ferry_service_common::testing::eventually;
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

/// A running inventory-service started with `args` (plus its own data dir, addresses and a
/// one-second config poll), its stdout and stderr kept in files; killed on drop.
struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_inventory-service"))
            .args(["--drain-seconds", "0", "--config-poll-seconds", "1"])
            .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &http.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("start inventory-service");
        Self { child, grpc, http, dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn output(&self, stream: &str) -> String {
        std::fs::read_to_string(self.path(stream)).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await
    }

    /// Waits up to `limit` for the process to exit on its own.
    async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(s) = self.child.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `path` atomically (write a sibling, then rename), as a ConfigMap update does.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A minimal HTTP/1.0 GET; empty if the server does not answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

fn hs256_token(secret: &[u8], scope: &str) -> String {
    ferry_service_common::testing::hs256_token(secret, "tester", scope, 600)
}

/// A GetStock call with `token`; its status code.
async fn get_stock_code(ch: &Channel, token: &str) -> tonic::Code {
    let mut req = tonic::Request::new(ferry_proto::inventory::v1::GetStockRequest { sku: "a".into() });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match InventoryServiceClient::new(ch.clone()).get_stock(req).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwt_key_file_is_picked_up_without_a_config_file() {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "first-secret").unwrap();
    let server = Server::start(&["--jwt-key-file", key.path().to_str().unwrap()]);
    let ch = wait_serving(server.grpc).await;
    let (old, new) =
        (hs256_token(b"first-secret", "inventory:read"), hs256_token(b"second-secret", "inventory:read"));
    // NotFound: the token passed and the sku does not exist.
    assert_eq!(get_stock_code(&ch, &old).await, tonic::Code::NotFound);
    assert_eq!(get_stock_code(&ch, &new).await, tonic::Code::Unauthenticated);
    replace_file(key.path(), "second-secret");
    eventually("a token signed with the new key to pass", Duration::from_secs(15), || async {
        get_stock_code(&ch, &new).await == tonic::Code::NotFound
    })
    .await;
    assert_eq!(
        get_stock_code(&ch, &old).await,
        tonic::Code::Unauthenticated,
        "the rotated-out key is refused"
    );
    assert!(server.metrics().await.contains("ferry_config_reloads_total 1"), "{}", server.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_level_name_at_start_is_refused() {
    let mut server = Server::start(&["--auth-disabled", "--log-level", "warnn"]);
    let exit = server.exit_within(Duration::from_secs(15)).await;
    let stderr = server.output("stderr");
    let exit =
        exit.unwrap_or_else(|| panic!("inventory-service started with --log-level warnn; stderr: {stderr}"));
    assert!(!exit.success(), "{exit:?}");
    assert!(
        stderr.contains("warnn") && stderr.contains("log_level"),
        "the error names the setting: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_level_name_on_reload_is_rejected_and_logging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "log_level: info\n").unwrap();
    let server = Server::start(&[
        "--auth-disabled",
        "--log-format",
        "json",
        "--config-file",
        config.to_str().unwrap(),
    ]);
    let ch = wait_serving(server.grpc).await;
    replace_file(&config, "log_level: debugg\n");
    eventually("the reload to be counted as a failure", Duration::from_secs(15), || async {
        server.metrics().await.contains("ferry_config_reload_failures_total 1")
    })
    .await;
    assert!(server.metrics().await.contains("ferry_config_reloads_total 0"), "{}", server.metrics().await);
    // The old level (info) is still in force: the rejection and the next info line are written.
    InventoryServiceClient::new(ch)
        .set_stock(SetStockRequest { sku: "logged".into(), quantity: 1 })
        .await
        .unwrap();
    eventually("the info line after the rejected reload", Duration::from_secs(10), || async {
        server.output("stdout").contains("stock set")
    })
    .await;
    let stdout = server.output("stdout");
    assert!(stdout.contains("new configuration rejected") && stdout.contains("debugg"), "{stdout}");
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
