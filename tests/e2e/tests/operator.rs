//! The operator, run as a process against the real API server, reconciling
//! MicroServices in the test's namespace.

use std::time::{Duration, Instant};

use ferry_e2e::{
    DEFAULT_TIMEOUT, OperatorProcess, PAUSE_IMAGE, TestContext, WORKLOAD_PORT, condition, condition_status,
    in_namespace, wait_until,
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, coordination::v1::Lease,
        core::v1::ConfigMap, core::v1::Service, policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// A service as a team would write it: gRPC plus a metrics port, autoscaled,
/// monitored, with a disruption budget.
/// The pods run the cluster's test workload (`ferry_e2e::Nodes`): nothing on kwok, a gRPC server
/// on kind.
fn shop_spec(ctx: &TestContext) -> Value {
    let mut spec = ctx.nodes.workload();
    spec["ports"] = json!([
        {"name": "grpc", "port": WORKLOAD_PORT, "protocol": "grpc"},
        {"name": "metrics", "port": 9090, "protocol": "http"}
    ]);
    spec["resources"] = json!({"requests": {"cpu": "100m", "memory": "64Mi"}});
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 6});
    spec["monitoring"] = json!({"enabled": true, "port": "metrics"});
    spec["disruptionBudget"] = json!({"minAvailable": 1});
    spec
}

fn plain_spec(ctx: &TestContext) -> Value {
    let mut spec = ctx.nodes.workload();
    spec["replicas"] = json!(1);
    spec
}

fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn assert_controlled_by(owner: &DynamicObject, refs: Option<&Vec<OwnerReference>>, what: &str) {
    let refs = refs.unwrap_or_else(|| panic!("{what} has no owner references"));
    let uid = owner.uid().expect("owner uid");
    assert!(
        refs.iter().any(|r| r.uid == uid && r.kind == "MicroService" && r.controller == Some(true)),
        "{what} is not controlled by msvc/{}: {refs:?}",
        owner.name_any()
    );
}

