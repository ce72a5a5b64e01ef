//! The shipped examples (`manifests/examples/`) and the API reference examples are admitted by
//! the schema and compile cleanly; a broken object is left out with a diagnostic while the rest
//! of the tenant still compiles; the bundle is tamper-evident and carries no secret values.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

use std::path::Path;

use agentry_crds::bundle::{
    BundleSources, Compilation, ObjectKind, Resource, compile, group_by_tenant, parse_documents,
};
use agentry_crds::reference::EXAMPLES;
use agentry_crds::validate::validate_object;
use kube::ResourceExt;
use serde_json::Value;

fn example_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "acme.yaml and globex.yaml");
    files
}

fn kind_of(doc: &Value) -> ObjectKind {
    match doc["kind"].as_str() {
        Some("Tenant") => ObjectKind::Tenant,
        Some("Agent") => ObjectKind::Agent,
        Some("Tool") => ObjectKind::Tool,
        Some("Workflow") => ObjectKind::Workflow,
        Some("FeatureFlag") => ObjectKind::FeatureFlag,
        other => panic!("unexpected kind {other:?}"),
    }
}

/// Every example resource, parsed and schema-checked.
fn resources() -> Vec<Resource> {
    let mut out = Vec::new();
    for (path, text) in example_files() {
        let (parsed, errors) = parse_documents(&text);
        assert!(errors.is_empty(), "{path}: {errors:?}");
        out.extend(parsed);
    }
    out
}

/// The examples grouped by tenant, with no grouping diagnostics.
fn tenants() -> Vec<BundleSources> {
    let (tenants, diagnostics) = group_by_tenant(resources());
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    tenants
}

fn tenant(name: &str) -> BundleSources {
    tenants()
        .into_iter()
        .find(|t| t.tenant.name_any() == name)
        .unwrap_or_else(|| panic!("no tenant {name}"))
}

#[test]
fn every_example_document_is_admitted_by_the_schema() {
    let mut count = 0;
    for (path, text) in example_files() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let problems = validate_object(kind_of(doc), doc);
            assert!(
                problems.is_empty(),
                "{path} {}: {problems:?}",
                doc["metadata"]["name"]
            );
            count += 1;
        }
    }
    assert!(count >= 15, "only {count} example documents");
}

#[test]
fn every_reference_example_is_admitted_by_the_schema() {
    assert_eq!(EXAMPLES.len(), 5);
    for (kind, text) in EXAMPLES {
        let doc: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(doc["kind"], kind);
        let problems = validate_object(kind_of(&doc), &doc);
        assert!(problems.is_empty(), "{kind}: {problems:?}");
        let (parsed, errors) = parse_documents(text);
        assert!(errors.is_empty() && parsed.len() == 1, "{kind}: {errors:?}");
    }
}

#[test]
fn every_example_tenant_compiles_with_no_diagnostics() {
    let tenants = tenants();
    let names: Vec<String> = tenants.iter().map(|t| t.tenant.name_any()).collect();
    assert_eq!(names, ["acme", "globex"]);
    for sources in &tenants {
        let c = compile(sources);
        assert!(
            c.diagnostics.is_empty(),
            "{}: {:#?}",
            sources.tenant.name_any(),
            c.diagnostics
        );
        assert!(c.bundle.verify_hash());
        assert_eq!(c.bundle.agents.len(), sources.agents.len());
        assert_eq!(c.bundle.tools.len(), sources.tools.len());
        assert_eq!(c.bundle.workflows.len(), sources.workflows.len());
    }
}

#[test]
fn acme_is_a_complete_support_tenant() {
    let c = compile(&tenant("acme"));
    let b = &c.bundle;
    assert_eq!(b.tenant.namespace, "tenant-acme");
    assert_eq!(b.tenant.default_agent.as_deref(), Some("triage"));
    assert_eq!(b.tenant.limits.monthly_budget_micros, Some(500_000_000));
    let agents: Vec<&str> = b.agents.keys().map(String::as_str).collect();
    assert_eq!(agents, ["billing", "general", "triage"]);
    let approval: Vec<&str> = b
        .tools
        .values()
        .filter(|t| t.require_approval)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(approval, ["issue-refund"]);
    assert!(b.workflows.contains_key("refund"));
    assert!(b.workflows.contains_key("ticket-triage"));
    assert!(
        b.workflows["refund"]
            .nodes
            .values()
            .any(|n| n.approval.is_some()),
        "the refund workflow waits for approval"
    );
    let ten_percent: Vec<&str> = b
        .flags
        .values()
        .filter(|f| f.rollout.iter().any(|s| s.weight == 10))
        .map(|f| f.key.as_str())
        .collect();
    assert!(!ten_percent.is_empty(), "a flag rolls out to 10%");
    for key in ten_percent {
        let total: u32 = b.flags[key].rollout.iter().map(|s| s.weight).sum();
        assert_eq!(total, 100, "{key}");
    }
}

#[test]
fn globex_is_a_separate_tenant() {
    let acme = compile(&tenant("acme"));
    let globex = compile(&tenant("globex"));
    assert_eq!(globex.bundle.tenant.namespace, "tenant-globex");
    assert!(globex.bundle.agents.contains_key("assistant"));
    assert!(!globex.bundle.agents.contains_key("billing"));
    assert_ne!(acme.bundle.hash, globex.bundle.hash);
}

