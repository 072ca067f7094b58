//! Configuration: flags (clap) over environment (clap's `env`) over a YAML config file over
//! built-in defaults. The file is polled for changes (a mounted ConfigMap is updated in place by
//! a symlink swap, which file-notification APIs often miss); a changed file is parsed and
//! validated as a whole, and an invalid one keeps the old config, logs why and is counted.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::ServerMetrics;

/// A config file or value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for [`FileConfig`].
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// The file holds no YAML document.
    #[error("config file {path} is empty; write `{{}}` for a config with no settings")]
    Empty {
        /// The file.
        path: String,
    },
    /// A fault (see [`crate::fault`]) has a value out of range.
    #[error("invalid setting `faults.{method}.{field}`: {reason}")]
    Fault {
        /// The method path the fault is set for.
        method: String,
        /// The field of the fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Flags shared by both services. Every flag also reads an environment variable and the
/// config file key of the same name in snake_case (flags win over env, env over the file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// YAML config file; watched, and log level, limits, breaker thresholds and auth keys
    /// reload without a restart.
    #[arg(long, env = "FERRY_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:50051 for inventory, 0.0.0.0:50052 for order].
    #[arg(long, env = "GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /healthz and /readyz [default: 0.0.0.0:9090 for
    /// inventory, 0.0.0.0:9091 for order].
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Directory for the embedded SQLite database [default: ./data].
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `postgres://...` for PostgreSQL or `sqlite://path` [default: SQLite in
    /// the data dir].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most database connections in the pool [default: 16].
    #[arg(long, env = "DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Turn JWT authentication off (it is on by default).
    #[arg(long, env = "AUTH_DISABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: Option<bool>,
    /// JWT algorithm: HS256, RS256 or ES256 [default: HS256].
    #[arg(long, env = "JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// JWT key file: the HS256 secret, or the RS256/ES256 public key in PEM. Required unless
    /// auth is disabled; re-read when it changes.
    #[arg(long, env = "JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,
    /// Log level, optionally per target, e.g. `info` or `info,sqlx=warn` [default: info].
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: `json` or `text` [default: json].
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most concurrent gRPC calls; more are refused with RESOURCE_EXHAUSTED. 0 = unlimited
    /// [default: 512].
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Server-side bound on one call, in milliseconds; the client's grpc-timeout applies when
    /// shorter [default: 10000].
    #[arg(long, env = "REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Seconds to keep serving after SIGTERM with health NOT_SERVING, so load balancers
    /// notice before the listener closes [default: 5].
    #[arg(long, env = "DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Seconds in-flight calls get to finish once the listener is closed [default: 15].
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Maximum connection age in seconds; then the server sends GOAWAY so clients reconnect
    /// (and reach new pods after a blue-green switch) [default: 300].
    #[arg(long, env = "MAX_CONNECTION_AGE_SECONDS")]
    pub max_connection_age_seconds: Option<u64>,
    /// Seconds between config file (and key file) checks [default: 5].
    #[arg(long, env = "CONFIG_POLL_SECONDS")]
    pub config_poll_seconds: Option<u64>,
    /// OTLP/gRPC collector for spans, e.g. `http://otel-collector:4317`; unset or empty = no
    /// export (nothing is attempted). Needs a restart to change.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Per-client rate limit in calls per second, per JWT subject (or per peer IP without a
    /// token); over it, calls get RESOURCE_EXHAUSTED. 0 = off [default: 0]. Reloadable.
    #[arg(long, env = "RATE_LIMIT_PER_CLIENT")]
    pub rate_limit_per_client: Option<f64>,
    /// Burst a client may spend at once [default: one second's worth, at least 1]. Reloadable.
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<f64>,
    /// Allow the `faults:` section of the config file (injected delays and errors per method,
    /// for testing alerts). Off by default, and only a flag or the environment can turn it on,
    /// never the config file; without it a config with faults is refused.
    #[arg(long, env = "FERRY_ALLOW_FAULT_INJECTION", num_args = 0..=1, default_missing_value = "true")]
    pub allow_fault_injection: Option<bool>,
}

/// The config file. Every key is optional; unknown keys are an error (a typo must not pass
/// silently). Keys are the flag names in snake_case.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServerArgs::grpc_addr`].
    pub grpc_addr: Option<SocketAddr>,
    /// See [`ServerArgs::metrics_addr`].
    pub metrics_addr: Option<SocketAddr>,
    /// See [`ServerArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServerArgs::database_url`].
    pub database_url: Option<String>,
    /// See [`ServerArgs::db_max_connections`].
    pub db_max_connections: Option<u32>,
    /// See [`ServerArgs::auth_disabled`].
    pub auth_disabled: Option<bool>,
    /// See [`ServerArgs::jwt_algorithm`].
    pub jwt_algorithm: Option<String>,
    /// See [`ServerArgs::jwt_key_file`].
    pub jwt_key_file: Option<PathBuf>,
    /// See [`ServerArgs::log_level`].
    pub log_level: Option<String>,
    /// See [`ServerArgs::log_format`].
    pub log_format: Option<String>,
    /// See [`ServerArgs::max_concurrent_requests`].
    pub max_concurrent_requests: Option<usize>,
    /// See [`ServerArgs::request_timeout_ms`].
    pub request_timeout_ms: Option<u64>,
    /// See [`ServerArgs::drain_seconds`].
    pub drain_seconds: Option<u64>,
    /// See [`ServerArgs::shutdown_grace_seconds`].
    pub shutdown_grace_seconds: Option<u64>,
    /// See [`ServerArgs::max_connection_age_seconds`].
    pub max_connection_age_seconds: Option<u64>,
    /// See [`ServerArgs::config_poll_seconds`].
    pub config_poll_seconds: Option<u64>,
    /// See [`ServerArgs::otlp_endpoint`].
    pub otlp_endpoint: Option<String>,
    /// See [`ServerArgs::rate_limit_per_client`].
    pub rate_limit_per_client: Option<f64>,
    /// See [`ServerArgs::rate_limit_burst`].
    pub rate_limit_burst: Option<f64>,
    /// Order service: inventory address.
    pub inventory_addr: Option<String>,
    /// Order service: file holding the bearer token sent to inventory.
    pub inventory_token_file: Option<PathBuf>,
    /// Order service: per-attempt deadline towards inventory, ms.
    pub inventory_attempt_timeout_ms: Option<u64>,
    /// Order service: attempts per inventory call.
    pub inventory_max_attempts: Option<u32>,
    /// Order service: consecutive failures that open the breaker.
    pub breaker_failure_threshold: Option<u32>,
    /// Order service: how long the breaker stays open before a probe, ms.
    pub breaker_open_ms: Option<u64>,
    /// Order service: how long a saga run's claim on an order lasts without renewal, ms.
    pub order_lease_ms: Option<u64>,
    /// Order service: how often the recoverer looks for unsettled orders, ms.
    pub recovery_interval_ms: Option<u64>,
    /// Order service: most orders the recoverer claims per pass.
    pub recovery_batch: Option<u32>,
    /// Message broker (NATS JetStream) URL; events are on when set.
    pub nats_url: Option<String>,
    /// Prefix of the broker's streams, subjects and consumers.
    pub events_prefix: Option<String>,
    /// Deliveries of a failing event before it is parked.
    pub event_max_deliveries: Option<u32>,
    /// Order service: `sync` or `async` saga for new orders.
    pub saga_mode: Option<String>,
    /// Injected faults by method path; refused unless `--allow-fault-injection` (see
    /// [`crate::fault`]). Reloadable.
    #[serde(default)]
    pub faults: BTreeMap<String, crate::fault::FaultSpec>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, path)
    }

    /// Parses YAML text. A file with no YAML document in it (empty, blank or only comments)
    /// is refused: a file caught half-written must not reset every setting to its default.
    /// `{}` is a config with no settings.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |source| ConfigError::Parse { path: path.display().to_string(), source };
        let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_error)?;
        if document.is_null() {
            return Err(ConfigError::Empty { path: path.display().to_string() });
        }
        serde_yaml::from_value(document).map_err(parse_error)
    }

    /// Loads the file if one is configured.
    pub fn load_optional(path: Option<&Path>) -> Result<Self, ConfigError> {
        path.map(Self::load).transpose().map(Option::unwrap_or_default)
    }
}