async fn deployment(ctx: &TestContext, name: &str) -> Deployment {
    let deployments: Api<Deployment> = ctx.api();
    wait_until(&format!("deployment/{name}"), DEFAULT_TIMEOUT, || async {
        deployments.get_opt(name).await.ok().flatten()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_microservice_gets_all_its_children_with_owner_references_and_becomes_available() {
    in_namespace("msvc-children", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("orders", shop_spec(&ctx)).await.expect("create msvc");

        let ms = ctx.wait_for_condition("orders", "Available", "True").await;
        assert_eq!(ms.data["status"]["phase"], "Healthy", "status: {}", ms.data["status"]);

        let d = deployment(&ctx, "orders").await;
        assert_controlled_by(&ms, d.metadata.owner_references.as_ref(), "the Deployment");
        assert!(
            d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 2,
            "minReplicas pods are ready"
        );
        let container = &d.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod").containers[0];
        let probe = container.readiness_probe.as_ref().expect("a generated readiness probe");
        assert!(probe.grpc.is_some(), "a gRPC port gets a native gRPC probe: {probe:?}");

        let svc: Service = ctx.api().get("orders").await.expect("the Service");
        assert_controlled_by(&ms, svc.metadata.owner_references.as_ref(), "the Service");
        let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
        assert!(ports.iter().any(|p| p.name.as_deref() == Some("grpc")), "named ports: {ports:?}");

        let hpa: HorizontalPodAutoscaler = ctx.api().get("orders").await.expect("the HPA");
        assert_controlled_by(&ms, hpa.metadata.owner_references.as_ref(), "the HPA");
        let target = hpa.spec.scale_target_ref;
        assert_eq!((target.kind.as_str(), target.name.as_str()), ("MicroService", "orders"));

        let pdb: PodDisruptionBudget = ctx.api().get("orders").await.expect("the PDB");
        assert_controlled_by(&ms, pdb.metadata.owner_references.as_ref(), "the PDB");

        let sms: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &service_monitor_resource());
        let sm = sms.get("orders").await.expect("the ServiceMonitor");
        assert_controlled_by(&ms, sm.metadata.owner_references.as_ref(), "the ServiceMonitor");
        assert_eq!(condition_status(&ms, "ServiceMonitorReady").as_deref(), Some("True"));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn an_image_change_updates_the_pod_template() {
    in_namespace("msvc-image", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("web", plain_spec(&ctx)).await.expect("create msvc");
        ctx.wait_for_condition("web", "Available", "True").await;

        let other = ctx.nodes.other_image();
        ctx.patch_microservice("web", json!({"image": other})).await;

        let deployments: Api<Deployment> = ctx.api();
        wait_until("the pod template to carry the new image", DEFAULT_TIMEOUT, || async {
            let d = deployments.get("web").await.ok()?;
            let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
            (image == other).then_some(())
        })
        .await
        .expect("image rolled");
        ctx.wait_for_condition("web", "Available", "True").await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn deleting_a_microservice_garbage_collects_every_child() {
    in_namespace("msvc-gc", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("orders", shop_spec(&ctx)).await.expect("create msvc");
        ctx.wait_for_condition("orders", "Available", "True").await;

        ctx.microservices().delete("orders", &DeleteParams::background()).await.expect("delete msvc");

        let deployments: Api<Deployment> = ctx.api();
        let services: Api<Service> = ctx.api();
        let hpas: Api<HorizontalPodAutoscaler> = ctx.api();
        let pdbs: Api<PodDisruptionBudget> = ctx.api();
        let sms: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &service_monitor_resource());
        wait_until("every child to be garbage-collected", DEFAULT_TIMEOUT, || async {
            let gone = matches!(deployments.get_opt("orders").await, Ok(None))
                && matches!(services.get_opt("orders").await, Ok(None))
                && matches!(hpas.get_opt("orders").await, Ok(None))
                && matches!(pdbs.get_opt("orders").await, Ok(None))
                && matches!(sms.get_opt("orders").await, Ok(None));
            gone.then_some(())
        })
        .await
        .expect("children collected");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn each_invalid_spec_is_rejected_at_admission_with_its_rules_message() {
    in_namespace("msvc-cel", |ctx: TestContext| async move {
        let base = shop_spec(&ctx);
        let with = |patch: Value| {
            let mut spec = base.clone();
            json_merge(&mut spec, patch);
            spec
        };
        let cases = [
            (
                with(json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}})),
                "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
            ),
            (
                with(json!({"ports": [
                    {"name": "grpc", "port": 8080, "protocol": "grpc"},
                    {"name": "grpc", "port": 9090, "protocol": "http"}]})),
                "port names must be unique",
            ),
            (
                with(json!({"ports": [
                    {"name": "grpc", "port": 8080, "protocol": "grpc"},
                    {"name": "metrics", "port": 8080, "protocol": "http"}]})),
                "container port numbers must be unique",
            ),
            (
                with(json!({"monitoring": {"enabled": true, "port": "metrics", "interval": "10s", "scrapeTimeout": "30s"}})),
                "monitoring.scrapeTimeout must not exceed monitoring.interval",
            ),
            (
                with(json!({"replicas": 3})),
                "spec.replicas and spec.autoscaling are mutually exclusive",
            ),
            (with(json!({"image": "registry.k8s.io/pause"})), "image must carry a tag or a digest"),
            (
                with(json!({"monitoring": {"enabled": true, "port": "nope"}})),
                "monitoring.port must name one of spec.ports",
            ),
        ];
        for (i, (spec, message)) in cases.into_iter().enumerate() {
            match ctx.create_microservice(&format!("bad-{i}"), spec).await {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "case {i}: rejected as Invalid: {}", status.message);
                    assert!(status.message.contains(message), "case {i}: expected {message:?} in {:?}", status.message);
                }
                other => panic!("case {i} ({message}): expected a 422 rejection, got {other:?}"),
            }
        }
        // Nothing was half-written.
        let list = ctx.microservices().list(&Default::default()).await.expect("list");
        assert!(list.items.is_empty(), "no rejected object was stored");

        // The same rule on update: autoscaling cannot be added while spec.replicas stays.
        let mut fixed = base.clone();
        fixed.as_object_mut().expect("spec object").remove("autoscaling");
        json_merge(&mut fixed, json!({"replicas": 2}));
        ctx.create_microservice("fixed", fixed).await.expect("a fixed replica count is valid");
        let adding = ctx
            .microservices()
            .patch(
                "fixed",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}})),
            )
            .await;
        match adding {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "rejected as Invalid: {}", status.message);
                assert!(
                    status.message.contains("spec.replicas and spec.autoscaling are mutually exclusive"),
                    "the rule's message in {:?}",
                    status.message
                );
            }
            other => panic!("adding autoscaling next to spec.replicas: expected a 422 rejection, got {other:?}"),
        }
        let stored = ctx.microservices().get("fixed").await.expect("get fixed");
        assert!(stored.data["spec"].get("autoscaling").is_none(), "the rejected update left the object as it was");
    })
    .await;
}

