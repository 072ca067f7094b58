//! Argo Rollouts, the comparison of issue 21 item 6, shared by `make bench-operator` and
//! `make bench-rollout`: its controller as a process, and the objects an Argo user writes
//! for one blue-green application.
//!
//! The controller is built from the Go module proxy by tests/e2e/argo-rollouts/build.sh
//! (path in `ARGO_ROLLOUTS_BIN`) and runs namespaced to one namespace, without leader
//! election.

use std::process::Stdio;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

/// The label Argo puts on a Rollout's ReplicaSets and pods, and into its Services' selectors.
pub const POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";

/// The `argoproj.io/v1alpha1` Rollout.
pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// The controller's binary, when the Makefile built it (`ARGO_ROLLOUTS_BIN`; empty with `ARGO=0`).
pub fn binary() -> Option<String> {
    std::env::var("ARGO_ROLLOUTS_BIN").ok().filter(|b| !b.is_empty())
}

/// Starts rollouts-controller for `ns`, its metrics on `port` and health on `port + 100`; killed
/// when dropped. Its log goes to `target/bench/NS-rollouts-controller.log`. `ARGO_ROLLOUTS_QPS`
/// sets its client limit (`--qps`, burst twice that; its own default is 40, burst 80), to match a
/// cluster whose kube-controller-manager runs with a raised limit (`KCM_API_QPS`).
pub fn start_controller(bin: &str, ns: &str, port: u16) -> tokio::process::Child {
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir).expect("target/bench");
    let log = std::fs::File::create(dir.join(format!("{ns}-rollouts-controller.log"))).expect("log file");
    let mut command = tokio::process::Command::new(bin);
    if let Ok(kubeconfig) = std::env::var("KUBECONFIG") {
        command.args(["--kubeconfig", &kubeconfig]);
    }
    if let Ok(qps) = std::env::var("ARGO_ROLLOUTS_QPS") {
        let qps: u32 = qps.parse().unwrap_or_else(|_| panic!("ARGO_ROLLOUTS_QPS={qps}: not a whole number"));
        command.args(["--qps", &qps.to_string(), "--burst", &qps.saturating_mul(2).to_string()]);
    }
    command
        .args(["--namespace", ns, "--namespaced", "--leader-elect=false", "--loglevel", "warn"])
        .args(["--metricsPort", &port.to_string(), "--healthzPort", &(port + 100).to_string()])
        // Where it looks for its notification ConfigMap; none exists, as in a plain install.
        .env("POD_NAMESPACE", ns)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log handle")))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// The name of an application's preview Service.
pub fn preview_name(name: &str) -> String {
    format!("{name}-preview")
}

/// One blue-green application as an Argo user writes it, in creation order: the active Service
/// `name` and the preview Service `name-preview` (both with `service`, a body such as
/// `{"spec": {"selector": ..., "ports": ...}}`), then the Rollout: `replicas` pods of `template`,
/// selected by `app.kubernetes.io/name: name`, strategy `blueGreen` with both Services,
/// `autoPromotionEnabled: true`, and the fields of `blue_green` (an object) added.
pub fn blue_green_app(
    name: &str,
    replicas: i64,
    template: Value,
    service: Value,
    blue_green: Value,
) -> Vec<(ApiResource, DynamicObject)> {
    let services = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services");
    let preview = preview_name(name);
    let mut strategy =
        json!({"activeService": name, "previewService": preview, "autoPromotionEnabled": true});
    if let (Some(s), Some(extra)) = (strategy.as_object_mut(), blue_green.as_object()) {
        s.extend(extra.clone());
    }
    let rollout = json!({"spec": {
        "replicas": replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": template,
        "strategy": {"blueGreen": strategy}
    }});
    [
        (services.clone(), name.to_string(), service.clone()),
        (services, preview, service),
        (rollout_resource(), name.to_string(), rollout),
    ]
    .into_iter()
    .map(|(ar, object_name, data)| {
        let obj = DynamicObject::new(&object_name, &ar).data(data);
        (ar, obj)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blue_green_app_is_two_services_then_a_rollout_naming_them() {
        let objects = blue_green_app(
            "web",
            2,
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "web"}}}),
            json!({"spec": {"selector": {"app.kubernetes.io/name": "web"}}}),
            json!({"scaleDownDelaySeconds": 0}),
        );
        let kinds: Vec<_> =
            objects.iter().map(|(ar, o)| (ar.kind.as_str(), o.metadata.name.clone())).collect();
        assert_eq!(
            kinds,
            [
                ("Service", Some("web".into())),
                ("Service", Some("web-preview".into())),
                ("Rollout", Some("web".into()))
            ]
        );
        let strategy = &objects[2].1.data["spec"]["strategy"]["blueGreen"];
        assert_eq!(
            strategy,
            &json!({"activeService": "web", "previewService": "web-preview", "autoPromotionEnabled": true,
                    "scaleDownDelaySeconds": 0})
        );
        assert_eq!(objects[2].1.data["spec"]["replicas"], 2);
    }
}
