//! `dependsOn`: resolving dependencies to addresses and deciding whether the gate is open.

use k8s_openapi::api::core::v1::EnvVar;
use kube::ResourceExt;

use crate::crd::{MicroService, condition_type};

/// A dependency whose address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDependency {
    /// The dependency's MicroService name.
    pub name: String,
    /// The environment variable to inject.
    pub env: String,
    /// `<name>.<namespace>.svc:<port>`.
    pub address: String,
    /// Whether the dependency is Available.
    pub available: bool,
}

/// The state of every dependency of one MicroService.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyState {
    /// Dependencies that exist and whose port resolved.
    pub resolved: Vec<ResolvedDependency>,
    /// Names of dependencies that do not exist.
    pub missing: Vec<String>,
    /// `name: why` for dependencies whose requested port does not exist.
    pub unresolvable: Vec<String>,
    /// A `dependsOn` cycle through this MicroService (`a → b → a`), which can never open.
    pub cycle: Option<Vec<String>>,
}

impl DependencyState {
    /// Whether the gate is open: every dependency exists, resolved, and is Available.
    pub fn ready(&self) -> bool {
        self.missing.is_empty()
            && self.unresolvable.is_empty()
            && self.cycle.is_none()
            && self.resolved.iter().all(|d| d.available)
    }

    /// Names of existing dependencies that are not Available.
    pub fn unavailable(&self) -> Vec<&str> {
        self.resolved.iter().filter(|d| !d.available).map(|d| d.name.as_str()).collect()
    }

    /// A one-line summary for the `DependenciesReady` condition.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cycle) = &self.cycle {
            parts.push(format!("dependency cycle: {} (remove one dependsOn entry)", cycle.join(" → ")));
        }
        if !self.missing.is_empty() {
            parts.push(format!("not found: {}", self.missing.join(", ")));
        }
        if !self.unresolvable.is_empty() {
            parts.push(format!("unresolvable: {}", self.unresolvable.join("; ")));
        }
        let unavailable = self.unavailable();
        if !unavailable.is_empty() {
            parts.push(format!("not Available: {}", unavailable.join(", ")));
        }
        if parts.is_empty() {
            if self.resolved.is_empty() {
                "no dependencies".into()
            } else {
                "all dependencies are Available".into()
            }
        } else {
            parts.join("; ")
        }
    }
}

