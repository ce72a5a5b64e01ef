//! The Secrets a tenant's Tools read header values from, mounted into the runtime.
//!
//! A Tool's HTTP or MCP header may take its value from `valueFrom.secretKeyRef`, a Secret in
//! the tenant namespace. The runtime reads such values at call time from
//! `/etc/agentry/secrets/<name>/<key>`, so the pod mounts one projected volume there with
//! exactly the referenced keys. The kubelet reads their values on behalf of the pod; the
//! operator only looks at which keys each Secret has, so that a Tool whose Secret or key is
//! missing says so in its `Ready` condition instead of failing quietly at call time.

use std::collections::{BTreeMap, BTreeSet};

use agentry_crds::RuntimeBundle;
use agentry_crds::tool::HttpHeader;
use k8s_openapi::api::core::v1::{
    KeyToPath, ProjectedVolumeSource, SecretProjection, Volume, VolumeMount, VolumeProjection,
};

/// Where the runtime looks for tool Secrets (its `AGENTRY_SECRETS_DIR` default).
pub const TOOL_SECRETS_DIR: &str = "/etc/agentry/secrets";
/// Name of the projected volume.
pub const TOOL_SECRETS_VOLUME: &str = "tool-secrets";

/// A name or key usable as one path component, by the same rule the runtime applies when it
/// reads the file. Anything else could never be read, and a path with `..` would make the
/// API server refuse the whole Deployment, so such a reference is left out (the tool call
/// then fails with "secret not found", which names it).
fn is_path_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `valueFrom.secretKeyRef` headers of the compiled tools, with the tool's name.
fn secret_headers(bundle: &RuntimeBundle) -> impl Iterator<Item = (&str, &HttpHeader)> {
    bundle.tools.iter().flat_map(|(name, t)| {
        let http = t.http.iter().flat_map(|h| h.headers.iter());
        let mcp = t.mcp.iter().flat_map(|m| m.headers.iter());
        http.chain(mcp)
            .filter(|h| h.value_from.is_some())
            .map(move |h| (name.as_str(), h))
    })
}

/// Keys each referenced Secret holds, by Secret name; `None`: the Secret does not exist.
pub type SecretKeys = BTreeMap<String, Option<BTreeSet<String>>>;

/// What keeps each tool from reading its header Secrets, by tool name: a Secret that does not
/// exist, a key it does not have, or a name or key that cannot be a file name. Tools with
/// nothing missing are absent. `found` holds what [`references`] names.
pub fn missing(
    bundle: &RuntimeBundle,
    namespace: &str,
    found: &SecretKeys,
) -> BTreeMap<String, Vec<String>> {
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tool, header) in secret_headers(bundle) {
        let Some(from) = &header.value_from else {
            continue;
        };
        let (secret, key) = (&from.secret_key_ref.name, &from.secret_key_ref.key);
        let problem = if !is_path_component(secret) || !is_path_component(key) {
            Some(format!(
                "header {}: Secret {secret:?} key {key:?} cannot be mounted (names and keys are letters, digits, '-', '_' and '.')",
                header.name
            ))
        } else {
            match found.get(secret) {
                Some(Some(keys)) if keys.contains(key) => None,
                Some(Some(_)) => Some(format!(
                    "header {}: Secret {namespace}/{secret} has no key {key:?}",
                    header.name
                )),
                _ => Some(format!(
                    "header {}: Secret {namespace}/{secret} (key {key:?}) not found",
                    header.name
                )),
            }
        };
        if let Some(problem) = problem {
            problems.entry(tool.to_owned()).or_default().push(problem);
        }
    }
    problems
}

/// Referenced keys by Secret name, both sorted, so that converged reconciles build the same
/// pod template and never roll the pods.
pub fn references(bundle: &RuntimeBundle) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, header) in secret_headers(bundle) {
        let HttpHeader {
            value_from: Some(from),
            ..
        } = header
        else {
            continue;
        };
        let r = &from.secret_key_ref;
        if is_path_component(&r.name) && is_path_component(&r.key) {
            refs.entry(r.name.clone())
                .or_default()
                .insert(r.key.clone());
        }
    }
    refs
}

