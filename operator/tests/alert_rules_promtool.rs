//! The PrometheusRule the operator generates, read by the program it is written for: the rule
//! groups `prometheus_rule(&MicroService)` builds are written to a rule file, `promtool check
//! rules` parses them, and `promtool test rules` evaluates every alert against synthetic series
//! shaped like the real ones (the shop's gRPC metrics as the Prometheus Operator scrapes them
//! through the generated ServiceMonitor; kube-state-metrics' pod and autoscaler series), checking
//! when each alert fires and stays quiet, with its exact labels and annotations.
//!
//! `FERRY_PROMTOOL` names the promtool binary. `make unit` builds it from the Go module proxy
//! (`tests/e2e/monitoring/build.sh promtool`) and sets it; without it every test here fails.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use ferry_operator_core::{crd::MicroService, desired::prometheus_rule::prometheus_rule};
use serde_json::{Value, json};

const PROMTOOL_ENV: &str = "FERRY_PROMTOOL";
/// The services' histogram buckets (services/common/src/metrics.rs), then +Inf.
const BUCKETS: [&str; 15] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "+Inf",
];
/// Minutes of synthetic samples in every series.
const MINUTES: u32 = 40;

// ---- the MicroServices ---------------------------------------------------------------------

/// A MicroService `order` in namespace `shop` with a gRPC and a metrics port, monitored with
/// `alerts`, and autoscaled when `autoscaling` is not null.
fn order(alerts: Value, autoscaling: Value) -> MicroService {
    let mut spec = json!({
        "image": "ghcr.io/acme/order:1.0.0",
        "ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc"},
            {"name": "metrics", "port": 9090, "protocol": "http"}
        ],
        "monitoring": {"port": "metrics", "alerts": alerts}
    });
    if !autoscaling.is_null() {
        spec["autoscaling"] = autoscaling;
    }
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "MicroService",
        "metadata": {"name": "order", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": spec
    }))
    .expect("the MicroService deserialises")
}

/// The generated rule groups, as a Prometheus rule file (`{"groups": [...]}`).
fn rule_file(ms: &MicroService) -> Value {
    prometheus_rule(ms).expect("alerts are wanted").data["spec"].clone()
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_string())
        .collect()
}

// ---- synthetic series ----------------------------------------------------------------------

/// Labels the Prometheus Operator puts on a series scraped through the ServiceMonitor of
/// Service `service` in `namespace`, from pod `pod`.
fn scraped(namespace: &str, service: &str, pod: &str) -> String {
    format!(
        r#"namespace="{namespace}",service="{service}",pod="{pod}",job="{service}",endpoint="metrics",container="order",instance="10.244.0.7:9090""#
    )
}

const METHOD: &str =
    r#"grpc_type="unary",grpc_service="ferry.order.v1.OrderService",grpc_method="CreateOrder""#;

/// A counter growing by `per_minute` every minute.
fn counter(series: String, per_minute: u32) -> Value {
    json!({"series": series, "values": format!("0+{per_minute}x{MINUTES}")})
}

/// `grpc_server_handling_seconds_bucket` of `per_minute` calls a minute, each taking longer than
/// the bucket below `le` and at most `le` seconds.
fn calls_within(namespace: &str, service: &str, pod: &str, le: &str, per_minute: u32) -> Vec<Value> {
    let first = BUCKETS.iter().position(|b| *b == le).expect("a bucket bound");
    BUCKETS
        .iter()
        .enumerate()
        .map(|(i, bound)| {
            let series = format!(
                r#"grpc_server_handling_seconds_bucket{{{},{METHOD},le="{bound}"}}"#,
                scraped(namespace, service, pod)
            );
            counter(series, if i >= first { per_minute } else { 0 })
        })
        .collect()
}

/// `grpc_server_handled_total` of `per_minute` calls a minute ending with `code`.
fn handled(namespace: &str, service: &str, pod: &str, code: &str, per_minute: u32) -> Value {
    counter(
        format!(
            r#"grpc_server_handled_total{{{},{METHOD},grpc_code="{code}"}}"#,
            scraped(namespace, service, pod)
        ),
        per_minute,
    )
}

/// Labels kube-state-metrics' series carry when Prometheus scrapes it.
const KSM: &str = r#"job="kube-state-metrics",instance="10.244.0.9:8080""#;

