//! Feature flags: variants, targeting CEL, rollout weights, unique keys.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{Checked, Problems};
use crate::bundle::CompiledFlag;
use crate::flag::FeatureFlag;

pub(super) fn check(
    object: &FeatureFlag,
    owners: &BTreeMap<String, String>,
) -> Result<Checked<Vec<CompiledFlag>>, Vec<(String, String)>> {
    let name = object.name_any();
    let mut p = Problems::default();
    let mut out: Vec<CompiledFlag> = Vec::new();
    for (i, f) in object.spec.flags.iter().enumerate() {
        let field = format!("spec.flags[{i}]");
        if let Some(owner) = owners.get(&f.key) {
            p.add(
                format!("{field}.key"),
                format!(
                    "flag {:?} is already declared by FeatureFlag {owner:?}",
                    f.key
                ),
            );
        }
        if out.iter().any(|o| o.key == f.key) {
            p.add(
                format!("{field}.key"),
                format!("flag {:?} is declared twice", f.key),
            );
        }
        if f.variants.is_empty() {
            p.add(
                format!("{field}.variants"),
                "a flag needs at least one variant",
            );
        }
        if !f.variants.contains_key(&f.default_variant) {
            p.add(
                format!("{field}.defaultVariant"),
                format!("variant {:?} is not declared", f.default_variant),
            );
        }
        for (j, rule) in f.targeting.iter().enumerate() {
            if !f.variants.contains_key(&rule.variant) {
                p.add(
                    format!("{field}.targeting[{j}].variant"),
                    format!("variant {:?} is not declared", rule.variant),
                );
            }
            p.cel(format!("{field}.targeting[{j}].when"), &rule.when);
        }
        for (j, share) in f.rollout.iter().enumerate() {
            if !f.variants.contains_key(&share.variant) {
                p.add(
                    format!("{field}.rollout[{j}].variant"),
                    format!("variant {:?} is not declared", share.variant),
                );
            }
        }
        let total: u64 = f.rollout.iter().map(|s| u64::from(s.weight)).sum();
        if !f.rollout.is_empty() && total != 100 {
            p.add(
                format!("{field}.rollout"),
                format!("weights sum to {total}, not 100"),
            );
        }
        out.push(CompiledFlag {
            key: f.key.clone(),
            source: name.clone(),
            description: f.description.clone(),
            state: f.state,
            variants: f.variants.clone(),
            default_variant: f.default_variant.clone(),
            targeting: f.targeting.clone(),
            rollout: f.rollout.clone(),
        });
    }
    p.finish(out, vec![])
}
