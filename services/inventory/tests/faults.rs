//! Fault injection on the real `inventory-service` binary: off by default, refused without
//! `--allow-fault-injection` (at start, and on reload, where the previous config stays), delays
//! and errors only on the named method, reloaded on and off, and counted in the gRPC metrics
//! as real calls. Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use ferry_proto::inventory::v1::{
    GetStockRequest, SetStockRequest, inventory_service_client::InventoryServiceClient,
};
use ferry_service_common::testing::eventually;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long a test waits for a condition.
const WAIT: Duration = Duration::from_secs(10);

const GET: &str = "/ferry.inventory.v1.InventoryService/GetStock";
const SERVICE: &str = "grpc_service=\"ferry.inventory.v1.InventoryService\"";

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running inventory-service (auth off, one-second config poll) reading `config.yaml` in
/// its own directory; killed on drop.
struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(config: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_inventory-service"))
            .args(["--auth-disabled", "--log-format", "text", "--drain-seconds", "0"])
            .args(["--config-poll-seconds", "1"])
            .args(["--grpc-addr", &grpc.to_string(), "--metrics-addr", &http.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config-file")
            .arg(dir.path().join("config.yaml"))
            .args(extra)
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("start inventory-service");
        Self { child, grpc, http, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the config file atomically, as a ConfigMap update does.
    fn reconfigure(&self, contents: &str) {
        let tmp = self.path("config.yaml.new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path("config.yaml")).unwrap();
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(self.http).await else { return String::new() };
        if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// Waits until the server answers SERVING, and returns a connected client.
    async fn channel(&self) -> Channel {
        let addr = self.grpc;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await
                    && serving(&ch).await
                {
                    return ch;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not SERVING within 30 s; stderr: {}", self.output("stderr")))
    }

    async fn client(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.channel().await)
    }

    fn output(&self, stream: &str) -> String {
        std::fs::read_to_string(self.path(stream)).unwrap_or_default()
    }

    /// Waits up to 15 s for the process to exit on its own.
    async fn exit(&mut self) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(Duration::from_secs(15), async {
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

async fn serving(ch: &Channel) -> bool {
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|r| r.into_inner().status() == ServingStatus::Serving)
        .unwrap_or(false)
}

async fn get_stock(client: &mut InventoryServiceClient<Channel>) -> Code {
    match client.get_stock(GetStockRequest { sku: "a".into() }).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn set_stock(client: &mut InventoryServiceClient<Channel>) -> Code {
    match client.set_stock(SetStockRequest { sku: "a".into(), quantity: 5 }).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn handled(method: &str, code: &str, n: usize) -> String {
    format!(
        "grpc_server_handled_total{{grpc_type=\"unary\",{SERVICE},grpc_method=\"{method}\",grpc_code=\"{code}\"}} {n}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_off_by_default_even_with_the_switch_on() {
    for extra in [&[][..], &["--allow-fault-injection"][..]] {
        let server = Server::start("{}\n", extra);
        let mut client = server.client().await;
        assert_eq!(set_stock(&mut client).await, Code::Ok);
        assert_eq!(get_stock(&mut client).await, Code::Ok);
        let metrics = server.metrics().await;
        assert!(metrics.contains("ferry_fault_injection_methods 0"), "{extra:?}: {metrics}");
        assert!(!metrics.contains("ferry_fault_injections_total{"), "{extra:?}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_faults_is_refused_at_start_without_the_switch() {
    let mut server = Server::start(&format!("faults:\n  {GET}: {{error_ratio: 1.0}}\n"), &[]);
    let exit = server.exit().await;
    let stderr = server.output("stderr");
    assert!(exit.is_some_and(|e| !e.success()), "started with faults and no switch: {exit:?} {stderr}");
    assert!(
        stderr.contains("faults") && stderr.contains("--allow-fault-injection"),
        "the error names the setting and the switch: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_on_a_method_the_server_lacks_is_refused_at_start_naming_it() {
    let bad = "/ferry.inventory.v1.InventoryService/ReserveStock";
    let mut server =
        Server::start(&format!("faults:\n  {bad}: {{delay_ms: 10}}\n"), &["--allow-fault-injection"]);
    let exit = server.exit().await;
    let stderr = server.output("stderr");
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?} {stderr}");
    assert!(stderr.contains(bad) && stderr.contains(GET), "names the method and the real ones: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_added_on_reload_without_the_switch_are_rejected_and_the_previous_config_kept() {
    let server = Server::start("log_level: info\n", &[]);
    let mut client = server.client().await;
    server.reconfigure(&format!("log_level: info\nfaults:\n  {GET}: {{error_ratio: 1.0}}\n"));
    eventually("the reload to be rejected", WAIT, || async {
        server.metrics().await.contains("ferry_config_reload_failures_total 1")
    })
    .await;
    assert_eq!(get_stock(&mut client).await, Code::NotFound, "no fault: the sku is simply unknown");
    let metrics = server.metrics().await;
    assert!(metrics.contains("ferry_fault_injection_methods 0"), "{metrics}");
    let stdout = server.output("stdout");
    assert!(
        stdout.contains("new configuration rejected") && stdout.contains("--allow-fault-injection"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_slows_the_named_method_only_and_shows_in_its_latency() {
    let server =
        Server::start(&format!("faults:\n  {GET}: {{delay_ms: 400}}\n"), &["--allow-fault-injection"]);
    let channel = server.channel().await;
    let mut client = InventoryServiceClient::new(channel.clone());
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(set_stock(&mut client).await, Code::Ok);
        assert!(start.elapsed() < Duration::from_millis(400), "SetStock took {:?}", start.elapsed());
        let start = Instant::now();
        assert_eq!(get_stock(&mut client).await, Code::Ok);
        assert!(start.elapsed() >= Duration::from_millis(400), "GetStock took {:?}", start.elapsed());
    }
    let start = Instant::now();
    assert!(serving(&channel).await);
    let metrics = server.metrics().await;
    let bucket = |le: &str| {
        format!(
            "grpc_server_handling_seconds_bucket{{le=\"{le}\",grpc_type=\"unary\",{SERVICE},grpc_method=\"GetStock\"}} "
        )
    };
    assert!(metrics.contains(&format!("{}0\n", bucket("0.25"))), "{metrics}");
    assert!(metrics.contains(&format!("{}3\n", bucket("0.5"))), "{metrics}");
    assert!(metrics.contains("kind=\"delay\"} 3\n"), "{metrics}");
    assert!(!metrics.contains("grpc_method=\"SetStock\",kind="), "{metrics}");
    assert!(start.elapsed() < Duration::from_millis(400), "health is never delayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_ratio_of_one_fails_every_call_with_its_code_and_zero_none_and_metrics_count_them() {
    let config = format!(
        "faults:\n  {GET}: {{error_ratio: 1.0, error_code: DATA_LOSS}}\n  \
         /ferry.inventory.v1.InventoryService/SetStock: {{error_ratio: 0.0}}\n"
    );
    let server = Server::start(&config, &["--allow-fault-injection"]);
    let mut client = server.client().await;
    for _ in 0..20 {
        assert_eq!(set_stock(&mut client).await, Code::Ok);
        assert_eq!(get_stock(&mut client).await, Code::DataLoss);
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains(&handled("GetStock", "DataLoss", 20)), "{metrics}");
    assert!(metrics.contains(&handled("SetStock", "OK", 20)), "{metrics}");
    assert!(!metrics.contains("grpc_method=\"GetStock\",grpc_code=\"OK\""), "{metrics}");
    let injected =
        format!("ferry_fault_injections_total{{{SERVICE},grpc_method=\"GetStock\",kind=\"error\"}} 20\n");
    assert!(metrics.contains(&injected), "{metrics}");
    assert!(metrics.contains("ferry_fault_injection_methods 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_ratio_of_a_half_fails_about_half_the_calls() {
    let server =
        Server::start(&format!("faults:\n  {GET}: {{error_ratio: 0.5}}\n"), &["--allow-fault-injection"]);
    let mut client = server.client().await;
    assert_eq!(set_stock(&mut client).await, Code::Ok);
    let mut failed = 0;
    for _ in 0..400 {
        match get_stock(&mut client).await {
            Code::Ok => {}
            Code::Unavailable => failed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Binomial(400, 0.5): standard deviation 10; the bound is six of them each way.
    assert!((140..=260).contains(&failed), "{failed} of 400 failed");
    assert!(server.metrics().await.contains(&handled("GetStock", "Unavailable", failed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_faults_on_and_off_without_a_restart() {
    let server = Server::start("{}\n", &["--allow-fault-injection"]);
    let mut client = server.client().await;
    assert_eq!(set_stock(&mut client).await, Code::Ok);
    server.reconfigure(&format!("faults:\n  {GET}: {{error_ratio: 1.0}}\n"));
    eventually("GetStock to fail", WAIT, || {
        let mut c = client.clone();
        async move { get_stock(&mut c).await == Code::Unavailable }
    })
    .await;
    assert!(server.metrics().await.contains("ferry_fault_injection_methods 1"));
    // An invalid fault is rejected and the faults in force stay.
    server.reconfigure(&format!("faults:\n  {GET}: {{error_ratio: 1.5}}\n"));
    eventually("the invalid ratio to be rejected", WAIT, || async {
        server.metrics().await.contains("ferry_config_reload_failures_total 1")
    })
    .await;
    assert_eq!(get_stock(&mut client).await, Code::Unavailable);
    server.reconfigure("{}\n");
    eventually("GetStock to answer again", WAIT, || {
        let mut c = client.clone();
        async move { get_stock(&mut c).await == Code::Ok }
    })
    .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("ferry_fault_injection_methods 0")
            && metrics.contains("ferry_config_reloads_total 2"),
        "{metrics}"
    );
}