/// `kube_pod_status_ready` of `pod` in `shop`: not ready for `not_ready_minutes`, then ready.
fn pod_ready(pod: &str, not_ready_minutes: u32) -> Vec<Value> {
    let ready_minutes = MINUTES - not_ready_minutes;
    let (not_ready, ready) = match (not_ready_minutes, ready_minutes) {
        (0, _) => (format!("0x{MINUTES}"), format!("1x{MINUTES}")),
        (_, 0) => (format!("1x{MINUTES}"), format!("0x{MINUTES}")),
        (n, r) => (format!("1x{} 0x{}", n - 1, r), format!("0x{} 1x{}", n - 1, r)),
    };
    ["false", "true", "unknown"]
        .into_iter()
        .map(|condition| {
            let values = match condition {
                "false" => not_ready.clone(),
                "true" => ready.clone(),
                _ => format!("0x{MINUTES}"),
            };
            json!({
                "series": format!(
                    r#"kube_pod_status_ready{{{KSM},namespace="shop",pod="{pod}",uid="uid-{pod}",condition="{condition}"}}"#
                ),
                "values": values
            })
        })
        .collect()
}

/// kube-state-metrics' current and maximum replicas of autoscaler `hpa` in `shop`.
fn autoscaler(hpa: &str, current: u32, max: u32) -> Vec<Value> {
    [
        ("kube_horizontalpodautoscaler_status_current_replicas", current),
        ("kube_horizontalpodautoscaler_spec_max_replicas", max),
    ]
    .into_iter()
    .map(|(metric, value)| {
        json!({
            "series": format!(r#"{metric}{{{KSM},namespace="shop",horizontalpodautoscaler="{hpa}"}}"#),
            "values": format!("{value}x{MINUTES}")
        })
    })
    .collect()
}

// ---- expectations --------------------------------------------------------------------------

/// One promtool test group: input series and the alerts expected at some times.
struct Scenario {
    name: &'static str,
    series: Vec<Value>,
    checks: Vec<Value>,
}

impl Scenario {
    fn new(name: &'static str, series: Vec<Value>) -> Self {
        Self { name, series, checks: vec![] }
    }

    /// At `minute`, `alert` is firing exactly as `expected` lists (nothing, when empty).
    fn expect(mut self, minute: u32, alert: &str, expected: Vec<Value>) -> Self {
        self.checks.push(json!({
            "eval_time": format!("{minute}m"),
            "alertname": alert,
            "exp_alerts": expected
        }));
        self
    }

    fn into_test_group(self) -> Value {
        json!({
            "name": self.name,
            "interval": "1m",
            "input_series": self.series,
            "alert_rule_test": self.checks
        })
    }
}

/// A firing alert: the labels of its expression's result, then the rule's `labels`, and its two
/// annotations, `summary` and `description` (which shows the value that fired).
fn firing(labels: Value, summary: &str, value: &str) -> Value {
    json!({
        "exp_labels": labels,
        "exp_annotations": {
            "summary": summary,
            "description": format!("msvc/order in namespace shop: the value is {value}")
        }
    })
}

/// Labels on every alert of `order` with no extra labels.
fn labels(severity: &str, more: Value) -> Value {
    let mut labels = json!({"microservice": "order", "severity": severity});
    for (k, v) in more.as_object().expect("labels").iter() {
        labels[k] = v.clone();
    }
    labels
}

// ---- running promtool ----------------------------------------------------------------------

fn promtool() -> PathBuf {
    let path = std::env::var_os(PROMTOOL_ENV).unwrap_or_else(|| {
        panic!(
            "{PROMTOOL_ENV} is not set: these tests run the real promtool. `make unit` builds it and \
             sets it; by hand: tests/e2e/monitoring/build.sh promtool && \
             export {PROMTOOL_ENV}=$(tests/e2e/monitoring/build.sh path promtool)"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{PROMTOOL_ENV}={} is not a file: build it with tests/e2e/monitoring/build.sh promtool",
        path.display()
    );
    path
}

fn run(promtool: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "promtool {} failed ({}) in {}:\n{}\n{}",
        args.join(" "),
        out.status,
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the rule file and a promtool test file of `scenarios` under `CARGO_TARGET_TMPDIR`
/// (JSON, which promtool reads as YAML), then runs `promtool check rules` and `promtool test
/// rules`; a failure shows promtool's output and leaves the files for reading.
fn promtool_passes(case: &str, rules: &Value, scenarios: Vec<Scenario>) {
    let promtool = promtool();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alert_rules_promtool").join(case);
    std::fs::create_dir_all(&dir).expect("test directory");
    let write = |file: &str, value: &Value| {
        let text = serde_json::to_string_pretty(value).expect("json");
        std::fs::write(dir.join(file), text).expect("write a test file");
    };
    write("rules.json", rules);
    write(
        "test.json",
        &json!({
            "rule_files": ["rules.json"],
            "evaluation_interval": "1m",
            "tests": scenarios.into_iter().map(Scenario::into_test_group).collect::<Vec<_>>()
        }),
    );
    run(&promtool, &dir, &["check", "rules", "rules.json"]);
    run(&promtool, &dir, &["test", "rules", "test.json"]);
}

// ---- the tests -----------------------------------------------------------------------------

/// What `{{ $value }}` shows for 10 errors in 100 calls a minute of one pod: Prometheus divides
/// two extrapolated rates in float64 and the description prints the value unrounded (summed over
/// two pods, the same ratio happens to come out as 0.1).
const TEN_PERCENT: &str = "0.09999999999999999";
const LATENCY: &str = "p99 gRPC latency of order is above 500ms";
const PODS: &str = "pod {{ $labels.pod }} of order is not ready";
const HPA: &str = "the autoscaler of order has run at maxReplicas; it cannot add capacity";

/// Two pods of `service` in `namespace` answering 60 calls a minute each within bucket `le`.
fn two_pods_calls(namespace: &str, service: &str, le: &str) -> Vec<Value> {
    let mut series = calls_within(namespace, service, &format!("{service}-6d4cf56db6-x2x9k"), le, 60);
    series.extend(calls_within(namespace, service, &format!("{service}-6d4cf56db6-q8w7z"), le, 60));
    series
}

#[test]
fn the_default_rules_pass_promtool_and_the_autoscaler_alert_exists_only_with_autoscaling() {
    let rules = rule_file(&order(json!({}), Value::Null));
    assert_eq!(alert_names(&rules), ["GrpcLatencyHigh", "GrpcErrorRatioHigh", "PodsNotReady"]);
    promtool_passes("defaults-check", &rules, vec![]);

    let rules = rule_file(&order(json!({}), json!({"minReplicas": 2, "maxReplicas": 4})));
    assert_eq!(
        alert_names(&rules),
        ["GrpcLatencyHigh", "GrpcErrorRatioHigh", "PodsNotReady", "AutoscalerAtMaxReplicas"]
    );
    promtool_passes("autoscaling-check", &rules, vec![]);
}

#[test]
fn grpc_latency_high_fires_when_the_services_own_p99_stays_above_500ms_for_10_minutes() {
    let rules = rule_file(&order(json!({}), Value::Null));
    let slow = firing(labels("warning", json!({"namespace": "shop"})), LATENCY, "0.995");
    promtool_passes(
        "latency-defaults",
        &rules,
        vec![
            Scenario::new(
                "calls of 0.5-1s: pending before 10m, firing after",
                two_pods_calls("shop", "order", "1"),
            )
            .expect(9, "GrpcLatencyHigh", vec![])
            .expect(12, "GrpcLatencyHigh", vec![slow.clone()])
            .expect(30, "GrpcLatencyHigh", vec![slow]),
            Scenario::new(
                "calls of 0.25-0.5s stay under the default 500ms",
                two_pods_calls("shop", "order", "0.5"),
            )
            .expect(30, "GrpcLatencyHigh", vec![]),
            Scenario::new("fast calls", two_pods_calls("shop", "order", "0.1")).expect(
                30,
                "GrpcLatencyHigh",
                vec![],
            ),
            Scenario::new(
                "slow calls through the preview Service or in another namespace are not order's",
                [two_pods_calls("shop", "order-preview", "2.5"), two_pods_calls("staging", "order", "2.5")]
                    .concat(),
            )
            .expect(30, "GrpcLatencyHigh", vec![]),
        ],
    );
}

#[test]
fn grpc_error_ratio_high_fires_per_server_failure_code_above_5_percent_for_5_minutes() {
    let rules = rule_file(&order(json!({}), Value::Null));
    let pod = "order-6d4cf56db6-x2x9k";
    let errors = |code: &str, value: &str| {
        firing(
            labels("critical", json!({"namespace": "shop", "grpc_code": code})),
            &format!("more than 5% of order's gRPC calls end with {code}"),
            value,
        )
    };
    promtool_passes(
        "error-ratio-defaults",
        &rules,
        vec![
            Scenario::new(
                "10% Unavailable: pending before 5m, firing after",
                vec![
                    handled("shop", "order", pod, "OK", 90),
                    handled("shop", "order", pod, "Unavailable", 10),
                ],
            )
            .expect(4, "GrpcErrorRatioHigh", vec![])
            .expect(8, "GrpcErrorRatioHigh", vec![errors("Unavailable", TEN_PERCENT)]),
            Scenario::new(
                "10% Internal and 10% Unknown on two pods: one alert per code",
                vec![
                    handled("shop", "order", pod, "OK", 40),
                    handled("shop", "order", "order-6d4cf56db6-q8w7z", "OK", 40),
                    handled("shop", "order", pod, "Internal", 10),
                    handled("shop", "order", "order-6d4cf56db6-q8w7z", "Unknown", 10),
                ],
            )
            .expect(
                10,
                "GrpcErrorRatioHigh",
                vec![errors("Internal", "0.1"), errors("Unknown", "0.1")],
            ),
            Scenario::new(
                "2% Unavailable stays under 5%",
                vec![
                    handled("shop", "order", pod, "OK", 98),
                    handled("shop", "order", pod, "Unavailable", 2),
                ],
            )
            .expect(30, "GrpcErrorRatioHigh", vec![]),
            Scenario::new(
                "answers to bad requests are not errors",
                vec![
                    handled("shop", "order", pod, "OK", 50),
                    handled("shop", "order", pod, "NotFound", 30),
                    handled("shop", "order", pod, "InvalidArgument", 10),
                    handled("shop", "order", pod, "ResourceExhausted", 10),
                ],
            )
            .expect(30, "GrpcErrorRatioHigh", vec![]),
            Scenario::new(
                "failures through the preview Service are not order's",
                vec![
                    handled("shop", "order", pod, "OK", 100),
                    handled("shop", "order-preview", pod, "Unavailable", 100),
                ],
            )
            .expect(30, "GrpcErrorRatioHigh", vec![]),
        ],
    );
}

#[test]
fn pods_not_ready_fires_for_each_of_the_services_pods_not_ready_for_15_minutes() {
    let rules = rule_file(&order(json!({}), Value::Null));
    let not_ready = |pod: &str| {
        firing(
            labels("warning", json!({"namespace": "shop", "pod": pod})),
            &PODS.replace("{{ $labels.pod }}", pod),
            "1",
        )
    };
    let plain = "order-6d4cf56db6-x2x9k";
    let blue_green = "order-0a1b2c3d4e-7f8b9c6d5-q8w7z";
    promtool_passes(
        "pods-defaults",
        &rules,
        vec![
            Scenario::new(
                "a plain and a blue-green pod not ready: pending before 15m, firing after",
                [
                    pod_ready(plain, MINUTES),
                    pod_ready(blue_green, MINUTES),
                    pod_ready("order-6d4cf56db6-zzzzz", 0),
                ]
                .concat(),
            )
            .expect(14, "PodsNotReady", vec![])
            .expect(16, "PodsNotReady", vec![not_ready(blue_green), not_ready(plain)]),
            Scenario::new("a pod not ready for 10 minutes, then ready, never fires", pod_ready(plain, 10))
                .expect(12, "PodsNotReady", vec![])
                .expect(30, "PodsNotReady", vec![]),
            Scenario::new(
                "pods of other workloads whose names start with order are not order's",
                [
                    pod_ready("order-api-6d4cf56db6-x2x9k", MINUTES),
                    pod_ready("orders-6d4cf56db6-x2x9k", MINUTES),
                    pod_ready("order-0a1b2c3d4e-api-6d4cf56db6-x2x9k", MINUTES),
                ]
                .concat(),
            )
            .expect(30, "PodsNotReady", vec![]),
        ],
    );
}

#[test]
fn autoscaler_at_max_replicas_fires_when_the_hpa_runs_at_max_replicas_for_15_minutes() {
    let rules = rule_file(&order(json!({}), json!({"minReplicas": 2, "maxReplicas": 4})));
    let at_max =
        firing(labels("warning", json!({"namespace": "shop", "horizontalpodautoscaler": "order"})), HPA, "4");
    promtool_passes(
        "autoscaler-defaults",
        &rules,
        vec![
            Scenario::new("at max: pending before 15m, firing after", autoscaler("order", 4, 4))
                .expect(14, "AutoscalerAtMaxReplicas", vec![])
                .expect(16, "AutoscalerAtMaxReplicas", vec![at_max]),
            Scenario::new("below max", autoscaler("order", 3, 4)).expect(
                30,
                "AutoscalerAtMaxReplicas",
                vec![],
            ),
            Scenario::new(
                "another autoscaler at max is not order's",
                [autoscaler("order", 2, 4), autoscaler("order-api", 4, 4)].concat(),
            )
            .expect(30, "AutoscalerAtMaxReplicas", vec![]),
        ],
    );
}

#[test]
fn thresholds_and_for_durations_follow_the_spec() {
    let rules = rule_file(&order(
        json!({
            "latencyP99ThresholdMs": 250, "latencyFor": "2m",
            "errorRatioThreshold": 0.01, "errorRatioFor": "1m",
            "podsNotReadyFor": "3m", "maxReplicasFor": "4m"
        }),
        json!({"minReplicas": 2, "maxReplicas": 4}),
    ));
    let pod = "order-6d4cf56db6-x2x9k";
    promtool_passes(
        "custom-thresholds",
        &rules,
        vec![
            Scenario::new("calls of 0.25-0.5s exceed 250ms", two_pods_calls("shop", "order", "0.5"))
                .expect(2, "GrpcLatencyHigh", vec![])
                .expect(
                    4,
                    "GrpcLatencyHigh",
                    vec![firing(
                        labels("warning", json!({"namespace": "shop"})),
                        "p99 gRPC latency of order is above 250ms",
                        "0.4975",
                    )],
                ),
            Scenario::new(
                "2% Unavailable exceeds 1%",
                vec![
                    handled("shop", "order", pod, "OK", 98),
                    handled("shop", "order", pod, "Unavailable", 2),
                ],
            )
            .expect(
                3,
                "GrpcErrorRatioHigh",
                vec![firing(
                    labels("critical", json!({"namespace": "shop", "grpc_code": "Unavailable"})),
                    "more than 1% of order's gRPC calls end with Unavailable",
                    "0.02",
                )],
            ),
            Scenario::new("a pod not ready for 3m", pod_ready(pod, MINUTES))
                .expect(2, "PodsNotReady", vec![])
                .expect(
                    4,
                    "PodsNotReady",
                    vec![firing(
                        labels("warning", json!({"namespace": "shop", "pod": pod})),
                        &PODS.replace("{{ $labels.pod }}", pod),
                        "1",
                    )],
                ),
            Scenario::new("at max for 4m", autoscaler("order", 4, 4))
                .expect(3, "AutoscalerAtMaxReplicas", vec![])
                .expect(
                    5,
                    "AutoscalerAtMaxReplicas",
                    vec![firing(
                        labels("warning", json!({"namespace": "shop", "horizontalpodautoscaler": "order"})),
                        HPA,
                        "4",
                    )],
                ),
        ],
    );
}

#[test]
fn chosen_error_codes_replace_the_default_ones() {
    let rules = rule_file(&order(json!({"errorCodes": ["Internal", "ResourceExhausted"]}), Value::Null));
    let pod = "order-6d4cf56db6-x2x9k";
    promtool_passes(
        "custom-error-codes",
        &rules,
        vec![
            Scenario::new(
                "10% ResourceExhausted is now an error",
                vec![
                    handled("shop", "order", pod, "OK", 90),
                    handled("shop", "order", pod, "ResourceExhausted", 10),
                ],
            )
            .expect(
                10,
                "GrpcErrorRatioHigh",
                vec![firing(
                    labels("critical", json!({"namespace": "shop", "grpc_code": "ResourceExhausted"})),
                    "more than 5% of order's gRPC calls end with ResourceExhausted",
                    TEN_PERCENT,
                )],
            ),
            Scenario::new(
                "10% Unavailable no longer is",
                vec![
                    handled("shop", "order", pod, "OK", 90),
                    handled("shop", "order", pod, "Unavailable", 10),
                ],
            )
            .expect(30, "GrpcErrorRatioHigh", vec![]),
        ],
    );
}

#[test]
fn extra_labels_reach_every_firing_alert_and_replace_the_severity() {
    let rules = rule_file(&order(
        json!({"labels": {"team": "shop", "severity": "page"}}),
        json!({"minReplicas": 2, "maxReplicas": 4}),
    ));
    let pod = "order-6d4cf56db6-x2x9k";
    // The spec's severity replaces the generated one; its team is added.
    let routed = |mut more: Value| {
        more["team"] = json!("shop");
        labels("page", more)
    };
    let series = [
        two_pods_calls("shop", "order", "1"),
        vec![handled("shop", "order", pod, "OK", 90), handled("shop", "order", pod, "Unavailable", 10)],
        pod_ready(pod, MINUTES),
        autoscaler("order", 4, 4),
    ]
    .concat();
    promtool_passes(
        "extra-labels",
        &rules,
        vec![
            Scenario::new("all four alerts firing", series)
                .expect(
                    20,
                    "GrpcLatencyHigh",
                    vec![firing(routed(json!({"namespace": "shop"})), LATENCY, "0.995")],
                )
                .expect(
                    20,
                    "GrpcErrorRatioHigh",
                    vec![firing(
                        routed(json!({"namespace": "shop", "grpc_code": "Unavailable"})),
                        "more than 5% of order's gRPC calls end with Unavailable",
                        TEN_PERCENT,
                    )],
                )
                .expect(
                    20,
                    "PodsNotReady",
                    vec![firing(
                        routed(json!({"namespace": "shop", "pod": pod})),
                        &PODS.replace("{{ $labels.pod }}", pod),
                        "1",
                    )],
                )
                .expect(
                    20,
                    "AutoscalerAtMaxReplicas",
                    vec![firing(
                        routed(json!({"namespace": "shop", "horizontalpodautoscaler": "order"})),
                        HPA,
                        "4",
                    )],
                ),
        ],
    );
}

/// `grpc_server_handled_total{grpc_code="Unavailable"}` of a pod that answered none until minute
/// 20, then 6 a minute: from then on, 6 % of its 100 calls a minute fail.
fn failing_from_minute_20(pod: &str) -> Value {
    let mut series = handled("shop", "order", pod, "Unavailable", 0);
    series["values"] = json!(format!("0x20 6+6x{}", MINUTES - 21));
    series
}

#[test]
fn a_shorter_rate_window_fires_the_error_alert_sooner_after_failures_start() {
    let pod = "order-6d4cf56db6-x2x9k";
    let series = || vec![handled("shop", "order", pod, "OK", 94), failing_from_minute_20(pod)];
    let unavailable = |value: &str| {
        firing(
            labels("critical", json!({"namespace": "shop", "grpc_code": "Unavailable"})),
            "more than 5% of order's gRPC calls end with Unavailable",
            value,
        )
    };
    // Over two minutes the ratio crosses 5 % one minute after the failures start: firing
    // (`for: 1m`) at minute 23.
    let two_minutes = rule_file(&order(json!({"errorRatioFor": "1m", "rateWindow": "2m"}), Value::Null));
    promtool_passes(
        "rate-window-2m",
        &two_minutes,
        vec![
            Scenario::new("6% Unavailable from minute 20, rates over 2m", series())
                .expect(22, "GrpcErrorRatioHigh", vec![])
                .expect(23, "GrpcErrorRatioHigh", vec![unavailable("0.06")]),
        ],
    );
    // Over the default five minutes the healthy minutes before weigh in: still quiet at minute 24,
    // firing from minute 26.
    let five_minutes = rule_file(&order(json!({"errorRatioFor": "1m"}), Value::Null));
    promtool_passes(
        "rate-window-default",
        &five_minutes,
        vec![
            Scenario::new("6% Unavailable from minute 20, rates over 5m", series())
                .expect(23, "GrpcErrorRatioHigh", vec![])
                .expect(25, "GrpcErrorRatioHigh", vec![])
                .expect(26, "GrpcErrorRatioHigh", vec![unavailable("0.06")]),
        ],
    );
}
