//! Logging: JSON lines by default (one object per line, for log pipelines), plain text on request.
//!
//! Spans are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and not blank);
//! otherwise no OpenTelemetry layer is installed and nothing is exported or attempted. Batches
//! leave every 5 s (the `OTEL_BSP_*` variables tune this); on SIGTERM or Ctrl-C the pending
//! spans are flushed, and [`shutdown`] flushes and stops the exporter at exit.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The environment variable naming the OTLP collector.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The OTLP endpoint from a raw env value: `None` when unset or blank.
pub fn otlp_endpoint(raw: Option<String>) -> Option<String> {
    raw.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// An OTLP/gRPC span pipeline to `endpoint`. The channel connects lazily; must be called
/// inside a tokio runtime, which drives the exporter's channel.
pub fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("OTLP exporter for `{endpoint}`: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("ferry-operator");
    }
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build())
}

/// Builds the exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and a tokio runtime is running.
fn exporter_from_env() -> Option<SdkTracerProvider> {
    let endpoint = otlp_endpoint(std::env::var(OTLP_ENDPOINT_ENV).ok())?;
    if tokio::runtime::Handle::try_current().is_err() {
        eprintln!("{OTLP_ENDPOINT_ENV} is set but no tokio runtime is running: spans are not exported");
        return None;
    }
    match tracer_provider(&endpoint) {
        Ok(provider) => Some(provider),
        Err(err) => {
            eprintln!("spans are not exported: {err}");
            None
        }
    }
}

/// Installs the global subscriber. The filter comes from `RUST_LOG` (default `info`). Spans
/// go to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = exporter_from_env();
    let otel =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ferry-operator")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_current_span(false)).try_init()
        }
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    match (result, provider) {
        (Err(err), provider) => {
            eprintln!("logging was already initialised: {err}");
            if let Some(p) = provider {
                let _ = p.shutdown();
            }
        }
        (Ok(()), Some(provider)) => {
            if PROVIDER.set(provider).is_ok() {
                tokio::spawn(flush_on_signal());
            }
        }
        (Ok(()), None) => {}
    }
}

/// Waits for SIGTERM or Ctrl-C (the operator's own shutdown signals) and flushes pending
/// spans while the runtime still drives the exporter.
async fn flush_on_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = tokio::task::spawn_blocking(|| PROVIDER.get().map(SdkTracerProvider::force_flush)).await;
}

/// Flushes pending spans and stops the exporter; a no-op when nothing is exported. Call it
/// from async code before the runtime stops (the flush runs on a blocking thread).
pub async fn shutdown() {
    if PROVIDER.get().is_some() {
        let _ = tokio::task::spawn_blocking(|| PROVIDER.get().map(SdkTracerProvider::shutdown)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_export_is_off_when_the_endpoint_is_unset_or_blank() {
        assert_eq!(otlp_endpoint(None), None);
        assert_eq!(otlp_endpoint(Some("  ".into())), None);
        assert_eq!(otlp_endpoint(Some(" http://c:4317 ".into())).as_deref(), Some("http://c:4317"));
    }
}
