//! A minimal, deterministic flag evaluation: a disabled flag serves its default variant; an
//! enabled one serves a fractional rollout by a stable hash of the targeting key (the same
//! key always lands in the same bucket), else the default. Targeting rules (CEL) are not
//! evaluated yet: an enabled flag with rules serves its rollout or default.

use agentry_crds::bundle::CompiledFlag;
use agentry_crds::flag::FlagState;
use serde_json::Value;

/// The variant name and value `flag` serves to `targeting_key`.
pub fn evaluate<'f>(flag: &'f CompiledFlag, targeting_key: &str) -> Option<(&'f str, &'f Value)> {
    let name = match flag.state {
        FlagState::Disabled => flag.default_variant.as_str(),
        FlagState::Enabled => rollout(flag, targeting_key).unwrap_or(&flag.default_variant),
    };
    flag.variants.get(name).map(|v| (name, v))
}

fn rollout<'f>(flag: &'f CompiledFlag, key: &str) -> Option<&'f str> {
    let total: u64 = flag.rollout.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return None;
    }
    let bucket = fnv1a(&format!("{}/{key}", flag.key)) % total;
    let mut upto = 0u64;
    for share in &flag.rollout {
        upto += u64::from(share.weight);
        if bucket < upto {
            return Some(&share.variant);
        }
    }
    None
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
