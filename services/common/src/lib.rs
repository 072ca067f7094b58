//! Server plumbing shared by the Ferry gRPC services.
//!
//! - [`app`]: the server wiring both services share ([`app::start`]).
//! - [`auth`]: JWT bearer authentication with per-method scopes (tower layer).
//! - [`metrics`]: go-grpc-prometheus server metrics (tower layer) and the registry encoder.
//! - [`shed`]: concurrency limit with load shedding (`RESOURCE_EXHAUSTED`).
//! - [`ratelimit`]: optional per-client token buckets (`RESOURCE_EXHAUSTED`).
//! - [`telemetry`]: JSON logs with a reloadable filter, W3C `traceparent` propagation.
//! - [`call_context`]: a call's trace id and method for log lines, without a span per call.
//! - [`json_fields`]: span fields for the JSON log format, written without a map.
//! - [`config`]: flags over env over a watched config file.
//! - [`shutdown`]: SIGTERM drain sequence.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`fault`]: opt-in fault injection (delay, error ratio per method) for testing alerts.
//! - [`deadline`]: per-call deadlines from `grpc-timeout` (DEADLINE_EXCEEDED).
//! - [`server`]: the layer stack and tonic transport settings.
//! - [`health`]: drives `grpc.health.v1` and readiness from the database probe.
//! - [`wire`]: header size limit and standard codes for undecodable or oversized requests.
//! - [`db`]: the stores' SQLite and PostgreSQL pools, migrations, and sqlx error kinds.
//! - `testing` (feature `testing`, for tests only): JWT minting and temporary SQLite databases.

pub mod app;
pub mod auth;
pub mod call_context;
pub mod config;
pub mod db;
pub mod deadline;
pub mod fault;
pub mod health;
pub mod http;
pub mod json_fields;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod shed;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;