/// Flag or env if given, else the file, else the default.
pub fn pick<T>(cli: Option<T>, file: Option<T>, default: T) -> T {
    cli.or(file).unwrap_or(default)
}

/// Settings both services share, resolved from [`ServerArgs`] and a [`FileConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address.
    pub metrics_addr: SocketAddr,
    /// Database URL (SQLite in the data dir when none was given).
    pub database_url: String,
    /// Pool size.
    pub db_max_connections: u32,
    /// `None` when auth is disabled.
    pub auth: Option<AuthSettings>,
    /// Tracing filter.
    pub log_level: String,
    /// `true` for JSON logs.
    pub log_json: bool,
    /// Concurrency limit (0 = unlimited).
    pub max_concurrent_requests: usize,
    /// Server-side bound per call.
    pub request_timeout: Duration,
    /// Drain period after SIGTERM.
    pub drain: Duration,
    /// Bound on in-flight calls after the listener closes.
    pub shutdown_grace: Duration,
    /// GOAWAY after this age.
    pub max_connection_age: Duration,
    /// Config poll interval.
    pub config_poll: Duration,
    /// OTLP collector for spans; `None` = no export.
    pub otlp_endpoint: Option<String>,
    /// Per-client calls per second (0 = off).
    pub rate_limit_per_client: f64,
    /// Per-client burst.
    pub rate_limit_burst: f64,
    /// `--allow-fault-injection`: only a flag or env var sets it, never the file.
    pub allow_fault_injection: bool,
    /// The config file's `faults:` section, validated by [`ServerSettings::fault_plan`].
    pub faults: BTreeMap<String, crate::fault::FaultSpec>,
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// HS256, RS256 or ES256.
    pub algorithm: String,
    /// The key file.
    pub key_file: PathBuf,
}

