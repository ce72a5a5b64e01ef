//! Status of the Agents, Tools, Workflows and FeatureFlags of a tenant. The Tenant controller
//! is their only status writer, and writes only what changed.

use std::fmt::Debug;

use agentry_crds::bundle::Compilation;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::Error;
use super::fetch::Fetched;
use super::{Context, api};
use crate::status;

/// Writes each object's status that differs from what it computes to.
pub(super) async fn write_statuses(
    ctx: &Context,
    fetched: &Fetched,
    compilation: &Compilation,
    now: &Time,
) -> Result<(), Error> {
    for agent in &fetched.agents {
        let next = status::agent_status(agent, compilation, now.clone());
        write(ctx, agent, agent.status.as_ref(), &next).await?;
    }
    for tool in &fetched.tools {
        let next = status::tool_status(tool, compilation, now.clone());
        write(ctx, tool, tool.status.as_ref(), &next).await?;
    }
    for workflow in &fetched.workflows {
        let next = status::workflow_status(workflow, compilation, now.clone());
        write(ctx, workflow, workflow.status.as_ref(), &next).await?;
    }
    for flag in &fetched.flags {
        let next = status::flag_status(flag, compilation, now.clone());
        write(ctx, flag, flag.status.as_ref(), &next).await?;
    }
    Ok(())
}

async fn write<K, S>(ctx: &Context, obj: &K, current: Option<&S>, next: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(next) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api::apply_status(&api, obj, next).await?;
    ctx.metrics.status_written(&K::kind(&()));
    Ok(())
}
