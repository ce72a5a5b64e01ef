//! `FeatureFlag`: OpenFeature-shaped flags evaluated by the runtime.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Desired state of a FeatureFlag (its `spec`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentry.dev",
    version = "v1alpha1",
    kind = "FeatureFlag",
    doc = "A set of feature flags, served over OFREP (`/ofrep/v1`) and used by agents, workflows and the router. Targeting rules are CEL over the evaluation context `ctx`; rollouts split by a hash of the targeting key.",
    plural = "featureflags",
    namespaced,
    shortname = "ff",
    category = "agentry",
    status = "FeatureFlagStatus",
    cel,
    printcolumn(name = "Flags", type_ = "integer", json_path = ".status.flagCount"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlagSpec {
    /// The flags; keys are unique across the tenant's FeatureFlag objects.
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["key".into()]))]
    pub flags: Vec<Flag>,
}

/// One flag.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.defaultVariant in self.variants").message("defaultVariant must be one of the declared variants"))]
#[x_kube(validation = Rule::new("!has(self.targeting) || self.targeting.all(t, t.variant in self.variants)").message("every targeting rule must name a declared variant"))]
#[x_kube(validation = Rule::new("!has(self.rollout) || self.rollout.all(r, r.variant in self.variants)").message("every rollout entry must name a declared variant"))]
pub struct Flag {
    /// Flag key, as clients ask for it.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$"))]
    pub key: String,
    /// What the flag controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// `Disabled` always evaluates to the default variant with reason DISABLED.
    #[serde(default)]
    pub state: FlagState,
    /// Variant name to value (any JSON value).
    #[schemars(schema_with = "variants_schema")]
    pub variants: BTreeMap<String, Value>,
    /// Variant served when no rule matches and there is no rollout.
    #[schemars(length(min = 1, max = 63))]
    pub default_variant: String,
    /// Rules tried in order; the first whose CEL condition over `ctx` holds wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub targeting: Vec<TargetingRule>,
    /// Fractional rollout by targeting key when no rule matched; weights sum to 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rollout: Vec<RolloutShare>,
}

fn variants_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 32,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// Whether a flag is served.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum FlagState {
    /// Rules and rollout apply.
    #[default]
    Enabled,
    /// The default variant is served.
    Disabled,
}

/// A targeting rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetingRule {
    /// CEL condition over `ctx` (the evaluation context, with `targetingKey`).
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
    /// Variant served when the condition holds.
    #[schemars(length(min = 1, max = 63))]
    pub variant: String,
}

/// A share of a fractional rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutShare {
    /// Variant.
    #[schemars(length(min = 1, max = 63))]
    pub variant: String,
    /// Percentage of targeting keys, 0 to 100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: u32,
}

/// Observed state of a FeatureFlag.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlagStatus {
    /// Flags served from this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_count: Option<u32>,
    /// Hash of the flags as compiled into the tenant's bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: compiled into the bundle, or the compiler's diagnostic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
