//! The bundle compiler: a tenant and its resources → a [`RuntimeBundle`] plus diagnostics.
//!
//! Pure and deterministic: objects are keyed by name, so input order never changes the bytes
//! or the hash. Each object is first checked on its own, then references are resolved to a
//! fixpoint: an object that names a missing or invalid object is left out too, with a
//! diagnostic naming both, and the rest still compiles.

mod agent;
mod flag;
mod tenant;
mod tool;
mod workflow;

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use serde::Serialize;

use super::hash::canonical_json;
use super::{
    BUNDLE_SCHEMA_VERSION, BundleSources, CompiledAgent, CompiledFlag, CompiledTool,
    CompiledWorkflow, Diagnostic, ObjectKind, RuntimeBundle,
};

/// The result of compiling one tenant.
#[derive(Debug, Clone)]
pub struct Compilation {
    /// The bundle with every valid object.
    pub bundle: RuntimeBundle,
    /// Problems, sorted; objects named here (other than the Tenant) are not in the bundle.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compilation {
    /// Diagnostics about one object.
    pub fn diagnostics_for(&self, kind: ObjectKind, name: &str) -> Vec<&Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.kind == kind && d.name == name)
            .collect()
    }
}

/// A reference from one object to another, resolved after every object was checked alone.
#[derive(Debug, Clone)]
pub(crate) struct Ref {
    pub field: String,
    pub kind: ObjectKind,
    pub target: String,
}

impl Ref {
    pub(crate) fn new(field: impl Into<String>, kind: ObjectKind, target: &str) -> Self {
        Self {
            field: field.into(),
            kind,
            target: target.to_owned(),
        }
    }
}

/// An object that passed its own checks, with the references it still needs.
pub(crate) struct Checked<T> {
    pub compiled: T,
    pub refs: Vec<Ref>,
}

/// Compiles one tenant's resources.
pub fn compile(sources: &BundleSources) -> Compilation {
    let mut diags = Vec::new();
    let tenant = tenant::compile(&sources.tenant, &mut diags);

    let mut tools = BTreeMap::new();
    for t in dedupe(ObjectKind::Tool, &sources.tools, &mut diags) {
        if let Some(c) = report(
            ObjectKind::Tool,
            &t.name_any(),
            tool::check(t, &tenant),
            &mut diags,
        ) {
            tools.insert(t.name_any(), c);
        }
    }
    let mut flags_by_object = BTreeMap::new();
    let mut flag_owner: BTreeMap<String, String> = BTreeMap::new();
    for f in dedupe(ObjectKind::FeatureFlag, &sources.flags, &mut diags) {
        let name = f.name_any();
        let result = flag::check(f, &flag_owner);
        if let Some(c) = report(ObjectKind::FeatureFlag, &name, result, &mut diags) {
            for flag in &c.compiled {
                flag_owner.insert(flag.key.clone(), name.clone());
            }
            flags_by_object.insert(name, c);
        }
    }
    let flag_keys: BTreeSet<String> = flag_owner.keys().cloned().collect();
    let mut agents = BTreeMap::new();
    for a in dedupe(ObjectKind::Agent, &sources.agents, &mut diags) {
        let result = agent::check(a, &tenant, &flag_keys);
        if let Some(c) = report(ObjectKind::Agent, &a.name_any(), result, &mut diags) {
            agents.insert(a.name_any(), c);
        }
    }
    let mut workflows = BTreeMap::new();
    for w in dedupe(ObjectKind::Workflow, &sources.workflows, &mut diags) {
        let result = workflow::check(w, &tenant);
        if let Some(c) = report(ObjectKind::Workflow, &w.name_any(), result, &mut diags) {
            workflows.insert(w.name_any(), c);
        }
    }

    let declared = Declared {
        agents: sources.agents.iter().map(ResourceExt::name_any).collect(),
        tools: sources.tools.iter().map(ResourceExt::name_any).collect(),
        workflows: sources
            .workflows
            .iter()
            .map(ResourceExt::name_any)
            .collect(),
    };
    resolve(
        &mut tools,
        &mut agents,
        &mut workflows,
        &declared,
        &mut diags,
    );

    let mut tenant = tenant;
    tenant::check_chat_defaults(
        &sources.tenant,
        &mut tenant,
        &agents,
        &workflows,
        &mut diags,
    );

    let mut bundle = RuntimeBundle {
        schema_version: BUNDLE_SCHEMA_VERSION,
        hash: String::new(),
        tenant,
        agents: agents.into_iter().map(|(k, v)| (k, v.compiled)).collect(),
        tools: tools.into_iter().map(|(k, v)| (k, v.compiled)).collect(),
        workflows: workflows
            .into_iter()
            .map(|(k, v)| (k, v.compiled))
            .collect(),
        flags: flags_by_object
            .into_values()
            .flat_map(|c| c.compiled)
            .map(|f: CompiledFlag| (f.key.clone(), f))
            .collect(),
    };
    bundle.hash = bundle.content_hash();
    diags.sort();
    diags.dedup();
    Compilation {
        bundle,
        diagnostics: diags,
    }
}

