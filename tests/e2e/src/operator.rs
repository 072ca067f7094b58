//! The Ferry operator as a real process, started by a test.
//!
//! Each test runs its own operator scoped to its namespace (`--namespace`), so
//! tests run in parallel without two operators managing the same objects. The
//! binary comes from `FERRY_OPERATOR_BIN` (set by `tests/e2e/run.sh`, which
//! builds it). Its log goes to `target/e2e-logs/` and is printed on failure.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

use crate::register_log_file;

/// A running operator; killed when dropped.
pub struct OperatorProcess {
    child: Child,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator for `namespace` with extra flags, e.g.
    /// `["--leader-election", "true"]`. `label` tells several apart in logs.
    pub fn start(namespace: &str, label: &str, extra_args: &[&str]) -> Self {
        Self::start_with_env(namespace, label, extra_args, &[])
    }

    /// [`OperatorProcess::start`] with extra environment variables, e.g. a `KUBECONFIG`
    /// holding another identity.
    pub fn start_with_env(namespace: &str, label: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = std::env::var("FERRY_OPERATOR_BIN").unwrap_or_else(|_| {
            panic!("FERRY_OPERATOR_BIN is not set: run the e2e tier with `make test-e2e`, which builds the operator")
        });
        let dir = log_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let log = dir.join(format!("{namespace}-{label}.log"));
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let mut command = Command::new(&bin);
        command.args(["--namespace", namespace, "--log-format", "json"]);
        if !extra_args.contains(&"--metrics-addr") {
            command.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let child = command
            .args(extra_args)
            .env("RUST_LOG", "info,ferry_operator=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the operator {bin}: {e}"));
        register_log_file(log.clone());
        Self { child, log }
    }

    /// The operator's pid, to signal it.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash or node loss would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM, as the kubelet does) and waits for it to exit; returns
    /// its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id()?.to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.child.wait().await.ok()?.code()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn log_dir() -> PathBuf {
    // CARGO_MANIFEST_DIR is tests/e2e; logs go to the workspace's target/.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-logs")
}
