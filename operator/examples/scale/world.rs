//! Tenants for the benchmark, generated from `manifests/examples/acme.yaml`: the example's
//! Tenant with 5 Agents, 5 Tools, 3 Workflows and its FeatureFlag, renamed per tenant.

use agentry_crds::bundle::{BundleSources, Resource, parse_documents};
use agentry_crds::{Agent, FeatureFlag, Tenant, Tool, Workflow};
use anyhow::{Context as _, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

const ACME: &str = include_str!("../../../manifests/examples/acme.yaml");

/// The Secret the example's HTTP tools read their `Authorization` header from.
const TOOL_SECRET: &str = "acme-api";

/// One tenant's objects as a user applies them.
#[derive(Debug, Clone)]
pub struct World {
    pub tenant: Tenant,
    pub agents: Vec<Agent>,
    pub tools: Vec<Tool>,
    pub workflows: Vec<Workflow>,
    pub flags: Vec<FeatureFlag>,
    /// The Secret the tools reference, present so that every tool is Ready.
    pub tool_secret: Secret,
}

impl World {
    /// The compiler's inputs.
    pub fn sources(&self) -> BundleSources {
        BundleSources {
            tenant: self.tenant.clone(),
            agents: self.agents.clone(),
            tools: self.tools.clone(),
            workflows: self.workflows.clone(),
            flags: self.flags.clone(),
        }
    }
}

/// The example, parsed once.
#[derive(Debug, Clone)]
pub struct Template {
    world: World,
}

impl Template {
    /// Parses the example and brings it to 5 agents, 5 tools and 3 workflows (two more
    /// general agents and a second triage workflow).
    pub fn load() -> anyhow::Result<Self> {
        let (resources, errors) = parse_documents(ACME);
        if !errors.is_empty() {
            bail!("manifests/examples/acme.yaml does not parse: {errors:?}");
        }
        let mut tenant = None;
        let (mut agents, mut tools, mut workflows, mut flags) = (vec![], vec![], vec![], vec![]);
        for r in resources {
            match r {
                Resource::Tenant(t) => tenant = Some(*t),
                Resource::Agent(a) => agents.push(*a),
                Resource::Tool(t) => tools.push(*t),
                Resource::Workflow(w) => workflows.push(*w),
                Resource::FeatureFlag(f) => flags.push(*f),
            }
        }
        let general = agents
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some("general"))
            .cloned()
            .context("the example has an agent named general")?;
        for n in 2..=3 {
            let mut extra = general.clone();
            extra.metadata.name = Some(format!("general-{n}"));
            agents.push(extra);
        }
        let triage = workflows
            .iter()
            .find(|w| w.metadata.name.as_deref() == Some("ticket-triage"))
            .cloned()
            .context("the example has a workflow named ticket-triage")?;
        let mut extra = triage;
        extra.metadata.name = Some("ticket-triage-2".to_owned());
        workflows.push(extra);
        ensure!(
            agents.len() == 5 && tools.len() == 5 && workflows.len() == 3,
            "expected 5 agents, 5 tools and 3 workflows, got {}, {}, {}",
            agents.len(),
            tools.len(),
            workflows.len()
        );
        let tool_secret = Secret {
            metadata: ObjectMeta {
                name: Some(TOOL_SECRET.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(
                [(
                    "token".to_owned(),
                    ByteString(b"bench-token-0123456789".to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        Ok(Self {
            world: World {
                tenant: tenant.context("the example has a Tenant")?,
                agents,
                tools,
                workflows,
                flags,
                tool_secret,
            },
        })
    }

    /// Tenant number `i`: named `t00042`, in namespace `tenant-t00042`, as the API server
    /// holds it before the operator first sees it (uid, generation, resourceVersion set).
    pub fn tenant(&self, i: usize) -> World {
        let name = tenant_name(i);
        let namespace = format!("tenant-{name}");
        let mut w = self.world.clone();
        w.tenant.metadata.name = Some(name.clone());
        w.tenant.spec.namespace = Some(namespace.clone());
        stamp(&mut w.tenant.metadata, None, &format!("{name}-tenant"));
        let ns = Some(namespace.as_str());
        for a in &mut w.agents {
            let uid = format!(
                "{name}-agent-{}",
                a.metadata.name.clone().unwrap_or_default()
            );
            stamp(&mut a.metadata, ns, &uid);
        }
        for t in &mut w.tools {
            let uid = format!(
                "{name}-tool-{}",
                t.metadata.name.clone().unwrap_or_default()
            );
            stamp(&mut t.metadata, ns, &uid);
        }
        for wf in &mut w.workflows {
            let uid = format!(
                "{name}-workflow-{}",
                wf.metadata.name.clone().unwrap_or_default()
            );
            stamp(&mut wf.metadata, ns, &uid);
        }
        for f in &mut w.flags {
            let uid = format!(
                "{name}-flag-{}",
                f.metadata.name.clone().unwrap_or_default()
            );
            stamp(&mut f.metadata, ns, &uid);
        }
        stamp(&mut w.tool_secret.metadata, ns, &format!("{name}-secret"));
        w
    }
}

/// `t00042`: every name has the same length, so that the in-process API server can serve
/// tenant `i` from tenant 0's objects by replacing the name.
pub fn tenant_name(i: usize) -> String {
    format!("t{i:05}")
}

fn stamp(meta: &mut ObjectMeta, namespace: Option<&str>, uid: &str) {
    meta.namespace = namespace.map(str::to_owned);
    meta.uid = Some(uid.to_owned());
    meta.generation = Some(1);
    meta.resource_version = Some("1".to_owned());
}
