//! The `MicroService` spec: what a team writes.
//!
//! Doc comments on these types become the `description` fields of the CRD, so they are written for
//! `kubectl explain microservice.spec.<field>`.
//!
//! Validation lives in three places, from cheapest to most expensive:
//! 1. the OpenAPI schema (types, enums, ranges, `maxItems`, `maxLength`, patterns);
//! 2. CEL `x-kubernetes-validations` rules (cross-field rules), declared here with `#[x_kube]`;
//! 3. [`crate::validation`] at reconcile time, for the few pass-through fields the schema does not
//!    check (they are parked behind the `InvalidSpec` condition instead of failing admission).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        autoscaling::v2::HorizontalPodAutoscalerBehavior,
        core::v1::{EnvVar, ResourceRequirements},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::MicroServiceStatus;

/// Maximum number of named ports on one MicroService.
pub const MAX_PORTS: usize = 16;
/// Maximum number of `dependsOn` entries.
pub const MAX_DEPENDENCIES: usize = 32;
/// Maximum number of mounted Secrets.
pub const MAX_SECRETS: usize = 16;

/// A MicroService is one deployable service: an image, its ports, how to check its health, how to scale
/// and monitor it, and which other MicroServices it needs. The Ferry operator turns it into a
/// Deployment, a Service, and optionally a HorizontalPodAutoscaler, a PodDisruptionBudget and a
/// ServiceMonitor, all owned by the MicroService.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "MicroService",
    plural = "microservices",
    shortname = "msvc",
    category = "ferry",
    namespaced,
    status = "MicroServiceStatus",
    derive = "PartialEq",
    derive = "Default",
    cel,
    doc = "A MicroService is one deployable service. The Ferry operator turns it into a Deployment with restricted pod security and generated probes, a Service, and optionally a HorizontalPodAutoscaler, a PodDisruptionBudget and a ServiceMonitor.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas out of desired replicas"
    ),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image", description = "Container image"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter, at most 63 characters) because it names the generated Service").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.spec.dependsOn) || self.spec.dependsOn.all(d, d.name != self.metadata.name)").message("spec.dependsOn: a MicroService cannot depend on itself").field_path(".spec.dependsOn").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.spec.strategy) || self.spec.strategy.type != 'BlueGreen' || self.metadata.name.size() <= 55").message("with strategy.type BlueGreen, metadata.name may have at most 55 characters: the preview Service NAME-preview must be a DNS-1035 label of at most 63").field_path(".spec.strategy.type").reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.ports.all(p, self.ports.exists_one(q, q.name == p.name))").message("port names must be unique").field_path(".ports").reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.ports.all(p, self.ports.exists_one(q, q.port == p.port))").message("container port numbers must be unique").field_path(".ports"),
    validation = Rule::new("self.ports.all(p, self.ports.exists_one(q, (has(q.servicePort) ? q.servicePort : q.port) == (has(p.servicePort) ? p.servicePort : p.port)))").message("service port numbers must be unique").field_path(".ports"),
    validation = Rule::new("!has(self.replicas) || !has(self.autoscaling) || (oldSelf.hasValue() && has(oldSelf.value().autoscaling))").optional_old_self(true).message("spec.replicas and spec.autoscaling are mutually exclusive: with autoscaling the HorizontalPodAutoscaler owns spec.replicas through the scale subresource; remove spec.replicas").field_path(".replicas"),
    validation = Rule::new("!has(self.health) || !has(self.health.port) || self.ports.exists(p, p.name == self.health.port)").message("health.port must name one of spec.ports").field_path(".health.port"),
    validation = Rule::new("!has(self.monitoring) || !has(self.monitoring.port) || self.ports.exists(p, p.name == self.monitoring.port)").message("monitoring.port must name one of spec.ports").field_path(".monitoring.port"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.targetCPUUtilizationPercentage) || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)").message("autoscaling on CPU needs resources.requests.cpu: the autoscaler computes utilization against the request").field_path(".resources"),
    validation = Rule::new("!has(self.secrets) || self.secrets.all(s, s.mountPath != '/tmp' && !s.mountPath.startsWith('/tmp/') && !'/tmp'.startsWith(s.mountPath + '/') && (!has(self.config) || [has(self.config.mountPath) ? self.config.mountPath : '/etc/ferry/config'].all(c, s.mountPath != c && !s.mountPath.startsWith(c + '/') && !c.startsWith(s.mountPath + '/'))))").message("secrets[].mountPath must not be /tmp (the generated emptyDir) or the config mount path, nor inside or above either of them").field_path(".secrets").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.config) || !has(self.config.mountPath) || (self.config.mountPath != '/tmp' && !self.config.mountPath.startsWith('/tmp/') && !'/tmp'.startsWith(self.config.mountPath + '/'))").message("config.mountPath must not be /tmp (the generated emptyDir), nor inside or above it").field_path(".config.mountPath").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.monitoring) || (has(self.monitoring.enabled) && !self.monitoring.enabled) || (has(self.monitoring.port) ? !self.ports.exists(p, p.name == self.monitoring.port && p.protocol == 'grpc') : (self.ports.exists(p, p.name == 'metrics') ? !self.ports.exists(p, p.name == 'metrics' && p.protocol == 'grpc') : (self.ports.exists(p, p.protocol == 'http') || self.ports[0].protocol != 'grpc')))").message("monitoring: the scraped port speaks grpc, but Prometheus scrapes HTTP; add an http port (e.g. named metrics) or set monitoring.port to one").field_path(".monitoring").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.strategy) || !has(self.strategy.blueGreen) || ((!has(self.strategy.blueGreen.prePromotionChecks) || self.strategy.blueGreen.prePromotionChecks.all(c, !has(c.grpcHealth) || (has(c.grpcHealth.port) ? self.ports.exists(p, p.name == c.grpcHealth.port && p.protocol == 'grpc') : self.ports.exists(p, p.protocol == 'grpc')))) && (!has(self.strategy.blueGreen.postPromotionChecks) || self.strategy.blueGreen.postPromotionChecks.all(c, !has(c.grpcHealth) || (has(c.grpcHealth.port) ? self.ports.exists(p, p.name == c.grpcHealth.port && p.protocol == 'grpc') : self.ports.exists(p, p.protocol == 'grpc')))))").message("a grpcHealth check needs a grpc port: grpcHealth.port must name one of spec.ports with protocol grpc (without it, the first grpc port is dialled)").field_path(".strategy.blueGreen").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.autoscaling) || !has(self.strategy) || !has(self.strategy.blueGreen) || !has(self.strategy.blueGreen.previewReplicaCount) || self.strategy.blueGreen.previewReplicaCount <= self.autoscaling.maxReplicas").message("strategy.blueGreen.previewReplicaCount must not exceed autoscaling.maxReplicas").field_path(".strategy.blueGreen.previewReplicaCount").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.autoscaling) || (!has(self.autoscaling.latencyP99Milliseconds) && !has(self.autoscaling.requestsPerSecondPerPod)) || (has(self.monitoring) && (!has(self.monitoring.enabled) || self.monitoring.enabled) && self.ports.exists(p, p.protocol == 'grpc'))").message("autoscaling on latencyP99Milliseconds or requestsPerSecondPerPod reads the service's gRPC metrics from Prometheus: it needs a grpc port and spec.monitoring enabled (the ServiceMonitor that gets them scraped)").field_path(".autoscaling").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.targetMemoryUtilizationPercentage) || (has(self.resources) && has(self.resources.requests) && 'memory' in self.resources.requests)").message("autoscaling on memory needs resources.requests.memory: the autoscaler computes utilization against the request").field_path(".resources"),
)]
pub struct MicroServiceSpec {
    /// Container image, with a tag or a digest (for example `ghcr.io/acme/order:1.4.2`).
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(
        validation = Rule::new("self.contains(':') || self.contains('@')").message("image must carry a tag or a digest"),
        validation = Rule::new("self.matches('^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@[a-zA-Z][a-zA-Z0-9]*([-_+.][a-zA-Z][a-zA-Z0-9]*)*:[0-9a-fA-F]{32,})?$')").message("image must be an image reference: [REGISTRY[:PORT]/]PATH[:TAG][@DIGEST], lower-case path components, a tag of letters, digits, '_', '.', '-', a digest ALGORITHM:HEX")
    )]
    pub image: String,

    /// When to pull the image: Always, IfNotPresent or Never. Defaults to the Kubernetes default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Entrypoint override (the image's ENTRYPOINT when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint (the image's CMD when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), inner(length(max = 4096)))]
    pub args: Option<Vec<String>>,

    /// Environment variables for the container, in the Kubernetes `EnvVar` form (`value` or `valueFrom`).
    /// Variables injected for `dependsOn` (`<NAME>_ADDR`) never override an entry given here.
    /// Names are unique (at most 256 characters each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::env_list")]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(e, self.exists_one(f, f.name == e.name))").message("env names must be unique").reason(Reason::FieldValueInvalid)
    )]
    pub env: Option<Vec<EnvVar>>,

    /// Sources of environment variables (`configMapRef` / `secretRef`), in the Kubernetes `EnvFromSource`
    /// form. Passed through to the pod unvalidated by the CRD schema; checked when reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::preserve_unknown_list")]
    pub env_from: Option<Vec<Value>>,

    /// Compute resources (requests and limits) of the container. Every value is a non-negative
    /// quantity (`100m`, `64Mi`, `1`), and a request does not exceed the limit of the same resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::resources")]
    #[x_kube(
        validation = Rule::new("(!has(self.requests) || self.requests.all(k, isQuantity(string(self.requests[k])) && quantity(string(self.requests[k])).compareTo(quantity('0')) >= 0)) && (!has(self.limits) || self.limits.all(k, isQuantity(string(self.limits[k])) && quantity(string(self.limits[k])).compareTo(quantity('0')) >= 0))").message("resources: every request and limit must be a non-negative quantity such as 100m, 64Mi or 1").reason(Reason::FieldValueInvalid),
        validation = Rule::new("!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)").message("resources: a request must not exceed the limit of the same resource").reason(Reason::FieldValueInvalid)
    )]
    pub resources: Option<ResourceRequirements>,

    /// Named ports the container listens on. Each becomes a container port and a Service port.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub ports: Vec<PortSpec>,

    /// Desired number of pods when autoscaling is off. With `autoscaling`, leave this unset: the
    /// HorizontalPodAutoscaler writes it through the scale subresource. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// Health checking. Startup, readiness and liveness probes are generated from it; with no
    /// `health` at all, probes are generated for the first grpc port (native gRPC probes against
    /// `grpc.health.v1`), else the first http port (`GET /healthz`), else a TCP check on the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,

    /// Horizontal autoscaling. The generated HorizontalPodAutoscaler targets this MicroService's scale
    /// subresource, so its decision is kept across reconciles and rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Prometheus scraping through a generated ServiceMonitor (needs the Prometheus Operator CRDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,

    /// A PodDisruptionBudget for the pods. Set exactly one of `minAvailable` or `maxUnavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetSpec>,

    /// A ConfigMap mounted read-only into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigSpec>,

    /// Secrets (same namespace) mounted read-only into the container, one directory each: every key
    /// (or only `items`) becomes a file. Files are mode 0440 when `pod.fsGroup` is set (readable by
    /// that group, which the container joins), else 0444; never writable. A Secret that does not exist
    /// keeps the pods from starting unless `optional` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(s, self.exists_one(t, t.mountPath == s.mountPath))").message("secrets[].mountPath must be unique").reason(Reason::FieldValueInvalid),
        validation = Rule::new("self.all(s, self.all(t, !t.mountPath.startsWith(s.mountPath + '/')))").message("secrets[].mountPath must not be inside another secret's mountPath").reason(Reason::FieldValueForbidden)
    )]
    pub secrets: Option<Vec<SecretMount>>,

    /// Other MicroServices (same namespace) this one needs. Until every one is Available, the
    /// `DependenciesReady` condition is False and no new pods are rolled. Their addresses are injected
    /// as `<NAME>_ADDR=<name>.<namespace>.svc:<port>` environment variables (NAME upper-cased, `-` as `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(d, self.exists_one(e, e.name == d.name))").message("dependsOn names must be unique").reason(Reason::FieldValueInvalid)
    )]
    pub depends_on: Option<Vec<Dependency>>,

    /// The ServiceAccount the pods run as (the namespace's `default` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Mount the ServiceAccount token into the pods. Off unless asked for: most services never call the
    /// Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,

    /// Pod-level metadata, scheduling and identity settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSpecOverrides>,

    /// How a new version replaces the old one: `RollingUpdate` (default) or `BlueGreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,

    /// Pause a blue-green rollout before promotion: the new revision runs and is checked, but traffic
    /// stays on the active revision until this is false again or a promotion is requested
    /// (`kubectl ferry promote NAME`, i.e. the annotation `ferry.dev/promote: <preview hash>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// Image pull policy of the container.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Application protocol spoken on a port. It selects the generated probe type and the Service
