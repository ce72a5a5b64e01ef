//! JSON Schema validation messages, one format for tool arguments and workflow input: each
//! problem names the field at fault so that a caller (or a model) can fix it.

use serde_json::Value;

/// Problems listed at most; more are marked with `…`.
const SHOWN: usize = 5;

/// Longest description of one problem, in bytes.
const MAX_PROBLEM_BYTES: usize = 200;

/// The problems of `instance` under `validator`, `None` when it is valid: the first five as
/// `<field>: <problem>` joined with `; `, then `; …` when there are more. `field` names the
/// value at fault from its JSON pointer (empty for the whole instance).
pub fn problems(
    validator: &jsonschema::Validator,
    instance: &Value,
    field: impl Fn(&str) -> String,
) -> Option<String> {
    let mut errors = validator.iter_errors(instance);
    let mut shown = Vec::new();
    for e in errors.by_ref().take(SHOWN) {
        let message = e.to_string();
        let (message, _) = crate::tools::error::truncate(&message, MAX_PROBLEM_BYTES);
        shown.push(format!(
            "{}: {message}",
            field(&e.instance_path().to_string())
        ));
    }
    if shown.is_empty() {
        return None;
    }
    if errors.next().is_some() {
        shown.push("…".to_owned());
    }
    Some(shown.join("; "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dotted(path: &str) -> String {
        format!("input{}", path.replace('/', "."))
    }

    #[test]
    fn each_problem_names_its_field() {
        let schema = json!({"type": "object", "required": ["id"],
            "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}});
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert_eq!(
            problems(&validator, &json!({"id": "a", "n": 1}), dotted),
            None
        );
        let found = problems(&validator, &json!({"id": 7, "n": "x"}), dotted).unwrap();
        let parts: Vec<&str> = found.split("; ").collect();
        assert_eq!(parts.len(), 2, "{found}");
        assert!(parts.iter().any(|p| p.starts_with("input.id: ")), "{found}");
        assert!(parts.iter().any(|p| p.starts_with("input.n: ")), "{found}");
        let root = problems(&validator, &json!([]), |p| format!("at {p:?}")).unwrap();
        assert!(root.starts_with("at \"\": "), "{root}");
    }

    #[test]
    fn five_problems_are_shown_and_each_is_bounded() {
        let props: serde_json::Map<String, Value> = (0..7)
            .map(|i| (format!("f{i}"), json!({"type": "integer"})))
            .collect();
        let validator =
            jsonschema::validator_for(&json!({"type": "object", "properties": props})).unwrap();
        let bad: serde_json::Map<String, Value> = (0..7)
            .map(|i| (format!("f{i}"), json!("x".repeat(500))))
            .collect();
        let found = problems(&validator, &Value::Object(bad), dotted).unwrap();
        let parts: Vec<&str> = found.split("; ").collect();
        assert_eq!(parts.len(), 6, "{found}");
        assert_eq!(parts[5], "…");
        for part in &parts[..5] {
            let (field, message) = part.split_once(": ").unwrap();
            assert!(field.starts_with("input.f"), "{part}");
            assert!(message.len() <= MAX_PROBLEM_BYTES, "{part}");
        }
    }
}
