//! What a failed e2e test prints: the namespace's pods and events, the tail of
//! every operator log the test run registered, and on the real node the logs of
//! an operator running as a pod (the chart's).

use std::{
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client,
    api::{ListParams, LogParams},
};

fn log_files() -> &'static Mutex<Vec<PathBuf>> {
    static FILES: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    FILES.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds a log file (an operator process started by a test) to the failure dump.
pub fn register_log_file(path: PathBuf) {
    if let Ok(mut files) = log_files().lock() {
        files.push(path);
    }
}

const LOG_TAIL_LINES: usize = 60;

/// The tail of each chart-installed operator pod's log. On kwok nodes there is no
/// kubelet to ask, so the error is printed instead.
async fn dump_operator_pod_logs(pods: &Api<Pod>) {
    let selector = ListParams::default().labels("app.kubernetes.io/name=ferry-operator");
    let Ok(list) = pods.list(&selector).await else {
        return;
    };
    for pod in list.items {
        let name = pod.metadata.name.unwrap_or_default();
        let params = LogParams { tail_lines: Some(LOG_TAIL_LINES as i64), ..LogParams::default() };
        match pods.logs(&name, &params).await {
            Ok(text) => {
                eprintln!("-- last lines of pod {name}'s log");
                eprintln!("{}", text.trim_end());
            }
            Err(e) => eprintln!("-- pod {name}'s log: cannot read: {e}"),
        }
    }
}

/// Prints pods, events and registered logs for a failed test's namespace.
pub async fn dump_namespace(client: &Client, namespace: &str) {
    eprintln!("==== diagnostics for namespace {namespace} ====");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            eprintln!("-- pods ({})", list.items.len());
            for pod in list.items {
                let status = pod.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status)
                    .unwrap_or_else(|| "?".into());
                eprintln!(
                    "{:<60} phase={:<10} ready={:<6} node={}",
                    pod.metadata.name.unwrap_or_default(),
                    status.phase.unwrap_or_default(),
                    ready,
                    pod.spec.and_then(|s| s.node_name).unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("-- pods: cannot list: {e}"),
    }
    dump_operator_pod_logs(&pods).await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            eprintln!("-- events ({})", list.items.len());
            for ev in list.items {
                let obj = ev.involved_object;
                eprintln!(
                    "{} {}/{} {}: {}",
                    ev.type_.unwrap_or_default(),
                    obj.kind.unwrap_or_default(),
                    obj.name.unwrap_or_default(),
                    ev.reason.unwrap_or_default(),
                    ev.message.unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("-- events: cannot list: {e}"),
    }
    let files = log_files().lock().map(|f| f.clone()).unwrap_or_default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(LOG_TAIL_LINES);
                eprintln!("-- last {} lines of {}", lines.len() - from, file.display());
                for line in &lines[from..] {
                    eprintln!("{line}");
                }
            }
            Err(e) => eprintln!("-- {}: cannot read: {e}", file.display()),
        }
    }
    eprintln!("==== end of diagnostics ====");
}