/// port's `appProtocol`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// gRPC over cleartext HTTP/2 (`appProtocol: kubernetes.io/h2c`).
    Grpc,
    /// HTTP/1.1 (`appProtocol: http`).
    Http,
    /// Plain TCP.
    #[default]
    Tcp,
}

/// One named container port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Port name (an IANA service name: at most 15 lower-case letters, digits and '-'). Probes,
    /// `monitoring.port` and dependents refer to ports by this name.
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Container port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Protocol spoken on the port: grpc, http or tcp. Defaults to tcp.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// Port number on the Service (defaults to `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: Option<i32>,
}

impl PortSpec {
    /// The port number clients use on the Service.
    pub fn service_port(&self) -> i32 {
        self.service_port.unwrap_or(self.port)
    }
}

/// Health checking of the container, from which the three probes are generated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Generate probes at all. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Name of the port to probe (defaults to the first grpc port, else the first http port, else the
    /// first port). Its protocol picks the probe: grpc → native gRPC probe, http → HTTP GET, tcp → TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub port: Option<String>,
    /// For grpc ports: the service name sent in the `grpc.health.v1.Health/Check` request (empty = the
    /// whole server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub grpc_service: Option<String>,
    /// For http ports: the path to GET (defaults to `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("health.path must start with '/'"))]
    pub path: Option<String>,
    /// Overrides for the startup probe (defaults: period 2s, failure threshold 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeOverrides>,
    /// Overrides for the readiness probe (defaults: period 5s, failure threshold 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeOverrides>,
    /// Overrides for the liveness probe (defaults: period 10s, failure threshold 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeOverrides>,
}

