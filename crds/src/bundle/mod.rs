//! The runtime bundle: everything a tenant's runtime serves, compiled from its resources.
//!
//! The operator writes it to a ConfigMap; the runtime's dev mode compiles it from YAML. The
//! same [`compile`] runs in both places, so what runs locally is what runs in the cluster.

mod checks;
mod compile;
mod graph;
mod hash;
mod sources;
mod types;

pub use checks::{compile_cel, compile_template, validate_json_schema};
pub use compile::{Compilation, compile};
pub use graph::{WorkflowGraph, unbounded_cycle};
pub use hash::{canonical_json, sha256, sha256_hex};
pub use sources::{BundleSources, ParseError, Resource, group_by_tenant, parse_documents};
pub use types::*;

use serde::{Deserialize, Serialize};

/// The kinds of the agentry.dev API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A Tenant.
    Tenant,
    /// An Agent.
    Agent,
    /// A Tool.
    Tool,
    /// A Workflow.
    Workflow,
    /// A FeatureFlag.
    FeatureFlag,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tenant => "Tenant",
            Self::Agent => "Agent",
            Self::Tool => "Tool",
            Self::Workflow => "Workflow",
            Self::FeatureFlag => "FeatureFlag",
        })
    }
}

/// A problem with one object. Invalid objects are left out of the bundle; the rest compiles.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Kind of the object.
    pub kind: ObjectKind,
    /// Name of the object.
    pub name: String,
    /// Path of the offending field, such as `spec.tools[1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic on `field` of the object.
    pub fn new(
        kind: ObjectKind,
        name: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field: String = field.into();
        Self {
            kind,
            name: name.into(),
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} {}: {field}: {}", self.kind, self.name, self.message),
            None => write!(f, "{} {}: {}", self.kind, self.name, self.message),
        }
    }
}
