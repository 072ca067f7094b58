//! Checks the CRD schema cannot express, run at the start of every reconcile.
//!
//! Most rules are CEL rules in the CRD (see [`crate::crd::spec`]) and reject a bad spec at admission;
//! their offline tests are at the bottom of this file. What remains here are the pass-through fields
//! (`envFrom`, `tolerations`, `affinity`, `topologySpreadConstraints`), which the schema keeps as
//! free-form objects to keep the CRD small. A spec that fails here is parked behind the
//! `InvalidSpec` condition: the reconciler writes nothing else and waits for the next change.

use k8s_openapi::api::core::v1::{Affinity, EnvFromSource, Toleration, TopologySpreadConstraint};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::{MicroService, Reason};

/// Why a spec cannot be reconciled; becomes the `InvalidSpec` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Reason of the `InvalidSpec` condition.
    pub reason: Reason,
    /// Human message naming the field.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The pass-through fields, parsed into their Kubernetes types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodExtras {
    /// `spec.envFrom`.
    pub env_from: Vec<EnvFromSource>,
    /// `spec.pod.tolerations`.
    pub tolerations: Vec<Toleration>,
    /// `spec.pod.affinity`.
    pub affinity: Option<Affinity>,
    /// `spec.pod.topologySpreadConstraints`.
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// Checks a MicroService and parses its pass-through fields.
pub fn check(ms: &MicroService) -> Result<PodExtras, SpecError> {
    let spec = &ms.spec;
    let pod = spec.pod.as_ref();
    let extras = PodExtras {
        env_from: parse_list("spec.envFrom", spec.env_from.as_deref())?,
        tolerations: parse_list("spec.pod.tolerations", pod.and_then(|p| p.tolerations.as_deref()))?,
        affinity: pod
            .and_then(|p| p.affinity.as_ref())
            .map(|v| parse_one("spec.pod.affinity", v))
            .transpose()?,
        topology_spread_constraints: parse_list(
            "spec.pod.topologySpreadConstraints",
            pod.and_then(|p| p.topology_spread_constraints.as_deref()),
        )?,
    };
    for (i, source) in extras.env_from.iter().enumerate() {
        if source.config_map_ref.is_none() == source.secret_ref.is_none() {
            return Err(SpecError {
                reason: Reason::InvalidEnvFrom,
                message: format!("spec.envFrom[{i}] needs exactly one of configMapRef or secretRef"),
            });
        }
    }
    Ok(extras)
}

fn parse_list<T: DeserializeOwned>(field: &str, values: Option<&[Value]>) -> Result<Vec<T>, SpecError> {
    values
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| parse_one(&format!("{field}[{i}]"), v))
        .collect()
}