/// Timing overrides for one generated probe. Unset fields keep Ferry's defaults.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOverrides {
    /// Turn this probe off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Seconds after the container starts before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds before one probe attempt times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe is considered failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
}

/// Horizontal autoscaling settings (autoscaling/v2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    validation = Rule::new("!has(self.latencyP99Milliseconds) || self.latencyP99Milliseconds > 0").message("autoscaling.latencyP99Milliseconds must be above zero").field_path(".latencyP99Milliseconds").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.requestsPerSecondPerPod) || self.requestsPerSecondPerPod > 0").message("autoscaling.requestsPerSecondPerPod must be above zero").field_path(".requestsPerSecondPerPod").reason(Reason::FieldValueInvalid),
    validation = Rule::new("has(self.latencyP99Milliseconds) || has(self.requestsPerSecondPerPod) || (!has(self.metricsWindow) && !has(self.prometheusAddress))").message("autoscaling.metricsWindow and autoscaling.prometheusAddress apply only to the gRPC targets: set latencyP99Milliseconds or requestsPerSecondPerPod, or remove them").reason(Reason::FieldValueForbidden),
    validation = Rule::new("(!has(self.latencyP99Milliseconds) && !has(self.requestsPerSecondPerPod)) || has(self.prometheusAddress)").message("autoscaling on latencyP99Milliseconds or requestsPerSecondPerPod needs autoscaling.prometheusAddress: the Prometheus that KEDA queries").field_path(".prometheusAddress").reason(Reason::FieldValueRequired),
)]
pub struct AutoscalingSpec {
    /// Lower bound on the number of pods (default 1).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_replicas: i32,
    /// Upper bound on the number of pods.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Target average CPU utilization, in percent of the CPU request. When neither target is set,
    /// 80% CPU is used.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Target average memory utilization, in percent of the memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// Target p99 latency of the service's gRPC calls, in milliseconds: the 99th percentile of
    /// `grpc_server_handling_seconds` over `metricsWindow`, across all pods. Setting this or
    /// `requestsPerSecondPerPod` makes Ferry generate a KEDA ScaledObject instead of a
    /// HorizontalPodAutoscaler (KEDA creates the HPA; CPU and memory targets become KEDA triggers,
    /// and the highest recommendation wins). Needs KEDA, `spec.monitoring` (the ServiceMonitor that
    /// gets the metrics into Prometheus) and `prometheusAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3600000))]
    pub latency_p99_milliseconds: Option<i32>,
    /// Target gRPC requests per second per pod: the rate of `grpc_server_handled_total` over
    /// `metricsWindow`, summed over the service, divided by the number of pods. Like
    /// `latencyP99Milliseconds`, it makes Ferry generate a KEDA ScaledObject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000))]
    pub requests_per_second_per_pod: Option<i32>,
    /// The window the p99 latency and the request rate are computed over: seconds, minutes or
    /// hours such as `30s`, `1m` or `2m30s`, from 30s to 1h (default `1m`). Keep it at least
    /// four times Prometheus' scrape interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && duration(self) >= duration('30s') && duration(self) <= duration('1h')").message("autoscaling.metricsWindow must be a duration such as 30s, 1m or 2m30s (units h, m, s), from 30s to 1h").reason(Reason::FieldValueInvalid))]
    pub metrics_window: Option<String>,
    /// `http://` or `https://` base URL of the Prometheus that KEDA queries for the gRPC targets
    /// (for example `http://prometheus.monitoring.svc:9090`). Required with a gRPC target: there
    /// is no default, because a guessed address fails silently inside KEDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')").message("autoscaling.prometheusAddress must be an http:// or https:// URL").reason(Reason::FieldValueInvalid))]
    pub prometheus_address: Option<String>,
    /// Scale-up and scale-down behaviour (stabilization windows and policies), as in autoscaling/v2:
    /// `selectPolicy` Max, Min or Disabled; `stabilizationWindowSeconds` 0 to 3600; each policy of
    /// type Pods or Percent with `value` above 0 and `periodSeconds` 1 to 1800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!has(self.scaleUp) || ((!has(self.scaleUp.selectPolicy) || self.scaleUp.selectPolicy in ['Max', 'Min', 'Disabled']) && (!has(self.scaleUp.stabilizationWindowSeconds) || (self.scaleUp.stabilizationWindowSeconds >= 0 && self.scaleUp.stabilizationWindowSeconds <= 3600)) && (!has(self.scaleUp.policies) || (self.scaleUp.policies.size() > 0 && self.scaleUp.policies.all(p, p.type in ['Pods', 'Percent'] && p.value > 0 && p.periodSeconds > 0 && p.periodSeconds <= 1800))))").message("autoscaling.behavior.scaleUp: selectPolicy is Max, Min or Disabled; stabilizationWindowSeconds is 0 to 3600; policies, when given, are not empty and each has type Pods or Percent, a value above 0 and periodSeconds 1 to 1800").field_path(".scaleUp").reason(Reason::FieldValueInvalid),
        validation = Rule::new("!has(self.scaleDown) || ((!has(self.scaleDown.selectPolicy) || self.scaleDown.selectPolicy in ['Max', 'Min', 'Disabled']) && (!has(self.scaleDown.stabilizationWindowSeconds) || (self.scaleDown.stabilizationWindowSeconds >= 0 && self.scaleDown.stabilizationWindowSeconds <= 3600)) && (!has(self.scaleDown.policies) || (self.scaleDown.policies.size() > 0 && self.scaleDown.policies.all(p, p.type in ['Pods', 'Percent'] && p.value > 0 && p.periodSeconds > 0 && p.periodSeconds <= 1800))))").message("autoscaling.behavior.scaleDown: selectPolicy is Max, Min or Disabled; stabilizationWindowSeconds is 0 to 3600; policies, when given, are not empty and each has type Pods or Percent, a value above 0 and periodSeconds 1 to 1800").field_path(".scaleDown").reason(Reason::FieldValueInvalid)
    )]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    1
}

