//! The agentry.dev API: custom resource types, their validation, and the bundle compiler that
//! turns a tenant's resources into the one document its runtime serves. No I/O.

pub mod agent;
pub mod bundle;
pub mod common;
pub mod conditions;
pub mod crdgen;
pub mod flag;
pub mod reference;
pub mod schema;
pub mod tenant;
pub mod tool;
pub mod validate;
pub mod workflow;

pub use agent::{Agent, AgentSpec, AgentStatus};
pub use bundle::{Diagnostic, ObjectKind, RuntimeBundle, compile};
pub use flag::{FeatureFlag, FeatureFlagSpec, FeatureFlagStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};
pub use tool::{Tool, ToolSpec, ToolStatus};
pub use workflow::{Workflow, WorkflowSpec, WorkflowStatus};
