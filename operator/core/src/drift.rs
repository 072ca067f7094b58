//! Pure: whether a child object observed in the cache still carries what the operator applied.
//!
//! The caches hold children metadata-only (or, for Deployments, without the pod template), so a
//! child's spec cannot be compared with the desired one directly. What the cache does hold is
//! enough:
//! - the spec-hash annotation: the desired child changed since it was applied;
//! - the labels and annotations themselves: one the operator sets was removed or changed;
//! - the operator's own entries in `managedFields` (its applies and scale patches, [`owned_fields`]): when anyone
//!   else changes a field the operator applied (`kubectl edit`, `scale`, `set image`, a forced
//!   apply), or removes it, that field leaves the operator's field set. So "every field of the
//!   desired object is still owned by the operator" means "nobody touched what the operator owns",
//!   whether the edit happened while the operator ran or while it was down.
//!
//! None of this needs memory in the operator: every fact is read from the object.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
};
use kube::Resource;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    desired::spec_hash_of,
    keys::{FIELD_MANAGER, SCALE_FIELD_MANAGER},
};

/// Why a child must be applied again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The child does not carry the spec hash of the desired child.
    SpecChanged,
    /// A label or annotation the operator sets is missing or has another value.
    Metadata(String),
    /// A field the operator applied is no longer owned by it: someone else changed or removed it.
    FieldTaken(String),
}

impl Drift {
    /// Whether applying the desired object again changes the child's spec (so its generation
    /// moves on), as opposed to its labels or annotations only.
    pub fn changes_spec(&self) -> bool {
        match self {
            Self::SpecChanged => true,
            Self::Metadata(_) => false,
            Self::FieldTaken(path) => path.starts_with(".spec"),
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SpecChanged => write!(f, "the desired object changed"),
            Self::Metadata(key) => write!(f, "{key} was changed or removed"),
            Self::FieldTaken(path) => write!(f, "{path} was changed or removed by someone else"),
        }
    }
}

fn map_in_line(
    kind: &str,
    observed: Option<&BTreeMap<String, String>>,
    desired: Option<&BTreeMap<String, String>>,
) -> Result<(), Drift> {
    for (key, value) in desired.into_iter().flatten() {
        if observed.and_then(|o| o.get(key)) != Some(value) {
            return Err(Drift::Metadata(format!("{kind} {key}")));
        }
    }
    Ok(())
}

/// Every label and annotation of `desired` is on `observed` with the same value.
pub fn metadata_in_line(observed: &ObjectMeta, desired: &ObjectMeta) -> Result<(), Drift> {
    map_in_line("label", observed.labels.as_ref(), desired.labels.as_ref())?;
    map_in_line("annotation", observed.annotations.as_ref(), desired.annotations.as_ref())
}

/// Whether a `managedFields` entry is the operator's own write of the object (an apply, or a scale
/// patch; not a write of its status).
pub fn is_own(entry: &ManagedFieldsEntry) -> bool {
    matches!(entry.manager.as_deref(), Some(FIELD_MANAGER | SCALE_FIELD_MANAGER))
        && entry.subresource.as_deref().unwrap_or_default().is_empty()
}

/// Whether a `managedFields` entry is a status write of an operator from before the status got
/// its own field manager ([`crate::keys::STATUS_FIELD_MANAGER`]): the fields it owns stay in
/// status until that manager gives them up.
pub fn is_legacy_status(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.subresource.as_deref() == Some("status")
}

/// Keeps only the operator's own `managedFields` entries, each field set as its JSON text: all a
/// cache needs for [`drift`].
///
/// NB: a parsed `fieldsV1` is a map per field, many times the size of its text (operator/BENCHMARKS.md:
/// the peak RSS at 1,000 apps before and after); [`owned_fields`] parses the text when a reconcile
/// reads it.
pub fn keep_own_fields(meta: &mut ObjectMeta) {
    if let Some(entries) = meta.managed_fields.as_mut() {
        entries.retain(is_own);
        for fields in entries.iter_mut().filter_map(|e| e.fields_v1.as_mut()) {
            if !fields.0.is_string() {
                fields.0 = Value::String(fields.0.to_string());
            }
        }
    }
}

/// The union of the field sets (`fieldsV1`) the operator owns on an object, over its server-side
/// applies and its merge patches. A field set kept as text ([`keep_own_fields`]) is parsed; text
/// that does not parse owns nothing, so the child is applied again.
pub fn owned_fields(meta: &ObjectMeta) -> Value {
    let mut owned = Value::Object(Map::new());
    for entry in meta.managed_fields.iter().flatten().filter(|e| is_own(e)) {
        match entry.fields_v1.as_ref().map(|f| &f.0) {
            Some(Value::String(text)) => {
                if let Ok(fields) = serde_json::from_str::<Value>(text) {
                    merge(&mut owned, &fields);
                }
            }
            Some(fields) => merge(&mut owned, fields),
            None => {}
        }
    }
    owned
}

