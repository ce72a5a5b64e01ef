//! Test fixtures: a small tenant with valid and invalid objects, as YAML so that they read
//! like what a user applies.

use agentry_crds::bundle::{BundleSources, Compilation, Resource, compile, parse_documents};
use agentry_crds::{Agent, FeatureFlag, Tenant, Tool, Workflow};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A tenant named `acme` in `tenant-acme` with one builtin provider and one model.
pub(crate) const TENANT: &str = r#"
apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {name: acme, uid: 0b8c3a52-0000-4000-8000-000000000001, generation: 1}
spec:
  displayName: Acme Corp
  plan: pro
  providers: [{name: local, type: builtin}]
  models: [{name: small, provider: local, inputPricePerMTokUsd: "0.15", outputPricePerMTokUsd: "0.60"}]
"#;

/// A valid agent, tool, workflow and flag in the tenant's namespace.
pub(crate) const OBJECTS: &str = r#"
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {name: triage, namespace: tenant-acme, generation: 2}
spec:
  model: {name: small}
  tools: [clock]
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: clock, namespace: tenant-acme, generation: 1}
spec:
  description: The current time.
  type: builtin
  builtin: {name: current_time}
---
apiVersion: agentry.dev/v1alpha1
kind: Workflow
metadata: {name: hello, namespace: tenant-acme, generation: 1}
spec:
  start: answer
  nodes:
    - id: answer
      agent: {name: triage, prompt: "Say hello."}
      next: done
    - id: done
      end: {result: {ok: "yes"}}
---
apiVersion: agentry.dev/v1alpha1
kind: FeatureFlag
metadata: {name: support, namespace: tenant-acme, generation: 1}
spec:
  flags:
    - key: greeting-v2
      variants: {"on": true, "off": false}
      defaultVariant: "off"
"#;

/// An agent whose model is not in the tenant's catalog.
pub(crate) const INVALID_AGENT: &str = r#"
apiVersion: agentry.dev/v1alpha1
kind: Agent
metadata: {name: broken, namespace: tenant-acme, generation: 3}
spec:
  model: {name: gpt-nonexistent}
"#;

/// Parsed fixture objects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Objects {
    pub agents: Vec<Agent>,
    pub tools: Vec<Tool>,
    pub workflows: Vec<Workflow>,
    pub flags: Vec<FeatureFlag>,
}

/// Parses fixture YAML; panics on anything the schema refuses (a broken fixture).
pub(crate) fn parse(yaml: &str) -> (Vec<Tenant>, Objects) {
    let (resources, errors) = parse_documents(yaml);
    assert!(errors.is_empty(), "fixture does not parse: {errors:?}");
    let mut tenants = vec![];
    let mut objects = Objects::default();
    for r in resources {
        match r {
            Resource::Tenant(t) => tenants.push(*t),
            Resource::Agent(a) => objects.agents.push(*a),
            Resource::Tool(t) => objects.tools.push(*t),
            Resource::Workflow(w) => objects.workflows.push(*w),
            Resource::FeatureFlag(f) => objects.flags.push(*f),
        }
    }
    (tenants, objects)
}

/// The fixture tenant.
pub(crate) fn tenant() -> Tenant {
    parse(TENANT).0.remove(0)
}

/// The valid objects, plus the invalid agent when asked.
pub(crate) fn objects(with_invalid: bool) -> Objects {
    let mut objects = parse(OBJECTS).1;
    if with_invalid {
        objects.agents.extend(parse(INVALID_AGENT).1.agents);
    }
    objects
}

/// Compiles a tenant with objects.
pub(crate) fn compile_with(tenant: &Tenant, objects: &Objects) -> Compilation {
    compile(&BundleSources {
        tenant: tenant.clone(),
        agents: objects.agents.clone(),
        tools: objects.tools.clone(),
        workflows: objects.workflows.clone(),
        flags: objects.flags.clone(),
    })
}

/// A fixed instant.
pub(crate) fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}
