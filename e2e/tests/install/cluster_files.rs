//! The files of the end-to-end cluster tests (e2e/cluster/, .github/workflows/e2e-k3d.yml),
//! checked offline: they are used only where a cluster exists, so a typo would otherwise
//! surface in somebody's CI run, not here.

use serde_json::Value;

use crate::schemas::validate_all;
use crate::support::{self, name, of_kind, read_documents, root};

fn e2e_values() -> String {
    root()
        .join("e2e/cluster/values.yaml")
        .to_str()
        .unwrap()
        .to_owned()
}

fn named<'a>(objects: &'a [Value], kind: &str, wanted: &str) -> &'a Value {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| name(o) == wanted)
        .unwrap_or_else(|| panic!("no {kind}/{wanted}"))
}

#[test]
fn e2e_values_pass_lint_and_the_schema_and_render_valid_objects() {
    let chart = support::chart();
    let values = e2e_values();
    let out = support::helm_ok(&["lint", "--strict", chart.to_str().unwrap(), "-f", &values]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let objects = support::template(&["-f", &values]);
    validate_all("e2e values", &objects);
    let operator = named(&objects, "Deployment", "agentry-operator");
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    // The image the workflow builds and imports, never pulled.
    assert_eq!(container["image"], "agentry:e2e");
    assert_eq!(container["imagePullPolicy"], "Never");
    let rendered = serde_json::to_string(container).unwrap();
    assert!(
        rendered.contains("postgres.agentry-e2e.svc.cluster.local"),
        "the database host reaches the operator: {rendered}"
    );
    assert!(
        rendered.contains("nats://nats.agentry-e2e.svc.cluster.local:4222"),
        "the NATS URL reaches the operator: {rendered}"
    );
}

#[test]
fn deps_are_valid_and_match_the_values() {
    let deps = read_documents(&root().join("e2e/cluster/deps.yaml"));
    validate_all("e2e deps", &deps);
    let secret = named(&deps, "Secret", "agentry-database");
    assert_eq!(secret["metadata"]["namespace"], support::NAMESPACE);
    let url = secret["stringData"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("postgres://postgres@postgres.agentry-e2e.svc.cluster.local:5432/agentry"),
        "{url}"
    );
    let postgres = named(&deps, "StatefulSet", "postgres");
    let pg_env = &postgres["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        pg_env
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POSTGRES_HOST_AUTH_METHOD" && e["value"] == "trust")
    );
    let nats = named(&deps, "StatefulSet", "nats");
    let args: Vec<&str> = nats["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--jetstream"), "{args:?}");
    assert_eq!(of_kind(&deps, "Service").len(), 2);
}

#[test]
fn the_k3d_workflow_builds_imports_and_runs_the_cluster_suite() {
    let path = root().join(".github/workflows/e2e-k3d.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let workflow = &read_documents(&path)[0];
    assert!(workflow["jobs"].is_object(), "{workflow:#}");
    for needle in [
        "k3d cluster create",
        "docker build",
        "agentry:e2e",
        "k3d image import",
        "scripts/tools.sh",
        "AGENTRY_E2E_KUBECONFIG",
        "cargo test -p agentry-e2e --test cluster",
    ] {
        assert!(text.contains(needle), "the workflow misses `{needle}`");
    }
}