/// Prometheus scraping through a ServiceMonitor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.scrapeTimeout) || duration(self.scrapeTimeout) <= duration(has(self.interval) ? self.interval : '30s')").message("monitoring.scrapeTimeout must not exceed monitoring.interval"),
)]
pub struct MonitoringSpec {
    /// Generate a ServiceMonitor. Defaults to true when `monitoring` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Name of the port serving metrics (defaults to a port named `metrics`, else the first http port,
    /// else the first port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub port: Option<String>,
    /// HTTP path of the metrics endpoint (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("monitoring.path must start with '/'"))]
    pub path: Option<String>,
    /// Scrape interval, for example `30s` or `1m30s` (default `30s`): units h, m, s, ms, largest
    /// first, above zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("monitoring.interval must be above zero").reason(Reason::FieldValueInvalid))]
    pub interval: Option<String>,
    /// Scrape timeout, at most the interval (default `10s`, capped at the interval); units as for
    /// `interval`, above zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("monitoring.scrapeTimeout must be above zero").reason(Reason::FieldValueInvalid))]
    pub scrape_timeout: Option<String>,
    /// Extra labels on the ServiceMonitor and the PrometheusRule, so that a Prometheus
    /// `serviceMonitorSelector` / `ruleSelector` picks them up (kube-prometheus-stack needs
    /// `release: <its release name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Alert rules for this service, as a generated PrometheusRule (needs the Prometheus Operator
    /// CRDs; without them the `PrometheusRuleReady` condition says so and nothing else changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
}