fn merge(into: &mut Value, from: &Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (k, v) in from {
            merge(into.entry(k.clone()).or_insert(Value::Object(Map::new())), v);
        }
    }
}

/// A `fieldsV1` node with no children: the field is owned as a whole (a scalar, or an atomic list,
/// map or struct), so everything below it is the operator's.
fn owned_whole(node: &Map<String, Value>) -> bool {
    node.is_empty()
}

/// The first path of `desired` whose field the operator does not own in `owned` (a `fieldsV1`
/// tree), or `None` when it owns every one. Empty objects and lists, and nulls, are not checked.
pub fn first_unowned(desired: &Value, owned: &Value) -> Option<String> {
    let (Value::Object(desired), Value::Object(owned)) = (desired, owned) else {
        return None;
    };
    unowned_in_object(desired, owned, "")
}

fn unowned_in_object(desired: &Map<String, Value>, owned: &Map<String, Value>, path: &str) -> Option<String> {
    for (key, value) in desired {
        if is_unchecked(value) {
            continue;
        }
        let here = format!("{path}.{key}");
        let Some(Value::Object(node)) = owned.get(&format!("f:{key}")) else {
            return Some(here);
        };
        if let Some(missing) = unowned_below(value, node, &here) {
            return Some(missing);
        }
    }
    None
}

fn is_unchecked(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn unowned_below(value: &Value, node: &Map<String, Value>, path: &str) -> Option<String> {
    if owned_whole(node) {
        return None;
    }
    match value {
        Value::Object(fields) => unowned_in_object(fields, node, path),
        Value::Array(items) => unowned_in_list(items, node, path),
        _ => None,
    }
}

/// A list the operator owns element by element: each desired element must match an owned key
/// (`k:{...}` for list maps, `v:...` for sets). A list node that has no element left (only `.`)
/// lost all of them.
fn unowned_in_list(items: &[Value], node: &Map<String, Value>, path: &str) -> Option<String> {
    let elements: Vec<(&String, &Value)> = node
        .iter()
        .filter(|(k, _)| k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:"))
        .collect();
    if elements.is_empty() {
        // `.` alone: the list is the operator's, but every element it had is gone.
        return node.contains_key(".").then(|| format!("{path}[*]"));
    }
    for (i, item) in items.iter().enumerate() {
        let found = elements.iter().find(|(k, _)| element_matches(k, item, i)).map(|(_, v)| *v);
        let here = format!("{path}[{i}]");
        match found {
            Some(Value::Object(child)) => {
                if let Some(missing) = unowned_below(item, child, &here) {
                    return Some(missing);
                }
            }
            _ => return Some(here),
        }
    }
    None
}

/// Whether the `fieldsV1` list element key `key` names `item` (at index `index`). Key fields the
/// desired element leaves out (the API server defaults them, e.g. a port's protocol) match anything.
fn element_matches(key: &str, item: &Value, index: usize) -> bool {
    if let Some(keys) = key.strip_prefix("k:") {
        let Ok(Value::Object(keys)) = serde_json::from_str::<Value>(keys) else {
            return false;
        };
        keys.iter().all(|(k, v)| item.get(k).is_none_or(|mine| mine == v))
    } else if let Some(value) = key.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|v| &v == item)
    } else if let Some(i) = key.strip_prefix("i:") {
        i.parse::<usize>() == Ok(index)
    } else {
        false
    }
}

/// The part of a desired child the operator applies: labels, annotations and owner references of
/// its metadata, and everything but `apiVersion`, `kind`, `metadata` and `status` at the top.
fn applied_part<K: Serialize>(desired: &K) -> Value {
    let Ok(Value::Object(mut top)) = serde_json::to_value(desired) else {
        return Value::Null;
    };
    let metadata = top.remove("metadata").unwrap_or(Value::Null);
    for k in ["apiVersion", "kind", "status"] {
        top.remove(k);
    }
    let mut meta = Map::new();
    for k in ["labels", "annotations", "ownerReferences"] {
        if let Some(v) = metadata.get(k) {
            meta.insert(k.into(), v.clone());
        }
    }
    top.insert("metadata".into(), Value::Object(meta));
    Value::Object(top)
}

