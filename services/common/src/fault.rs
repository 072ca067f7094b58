//! Fault injection for exercising alerts and clients: per gRPC method, a fixed added delay and
//! a ratio of calls answered with an error code instead of reaching the handler.
//!
//! Off by default and refused unless the process was started with `--allow-fault-injection`
//! (`FERRY_ALLOW_FAULT_INJECTION=true`), which the config file cannot set: editing a ConfigMap
//! alone can never make a service fail on purpose. The faults themselves live in the config
//! file (`faults:`) and reload with it. Health and reflection are never faulted (they are not
//! methods a fault may name). The layer sits inside the metrics layer, so a faulted call is
//! counted and timed exactly like a real one, and `ferry_fault_injections_total` shows which
//! faults fired.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{BoxFuture, Either};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rand::Rng;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{auth::ScopeTable, config::ConfigError, metrics::split_path};

/// Longest delay a fault may add, in ms (a typo of extra zeros must not hang every call).
pub const MAX_DELAY_MS: u64 = 60_000;

/// One method's fault as written in the config file under `faults:`, keyed by the method's
/// full path (`/ferry.inventory.v1.InventoryService/DeductStock`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Added before the call is answered, ms [default: 0].
    pub delay_ms: Option<u64>,
    /// Share of calls answered with `error_code` instead of reaching the handler, 0.0–1.0
    /// [default: 0].
    pub error_ratio: Option<f64>,
    /// gRPC code of the injected errors, e.g. `UNAVAILABLE` [default: UNAVAILABLE].
    pub error_code: Option<String>,
}

/// A validated fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// Added delay.
    pub delay: Duration,
    /// Share of calls that fail, 0.0–1.0.
    pub error_ratio: f64,
    /// Their code (never OK).
    pub error_code: tonic::Code,
}

impl Fault {
    /// Whether this call fails: never at 0, always at 1, else a draw from `rng`.
    pub fn fails(&self, rng: &mut impl Rng) -> bool {
        self.error_ratio >= 1.0 || (self.error_ratio > 0.0 && rng.random_bool(self.error_ratio))
    }
}

/// The validated faults by method path; empty = fault injection off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    by_path: HashMap<Box<str>, Fault>,
}

impl FaultPlan {
    /// Validates the `faults:` section. Any fault is refused unless `allowed`; every key must
    /// name a method of this server (`methods`); ranges and codes are checked per field.
    pub fn resolve(
        allowed: bool,
        specs: &BTreeMap<String, FaultSpec>,
        methods: &ScopeTable,
    ) -> Result<Self, ConfigError> {
        if !specs.is_empty() && !allowed {
            return Err(ConfigError::Invalid {
                field: "faults",
                reason: "fault injection is disabled; start the service with --allow-fault-injection \
                         (or FERRY_ALLOW_FAULT_INJECTION=true) to use it"
                    .into(),
            });
        }
        let mut by_path = HashMap::new();
        for (path, spec) in specs {
            if !methods.contains(path) {
                let known: Vec<&str> = methods.methods().collect();
                return Err(ConfigError::Invalid {
                    field: "faults",
                    reason: format!(
                        "`{path}` is not a method of this server (health and reflection are never \
                         faulted); its methods are: {}",
                        known.join(", ")
                    ),
                });
            }
            by_path.insert(path.as_str().into(), validate(path, spec)?);
        }
        Ok(Self { by_path })
    }

    /// The fault for `path`, if any.
    pub fn get(&self, path: &str) -> Option<Fault> {
        self.by_path.get(path).copied()
    }

    /// `true` when no fault is set.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

fn validate(path: &str, spec: &FaultSpec) -> Result<Fault, ConfigError> {
    let invalid =
        |field: &'static str, reason: String| ConfigError::Fault { method: path.into(), field, reason };
    let delay_ms = spec.delay_ms.unwrap_or(0);
    if delay_ms > MAX_DELAY_MS {
        return Err(invalid("delay_ms", format!("{delay_ms} is over the most, {MAX_DELAY_MS}")));
    }
    let error_ratio = spec.error_ratio.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&error_ratio) {
        return Err(invalid("error_ratio", format!("{error_ratio} is not between 0.0 and 1.0")));
    }
    let error_code = match spec.error_code.as_deref() {
        None => tonic::Code::Unavailable,
        Some(name) => parse_code(name).ok_or_else(|| {
            invalid(
                "error_code",
                format!("`{name}` is not a gRPC error code (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ...)"),
            )
        })?,
    };
    Ok(Fault { delay: Duration::from_millis(delay_ms), error_ratio, error_code })
}