/// The alerts a service team expects, generated as one PrometheusRule. The gRPC alerts read the
/// go-grpc-prometheus metrics the services export (`grpc_server_handling_seconds`,
/// `grpc_server_handled_total`) as scraped through the Service; the others read kube-state-metrics.
/// Every duration is a Prometheus duration such as `5m` or `1h30m` (units y, w, d, h, m, s, ms,
/// largest first).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Generate the PrometheusRule. Defaults to true when `alerts` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `GrpcLatencyHigh` fires when the p99 of gRPC handling time exceeds this many
    /// milliseconds (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub latency_p99_threshold_ms: Option<i32>,
    /// How long the p99 must stay above the threshold (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$")
    )]
    pub latency_for: Option<String>,
    /// `GrpcErrorRatioHigh` fires, per `grpc_code`, when calls ending with that code exceed this
    /// fraction of all calls (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_ratio_threshold: Option<f64>,
    /// The gRPC codes that count as errors (default: the server-side failures Unknown,
    /// DeadlineExceeded, Unimplemented, Internal, Unavailable and DataLoss; client mistakes such as
    /// InvalidArgument or NotFound are answers, not errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub error_codes: Option<Vec<GrpcCode>>,
    /// How long the error ratio must stay above the threshold (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$")
    )]
    pub error_ratio_for: Option<String>,
    /// The window the latency and error-ratio alerts take their rates over (default `5m`). A
    /// shorter window notices a change sooner and is noisier; keep it at least four scrape
    /// intervals long, or the rates have too few samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$")
    )]
    pub rate_window: Option<String>,
    /// How long a pod may stay not ready before `PodsNotReady` fires (default `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$")
    )]
    pub pods_not_ready_for: Option<String>,
    /// With `autoscaling`: how long the autoscaler may run at `maxReplicas` before
    /// `AutoscalerAtMaxReplicas` fires (default `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 16),
        regex(pattern = r"^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$")
    )]
    pub max_replicas_for: Option<String>,
    /// Extra labels on every alert, for routing (for example `team: payments`). `severity` here
    /// replaces the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A gRPC status code, as the `grpc_code` label spells it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    #[serde(rename = "OK")]
    Ok,
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// A PodDisruptionBudget (policy/v1). Exactly one of the two fields is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("disruptionBudget needs exactly one of minAvailable or maxUnavailable"),
    validation = Rule::new("[has(self.minAvailable) ? [self.minAvailable] : [], has(self.maxUnavailable) ? [self.maxUnavailable] : []].all(l, l.all(v, string(v).matches('^([0-9]+|([0-9]|[1-9][0-9]|100)%)$')))").message("disruptionBudget: minAvailable and maxUnavailable are a number of pods (0 or more) or a percentage from 0% to 100%").reason(Reason::FieldValueInvalid),
)]
pub struct DisruptionBudgetSpec {
    /// Pods that must stay available during a voluntary disruption (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unavailable during a voluntary disruption (a number or a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// A ConfigMap mounted into the container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSpec {
    /// Name of the ConfigMap (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Directory the ConfigMap's keys appear in (default `/etc/ferry/config`): absolute, no trailing
    /// '/', not /tmp nor inside or above it (the generated emptyDir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    #[x_kube(validation = Rule::new("!self.contains('..') && !self.contains(':') && !self.contains('//') && !self.endsWith('/')").message("config.mountPath must be an absolute path without '..', ':', '//' or a trailing '/'").reason(Reason::FieldValueInvalid))]
    pub mount_path: Option<String>,
    /// On a change of the ConfigMap's data, roll the pods (true, the default) or leave the running pods
    /// to pick up the new files themselves (false: hot reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_on_change: Option<bool>,
}

