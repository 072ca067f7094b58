//! `spec.monitoring.alerts` → a PrometheusRule child, accepted by the real
//! Prometheus Operator CRD schema. (Without that CRD: monitoring_crd_absent.rs.)

use ferry_e2e::{
    DEFAULT_TIMEOUT, OperatorProcess, PAUSE_IMAGE, TestContext, condition, in_namespace, wait_until,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::json;

fn prometheus_rules(ctx: &TestContext) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    );
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn alerts_become_a_prometheus_rule_owned_by_the_microservice_and_go_away_when_turned_off() {
    in_namespace("msvc-alerts", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let spec = json!({
            "image": PAUSE_IMAGE,
            "ports": [
                {"name": "grpc", "port": 8080, "protocol": "grpc"},
                {"name": "metrics", "port": 9090, "protocol": "http"}
            ],
            "resources": {"requests": {"cpu": "100m"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
            "monitoring": {
                "port": "metrics",
                "labels": {"release": "prom"},
                "alerts": {"latencyP99ThresholdMs": 250, "labels": {"team": "shop"}}
            }
        });
        let created = ctx.create_microservice("orders", spec).await.expect("create msvc");
        let rules = prometheus_rules(&ctx);
        let rule = wait_until("the PrometheusRule", DEFAULT_TIMEOUT, || async {
            rules.get_opt("orders").await.ok().flatten()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        let owner = rule.owner_references().first().cloned().expect("an owner reference");
        assert_eq!(
            (owner.kind.as_str(), Some(owner.uid.as_str()), owner.controller),
            ("MicroService", created.metadata.uid.as_deref(), Some(true))
        );
        assert_eq!(rule.labels().get("release").map(String::as_str), Some("prom"));
        let alerts: Vec<String> = rule.data["spec"]["groups"][0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter_map(|r| r["alert"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            alerts,
            ["GrpcLatencyHigh", "GrpcErrorRatioHigh", "PodsNotReady", "AutoscalerAtMaxReplicas"]
        );
        let ms = ctx.wait_for_condition("orders", "PrometheusRuleReady", "True").await;
        assert_eq!(condition(&ms, "PrometheusRuleReady").expect("condition")["reason"], "Applied");

        // A changed threshold is applied to the rule.
        ctx.patch_microservice("orders", json!({"monitoring": {"alerts": {"latencyP99ThresholdMs": 900}}}))
            .await;
        wait_until("the new latency threshold in the rule", DEFAULT_TIMEOUT, || async {
            let rule = rules.get("orders").await.ok()?;
            rule.data["spec"]["groups"][0]["rules"][0]["expr"].as_str()?.ends_with("> 0.9").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        // Alerts off: the rule is deleted, the ServiceMonitor stays.
        ctx.patch_microservice("orders", json!({"monitoring": {"alerts": {"enabled": false}}})).await;
        wait_until("the PrometheusRule to be deleted", DEFAULT_TIMEOUT, || async {
            rules.get_opt("orders").await.ok()?.is_none().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let ms = ctx.wait_for_condition("orders", "PrometheusRuleReady", "False").await;
        assert_eq!(condition(&ms, "PrometheusRuleReady").expect("condition")["reason"], "NotRequested");
        ctx.wait_for_condition("orders", "ServiceMonitorReady", "True").await;
    })
    .await;
}
