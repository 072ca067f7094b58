//! Wiring shared by both servers: listeners, the middleware stack, health and reflection, the
//! metrics/health HTTP port, the database probe and the drain sequence. A service supplies its
//! gRPC routes (built with the shared registry and [`Plumbing`]) and a database probe.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{
    auth::Authenticator,
    health,
    http::{self as side, Readiness},
    server::{self, Plumbing},
    shutdown::{self, DrainTimings, Stopped},
};

/// What [`start`] needs beyond the service itself.
#[derive(Debug)]
pub struct ServeOptions {
    /// gRPC address (port 0 picks one).
    pub grpc_addr: SocketAddr,
    /// Metrics/health HTTP address.
    pub http_addr: SocketAddr,
    /// `None` disables auth.
    pub auth: Option<Authenticator>,
    /// Concurrency limit (0 = unlimited).
    pub max_concurrent_requests: usize,
    /// Server-side per-call bound.
    pub request_timeout: Duration,
    /// Drain timings.
    pub drain: DrainTimings,
    /// GOAWAY after this age.
    pub max_connection_age: Duration,
    /// Database probe interval for health.
    pub health_probe_interval: Duration,
    /// Cancelled to start the drain (SIGTERM in `main`).
    pub shutdown: CancellationToken,
}

impl ServeOptions {
    /// Loopback, ephemeral ports, auth off, short drain: for tests and benchmarks.
    pub fn local() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: None,
            max_concurrent_requests: 0,
            request_timeout: Duration::from_secs(10),
            drain: DrainTimings { drain: Duration::ZERO, grace: Duration::from_secs(5) },
            max_connection_age: Duration::from_secs(300),
            health_probe_interval: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
        }
    }
}

impl crate::config::ServerSettings {
    /// The [`ServeOptions`] these resolved settings describe, as `main` uses them.
    pub fn serve_options(&self, auth: Option<Authenticator>, shutdown: CancellationToken) -> ServeOptions {
        ServeOptions {
            grpc_addr: self.grpc_addr,
            http_addr: self.metrics_addr,
            auth,
            max_concurrent_requests: self.max_concurrent_requests,
            request_timeout: self.request_timeout,
            drain: DrainTimings { drain: self.drain, grace: self.shutdown_grace },
            max_connection_age: self.max_connection_age,
            health_probe_interval: Duration::from_secs(2),
            shutdown,
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Runtime-adjustable middleware state (config reload).
    pub plumbing: Plumbing,
    /// Cancel to drain and stop.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub task: JoinHandle<anyhow::Result<Stopped>>,
}

/// A cheap database query; `true` when the database answers.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// What a service adds to the shared server.
pub struct Service {
    /// The gRPC service name, published in `grpc.health.v1`.
    pub name: &'static str,
    /// The service's own gRPC routes (health and reflection are added here).
    pub routes: Routes,
    /// Encoded file descriptor sets served by reflection (besides health's own).
    pub descriptors: &'static [&'static [u8]],
    /// Drives health and `/readyz`.
    pub probe: Probe,
}

impl Service {
    /// `probe` runs every health interval (bounded by it); `true` = the database answers.
    pub fn new<P, Fut>(
        name: &'static str,
        routes: Routes,
        descriptors: &'static [&'static [u8]],
        probe: P,
    ) -> Self
    where
        P: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        Self { name, routes, descriptors, probe: Arc::new(move || Box::pin(probe())) }
    }
}

/// Binds both listeners, lets `build` register its metrics and make its routes, then serves
/// in a background task until `opts.shutdown` is cancelled and the drain has run.
pub async fn start<F>(opts: ServeOptions, build: F) -> anyhow::Result<Running>
where
    F: FnOnce(&mut Registry, &Plumbing) -> anyhow::Result<Service>,
{
    let grpc_listener = TcpListener::bind(opts.grpc_addr).await?;
    let http_listener = TcpListener::bind(opts.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let mut registry = Registry::default();
    let plumbing =
        Plumbing::new(&mut registry, opts.auth, opts.max_concurrent_requests, opts.request_timeout);
    let Service { name, routes, descriptors, probe } = build(&mut registry, &plumbing)?;
    let registry = Arc::new(registry);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_all(&reporter, &[name], ServingStatus::NotServing).await;
    // Both reflection versions: many tools still ask for v1alpha. Each lists the services in
    // `descriptors` (this server's own), health and reflection.
    let reflection = || {
        descriptors
            .iter()
            .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                b.register_encoded_file_descriptor_set(set)
            })
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);

    let readiness = Readiness::new();
    let background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    tokio::spawn(health::probe_loop(
        reporter.clone(),
        vec![name],
        readiness.clone(),
        opts.health_probe_interval,
        background.clone(),
        move || probe(),
    ));
    let http = tokio::spawn(side::serve(
        http_listener,
        side::router(registry, readiness.clone()),
        background.clone(),
    ));

    let serve = server::builder(opts.max_connection_age)
        .layer(plumbing.layers())
        .add_routes(
            routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha),
        )
        .serve_with_incoming_shutdown(
            server::incoming(grpc_listener),
            stop_accepting.clone().cancelled_owned(),
        );

    let shutdown = opts.shutdown.clone();
    let timings = opts.drain;
    let task = tokio::spawn(async move {
        let on_draining = {
            let reporter = reporter.clone();
            let readiness = readiness.clone();
            move || {
                readiness.set_draining();
                tokio::spawn(async move {
                    health::set_all(&reporter, &[name], ServingStatus::NotServing).await;
                });
            }
        };
        let stopped = shutdown::drive(serve, shutdown, stop_accepting, timings, on_draining).await;
        background.cancel();
        let _ = http.await;
        tracing::info!(service = name, ?stopped, "server stopped");
        Ok(stopped?)
    });
    tracing::info!(service = name, %grpc_addr, %http_addr, "listening");
    Ok(Running { grpc_addr, http_addr, plumbing, shutdown: opts.shutdown, task })
}