/// The first `dependsOn` cycle that leads back to `start`, as the names along it (`start` first and
/// last). `depends_on` gives the dependency names of a MicroService in the same namespace (`None` for
/// one that does not exist). Without this, every member of a cycle would wait for the others forever
/// with a message that only says "not Available".
pub fn cycle_through(start: &str, depends_on: impl Fn(&str) -> Option<Vec<String>>) -> Option<Vec<String>> {
    fn walk(
        node: &str,
        start: &str,
        depends_on: &dyn Fn(&str) -> Option<Vec<String>>,
        path: &mut Vec<String>,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> bool {
        for next in depends_on(node).unwrap_or_default() {
            if next == start {
                path.push(next);
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(&next, start, depends_on, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = std::collections::BTreeSet::from([start.to_string()]);
    walk(start, start, &depends_on, &mut path, &mut seen).then_some(path)
}

/// The default variable name for a dependency: `inventory-api` → `INVENTORY_API_ADDR`.
pub fn default_env_name(dependency: &str) -> String {
    format!("{}_ADDR", dependency.to_ascii_uppercase().replace(['-', '.'], "_"))
}

/// Resolves every `dependsOn` entry using `lookup` (name → MicroService in the same namespace).
pub fn resolve<'a>(ms: &MicroService, lookup: impl Fn(&str) -> Option<&'a MicroService>) -> DependencyState {
    let namespace = ms.namespace().unwrap_or_default();
    let mut state = DependencyState::default();
    for dep in ms.spec.depends_on.iter().flatten() {
        let Some(target) = lookup(&dep.name) else {
            state.missing.push(dep.name.clone());
            continue;
        };
        let port = match &dep.port {
            Some(name) => target.spec.ports.iter().find(|p| &p.name == name),
            None => target.spec.ports.first(),
        };
        let Some(port) = port else {
            state.unresolvable.push(format!(
                "{} has no port named {}",
                dep.name,
                dep.port.as_deref().unwrap_or("(any)")
            ));
            continue;
        };
        let available = target.status.as_ref().is_some_and(|s| s.is_true(condition_type::AVAILABLE));
        state.resolved.push(ResolvedDependency {
            name: dep.name.clone(),
            env: dep.env.clone().unwrap_or_else(|| default_env_name(&dep.name)),
            address: format!("{}.{}.svc:{}", dep.name, namespace, port.service_port()),
            available,
        });
    }
    state
}

/// The environment variables injected for dependencies. A variable the user already sets in
/// `spec.env` is not injected (the user's value wins).
pub fn dependency_env(ms: &MicroService, resolved: &[ResolvedDependency]) -> Vec<EnvVar> {
    let user_env = ms.spec.env.as_deref().unwrap_or_default();
    resolved
        .iter()
        .filter(|d| !user_env.iter().any(|e| e.name == d.env))
        .map(|d| EnvVar { name: d.env.clone(), value: Some(d.address.clone()), ..EnvVar::default() })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    use super::*;
    use crate::{crd::MicroServiceStatus, desired::fixtures::*};

    fn service(name: &str, available: bool) -> MicroService {
        let mut ms = from(json!({"ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc", "servicePort": 9000},
            {"name": "metrics", "port": 9090}
        ]}));
        ms.metadata.name = Some(name.into());
        ms.status = Some(MicroServiceStatus {
            conditions: vec![Condition {
                type_: "Available".into(),
                status: if available { "True" } else { "False" }.into(),
                reason: "Test".into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..MicroServiceStatus::default()
        });
        ms
    }

    fn world(services: &[MicroService]) -> BTreeMap<String, MicroService> {
        services.iter().map(|s| (s.name_any(), s.clone())).collect()
    }

    #[test]
    fn an_available_dependency_opens_the_gate_and_yields_its_service_address() {
        let ms = from(json!({"dependsOn": [{"name": "inventory"}]}));
        let w = world(&[service("inventory", true)]);
        let state = resolve(&ms, |n| w.get(n));
        assert!(state.ready());
        assert_eq!(state.resolved[0].env, "INVENTORY_ADDR");
        assert_eq!(state.resolved[0].address, "inventory.shop.svc:9000");
    }

    #[test]
    fn a_dependency_that_is_not_available_closes_the_gate() {
        let ms = from(json!({"dependsOn": [{"name": "inventory"}]}));
        let w = world(&[service("inventory", false)]);
        let state = resolve(&ms, |n| w.get(n));
        assert!(!state.ready());
        assert_eq!(state.summary(), "not Available: inventory");
    }

    #[test]
    fn a_missing_dependency_closes_the_gate_and_is_named() {
        let ms = from(json!({"dependsOn": [{"name": "inventory"}]}));
        let state = resolve(&ms, |_| None);
        assert!(!state.ready());
        assert_eq!(state.summary(), "not found: inventory");
    }

    #[test]
    fn a_named_port_selects_the_address_port_and_a_custom_env_name_is_used() {
        let ms = from(json!({"dependsOn": [{"name": "inventory", "port": "metrics", "env": "INV_METRICS"}]}));
        let w = world(&[service("inventory", true)]);
        let state = resolve(&ms, |n| w.get(n));
        assert_eq!(state.resolved[0].env, "INV_METRICS");
        assert_eq!(state.resolved[0].address, "inventory.shop.svc:9090");
    }

    #[test]
    fn a_port_the_dependency_does_not_have_is_unresolvable() {
        let ms = from(json!({"dependsOn": [{"name": "inventory", "port": "nope"}]}));
        let w = world(&[service("inventory", true)]);
        let state = resolve(&ms, |n| w.get(n));
        assert!(!state.ready());
        assert!(state.summary().contains("inventory has no port named nope"));
    }

    #[test]
    fn env_names_are_upper_cased_with_dashes_as_underscores() {
        assert_eq!(default_env_name("inventory-api"), "INVENTORY_API_ADDR");
    }

    #[test]
    fn injected_env_never_overrides_a_user_variable() {
        let ms = from(json!({
            "dependsOn": [{"name": "inventory"}, {"name": "payments"}],
            "env": [{"name": "INVENTORY_ADDR", "value": "localhost:1"}]
        }));
        let w = world(&[service("inventory", true), service("payments", true)]);
        let env = dependency_env(&ms, &resolve(&ms, |n| w.get(n)).resolved);
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "PAYMENTS_ADDR");
        assert_eq!(env[0].value.as_deref(), Some("payments.shop.svc:9000"));
    }

    fn graph(edges: &[(&str, &[&str])]) -> impl Fn(&str) -> Option<Vec<String>> {
        let map: BTreeMap<String, Vec<String>> = edges
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect();
        move |n| map.get(n).cloned()
    }

    #[test]
    fn a_two_service_cycle_is_found_and_named_in_order() {
        let deps = graph(&[("order", &["inventory"]), ("inventory", &["order"])]);
        assert_eq!(
            cycle_through("order", deps),
            Some(vec!["order".into(), "inventory".into(), "order".into()])
        );
    }

    #[test]
    fn a_longer_cycle_behind_a_harmless_branch_is_found() {
        let deps = graph(&[("a", &["leaf", "b"]), ("leaf", &[]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(cycle_through("a", deps), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    }

    #[test]
    fn a_diamond_without_a_cycle_is_not_a_cycle() {
        let deps = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])]);
        assert_eq!(cycle_through("a", deps), None);
    }

    #[test]
    fn a_cycle_that_does_not_pass_through_the_service_is_not_its_cycle() {
        // `a` waits on `b`, which is stuck in its own cycle with `c`: `a` reports `b` not Available.
        let deps = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])]);
        assert_eq!(cycle_through("a", deps), None);
    }

    #[test]
    fn a_cycle_closes_the_gate_and_the_summary_names_it() {
        let state = DependencyState {
            cycle: Some(vec!["order".into(), "inventory".into(), "order".into()]),
            ..DependencyState::default()
        };
        assert!(!state.ready());
        assert!(
            state.summary().contains("dependency cycle: order → inventory → order"),
            "{}",
            state.summary()
        );
    }

    #[test]
    fn no_dependencies_means_the_gate_is_open() {
        let state = resolve(&order(), |_| None);
        assert!(state.ready());
        assert_eq!(state.summary(), "no dependencies");
    }
}
