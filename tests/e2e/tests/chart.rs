//! The operator's Helm chart against the real API server: it renders to objects
//! the server accepts, it installs, the operator runs under nothing but the
//! chart's ServiceAccount and brings the shop example up, that account can do
//! what the operator needs and nothing it should not, and `helm uninstall`
//! leaves no cluster-scoped objects behind but the CRDs.

use std::time::Duration;

use ferry_e2e::{
    OperatorProcess, TestContext, condition_status, in_namespace, tools, unique_suffix, wait_until,
};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::api::DynamicObject;
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::Value;

/// The shop needs two MicroServices, each with its own blue-green revision, to
/// converge; on a loaded 2-core machine that takes longer than one object.
const SHOP_TIMEOUT: Duration = Duration::from_secs(120);

/// `helm template` of the chart, as release `release` in `namespace`.
fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    let chart = tools::chart_dir();
    let chart = chart.to_string_lossy();
    let mut full = vec!["template", release, &chart, "--namespace", namespace];
    full.extend_from_slice(args);
    tools::run_ok("helm", &full, None, &[])
}

fn kinds(rendered: &str) -> Vec<String> {
    tools::yaml_documents(rendered)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `kubectl apply --dry-run=server`: admission, schema and CEL validation run,
/// nothing is stored. Returns stderr (warnings).
fn server_dry_run(namespace: &str, manifests: &str) -> String {
    let out = tools::run(
        "kubectl",
        &["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
        Some(manifests),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "server-side dry run rejected the rendered chart:\n{stderr}\n--- manifests\n{manifests}"
    );
    stderr
}

const ALL_OPTIONAL_PARTS: &[&str] = &[
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "networkPolicy.metricsFromNamespaceLabels.monitoring=enabled",
    "--set",
    "replicaCount=2",
    "--set",
    "leaderElection.enabled=true",
    "--set",
    "otlpEndpoint=http://otel-collector.observability:4317",
    "--set",
    "grafanaDashboard.enabled=true",
];

const MONITORING_APIS: &[&str] = &[
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
];

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn the_default_chart_renders_only_the_core_objects_and_the_server_accepts_each_one() {
    in_namespace("chart-dry-run-default", |ctx: TestContext| async move {
        let release = format!("dry-{}", unique_suffix());
        let rendered = render(&release, &ctx.namespace, &["--include-crds"]);
        let mut found = kinds(&rendered);
        found.sort();
        assert_eq!(
            found,
            [
                "ClusterRole",
                "ClusterRole",
                "ClusterRoleBinding",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
                "ValidatingAdmissionPolicyBinding",
            ],
            "the default install renders the core objects and nothing optional"
        );
        let warnings = server_dry_run(&ctx.namespace, &rendered);
        assert!(
            !warnings.contains("PodSecurity"),
            "the operator's pod template violates the restricted level:\n{warnings}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn the_chart_with_every_optional_part_renders_them_all_and_the_server_accepts_each_one() {
    in_namespace("chart-dry-run-all", |ctx: TestContext| async move {
        let release = format!("dry-{}", unique_suffix());
        let mut args = ALL_OPTIONAL_PARTS.to_vec();
        args.extend_from_slice(MONITORING_APIS);
        let watch = format!("watchNamespace={}", ctx.namespace);
        args.extend_from_slice(&["--set", &watch]);
        let rendered = render(&release, &ctx.namespace, &args);
        let found = kinds(&rendered);
        for kind in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
            assert!(found.iter().any(|k| k == kind), "{kind} is rendered when asked for: {found:?}");
        }
        let docs = tools::yaml_documents(&rendered);
        let dashboard = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
            .expect("the Grafana dashboard ConfigMap, labelled for the sidecar");
        let json: Value = serde_json::from_str(
            dashboard["data"]["ferry-microservices.json"].as_str().expect("dashboard JSON"),
        )
        .expect("the dashboard is valid JSON");
        let titles: Vec<&str> =
            json["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
        for wanted in ["Request rate", "Error ratio", "p50", "p99", "Replicas", "rollout phase"] {
            assert!(titles.iter().any(|t| t.contains(wanted)), "a panel for {wanted}: {titles:?}");
        }
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let container_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>();
        assert!(container_args.contains(&"--leader-election=true"), "{container_args:?}");
        assert!(
            container_args.contains(&format!("--namespace={}", ctx.namespace).as_str()),
            "{container_args:?}"
        );
        let warnings = server_dry_run(&ctx.namespace, &rendered);
        assert!(
            !warnings.contains("PodSecurity"),
            "the operator's pod template violates the restricted level:\n{warnings}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn monitoring_objects_asked_for_are_left_out_when_their_crds_are_not_served() {
    in_namespace("chart-no-monitoring-crds", |ctx: TestContext| async move {
        // Without --api-versions, helm template knows of no monitoring.coreos.com API:
        // the situation of a cluster without the Prometheus Operator.
        let release = format!("dry-{}", unique_suffix());
        let rendered = render(&release, &ctx.namespace, ALL_OPTIONAL_PARTS);
        let found = kinds(&rendered);
        assert!(
            !found.iter().any(|k| k == "ServiceMonitor" || k == "PrometheusRule"),
            "nothing from monitoring.coreos.com is rendered: {found:?}"
        );
        server_dry_run(&ctx.namespace, &rendered);
    })
    .await;
}

/// `kubectl auth can-i` as the identity of `kubeconfig` (a SelfSubjectAccessReview).
/// `resource` may name a subresource: `microservices.ferry.dev/status`.
fn can_i(kubeconfig: &str, namespace: &str, verb: &str, resource: &str) -> bool {
    // NB: kubectl reads `RESOURCE/NAME`, so a subresource goes to --subresource.
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "-n", namespace];
    args.extend(subresource.as_deref());
    let out = tools::run("kubectl", &args, None, &[("KUBECONFIG", kubeconfig)]);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("kubectl auth can-i {verb} {resource}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Every pod the operator's Deployments asked for was admitted (under `restricted`), and no
/// ReplicaSet reports a failure to create one.
async fn every_pod_the_deployments_asked_for_was_admitted(ctx: &TestContext) {
    let deployments: Api<Deployment> = ctx.api();
    let pods: Api<Pod> = ctx.api();
    let replica_sets: Api<ReplicaSet> = ctx.api();
    for d in deployments
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=ferry-operator"))
        .await
        .expect("list deployments")
    {
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let admitted =
            pods.list(&ListParams::default().labels(&selector)).await.expect("list pods").items.len();
        assert_eq!(admitted as i32, wanted, "deployment/{} wants {wanted} pods", d.name_any());
    }
    for rs in replica_sets.list(&ListParams::default()).await.expect("list replicasets") {
        let failures: Vec<_> = rs
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "ReplicaFailure")
            .map(|c| c.message.unwrap_or_default())
            .collect();
        assert!(failures.is_empty(), "replicaset/{}: {failures:?}", rs.metadata.name.unwrap_or_default());
    }
}

/// `kubectl create --dry-run=server` (admission runs, nothing is stored) of `object` as the identity
/// of `kubeconfig`: `Ok` when admitted, else the error text.
fn dry_run_create(kubeconfig: &str, object: &Value) -> Result<(), String> {
    let out = tools::run(
        "kubectl",
        &["create", "--dry-run=server", "-o", "name", "-f", "-"],
        Some(&object.to_string()),
        &[("KUBECONFIG", kubeconfig)],
    );
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A Deployment mounting a Secret, as an attacker holding the operator's token would create it.
fn secret_reading_deployment(namespace: &str, owner: Option<&DynamicObject>) -> Value {
    let mut d = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "stolen-token", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "stolen"}},
            "template": {
                "metadata": {"labels": {"app": "stolen"}},
                "spec": {
                    "containers": [{"name": "c", "image": ferry_e2e::PAUSE_IMAGE,
                                    "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
                    "volumes": [{"name": "s", "secret": {"secretName": "any"}}]
                }
            }
        }
    });
    if let Some(ms) = owner {
        d["metadata"]["ownerReferences"] = serde_json::json!([{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "MicroService", "name": ms.name_any(),
            "uid": ms.uid().unwrap_or_default(), "controller": true
        }]);
    }
    d
}

/// With the operator's token: a Deployment in kube-system (even one claiming a MicroService owner),
/// a Deployment without a MicroService owner, and a change of a MicroService's image are refused
/// by the chart's admission policy, though the RBAC allows each.
async fn the_admission_policy_refuses_what_the_operator_never_writes(ctx: &TestContext, kubeconfig: &str) {
    let order = ctx.microservices().get("order").await.expect("msvc/order");
    let cases = [
        (
            "a Deployment in kube-system",
            secret_reading_deployment("kube-system", Some(&order)),
            "protected namespace",
        ),
        (
            "a Deployment without a MicroService owner",
            secret_reading_deployment(&ctx.namespace, None),
            "controlled by a MicroService",
        ),
    ];
    for (what, object, reason) in cases {
        // NB: a new policy takes effect once the API server's informer has it: wait for it.
        let refusal = wait_until(&format!("{what} refused"), Duration::from_secs(30), || async {
            dry_run_create(kubeconfig, &object).err()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: the operator's token may still create it"));
        assert!(
            refusal.contains("ValidatingAdmissionPolicy") && refusal.contains(reason),
            "{what}: {refusal}"
        );
    }
    // The operator patches MicroServices only to seed spec.replicas.
    let out = tools::run(
        "kubectl",
        &[
            "patch",
            "msvc",
            "order",
            "-n",
            &ctx.namespace,
            "--dry-run=server",
            "--type=merge",
            "-p",
            r#"{"spec":{"image":"registry.k8s.io/pause:3.9"}}"#,
        ],
        None,
        &[("KUBECONFIG", kubeconfig)],
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && refusal.contains("only spec.replicas"), "{refusal}");
}

/// What the operator does, by (verb, resource[/subresource]).
const ALLOWED: &[(&str, &str)] = &[
    ("watch", "microservices.ferry.dev"),
    ("patch", "microservices.ferry.dev/status"),
    ("update", "microservices.ferry.dev/finalizers"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("patch", "services"),
    ("patch", "horizontalpodautoscalers.autoscaling"),
    ("patch", "poddisruptionbudgets.policy"),
    ("patch", "servicemonitors.monitoring.coreos.com"),
    ("patch", "prometheusrules.monitoring.coreos.com"),
    // NB: not (patch, scaledobjects.keda.sh): the chart grants it, but `kubectl auth can-i`
    // resolves a resource through discovery and answers "no" for one whose CRD (KEDA's) is
    // not served on this cluster.
    ("watch", "configmaps"),
    ("list", "pods"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "events.events.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
    ("watch", "leases.coordination.k8s.io"),
];

/// What it must never be able to do.
const DENIED: &[(&str, &str)] = &[
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
    ("update", "deployments.apps"),
    ("delete", "microservices.ferry.dev"),
    ("create", "microservices.ferry.dev"),
    ("patch", "configmaps"),
    ("create", "serviceaccounts/token"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("create", "jobs.batch"),
    ("*", "*"),
];

/// Every cluster-scoped object labelled as part of `release`.
fn cluster_scoped_objects_of(release: &str) -> String {
    let kinds = tools::run_ok(
        "kubectl",
        &["api-resources", "--namespaced=false", "--verbs=list", "-o", "name"],
        None,
        &[],
    );
    let kinds = kinds.lines().filter(|k| !k.is_empty()).collect::<Vec<_>>().join(",");
    let selector = format!("app.kubernetes.io/instance={release}");
    tools::run_ok("kubectl", &["get", &kinds, "-l", &selector, "-o", "name", "--ignore-not-found"], None, &[])
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn the_operator_under_the_charts_service_account_brings_the_shop_up_and_uninstall_leaves_only_the_crds()
{
    in_namespace("chart-shop", |ctx: TestContext| async move {
        let ns = ctx.namespace.clone();
        let release = format!("ferry-{}", unique_suffix());
        // The default values: the RBAC is bound cluster-wide, so only the chart's admission policy
        // keeps the account out of other namespaces' objects.
        let mut helm = tools::HelmRelease::install(&release, &ns, &[]);
        let account = helm.service_account();
        let kubeconfig = tools::ServiceAccountKubeconfig::create(&ns, &account);

        // The operator as a process, with nothing but the chart's identity. No
        // leader election: this test runs one operator, scoped to its namespace.
        let operator = OperatorProcess::start_with_env(
            &ns,
            "chart-operator",
            &[],
            &[("KUBECONFIG", kubeconfig.as_str())],
        );

        // The shop, as the example ships it, moved into this test's namespace
        // (which enforces the restricted Pod Security level too).
        tools::run_ok("kubectl", &["apply", "-n", &ns, "-f", "-"], Some(&tools::shop_manifests_in(&ns)), &[]);
        let api = ctx.microservices();
        for name in ["inventory", "order"] {
            wait_until(
                &format!("msvc/{name} Available under the chart's ServiceAccount"),
                SHOP_TIMEOUT,
                || async {
                    let ms = api.get(name).await.ok()?;
                    (condition_status(&ms, "Available").as_deref() == Some("True")).then_some(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }

        // Their optional children too: the ServiceMonitors and the alerts' PrometheusRules.
        for name in ["inventory", "order"] {
            ctx.wait_for_condition(name, "ServiceMonitorReady", "True").await;
            ctx.wait_for_condition(name, "PrometheusRuleReady", "True").await;
        }

        every_pod_the_deployments_asked_for_was_admitted(&ctx).await;

        // A rule the operator lacks shows up as a 403 in its log even when the
        // shop converged (events, optional children).
        let log = operator.log_text();
        let forbidden: Vec<&str> =
            log.lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden")).collect();
        assert!(forbidden.is_empty(), "the operator was refused something:\n{}", forbidden.join("\n"));
        drop(operator);

        // With the operator's own token: what RBAC allows but the admission policy must not.
        the_admission_policy_refuses_what_the_operator_never_writes(&ctx, kubeconfig.as_str()).await;

        helm.uninstall();
        let leftovers = cluster_scoped_objects_of(&release);
        assert!(leftovers.trim().is_empty(), "helm uninstall left cluster-scoped objects: {leftovers}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn the_charts_service_account_can_do_what_the_operator_needs_and_cannot_read_secrets_or_touch_other_kinds_or_namespaces()
 {
    in_namespace("chart-rbac", |ctx: TestContext| async move {
        let ns = ctx.namespace.clone();
        let watch = format!("watchNamespace={ns}");
        for (mode, values) in [("cluster-wide", vec![]), ("watchNamespace", vec!["--set", watch.as_str()])] {
            let release = format!("ferry-{}", unique_suffix());
            let mut helm = tools::HelmRelease::install(&release, &ns, &values);
            let kubeconfig = tools::ServiceAccountKubeconfig::create(&ns, &helm.service_account());
            let as_operator = |verb: &str, resource: &str| can_i(kubeconfig.as_str(), &ns, verb, resource);
            let wrong_allowed: Vec<_> = ALLOWED.iter().filter(|(v, r)| !as_operator(v, r)).collect();
            let wrong_denied: Vec<_> = DENIED.iter().filter(|(v, r)| as_operator(v, r)).collect();
            assert!(
                wrong_allowed.is_empty() && wrong_denied.is_empty(),
                "{mode}: the chart's RBAC is off.\nneeded but refused: {wrong_allowed:?}\nnot needed but granted: {wrong_denied:?}"
            );
            // The Lease rule is namespaced: nowhere but the release namespace.
            assert!(
                !can_i(kubeconfig.as_str(), "kube-system", "update", "leases.coordination.k8s.io"),
                "{mode}: the leader-election Lease rule must be limited to the release namespace"
            );
            // Elsewhere: everything with a cluster-wide install, nothing with watchNamespace.
            let elsewhere = can_i(kubeconfig.as_str(), "default", "patch", "deployments.apps");
            assert_eq!(elsewhere, mode == "cluster-wide", "{mode}: patch deployments in namespace default");
            helm.uninstall();
        }
    })
    .await;
}