/// A gRPC error code by its canonical name (`UNAVAILABLE`, case-insensitive); `OK` is not one.
pub fn parse_code(name: &str) -> Option<tonic::Code> {
    use tonic::Code::*;
    Some(match name.to_ascii_uppercase().as_str() {
        "CANCELLED" => Cancelled,
        "UNKNOWN" => Unknown,
        "INVALID_ARGUMENT" => InvalidArgument,
        "DEADLINE_EXCEEDED" => DeadlineExceeded,
        "NOT_FOUND" => NotFound,
        "ALREADY_EXISTS" => AlreadyExists,
        "PERMISSION_DENIED" => PermissionDenied,
        "RESOURCE_EXHAUSTED" => ResourceExhausted,
        "FAILED_PRECONDITION" => FailedPrecondition,
        "ABORTED" => Aborted,
        "OUT_OF_RANGE" => OutOfRange,
        "UNIMPLEMENTED" => Unimplemented,
        "INTERNAL" => Internal,
        "UNAVAILABLE" => Unavailable,
        "DATA_LOSS" => DataLoss,
        "UNAUTHENTICATED" => Unauthenticated,
        _ => return None,
    })
}

/// Labels of `ferry_fault_injections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// e.g. `ferry.inventory.v1.InventoryService`.
    pub grpc_service: String,
    /// e.g. `DeductStock`.
    pub grpc_method: String,
    /// `delay` or `error`.
    pub kind: String,
}

/// The plan in force (swapped on config reload) and its metrics.
#[derive(Debug, Default)]
pub struct Faults {
    /// `false` while the plan is empty: the common case costs one atomic load per call.
    active: AtomicBool,
    plan: RwLock<Arc<FaultPlan>>,
    /// `ferry_fault_injections_total`.
    pub injected: Family<FaultLabels, Counter>,
    /// `ferry_fault_injection_methods`: methods with a fault set now.
    pub methods: Gauge,
}

impl Faults {
    /// No faults; the metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let faults = Arc::new(Self::default());
        registry.register(
            "ferry_fault_injections",
            "Faults injected on purpose (kind: delay or error); see the faults config",
            faults.injected.clone(),
        );
        registry.register(
            "ferry_fault_injection_methods",
            "Methods with a fault injected now (0 = fault injection off)",
            faults.methods.clone(),
        );
        faults
    }

    /// Puts `plan` in force for new calls.
    pub fn set(&self, plan: FaultPlan) {
        let count = plan.by_path.len();
        if count > 0 {
            tracing::warn!(faults = ?plan.by_path, "fault injection is ACTIVE");
        } else if self.active.load(Ordering::Relaxed) {
            tracing::info!("fault injection is off");
        }
        *self.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(plan);
        self.active.store(count > 0, Ordering::Relaxed);
        self.methods.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn lookup(&self, path: &str) -> Option<Fault> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        self.plan.read().unwrap_or_else(|p| p.into_inner()).get(path)
    }

    fn count(&self, path: &str, kind: &str) {
        let (service, method) = split_path(path);
        self.injected
            .get_or_create(&FaultLabels {
                grpc_service: service.into(),
                grpc_method: method.into(),
                kind: kind.into(),
            })
            .inc();
    }
}

/// Tower layer applying the [`Faults`] in force.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: &'static Faults,
}

impl FaultLayer {
    /// Applies `faults`.
    pub fn new(faults: &'static Faults) -> Self {
        Self { faults }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultService { inner, faults: self.faults }
    }
}

/// See [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: &'static Faults,
}

