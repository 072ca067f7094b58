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

use crate::crd::MicroService;

/// Why a spec cannot be reconciled; becomes the `InvalidSpec` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// CamelCase reason for the condition.
    pub reason: &'static str,
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
        tolerations: parse_list(
            "spec.pod.tolerations",
            pod.and_then(|p| p.tolerations.as_deref()),
        )?,
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
                reason: "InvalidEnvFrom",
                message: format!(
                    "spec.envFrom[{i}] needs exactly one of configMapRef or secretRef"
                ),
            });
        }
    }
    Ok(extras)
}

fn parse_list<T: DeserializeOwned>(
    field: &str,
    values: Option<&[Value]>,
) -> Result<Vec<T>, SpecError> {
    values
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| parse_one(&format!("{field}[{i}]"), v))
        .collect()
}

fn parse_one<T: DeserializeOwned>(field: &str, value: &Value) -> Result<T, SpecError> {
    serde_json::from_value(value.clone()).map_err(|err| SpecError {
        reason: "InvalidPassThroughField",
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
        assert!(
            rewritten > 0,
            "the optionalOldSelf rules were found and rewritten"
        );
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
            cursor = cursor
                .as_object_mut()
                .expect("object")
                .entry(*key)
                .or_insert(json!({}));
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
                "image": "ghcr.io/acme/order@sha256:abc",
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
        let bad = with(
            base(),
            &["spec", "autoscaling"],
            json!({"minReplicas": 5, "maxReplicas": 2}),
        );
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
        let bad = with(
            base(),
            &["spec", "ports"],
            json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
        );
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
        let bad = with(
            base(),
            &["spec", "monitoring"],
            json!({"interval": "10s", "scrapeTimeout": "15s"}),
        );
        assert_rejected(cel_errors(bad), "scrapeTimeout must not exceed");
    }

    #[test]
    fn a_scrape_timeout_longer_than_the_default_interval_is_rejected() {
        let bad = with(
            base(),
            &["spec", "monitoring"],
            json!({"scrapeTimeout": "1m"}),
        );
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
        let old = with(
            with(base(), &["spec", "replicas"], json!(3)),
            &["status"],
            json!({"phase": "Healthy"}),
        );
        let new = with(
            old.clone(),
            &["spec", "autoscaling"],
            json!({"minReplicas": 1, "maxReplicas": 3}),
        );
        assert_rejected(cel_update_errors(new, old), "mutually exclusive");
    }

    #[test]
    fn the_autoscaler_may_write_replicas_once_autoscaling_is_on() {
        // NB: no status: the operator seeds spec.replicas before it first writes one.
        let old = with(
            base(),
            &["spec", "autoscaling"],
            json!({"minReplicas": 1, "maxReplicas": 3}),
        );
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
        assert_rejected(
            cel_errors(bad),
            "monitoring.port must name one of spec.ports",
        );
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

    #[test]
    fn a_disruption_budget_with_both_fields_is_rejected() {
        let bad = with(
            base(),
            &["spec", "disruptionBudget"],
            json!({"minAvailable": 1, "maxUnavailable": 1}),
        );
        assert_rejected(
            cel_errors(bad),
            "exactly one of minAvailable or maxUnavailable",
        );
    }

    #[test]
    fn an_empty_disruption_budget_is_rejected() {
        let bad = with(base(), &["spec", "disruptionBudget"], json!({}));
        assert_rejected(
            cel_errors(bad),
            "exactly one of minAvailable or maxUnavailable",
        );
    }

    #[test]
    fn duplicate_dependencies_are_rejected() {
        let bad = with(
            base(),
            &["spec", "dependsOn"],
            json!([{"name": "a"}, {"name": "a"}]),
        );
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
        let bad = with(
            base(),
            &["spec", "pod"],
            json!({"labels": {"ferry.dev/microservice": "x"}}),
        );
        assert_rejected(cel_errors(bad), "reserved ferry.dev/ prefix");
    }

    #[test]
    fn valid_pass_through_fields_are_parsed_into_kubernetes_types() {
        let value = with(
            with(
                base(),
                &["spec", "envFrom"],
                json!([{"configMapRef": {"name": "cm"}}]),
            ),
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
        let value = with(
            base(),
            &["spec", "pod"],
            json!({"tolerations": [{"tolerationSeconds": "soon"}]}),
        );
        let err = check(&ms(value)).expect_err("invalid");
        assert_eq!(err.reason, "InvalidPassThroughField");
        assert!(
            err.message.contains("spec.pod.tolerations[0]"),
            "{}",
            err.message
        );
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
}
