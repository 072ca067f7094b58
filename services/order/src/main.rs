//! `order-service`: see `--help`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use ferry_service_common::{
    config::{ConfigError, Defaults, FileConfig, ServerArgs, ServerSettings, pick, watch_files},
    server::authenticator,
    shutdown, telemetry,
};
use order_service::{
    app::{self, ServeOptions},
    breaker::BreakerConfig,
    client::{ClientSettings, lazy_channel},
    retry::RetryPolicy,
    saga::SagaSettings,
    store::{self, Saga, StoreOptions},
};

/// Ferry order service: creates orders by deducting stock from the inventory service over
/// gRPC, giving stock back when any item fails; SQLite (default, in --data-dir) or PostgreSQL.
///
/// Scopes: orders:read (GetOrder, ListOrders), orders:write (CreateOrder, CancelOrder). Health
/// and reflection need no token. The token sent to inventory needs inventory:write.
#[derive(Debug, Parser)]
#[command(name = "order-service", version)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    inventory: InventoryArgs,
    #[command(flatten)]
    events: ferry_events::args::EventArgs,
}

/// Flags for the inventory dependency (also settable in the config file, snake_case).
#[derive(Debug, Clone, clap::Args)]
struct InventoryArgs {
    /// Inventory gRPC address, `host:port` (a DNS name in Kubernetes) or `http://host:port`
    /// [default: 127.0.0.1:50051].
    #[arg(long, env = "INVENTORY_ADDR")]
    inventory_addr: Option<String>,
    /// File holding the bearer token sent to inventory (re-read on change).
    #[arg(long, env = "INVENTORY_TOKEN_FILE")]
    inventory_token_file: Option<PathBuf>,
    /// Deadline of one inventory attempt in ms; never more than the caller's remaining
    /// budget [default: 2000]. Reloadable.
    #[arg(long, env = "INVENTORY_ATTEMPT_TIMEOUT_MS")]
    inventory_attempt_timeout_ms: Option<u64>,
    /// Attempts per inventory call on transient errors (UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// DEADLINE_EXCEEDED) [default: 3]. Reloadable.
    #[arg(long, env = "INVENTORY_MAX_ATTEMPTS")]
    inventory_max_attempts: Option<u32>,
    /// Consecutive inventory failures that open the circuit breaker [default: 5]. Reloadable.
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD")]
    breaker_failure_threshold: Option<u32>,
    /// How long the breaker stays open before a probe, ms [default: 5000]. Reloadable.
    #[arg(long, env = "BREAKER_OPEN_MS")]
    breaker_open_ms: Option<u64>,
    /// How long a saga run's claim (lease) on an order lasts without renewal, ms; a replica
    /// that dies mid-saga leaves its orders to the recoverers after this [default: 15000].
    #[arg(long, env = "ORDER_LEASE_MS")]
    order_lease_ms: Option<u64>,
    /// How often the recoverer looks for unsettled orders nobody is working on, ms; also the
    /// first retry delay of an interrupted order [default: 2000].
    #[arg(long, env = "RECOVERY_INTERVAL_MS")]
    recovery_interval_ms: Option<u64>,
    /// Most unsettled orders the recoverer claims and runs per pass [default: 16].
    #[arg(long, env = "RECOVERY_BATCH")]
    recovery_batch: Option<u32>,
    /// The saga new orders run: `sync` (CreateOrder deducts every line over gRPC and answers
    /// the outcome) or `async` (CreateOrder stores the order PENDING and answers at once;
    /// events settle it; needs --nats-url) [default: sync].
    #[arg(long, env = "SAGA_MODE")]
    saga_mode: Option<String>,
}

const DEFAULTS: Defaults = Defaults {
    grpc_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 50052),
    metrics_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9091),
    sqlite_file: "orders.db",
};

fn client_settings(args: &InventoryArgs, file: &FileConfig) -> Result<ClientSettings, ConfigError> {
    let token_file = args.inventory_token_file.clone().or_else(|| file.inventory_token_file.clone());
    let token = token_file
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| t.trim().to_string())
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })
        })
        .transpose()?;
    let attempts = pick(args.inventory_max_attempts, file.inventory_max_attempts, 3);
    if attempts == 0 {
        return Err(ConfigError::Invalid { field: "inventory_max_attempts", reason: "must be ≥ 1".into() });
    }
    let attempt_ms = pick(args.inventory_attempt_timeout_ms, file.inventory_attempt_timeout_ms, 2000);
    if attempt_ms == 0 {
        return Err(ConfigError::Invalid {
            field: "inventory_attempt_timeout_ms",
            reason: "must be > 0".into(),
        });
    }
    let threshold = pick(args.breaker_failure_threshold, file.breaker_failure_threshold, 5);
    if threshold == 0 {
        return Err(ConfigError::Invalid {
            field: "breaker_failure_threshold",
            reason: "must be ≥ 1".into(),
        });
    }
    Ok(ClientSettings {
        retry: RetryPolicy {
            max_attempts: attempts,
            attempt_timeout: Duration::from_millis(attempt_ms),
            ..RetryPolicy::default()
        },
        breaker: BreakerConfig {
            failure_threshold: threshold,
            open_for: Duration::from_millis(pick(args.breaker_open_ms, file.breaker_open_ms, 5000)),
        },
        token,
    })
}

