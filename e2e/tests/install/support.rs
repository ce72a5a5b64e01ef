//! Paths, the external tools (from `scripts/tools.sh`), rendering and YAML helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Release name and namespace every render uses (the kustomize base is rendered with them).
pub const RELEASE: &str = "agentry";
pub const NAMESPACE: &str = "agentry-system";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

pub fn chart() -> PathBuf {
    root().join("helm/agentry")
}

pub fn full_values() -> PathBuf {
    chart().join("ci/full-values.yaml")
}

/// A tool installed by `scripts/tools.sh`. Missing tools fail the test (never skip it): CI
/// installs them, and a silently skipped install test would hide a broken chart.
pub fn tool(relative: &str) -> PathBuf {
    let path = root().join(".tools").join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/tools.sh` (or `make tools`) to install helm, kubectl and \
         kubernetes-validate into .tools/",
        path.display()
    );
    path
}

/// A fresh scratch directory under the target dir.
pub fn scratch(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-{}-{label}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn helm_command() -> Command {
    let mut cmd = Command::new(tool("bin/helm"));
    // Keep helm's cache and config away from the user's home and from concurrent runs.
    let home = scratch("helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .current_dir(root());
    cmd
}

fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {shown}: {e}"))
}

/// `helm ARGS`; the output, whether it succeeded or not.
pub fn helm(args: &[&str]) -> Output {
    let mut cmd = helm_command();
    cmd.args(args);
    run(cmd)
}

/// `helm ARGS`, which must succeed; its stdout.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `helm template` of the chart with extra arguments; the raw YAML.
pub fn template_yaml(extra: &[&str]) -> String {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// `helm template` of the chart; the objects.
pub fn template(extra: &[&str]) -> Vec<Value> {
    documents(&template_yaml(extra))
}

/// The chart rendered with its defaults (CRDs included), rendered once per test run.
pub fn default_render() -> &'static [Value] {
    static RENDER: OnceLock<Vec<Value>> = OnceLock::new();
    RENDER.get_or_init(|| template(&["--include-crds"]))
}

/// The chart rendered with `ci/full-values.yaml` (CRDs included).
pub fn full_render() -> &'static [Value] {
    static RENDER: OnceLock<Vec<Value>> = OnceLock::new();
    RENDER.get_or_init(|| {
        let values = full_values();
        template(&["--include-crds", "-f", values.to_str().expect("utf-8 path")])
    })
}

/// `kubectl kustomize DIR`; the objects.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    let mut cmd = Command::new(tool("bin/kubectl"));
    cmd.arg("kustomize").arg(dir).current_dir(root());
    let out = run(cmd);
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// The non-empty documents of a YAML stream.
pub fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("not valid YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// A YAML file's documents.
pub fn read_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    documents(&text)
}

pub fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// `group/version` split into the group ("" for the core group).
pub fn group(obj: &Value) -> &str {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group)
}

/// Objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

/// The one object of a kind.
pub fn one<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    let found = of_kind(objects, wanted);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {wanted}, found {}",
        found.len()
    );
    found[0]
}

/// Sorted `Kind/name` of every object, for readable assertions.
pub fn inventory(objects: &[Value]) -> Vec<String> {
    let mut all: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", kind(o), name(o)))
        .collect();
    all.sort();
    all
}

/// An environment variable of a container, by name.
pub fn env<'a>(container: &'a Value, var: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == var))
        .unwrap_or_else(|| panic!("container {} has no env {var}", container["name"]))
}