fn diagnostic_mentions(c: &Compilation, kind: ObjectKind, name: &str, text: &str) -> bool {
    c.diagnostics_for(kind, name)
        .iter()
        .any(|d| d.message.contains(text) || d.to_string().contains(text))
}

#[test]
fn an_agent_naming_a_missing_tool_is_left_out_and_the_rest_compiles() {
    let mut acme = tenant("acme");
    let clean = compile(&acme);
    let triage = acme
        .agents
        .iter_mut()
        .find(|a| a.name_any() == "triage")
        .unwrap();
    triage.spec.tools.push("no-such-tool".to_owned());
    let c = compile(&acme);

    let about_triage = c.diagnostics_for(ObjectKind::Agent, "triage");
    assert_eq!(about_triage.len(), 1, "{:#?}", c.diagnostics);
    let d = about_triage[0];
    assert!(d.message.contains("\"no-such-tool\""), "{d}");
    assert!(d.message.contains("does not exist"), "{d}");
    assert_eq!(d.field.as_deref(), Some("spec.tools[2]"));
    assert!(d.to_string().contains("triage"), "{d}");

    assert!(!c.bundle.agents.contains_key("triage"));
    assert!(c.bundle.agents.contains_key("billing"));
    assert!(c.bundle.agents.contains_key("general"));
    assert_eq!(c.bundle.tools, clean.bundle.tools);
    assert_eq!(c.bundle.workflows, clean.bundle.workflows);
    assert_eq!(c.bundle.flags, clean.bundle.flags);
    // The tenant's default agent is gone, which the tenant is told about.
    assert_eq!(c.bundle.tenant.default_agent, None);
    assert!(diagnostic_mentions(
        &c,
        ObjectKind::Tenant,
        "acme",
        "triage"
    ));
    assert!(c.bundle.verify_hash());
    assert_ne!(c.bundle.hash, clean.bundle.hash);
}

#[test]
fn a_workflow_using_an_agent_that_became_invalid_is_left_out() {
    let mut acme = tenant("acme");
    let general = acme
        .agents
        .iter_mut()
        .find(|a| a.name_any() == "general")
        .unwrap();
    general.spec.model.name = Some("no-such-model".to_owned());
    let c = compile(&acme);

    assert!(diagnostic_mentions(
        &c,
        ObjectKind::Agent,
        "general",
        "no-such-model"
    ));
    // ticket-triage asks `general` directly.
    let wf = c.diagnostics_for(ObjectKind::Workflow, "ticket-triage");
    assert!(
        wf.iter()
            .any(|d| d.message.contains("\"general\"") && d.message.contains("is invalid")),
        "{:#?}",
        c.diagnostics
    );
    assert!(!c.bundle.workflows.contains_key("ticket-triage"));
    // billing hands off to general, and refund asks billing: the chain is followed to the end.
    assert!(diagnostic_mentions(
        &c,
        ObjectKind::Agent,
        "billing",
        "\"general\""
    ));
    assert!(diagnostic_mentions(
        &c,
        ObjectKind::Workflow,
        "refund",
        "\"billing\""
    ));
    assert!(c.bundle.workflows.is_empty());
    assert!(c.bundle.agents.is_empty());
    // Tools and flags do not depend on agents.
    assert_eq!(c.bundle.tools.len(), 5);
    assert_eq!(c.bundle.flags.len(), 2);
    assert!(c.bundle.verify_hash());
}

#[test]
fn the_bundle_hash_verifies_and_detects_tampering() {
    let c = compile(&tenant("acme"));
    assert!(c.bundle.verify_hash());
    assert_eq!(c.bundle.hash.len(), 64);
    assert_eq!(compile(&tenant("acme")).bundle.hash, c.bundle.hash);
    let mut tampered = c.bundle.clone();
    tampered.tenant.limits.monthly_budget_micros = Some(1);
    assert!(!tampered.verify_hash());
    let mut tampered = c.bundle.clone();
    tampered
        .tools
        .get_mut("issue-refund")
        .unwrap()
        .require_approval = false;
    assert!(!tampered.verify_hash());
}

#[test]
fn the_bundle_carries_secret_references_not_secret_values() {
    let c = compile(&tenant("acme"));
    let json: Value = serde_json::from_str(&c.bundle.to_canonical_json()).unwrap();
    for tool in ["lookup-order", "issue-refund"] {
        let headers = json["tools"][tool]["http"]["headers"].as_array().unwrap();
        let auth = headers
            .iter()
            .find(|h| h["name"] == "Authorization")
            .unwrap_or_else(|| panic!("{tool}: an Authorization header"));
        assert_eq!(
            auth["valueFrom"]["secretKeyRef"]["name"], "acme-api",
            "{tool}"
        );
        assert_eq!(auth["valueFrom"]["secretKeyRef"]["key"], "token", "{tool}");
        assert!(auth.get("value").is_none(), "{tool}: no inline value");
    }
    // No header anywhere carries an inline credential.
    let text = c.bundle.to_canonical_json();
    assert!(!text.to_lowercase().contains("bearer"));
}
