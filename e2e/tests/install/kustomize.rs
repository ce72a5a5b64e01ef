//! kustomize: the base is the chart rendered with its defaults (drift-checked), the overlays
//! change what they say they change, and the tenants layout holds the example tenants.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::schemas::validate_all;
use crate::support::{self, env, inventory, kind, kustomize, of_kind, one, read_documents};

const BASE_HEADER: &str = "# Generated from helm/agentry with its default values (release \"agentry\", namespace\n\
# \"agentry-system\") by `make kustomize-base`. Do not edit: change the chart and regenerate;\n\
# the install tests fail when this file and the chart disagree.\n";

/// The chart's default render as kustomize/base/agentry.yaml keeps it: without the labels that
/// only make sense under Helm, and without helm's `# Source:` comments.
fn rendered_base() -> String {
    let yaml = support::template_yaml(&[]);
    let body: Vec<&str> = yaml
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("# Source:")
                && !t.starts_with("helm.sh/chart:")
                && t != "app.kubernetes.io/managed-by: Helm"
        })
        .collect();
    format!(
        "{BASE_HEADER}{}\n",
        body.join("\n").trim_start_matches("---\n").trim_end()
    )
}

#[test]
fn kustomize_base_is_the_rendered_chart() {
    let path = support::root().join("kustomize/base/agentry.yaml");
    let expected = rendered_base();
    if std::env::var_os("AGENTRY_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is out of date with helm/agentry: run `make kustomize-base` and commit the result",
        path.display()
    );
}

fn overlay(name: &str) -> Vec<Value> {
    let objects = kustomize(&support::root().join("kustomize").join(name));
    validate_all(name, &objects);
    objects
}

fn operator(objects: &[Value]) -> (&Value, &Value) {
    let deployment = one(objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    (deployment, container)
}

#[test]
fn base_has_the_crds_the_namespace_and_the_operator() {
    let objects = overlay("base");
    let crds: BTreeSet<&str> = of_kind(&objects, "CustomResourceDefinition")
        .into_iter()
        .map(support::name)
        .collect();
    let generated: BTreeSet<String> = agentry_crds::crdgen::all()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(crds, generated.iter().map(String::as_str).collect());
    let ns = one(&objects, "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for obj in &objects {
        if ![
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&kind(obj))
        {
            assert_eq!(
                obj["metadata"]["namespace"],
                "agentry-system",
                "{}",
                support::name(obj)
            );
        }
        let labels = &obj["metadata"]["labels"];
        assert!(
            labels["helm.sh/chart"].is_null() && labels["app.kubernetes.io/managed-by"].is_null()
        );
    }
    let chart: BTreeSet<String> = inventory(&support::template(&[])).into_iter().collect();
    let base: BTreeSet<String> = inventory(&objects).into_iter().collect();
    assert!(
        chart.is_subset(&base),
        "the base lacks {:?}",
        chart.difference(&base)
    );
}

#[test]
fn dev_overlay_runs_one_debug_replica_of_a_local_image() {
    let objects = overlay("overlays/dev");
    let (deployment, container) = operator(&objects);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(env(container, "RUST_LOG")["value"], "debug");
    assert_eq!(env(container, "AGENTRY_LOG_JSON")["value"], "false");
    assert_eq!(container["image"], "agentry:dev");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        env(container, "AGENTRY_RUNTIME_IMAGE")["value"],
        "agentry:dev"
    );
    assert_eq!(
        one(&objects, "Job")["spec"]["template"]["spec"]["containers"][0]["image"],
        "agentry:dev"
    );
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
}

#[test]
fn prod_overlay_runs_two_replicas_with_resources_and_a_disruption_budget() {
    let objects = overlay("overlays/prod");
    let (deployment, container) = operator(&objects);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(pdb["metadata"]["namespace"], "agentry-system");
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(env(container, "AGENTRY_LEADER_ELECTION")["value"], "true");
}

#[test]
fn crds_kustomization_lists_every_generated_crd() {
    let path = support::root().join("manifests/crds/kustomization.yaml");
    let listed: BTreeSet<String> = read_documents(&path)[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let generated: BTreeSet<String> = agentry_crds::crdgen::all()
        .iter()
        .map(agentry_crds::crdgen::file_name)
        .collect();
    assert_eq!(listed, generated);
}

/// Objects keyed by kind/namespace/name.
fn keyed(objects: Vec<Value>) -> Vec<(String, Value)> {
    let mut keyed: Vec<(String, Value)> = objects
        .into_iter()
        .map(|o| {
            let key = format!(
                "{}/{}/{}",
                kind(&o),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                support::name(&o)
            );
            (key, o)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed
}

#[test]
fn tenants_layout_holds_the_example_tenants() {
    let root = support::root();
    let tenants_dir = root.join("kustomize/tenants");
    let all = overlay("tenants");
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(&tenants_dir).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            folders.push(entry.file_name().into_string().unwrap());
        }
    }
    folders.sort();
    assert_eq!(folders, ["acme", "globex"]);
    let mut from_folders = Vec::new();
    for tenant in &folders {
        let objects = overlay(&format!("tenants/{tenant}"));
        // One tenant per folder: the ApplicationSet makes one Application of it.
        let tenant_obj = one(&objects, "Tenant");
        assert_eq!(support::name(tenant_obj), tenant);
        let example = read_documents(&root.join(format!("manifests/examples/{tenant}.yaml")));
        let (folder, example) = (keyed(objects.clone()), keyed(example));
        let names = |k: &[(String, Value)]| k.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&folder),
            names(&example),
            "kustomize/tenants/{tenant}"
        );
        for ((key, a), (_, b)) in folder.iter().zip(&example) {
            assert_eq!(
                a, b,
                "{key} differs between kustomize/tenants/{tenant} and manifests/examples"
            );
        }
        from_folders.extend(objects);
    }
    assert_eq!(
        inventory(&all),
        inventory(&from_folders),
        "kustomize/tenants/kustomization.yaml"
    );
}