/// The projected volume, or `None` when no tool references a Secret. Each source is
/// `optional`: a missing Secret or key leaves its file out instead of keeping every runtime
/// pod from starting; the tool reports it in its `Ready` condition (see [`missing`]) and a
/// call that needs it fails with an error naming the Secret.
pub fn volume(bundle: &RuntimeBundle) -> Option<Volume> {
    let refs = references(bundle);
    if refs.is_empty() {
        return None;
    }
    let sources = refs
        .into_iter()
        .map(|(name, keys)| VolumeProjection {
            secret: Some(SecretProjection {
                items: Some(
                    keys.into_iter()
                        .map(|key| KeyToPath {
                            path: format!("{name}/{key}"),
                            key,
                            mode: None,
                        })
                        .collect(),
                ),
                name,
                optional: Some(true),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Some(Volume {
        name: TOOL_SECRETS_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(sources),
        }),
        ..Volume::default()
    })
}

/// The read-only mount of [`volume`]. A directory mount, so rotated values reach running
/// pods.
pub fn mount() -> VolumeMount {
    VolumeMount {
        name: TOOL_SECRETS_VOLUME.to_owned(),
        mount_path: TOOL_SECRETS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fixtures::{compile_with, objects, parse, tenant};

    const TOOLS: &str = r#"
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: weather, namespace: tenant-acme, generation: 1}
spec:
  description: Weather.
  type: http
  http:
    url: https://weather.example/v1
    headers:
      - {name: X-Api-Key, valueFrom: {secretKeyRef: {name: weather-api, key: token}}}
      - {name: X-Region, value: eu}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: crm, namespace: tenant-acme, generation: 1}
spec:
  description: CRM over MCP.
  type: mcp
  mcp:
    url: https://mcp.example/
    tool: lookup
    headers:
      - {name: Authorization, valueFrom: {secretKeyRef: {name: crm, key: bearer}}}
      - {name: X-Tenant, valueFrom: {secretKeyRef: {name: weather-api, key: account}}}
      - {name: X-Evil, valueFrom: {secretKeyRef: {name: crm, key: "../escape"}}}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: crm-again, namespace: tenant-acme, generation: 1}
spec:
  description: Same Secret again.
  type: mcp
  mcp:
    url: https://mcp.example/
    tool: lookup
    headers:
      - {name: Authorization, valueFrom: {secretKeyRef: {name: crm, key: bearer}}}
"#;

    /// A bundle whose HTTP and MCP tools reference `crm` and `weather-api`.
    pub(crate) fn bundle_with_tools() -> RuntimeBundle {
        let mut objs = objects(false);
        let (_, extra) = parse(TOOLS);
        objs.tools.extend(extra.tools);
        compile_with(&tenant(), &objs).bundle
    }

    #[test]
    fn referenced_keys_are_projected_as_name_slash_key_sorted_and_deduplicated() {
        let b = bundle_with_tools();
        assert_eq!(b.tools.len(), 4, "all tools compiled: {:?}", b.tools.keys());
        let v = volume(&b).unwrap();
        assert_eq!(v.name, TOOL_SECRETS_VOLUME);
        let projected = v.projected.unwrap();
        assert_eq!(projected.default_mode, Some(0o440));
        let sources: Vec<_> = projected
            .sources
            .unwrap()
            .into_iter()
            .map(|s| s.secret.unwrap())
            .collect();
        let names: Vec<_> = sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["crm", "weather-api"]);
        assert!(sources.iter().all(|s| s.optional == Some(true)));
        let items: Vec<_> = sources
            .iter()
            .flat_map(|s| s.items.clone().unwrap())
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            items,
            [
                ("bearer".to_owned(), "crm/bearer".to_owned()),
                ("account".to_owned(), "weather-api/account".to_owned()),
                ("token".to_owned(), "weather-api/token".to_owned()),
            ]
        );
    }

    #[test]
    fn the_volume_is_the_same_on_every_build() {
        assert_eq!(volume(&bundle_with_tools()), volume(&bundle_with_tools()));
    }

    #[test]
    fn no_references_means_no_volume() {
        let b = compile_with(&tenant(), &objects(false)).bundle;
        assert!(!b.tools.is_empty());
        assert!(volume(&b).is_none());
    }

    #[test]
    fn missing_secrets_and_keys_are_named_per_tool() {
        let b = bundle_with_tools();
        let found = SecretKeys::from([
            (
                "weather-api".to_owned(),
                Some(BTreeSet::from(["token".to_owned()])),
            ),
            ("crm".to_owned(), None),
        ]);
        let problems = missing(&b, "tenant-acme", &found);
        assert!(!problems.contains_key("weather"), "{problems:?}");
        assert_eq!(
            problems["crm"],
            [
                "header Authorization: Secret tenant-acme/crm (key \"bearer\") not found",
                "header X-Tenant: Secret tenant-acme/weather-api has no key \"account\"",
                "header X-Evil: Secret \"crm\" key \"../escape\" cannot be mounted (names and keys are letters, digits, '-', '_' and '.')",
            ]
        );
        assert_eq!(
            problems["crm-again"],
            ["header Authorization: Secret tenant-acme/crm (key \"bearer\") not found"]
        );
        let all = SecretKeys::from([
            (
                "weather-api".to_owned(),
                Some(BTreeSet::from(["token".to_owned(), "account".to_owned()])),
            ),
            (
                "crm".to_owned(),
                Some(BTreeSet::from(["bearer".to_owned()])),
            ),
        ]);
        let problems = missing(&b, "tenant-acme", &all);
        assert_eq!(problems.keys().collect::<Vec<_>>(), ["crm"]);
        assert_eq!(problems["crm"].len(), 1, "only the unmountable key is left");
    }

    #[test]
    fn the_mount_is_the_runtime_default_directory() {
        let m = mount();
        assert_eq!(m.mount_path, "/etc/agentry/secrets");
        assert_eq!(m.read_only, Some(true));
        assert!(m.sub_path.is_none());
    }
}
