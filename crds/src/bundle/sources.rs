//! Reading resources from YAML and grouping them by tenant (dev mode, tests, fuzzing).

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Diagnostic, ObjectKind};
use crate::{Agent, FeatureFlag, Tenant, Tool, Workflow, validate};

/// One typed resource.
#[derive(Clone, Debug)]
pub enum Resource {
    /// A Tenant.
    Tenant(Box<Tenant>),
    /// An Agent.
    Agent(Box<Agent>),
    /// A Tool.
    Tool(Box<Tool>),
    /// A Workflow.
    Workflow(Box<Workflow>),
    /// A FeatureFlag.
    FeatureFlag(Box<FeatureFlag>),
}

/// A YAML document that is not a valid agentry.dev resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Zero-based index of the document in the stream.
    pub document: usize,
    /// `Kind/name` when the document got that far.
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(object) => write!(
                f,
                "document {} ({object}): {}",
                self.document + 1,
                self.message
            ),
            None => write!(f, "document {}: {}", self.document + 1, self.message),
        }
    }
}

/// The inputs of one tenant's bundle.
#[derive(Clone, Debug)]
pub struct BundleSources {
    /// The tenant.
    pub tenant: Tenant,
    /// Agents in its namespace.
    pub agents: Vec<Agent>,
    /// Tools in its namespace.
    pub tools: Vec<Tool>,
    /// Workflows in its namespace.
    pub workflows: Vec<Workflow>,
    /// FeatureFlags in its namespace.
    pub flags: Vec<FeatureFlag>,
}

impl BundleSources {
    /// Sources with only the tenant.
    pub fn new(tenant: Tenant) -> Self {
        Self {
            tenant,
            agents: vec![],
            tools: vec![],
            workflows: vec![],
            flags: vec![],
        }
    }
}

/// Parses a multi-document YAML stream. Each document is checked against the generated CRD
/// schema (types, patterns, bounds and CEL rules), as the API server would; documents of other
/// API groups are skipped, invalid ones reported, and the valid ones returned.
pub fn parse_documents(yaml: &str) -> (Vec<Resource>, Vec<ParseError>) {
    let docs: Vec<Value> = match serde_saphyr::from_multiple(yaml) {
        Ok(docs) => docs,
        Err(e) => {
            let message = format!("not valid YAML: {}", first_line(&e.to_string()));
            return (
                vec![],
                vec![ParseError {
                    document: 0,
                    object: None,
                    message,
                }],
            );
        }
    };
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        match parse_document(doc) {
            Ok(Some(resource)) => resources.push(resource),
            Ok(None) => {}
            Err((object, message)) => errors.push(ParseError {
                document: index,
                object,
                message,
            }),
        }
    }
    (resources, errors)
}

type DocError = (Option<String>, String);

fn parse_document(doc: Value) -> Result<Option<Resource>, DocError> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(group) = api_version
        .split('/')
        .next()
        .filter(|g| *g == crate::common::GROUP)
    else {
        return Ok(None);
    };
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let object = Some(format!("{kind}/{name}"));
    if api_version != format!("{group}/{}", crate::common::VERSION) {
        return Err((
            object,
            format!("apiVersion {api_version} is not served; use agentry.dev/v1alpha1"),
        ));
    }
    let kind_enum = match kind.as_str() {
        "Tenant" => ObjectKind::Tenant,
        "Agent" => ObjectKind::Agent,
        "Tool" => ObjectKind::Tool,
        "Workflow" => ObjectKind::Workflow,
        "FeatureFlag" => ObjectKind::FeatureFlag,
        other => return Err((object, format!("unknown kind {other:?}"))),
    };
    if doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err((object, "metadata.name is required".to_owned()));
    }
    let problems = validate::validate_object(kind_enum, &doc);
    if !problems.is_empty() {
        return Err((object, problems.join("; ")));
    }
    let typed = |e: serde_json::Error| (object.clone(), e.to_string());
    Ok(Some(match kind_enum {
        ObjectKind::Tenant => Resource::Tenant(Box::new(from_value(doc).map_err(typed)?)),
        ObjectKind::Agent => Resource::Agent(Box::new(from_value(doc).map_err(typed)?)),
        ObjectKind::Tool => Resource::Tool(Box::new(from_value(doc).map_err(typed)?)),
        ObjectKind::Workflow => Resource::Workflow(Box::new(from_value(doc).map_err(typed)?)),
        ObjectKind::FeatureFlag => Resource::FeatureFlag(Box::new(from_value(doc).map_err(typed)?)),
    }))
}

fn from_value<T: DeserializeOwned>(doc: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(doc)
}

/// Groups resources by the tenant whose namespace they live in. Objects outside every
/// tenant's namespace, and duplicate tenants, are reported.
pub fn group_by_tenant(resources: Vec<Resource>) -> (Vec<BundleSources>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut by_namespace: BTreeMap<String, BundleSources> = BTreeMap::new();
    let mut tenants: Vec<Tenant> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Tenant(t) => Some((**t).clone()),
            _ => None,
        })
        .collect();
    tenants.sort_by_key(|t| t.name_any());
    for tenant in tenants {
        let namespace = tenant.namespace_name();
        if let Some(existing) = by_namespace.get(&namespace) {
            diagnostics.push(Diagnostic::new(
                ObjectKind::Tenant,
                tenant.name_any(),
                "spec.namespace",
                format!(
                    "namespace {namespace} already belongs to Tenant {}",
                    existing.tenant.name_any()
                ),
            ));
            continue;
        }
        by_namespace.insert(namespace, BundleSources::new(tenant));
    }
    for resource in resources {
        let (kind, name, namespace) = match &resource {
            Resource::Tenant(_) => continue,
            Resource::Agent(o) => (ObjectKind::Agent, o.name_any(), o.namespace()),
            Resource::Tool(o) => (ObjectKind::Tool, o.name_any(), o.namespace()),
            Resource::Workflow(o) => (ObjectKind::Workflow, o.name_any(), o.namespace()),
            Resource::FeatureFlag(o) => (ObjectKind::FeatureFlag, o.name_any(), o.namespace()),
        };
        let Some(sources) = namespace.as_ref().and_then(|ns| by_namespace.get_mut(ns)) else {
            let where_ =
                namespace.map_or_else(|| "no namespace".to_owned(), |ns| format!("namespace {ns}"));
            diagnostics.push(Diagnostic::new(
                kind,
                name,
                "metadata.namespace",
                format!("{where_} belongs to no Tenant"),
            ));
            continue;
        };
        match resource {
            Resource::Agent(o) => sources.agents.push(*o),
            Resource::Tool(o) => sources.tools.push(*o),
            Resource::Workflow(o) => sources.workflows.push(*o),
            Resource::FeatureFlag(o) => sources.flags.push(*o),
            Resource::Tenant(_) => {}
        }
    }
    (by_namespace.into_values().collect(), diagnostics)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
