//! The Ferry operator. Connects with `KUBECONFIG` (or the in-cluster service account) and reconciles
//! MicroServices until SIGTERM.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use ferry_operator::{
    runtime::{self, Options},
    telemetry::{self, LogFormat},
};

/// The Ferry operator: MicroService → Deployment, Service, HPA, PDB, ServiceMonitor.
#[derive(Debug, Parser)]
#[command(name = "operator", version)]
struct Args {
    /// Address of the HTTP server for /metrics, /healthz and /readyz (port 0 picks a free port; the
    /// chosen address is logged as `metrics server listening`).
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a coordination.k8s.io Lease; only the leader reconciles and writes.
    #[arg(long, env = "FERRY_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (default: the namespace of the kubeconfig context or of the pod).
    #[arg(long, env = "FERRY_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// Seconds a lease stays valid without renewal: the longest a standby waits after the leader dies.
    #[arg(long, env = "FERRY_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds before the lease expires at which the leader renews it.
    #[arg(long, env = "FERRY_LEASE_GRACE", default_value_t = 5)]
    lease_grace: u64,
    /// Identity written into the Lease (default: $POD_NAME, $HOSTNAME, or a random id).
    #[arg(long, env = "FERRY_IDENTITY")]
    identity: Option<String>,
    /// Reconciles running at once (never unbounded).
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Milliseconds of quiet before a MicroService is reconciled: a burst of events (a child created,
    /// its status updated twice) becomes one reconcile. It also delays every promotion's switch by
    /// as much (operator/BENCHMARKS.md, bench-rollout). 0 turns it off.
    #[arg(long, env = "FERRY_DEBOUNCE_MS", default_value_t = 20)]
    debounce_ms: u64,
    /// Watch this namespace only (default: all namespaces).
    #[arg(long, env = "FERRY_NAMESPACE")]
    namespace: Option<String>,
    /// Watch ConfigMaps (metadata only) so that `config.rollOnChange` reacts at once.
    #[arg(long, env = "FERRY_WATCH_CONFIGMAPS", default_value_t = true, action = clap::ArgAction::Set)]
    watch_config_maps: bool,
    /// A PEM bundle of extra roots that https webhook and Prometheus checks trust (besides the
    /// system's trust store).
    #[arg(long, env = "FERRY_CHECK_CA_FILE")]
    check_ca_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn identity(explicit: Option<String>) -> String {
    // NB: the process id keeps two operators on one host (as in the e2e tests) distinct.
    explicit.unwrap_or_else(|| {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ferry-operator".into());
        format!("{host}-{}", std::process::id())
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let options = Options {
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        lease_duration_seconds: args.lease_duration,
        lease_grace_seconds: args.lease_grace,
        identity: identity(args.identity),
        concurrency: args.concurrency.max(1),
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        namespace: args.namespace,
        watch_config_maps: args.watch_config_maps,
        check_ca_file: args.check_ca_file,
    };
    let code = match runtime::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "operator failed");
            ExitCode::FAILURE
        }
    };
    // Flush the spans still buffered for the OTLP endpoint (a no-op without one).
    telemetry::shutdown().await;
    code
}
