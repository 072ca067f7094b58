//! The PodDisruptionBudget (policy/v1).

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{child_meta, labels};
use crate::crd::MicroService;

/// Builds the disruption budget, when `spec.disruptionBudget` is set.
pub fn disruption_budget(ms: &MicroService) -> Option<PodDisruptionBudget> {
    let budget = ms.spec.disruption_budget.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: child_meta(ms),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector_labels(ms)),
                ..LabelSelector::default()
            }),
            min_available: budget.min_available.clone(),
            max_unavailable: budget.max_unavailable.clone(),
            // NB: lets a drain evict pods that are not ready anyway (a crash-looping pod must not
            // block node maintenance).
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn the_budget_selects_the_pods_and_keeps_the_chosen_bound() {
        let ms = from(json!({"disruptionBudget": {"minAvailable": "50%"}}));
        let spec = disruption_budget(&ms).expect("pdb").spec.expect("spec");
        assert_eq!(spec.selector.expect("selector").match_labels, Some(labels::selector_labels(&ms)));
        assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));
        assert_eq!(spec.max_unavailable, None);
        assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
    }

    #[test]
    fn a_max_unavailable_budget_is_built_as_given() {
        let ms = from(json!({"disruptionBudget": {"maxUnavailable": 1}}));
        let spec = disruption_budget(&ms).expect("pdb").spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn no_budget_in_the_spec_means_no_budget() {
        assert!(disruption_budget(&order()).is_none());
    }
}