fn json_merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                json_merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn an_autoscaler_replica_decision_survives_three_reconciles() {
    in_namespace("msvc-hpa", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("orders", shop_spec(&ctx)).await.expect("create msvc");
        ctx.wait_for_condition("orders", "Available", "True").await;

        // Write the decision the way the HorizontalPodAutoscaler does: through
        // the MicroService's scale subresource.
        let scale = ctx
            .microservices()
            .patch_scale("orders", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 4}})))
            .await
            .expect("scale subresource accepts the decision");
        assert_eq!(scale.spec.and_then(|s| s.replicas), Some(4));

        let deployments: Api<Deployment> = ctx.api();
        let replicas_are_four = || async {
            let d = deployments.get("orders").await.ok()?;
            (d.spec?.replicas? == 4).then_some(())
        };
        wait_until("the Deployment to follow the autoscaler", DEFAULT_TIMEOUT, replicas_are_four)
            .await
            .expect("decision applied");

        // Three spec changes, each a full reconcile that the status confirms.
        for i in 0..3 {
            ctx.patch_microservice("orders", json!({"env": [{"name": "ROUND", "value": i.to_string()}]}))
                .await;
            ctx.wait_for_condition("orders", "Available", "True").await;
            let d = deployments.get("orders").await.expect("deployment");
            assert_eq!(d.spec.and_then(|s| s.replicas), Some(4), "round {i}: the decision survived");
        }
        let ms = ctx.microservices().get("orders").await.expect("msvc");
        assert_eq!(ms.data["spec"]["replicas"], 4, "the operator did not reset spec.replicas");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_dependency_gate_holds_until_the_dependency_is_available() {
    in_namespace("msvc-deps", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let mut api_spec = plain_spec(&ctx);
        api_spec["dependsOn"] = json!([{"name": "inventory"}]);
        ctx.create_microservice("api", api_spec).await.expect("create api");

        ctx.wait_for_condition("api", "DependenciesReady", "False").await;
        let deployments: Api<Deployment> = ctx.api();
        assert!(
            deployments.get_opt("api").await.expect("get").is_none(),
            "no pods roll while a dependency is missing"
        );

        ctx.create_microservice("inventory", plain_spec(&ctx)).await.expect("create inventory");
        ctx.wait_for_condition("inventory", "Available", "True").await;
        ctx.wait_for_condition("api", "DependenciesReady", "True").await;
        ctx.wait_for_condition("api", "Available", "True").await;

        // The dependency's address is injected into the dependent's pods.
        let d = deployment(&ctx, "api").await;
        let env =
            d.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].env.clone().unwrap_or_default());
        let values: Vec<String> = env.unwrap_or_default().into_iter().filter_map(|e| e.value).collect();
        assert!(
            values.iter().any(|v| v.contains(&format!("inventory.{}.svc", ctx.namespace))),
            "the dependency's DNS name is injected: {values:?}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_dependency_cycle_is_named_on_each_member_and_rolls_nothing() {
    in_namespace("msvc-cycle", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        for (name, depends_on) in [("ping", "pong"), ("pong", "ping")] {
            let mut spec = plain_spec(&ctx);
            spec["dependsOn"] = json!([{ "name": depends_on }]);
            ctx.create_microservice(name, spec).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        }
        let api = ctx.microservices();
        for (name, cycle) in [("ping", "ping → pong → ping"), ("pong", "pong → ping → pong")] {
            let message = wait_until("DependenciesReady=False naming the cycle", DEFAULT_TIMEOUT, || async {
                let ms = api.get(name).await.ok()?;
                let c = condition(&ms, "DependenciesReady")?;
                let message = c["message"].as_str()?.to_string();
                (c["status"] == "False" && message.contains(cycle)).then_some(message)
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(message.contains("dependency cycle"), "{message}");
        }
        let deployments: Api<Deployment> = ctx.api();
        for name in ["ping", "pong"] {
            assert!(
                deployments.get_opt(name).await.expect("get").is_none(),
                "no pods roll for {name} while its dependencies form a cycle"
            );
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_config_map_change_rolls_the_pods_only_when_asked() {
    in_namespace("msvc-config", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let maps: Api<ConfigMap> = ctx.api();
        for name in ["rolling", "reloading"] {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": name}, "data": {"level": "info"}}))
                    .expect("cm");
            maps.create(&PostParams::default(), &cm).await.expect("create cm");
        }
        let mut rolling = plain_spec(&ctx);
        rolling["config"] = json!({"name": "rolling", "rollOnChange": true});
        let mut reloading = plain_spec(&ctx);
        reloading["config"] = json!({"name": "reloading", "rollOnChange": false});
        ctx.create_microservice("rolling", rolling).await.expect("create");
        ctx.create_microservice("reloading", reloading).await.expect("create");
        ctx.wait_for_condition("rolling", "Available", "True").await;
        ctx.wait_for_condition("reloading", "Available", "True").await;

        let deployments: Api<Deployment> = ctx.api();
        let template_of = |name: &'static str| {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get(name).await.expect("deployment");
                serde_json::to_value(d.spec.expect("spec").template).expect("json")
            }
        };
        let rolling_before = template_of("rolling").await;
        let reloading_before = template_of("reloading").await;

        for name in ["rolling", "reloading"] {
            maps.patch(name, &PatchParams::default(), &Patch::Merge(json!({"data": {"level": "debug"}})))
                .await
                .expect("patch cm");
        }
        wait_until("the rolling pod template to change", DEFAULT_TIMEOUT, || async {
            (template_of("rolling").await != rolling_before).then_some(())
        })
        .await
        .expect("rollOnChange rolled the pods");

        // The hot-reloading service keeps its pods. Prove the operator has
        // seen the ConfigMap change by forcing one more reconcile of it.
        ctx.patch_microservice("reloading", json!({"env": [{"name": "X", "value": "1"}]})).await;
        ctx.wait_for_condition("reloading", "Available", "True").await;
        let mut expected = reloading_before.clone();
        expected["spec"]["containers"][0]["env"] =
            template_of("reloading").await["spec"]["containers"][0]["env"].clone();
        assert_eq!(
            template_of("reloading").await,
            expected,
            "only the env change reached the template; the ConfigMap edit did not roll it"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn two_operators_elect_one_leader_and_the_standby_takes_over_after_a_crash() {
    in_namespace("msvc-leader", |ctx: TestContext| async move {
        const LEASE_SECONDS: u64 = 6;
        let args = |id: &'static str| {
            vec!["--leader-election", "true", "--lease-duration", "6", "--lease-grace", "2", "--identity", id]
        };
        let ns = ctx.namespace.clone();
        let mut a_args = args("op-a");
        a_args.extend(["--lease-namespace", ns.as_str()]);
        let mut b_args = args("op-b");
        b_args.extend(["--lease-namespace", ns.as_str()]);
        let mut a = OperatorProcess::start(&ns, "op-a", &a_args);
        let mut b = OperatorProcess::start(&ns, "op-b", &b_args);

        let leases: Api<Lease> = ctx.api();
        let holder = || async {
            let lease = leases.get("ferry-operator").await.ok()?;
            lease.spec?.holder_identity
        };
        let first = wait_until("a leader", DEFAULT_TIMEOUT, holder).await.expect("one leader");
        ctx.create_microservice("one", plain_spec(&ctx)).await.expect("create");
        ctx.wait_for_condition("one", "Available", "True").await;

        let (leader, standby, standby_id) =
            if first == "op-a" { (&mut a, &b, "op-b") } else { (&mut b, &a, "op-a") };
        // One leader at a time: the standby never started its controller.
        assert!(
            !standby.log_text().contains("elected leader"),
            "both replicas led at once:\n{}",
            standby.log_text()
        );
        leader.kill().await;
        let killed = Instant::now();
        let second = wait_until("the standby to take the lease", DEFAULT_TIMEOUT, || async {
            holder().await.filter(|h| h == standby_id)
        })
        .await
        .expect("standby took over");
        let took = killed.elapsed();
        assert_eq!(second, standby_id);
        assert!(
            took <= Duration::from_secs(LEASE_SECONDS + 3),
            "takeover within the lease duration (+ poll slack): took {took:?}"
        );

        // The new leader writes: a new MicroService is reconciled.
        ctx.create_microservice("two", plain_spec(&ctx)).await.expect("create");
        ctx.wait_for_condition("two", "Available", "True").await;
    })
    .await;
}

fn container_of(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .cloned()
        .expect("a container")
}

/// The operator's Deployment as a team member might leave it after a hand edit: more pods, another
/// image, no security context.
async fn edit_deployment_by_hand(ctx: &TestContext, name: &str) {
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {
                "replicas": 5,
                "template": {"spec": {"containers": [{
                    "name": name,
                    "image": "registry.k8s.io/pause:3.9",
                    "securityContext": null
                }]}}
            }})),
        )
        .await
        .unwrap_or_else(|e| panic!("edit deployment/{name}: {e}"));
}

/// Waits until deployment/`name` is back to what the operator builds: 1 pod of the workload image
/// with the restricted security context, and the status says so.
async fn wait_repaired(ctx: &TestContext, name: &str) {
    let deployments: Api<Deployment> = ctx.api();
    wait_until(&format!("deployment/{name} repaired"), DEFAULT_TIMEOUT, || async {
        let d = deployments.get(name).await.ok()?;
        let c = container_of(&d);
        let repaired = d.spec.as_ref()?.replicas == Some(1)
            && c.image.as_deref() == Some(ctx.nodes.image())
            && c.security_context.is_some();
        repaired.then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let api = ctx.microservices();
    wait_until(&format!("msvc/{name} reports 1 pod again"), DEFAULT_TIMEOUT, || async {
        let ms = api.get(name).await.ok()?;
        let status = &ms.data["status"];
        (status["phase"] == "Healthy" && status["ready"] == "1/1" && status["updatedReplicas"] == 1)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn hand_edits_of_the_deployment_are_repaired_whether_made_while_the_operator_runs_or_while_it_is_down()
{
    in_namespace("msvc-drift", |ctx: TestContext| async move {
        let mut operator = OperatorProcess::start(&ctx.namespace, "op-0", &[]);
        ctx.create_microservice("web", plain_spec(&ctx)).await.expect("create msvc");
        ctx.wait_for_condition("web", "Available", "True").await;

        // While the operator is down: a restarted operator has no memory of its own writes.
        operator.kill().await;
        edit_deployment_by_hand(&ctx, "web").await;
        let _operator = OperatorProcess::start(&ctx.namespace, "op-1", &[]);
        wait_repaired(&ctx, "web").await;

        // While it runs.
        edit_deployment_by_hand(&ctx, "web").await;
        wait_repaired(&ctx, "web").await;
    })
    .await;
}

/// A free loopback port for an operator's metrics server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The operator's `/metrics` text (plain HTTP/1.0 on loopback).
async fn metrics_text(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The sum of every sample of `metric` (e.g. `ferry_operator_api_writes_total`) in `text`.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_restarted_operator_finds_every_converged_child_in_line_and_writes_nothing() {
    in_namespace("msvc-no-writes", |ctx: TestContext| async move {
        let mut operator = OperatorProcess::start(&ctx.namespace, "op-0", &[]);
        let mut alerting = shop_spec(&ctx);
        alerting["monitoring"]["alerts"] = json!({"labels": {"team": "shop"}});
        alerting["secrets"] = json!([{"name": "jwt", "mountPath": "/etc/jwt", "optional": true}]);
        let mut blue_green = plain_spec(&ctx);
        blue_green["replicas"] = json!(2);
        blue_green["strategy"] = json!({"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 1}});
        blue_green["env"] = json!([{"name": "A", "value": "1"}]);
        let specs = [("orders", shop_spec(&ctx)), ("alerting", alerting), ("bg", blue_green)];
        for (name, spec) in &specs {
            ctx.create_microservice(name, spec.clone()).await.expect("create");
        }
        for (name, _) in &specs {
            ctx.wait_for_condition(name, "Available", "True").await;
        }
        // A rollout, so the blue-green MicroService has an older revision too.
        ctx.patch_microservice("bg", json!({"env": [{"name": "A", "value": "2"}]})).await;
        let api = ctx.microservices();
        // NB: settled, so that nothing the killed operator saw is left to write: every pod updated
        // and available (Progressing=False, RolloutComplete) and no older revision kept.
        for (name, _) in &specs {
            wait_until(&format!("msvc/{name} settled"), DEFAULT_TIMEOUT, || async {
                let ms = api.get(name).await.ok()?;
                let s = &ms.data["status"];
                let current = ms.metadata.generation? == s["observedGeneration"].as_i64()?;
                let progressing = condition(&ms, "Progressing")?;
                let settled = current
                    && s["phase"] == "Healthy"
                    && progressing["reason"] == "RolloutComplete"
                    && s["blueGreen"]["previousRevision"].is_null();
                settled.then_some(())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        operator.kill().await;

        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let _operator = OperatorProcess::start(&ctx.namespace, "op-1", &["--metrics-addr", addr.as_str()]);
        let runs = |text: &str| metric_sum(text, "ferry_operator_reconcile_runs_total");
        let started = wait_until("the restarted operator's first reconciles", DEFAULT_TIMEOUT, || async {
            let text = metrics_text(port).await?;
            (runs(&text) >= specs.len() as f64).then_some(runs(&text))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // NB: a first reconcile may find the child caches still filling and look again later; a
        // second round, triggered by a metadata change of each MicroService, runs on full caches.
        for (name, _) in &specs {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"e2e.ferry.dev/poke": "1"}}})),
            )
            .await
            .expect("annotate");
        }
        let text = wait_until("a second reconcile of each MicroService", DEFAULT_TIMEOUT, || async {
            let text = metrics_text(port).await?;
            (runs(&text) >= started + specs.len() as f64).then_some(text)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let writes: Vec<&str> =
            text.lines().filter(|l| l.starts_with("ferry_operator_api_writes_total{")).collect();
        assert!(writes.is_empty(), "a converged operator wrote after its restart:\n{}", writes.join("\n"));
    })
    .await;
}

/// Warning Events with `reason` on msvc/`name`.
async fn warnings(ctx: &TestContext, name: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    events
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .map(|e| e.note.unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until msvc/`name` has `Synced=False` and returns its message.
async fn wait_not_synced(ctx: &TestContext, name: &str) -> String {
    let api = ctx.microservices();
    wait_until(&format!("msvc/{name} Synced=False"), DEFAULT_TIMEOUT, || async {
        let ms = api.get(name).await.ok()?;
        let c = condition(&ms, "Synced")?;
        (c["status"] == "False").then(|| c["message"].as_str().unwrap_or_default().to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_child_the_api_server_refuses_is_named_in_a_condition_with_its_message_and_one_warning() {
    in_namespace("msvc-refused", |ctx: TestContext| async move {
        // No HorizontalPodAutoscaler may be created here: a 403 on an optional child.
        let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = ctx.api();
        let quota = serde_json::from_value(json!({
            "metadata": {"name": "no-hpas"},
            "spec": {"hard": {"count/horizontalpodautoscalers.autoscaling": "0"}}
        }))
        .expect("quota");
        quotas.create(&PostParams::default(), &quota).await.expect("quota");
        wait_until("the quota is counted", DEFAULT_TIMEOUT, || async {
            quotas.get("no-hpas").await.ok()?.status?.used.map(|_| ())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("orders", shop_spec(&ctx)).await.expect("create msvc");
        let message = wait_not_synced(&ctx, "orders").await;
        assert!(
            message.starts_with("HorizontalPodAutoscaler orders: ") && message.contains("exceeded quota"),
            "the condition names the child and the API server's message: {message}"
        );
        // Retried with backoff, announced once.
        wait_until("three failed attempts", DEFAULT_TIMEOUT, || async {
            (operator.log_text().matches("reconcile failed; backing off").count() >= 3).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let events = warnings(&ctx, "orders", "ChildWriteFailed").await;
        assert_eq!(events.len(), 1, "one Warning event, not one per retry: {events:?}");
        assert!(events[0].contains("HorizontalPodAutoscaler orders"), "{events:?}");

        // Room again: the HPA is created and the condition clears.
        quotas.delete("no-hpas", &DeleteParams::default()).await.expect("delete the quota");
        ctx.wait_for_condition("orders", "Synced", "True").await;
        let hpas: Api<HorizontalPodAutoscaler> = ctx.api();
        assert!(hpas.get_opt("orders").await.expect("get").is_some());

        // A Deployment the API server finds invalid (a pass-through toleration it refuses): the same
        // condition, the spec parked as invalid, and still one Warning.
        let mut bad = plain_spec(&ctx);
        bad["pod"] = json!({"tolerations": [{"key": "gpu", "operator": "Sometimes"}]});
        ctx.create_microservice("web", bad).await.expect("create msvc");
        let message = wait_not_synced(&ctx, "web").await;
        assert!(message.starts_with("Deployment web: "), "{message}");
        let ms = ctx.wait_for_condition("web", "InvalidSpec", "True").await;
        assert_eq!(ms.data["status"]["phase"], "Invalid");
        let events = warnings(&ctx, "web", "ChildWriteFailed").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(warnings(&ctx, "web", "InvalidSpec").await.is_empty(), "announced once");
    })
    .await;
}

/// A valid MicroService to break one field at a time: a gRPC port and an HTTP metrics port.
fn admission_base() -> Value {
    json!({
        "image": PAUSE_IMAGE,
        "ports": [
            {"name": "grpc", "port": 8080, "protocol": "grpc"},
            {"name": "metrics", "port": 9090, "protocol": "http"}
        ]
    })
}

/// Creates `spec` under `name` with a create (POST) and with a server-side apply, and checks both
/// are refused with a 422 naming `field` and carrying `message`.
async fn assert_refused(ctx: &TestContext, name: &str, spec: &Value, field: &str, message: &str) {
    let object = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "MicroService",
        "metadata": {"name": name},
        "spec": spec
    });
    let created = ctx.create_microservice(name, spec.clone()).await;
    let applied =
        ctx.microservices().patch(name, &PatchParams::apply("e2e-admission"), &Patch::Apply(&object)).await;
    for (mode, result) in [("create", created.map(|_| ())), ("server-side apply", applied.map(|_| ()))] {
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name} by {mode}: refused as Invalid: {}", status.message);
                assert!(
                    status.message.contains(message) && status.message.contains(field),
                    "{name} by {mode}: expected {field:?} and {message:?} in {:?}",
                    status.message
                );
            }
            other => panic!("{name} by {mode}: expected a 422, got {other:?}"),
        }
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn every_contradictory_or_meaningless_spec_is_refused_at_admission_naming_its_field() {
    in_namespace("msvc-holes", |ctx: TestContext| async move {
        let with = |patch: Value| {
            let mut spec = admission_base();
            json_merge(&mut spec, patch);
            spec
        };
        let bg = |settings: Value| with(json!({"strategy": {"type": "BlueGreen", "blueGreen": settings}}));
        let check = |c: Value| bg(json!({"prePromotionChecks": [c]}));
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            ("image", with(json!({"image": ":"})), "spec.image", "image must be an image reference"),
            ("zero-interval", with(json!({"monitoring": {"interval": "0s"}})), "spec.monitoring.interval", "must be above zero"),
            ("unordered", with(json!({"monitoring": {"interval": "1s1m"}})), "spec.monitoring.interval", "should match"),
            ("grpc-metrics", json!({"image": PAUSE_IMAGE, "ports": [{"name": "grpc", "port": 8080, "protocol": "grpc"}], "monitoring": {}}), "spec.monitoring", "the scraped port speaks grpc"),
            ("secret-slash", with(json!({"secrets": [{"name": "a", "mountPath": "/etc/a"}, {"name": "b", "mountPath": "/etc/a/"}]})), "spec.secrets[1].mountPath", "trailing '/'"),
            ("secret-nested", with(json!({"secrets": [{"name": "a", "mountPath": "/etc/a"}, {"name": "b", "mountPath": "/etc/a/b"}]})), "spec.secrets", "inside another secret"),
            ("config-tmp", with(json!({"config": {"name": "c", "mountPath": "/tmp"}})), "spec.config.mountPath", "must not be /tmp"),
            ("secret-tmp", with(json!({"secrets": [{"name": "a", "mountPath": "/tmp/keys"}]})), "spec.secrets", "must not be /tmp"),
            ("auto-seconds", bg(json!({"autoPromotionEnabled": true, "autoPromotionSeconds": 30})), "spec.strategy.blueGreen.autoPromotionSeconds", "applies only with autoPromotionEnabled: false"),
            ("preview-max", {
                let mut s = bg(json!({"previewReplicaCount": 5}));
                s["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 3});
                s["resources"] = json!({"requests": {"cpu": "100m"}});
                s
            }, "spec.strategy.blueGreen.previewReplicaCount", "must not exceed autoscaling.maxReplicas"),
            ("bg-under-rolling", with(json!({"strategy": {"type": "RollingUpdate", "blueGreen": {}}})), "spec.strategy.blueGreen", "applies only with type BlueGreen"),
            ("rolling-under-bg", with(json!({"strategy": {"type": "BlueGreen", "rollingUpdate": {}}})), "spec.strategy.rollingUpdate", "applies only with type RollingUpdate"),
            ("threshold", check(json!({"name": "p", "prometheus": {"address": "http://p:9090", "query": "up", "thresholdRange": {"min": 2, "max": 1}}})), "thresholdRange", "min must not exceed"),
            ("grpc-port", check(json!({"name": "g", "grpcHealth": {"port": "nope"}})), "spec.strategy.blueGreen", "needs a grpc port"),
            ("failure-limit", check(json!({"name": "w", "count": 2, "failureLimit": 2, "webhook": {"url": "http://w"}})), "failureLimit", "must be less than count"),
            ("pod-labels", with(json!({"pod": {"labels": {"app.kubernetes.io/managed-by": "me"}}})), "spec.pod.labels", "nor the labels Ferry and the Deployment set"),
            ("dup-ports", with(json!({"ports": [{"name": "grpc", "port": 1}, {"name": "grpc", "port": 2}]})), "spec.ports", "port names must be unique"),
            ("dup-env", with(json!({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]})), "spec.env", "env names must be unique"),
            ("dup-deps", with(json!({"dependsOn": [{"name": "x"}, {"name": "x"}]})), "spec.dependsOn", "dependsOn names must be unique"),
            ("dup-mounts", with(json!({"secrets": [{"name": "a", "mountPath": "/etc/a"}, {"name": "b", "mountPath": "/etc/a"}]})), "spec.secrets", "mountPath must be unique"),
            ("dup-checks", bg(json!({"prePromotionChecks": [{"name": "w", "webhook": {"url": "http://w"}}, {"name": "w", "webhook": {"url": "http://v"}}]})), "spec.strategy.blueGreen.prePromotionChecks", "names must be unique"),
            ("pdb-percent", with(json!({"disruptionBudget": {"minAvailable": "150%"}})), "spec.disruptionBudget", "a percentage from 0% to 100%"),
            ("pdb-negative", with(json!({"disruptionBudget": {"maxUnavailable": -1}})), "spec.disruptionBudget", "a percentage from 0% to 100%"),
            ("pdb-word", with(json!({"disruptionBudget": {"minAvailable": "abc"}})), "spec.disruptionBudget", "a percentage from 0% to 100%"),
            ("quantity", with(json!({"resources": {"requests": {"memory": "lots"}}})), "spec.resources", "non-negative quantity"),
            ("behavior", with(json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 2, "behavior": {"scaleUp": {"selectPolicy": "Often"}}}, "resources": {"requests": {"cpu": "100m"}}})), "spec.autoscaling.behavior.scaleUp", "selectPolicy is Max, Min or Disabled"),
            ("self-dependency", with(json!({"dependsOn": [{"name": "self-dependency"}]})), "spec.dependsOn", "cannot depend on itself"),
        ];
        for (name, spec, field, message) in &cases {
            assert_refused(&ctx, name, spec, field, message).await;
        }
        // A blue-green name whose NAME-preview would not be a DNS label.
        let long = format!("a{}", "b".repeat(55));
        assert_refused(&ctx, &long, &bg(json!({})), "spec.strategy.type", "at most 55 characters").await;
        let list = ctx.microservices().list(&Default::default()).await.expect("list");
        assert!(list.items.is_empty(), "no refused object was stored");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_gracefully_stopped_leader_hands_over_to_the_standby_within_two_seconds() {
    in_namespace("msvc-handover", |ctx: TestContext| async move {
        // The chart's defaults: a 15 s lease renewed 5 s before it expires. A standby that only
        // noticed the release at the lease's expiry would wait up to 15 s.
        let ns = ctx.namespace.clone();
        let args = |id: &'static str| {
            vec!["--leader-election", "true", "--identity", id, "--lease-namespace", ns.as_str()]
        };
        let mut a = OperatorProcess::start(&ns, "op-a", &args("op-a"));
        let mut b = OperatorProcess::start(&ns, "op-b", &args("op-b"));
        let leases: Api<Lease> = ctx.api();
        let holder = || async {
            let lease = leases.get("ferry-operator").await.ok()?;
            lease.spec?.holder_identity
        };
        let first = wait_until("a leader", DEFAULT_TIMEOUT, holder)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ctx.create_microservice("one", plain_spec(&ctx)).await.expect("create");
        ctx.wait_for_condition("one", "Available", "True").await;
        // Both are up: the standby has made its first attempt (it logged that it waits).
        let (leader, standby, standby_id) = if first == "op-a" {
            (&mut a, &b, "op-b")
        } else {
            (&mut b, &a, "op-a")
        };
        wait_until("the standby waiting for the lease", DEFAULT_TIMEOUT, || async {
            standby.log_text().contains("waiting for the leader lease").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        let stopping = Instant::now();
        let code = leader.terminate().await;
        let exited = stopping.elapsed();
        assert_eq!(code, Some(0), "a graceful stop exits 0");
        let second = wait_until("the standby to hold the lease", DEFAULT_TIMEOUT, || async {
            holder().await.filter(|h| h == standby_id)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let took = stopping.elapsed();
        assert_eq!(second, standby_id);
        ctx.create_microservice("two", plain_spec(&ctx)).await.expect("create");
        ctx.wait_for_condition("two", "Available", "True").await;
        let serving = stopping.elapsed();
        eprintln!(
            "handover: leader exited {exited:?} after SIGTERM; standby held the lease {took:?} after SIGTERM; a new MicroService was Available {serving:?} after SIGTERM"
        );
        assert!(
            took <= Duration::from_secs(2),
            "the standby took over {took:?} after SIGTERM (the leader exited after {exited:?})"
        );
    })
    .await;
}