/// Per-service defaults that differ between inventory and order.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Default gRPC address.
    pub grpc_addr: SocketAddr,
    /// Default HTTP address.
    pub metrics_addr: SocketAddr,
    /// SQLite file name inside the data dir.
    pub sqlite_file: &'static str,
}

impl ServerSettings {
    /// Resolves flags/env over the file over the defaults, and validates the result.
    pub fn resolve(args: &ServerArgs, file: &FileConfig, defaults: Defaults) -> Result<Self, ConfigError> {
        let data_dir = pick(args.data_dir.clone(), file.data_dir.clone(), PathBuf::from("data"));
        let database_url =
            args.database_url.clone().or_else(|| file.database_url.clone()).unwrap_or_else(|| {
                format!("sqlite://{}?mode=rwc", data_dir.join(defaults.sqlite_file).display())
            });
        let auth_disabled = pick(args.auth_disabled, file.auth_disabled, false);
        let auth = if auth_disabled {
            None
        } else {
            let key_file =
                args.jwt_key_file.clone().or_else(|| file.jwt_key_file.clone()).ok_or_else(|| {
                    ConfigError::Invalid {
                        field: "jwt_key_file",
                        reason:
                            "auth is on by default: give --jwt-key-file (or JWT_KEY_FILE), or disable auth \
                             explicitly with --auth-disabled"
                                .into(),
                    }
                })?;
            let algorithm = pick(args.jwt_algorithm.clone(), file.jwt_algorithm.clone(), "HS256".into());
            crate::auth::parse_algorithm(&algorithm)
                .map_err(|e| ConfigError::Invalid { field: "jwt_algorithm", reason: e.to_string() })?;
            Some(AuthSettings { algorithm, key_file })
        };
        let log_format = pick(args.log_format.clone(), file.log_format.clone(), "json".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => {
                return Err(ConfigError::Invalid {
                    field: "log_format",
                    reason: format!("`{other}` is not json or text"),
                });
            }
        };
        let log_level = pick(args.log_level.clone(), file.log_level.clone(), "info".into());
        crate::telemetry::parse_filter(&log_level)
            .map_err(|reason| ConfigError::Invalid { field: "log_level", reason })?;
        let request_timeout_ms = pick(args.request_timeout_ms, file.request_timeout_ms, 10_000);
        if request_timeout_ms == 0 {
            return Err(ConfigError::Invalid { field: "request_timeout_ms", reason: "must be > 0".into() });
        }
        let db_max_connections = pick(args.db_max_connections, file.db_max_connections, 16);
        if db_max_connections == 0 {
            return Err(ConfigError::Invalid { field: "db_max_connections", reason: "must be > 0".into() });
        }
        let max_connection_age = pick(args.max_connection_age_seconds, file.max_connection_age_seconds, 300);
        if max_connection_age == 0 {
            return Err(ConfigError::Invalid {
                field: "max_connection_age_seconds",
                reason: "must be > 0".into(),
            });
        }
        let rate_limit_per_client = pick(args.rate_limit_per_client, file.rate_limit_per_client, 0.0);
        if !rate_limit_per_client.is_finite() || rate_limit_per_client < 0.0 {
            return Err(ConfigError::Invalid {
                field: "rate_limit_per_client",
                reason: "must be ≥ 0".into(),
            });
        }
        let rate_limit_burst =
            pick(args.rate_limit_burst, file.rate_limit_burst, rate_limit_per_client.max(1.0));
        if !rate_limit_burst.is_finite() || rate_limit_burst < 1.0 {
            return Err(ConfigError::Invalid { field: "rate_limit_burst", reason: "must be ≥ 1".into() });
        }
        Ok(Self {
            rate_limit_per_client,
            rate_limit_burst,
            allow_fault_injection: args.allow_fault_injection.unwrap_or(false),
            faults: file.faults.clone(),
            grpc_addr: pick(args.grpc_addr, file.grpc_addr, defaults.grpc_addr),
            metrics_addr: pick(args.metrics_addr, file.metrics_addr, defaults.metrics_addr),
            database_url,
            db_max_connections,
            auth,
            log_level,
            log_json,
            max_concurrent_requests: pick(args.max_concurrent_requests, file.max_concurrent_requests, 512),
            request_timeout: Duration::from_millis(request_timeout_ms),
            drain: Duration::from_secs(pick(args.drain_seconds, file.drain_seconds, 5)),
            shutdown_grace: Duration::from_secs(pick(
                args.shutdown_grace_seconds,
                file.shutdown_grace_seconds,
                15,
            )),
            max_connection_age: Duration::from_secs(max_connection_age),
            config_poll: Duration::from_secs(
                pick(args.config_poll_seconds, file.config_poll_seconds, 5).max(1),
            ),
            otlp_endpoint: crate::telemetry::otlp_endpoint(
                args.otlp_endpoint.as_deref().or(file.otlp_endpoint.as_deref()),
            )
            .map(str::to_string),
        })
    }
}