fn saga_settings(args: &InventoryArgs, file: &FileConfig) -> Result<SagaSettings, ConfigError> {
    let positive = |value: u64, field: &'static str| {
        if value == 0 {
            return Err(ConfigError::Invalid { field, reason: "must be > 0".into() });
        }
        Ok(value)
    };
    let lease_ms = positive(pick(args.order_lease_ms, file.order_lease_ms, 15_000), "order_lease_ms")?;
    let interval_ms =
        positive(pick(args.recovery_interval_ms, file.recovery_interval_ms, 2_000), "recovery_interval_ms")?;
    let batch = positive(u64::from(pick(args.recovery_batch, file.recovery_batch, 16)), "recovery_batch")?;
    let mode = match pick(args.saga_mode.clone(), file.saga_mode.clone(), "sync".into()).as_str() {
        "sync" => Saga::Sync,
        "async" => Saga::Async,
        other => {
            return Err(ConfigError::Invalid {
                field: "saga_mode",
                reason: format!("`{other}` is not sync or async"),
            });
        }
    };
    Ok(SagaSettings {
        mode,
        lease: Duration::from_millis(lease_ms),
        recovery_interval: Duration::from_millis(interval_ms),
        recovery_batch: u32::try_from(batch).unwrap_or(u32::MAX),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = FileConfig::load_optional(cli.server.config_file.as_deref())?;
    let settings = ServerSettings::resolve(&cli.server, &file, DEFAULTS)?;
    let client = client_settings(&cli.inventory, &file)?;
    let sagas = saga_settings(&cli.inventory, &file)?;
    let events =
        cli.events.resolve(file.nats_url.clone(), file.events_prefix.clone(), file.event_max_deliveries)?;
    if sagas.mode == Saga::Async && events.is_none() {
        anyhow::bail!("invalid setting `saga_mode`: async needs a message broker (--nats-url)");
    }
    let telemetry = telemetry::init(
        &settings.log_level,
        settings.log_json,
        settings.otlp_endpoint.as_deref().map(|e| (e, "order-service")),
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
    let inventory_addr =
        pick(cli.inventory.inventory_addr.clone(), file.inventory_addr.clone(), "127.0.0.1:50051".into());
    let channel = lazy_channel(&inventory_addr)?;

    let store = store::open(&StoreOptions {
        max_connections: settings.db_max_connections,
        ..StoreOptions::new(settings.database_url.clone())
    })
    .await?;

    let shutdown = shutdown::on_signals();
    let running = app::start(
        store,
        ServeOptions {
            server: settings.serve_options(auth, shutdown.clone()),
            inventory: channel,
            client,
            compensation_timeout: Duration::from_secs(5),
            sagas,
            events: events.clone(),
        },
    )
    .await?;
    running.plumbing.rate_limit.set(settings.rate_limit_per_client, settings.rate_limit_burst);
    running.plumbing.faults.set(faults);
    tracing::info!(%inventory_addr, saga = sagas.mode.as_str(), events = events.is_some(), "inventory client configured");

    // The config file, the key file and the token file are re-read when they change, each on
    // its own.
    let config_file = cli.server.config_file.clone();
    let watched: Vec<_> = config_file
        .iter()
        .cloned()
        .chain(settings.auth.as_ref().map(|a| a.key_file.clone()))
        .chain(cli.inventory.inventory_token_file.clone().or_else(|| file.inventory_token_file.clone()))
        .collect();
    if !watched.is_empty() {
        let plumbing = running.plumbing.clone();
        let inventory_client = running.client.clone();
        let metrics = Arc::clone(&plumbing.metrics);
        let (server_args, inv_args) = (cli.server.clone(), cli.inventory.clone());
        tokio::spawn(watch_files(watched, settings.config_poll, metrics, shutdown.clone(), move || {
            let file = FileConfig::load_optional(config_file.as_deref()).map_err(|e| e.to_string())?;
            let new = ServerSettings::resolve(&server_args, &file, DEFAULTS).map_err(|e| e.to_string())?;
            let client = client_settings(&inv_args, &file).map_err(|e| e.to_string())?;
            plumbing.apply(&new, &log, &scopes)?;
            inventory_client.reconfigure(client);
            Ok(())
        }));
    }

    let stopped = running.task.await;
    tracing::info!(?stopped, "exiting");
    telemetry.shutdown().await;
    stopped??;
    Ok(())
}
