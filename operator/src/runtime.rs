//! Process runtime: HTTP endpoints, leader election on a Lease, signals and orderly shutdown.
//!
//! Shutdown order on SIGTERM/SIGINT: stop taking new work and drain in-flight reconciles, then release
//! the Lease (a standby watching the Lease takes it within about a second, instead of at the lease's
//! expiry), then stop the HTTP server. A second signal exits immediately. Losing the Lease stops every write at once (the
//! write gate closes before anything else) and ends the process with an error, so it restarts as a
//! standby.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{metrics::Metrics, reconciler};

/// Everything the `operator` binary can be told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`); port 0 picks a free port.
    pub metrics_addr: SocketAddr,
    /// Take part in leader election (only the leader reconciles and writes).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// Seconds a lease is valid without renewal.
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub lease_grace_seconds: u64,
    /// Identity in the Lease (defaults to the host name).
    pub identity: String,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Quiet period that merges a burst of events for one MicroService into one reconcile.
    pub debounce: std::time::Duration,
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Watch ConfigMaps for `rollOnChange`.
    pub watch_config_maps: bool,
    /// A PEM bundle of extra roots trusted by https webhook and Prometheus checks.
    pub check_ca_file: Option<std::path::PathBuf>,
}

/// State shared with the HTTP handlers.
#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The HTTP router (exposed for tests).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, ready })
}

/// Cancels `token` on the first SIGTERM/SIGINT; exits the process on the second.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(err) => {
                error!(error = %err, "cannot install the SIGTERM handler");
                return;
            }
        };
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            signals += 1;
            if signals == 1 {
                info!("shutdown requested; draining in-flight reconciles");
                token.cancel();
            } else {
                warn!("second signal; exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// Runs the operator until a signal (Ok) or a lost lease (Err).
pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let listener = TcpListener::bind(options.metrics_addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics server listening");
    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        let app = router(metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
            {
                error!(error = %err, "metrics server failed");
            }
        })
    };

    let may_write = Arc::new(AtomicBool::new(false));
    let controller_config = reconciler::ControllerConfig {
        namespace: options.namespace.clone(),
        concurrency: options.concurrency,
        debounce: options.debounce,
        watch_config_maps: options.watch_config_maps,
        instance: options.identity.clone(),
        check_ca_file: options.check_ca_file.clone(),
    };

    let outcome = if options.leader_election {
        run_with_lease(
            &options,
            client,
            controller_config,
            metrics.clone(),
            may_write,
            ready.clone(),
            shutdown,
        )
        .await
    } else {
        may_write.store(true, Ordering::SeqCst);
        metrics.leader.set(1);
        ready.store(true, Ordering::SeqCst);
        reconciler::run(client, controller_config, metrics.clone(), may_write, shutdown.cancelled_owned())
            .await
    };

    ready.store(false, Ordering::SeqCst);
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    info!("operator stopped");
    outcome
}

/// The field manager of one replica's Lease writes (at most 128 characters, as the API requires).
fn lease_field_manager(identity: &str) -> String {
    let manager = format!("{}-lease-{identity}", crate::FIELD_MANAGER);
    manager.chars().take(128).collect()
}

/// A lease manager for this replica. NB: the field manager must differ per replica. Taking the
/// lease is a server-side apply without force, so a second replica's apply conflicts on
/// holderIdentity only when it is a different manager; with one shared manager both replicas "won"
/// and both led.
async fn lease_manager(options: &Options, client: &Client, namespace: &str) -> anyhow::Result<LeaseManager> {
    let params = LeaseParams::new(
        options.identity.clone(),
        options.lease_duration_seconds,
        options.lease_grace_seconds,
    )
    .with_field_manager(lease_field_manager(&options.identity));
    Ok(LeaseManagerBuilder::new(client.clone(), options.lease_name.clone())
        .with_namespace(namespace.to_string())
        .with_parameters(params)
        .build()
        .await?)
}

/// Whether a Lease has no holder: released (a graceful stop) or never taken.
fn is_free(lease: &Lease) -> bool {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
}