struct Declared {
    agents: BTreeSet<String>,
    tools: BTreeSet<String>,
    workflows: BTreeSet<String>,
}

impl Declared {
    fn has(&self, kind: ObjectKind, name: &str) -> bool {
        match kind {
            ObjectKind::Agent => self.agents.contains(name),
            ObjectKind::Tool => self.tools.contains(name),
            ObjectKind::Workflow => self.workflows.contains(name),
            ObjectKind::Tenant | ObjectKind::FeatureFlag => false,
        }
    }
}

/// Drops objects whose references are missing or invalid until nothing changes.
fn resolve(
    tools: &mut BTreeMap<String, Checked<CompiledTool>>,
    agents: &mut BTreeMap<String, Checked<CompiledAgent>>,
    workflows: &mut BTreeMap<String, Checked<CompiledWorkflow>>,
    declared: &Declared,
    diags: &mut Vec<Diagnostic>,
) {
    loop {
        let valid = |kind: ObjectKind,
                     name: &str,
                     t: &BTreeMap<String, Checked<CompiledTool>>,
                     a: &BTreeMap<String, Checked<CompiledAgent>>,
                     w: &BTreeMap<String, Checked<CompiledWorkflow>>| match kind
        {
            ObjectKind::Tool => t.contains_key(name),
            ObjectKind::Agent => a.contains_key(name),
            ObjectKind::Workflow => w.contains_key(name),
            ObjectKind::Tenant | ObjectKind::FeatureFlag => true,
        };
        let mut broken: Vec<(ObjectKind, String, Ref)> = Vec::new();
        let mut collect = |kind: ObjectKind, name: &String, refs: &[Ref]| {
            for r in refs {
                if !valid(r.kind, &r.target, tools, agents, workflows) {
                    broken.push((kind, name.clone(), r.clone()));
                }
            }
        };
        for (name, c) in tools.iter() {
            collect(ObjectKind::Tool, name, &c.refs);
        }
        for (name, c) in agents.iter() {
            collect(ObjectKind::Agent, name, &c.refs);
        }
        for (name, c) in workflows.iter() {
            collect(ObjectKind::Workflow, name, &c.refs);
        }
        if broken.is_empty() {
            return;
        }
        for (kind, name, r) in broken {
            let what = if declared.has(r.kind, &r.target) {
                "is invalid"
            } else {
                "does not exist"
            };
            let noun = r.kind.to_string().to_lowercase();
            diags.push(Diagnostic::new(
                kind,
                name.clone(),
                r.field.clone(),
                format!("{noun} {:?} {what}", r.target),
            ));
            match kind {
                ObjectKind::Tool => drop(tools.remove(&name)),
                ObjectKind::Agent => drop(agents.remove(&name)),
                ObjectKind::Workflow => drop(workflows.remove(&name)),
                ObjectKind::Tenant | ObjectKind::FeatureFlag => {}
            }
        }
    }
}

/// Keeps one object per name: the first by canonical content, so input order does not matter.
fn dedupe<'a, K>(kind: ObjectKind, objects: &'a [K], diags: &mut Vec<Diagnostic>) -> Vec<&'a K>
where
    K: ResourceExt + Serialize,
{
    let mut sorted: Vec<(String, String, &K)> = objects
        .iter()
        .map(|o| (o.name_any(), canonical_json(o).unwrap_or_default(), o))
        .collect();
    sorted.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out: Vec<&K> = Vec::new();
    let mut last: Option<(String, String)> = None;
    for (name, json, object) in sorted {
        match &last {
            Some((n, j)) if *n == name => {
                if *j != json {
                    diags.push(Diagnostic::new(
                        kind,
                        name.clone(),
                        "metadata.name",
                        format!("more than one {kind} is named {name:?}; only one is used"),
                    ));
                }
            }
            _ => out.push(object),
        }
        last = Some((name, json));
    }
    out
}

fn report<T>(
    kind: ObjectKind,
    name: &str,
    result: Result<Checked<T>, Vec<(String, String)>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Checked<T>> {
    match result {
        Ok(c) => Some(c),
        Err(problems) => {
            diags.extend(
                problems
                    .into_iter()
                    .map(|(field, message)| Diagnostic::new(kind, name, field, message)),
            );
            None
        }
    }
}

/// Collects `(field, message)` problems while checking one object.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<(String, String)>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }

    pub(crate) fn template(&mut self, field: impl Into<String>, source: &str) {
        if let Err(e) = super::compile_template(source) {
            self.add(field, format!("invalid template: {e}"));
        }
    }

    pub(crate) fn cel(&mut self, field: impl Into<String>, expr: &str) {
        if let Err(e) = super::compile_cel(expr) {
            self.add(field, format!("invalid CEL expression {expr:?}: {e}"));
        }
    }

    pub(crate) fn finish<T>(
        self,
        compiled: T,
        refs: Vec<Ref>,
    ) -> Result<Checked<T>, Vec<(String, String)>> {
        if self.0.is_empty() {
            Ok(Checked { compiled, refs })
        } else {
            Err(self.0)
        }
    }
}
