//! MicroServices as a user writes them: JSON, through the dynamic API, so the
//! tests exercise the CRD's schema exactly as `kubectl apply` would.

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{DEFAULT_TIMEOUT, TestContext, wait_until};

/// `ferry.dev/v1alpha1` `MicroService`.
pub fn microservice_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ferry.dev", "v1alpha1", "MicroService"),
        "microservices",
    )
}

impl TestContext {
    /// The MicroServices of the test's namespace.
    pub fn microservices(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &microservice_resource())
    }

    /// Creates a MicroService with `spec`.
    pub async fn create_microservice(&self, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
        let object = DynamicObject::new(name, &microservice_resource()).data(json!({ "spec": spec }));
        self.microservices().create(&PostParams::default(), &object).await
    }

    /// Merge-patches a MicroService's spec, as `kubectl patch --type merge` would.
    pub async fn patch_microservice(&self, name: &str, spec_patch: Value) -> DynamicObject {
        self.microservices()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec_patch })))
            .await
            .unwrap_or_else(|e| panic!("patch msvc/{name}: {e}"))
    }

    /// Waits until `msvc/name` has condition `type_` with `status`, for the
    /// current generation, and returns the object.
    pub async fn wait_for_condition(&self, name: &str, type_: &str, status: &str) -> DynamicObject {
        let api = self.microservices();
        wait_until(
            &format!("msvc/{name} {type_}={status} at the current generation"),
            DEFAULT_TIMEOUT,
            || async {
                let ms = api.get(name).await.ok()?;
                let current = ms.metadata.generation? == ms.data["status"]["observedGeneration"].as_i64()?;
                (current && condition_status(&ms, type_).as_deref() == Some(status)).then_some(ms)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The status of condition `type_`, if present.
pub fn condition_status(ms: &DynamicObject, type_: &str) -> Option<String> {
    condition(ms, type_).and_then(|c| c["status"].as_str().map(str::to_string))
}

/// Condition `type_` as JSON, if present.
pub fn condition<'a>(ms: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    ms.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}
