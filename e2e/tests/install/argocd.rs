//! manifests/argocd: the platform Application, the tenants ApplicationSet and the health checks
//! of the agentry.dev kinds (Lua, run here with Lua 5.1 as Argo CD runs them).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::schemas::validate_all;
use crate::support::{self, kind, read_documents};

fn argocd() -> Vec<Value> {
    let dir = support::root().join("manifests/argocd");
    let mut all = Vec::new();
    for file in ["platform.yaml", "tenants.yaml", "argocd-cm-health.yaml"] {
        all.extend(read_documents(&dir.join(file)));
    }
    all
}

fn find<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted)
        .unwrap_or_else(|| panic!("no {wanted} in manifests/argocd"))
}

#[test]
fn argocd_manifests_are_valid() {
    validate_all("argocd", &argocd());
}

#[test]
fn platform_application_installs_the_chart_with_valid_values() {
    let objects = argocd();
    let app = find(&objects, "Application");
    let source = &app["spec"]["source"];
    let path = source["path"].as_str().unwrap();
    assert!(
        support::root().join(path).join("Chart.yaml").is_file(),
        "{path} is no chart"
    );
    let options: Vec<&str> = app["spec"]["syncPolicy"]["syncOptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        options.contains(&"ServerSideApply=true"),
        "CRDs need server-side apply"
    );
    // The values in the Application must pass the chart's schema.
    let file = support::scratch("argocd-values").join("values.yaml");
    std::fs::write(
        &file,
        serde_json::to_string(&source["helm"]["valuesObject"]).unwrap(),
    )
    .unwrap();
    let objects = support::template(&["-f", file.to_str().unwrap()]);
    assert!(objects.iter().any(|o| kind(o) == "PrometheusRule"));
}

#[test]
fn applicationset_makes_one_application_per_tenant_folder() {
    let objects = argocd();
    let set = find(&objects, "ApplicationSet");
    let generator = &set["spec"]["generators"][0]["git"];
    let pattern = generator["directories"][0]["path"].as_str().unwrap();
    let parent = pattern
        .strip_suffix("/*")
        .expect("a directory pattern `<dir>/*`");
    assert_eq!(parent, "kustomize/tenants");
    let folders = std::fs::read_dir(support::root().join(parent))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .count();
    assert!(folders >= 2, "the example layout has tenants");
    let template = &set["spec"]["template"];
    assert_eq!(template["spec"]["source"]["path"], "{{ .path.path }}");
    assert_eq!(
        template["spec"]["destination"]["namespace"],
        "tenant-{{ .path.basename }}"
    );
    assert_eq!(
        set["spec"]["syncPolicy"]["preserveResourcesOnDeletion"],
        true
    );
    assert_eq!(
        template["spec"]["project"],
        find(&objects, "AppProject")["metadata"]["name"]
    );
    // The project admits the agentry.dev kinds and nothing that could run code or grant rights.
    let project = find(&objects, "AppProject");
    let namespaced: BTreeSet<&str> = project["spec"]["namespaceResourceWhitelist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["group"], "agentry.dev");
            k["kind"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        namespaced,
        BTreeSet::from(["Agent", "Tool", "Workflow", "FeatureFlag"])
    );
}

/// The health script of each agentry.dev kind.
fn health_scripts() -> Vec<(String, String)> {
    let objects = argocd();
    let cm = find(&objects, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().unwrap();
    let kinds: Vec<String> = agentry_crds::crdgen::all()
        .iter()
        .map(|crd| crd.spec.names.kind.clone())
        .collect();
    assert_eq!(kinds.len(), 5);
    kinds
        .into_iter()
        .map(|kind| {
            let key = format!("resource.customizations.health.agentry.dev_{kind}");
            let script = data
                .get(&key)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("argocd-cm has no {key}"))
                .to_owned();
            (kind, script)
        })
        .collect()
}

/// Runs a health script on `obj`, as Argo CD does (the object in the global `obj`).
fn health(script: &str, obj: &Value) -> (String, Option<String>) {
    let lua = mlua::Lua::new();
    let value = mlua::LuaSerdeExt::to_value(&lua, obj).unwrap();
    lua.globals().set("obj", value).unwrap();
    let hs: mlua::Table = lua.load(script).eval().unwrap();
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

fn object(kind: &str, generation: i64, status: Value) -> Value {
    let mut obj = json!({
        "apiVersion": "agentry.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": generation},
    });
    if !status.is_null() {
        obj["status"] = status;
    }
    obj
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!({
        "observedGeneration": 3,
        "conditions": [
            {"type": "NamespaceReady", "status": "True", "reason": "Reconciled", "message": ""},
            {"type": "Ready", "status": status, "reason": reason, "message": message},
        ],
    })
}

#[test]
fn health_checks_read_the_ready_condition() {
    let cases = [
        (Value::Null, 3, "Progressing", None),
        (json!({"observedGeneration": 3}), 3, "Progressing", None),
        (
            ready("True", "Reconciled", "serving"),
            3,
            "Healthy",
            Some("serving"),
        ),
        (
            ready("False", "Invalid", "spec.tools: unknown tool lookup"),
            3,
            "Degraded",
            Some("spec.tools: unknown tool lookup"),
        ),
        (
            ready("False", "Error", "database unreachable"),
            3,
            "Degraded",
            Some("database unreachable"),
        ),
        (
            ready("False", "Progressing", "rolling out"),
            3,
            "Progressing",
            Some("rolling out"),
        ),
        (
            ready("False", "Waiting", "namespace pending"),
            3,
            "Progressing",
            Some("namespace pending"),
        ),
        (
            ready("False", "Suspended", "suspended by spec"),
            3,
            "Suspended",
            Some("suspended by spec"),
        ),
        (
            ready("Unknown", "Progressing", ""),
            3,
            "Progressing",
            Some(""),
        ),
        // A status written for an older spec says nothing about the current one.
        (
            ready("True", "Reconciled", "serving"),
            4,
            "Progressing",
            None,
        ),
    ];
    for (kind, script) in health_scripts() {
        for (status, generation, expected, message) in &cases {
            let obj = object(&kind, *generation, status.clone());
            let (got, got_message) = health(&script, &obj);
            assert_eq!(
                &got, expected,
                "{kind} with status {status} at generation {generation}"
            );
            if let Some(message) = message {
                assert_eq!(got_message.as_deref(), Some(*message), "{kind}: {status}");
            }
        }
    }
}
