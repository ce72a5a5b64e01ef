//! The generated CustomResourceDefinitions.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Agent, FeatureFlag, Tenant, Tool, Workflow};

/// The five CRDs, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Tenant::crd(),
        Agent::crd(),
        Tool::crd(),
        Workflow::crd(),
        FeatureFlag::crd(),
    ]
}

/// File name of a CRD under `manifests/crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Renders one CRD as YAML with a header that says the file is generated.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from the agentry-crds types by `make crds`. Do not edit.\n{body}"
    ))
}

/// Renders all CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}