/// How long a standby waits after a failed attempt to take the lease before the next one.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// Stands by until this replica holds the lease (returns its manager) or is told to stop (`None`).
/// `ready` is set once the Lease could be read.
///
/// NB: kube-lease-manager 0.13 polls: a standby sleeps until the holder's lease would expire, even
/// when the holder released it at once on a graceful stop (6 to 15 s with the chart's defaults).
/// So the standby also watches the Lease, and when it sees it released starts a fresh attempt
/// (a new manager re-reads the Lease instead of trusting the expiry it read before). A holder that
/// crashed still releases nothing: then the lease duration is the wait.
async fn stand_by(
    options: &Options,
    client: &Client,
    namespace: &str,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<LeaseManager>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", options.lease_name));
    let mut released = watcher(leases, by_name)
        .default_backoff()
        .applied_objects()
        .filter(|lease| std::future::ready(lease.as_ref().is_ok_and(is_free)))
        .boxed();
    info!(lease = %options.lease_name, %namespace, identity = %options.identity, "waiting for the leader lease");
    loop {
        let manager = lease_manager(options, client, namespace).await?;
        // NB: connected, and standing by (or about to lead).
        ready.store(true, Ordering::SeqCst);
        tokio::select! {
            elected = manager.changed() => match elected {
                Ok(true) => return Ok(Some(manager)),
                Ok(false) => {}
                Err(err) => {
                    warn!(error = %err, "taking the lease failed; trying again");
                    tokio::time::sleep(STANDBY_RETRY).await;
                }
            },
            Some(_) = released.next() => {
                debug!("the lease was released; trying to take it");
            }
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

async fn run_with_lease(
    options: &Options,
    client: Client,
    controller_config: reconciler::ControllerConfig,
    metrics: Arc<Metrics>,
    may_write: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let namespace = options.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    // LeaseParams::new panics on these; a bad flag must be an error, not a crash.
    if options.lease_grace_seconds == 0 || options.lease_grace_seconds >= options.lease_duration_seconds {
        anyhow::bail!(
            "--lease-grace ({}) must be at least 1 and less than --lease-duration ({})",
            options.lease_grace_seconds,
            options.lease_duration_seconds
        );
    }
    let Some(manager) = stand_by(options, &client, &namespace, &ready, &shutdown).await? else {
        return Ok(());
    };
    // NB: elected: from here the manager renews the lease in its own task; dropping `is_leader`
    // releases it.
    let (mut is_leader, lease_task) = manager.watch().await;
    info!("elected leader; starting the controller");
    may_write.store(true, Ordering::SeqCst);
    metrics.leader.set(1);

    // Watch for a lost lease: close the write gate first, then stop the controller.
    let lost = Arc::new(AtomicBool::new(false));
    let stop_controller = shutdown.child_token();
    let guard = {
        let (lost, may_write, stop, metrics) =
            (lost.clone(), may_write.clone(), stop_controller.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = is_leader.changed() => {
                        if changed.is_err() || !*is_leader.borrow_and_update() {
                            may_write.store(false, Ordering::SeqCst);
                            metrics.leader.set(0);
                            lost.store(true, Ordering::SeqCst);
                            error!("leader lease lost; writes stopped");
                            stop.cancel();
                            return is_leader;
                        }
                    }
                    () = stop.cancelled() => return is_leader,
                }
            }
        })
    };

    let result = reconciler::run(
        client,
        controller_config,
        metrics.clone(),
        may_write.clone(),
        stop_controller.clone().cancelled_owned(),
    )
    .await;

    // Drained: stop writing, then hand the lease back.
    may_write.store(false, Ordering::SeqCst);
    metrics.leader.set(0);
    stop_controller.cancel();
    if let Ok(is_leader) = guard.await {
        drop(is_leader);
    }
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("leader lease released"),
        Ok(Ok(Err(err))) => warn!(error = %err, "releasing the lease failed"),
        Ok(Err(err)) => warn!(error = %err, "lease task panicked"),
        Err(_) => warn!("releasing the lease timed out"),
    }
    result?;
    if lost.load(Ordering::SeqCst) {
        anyhow::bail!("leader lease lost");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn each_replica_writes_the_lease_under_its_own_field_manager() {
        let a = lease_field_manager("op-a");
        let b = lease_field_manager("op-b");
        assert_ne!(a, b, "a shared manager lets two replicas both take the lease");
        assert!(lease_field_manager(&"x".repeat(300)).chars().count() <= 128);
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(axum::http::Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_is_ok_and_readyz_follows_the_ready_flag() {
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(Arc::new(Metrics::default()), ready.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(app, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_served_in_openmetrics_text() {
        let metrics = Arc::new(Metrics::default());
        drop(metrics.reconcile_started());
        let (status, body) = get(router(metrics, Arc::new(AtomicBool::new(true))), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ferry_operator_reconcile_runs_total 1"), "{body}");
    }
}
