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
