//! Labels on children and pods.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::{
    crd::MicroService,
    keys::{MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, SELECTOR_LABEL},
};

/// Labels that select this MicroService's pods (Deployment selector, Service selector, PDB, HPA).
pub fn selector_labels(ms: &MicroService) -> BTreeMap<String, String> {
    BTreeMap::from([(SELECTOR_LABEL.to_string(), ms.name_any())])
}

/// The selector in string form, as `status.selector` and the scale subresource expect it.
pub fn selector_string(ms: &MicroService) -> String {
    selector_labels(ms).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Labels on every child object.
pub fn common_labels(ms: &MicroService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(ms);
    labels.insert(NAME_LABEL.into(), ms.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// Labels on the pods: the user's `pod.labels`, then the common labels (which win).
pub fn pod_labels(ms: &MicroService) -> BTreeMap<String, String> {
    let mut labels = ms.spec.pod.as_ref().and_then(|p| p.labels.clone()).unwrap_or_default();
    labels.extend(common_labels(ms));
    labels
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn the_selector_is_the_microservice_name_under_a_reserved_key() {
        assert_eq!(selector_string(&order()), "ferry.dev/microservice=order");
    }

    #[test]
    fn children_carry_name_managed_by_and_selector_labels() {
        let labels = common_labels(&order());
        assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("order"));
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("ferry-operator"));
        assert_eq!(labels.get("ferry.dev/microservice").map(String::as_str), Some("order"));
    }

    #[test]
    fn user_pod_labels_are_kept_but_cannot_override_the_managed_labels() {
        let ms = from(json!({"pod": {"labels": {"team": "shop", "app.kubernetes.io/name": "other"}}}));
        let labels = pod_labels(&ms);
        assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
        assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("order"));
    }
}
