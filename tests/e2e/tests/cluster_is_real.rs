//! Proof that the e2e tier talks to a real API server: scheduling, RBAC,
//! CRD validation rules and garbage collection all happen server-side.

use ferry_e2e::{DEFAULT_TIMEOUT, TestContext, in_namespace, unique_suffix, wait_until};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{ConfigMap, Node, Pod, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams},
    core::Status,
};
use serde_json::json;

fn restricted_deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65535, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "app",
                        "image": ferry_e2e::PAUSE_IMAGE,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": true
                        }
                    }]
                }
            }
        }
    }))
    .expect("valid Deployment")
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_deployment_reaches_three_ready_replicas_on_ready_nodes() {
    in_namespace("deployment-ready", |ctx: TestContext| async move {
        let deployments: Api<Deployment> = ctx.api();
        deployments
            .create(&PostParams::default(), &restricted_deployment("web", 3))
            .await
            .expect("create Deployment");

        wait_until("3 ready replicas", DEFAULT_TIMEOUT, || async {
            let d = deployments.get("web").await.ok()?;
            (d.status?.ready_replicas? == 3).then_some(())
        })
        .await
        .expect("Deployment becomes ready");

        // kube-scheduler bound the pods to Ready nodes (kwok's fake nodes on
        // the local cluster, kind's node on kind).
        let pods: Api<Pod> = ctx.api();
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let ready_nodes: Vec<String> = nodes
            .list(&ListParams::default())
            .await
            .expect("list nodes")
            .items
            .into_iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|n| n.metadata.name)
            .collect();
        // The local cluster has two kwok nodes; kind has one real node.
        let expected = if ctx.nodes == ferry_e2e::Nodes::Fake { 2 } else { 1 };
        assert!(
            ready_nodes.len() >= expected,
            "expected at least {expected} Ready nodes, got {ready_nodes:?}"
        );
        let list = pods.list(&ListParams::default().labels("app=web")).await.expect("list pods");
        assert_eq!(list.items.len(), 3);
        for pod in list.items {
            let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
            assert!(ready_nodes.contains(&node), "pod bound to {node:?}, not a Ready node");
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_service_account_without_a_role_binding_is_forbidden() {
    in_namespace("rbac-forbidden", |ctx: TestContext| async move {
        let accounts: Api<ServiceAccount> = ctx.api();
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "nobody"}})).expect("sa");
        accounts.create(&PostParams::default(), &sa).await.expect("create sa");

        // A real token from the TokenRequest API, signed by the apiserver's
        // ServiceAccount key, authenticates as the account...
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request("nobody", &PostParams::default(), &request)
            .await
            .expect("token request")
            .status
            .expect("token status")
            .token
            .expect("token");

        let mut config = Config::infer().await.expect("kubeconfig");
        config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
        let as_nobody = Client::try_from(config).expect("client");

        // ...and RBAC, with no binding for it, denies the list.
        let pods: Api<Pod> = Api::namespaced(as_nobody, &ctx.namespace);
        match pods.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 403, "expected 403 Forbidden, got {status:?}");
                assert!(
                    status.message.contains(&format!("system:serviceaccount:{}:nobody", ctx.namespace)),
                    "the denial names the account: {}",
                    status.message
                );
            }
            other => panic!("expected 403 Forbidden, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_crd_validation_rule_rejects_a_bad_object_with_its_message() {
    in_namespace("crd-cel", |ctx: TestContext| async move {
        let plural = format!("ranges{}", unique_suffix());
        let group = "e2e.ferry.dev";
        let crd_name = format!("{plural}.{group}");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": crd_name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural, "kind": "Range", "listKind": "RangeList"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {
                            "type": "object",
                            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}],
                            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}}
                        }}
                    }}
                }]
            }
        }))
        .expect("crd");
        let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
        crds.create(&PostParams::default(), &crd).await.expect("create crd");

        let gvk = GroupVersionKind::gvk(group, "v1", "Range");
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let ranges: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource);
        let object = |name: &str, min: i64, max: i64| {
            DynamicObject::new(name, &resource).data(json!({"spec": {"min": min, "max": max}}))
        };

        // The CRD is served once Established; a good object proves that.
        wait_until("the CRD to serve objects", ferry_e2e::DEFAULT_TIMEOUT, || async {
            ranges.create(&PostParams::default(), &object("good", 1, 2)).await.ok()
        })
        .await
        .expect("good object accepted");

        let rejected = ranges.create(&PostParams::default(), &object("bad", 5, 2)).await;
        let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
        match rejected {
            Err(kube::Error::Api(status)) => {
                let Status { code, message, .. } = *status;
                assert_eq!(code, 422, "rejected as Invalid: {message}");
                assert!(message.contains("min must not exceed max"), "message carries the rule's text: {message}");
            }
            other => panic!("expected the rule to reject the object, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    in_namespace("gc", |ctx: TestContext| async move {
        let maps: Api<ConfigMap> = ctx.api();
        let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("owner");
        let owner = maps.create(&PostParams::default(), &owner).await.expect("create owner");
        let owner_ref = OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("uid"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut dependent: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "dependent"}, "data": {"k": "v"}}))
                .expect("dep");
        dependent.metadata.owner_references = Some(vec![owner_ref]);
        maps.create(&PostParams::default(), &dependent).await.expect("create dependent");

        maps.delete("owner", &DeleteParams::background()).await.expect("delete owner");

        // kube-controller-manager's garbage collector removes the dependent.
        wait_until("the dependent to be collected", DEFAULT_TIMEOUT, || async {
            matches!(maps.get_opt("dependent").await, Ok(None)).then_some(())
        })
        .await
        .expect("dependent garbage-collected");
    })
    .await;
}
