//! Status of the Agents, Tools, Workflows and FeatureFlags of a tenant. The Tenant controller
//! is their only status writer, and writes only what changed.

use std::collections::BTreeMap;
use std::fmt::Debug;

use agentry_crds::bundle::Compilation;
use agentry_crds::conditions::{find, reasons, types};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::Error;
use super::fetch::Fetched;
use super::{Context, api};
use crate::status;

/// Writes each object's status that differs from what it computes to. `tool_problems` names,
/// by tool, the header Secrets or keys it cannot read; a Tool that starts waiting for one
/// also gets a Warning Event.
pub(super) async fn write_statuses(
    ctx: &Context,
    fetched: &Fetched,
    compilation: &Compilation,
    tool_problems: &BTreeMap<String, Vec<String>>,
    now: &Time,
) -> Result<(), Error> {
    for agent in &fetched.agents {
        let next = status::agent_status(agent, compilation, now.clone());
        write(ctx, agent, agent.status.as_ref(), &next).await?;
    }
    for tool in &fetched.tools {
        let problems = tool_problems
            .get(&tool.name_any())
            .map_or(&[][..], Vec::as_slice);
        let next = status::tool_status(tool, compilation, problems, now.clone());
        let written = write(ctx, tool, tool.status.as_ref(), &next).await?;
        let waiting = find(&next.conditions, types::READY)
            .filter(|c| c.status == "False" && c.reason == reasons::WAITING);
        if let (true, Some(ready)) = (written, waiting) {
            ctx.publish_about(
                &tool.object_ref(&()),
                EventType::Warning,
                "SecretMissing",
                ready.message.clone(),
            )
            .await;
        }
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

/// Writes `next` unless it is `current`; says whether it wrote.
async fn write<K, S>(ctx: &Context, obj: &K, current: Option<&S>, next: &S) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(next) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api::apply_status(&api, obj, next).await?;
    ctx.metrics.status_written(&K::kind(&()));
    Ok(true)
}