/// Whether every field of `desired` is still owned by the operator on `observed`.
pub fn fields_in_line<K: Serialize>(observed: &ObjectMeta, desired: &K) -> Result<(), Drift> {
    match first_unowned(&applied_part(desired), &owned_fields(observed)) {
        Some(path) => Err(Drift::FieldTaken(path)),
        None => Ok(()),
    }
}

/// Whether the cached child `observed` must be applied again to match `desired`, and why: another
/// spec hash, a changed or removed label or annotation, or a field someone else changed or removed.
pub fn drift<O: Resource, K: Resource + Serialize>(observed: &O, desired: &K) -> Option<Drift> {
    if spec_hash_of(observed) != spec_hash_of(desired) {
        return Some(Drift::SpecChanged);
    }
    metadata_in_line(observed.meta(), desired.meta())
        .and_then(|()| fields_in_line(observed.meta(), desired))
        .err()
}

/// Why a cached Deployment (pod template stripped) must be applied again, if it must: [`drift`],
/// plus another replica count.
pub fn deployment_drift(observed: &Deployment, desired: &Deployment) -> Option<Drift> {
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    drift(observed, desired).or_else(|| {
        (replicas(observed) != replicas(desired)).then(|| Drift::FieldTaken(".spec.replicas".into()))
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::FieldsV1};
    use serde_json::json;

    use super::*;

    /// The `fieldsV1` the API server records for an apply of [`desired_service`].
    fn applied_fields() -> Value {
        json!({
            "f:metadata": {
                "f:annotations": {"f:ferry.dev/spec-hash": {}},
                "f:labels": {"f:app": {}},
                "f:ownerReferences": {"k:{\"uid\":\"u-1\"}": {}}
            },
            "f:spec": {
                "f:ports": {
                    "k:{\"port\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}
                    }
                },
                "f:selector": {},
                "f:type": {}
            }
        })
    }

    fn desired_service() -> Service {
        serde_json::from_value(json!({
            "metadata": {
                "name": "order",
                "labels": {"app": "order"},
                "annotations": {"ferry.dev/spec-hash": "abc"},
                "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "MicroService",
                                     "name": "order", "uid": "u-1", "controller": true}]
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "order"},
                "ports": [{"name": "grpc", "port": 80, "targetPort": "grpc"}]
            }
        }))
        .expect("service")
    }

    fn observed(entries: Vec<(&str, Option<&str>, Value)>) -> Service {
        let mut svc = desired_service();
        svc.metadata.managed_fields = Some(
            entries
                .into_iter()
                .map(|(manager, subresource, fields)| ManagedFieldsEntry {
                    manager: Some(manager.into()),
                    operation: Some("Apply".into()),
                    subresource: subresource.map(Into::into),
                    fields_v1: Some(FieldsV1(fields)),
                    ..ManagedFieldsEntry::default()
                })
                .collect(),
        );
        svc
    }

    #[test]
    fn an_object_exactly_as_applied_has_no_drift() {
        let svc = observed(vec![(FIELD_MANAGER, None, applied_fields())]);
        assert_eq!(drift(&svc, &desired_service()), None);
    }

    #[test]
    fn a_field_someone_else_took_over_is_drift_naming_its_path() {
        let mut fields = applied_fields();
        fields["f:spec"].as_object_mut().expect("spec").remove("f:selector");
        let svc = observed(vec![
            (FIELD_MANAGER, None, fields),
            ("kubectl-edit", None, json!({"f:spec": {"f:selector": {}}})),
        ]);
        assert_eq!(drift(&svc, &desired_service()), Some(Drift::FieldTaken(".spec.selector".into())));
    }

    #[test]
    fn a_removed_list_element_is_drift() {
        let mut fields = applied_fields();
        fields["f:spec"]["f:ports"] = json!({".": {}});
        let svc = observed(vec![(FIELD_MANAGER, None, fields)]);
        assert_eq!(drift(&svc, &desired_service()), Some(Drift::FieldTaken(".spec.ports[*]".into())));
    }

    #[test]
    fn a_list_element_that_lost_a_field_is_drift() {
        let mut fields = applied_fields();
        fields["f:spec"]["f:ports"]["k:{\"port\":80,\"protocol\":\"TCP\"}"]
            .as_object_mut()
            .expect("port")
            .remove("f:targetPort");
        let svc = observed(vec![(FIELD_MANAGER, None, fields)]);
        assert_eq!(
            drift(&svc, &desired_service()),
            Some(Drift::FieldTaken(".spec.ports[0].targetPort".into()))
        );
    }

    #[test]
    fn fields_owned_through_a_merge_patch_of_the_operator_count_and_status_writes_do_not() {
        let mut fields = applied_fields();
        fields["f:spec"].as_object_mut().expect("spec").remove("f:type");
        let own_patch = observed(vec![
            (FIELD_MANAGER, None, fields.clone()),
            (FIELD_MANAGER, None, json!({"f:spec": {"f:type": {}}})),
        ]);
        assert_eq!(drift(&own_patch, &desired_service()), None);
        let own_status = observed(vec![
            (FIELD_MANAGER, None, fields),
            (FIELD_MANAGER, Some("status"), json!({"f:spec": {"f:type": {}}})),
        ]);
        assert!(drift(&own_status, &desired_service()).is_some());
    }

    #[test]
    fn an_object_the_operator_owns_nothing_of_has_drift() {
        assert!(drift(&observed(vec![]), &desired_service()).is_some());
    }

    #[test]
    fn a_removed_annotation_and_another_spec_hash_are_drift() {
        let mut svc = observed(vec![(FIELD_MANAGER, None, applied_fields())]);
        svc.metadata.labels = None;
        assert_eq!(drift(&svc, &desired_service()), Some(Drift::Metadata("label app".into())));
        let mut want = desired_service();
        want.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(crate::keys::SPEC_HASH_ANNOTATION.into(), "def".into());
        assert_eq!(drift(&observed(vec![]), &want), Some(Drift::SpecChanged));
    }

    #[test]
    fn atomic_fields_and_defaulted_key_fields_are_owned_as_written() {
        // A set list (`v:`) and an atomic list (a leaf).
        let desired = json!({"spec": {"finalizers": ["a"], "args": ["x", "y"]}});
        let owned = json!({"f:spec": {"f:finalizers": {".": {}, "v:\"a\"": {}}, "f:args": {}}});
        assert_eq!(first_unowned(&desired, &owned), None);
        let owned = json!({"f:spec": {"f:finalizers": {".": {}, "v:\"b\"": {}}, "f:args": {}}});
        assert_eq!(first_unowned(&desired, &owned), Some(".spec.finalizers[0]".into()));
    }

    #[test]
    fn a_field_the_operators_scale_patch_took_over_is_still_the_operators() {
        let mut applied = applied_fields();
        let ports =
            (applied["f:spec"].as_object_mut()).and_then(|spec| spec.remove("f:ports")).expect("ports");
        let svc = observed(vec![
            (FIELD_MANAGER, None, applied),
            (SCALE_FIELD_MANAGER, None, json!({"f:spec": {"f:ports": ports}})),
        ]);
        assert_eq!(drift(&svc, &desired_service()), None);
        let mut svc = svc;
        keep_own_fields(&mut svc.metadata);
        assert_eq!(svc.metadata.managed_fields.map(|m| m.len()), Some(2));
    }

    #[test]
    fn the_cache_keeps_only_the_operators_own_entries() {
        let mut svc = observed(vec![
            (FIELD_MANAGER, None, applied_fields()),
            ("kube-controller-manager", None, json!({})),
            (FIELD_MANAGER, Some("status"), json!({})),
        ]);
        keep_own_fields(&mut svc.metadata);
        assert_eq!(svc.metadata.managed_fields.map(|m| m.len()), Some(1));
    }

    #[test]
    fn the_cache_keeps_field_sets_as_text_and_drift_reads_them_the_same() {
        let mut fields = applied_fields();
        fields["f:spec"].as_object_mut().expect("spec").remove("f:selector");
        for (fields, expected) in
            [(applied_fields(), None), (fields, Some(Drift::FieldTaken(".spec.selector".into())))]
        {
            let mut svc = observed(vec![(FIELD_MANAGER, None, fields)]);
            let parsed = owned_fields(&svc.metadata);
            keep_own_fields(&mut svc.metadata);
            let kept = &svc.metadata.managed_fields.as_ref().expect("entries")[0];
            assert!(kept.fields_v1.as_ref().is_some_and(|f| f.0.is_string()), "kept as text");
            assert_eq!(owned_fields(&svc.metadata), parsed);
            assert_eq!(drift(&svc, &desired_service()), expected);
        }
    }

    #[test]
    fn a_field_set_whose_text_does_not_parse_owns_nothing() {
        let svc = observed(vec![(FIELD_MANAGER, None, Value::String("{not json".into()))]);
        assert_eq!(owned_fields(&svc.metadata), json!({}));
        assert!(matches!(drift(&svc, &desired_service()), Some(Drift::FieldTaken(_))));
    }
}
