//! Blue-green rollouts against the local cluster: one operator per test, one namespace per test.
//!
//! On kwok, pods are fakes: they become Ready by themselves unless annotated
//! `e2e.ferry.dev/never-ready: "true"`. On kind (`make test-e2e-kind`) they run a gRPC server and
//! become Ready when the generated probe passes (`ferry_e2e::Nodes`). A new revision is made by changing an
//! environment variable.
//! Webhook checks call a tiny HTTP server the test runs on 127.0.0.1 (the operator runs on this
//! host); nothing dials a pod.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_e2e::{DEFAULT_TIMEOUT, OperatorProcess, TestContext, condition_status, in_namespace, wait_until};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const REVISION_LABEL: &str = "ferry.dev/revision";

/// A blue-green MicroService running `version` (an env var, so each version is a new revision).
fn spec(ctx: &TestContext, version: &str, blue_green: Value) -> Value {
    let mut bg = json!({"scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2});
    if let (Some(bg), Some(extra)) = (bg.as_object_mut(), blue_green.as_object()) {
        for (k, v) in extra {
            bg.insert(k.clone(), v.clone());
        }
    }
    let mut spec = ctx.nodes.workload();
    spec["replicas"] = json!(2);
    spec["env"] = json!([{"name": "VERSION", "value": version}]);
    spec["strategy"] = json!({"type": "BlueGreen", "blueGreen": bg});
    spec
}

/// The patch that rolls out `version` as a revision whose pods never become Ready.
fn never_ready_version(ctx: &TestContext, version: &str) -> Value {
    let mut patch = ctx.nodes.never_ready();
    patch["env"] = json!([{"name": "VERSION", "value": version}]);
    patch
}

/// The env patch that rolls out `version`.
fn version(version: &str) -> Value {
    json!({"env": [{"name": "VERSION", "value": version}]})
}

/// The revision the active Service selects.
async fn active_selector(ctx: &TestContext, name: &str) -> Option<String> {
    let services: Api<Service> = ctx.api();
    let svc = services.get_opt(name).await.ok()??;
    svc.spec?.selector?.get(REVISION_LABEL).cloned()
}

async fn service_annotation(ctx: &TestContext, name: &str, key: &str) -> Option<String> {
    let services: Api<Service> = ctx.api();
    let svc = services.get_opt(name).await.ok()??;
    svc.annotations().get(key).cloned()
}

/// Waits until `msvc/name` is at its current generation and `check(status)` holds.
async fn wait_status(
    ctx: &TestContext,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> DynamicObject {
    let api = ctx.microservices();
    wait_until(&format!("msvc/{name}: {what}"), DEFAULT_TIMEOUT, || async {
        let ms = api.get(name).await.ok()?;
        let current = ms.metadata.generation? == ms.data["status"]["observedGeneration"].as_i64()?;
        (current && check(&ms.data["status"])).then_some(ms)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or_default()
}

fn active_hash(status: &Value) -> String {
    status["blueGreen"]["activeRevision"]["hash"].as_str().unwrap_or_default().to_string()
}

fn preview_hash(status: &Value) -> String {
    status["blueGreen"]["previewRevision"]["hash"].as_str().unwrap_or_default().to_string()
}

fn promoted(ms: &DynamicObject) -> bool {
    condition_status(ms, "Promoted").as_deref() == Some("True")
}

/// Waits for a healthy, promoted rollout and returns the active revision hash.
async fn wait_healthy(ctx: &TestContext, name: &str) -> String {
    let ms = wait_status(ctx, name, "Healthy with no preview", |s| {
        phase(s) == "Healthy" && s["blueGreen"]["previewRevision"].is_null()
    })
    .await;
    assert!(promoted(&ms), "Promoted condition is True when Healthy");
    let hash = active_hash(&ms.data["status"]);
    assert_eq!(active_selector(ctx, name).await.as_deref(), Some(hash.as_str()));
    hash
}

async fn deployment(ctx: &TestContext, name: &str, hash: &str) -> Option<Deployment> {
    let deployments: Api<Deployment> = ctx.api();
    deployments.get_opt(&format!("{name}-{hash}")).await.ok()?
}

fn replicas(d: &Deployment) -> (i32, i32) {
    (
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default(),
        d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or_default(),
    )
}

async fn wait_replicas(ctx: &TestContext, name: &str, hash: &str, want: i32) {
    wait_until(&format!("deployment {name}-{hash} at {want} replicas"), DEFAULT_TIMEOUT, || async {
        let d = deployment(ctx, name, hash).await?;
        (replicas(&d).0 == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn annotate(ctx: &TestContext, name: &str, annotations: Value) {
    ctx.microservices()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap_or_else(|e| panic!("annotate msvc/{name}: {e}"));
}

/// Events with `reason` in the test's namespace, once there is at least one (0 if none came within
/// the default timeout). NB: the operator writes the status before it publishes the Events of the
/// same transition, so a test that just saw the status must wait for them.
async fn event_count(ctx: &TestContext, reason: &str) -> usize {
    let events: Api<Event> = ctx.api();
    let count = || async {
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().filter(|e| e.reason.as_deref() == Some(reason)).count())
            .unwrap_or_default()
    };
    let _ = wait_until(&format!("a {reason} Event"), DEFAULT_TIMEOUT, || async {
        (count().await > 0).then_some(())
    })
    .await;
    count().await
}

/// A loopback HTTP server answering every request with the current status code; counts requests.
struct Webhook {
    url: String,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

impl Webhook {
    async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
        let addr = listener.local_addr().expect("webhook addr");
        let code = Arc::new(AtomicU16::new(status));
        let calls = Arc::new(AtomicUsize::new(0));
        let (c, n) = (code.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (c, n) = (c.clone(), n.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let _ = stream.read(&mut buf).await;
                    n.fetch_add(1, Ordering::SeqCst);
                    let code = c.load(Ordering::SeqCst);
                    let reply =
                        format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url: format!("http://{addr}/check"), status: code, calls }
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_new_version_is_switched_to_only_when_fully_available_and_blue_scales_down_after_the_delay() {
    in_namespace("bg-happy", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({}))).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        let preview: Api<Service> = ctx.api();
        assert!(preview.get_opt("shop-preview").await.expect("get").is_some());

        let started = Instant::now();
        ctx.patch_microservice("shop", version("2")).await;
        // Poll until the switch: whenever the selector names the new revision, all of it is available.
        let green = wait_until("the active selector switches", DEFAULT_TIMEOUT, || async {
            let selected = active_selector(&ctx, "shop").await?;
            assert!(!selected.is_empty(), "the active selector is never empty");
            if selected == blue {
                return None;
            }
            let d = deployment(&ctx, "shop", &selected).await.expect("green exists");
            let (want, available) = replicas(&d);
            assert!(
                want == 2 && available >= 2,
                "switched to a revision that is not fully available: {want}/{available}"
            );
            Some(selected)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // Blue stays up for the scale-down delay, then goes to zero.
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue kept");
        assert_eq!(replicas(&blue_d).0, 2, "blue keeps its pods right after the switch");
        wait_replicas(&ctx, "shop", &blue, 0).await;
        let switched_at: k8s_openapi::jiff::Timestamp =
            service_annotation(&ctx, "shop", "ferry.dev/switched-at")
                .await
                .expect("switched-at")
                .parse()
                .expect("time");
        let now = k8s_openapi::jiff::Timestamp::now();
        assert!(now.duration_since(switched_at).as_secs_f64() >= 1.0, "blue scaled down before its delay");
        let ms = wait_status(&ctx, "shop", "Healthy on green", |s| {
            phase(s) == "Healthy" && active_hash(s) == green
        })
        .await;
        assert!(promoted(&ms));
        assert_eq!(event_count(&ctx, "Switched").await, 1);
        assert_eq!(
            ms.data["status"]["selector"],
            format!("ferry.dev/microservice=shop,ferry.dev/revision={green}")
        );
        eprintln!("happy path: rollout took {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_paused_rollout_waits_for_a_manual_promotion() {
    in_namespace("bg-paused", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({}))).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", json!({"paused": true, "env": [{"name": "VERSION", "value": "2"}]}))
            .await;
        let ms = wait_status(&ctx, "shop", "Paused", |s| phase(s) == "Paused").await;
        let green = preview_hash(&ms.data["status"]);
        assert!(!green.is_empty() && green != blue);
        assert!(!promoted(&ms));
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));
        // The preview Service selects green only.
        let services: Api<Service> = ctx.api();
        let preview = services.get("shop-preview").await.expect("preview");
        assert_eq!(
            preview.spec.and_then(|s| s.selector).and_then(|s| s.get(REVISION_LABEL).cloned()),
            Some(green.clone())
        );
        annotate(&ctx, "shop", json!({"ferry.dev/promote": green})).await;
        ctx.wait_for_condition("shop", "Promoted", "True").await;
        assert_eq!(active_selector(&ctx, "shop").await, Some(green));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_green_that_never_becomes_ready_is_aborted_at_the_deadline_and_traffic_never_moves() {
    in_namespace("bg-deadline", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let bg = json!({"progressDeadlineSeconds": 4, "progressDeadlineAbort": true});
        ctx.create_microservice("shop", spec(&ctx, "1", bg)).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", never_ready_version(&ctx, "2")).await;
        let api = ctx.microservices();
        let ms = wait_until("aborted at the deadline", DEFAULT_TIMEOUT, || async {
            assert_eq!(
                active_selector(&ctx, "shop").await.as_deref(),
                Some(blue.as_str()),
                "traffic never moves to the unready revision"
            );
            let ms = api.get("shop").await.ok()?;
            (ms.data["status"]["blueGreen"]["aborted"]["reason"] == "ProgressDeadlineExceeded").then_some(ms)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(phase(&ms.data["status"]), "Degraded");
        assert_eq!(condition_status(&ms, "Degraded").as_deref(), Some("True"));
        assert_eq!(condition_status(&ms, "Available").as_deref(), Some("True"));
        assert_eq!(condition_status(&ms, "Promoted").as_deref(), Some("False"));
        let green = preview_hash(&ms.data["status"]);
        // The aborted revision goes to zero after abortScaleDownDelaySeconds; blue stays.
        wait_replicas(&ctx, "shop", &green, 0).await;
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue");
        assert_eq!(replicas(&blue_d).0, 2);
        assert!(event_count(&ctx, "RolloutAborted").await >= 1);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn an_aborted_rollout_can_be_retried() {
    in_namespace("bg-abort-retry", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({"autoPromotionEnabled": false})))
            .await
            .expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "Paused", |s| phase(s) == "Paused").await;
        let green = preview_hash(&ms.data["status"]);
        annotate(&ctx, "shop", json!({"ferry.dev/abort": green})).await;
        let ms = wait_status(&ctx, "shop", "Aborted", |s| phase(s) == "Aborted").await;
        assert_eq!(ms.data["status"]["blueGreen"]["aborted"]["reason"], "Requested");
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));
        wait_replicas(&ctx, "shop", &green, 0).await;

        // Retry: drop the abort, mark the retry, and ask for promotion.
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        annotate(
            &ctx,
            "shop",
            json!({"ferry.dev/abort": null, "ferry.dev/retry": now, "ferry.dev/promote": green}),
        )
        .await;
        let ms = wait_status(&ctx, "shop", "Healthy on green", |s| {
            phase(s) == "Healthy" && active_hash(s) == green
        })
        .await;
        assert!(promoted(&ms));
        assert_eq!(active_selector(&ctx, "shop").await, Some(green));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn re_applying_the_previous_spec_inside_the_scale_down_window_switches_back_at_once() {
    in_namespace("bg-fast-rollback", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({"scaleDownDelaySeconds": 40})))
            .await
            .expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", version("2")).await;
        let green =
            wait_status(&ctx, "shop", "switched", |s| !active_hash(s).is_empty() && active_hash(s) != blue)
                .await;
        let green = active_hash(&green.data["status"]);
        let started = Instant::now();
        ctx.patch_microservice("shop", version("1")).await;
        wait_until("switched back to blue", DEFAULT_TIMEOUT, || async {
            (active_selector(&ctx, "shop").await.as_deref() == Some(blue.as_str())).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "fast rollback took {took:?}");
        assert_eq!(
            service_annotation(&ctx, "shop", "ferry.dev/switch-reason").await.as_deref(),
            Some("FastRollback")
        );
        // Blue was never scaled down.
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue");
        assert_eq!(replicas(&blue_d).0, 2);
        let ms =
            wait_status(&ctx, "shop", "Healthy on blue", |s| phase(s) == "Healthy" && active_hash(s) == blue)
                .await;
        assert_eq!(ms.data["status"]["blueGreen"]["previousRevision"]["hash"], green.as_str());
        assert!(event_count(&ctx, "FastRollback").await >= 1);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_failing_webhook_check_blocks_promotion_and_a_passing_one_allows_it() {
    in_namespace("bg-webhook", |ctx: TestContext| async move {
        let hook = Webhook::start(500).await;
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let checks = json!({"prePromotionChecks": [
            {"name": "smoke", "intervalSeconds": 1, "count": 2, "webhook": {"url": hook.url}}
        ]});
        ctx.create_microservice("shop", spec(&ctx, "1", checks)).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        assert_eq!(hook.calls(), 0, "no checks on the first revision");

        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "aborted by the failing check", |s| {
            s["blueGreen"]["aborted"]["reason"] == "PrePromotionCheckFailed"
        })
        .await;
        assert_eq!(phase(&ms.data["status"]), "Degraded");
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));
        let results = &ms.data["status"]["blueGreen"]["checks"];
        assert_eq!(results[0]["verdict"], "Failed", "{results}");
        assert!(hook.calls() >= 1);

        // A passing webhook lets version 3 through.
        hook.set(200);
        ctx.patch_microservice("shop", version("3")).await;
        let ms = wait_status(&ctx, "shop", "Healthy on version 3", |s| {
            phase(s) == "Healthy" && active_hash(s) != blue && s["blueGreen"]["aborted"].is_null()
        })
        .await;
        let results = &ms.data["status"]["blueGreen"]["checks"];
        assert_eq!(results[0]["verdict"], "Passed", "{results}");
        assert_eq!(results[0]["successes"], 2, "{results}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_failing_post_promotion_check_switches_traffic_back() {
    in_namespace("bg-post-rollback", |ctx: TestContext| async move {
        let hook = Webhook::start(503).await;
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let checks = json!({"postPromotionChecks": [
            {"name": "canary", "intervalSeconds": 1, "webhook": {"url": hook.url}}
        ]});
        ctx.create_microservice("shop", spec(&ctx, "1", checks)).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "rolled back", |s| {
            s["blueGreen"]["aborted"]["reason"] == "PostPromotionCheckFailed"
        })
        .await;
        assert_eq!(phase(&ms.data["status"]), "Degraded");
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));
        assert_eq!(
            service_annotation(&ctx, "shop", "ferry.dev/switch-reason").await.as_deref(),
            Some("RollBack")
        );
        assert_eq!(event_count(&ctx, "RolledBack").await, 1);
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue");
        assert_eq!(replicas(&blue_d).0, 2, "blue was kept up during the post-promotion check");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn an_operator_killed_at_each_phase_finishes_the_rollout_after_restart_without_a_second_switch() {
    in_namespace("bg-kill", |ctx: TestContext| async move {
        let hook = Webhook::start(200).await;
        let bg = json!({
            "scaleDownDelaySeconds": 4,
            "prePromotionChecks": [{"name": "smoke", "intervalSeconds": 1, "count": 3, "webhook": {"url": hook.url}}]
        });
        let mut operator = OperatorProcess::start(&ctx.namespace, "op-0", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", bg)).await.expect("create");
        let mut active = wait_healthy(&ctx, "shop").await;
        let mut restarts = 0;
        // Kill points: right after the spec change (green scaling), while checks run, right after the
        // switch, and while blue waits for its scale-down.
        for (round, kill_at) in ["scaling", "checks", "switched", "scale-down"].into_iter().enumerate() {
            let v = format!("{}", round + 2);
            ctx.patch_microservice("shop", version(&v)).await;
            match kill_at {
                "scaling" => {}
                "checks" => {
                    wait_status(&ctx, "shop", "checks running", |s| {
                        s["conditions"].as_array().is_some_and(|c| {
                            c.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "PrePromotionChecks")
                        })
                    })
                    .await;
                }
                _ => {
                    wait_until("the switch", DEFAULT_TIMEOUT, || async {
                        let s = active_selector(&ctx, "shop").await?;
                        (s != active).then_some(())
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                    if kill_at == "scale-down" {
                        wait_status(&ctx, "shop", "waiting for scale-down", |s| {
                            !s["blueGreen"]["scaleDownDeadline"].is_null()
                        })
                        .await;
                    }
                }
            }
            operator.kill().await;
            restarts += 1;
            let switched_before = service_annotation(&ctx, "shop", "ferry.dev/switched-at").await;
            operator = OperatorProcess::start(&ctx.namespace, &format!("op-{restarts}"), &[]);
            let ms = wait_status(&ctx, "shop", &format!("Healthy on version {v}"), |s| {
                phase(s) == "Healthy" && active_hash(s) != active && s["blueGreen"]["previousRevision"].is_null()
            })
            .await;
            let next = active_hash(&ms.data["status"]);
            if kill_at == "switched" || kill_at == "scale-down" {
                assert_eq!(
                    service_annotation(&ctx, "shop", "ferry.dev/switched-at").await,
                    switched_before,
                    "no second switch after the restart ({kill_at})"
                );
            }
            wait_replicas(&ctx, "shop", &active, 0).await;
            assert_eq!(active_selector(&ctx, "shop").await, Some(next.clone()));
            active = next;
        }
        // Events are best effort (a kill can fall between the switch and its Event), but there is
        // never more than one switch per rollout.
        let switched = event_count(&ctx, "Switched").await;
        assert!((1..=4).contains(&switched), "{switched} Switched events for 4 rollouts");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn deleting_a_microservice_mid_rollout_leaves_no_revision_behind() {
    in_namespace("bg-delete", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({}))).await.expect("create");
        wait_healthy(&ctx, "shop").await;
        ctx.patch_microservice("shop", never_ready_version(&ctx, "2")).await;
        let ms = wait_status(&ctx, "shop", "rolling out", |s| !preview_hash(s).is_empty()).await;
        let green = preview_hash(&ms.data["status"]);
        wait_until("green exists", DEFAULT_TIMEOUT, || async { deployment(&ctx, "shop", &green).await })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ctx.microservices().delete("shop", &DeleteParams::foreground()).await.expect("delete");
        let deployments: Api<Deployment> = ctx.api();
        let services: Api<Service> = ctx.api();
        let selector = "ferry.dev/microservice=shop";
        wait_until("no revision or Service left", DEFAULT_TIMEOUT, || async {
            let d = deployments.list(&ListParams::default().labels(selector)).await.ok()?;
            let s = services.list(&ListParams::default().labels(selector)).await.ok()?;
            (d.items.is_empty() && s.items.is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn the_autoscalers_replica_count_survives_the_rollout_and_green_starts_at_it() {
    in_namespace("bg-hpa", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let mut s = spec(&ctx, "1", json!({"autoPromotionEnabled": false}));
        if let Some(o) = s.as_object_mut() {
            o.remove("replicas");
            o.insert("resources".into(), json!({"requests": {"cpu": "100m"}}));
            o.insert("autoscaling".into(), json!({"minReplicas": 2, "maxReplicas": 8}));
        }
        ctx.create_microservice("shop", s).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        // The autoscaler's decision arrives through the scale subresource.
        let scale = |n: i32| {
            let api = ctx.microservices();
            async move {
                api.patch_subresource(
                    "scale",
                    "shop",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
                .unwrap_or_else(|e| panic!("scale to {n}: {e}"));
            }
        };
        scale(4).await;
        wait_replicas(&ctx, "shop", &blue, 4).await;
        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "Paused", |s| phase(s) == "Paused").await;
        let green = preview_hash(&ms.data["status"]);
        let green_d = deployment(&ctx, "shop", &green).await.expect("green");
        assert_eq!(replicas(&green_d).0, 4, "green starts at the autoscaler's count");
        // A scale change during the rollout goes to green, never to blue.
        scale(5).await;
        wait_replicas(&ctx, "shop", &green, 5).await;
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue");
        assert_eq!(replicas(&blue_d).0, 4, "blue keeps its count during the rollout");
        annotate(&ctx, "shop", json!({"ferry.dev/promote": green})).await;
        let ms = wait_status(&ctx, "shop", "Healthy on green", |s| {
            phase(s) == "Healthy" && active_hash(s) == green
        })
        .await;
        assert_eq!(ms.data["spec"]["replicas"], 5, "the replica count survived");
        assert_eq!(ms.data["status"]["replicas"], 5);
        let hpa: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> = ctx.api();
        let hpa = hpa.get("shop").await.expect("hpa");
        assert_eq!(hpa.spec.scale_target_ref.kind, "MicroService");
        wait_replicas(&ctx, "shop", &blue, 0).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn switching_between_rolling_update_and_blue_green_keeps_a_selector_and_cleans_up() {
    in_namespace("bg-migrate", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        let mut s = spec(&ctx, "1", json!({}));
        if let Some(o) = s.as_object_mut() {
            o.remove("strategy");
        }
        ctx.create_microservice("shop", s).await.expect("create");
        ctx.wait_for_condition("shop", "Available", "True").await;
        let deployments: Api<Deployment> = ctx.api();
        assert!(deployments.get_opt("shop").await.expect("get").is_some());

        // To blue-green: the plain Deployment serves until the first revision is available.
        ctx.patch_microservice(
            "shop",
            json!({"strategy": {"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 2}}}),
        )
        .await;
        let services: Api<Service> = ctx.api();
        let active = wait_until("the first revision serves", DEFAULT_TIMEOUT, || async {
            let svc = services.get("shop").await.ok()?;
            let selector = svc.spec?.selector?;
            assert!(!selector.is_empty(), "the selector is never empty");
            let hash = selector.get(REVISION_LABEL)?.clone();
            let d = deployment(&ctx, "shop", &hash).await?;
            let (want, available) = replicas(&d);
            assert!(available >= want && want == 2, "switched to an unavailable revision");
            Some(hash)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        wait_until("the plain Deployment is gone", DEFAULT_TIMEOUT, || async {
            deployments.get_opt("shop").await.ok()?.is_none().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wait_healthy(&ctx, "shop").await, active);

        // Back to a rolling update: the revisions and the preview Service go once it is available.
        ctx.patch_microservice("shop", json!({"strategy": {"type": "RollingUpdate", "blueGreen": null}}))
            .await;
        let selector = "ferry.dev/microservice=shop";
        wait_until("only the plain Deployment and Service left", DEFAULT_TIMEOUT, || async {
            let d = deployments.list(&ListParams::default().labels(selector)).await.ok()?;
            let names: Vec<_> = d.items.iter().map(|d| d.name_any()).collect();
            let preview = services.get_opt("shop-preview").await.ok()?;
            (names == ["shop"] && preview.is_none()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let ms = ctx.wait_for_condition("shop", "Available", "True").await;
        assert!(ms.data["status"]["blueGreen"].is_null());
        assert_eq!(ms.data["status"]["selector"], "ferry.dev/microservice=shop");
    })
    .await;
}

/// Removes the active Service's `ferry.dev/active-revision` annotation, as `kubectl annotate svc
/// NAME ferry.dev/active-revision-` does.
async fn drop_active_annotation(ctx: &TestContext, name: &str) {
    let services: Api<Service> = ctx.api();
    services
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/active-revision": null}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("remove the active-revision annotation of svc/{name}: {e}"));
}

/// How the active Service is tampered with.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// `kubectl delete svc NAME`.
    Delete,
    /// `kubectl annotate svc NAME ferry.dev/active-revision-`.
    RemoveAnnotation,
}

/// Tampers with the active Service and waits for the operator's answer: the revision the first
/// rewrite of the Service selects.
async fn tamper_and_wait(ctx: &TestContext, how: Tamper) -> String {
    let services: Api<Service> = ctx.api();
    let before = services.get("shop").await.expect("svc");
    match how {
        Tamper::Delete => {
            services.delete("shop", &DeleteParams::default()).await.expect("delete the active Service");
        }
        Tamper::RemoveAnnotation => drop_active_annotation(ctx, "shop").await,
    }
    // The first Service the operator writes afterwards is its decision.
    let answer = wait_until(&format!("the operator's answer to {how:?}"), DEFAULT_TIMEOUT, || async {
        let svc = services.get_opt("shop").await.ok()??;
        let rewritten = match how {
            Tamper::Delete => svc.uid() != before.uid(),
            Tamper::RemoveAnnotation => svc.annotations().contains_key("ferry.dev/active-revision"),
        };
        rewritten.then_some(svc)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let selected =
        answer.spec.and_then(|s| s.selector).and_then(|s| s.get(REVISION_LABEL).cloned()).unwrap_or_default();
    let annotated = answer
        .metadata
        .annotations
        .unwrap_or_default()
        .get("ferry.dev/active-revision")
        .cloned()
        .unwrap_or_default();
    assert_eq!(selected, annotated, "selector and annotation agree after {how:?}");
    selected
}

/// Tampers with the active Service in both ways, in the given order, while a rollout of v2 waits
/// (paused with a ready v2, or with a v2 that never becomes ready), and checks that the operator
/// puts the Service back on v1, the revision the status records as promoted, and never scales v1
/// down.
async fn the_active_service_is_restored_to_the_promoted_revision(
    ctx: TestContext,
    ready: bool,
    order: [Tamper; 2],
) {
    let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
    ctx.create_microservice("shop", spec(&ctx, "1", json!({"autoPromotionEnabled": false})))
        .await
        .expect("create");
    let blue = wait_healthy(&ctx, "shop").await;
    let v2 = if ready { version("2") } else { never_ready_version(&ctx, "2") };
    ctx.patch_microservice("shop", v2).await;
    let waiting = if ready { "Paused" } else { "Progressing" };
    let ms = wait_status(&ctx, "shop", waiting, |s| phase(s) == waiting && !preview_hash(s).is_empty()).await;
    let green = preview_hash(&ms.data["status"]);
    wait_until("green's Deployment", DEFAULT_TIMEOUT, || async { deployment(&ctx, "shop", &green).await })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    for how in order {
        let selected = tamper_and_wait(&ctx, how).await;
        assert_eq!(
            selected, blue,
            "after {how:?} the Service selects the promoted revision, not the unpromoted {green}"
        );
        let blue_d = deployment(&ctx, "shop", &blue).await.expect("blue");
        assert_eq!(replicas(&blue_d).0, 2, "blue keeps its pods after {how:?}");
    }
    let ms = wait_status(&ctx, "shop", "still waiting on green", |s| phase(s) == waiting).await;
    assert!(!promoted(&ms), "status: {}", ms.data["status"]);
    assert_eq!(active_hash(&ms.data["status"]), blue);
    assert_eq!(preview_hash(&ms.data["status"]), green);
    assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));

    if ready {
        // The rollout still finishes normally once promoted.
        annotate(&ctx, "shop", json!({"ferry.dev/promote": green})).await;
        ctx.wait_for_condition("shop", "Promoted", "True").await;
        assert_eq!(active_selector(&ctx, "shop").await, Some(green));
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn deleting_or_unannotating_the_active_service_of_a_paused_rollout_keeps_traffic_on_the_promoted_revision()
 {
    in_namespace("bg-svc-restore", |ctx: TestContext| async move {
        the_active_service_is_restored_to_the_promoted_revision(
            ctx,
            true,
            [Tamper::Delete, Tamper::RemoveAnnotation],
        )
        .await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn deleting_or_unannotating_the_active_service_never_moves_traffic_to_a_revision_that_is_not_ready() {
    in_namespace("bg-svc-restore-unready", |ctx: TestContext| async move {
        the_active_service_is_restored_to_the_promoted_revision(
            ctx,
            false,
            [Tamper::RemoveAnnotation, Tamper::Delete],
        )
        .await;
    })
    .await;
}

/// A hand edit of a revision Deployment: another replica count and another image.
async fn edit_revision_by_hand(ctx: &TestContext, name: &str, replicas: i32, image: &str) {
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "shop", "image": image}]}}
            }})),
        )
        .await
        .unwrap_or_else(|e| panic!("edit deployment/{name} by hand: {e}"));
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Waits until revision `hash` runs `replicas` pods of the test workload's image again.
async fn wait_repaired(ctx: &TestContext, hash: &str, replicas: i32) {
    let image = ctx.nodes.image();
    wait_until(
        &format!("revision {hash} repaired to {replicas} replicas of {image}"),
        DEFAULT_TIMEOUT,
        || async {
            let d = deployment(ctx, "shop", hash).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas);
            (want == Some(replicas) && image_of(&d) == image).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn revision_deployments_scaled_or_re_imaged_by_hand_are_repaired_mid_rollout_and_after() {
    in_namespace("bg-drift", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({"autoPromotionEnabled": false})))
            .await
            .expect("create");
        let blue = wait_healthy(&ctx, "shop").await;

        // The serving revision of a healthy MicroService.
        edit_revision_by_hand(&ctx, &format!("shop-{blue}"), 6, "registry.k8s.io/pause:3.9").await;
        wait_repaired(&ctx, &blue, 2).await;

        // Mid-rollout: the active revision (not the current spec's) and the preview revision.
        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "Paused", |s| phase(s) == "Paused").await;
        let green = preview_hash(&ms.data["status"]);
        edit_revision_by_hand(&ctx, &format!("shop-{blue}"), 5, "registry.k8s.io/pause:3.9").await;
        edit_revision_by_hand(&ctx, &format!("shop-{green}"), 4, "registry.k8s.io/pause:3.8").await;
        wait_repaired(&ctx, &blue, 2).await;
        wait_repaired(&ctx, &green, 2).await;
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));

        annotate(&ctx, "shop", json!({"ferry.dev/promote": green})).await;
        let ms = wait_status(&ctx, "shop", "Healthy on green", |s| {
            phase(s) == "Healthy" && active_hash(s) == green
        })
        .await;
        assert!(promoted(&ms));
        wait_repaired(&ctx, &green, 2).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make test-e2e"]
async fn a_new_revision_that_a_quota_keeps_from_starting_pods_is_degraded_with_the_quota_message() {
    in_namespace("bg-quota", |ctx: TestContext| async move {
        let _operator = OperatorProcess::start(&ctx.namespace, "operator", &[]);
        ctx.create_microservice("shop", spec(&ctx, "1", json!({}))).await.expect("create");
        let blue = wait_healthy(&ctx, "shop").await;
        // Room for blue's two pods and nothing more.
        let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = ctx.api();
        let quota = serde_json::from_value(json!({
            "metadata": {"name": "pods"},
            "spec": {"hard": {"pods": "2"}}
        }))
        .expect("quota");
        quotas.create(&Default::default(), &quota).await.expect("create the quota");
        wait_until("the quota counts blue's pods", DEFAULT_TIMEOUT, || async {
            let q = quotas.get("pods").await.ok()?;
            let used = q.status?.used?.get("pods")?.0.clone();
            (used == "2").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

        ctx.patch_microservice("shop", version("2")).await;
        let ms = wait_status(&ctx, "shop", "Degraded with ReplicaFailure", |s| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "ReplicaFailure"
                })
            })
        })
        .await;
        let degraded = ferry_e2e::condition(&ms, "Degraded").expect("Degraded").clone();
        let message = degraded["message"].as_str().unwrap_or_default();
        let green = preview_hash(&ms.data["status"]);
        assert!(message.contains("exceeded quota"), "{message}");
        assert!(message.contains(&green), "the message names the revision: {message}");
        assert_eq!(phase(&ms.data["status"]), "Degraded");
        assert_eq!(active_selector(&ctx, "shop").await, Some(blue.clone()));

        // Room again: the rollout finishes and the condition clears.
        quotas.delete("pods", &DeleteParams::default()).await.expect("delete the quota");
        let ms = wait_status(&ctx, "shop", "Healthy on green", |s| {
            phase(s) == "Healthy" && active_hash(s) == green
        })
        .await;
        assert_eq!(condition_status(&ms, "Degraded").as_deref(), Some("False"));
    })
    .await;
}
