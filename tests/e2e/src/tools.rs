//! The command-line tools a user drives Ferry with (`kubectl`, `helm`), run as
//! processes, plus the chart and the examples of this repository.
//!
//! `kubectl` and `helm` are found on `PATH` (`tests/e2e/run.sh` puts the pinned
//! cluster binaries there). The current cluster is the one `KUBECONFIG` names.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `charts/ferry-operator`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/ferry-operator")
}

/// A scratch directory under `target/`, created if needed.
pub fn scratch_dir() -> PathBuf {
    let dir = repo_root().join("target/e2e-scratch");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Runs `program args`, feeding `stdin`, with extra `env`, and returns its output
/// whatever the exit status.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (is the cluster's bin dir on PATH? tests/e2e/run.sh sets it)")
    });
    if let Some(text) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write to {program}: {e}"));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("wait for {program}: {e}"))
}

/// Like [`run`], but panics with both streams unless the command succeeds; returns stdout.
pub fn run_ok(program: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> String {
    let out = run(program, args, stdin, env);
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A helm release of the operator chart, uninstalled when dropped (so a failing
/// test leaves no ClusterRoles behind). [`HelmRelease::uninstall`] does it
/// explicitly and reports failures.
pub struct HelmRelease {
    pub name: String,
    pub namespace: String,
    installed: bool,
}

impl HelmRelease {
    /// `helm install NAME charts/ferry-operator -n NAMESPACE --wait=false ARGS`.
    pub fn install(name: &str, namespace: &str, args: &[&str]) -> Self {
        let chart = chart_dir();
        let chart = chart.to_string_lossy();
        let mut full = vec!["install", name, &chart, "--namespace", namespace];
        full.extend_from_slice(args);
        run_ok("helm", &full, None, &[]);
        Self { name: name.into(), namespace: namespace.into(), installed: true }
    }

    /// The chart's ServiceAccount: the release's fullname, `<release>-ferry-operator` for a release
    /// name that does not contain the chart's name (see `ferry.fullname`).
    pub fn service_account(&self) -> String {
        format!("{}-ferry-operator", self.name)
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(&mut self) {
        if self.installed {
            self.installed = false;
            run_ok("helm", &["uninstall", &self.name, "--namespace", &self.namespace, "--wait"], None, &[]);
        }
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if self.installed {
            let _ = run("helm", &["uninstall", &self.name, "--namespace", &self.namespace], None, &[]);
        }
    }
}

/// A kubeconfig for the current cluster whose only credential is a bearer
/// token for ServiceAccount `account` in `namespace`, from the TokenRequest API
/// (`kubectl create token`). Written under `target/`; removed when dropped.
pub struct ServiceAccountKubeconfig {
    pub path: PathBuf,
}

impl ServiceAccountKubeconfig {
    pub fn create(namespace: &str, account: &str) -> Self {
        let token =
            run_ok("kubectl", &["create", "token", account, "-n", namespace, "--duration", "1h"], None, &[]);
        let current: Value = serde_json::from_str(&run_ok(
            "kubectl",
            &["config", "view", "--raw", "--minify", "--flatten", "-o", "json"],
            None,
            &[],
        ))
        .unwrap_or_else(|e| panic!("kubectl config view: {e}"));
        let cluster = &current["clusters"][0]["cluster"];
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {
                "server": cluster["server"],
                "certificate-authority-data": cluster["certificate-authority-data"],
            }}],
            "users": [{"name": account, "user": {"token": token.trim()}}],
            "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account, "namespace": namespace}}],
            "current-context": account,
        });
        let path = scratch_dir().join(format!("{namespace}-{account}.kubeconfig"));
        std::fs::write(&path, config.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self { path }
    }

    /// The path as a string, for `KUBECONFIG`. Panics rather than returning something a
    /// client would read as "no kubeconfig" and fall back to the admin's.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", self.path.display()))
    }
}

impl Drop for ServiceAccountKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The documents of every YAML file in `examples/shop/`, in file-name order
/// (the order `kubectl apply -f examples/shop/` applies them in).
pub fn shop_manifests() -> Vec<Value> {
    example_manifests("examples/shop")
}

/// The documents of every YAML file in `example` (a directory relative to the
/// repository, e.g. `examples/shop-async`), in file-name order; symlinked
/// files are read through.
pub fn example_manifests(example: &str) -> Vec<Value> {
    let dir = repo_root().join(example);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        docs.extend(yaml_documents(&text));
    }
    docs
}

/// The shop manifests moved into `namespace`: the Namespace object is dropped
/// and every other object's `metadata.namespace` rewritten. Returned as one
/// JSON `List` for `kubectl apply -f -`.
pub fn shop_manifests_in(namespace: &str) -> String {
    example_manifests_in("examples/shop", namespace)
}

/// [`example_manifests`] of `example` moved into `namespace`, as
/// [`shop_manifests_in`] does.
pub fn example_manifests_in(example: &str, namespace: &str) -> String {
    let items: Vec<Value> = example_manifests(example)
        .into_iter()
        .filter(|doc| doc["kind"] != "Namespace")
        .map(|mut doc| {
            doc["metadata"]["namespace"] = json!(namespace);
            doc
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The non-empty documents of a multi-document YAML text, as JSON values.
/// NB: documents are split on `---` lines (what helm and the examples write).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            let value: Value = serde_yaml::from_str(&current)
                .unwrap_or_else(|e| panic!("parse YAML document: {e}\n{current}"));
            if !value.is_null() {
                docs.push(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}
