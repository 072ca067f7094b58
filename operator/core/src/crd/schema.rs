//! Hand-written schema fragments for fields that pass through to the pod unvalidated.
//!
//! Embedding the full Kubernetes schemas for `Affinity` or `Toleration` would add tens of kilobytes
//! to the CRD for fields the apiserver validates again when the Deployment is written, so they are
//! declared as `x-kubernetes-preserve-unknown-fields` and parsed at reconcile time.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object whose fields are kept as written.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A bounded list of objects whose fields are kept as written.
pub fn preserve_unknown_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// `spec.env`: the Kubernetes `EnvVar` list, at most 128 entries with names of at most 256
/// characters, so the CEL rule that names are unique has a bounded cost.
pub fn env_list(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<k8s_openapi::api::core::v1::EnvVar>>();
    schema.insert("maxItems".into(), 128.into());
    if let Some(name) = schema.pointer_mut("/items/properties/name").and_then(|n| n.as_object_mut()) {
        name.insert("maxLength".into(), 256.into());
    }
    schema
}

/// `spec.resources`: the Kubernetes `ResourceRequirements`, with at most 16 requests and 16 limits
/// of at most 64 characters each, so the CEL rules on quantities have a bounded cost.
pub fn resources(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<k8s_openapi::api::core::v1::ResourceRequirements>();
    for map in ["requests", "limits"] {
        if let Some(m) = schema.pointer_mut(&format!("/properties/{map}")).and_then(|m| m.as_object_mut()) {
            m.insert("maxProperties".into(), 16.into());
            if let Some(v) = m.get_mut("additionalProperties").and_then(|v| v.as_object_mut()) {
                v.insert("maxLength".into(), 64.into());
            }
        }
    }
    schema
}
