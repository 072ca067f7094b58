//! `inventory-service`: see `--help`.

use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use ferry_service_common::{
    config::{Defaults, FileConfig, ServerArgs, ServerSettings, watch_files},
    server::authenticator,
    shutdown, telemetry,
};
use inventory_service::{
    app,
    store::{self, StoreOptions},
};

/// Ferry inventory service: idempotent stock deductions over gRPC, on SQLite (default, in
/// --data-dir) or PostgreSQL (--database-url postgres://...).
///
/// Scopes: inventory:read (GetStock), inventory:write (DeductStock, ReleaseStock),
/// inventory:admin (SetStock, Restock). Health and reflection need no token.
#[derive(Debug, Parser)]
#[command(name = "inventory-service", version)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    events: ferry_events::args::EventArgs,
}

const DEFAULTS: Defaults = Defaults {
    grpc_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 50051),
    metrics_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9090),
    sqlite_file: "inventory.db",
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = FileConfig::load_optional(cli.server.config_file.as_deref())?;
    let settings = ServerSettings::resolve(&cli.server, &file, DEFAULTS)?;
    let events =
        cli.events.resolve(file.nats_url.clone(), file.events_prefix.clone(), file.event_max_deliveries)?;
    let telemetry = telemetry::init(
        &settings.log_level,
        settings.log_json,
        settings.otlp_endpoint.as_deref().map(|e| (e, "inventory-service")),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(%endpoint, "exporting spans over OTLP");
    }
    let log = telemetry.log.clone();
    let scopes = app::scopes();
    let auth = authenticator(settings.auth.as_ref(), &scopes)?;
    let faults = settings.fault_plan(&scopes)?;
    if auth.is_none() {
        tracing::warn!("authentication is DISABLED by configuration");
    }

    let store = store::open(&StoreOptions {
        max_connections: settings.db_max_connections,
        ..StoreOptions::new(settings.database_url.clone())
    })
    .await?;

    let shutdown = shutdown::on_signals();
    if let Some(events) = &events {
        tracing::info!(nats_url = %events.nats_url, prefix = events.names.prefix(), "consuming order events");
    }
    let running =
        app::start_with_events(store, settings.serve_options(auth, shutdown.clone()), events).await?;
    running.plumbing.rate_limit.set(settings.rate_limit_per_client, settings.rate_limit_burst);
    running.plumbing.faults.set(faults);

    // The config file and the key file are re-read when they change, each on its own.
    let config_file = cli.server.config_file.clone();
    let watched: Vec<_> =
        config_file.iter().cloned().chain(settings.auth.as_ref().map(|a| a.key_file.clone())).collect();
    if !watched.is_empty() {
        let plumbing = running.plumbing.clone();
        let metrics = Arc::clone(&plumbing.metrics);
        let args = cli.server.clone();
        tokio::spawn(watch_files(watched, settings.config_poll, metrics, shutdown.clone(), move || {
            let file = FileConfig::load_optional(config_file.as_deref()).map_err(|e| e.to_string())?;
            let new = ServerSettings::resolve(&args, &file, DEFAULTS).map_err(|e| e.to_string())?;
            plumbing.apply(&new, &log, &scopes)
        }));
    }

    let stopped = running.task.await;
    tracing::info!(?stopped, "exiting");
    telemetry.shutdown().await;
    stopped??;
    Ok(())
}
