//! Feature flags served from the tenant's bundle.

pub mod eval;

use agentry_crds::RuntimeBundle;
use serde_json::{Value, json};

use crate::gateway::{Caller, Principal};

/// What a flag is evaluated for, named in the evaluation context.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// An agent's turn (`agent`).
    Agent(&'a str),
    /// A workflow run (`workflow`).
    Workflow(&'a str),
}

/// The evaluation context of `caller` in `bundle`'s tenant: `targetingKey` (the end user's
/// subject, else the API key id), `plan`, `tenant`, `userId`, and `agent` or `workflow`.
pub fn context(bundle: &RuntimeBundle, caller: &Caller, subject: Subject<'_>) -> Value {
    let key = match &caller.principal {
        Principal::User { subject } => subject.clone(),
        Principal::ApiKey { id } => id.to_string(),
    };
    let mut ctx = json!({
        "targetingKey": key,
        "plan": bundle.tenant.plan,
        "tenant": bundle.tenant.name,
        "userId": caller.user_id(),
    });
    let (field, name) = match subject {
        Subject::Agent(name) => ("agent", name),
        Subject::Workflow(name) => ("workflow", name),
    };
    ctx[field] = Value::from(name);
    ctx
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agentry_crds::bundle::{compile, group_by_tenant, parse_documents};
    use uuid::Uuid;

    use super::*;
    use crate::tenancy::{TenantHandle, TenantId};

    fn acme() -> RuntimeBundle {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let text = std::fs::read_to_string(dir.join("acme.yaml")).unwrap();
        let (resources, errors) = parse_documents(&text);
        assert!(errors.is_empty(), "{errors:?}");
        let (sources, _) = group_by_tenant(resources);
        compile(&sources[0]).bundle
    }

    #[test]
    fn the_context_names_the_caller_the_tenant_and_the_subject() {
        let bundle = acme();
        let tenant = Arc::new(TenantHandle::new(TenantId(Uuid::new_v4()), bundle.clone()));
        let key = Uuid::new_v4();
        let by_key = Caller {
            tenant: tenant.clone(),
            principal: Principal::ApiKey { id: key },
            scopes: Vec::new(),
        };
        assert_eq!(
            context(&bundle, &by_key, Subject::Agent("billing")),
            json!({"targetingKey": key.to_string(), "plan": bundle.tenant.plan,
                   "tenant": "acme", "agent": "billing", "userId": null})
        );
        let by_user = Caller {
            tenant,
            principal: Principal::User {
                subject: "u-1".to_owned(),
            },
            scopes: Vec::new(),
        };
        assert_eq!(
            context(&bundle, &by_user, Subject::Workflow("refund")),
            json!({"targetingKey": "u-1", "plan": bundle.tenant.plan, "tenant": "acme",
                   "workflow": "refund", "userId": "u-1"})
        );
    }
}
