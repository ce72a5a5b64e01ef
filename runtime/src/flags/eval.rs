//! A minimal, deterministic flag evaluation: a disabled flag serves its default variant; an
//! enabled one serves the variant of the first targeting rule whose CEL condition holds over
//! `ctx` (the evaluation context: `targetingKey`, `plan`, ...), else a fractional rollout by a
//! stable hash of the targeting key (the same key always lands in the same bucket), else the
//! default. A rule that does not compile or does not yield a boolean does not match.

use agentry_crds::bundle::CompiledFlag;
use agentry_crds::flag::FlagState;
use serde_json::Value;

/// The variant name and value `flag` serves in the evaluation context `ctx` (an object with
/// at least `targetingKey`).
pub fn evaluate<'f>(flag: &'f CompiledFlag, ctx: &Value) -> Option<(&'f str, &'f Value)> {
    let key = ctx
        .get("targetingKey")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = match flag.state {
        FlagState::Disabled => flag.default_variant.as_str(),
        FlagState::Enabled => flag
            .targeting
            .iter()
            .find(|rule| matches(&rule.when, ctx))
            .map(|rule| rule.variant.as_str())
            .or_else(|| rollout(flag, key))
            .unwrap_or(&flag.default_variant),
    };
    flag.variants.get(name).map(|v| (name, v))
}

/// Whether the CEL condition `expr` holds with `ctx` bound to the context.
pub fn matches(expr: &str, ctx: &Value) -> bool {
    let Ok(program) = cel::Program::compile(expr) else {
        return false;
    };
    let Ok(value) = cel::to_value(ctx) else {
        return false;
    };
    let mut context = cel::Context::default();
    context.add_variable_from_value("ctx", value);
    matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
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
    fn cel_conditions_read_the_context() {
        let ctx = serde_json::json!({"targetingKey": "u1", "plan": "pro"});
        assert!(matches("ctx.plan == 'pro'", &ctx));
        assert!(!matches("ctx.plan == 'free'", &ctx));
        assert!(!matches("ctx.plan", &ctx), "not a boolean");
        assert!(!matches("ctx.plan ==", &ctx), "does not compile");
    }

    fn flag() -> CompiledFlag {
        serde_json::from_value(serde_json::json!({
            "key": "model", "source": "f", "state": "Enabled",
            "variants": {"a": "small", "b": "large", "vip": "large"},
            "defaultVariant": "a",
            "targeting": [{"when": "ctx.plan == 'enterprise'", "variant": "vip"}],
            "rollout": [{"variant": "a", "weight": 50}, {"variant": "b", "weight": 50}],
        }))
        .unwrap_or_else(|e| panic!("flag fixture: {e}"))
    }

    #[test]
    fn rules_then_a_stable_rollout() {
        let f = flag();
        let ctx = |key: &str, plan: &str| serde_json::json!({"targetingKey": key, "plan": plan});
        assert_eq!(
            evaluate(&f, &ctx("u1", "enterprise")).map(|v| v.0),
            Some("vip")
        );
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = evaluate(&f, &ctx(&key, "pro")).map(|v| v.0);
            assert_eq!(
                first,
                evaluate(&f, &ctx(&key, "pro")).map(|v| v.0),
                "stable"
            );
            *seen.entry(first).or_insert(0u32) += 1;
        }
        let a = seen.get(&Some("a")).copied().unwrap_or(0);
        assert!((400..600).contains(&a), "about half: {seen:?}");
        let mut off = f.clone();
        off.state = FlagState::Disabled;
        assert_eq!(
            evaluate(&off, &ctx("u1", "enterprise")).map(|v| v.0),
            Some("a")
        );
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