/// A Secret mounted read-only as a directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    /// Name of the Secret (same namespace).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Absolute directory the Secret's files appear in, for example `/etc/ferry/jwt`: no trailing
    /// '/', not /tmp or the config mount path nor inside or above them, not inside another secret's.
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    #[x_kube(validation = Rule::new("!self.contains('..') && !self.contains(':') && !self.contains('//') && !self.endsWith('/')").message("secrets[].mountPath must be an absolute path without '..', ':', '//' or a trailing '/'").reason(Reason::FieldValueInvalid))]
    pub mount_path: String,
    /// Only these keys, each at its own relative path (default: every key, as a file named after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(i, self.exists_one(j, j.path == i.path))").message("secrets[].items[].path must be unique").reason(Reason::FieldValueInvalid))]
    pub items: Option<Vec<SecretItem>>,
    /// Start the pods even when the Secret (or a listed key) does not exist (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key of a mounted Secret and the file it becomes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretItem {
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Relative file path under `mountPath` (no leading '/', no '..').
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')").message("secrets[].items[].path must be relative and must not contain '..'"))]
    pub path: String,
}

/// A MicroService this one depends on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Name of the MicroService (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Which of its ports to put in the injected address (defaults to its first port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub port: Option<String>,
    /// Name of the injected environment variable (defaults to `<NAME>_ADDR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub env: Option<String>,
}

