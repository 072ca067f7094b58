//! `spec.secrets` → read-only Secret volumes, admitted under the restricted Pod
//! Security level; invalid mounts are refused by the CRD's rules.

use ferry_e2e::{OperatorProcess, PAUSE_IMAGE, TestContext, in_namespace};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn secrets_are_mounted_read_only_and_the_pods_are_admitted_under_restricted() {
    in_namespace("msvc-secrets", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let mut spec = ctx.nodes.workload();
        spec["replicas"] = json!(2);
        spec["secrets"] = json!([{"name": "jwt", "mountPath": "/etc/ferry/jwt", "optional": true,
                                  "items": [{"key": "jwt.key", "path": "jwt.key"}]}]);
        spec["pod"] = json!({"runAsUser": 65532, "fsGroup": 65532});
        ctx.create_microservice("orders", spec).await.expect("create msvc");
        ctx.wait_for_condition("orders", "Available", "True").await;

        let deployments: Api<Deployment> = ctx.api();
        let pod = deployments
            .get("orders")
            .await
            .expect("deployment")
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod spec");
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.secret.is_some())
            .expect("a secret volume");
        let secret = volume.secret.expect("secret");
        assert_eq!(secret.secret_name.as_deref(), Some("jwt"));
        assert_eq!(secret.default_mode, Some(0o440));
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == volume.name)
            .expect("its mount");
        assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/ferry/jwt", Some(true)));

        let pods: Api<Pod> = ctx.api();
        let admitted =
            pods.list(&ListParams::default().labels("ferry.dev/microservice=orders")).await.expect("pods");
        assert_eq!(admitted.items.len(), 2, "both pods passed the restricted admission");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn invalid_secret_mounts_are_rejected_at_admission_with_their_rules_message() {
    in_namespace("msvc-secrets-cel", |ctx: TestContext| async move {
        let base = |secrets: serde_json::Value| {
            json!({
                "image": PAUSE_IMAGE,
                "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}],
                "config": {"name": "cfg"},
                "secrets": secrets
            })
        };
        let cases = [
            (json!([{"name": "a", "mountPath": "/s"}, {"name": "b", "mountPath": "/s"}]), "mountPath"),
            (json!([{"name": "a", "mountPath": "relative/dir"}]), "mountPath"),
            (json!([{"name": "a", "mountPath": "/etc/../root"}]), "'..'"),
            (json!([{"name": "a", "mountPath": "/tmp"}]), "/tmp"),
            (json!([{"name": "a", "mountPath": "/etc/ferry/config"}]), "config mount path"),
            (json!([{"name": "a", "mountPath": "/s", "items": [{"key": "k", "path": "/abs"}]}]), "relative"),
            (
                json!(
                    (0..17).map(|i| json!({"name": "a", "mountPath": format!("/s{i}")})).collect::<Vec<_>>()
                ),
                "17",
            ),
        ];
        for (i, (secrets, expected)) in cases.into_iter().enumerate() {
            let err = ctx
                .create_microservice(&format!("bad-{i}"), base(secrets.clone()))
                .await
                .expect_err(&format!("case {i} must be rejected: {secrets}"));
            let message = err.to_string();
            assert!(
                message.contains(expected),
                "case {i}: {secrets}\nexpected the message to mention {expected:?}: {message}"
            );
        }
    })
    .await;
}