fn parse_one<T: DeserializeOwned>(field: &str, value: &Value) -> Result<T, SpecError> {
    serde_json::from_value(value.clone()).map_err(|err| SpecError {
        reason: Reason::InvalidPassThroughField,
        message: format!("{field} is not a valid Kubernetes object: {err}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::MicroServiceSpec;
    use kube::CustomResourceExt;

    /// A minimal valid MicroService as JSON, to be edited by each test.
    fn base() -> Value {
        json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "MicroService",
            "metadata": {"name": "order", "namespace": "shop"},
            "spec": {
                "image": "ghcr.io/acme/order:1.0.0",
                "ports": [{"name": "grpc", "port": 50051, "protocol": "grpc"}],
            }
        })
    }

    fn ms(value: Value) -> MicroService {
        serde_json::from_value(value).expect("test object deserialises")
    }

    /// The CRD's schema as kube-cel can evaluate it. NB: under `optionalOldSelf` the apiserver
    /// gives `oldSelf` as an optional (`hasValue()`, `value()`), while kube-cel 0.8 gives the old
    /// value itself, or `null` on create. Each such rule is rewritten into that form here, one
    /// mechanical substitution per optional function; the e2e admission test runs the rule as
    /// written against the apiserver.
    fn offline_schema() -> Value {
        fn rewrite(node: &mut Value, rewritten: &mut usize) {
            match node {
                Value::Object(map) => {
                    if map.get("optionalOldSelf") == Some(&json!(true))
                        && let Some(Value::String(rule)) = map.get_mut("rule")
                    {
                        *rule = rule
                            .replace("oldSelf.hasValue()", "oldSelf != null")
                            .replace("oldSelf.value()", "oldSelf");
                        *rewritten += 1;
                    }
                    map.values_mut().for_each(|v| rewrite(v, rewritten));
                }
                Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, rewritten)),
                _ => {}
            }
        }
        let crd = MicroService::crd();
        let mut schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("the CRD has a schema"),
        )
        .expect("schema as JSON");
        let mut rewritten = 0;
        rewrite(&mut schema, &mut rewritten);
        assert!(rewritten > 0, "the optionalOldSelf rules were found and rewritten");
        schema
    }

    fn messages(result: Result<(), kube::core::cel::ValidationErrors>) -> Vec<String> {
        match result {
            Ok(()) => vec![],
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    }

    /// The messages of every CEL rule the object breaks on create.
    fn cel_errors(value: Value) -> Vec<String> {
        let object = serde_json::to_value(ms(value)).expect("object as JSON");
        messages(kube::core::cel::Validator::new().validate(&offline_schema(), &object, None))
    }

    /// The messages of every CEL rule an update from `old` to `new` breaks.
    fn cel_update_errors(new: Value, old: Value) -> Vec<String> {
        let object = serde_json::to_value(ms(new)).expect("object as JSON");
        let old = serde_json::to_value(ms(old)).expect("old object as JSON");
        messages(kube::core::cel::Validator::new().validate(&offline_schema(), &object, Some(&old)))
    }

    fn with(mut value: Value, path: &[&str], v: Value) -> Value {
        let mut cursor = &mut value;
        for key in &path[..path.len() - 1] {
            cursor = cursor.as_object_mut().expect("object").entry(*key).or_insert(json!({}));
        }
        cursor[path[path.len() - 1]] = v;
        value
    }

    fn assert_rejected(errors: Vec<String>, needle: &str) {
        assert!(
            errors.iter().any(|m| m.contains(needle)),
            "expected a rule message containing {needle:?}, got {errors:?}"
        );
    }

    #[test]
    fn a_minimal_microservice_passes_every_rule() {
        assert_eq!(cel_errors(base()), Vec::<String>::new());
    }

    #[test]
    fn a_full_microservice_passes_every_rule() {
        let full = with(
            base(),
            &["spec"],
            json!({
                "image": "ghcr.io/acme/order:1.4.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "ports": [
                    {"name": "grpc", "port": 50051, "protocol": "grpc"},
                    {"name": "metrics", "port": 9090, "protocol": "http"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "health": {"port": "grpc", "path": "/ready"},
                "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70,
                                "targetMemoryUtilizationPercentage": 80},
                "monitoring": {"port": "metrics", "interval": "30s", "scrapeTimeout": "10s",
                               "labels": {"release": "prom"}},
                "disruptionBudget": {"maxUnavailable": 1},
                "dependsOn": [{"name": "inventory"}],
                "pod": {"labels": {"team": "shop"}}
            }),
        );
        assert_eq!(cel_errors(full), Vec::<String>::new());
    }

    #[test]
    fn min_replicas_above_max_replicas_is_rejected() {
        let bad = with(base(), &["spec", "autoscaling"], json!({"minReplicas": 5, "maxReplicas": 2}));
        assert_rejected(cel_errors(bad), "minReplicas must be less than or equal to");
    }

    #[test]
    fn duplicate_port_names_are_rejected() {
        let bad = with(
            base(),
            &["spec", "ports"],
            json!([{"name": "grpc", "port": 1}, {"name": "grpc", "port": 2}]),
        );
        assert_rejected(cel_errors(bad), "port names must be unique");
    }

    #[test]
    fn duplicate_port_numbers_are_rejected() {
        let bad =
            with(base(), &["spec", "ports"], json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}]));
        assert_rejected(cel_errors(bad), "container port numbers must be unique");
    }

    #[test]
    fn two_ports_mapped_to_one_service_port_are_rejected() {
        let bad = with(
            base(),
            &["spec", "ports"],
            json!([{"name": "a", "port": 80}, {"name": "b", "port": 81, "servicePort": 80}]),
        );
        assert_rejected(cel_errors(bad), "service port numbers must be unique");
    }

    #[test]
    fn a_scrape_timeout_longer_than_the_interval_is_rejected() {
        let bad = with(base(), &["spec", "monitoring"], json!({"interval": "10s", "scrapeTimeout": "15s"}));
        assert_rejected(cel_errors(bad), "scrapeTimeout must not exceed");
    }

    #[test]
    fn a_scrape_timeout_longer_than_the_default_interval_is_rejected() {
        let bad = with(base(), &["spec", "monitoring"], json!({"scrapeTimeout": "1m"}));
        assert_rejected(cel_errors(bad), "scrapeTimeout must not exceed");
    }

    #[test]
    fn creating_with_both_replicas_and_autoscaling_is_rejected() {
        let bad = with(
            with(base(), &["spec", "replicas"], json!(3)),
            &["spec", "autoscaling"],
            json!({"minReplicas": 1, "maxReplicas": 3}),
        );
        assert_rejected(cel_errors(bad), "mutually exclusive");
    }

    #[test]
    fn adding_autoscaling_while_keeping_replicas_is_rejected() {
        let old =
            with(with(base(), &["spec", "replicas"], json!(3)), &["status"], json!({"phase": "Healthy"}));
        let new = with(old.clone(), &["spec", "autoscaling"], json!({"minReplicas": 1, "maxReplicas": 3}));
        assert_rejected(cel_update_errors(new, old), "mutually exclusive");
    }

    #[test]
    fn the_autoscaler_may_write_replicas_once_autoscaling_is_on() {
        // NB: no status: the operator seeds spec.replicas before it first writes one.
        let old = with(base(), &["spec", "autoscaling"], json!({"minReplicas": 1, "maxReplicas": 3}));
        let new = with(old.clone(), &["spec", "replicas"], json!(2));
        assert_eq!(cel_update_errors(new, old), Vec::<String>::new());
    }

    #[test]
    fn a_health_port_that_names_no_port_is_rejected() {
        let bad = with(base(), &["spec", "health"], json!({"port": "http"}));
        assert_rejected(cel_errors(bad), "health.port must name one of spec.ports");
    }

    #[test]
    fn a_monitoring_port_that_names_no_port_is_rejected() {
        let bad = with(base(), &["spec", "monitoring"], json!({"port": "metrics"}));
        assert_rejected(cel_errors(bad), "monitoring.port must name one of spec.ports");
    }

    #[test]
    fn cpu_autoscaling_without_a_cpu_request_is_rejected() {
        let bad = with(
            base(),
            &["spec", "autoscaling"],
            json!({"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 70}),
        );
        assert_rejected(cel_errors(bad), "needs resources.requests.cpu");
    }

    /// `base()` with a metrics port, monitoring and `autoscaling` set to `autoscaling`.
    fn grpc_autoscaled(autoscaling: Value) -> Value {
        let value = with(
            base(),
            &["spec", "ports"],
            json!([
                {"name": "grpc", "port": 50051, "protocol": "grpc"},
                {"name": "metrics", "port": 9090, "protocol": "http"}
            ]),
        );
        let value = with(value, &["spec", "monitoring"], json!({"port": "metrics"}));
        with(value, &["spec", "autoscaling"], autoscaling)
    }

    const PROM: &str = "http://prometheus.monitoring.svc:9090";

    #[test]
    fn every_grpc_autoscaling_target_combination_passes_every_rule() {
        for extra in [
            json!({"latencyP99Milliseconds": 250}),
            json!({"requestsPerSecondPerPod": 40}),
            json!({"latencyP99Milliseconds": 250, "requestsPerSecondPerPod": 40, "metricsWindow": "2m30s"}),
            json!({"latencyP99Milliseconds": 250, "metricsWindow": "30s"}),
            json!({"requestsPerSecondPerPod": 40, "metricsWindow": "1h"}),
        ] {
            let mut autoscaling = json!({"minReplicas": 1, "maxReplicas": 5, "prometheusAddress": PROM});
            for (k, v) in extra.as_object().expect("object") {
                autoscaling[k] = v.clone();
            }
            assert_eq!(
                cel_errors(grpc_autoscaled(autoscaling.clone())),
                Vec::<String>::new(),
                "{autoscaling}"
            );
        }
    }

    #[test]
    fn grpc_targets_of_zero_or_less_are_rejected() {
        let bad = grpc_autoscaled(
            json!({"minReplicas": 1, "maxReplicas": 5, "prometheusAddress": PROM, "latencyP99Milliseconds": 0}),
        );
        assert_rejected(cel_errors(bad), "latencyP99Milliseconds must be above zero");
        let bad = grpc_autoscaled(
            json!({"minReplicas": 1, "maxReplicas": 5, "prometheusAddress": PROM, "requestsPerSecondPerPod": -3}),
        );
        assert_rejected(cel_errors(bad), "requestsPerSecondPerPod must be above zero");
    }

    #[test]
    fn a_grpc_target_without_a_prometheus_address_is_rejected() {
        let bad = grpc_autoscaled(json!({"minReplicas": 1, "maxReplicas": 5, "latencyP99Milliseconds": 250}));
        assert_rejected(cel_errors(bad), "needs autoscaling.prometheusAddress");
    }

    #[test]
    fn a_prometheus_address_that_is_not_an_http_url_is_rejected() {
        let bad = grpc_autoscaled(json!({"minReplicas": 1, "maxReplicas": 5,
            "latencyP99Milliseconds": 250, "prometheusAddress": "prometheus:9090"}));
        assert_rejected(cel_errors(bad), "prometheusAddress must be an http:// or https:// URL");
    }

    #[test]
    fn a_metrics_window_or_prometheus_address_without_a_grpc_target_is_rejected() {
        for extra in [json!({"metricsWindow": "1m"}), json!({"prometheusAddress": PROM})] {
            let mut autoscaling = json!({"minReplicas": 1, "maxReplicas": 5});
            for (k, v) in extra.as_object().expect("object") {
                autoscaling[k] = v.clone();
            }
            assert_rejected(cel_errors(grpc_autoscaled(autoscaling)), "apply only to the gRPC targets");
        }
    }

    #[test]
    fn a_metrics_window_in_the_wrong_format_or_out_of_range_is_rejected() {
        for window in ["1d", "90", "5 m", "10s", "2h", "1m30"] {
            let bad = grpc_autoscaled(json!({"minReplicas": 1, "maxReplicas": 5, "prometheusAddress": PROM,
                "latencyP99Milliseconds": 250, "metricsWindow": window}));
            assert_rejected(cel_errors(bad), "metricsWindow must be a duration");
        }
    }

    #[test]
    fn a_grpc_target_without_monitoring_or_a_grpc_port_is_rejected() {
        let autoscaling = json!({"minReplicas": 1, "maxReplicas": 5, "prometheusAddress": PROM, "requestsPerSecondPerPod": 40});
        let without_monitoring = with(base(), &["spec", "autoscaling"], autoscaling.clone());
        assert_rejected(cel_errors(without_monitoring), "it needs a grpc port and spec.monitoring enabled");
        let disabled =
            with(grpc_autoscaled(autoscaling.clone()), &["spec", "monitoring", "enabled"], json!(false));
        assert_rejected(cel_errors(disabled), "it needs a grpc port and spec.monitoring enabled");
        let http_only = with(
            grpc_autoscaled(autoscaling),
            &["spec", "ports"],
            json!([{"name": "metrics", "port": 9090, "protocol": "http"}]),
        );
        assert_rejected(cel_errors(http_only), "it needs a grpc port and spec.monitoring enabled");
    }

    #[test]
    fn a_disruption_budget_with_both_fields_is_rejected() {
        let bad =
            with(base(), &["spec", "disruptionBudget"], json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_rejected(cel_errors(bad), "exactly one of minAvailable or maxUnavailable");
    }

    #[test]
    fn an_empty_disruption_budget_is_rejected() {
        let bad = with(base(), &["spec", "disruptionBudget"], json!({}));
        assert_rejected(cel_errors(bad), "exactly one of minAvailable or maxUnavailable");
    }

    #[test]
    fn duplicate_dependencies_are_rejected() {
        let bad = with(base(), &["spec", "dependsOn"], json!([{"name": "a"}, {"name": "a"}]));
        assert_rejected(cel_errors(bad), "dependsOn names must be unique");
    }

    #[test]
    fn depending_on_itself_is_rejected() {
        let bad = with(base(), &["spec", "dependsOn"], json!([{"name": "order"}]));
        assert_rejected(cel_errors(bad), "cannot depend on itself");
    }

    #[test]
    fn an_image_without_tag_or_digest_is_rejected() {
        let bad = with(base(), &["spec", "image"], json!("order"));
        assert_rejected(cel_errors(bad), "image must carry a tag or a digest");
    }

    #[test]
    fn a_name_that_cannot_name_a_service_is_rejected() {
        let bad = with(base(), &["metadata", "name"], json!("1order"));
        assert_rejected(cel_errors(bad), "DNS-1035 label");
    }

    #[test]
    fn reserved_pod_labels_are_rejected() {
        let bad = with(base(), &["spec", "pod"], json!({"labels": {"ferry.dev/microservice": "x"}}));
        assert_rejected(cel_errors(bad), "reserved ferry.dev/ prefix");
    }

    #[test]
    fn valid_pass_through_fields_are_parsed_into_kubernetes_types() {
        let value = with(
            with(base(), &["spec", "envFrom"], json!([{"configMapRef": {"name": "cm"}}])),
            &["spec", "pod"],
            json!({
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                               "whenUnsatisfiable": "ScheduleAnyway"}]
            }),
        );
        let extras = check(&ms(value)).expect("valid");
        assert_eq!(extras.env_from.len(), 1);
        assert_eq!(extras.tolerations[0].key.as_deref(), Some("gpu"));
        assert!(extras.affinity.is_some());
        assert_eq!(extras.topology_spread_constraints[0].max_skew, 1);
    }

    #[test]
    fn a_malformed_toleration_is_an_invalid_spec_naming_the_field() {
        let value = with(base(), &["spec", "pod"], json!({"tolerations": [{"tolerationSeconds": "soon"}]}));
        let err = check(&ms(value)).expect_err("invalid");
        assert_eq!(err.reason, "InvalidPassThroughField");
        assert!(err.message.contains("spec.pod.tolerations[0]"), "{}", err.message);
    }

    #[test]
    fn an_env_from_with_no_source_is_an_invalid_spec() {
        let value = with(base(), &["spec", "envFrom"], json!([{"prefix": "X_"}]));
        let err = check(&ms(value)).expect_err("invalid");
        assert_eq!(err.reason, "InvalidEnvFrom");
    }

    #[test]
    fn the_spec_round_trips_through_json_unchanged() {
        let spec: MicroServiceSpec = ms(base()).spec;
        let again: MicroServiceSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("ser")).expect("de");
        assert_eq!(spec, again);
    }
    #[test]
    fn a_blue_green_strategy_passes_and_a_check_needs_exactly_one_kind() {
        let strategy = |checks: Value| {
            with(
                base(),
                &["spec", "strategy"],
                json!({"type": "BlueGreen", "blueGreen": {
                    "scaleDownDelaySeconds": 30,
                    "prePromotionChecks": checks
                }}),
            )
        };
        let good = strategy(json!([
            {"name": "health", "grpcHealth": {"service": "order.Order"}, "count": 3},
            {"name": "hook", "webhook": {"url": "http://tester/smoke"}},
            {"name": "ratio", "prometheus": {"address": "http://prom:9090", "query": "up",
                                             "thresholdRange": {"min": 0.99}}}
        ]));
        assert_eq!(cel_errors(good), Vec::<String>::new());
        assert_rejected(
            cel_errors(strategy(json!([{"name": "none"}]))),
            "exactly one of grpcHealth, webhook or prometheus",
        );
        assert_rejected(
            cel_errors(strategy(json!([{"name": "two", "grpcHealth": {},
                                        "webhook": {"url": "http://x/"}}]))),
            "exactly one of grpcHealth, webhook or prometheus",
        );
    }

    /// `spec` fields merged over [`base`]'s.
    fn spec_with(fields: Value) -> Value {
        let mut value = base();
        for (k, v) in fields.as_object().expect("object") {
            value["spec"][k] = v.clone();
        }
        value
    }

    fn blue_green(bg: Value) -> Value {
        spec_with(json!({"strategy": {"type": "BlueGreen", "blueGreen": bg}}))
    }

    #[test]
    fn an_image_that_is_no_image_reference_is_rejected() {
        for bad in [":", "order:", ":1.0", "Order:1", "ghcr.io/acme/order:1 0", "order@sha256:abc"] {
            assert_rejected(
                cel_errors(with(base(), &["spec", "image"], json!(bad))),
                "image must be an image reference",
            );
        }
        for good in ["order:1", "localhost:5000/acme/order:1.0-rc_1", "registry.k8s.io/pause:3.10"] {
            assert_eq!(
                cel_errors(with(base(), &["spec", "image"], json!(good))),
                Vec::<String>::new(),
                "{good}"
            );
        }
    }

    /// The `pattern` of a field of the generated CRD's spec, e.g. `["monitoring", "interval"]`.
    fn spec_pattern(path: &[&str]) -> String {
        let crd = serde_json::to_value(MicroService::crd()).expect("crd");
        let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for key in path {
            node = &node["properties"][key];
        }
        node["pattern"].as_str().expect("a pattern").to_string()
    }

    /// Whether `value` matches the CRD pattern `pattern`, evaluated as CEL's RE2 `matches` (the
    /// apiserver's regular expressions are RE2 too).
    fn matches_pattern(pattern: &str, value: &str) -> bool {
        let schema = json!({"type": "string", "x-kubernetes-validations": [
            {"rule": format!("self.matches('{pattern}')"), "message": "no match"}
        ]});
        kube::core::cel::Validator::new().validate(&schema, &json!(value), None).is_ok()
    }

    #[test]
    fn check_urls_may_be_http_or_https_and_nothing_else() {
        let crd = serde_json::to_value(MicroService::crd()).expect("crd");
        let checks = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/strategy\
                      /properties/blueGreen/properties/prePromotionChecks/items/properties";
        for field in ["/webhook/properties/url", "/prometheus/properties/address"] {
            let pointer = format!("{checks}{field}/pattern");
            let pattern = crd.pointer(&pointer).and_then(Value::as_str).expect("a pattern");
            assert!(matches_pattern(pattern, "http://hooks.shop:8080/smoke"), "{field}");
            assert!(matches_pattern(pattern, "https://hooks.example.com/smoke"), "{field}");
            assert!(!matches_pattern(pattern, "ftp://hooks.example.com/"), "{field}");
            assert!(!matches_pattern(pattern, "hooks.example.com"), "{field}");
        }
    }

    #[test]
    fn durations_need_their_units_largest_first() {
        let scrape = spec_pattern(&["monitoring", "interval"]);
        for good in ["30s", "1m30s", "1h", "500ms", "1m5s100ms"] {
            assert!(matches_pattern(&scrape, good), "{good}");
        }
        for bad in ["1s1m", "30", "1d", "5m1h", "s"] {
            assert!(!matches_pattern(&scrape, bad), "{bad}");
        }
        let alert = spec_pattern(&["monitoring", "alerts", "latencyFor"]);
        for good in ["10m", "1d12h", "2w", "1y"] {
            assert!(matches_pattern(&alert, good), "{good}");
        }
        for bad in ["1m1h", "1h1d", "10"] {
            assert!(!matches_pattern(&alert, bad), "{bad}");
        }
    }

    #[test]
    fn a_zero_scrape_interval_or_timeout_is_rejected() {
        let monitoring = |m: Value| {
            spec_with(json!({
                "ports": [{"name": "grpc", "port": 1, "protocol": "grpc"}, {"name": "metrics", "port": 2, "protocol": "http"}],
                "monitoring": m
            }))
        };
        assert_rejected(
            cel_errors(monitoring(json!({"interval": "0s"}))),
            "monitoring.interval must be above zero",
        );
        assert_rejected(
            cel_errors(monitoring(json!({"scrapeTimeout": "0ms"}))),
            "monitoring.scrapeTimeout must be above zero",
        );
        assert_eq!(
            cel_errors(monitoring(json!({"interval": "1m30s", "scrapeTimeout": "500ms"}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn monitoring_that_would_scrape_a_grpc_port_is_rejected() {
        let grpc_only = spec_with(json!({"monitoring": {}}));
        assert_rejected(cel_errors(grpc_only), "the scraped port speaks grpc");
        let named = spec_with(json!({"monitoring": {"port": "grpc"}}));
        assert_rejected(cel_errors(named), "the scraped port speaks grpc");
        let off = spec_with(json!({"monitoring": {"enabled": false}}));
        assert_eq!(cel_errors(off), Vec::<String>::new());
        let with_http = spec_with(json!({
            "ports": [{"name": "grpc", "port": 1, "protocol": "grpc"}, {"name": "web", "port": 2, "protocol": "http"}],
            "monitoring": {}
        }));
        assert_eq!(cel_errors(with_http), Vec::<String>::new());
    }

    #[test]
    fn mount_paths_that_collide_with_tmp_the_config_or_each_other_are_rejected() {
        let secrets = |paths: &[&str]| {
            let list: Vec<Value> = paths
                .iter()
                .enumerate()
                .map(|(i, p)| json!({"name": format!("s{i}"), "mountPath": p}))
                .collect();
            spec_with(json!({"secrets": list, "config": {"name": "cfg"}}))
        };
        assert_rejected(cel_errors(secrets(&["/tmp/keys"])), "must not be /tmp");
        assert_rejected(cel_errors(secrets(&["/etc/ferry/config/jwt"])), "config mount path");
        assert_rejected(cel_errors(secrets(&["/etc/ferry"])), "config mount path");
        assert_rejected(cel_errors(secrets(&["/etc/jwt/"])), "trailing '/'");
        assert_rejected(cel_errors(secrets(&["/etc/jwt", "/etc/jwt/inner"])), "inside another secret");
        assert_eq!(cel_errors(secrets(&["/etc/jwt", "/etc/jwt-b"])), Vec::<String>::new());
        let config = |path: &str| spec_with(json!({"config": {"name": "cfg", "mountPath": path}}));
        assert_rejected(cel_errors(config("/tmp")), "config.mountPath must not be /tmp");
        assert_rejected(cel_errors(config("/tmp/cfg")), "config.mountPath must not be /tmp");
        assert_rejected(cel_errors(config("/etc/cfg/")), "trailing '/'");
        let items = json!([{"name": "s", "mountPath": "/etc/s", "items": [{"key": "a", "path": "x"}, {"key": "b", "path": "x"}]}]);
        assert_rejected(cel_errors(spec_with(json!({"secrets": items}))), "items[].path must be unique");
    }

    #[test]
    fn contradictory_blue_green_settings_are_rejected() {
        assert_rejected(
            cel_errors(blue_green(json!({"autoPromotionSeconds": 30}))),
            "autoPromotionSeconds applies only with autoPromotionEnabled: false",
        );
        assert_eq!(
            cel_errors(blue_green(json!({"autoPromotionEnabled": false, "autoPromotionSeconds": 30}))),
            Vec::<String>::new()
        );
        let mut over = blue_green(json!({"previewReplicaCount": 5}));
        over["spec"]["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 4});
        assert_rejected(cel_errors(over), "previewReplicaCount must not exceed autoscaling.maxReplicas");
        let rolling_with_bg = spec_with(json!({"strategy": {"type": "RollingUpdate", "blueGreen": {}}}));
        assert_rejected(cel_errors(rolling_with_bg), "blueGreen applies only with type BlueGreen");
        let bg_with_rolling = spec_with(json!({"strategy": {"type": "BlueGreen", "rollingUpdate": {}}}));
        assert_rejected(cel_errors(bg_with_rolling), "rollingUpdate applies only with type RollingUpdate");
    }

    #[test]
    fn meaningless_checks_are_rejected() {
        let pre = |check: Value| blue_green(json!({"prePromotionChecks": [check]}));
        let prom = |range: Value| {
            pre(
                json!({"name": "p", "prometheus": {"address": "http://p", "query": "up", "thresholdRange": range}}),
            )
        };
        assert_rejected(
            cel_errors(prom(json!({"min": 2.0, "max": 1.0}))),
            "thresholdRange.min must not exceed",
        );
        assert_rejected(cel_errors(prom(json!({}))), "thresholdRange needs min or max");
        let hook = |extra: Value| {
            let mut c = json!({"name": "h", "webhook": {"url": "http://h"}});
            for (k, v) in extra.as_object().expect("object") {
                c[k] = v.clone();
            }
            pre(c)
        };
        assert_rejected(
            cel_errors(hook(json!({"count": 3, "failureLimit": 3}))),
            "failureLimit must be less than count",
        );
        assert_rejected(cel_errors(hook(json!({"failureLimit": 1}))), "failureLimit must be less than count");
        assert_eq!(cel_errors(hook(json!({"count": 3, "failureLimit": 2}))), Vec::<String>::new());
        let grpc = |port: Value| pre(json!({"name": "g", "grpcHealth": {"port": port}}));
        assert_rejected(cel_errors(grpc(json!("nope"))), "a grpcHealth check needs a grpc port");
        assert_eq!(cel_errors(grpc(json!("grpc"))), Vec::<String>::new());
        let twice = blue_green(json!({"postPromotionChecks": [
            {"name": "h", "webhook": {"url": "http://h"}}, {"name": "h", "webhook": {"url": "http://i"}}
        ]}));
        assert_rejected(cel_errors(twice), "postPromotionChecks names must be unique");
    }

    #[test]
    fn pod_labels_that_ferry_or_the_deployment_set_are_rejected() {
        for key in ["app.kubernetes.io/name", "app.kubernetes.io/managed-by", "pod-template-hash"] {
            let bad = spec_with(json!({"pod": {"labels": {key: "x"}}}));
            assert_rejected(cel_errors(bad), "nor the labels Ferry and the Deployment set");
        }
    }

    #[test]
    fn a_blue_green_name_whose_preview_service_name_overflows_63_is_rejected() {
        let long = |n: usize| {
            with(blue_green(json!({})), &["metadata", "name"], json!(format!("a{}", "b".repeat(n - 1))))
        };
        assert_rejected(cel_errors(long(56)), "at most 55 characters");
        assert_eq!(cel_errors(long(55)), Vec::<String>::new());
    }

    #[test]
    fn disruption_budgets_and_rolling_update_limits_out_of_range_are_rejected() {
        for bad in [json!("150%"), json!(-1), json!("abc")] {
            let pdb = spec_with(json!({"disruptionBudget": {"minAvailable": bad}}));
            assert_rejected(cel_errors(pdb), "a percentage from 0% to 100%");
        }
        for good in [json!("100%"), json!(0), json!("5%"), json!(3)] {
            let pdb = spec_with(json!({"disruptionBudget": {"maxUnavailable": good}}));
            assert_eq!(cel_errors(pdb), Vec::<String>::new());
        }
        let rolling =
            |ru: Value| spec_with(json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": ru}}));
        assert_rejected(cel_errors(rolling(json!({"maxUnavailable": "120%"}))), "up to 100%");
        assert_rejected(cel_errors(rolling(json!({"maxSurge": 0}))), "cannot both be 0");
        assert_eq!(
            cel_errors(rolling(json!({"maxSurge": "200%", "maxUnavailable": 1}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn quantities_that_do_not_parse_are_negative_or_exceed_the_limit_are_rejected() {
        let resources = |r: Value| spec_with(json!({"resources": r}));
        assert_rejected(cel_errors(resources(json!({"requests": {"cpu": "lots"}}))), "non-negative quantity");
        assert_rejected(
            cel_errors(resources(json!({"limits": {"memory": "-1Gi"}}))),
            "non-negative quantity",
        );
        assert_rejected(
            cel_errors(resources(json!({"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}))),
            "a request must not exceed the limit",
        );
        assert_eq!(
            cel_errors(resources(
                json!({"requests": {"cpu": "0.5", "memory": "64Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}})
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_invalid_autoscaler_behavior_is_rejected() {
        let behavior =
            |b: Value| spec_with(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "behavior": b}}));
        assert_rejected(
            cel_errors(behavior(
                json!({"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}),
            )),
            "autoscaling.behavior.scaleUp",
        );
        assert_rejected(
            cel_errors(behavior(json!({"scaleDown": {"selectPolicy": "Sometimes"}}))),
            "autoscaling.behavior.scaleDown",
        );
        assert_eq!(
            cel_errors(behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 300,
                "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn duplicate_env_names_are_rejected() {
        let bad = spec_with(json!({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}));
        assert_rejected(cel_errors(bad), "env names must be unique");
    }
}