/// Pod-level settings. `tolerations`, `affinity` and `topologySpreadConstraints` pass through to the
/// pod unvalidated by the CRD schema (see the operator README); they are checked when reconciled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    /// Extra labels on the pods. Reserved, because Ferry or the Deployment set them: keys under
    /// `ferry.dev/`, `app.kubernetes.io/name`, `app.kubernetes.io/managed-by`, `pod-template-hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('ferry.dev/') && !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/managed-by', 'pod-template-hash']))").message("pod.labels must not use the reserved ferry.dev/ prefix nor the labels Ferry and the Deployment set (app.kubernetes.io/name, app.kubernetes.io/managed-by, pod-template-hash)").reason(Reason::FieldValueForbidden))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations (Kubernetes `Toleration` objects; passed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::preserve_unknown_list")]
    pub tolerations: Option<Vec<Value>>,
    /// Affinity (a Kubernetes `Affinity` object; passed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::preserve_unknown_object")]
    pub affinity: Option<Value>,
    /// Topology spread constraints (Kubernetes `TopologySpreadConstraint` objects; passed through).
    /// A constraint without a `labelSelector` gets one selecting this MicroService's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::preserve_unknown_list")]
    pub topology_spread_constraints: Option<Vec<Value>>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// Seconds a pod gets to shut down after SIGTERM (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Numeric user id the container runs as (needed when the image's USER is not numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Numeric group id the container runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Group that owns mounted volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub fs_group: Option<i64>,
}

/// The rollout strategy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.blueGreen) || self.type == 'BlueGreen'").message("strategy.blueGreen applies only with type BlueGreen").field_path(".blueGreen").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.rollingUpdate) || self.type == 'RollingUpdate'").message("strategy.rollingUpdate applies only with type RollingUpdate").field_path(".rollingUpdate").reason(Reason::FieldValueForbidden),
)]
pub struct StrategySpec {
    /// Strategy type. `RollingUpdate` replaces pods in place through the Deployment.
    #[serde(default, rename = "type")]
    pub type_: StrategyType,
    /// Settings of the rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdateSpec>,
    /// Settings of the blue-green rollout (used when `type: BlueGreen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
}

/// Strategy types.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StrategyType {
    /// A rolling update of one Deployment.
    #[default]
    RollingUpdate,
    /// One Deployment per revision (`NAME-<hash>`); the Service's selector switches atomically from
    /// the active revision to the new one once it is fully available and its checks passed.
    BlueGreen,
}

/// Blue-green rollout settings. Every duration is in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.autoPromotionSeconds) || self.autoPromotionSeconds == 0 || (has(self.autoPromotionEnabled) && !self.autoPromotionEnabled)").message("autoPromotionSeconds applies only with autoPromotionEnabled: false").field_path(".autoPromotionSeconds").reason(Reason::FieldValueForbidden),
)]
pub struct BlueGreenSpec {
    /// Create the `NAME-preview` Service, which selects only the newest revision (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<bool>,
    /// Pods the new revision runs before promotion (default: the full replica count). It is scaled
    /// to the full count, and must be fully available, before traffic moves to it. With
    /// `autoscaling` it may not exceed `maxReplicas`; without, a count above `replicas` means
    /// `replicas`. It applies whether or not the preview Service exists: the pre-promotion checks
    /// see that many pods (a webhook check is then told `service: ""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub preview_replica_count: Option<i32>,
    /// Promote without a manual step once the new revision is available and its pre-promotion
    /// checks passed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// With auto-promotion off: promote anyway this many seconds after the rollout paused (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub auto_promotion_seconds: Option<i32>,
    /// Seconds the previous revision keeps running after the switch, so kube-proxy rules propagate
    /// and a fast rollback stays possible (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds an aborted revision keeps running before it is scaled to zero (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Seconds the new revision has to become available and pass its pre-promotion checks
    /// (default 600). Past it the rollout is Degraded, or aborted with `progressDeadlineAbort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
    /// Abort the rollout when the progress deadline passes (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_abort: Option<bool>,
    /// Scaled-down revisions (Deployments) kept for rollback (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub revision_history_limit: Option<i32>,
    /// Checks that must pass against the new revision before traffic moves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("prePromotionChecks names must be unique").reason(Reason::FieldValueInvalid)
    )]
    pub pre_promotion_checks: Option<Vec<CheckSpec>>,
    /// Checks run after the switch; a failure switches traffic back to the previous revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("postPromotionChecks names must be unique").reason(Reason::FieldValueInvalid)
    )]
    pub post_promotion_checks: Option<Vec<CheckSpec>>,
}

