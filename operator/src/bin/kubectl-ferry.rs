//! `kubectl ferry`: control blue-green rollouts of MicroServices.
//!
//! It only patches the MicroService (annotations, or the spec for `undo`), exactly what
//! `kubectl annotate` / `kubectl patch` would do; the operator does the rest:
//!
//! ```text
//! kubectl ferry promote NAME      # ferry.dev/promote=<preview hash>
//! kubectl ferry abort NAME        # ferry.dev/abort=<preview hash>
//! kubectl ferry retry NAME        # drop ferry.dev/abort, ferry.dev/retry=<now>
//! kubectl ferry undo NAME         # re-apply the spec of the previous revision
//! kubectl ferry status [--watch] NAME
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_operator::{
    crd::MicroService,
    keys::{
        ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION, REVISION_LABEL, SELECTOR_LABEL,
        SPEC_ANNOTATION,
    },
};
use futures::StreamExt;
use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

/// Control blue-green rollouts of Ferry MicroServices.
#[derive(Parser, Debug)]
#[command(name = "kubectl-ferry", version)]
struct Cli {
    /// Namespace (defaults to the kubeconfig's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Promote the preview revision now (skips the pause; checks still apply).
    Promote {
        /// MicroService name.
        name: String,
    },
    /// Abort the rollout; traffic stays on the active revision.
    Abort {
        /// MicroService name.
        name: String,
    },
    /// Retry an aborted rollout.
    Retry {
        /// MicroService name.
        name: String,
    },
    /// Roll back: re-apply the spec of the previous revision (switches at once inside its
    /// scale-down window).
    Undo {
        /// MicroService name.
        name: String,
    },
    /// Show the rollout state.
    Status {
        /// MicroService name.
        name: String,
        /// Keep printing on every change.
        #[arg(short, long)]
        watch: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("msvc/{0} has no rollout in progress (no preview revision)")]
    NoPreview(String),
    #[error("msvc/{0} has no previous revision to go back to")]
    NoPrevious(String),
    #[error("the previous revision's spec cannot be read: {0}")]
    BadSpec(#[from] serde_json::Error),
    #[error("watch failed: {0}")]
    Watch(#[from] watcher::Error),
}

fn preview(ms: &MicroService) -> Option<String> {
    ms.status.as_ref()?.blue_green.as_ref()?.preview_revision.as_ref().map(|r| r.hash.clone())
}

async fn annotate(
    api: &Api<MicroService>,
    name: &str,
    annotations: serde_json::Value,
) -> Result<(), PluginError> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await?;
    Ok(())
}

/// The spec of the revision before the active one: the recorded previous revision, else the newest
/// other revision Deployment.
async fn previous_spec(
    client: &Client,
    ns: &str,
    ms: &MicroService,
) -> Result<serde_json::Value, PluginError> {
    let name = ms.name_any();
    let bg = ms.status.as_ref().and_then(|s| s.blue_green.as_ref());
    let active = bg.and_then(|b| b.active_revision.as_ref()).map(|r| r.hash.clone());
    let recorded = bg.and_then(|b| b.previous_revision.as_ref()).map(|r| r.hash.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut revisions = deployments
        .list(&ListParams::default().labels(&format!("{SELECTOR_LABEL}={name},{REVISION_LABEL}")))
        .await?
        .items;
    let chosen = choose_previous(&mut revisions, active.as_deref(), recorded.as_deref())
        .ok_or_else(|| PluginError::NoPrevious(name.clone()))?;
    let raw =
        chosen.annotations().get(SPEC_ANNOTATION).ok_or_else(|| PluginError::NoPrevious(name.clone()))?;
    Ok(serde_json::from_str(raw)?)
}

/// The revision to go back to: the recorded previous revision when its Deployment exists, else the
/// newest revision that is not the active one.
fn choose_previous<'a>(
    revisions: &'a mut [Deployment],
    active: Option<&str>,
    recorded: Option<&str>,
) -> Option<&'a Deployment> {
    revisions.sort_by_key(|d| std::cmp::Reverse(d.creation_timestamp()));
    let hash_of = |d: &Deployment| d.labels().get(REVISION_LABEL).cloned();
    let position = revisions
        .iter()
        .position(|d| recorded.is_some() && hash_of(d).as_deref() == recorded)
        .or_else(|| revisions.iter().position(|d| hash_of(d).as_deref() != active))?;
    revisions.get(position)
}

