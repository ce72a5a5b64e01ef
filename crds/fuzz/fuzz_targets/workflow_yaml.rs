//! Bytes as a YAML stream through the parser (`parse_documents`, the CRD schema checks), the
//! grouping by tenant and the bundle compiler. Whatever the input, nothing may panic, and a
//! workflow that compiles must be one the runtime can store and load again: its start node
//! exists and it survives the JSON round trip of `workflow_runs.spec`.
//!
//! The input is appended to a valid Tenant, so that Workflow documents in it are compiled
//! even when the input declares no tenant of its own.
#![no_main]

use agentry_crds::bundle::{CompiledWorkflow, compile, group_by_tenant, parse_documents};
use libfuzzer_sys::fuzz_target;

const TENANT: &str = "apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {name: fuzz}
spec:
  providers: [{name: local, type: builtin}]
  models: [{name: small, provider: local}]
---
";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let yaml = format!("{TENANT}{text}");
    let (resources, _errors) = parse_documents(&yaml);
    let (sources, _diagnostics) = group_by_tenant(resources);
    for tenant in &sources {
        let compilation = compile(tenant);
        for (name, workflow) in &compilation.bundle.workflows {
            assert_eq!(&workflow.name, name);
            assert!(
                workflow.nodes.contains_key(&workflow.start),
                "workflow {name:?} compiled with a missing start node {:?}",
                workflow.start
            );
            let stored = serde_json::to_value(workflow).expect("a compiled workflow serializes");
            let loaded: CompiledWorkflow =
                serde_json::from_value(stored).expect("a stored workflow loads again");
            assert_eq!(&loaded, workflow, "workflow {name:?} changed in the JSON round trip");
        }
    }
});