/// One promotion check: exactly one of `grpcHealth`, `webhook` or `prometheus`. It is measured
/// `count` times, `intervalSeconds` apart, and fails once more than `failureLimit` measurements fail.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.grpcHealth) ? 1 : 0) + (has(self.webhook) ? 1 : 0) + (has(self.prometheus) ? 1 : 0) == 1").message("a check needs exactly one of grpcHealth, webhook or prometheus"),
    validation = Rule::new("!has(self.failureLimit) || self.failureLimit < (has(self.count) ? self.count : 1)").message("failureLimit must be less than count: with failureLimit >= count the check can never fail").field_path(".failureLimit").reason(Reason::FieldValueInvalid),
)]
pub struct CheckSpec {
    /// Name of the check, unique in its list; results in status are keyed by it.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Seconds between measurements (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: Option<i32>,
    /// Measurements to take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub count: Option<i32>,
    /// Failed measurements tolerated (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: Option<i32>,
    /// `grpc.health.v1.Health/Check` against every pod of the new revision; passes when all SERVING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_health: Option<GrpcHealthCheck>,
    /// POST of the rollout context as JSON; any 2xx answer passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookCheck>,
    /// A Prometheus instant query whose scalar result must fall inside `[min, max]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
}

/// gRPC health check settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHealthCheck {
    /// Name of the port to dial (default: the first grpc port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub port: Option<String>,
    /// Service name sent in the request (empty = the whole server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service: Option<String>,
    /// Seconds before one call times out (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<i32>,
}

/// HTTP webhook check settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCheck {
    /// `http://` or `https://` URL the rollout context is POSTed to. An https server is verified
    /// against the operator's trust store (the system's, plus the operator's `--check-ca-file`).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Seconds before the call times out (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<i32>,
}

/// Prometheus query check settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusCheck {
    /// `http://` or `https://` base URL of the Prometheus server (for example
    /// `http://prometheus.monitoring:9090`). An https server is verified against the operator's
    /// trust store (the system's, plus the operator's `--check-ca-file`).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub address: String,
    /// PromQL instant query returning one sample; `{{revision}}` is replaced by the revision hash.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The passing range of the result (inclusive).
    pub threshold_range: ThresholdRange,
    /// Seconds before the query times out (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<i32>,
}

/// An inclusive range; an unset bound is open, but at least one is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.min) || has(self.max)").message("thresholdRange needs min or max").reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("thresholdRange.min must not exceed thresholdRange.max").reason(Reason::FieldValueInvalid),
)]
pub struct ThresholdRange {
    /// Lowest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Rolling update limits, as on a Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(!has(self.maxSurge) || string(self.maxSurge).matches('^[0-9]+%?$')) && (!has(self.maxUnavailable) || string(self.maxUnavailable).matches('^([0-9]+|([0-9]|[1-9][0-9]|100)%)$'))").message("rollingUpdate: maxSurge is a number of pods or a percentage, maxUnavailable a number of pods or a percentage up to 100%").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!(has(self.maxSurge) && string(self.maxSurge) in ['0', '0%'] && (!has(self.maxUnavailable) || string(self.maxUnavailable) in ['0', '0%']))").message("rollingUpdate: maxSurge and maxUnavailable cannot both be 0 (maxUnavailable defaults to 0)").reason(Reason::FieldValueInvalid),
)]
pub struct RollingUpdateSpec {
    /// Pods above the desired count during the update (number or percentage; default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Pods that may be unavailable during the update (number or percentage; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}