fn print_status(ms: &MicroService) {
    let status = ms.status.clone().unwrap_or_default();
    println!("{}  phase={}  {}", ms.name_any(), status.phase.as_str(), status.message.unwrap_or_default());
    for c in &status.conditions {
        if ["Available", "Progressing", "Promoted", "Degraded"].contains(&c.type_.as_str()) {
            println!("  condition {}={} ({})", c.type_, c.status, c.reason);
        }
    }
    let Some(bg) = status.blue_green else {
        return;
    };
    let show = |label: &str, r: &Option<ferry_operator::crd::RevisionRef>| {
        if let Some(r) = r {
            println!("  {label:<9} {} {}", r.hash, r.image);
        }
    };
    show("active", &bg.active_revision);
    show("preview", &bg.preview_revision);
    show("previous", &bg.previous_revision);
    if let Some(d) = &bg.scale_down_deadline {
        println!("  previous scales down at {d}");
    }
    if let Some(a) = &bg.aborted {
        println!("  aborted {} at {}: {}", a.hash, a.at, a.reason);
    }
    for c in &bg.checks {
        println!(
            "  check {}/{} {:?} ok={} failed={} {}",
            c.stage,
            c.name,
            c.verdict,
            c.successes,
            c.failures,
            c.message.clone().unwrap_or_default()
        );
    }
}

async fn run(cli: Cli) -> Result<(), PluginError> {
    let client = Client::try_default().await?;
    let ns = cli.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<MicroService> = Api::namespaced(client.clone(), &ns);
    match cli.command {
        Command::Promote { name } => {
            let ms = api.get(&name).await?;
            let hash = preview(&ms).ok_or_else(|| PluginError::NoPreview(name.clone()))?;
            annotate(&api, &name, json!({PROMOTE_ANNOTATION: hash})).await?;
            println!("msvc/{name}: promotion of revision {hash} requested");
        }
        Command::Abort { name } => {
            let ms = api.get(&name).await?;
            let hash = preview(&ms).ok_or_else(|| PluginError::NoPreview(name.clone()))?;
            annotate(&api, &name, json!({ABORT_ANNOTATION: hash})).await?;
            println!("msvc/{name}: rollout of revision {hash} aborted");
        }
        Command::Retry { name } => {
            let now = Timestamp::from_second(Timestamp::now().as_second())
                .unwrap_or(Timestamp::UNIX_EPOCH)
                .to_string();
            annotate(&api, &name, json!({ABORT_ANNOTATION: null, RETRY_ANNOTATION: now})).await?;
            println!("msvc/{name}: retry requested");
        }
        Command::Undo { name } => {
            let mut ms = api.get(&name).await?;
            let spec = previous_spec(&client, &ns, &ms).await?;
            let replicas = ms.spec.replicas;
            let paused = ms.spec.paused;
            ms.spec = serde_json::from_value(spec)?;
            ms.spec.replicas = replicas;
            ms.spec.paused = paused;
            ms.status = None;
            ms.metadata.managed_fields = None;
            // NB: a replace carries the resourceVersion, so a concurrent edit makes it fail, not vanish.
            api.replace(&name, &PostParams::default(), &ms).await?;
            println!("msvc/{name}: spec rolled back to the previous revision");
        }
        Command::Status { name, watch } => {
            let ms = api.get(&name).await?;
            print_status(&ms);
            if watch {
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut stream = watcher(api.clone(), config).applied_objects().boxed();
                let mut last = ms.status.clone();
                while let Some(ms) = stream.next().await {
                    let ms = ms?;
                    if ms.status != last {
                        last = ms.status.clone();
                        println!("---");
                        print_status(&ms);
                    }
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubectl-ferry: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn revision(hash: &str, created: i64) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.labels = Some([(REVISION_LABEL.to_string(), hash.to_string())].into());
        d.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH)));
        d
    }

    fn hash(d: Option<&Deployment>) -> Option<String> {
        d.and_then(|d| d.labels().get(REVISION_LABEL).cloned())
    }

    #[test]
    fn undo_goes_to_the_recorded_previous_revision_else_the_newest_inactive_one() {
        let mut revs = vec![revision("a", 1), revision("c", 3), revision("b", 2)];
        assert_eq!(hash(choose_previous(&mut revs, Some("c"), Some("a"))).as_deref(), Some("a"));
        assert_eq!(hash(choose_previous(&mut revs, Some("c"), None)).as_deref(), Some("b"));
        assert_eq!(hash(choose_previous(&mut revs, Some("c"), Some("gone"))).as_deref(), Some("b"));
        let mut only = vec![revision("c", 3)];
        assert!(choose_previous(&mut only, Some("c"), None).is_none());
    }

    #[test]
    fn the_cli_parses_every_command() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["kubectl-ferry", "-n", "shop", "status", "--watch", "order"]);
        assert!(matches!(cli.command, Command::Status { watch: true, .. }));
        assert_eq!(cli.namespace.as_deref(), Some("shop"));
        for verb in ["promote", "abort", "retry", "undo"] {
            Cli::parse_from(["kubectl-ferry", verb, "order"]);
        }
    }
}