impl ServerSettings {
    /// The faults to inject, validated against this server's `methods`; an error if any is
    /// set without `--allow-fault-injection`.
    pub fn fault_plan(
        &self,
        methods: &crate::auth::ScopeTable,
    ) -> Result<crate::fault::FaultPlan, ConfigError> {
        crate::fault::FaultPlan::resolve(self.allow_fault_injection, &self.faults, methods)
    }
}

/// Polls `paths` every `interval` and calls `reload` when any of their contents change.
/// A failed reload is logged and counted in `ferry_config_reload_failures_total`; the old
/// config stays in force. Stops when `stop` is cancelled.
pub async fn watch_files<F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    metrics: std::sync::Arc<ServerMetrics>,
    stop: CancellationToken,
    mut reload: F,
) where
    F: FnMut() -> Result<(), String> + Send,
{
    let snapshot =
        |paths: &[PathBuf]| -> Vec<Option<Vec<u8>>> { paths.iter().map(|p| std::fs::read(p).ok()).collect() };
    let mut last = snapshot(&paths);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = snapshot(&paths);
        if now == last {
            continue;
        }
        last = now;
        match reload() {
            Ok(()) => {
                metrics.config_reloads.inc();
                tracing::info!("configuration reloaded");
            }
            Err(reason) => {
                metrics.config_reload_failures.inc();
                tracing::error!(%reason, "new configuration rejected; keeping the previous one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        grpc_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 50051),
        metrics_addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9090),
        sqlite_file: "x.db",
    };

    #[test]
    fn zero_config_with_auth_disabled_uses_sqlite_in_the_data_dir() {
        let args = ServerArgs { auth_disabled: Some(true), ..Default::default() };
        let s = ServerSettings::resolve(&args, &FileConfig::default(), DEFAULTS).unwrap();
        assert_eq!(s.database_url, "sqlite://data/x.db?mode=rwc");
        assert!(s.auth.is_none());
    }

    #[test]
    fn auth_is_on_unless_disabled_and_needs_a_key() {
        let err =
            ServerSettings::resolve(&ServerArgs::default(), &FileConfig::default(), DEFAULTS).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { field: "jwt_key_file", .. }));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let args =
            ServerArgs { auth_disabled: Some(true), max_concurrent_requests: Some(7), ..Default::default() };
        let file =
            FileConfig { max_concurrent_requests: Some(9), drain_seconds: Some(1), ..Default::default() };
        let s = ServerSettings::resolve(&args, &file, DEFAULTS).unwrap();
        assert_eq!(s.max_concurrent_requests, 7);
        assert_eq!(s.drain, Duration::from_secs(1));
        assert_eq!(s.shutdown_grace, Duration::from_secs(15));
    }

    #[test]
    fn otlp_export_is_off_unless_an_endpoint_is_given() {
        let base = ServerArgs { auth_disabled: Some(true), ..Default::default() };
        let off = ServerSettings::resolve(&base, &FileConfig::default(), DEFAULTS).unwrap();
        assert_eq!(off.otlp_endpoint, None);
        let blank = ServerArgs { otlp_endpoint: Some("  ".into()), ..base.clone() };
        assert_eq!(
            ServerSettings::resolve(&blank, &FileConfig::default(), DEFAULTS).unwrap().otlp_endpoint,
            None
        );
        let file = FileConfig { otlp_endpoint: Some("http://file:4317".into()), ..Default::default() };
        let on = ServerSettings::resolve(&base, &file, DEFAULTS).unwrap();
        assert_eq!(on.otlp_endpoint.as_deref(), Some("http://file:4317"));
        let flag = ServerArgs { otlp_endpoint: Some("http://flag:4317".into()), ..base };
        let on = ServerSettings::resolve(&flag, &file, DEFAULTS).unwrap();
        assert_eq!(on.otlp_endpoint.as_deref(), Some("http://flag:4317"));
    }

    #[test]
    fn the_rate_limit_is_off_by_default_and_its_burst_defaults_to_one_second() {
        let base = ServerArgs { auth_disabled: Some(true), ..Default::default() };
        let off = ServerSettings::resolve(&base, &FileConfig::default(), DEFAULTS).unwrap();
        assert_eq!((off.rate_limit_per_client, off.rate_limit_burst), (0.0, 1.0));
        let file = FileConfig { rate_limit_per_client: Some(50.0), ..Default::default() };
        let on = ServerSettings::resolve(&base, &file, DEFAULTS).unwrap();
        assert_eq!((on.rate_limit_per_client, on.rate_limit_burst), (50.0, 50.0));
        let bad = FileConfig { rate_limit_per_client: Some(-1.0), ..Default::default() };
        assert!(ServerSettings::resolve(&base, &bad, DEFAULTS).is_err());
    }

    #[test]
    fn an_empty_config_file_is_refused_and_braces_are_a_config_with_no_settings() {
        for text in ["", "  \n", "# only a comment\n"] {
            let err = FileConfig::parse(text, Path::new("f.yaml")).unwrap_err();
            assert!(matches!(err, ConfigError::Empty { .. }), "{text:?}: {err}");
        }
        assert_eq!(FileConfig::parse("{}", Path::new("f.yaml")).unwrap(), FileConfig::default());
        let file = FileConfig::parse("log_level: warn\n", Path::new("f.yaml")).unwrap();
        assert_eq!(file.log_level.as_deref(), Some("warn"));
    }

    #[test]
    fn faults_are_read_from_the_file_in_flow_style_and_need_the_switch() {
        let text = "faults: {\"/ferry.inventory.v1.InventoryService/DeductStock\": {delay_ms: 800, error_ratio: 0.5}}\n";
        let file =
            FileConfig { auth_disabled: Some(true), ..FileConfig::parse(text, Path::new("f.yaml")).unwrap() };
        let methods =
            crate::auth::ScopeTable::new([("/ferry.inventory.v1.InventoryService/DeductStock", "w")]);
        let off = ServerSettings::resolve(&ServerArgs::default(), &file, DEFAULTS).unwrap();
        assert!(off.fault_plan(&methods).unwrap_err().to_string().contains("--allow-fault-injection"));
        let args = ServerArgs { allow_fault_injection: Some(true), ..Default::default() };
        let on = ServerSettings::resolve(&args, &file, DEFAULTS).unwrap().fault_plan(&methods).unwrap();
        let fault = on.get("/ferry.inventory.v1.InventoryService/DeductStock").unwrap();
        assert_eq!((fault.delay, fault.error_ratio), (Duration::from_millis(800), 0.5));
        assert!(FileConfig::parse("faults: {}\n", Path::new("f.yaml")).unwrap().faults.is_empty());
        let err = FileConfig::parse("allow_fault_injection: true\n", Path::new("f.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "the switch is not a file setting: {err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let err = FileConfig::parse("max_concurent_requests: 3\n", Path::new("f.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
    }

    #[test]
    fn unknown_log_level_names_are_rejected() {
        for level in ["debugg", "warnn", "info,debugg", "sqlx=warnn", "", " "] {
            let file =
                FileConfig { auth_disabled: Some(true), log_level: Some(level.into()), ..Default::default() };
            let err = ServerSettings::resolve(&ServerArgs::default(), &file, DEFAULTS).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { field: "log_level", .. }), "{level:?}: {err}");
        }
        for level in ["info", "WARN", "off", "info,sqlx=warn", "debug,h2=info,tower=off"] {
            let file =
                FileConfig { auth_disabled: Some(true), log_level: Some(level.into()), ..Default::default() };
            assert!(ServerSettings::resolve(&ServerArgs::default(), &file, DEFAULTS).is_ok(), "{level:?}");
        }
    }

    #[test]
    fn bad_log_level_is_rejected() {
        let file =
            FileConfig { auth_disabled: Some(true), log_level: Some("lo=ud=!".into()), ..Default::default() };
        assert!(ServerSettings::resolve(&ServerArgs::default(), &file, DEFAULTS).is_err());
    }
}
