//! Runs alone, with the Prometheus Operator's ServiceMonitor and PrometheusRule
//! CRDs removed from the cluster (tests/e2e/run.sh does that around this
//! binary, since CRDs are cluster-wide): the operator must still reconcile, say
//! why there is no ServiceMonitor and no PrometheusRule, and pick the CRDs up
//! once they are installed.

use ferry_e2e::{
    DEFAULT_TIMEOUT, OperatorProcess, TestContext, WORKLOAD_PORT, condition, in_namespace, wait_until,
};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;

const CRD: &str = "servicemonitors.monitoring.coreos.com";
const RULE_CRD: &str = "prometheusrules.monitoring.coreos.com";

#[tokio::test]
#[ignore = "needs a cluster without the ServiceMonitor and PrometheusRule CRDs: make test-e2e"]
async fn without_the_monitoring_crds_everything_else_reconciles_and_the_status_says_why() {
    in_namespace("msvc-no-smon", |ctx: TestContext| async move {
        let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
        assert!(
            crds.get_opt(CRD).await.expect("get crd").is_none(),
            "precondition: run this test through tests/e2e/run.sh, which removes {CRD}"
        );
        assert!(
            crds.get_opt(RULE_CRD).await.expect("get crd").is_none(),
            "precondition: run this test through tests/e2e/run.sh, which removes {RULE_CRD}"
        );
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let mut spec = ctx.nodes.workload();
        spec["replicas"] = json!(1);
        spec["ports"] = json!([
            {"name": "grpc", "port": WORKLOAD_PORT, "protocol": "grpc"},
            {"name": "metrics", "port": 9090, "protocol": "http"}
        ]);
        spec["monitoring"] = json!({"enabled": true, "port": "metrics", "alerts": {}});
        ctx.create_microservice("orders", spec).await.expect("create msvc");

        let ms = ctx.wait_for_condition("orders", "Available", "True").await;
        let smon = condition(&ms, "ServiceMonitorReady").expect("a ServiceMonitorReady condition");
        assert_eq!(smon["status"], "False");
        let why = format!("{} {}", smon["reason"], smon["message"]);
        assert!(why.contains("ServiceMonitor") || why.contains("CRD"), "the condition says why: {why}");
        let rule = condition(&ms, "PrometheusRuleReady").expect("a PrometheusRuleReady condition");
        assert_eq!(
            (rule["status"].as_str(), rule["reason"].as_str()),
            (Some("False"), Some("CRDNotInstalled"))
        );
        assert!(
            rule["message"].as_str().unwrap_or_default().contains(RULE_CRD),
            "the condition names the missing CRD: {rule}"
        );
        let deployments: Api<Deployment> = ctx.api();
        let services: Api<Service> = ctx.api();
        assert!(deployments.get_opt("orders").await.expect("get").is_some(), "the Deployment exists anyway");
        assert!(services.get_opt("orders").await.expect("get").is_some(), "the Service exists anyway");

        // Install the CRD: the operator notices and creates the ServiceMonitor.
        let path =
            std::env::var("FERRY_SERVICEMONITOR_CRD").expect("FERRY_SERVICEMONITOR_CRD (set by run.sh)");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse CRD");
        crds.patch(CRD, &PatchParams::apply("ferry-e2e").force(), &Patch::Apply(&crd))
            .await
            .expect("apply CRD");

        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        );
        let sms: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource);
        wait_until("the ServiceMonitor once its CRD is served", DEFAULT_TIMEOUT, || async {
            sms.get_opt("orders").await.ok().flatten()
        })
        .await
        .expect("ServiceMonitor created after the CRD appeared");
        ctx.wait_for_condition("orders", "ServiceMonitorReady", "True").await;

        // Then the PrometheusRule CRD: the operator notices and creates the rule.
        let path =
            std::env::var("FERRY_PROMETHEUSRULE_CRD").expect("FERRY_PROMETHEUSRULE_CRD (set by run.sh)");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse CRD");
        crds.patch(RULE_CRD, &PatchParams::apply("ferry-e2e").force(), &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
            "prometheusrules",
        );
        let rules: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource);
        wait_until("the PrometheusRule once its CRD is served", DEFAULT_TIMEOUT, || async {
            rules.get_opt("orders").await.ok().flatten()
        })
        .await
        .expect("PrometheusRule created after the CRD appeared");
        ctx.wait_for_condition("orders", "PrometheusRuleReady", "True").await;
    })
    .await;
}