impl<S, B> Service<http::Request<B>> for FaultService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Calls without a fault pass through unboxed.
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let Some(fault) = self.faults.lookup(path) else {
            return Either::Left(self.inner.call(req));
        };
        let fails = fault.fails(&mut rand::rng());
        if !fault.delay.is_zero() {
            self.faults.count(path, "delay");
        }
        if fails {
            self.faults.count(path, "error");
            let status = tonic::Status::new(fault.error_code, format!("injected fault on {path}"));
            return Either::Right(Box::pin(async move {
                tokio::time::sleep(fault.delay).await;
                Ok(status.into_http())
            }));
        }
        // The handler's future does nothing until polled, so it runs after the delay.
        let call = self.inner.call(req);
        Either::Right(Box::pin(async move {
            tokio::time::sleep(fault.delay).await;
            call.await
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand::SeedableRng;

    use super::*;

    const GET: &str = "/ferry.inventory.v1.InventoryService/GetStock";
    const DEDUCT: &str = "/ferry.inventory.v1.InventoryService/DeductStock";

    fn methods() -> ScopeTable {
        ScopeTable::new([(GET, "inventory:read"), (DEDUCT, "inventory:write")])
    }

    fn specs(yaml: &str) -> BTreeMap<String, FaultSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn no_faults_need_no_switch_and_any_fault_is_refused_without_it() {
        assert!(FaultPlan::resolve(false, &BTreeMap::new(), &methods()).unwrap().is_empty());
        let one = specs(&format!("{DEDUCT}: {{delay_ms: 10}}"));
        let err = FaultPlan::resolve(false, &one, &methods()).unwrap_err().to_string();
        assert!(err.contains("faults") && err.contains("--allow-fault-injection"), "{err}");
        assert!(FaultPlan::resolve(true, &one, &methods()).is_ok());
    }

    #[test]
    fn a_fault_on_an_unknown_method_or_on_health_is_refused_naming_it() {
        for path in
            ["/ferry.inventory.v1.InventoryService/Deduct", "/grpc.health.v1.Health/Check", "DeductStock"]
        {
            let err = FaultPlan::resolve(true, &specs(&format!("{path:?}: {{delay_ms: 1}}")), &methods())
                .unwrap_err()
                .to_string();
            assert!(err.contains(path) && err.contains(DEDUCT), "{err}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_field() {
        let cases = [
            ("{error_ratio: 1.5}", "error_ratio"),
            ("{error_ratio: -0.1}", "error_ratio"),
            ("{error_ratio: .nan}", "error_ratio"),
            ("{delay_ms: 60001}", "delay_ms"),
            ("{error_code: OK}", "error_code"),
            ("{error_code: UNAVAILABEL}", "error_code"),
        ];
        for (spec, field) in cases {
            let err = FaultPlan::resolve(true, &specs(&format!("{DEDUCT}: {spec}")), &methods())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("faults.{DEDUCT}.{field}")), "{spec}: {err}");
        }
        assert!(
            serde_yaml::from_str::<BTreeMap<String, FaultSpec>>(&format!("{DEDUCT}: {{dealy_ms: 1}}"))
                .is_err()
        );
    }

    #[test]
    fn the_error_code_defaults_to_unavailable_and_reads_canonical_names() {
        let plan = FaultPlan::resolve(
            true,
            &specs(&format!("{DEDUCT}: {{error_ratio: 1}}\n{GET}: {{error_ratio: 1, error_code: internal}}")),
            &methods(),
        )
        .unwrap();
        assert_eq!(plan.get(DEDUCT).unwrap().error_code, tonic::Code::Unavailable);
        assert_eq!(plan.get(GET).unwrap().error_code, tonic::Code::Internal);
    }

    #[test]
    fn a_ratio_of_one_always_fails_zero_never_and_a_half_about_half() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        let fault =
            |error_ratio| Fault { delay: Duration::ZERO, error_ratio, error_code: tonic::Code::Unavailable };
        let failures =
            |ratio, rng: &mut rand::rngs::StdRng| (0..10_000).filter(|_| fault(ratio).fails(rng)).count();
        assert_eq!(failures(1.0, &mut rng), 10_000);
        assert_eq!(failures(0.0, &mut rng), 0);
        let half = failures(0.5, &mut rng);
        assert!((4_700..=5_300).contains(&half), "{half} of 10000");
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_delays_and_fails_only_the_named_method_and_counts_it() {
        let mut registry = Registry::default();
        let faults: &'static Faults =
            Box::leak(Box::new(Arc::try_unwrap(Faults::register(&mut registry)).unwrap()));
        faults.set(
            FaultPlan::resolve(
                true,
                &specs(&format!("{DEDUCT}: {{delay_ms: 500, error_ratio: 1.0}}")),
                &methods(),
            )
            .unwrap(),
        );
        let mut svc = FaultLayer::new(faults).layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        }));
        let call = |path: &'static str| {
            let mut r = http::Request::new(());
            *r.uri_mut() = http::Uri::from_static(path);
            r
        };
        let code = |resp: &http::Response<tonic::body::Body>| {
            resp.headers().get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes()))
        };
        let start = tokio::time::Instant::now();
        let ok = svc.call(call(GET)).await.unwrap_or_else(|e| match e {});
        assert_eq!((code(&ok), start.elapsed()), (None, Duration::ZERO));
        let failed = svc.call(call(DEDUCT)).await.unwrap_or_else(|e| match e {});
        assert_eq!(code(&failed), Some(tonic::Code::Unavailable));
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let text = crate::metrics::encode(&registry);
        for kind in ["delay", "error"] {
            let line = format!(
                "ferry_fault_injections_total{{grpc_service=\"ferry.inventory.v1.InventoryService\",grpc_method=\"DeductStock\",kind=\"{kind}\"}} 1"
            );
            assert!(text.contains(&line), "{text}");
        }
        assert!(text.contains("ferry_fault_injection_methods 1"), "{text}");
        faults.set(FaultPlan::default());
        let unfaulted = svc.call(call(DEDUCT)).await.unwrap_or_else(|e| match e {});
        assert_eq!(code(&unfaulted), None);
    }
}
