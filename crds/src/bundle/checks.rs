//! Syntax checks of the languages embedded in resources: CEL, minijinja and JSON Schema.

use serde_json::Value;

/// Compiles a CEL expression; the error names the problem.
pub fn compile_cel(expr: &str) -> Result<cel::Program, String> {
    // The parser is not hardened against pathological input depth; bound it first.
    if expr.len() > 4096 {
        return Err("expression is longer than 4096 characters".to_owned());
    }
    if nesting_depth(expr) > 32 {
        return Err("expression nests deeper than 32 levels".to_owned());
    }
    cel::Program::compile(expr).map_err(|e| one_line(&e.to_string()))
}

/// Parses a minijinja template; the error names the problem.
pub fn compile_template(source: &str) -> Result<(), String> {
    if nesting_depth(source) > 64 {
        return Err("template nests deeper than 64 levels".to_owned());
    }
    let env = minijinja::Environment::new();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| one_line(&e.to_string()))
}

/// Checks that `schema` is a JSON Schema the runtime can validate arguments against.
pub fn validate_json_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".to_owned());
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| one_line(&e.to_string()))
}

fn nesting_depth(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cel_errors_are_reported() {
        assert!(compile_cel("state.order.total <= 100.0").is_ok());
        assert!(compile_cel("state.order.total <=").is_err());
        assert!(compile_cel(&"(".repeat(100)).is_err());
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(compile_template("Refund {{ state.order.total }}?").is_ok());
        let err = compile_template("Refund {{ state.order.total ?").unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn json_schema_errors_are_reported() {
        assert!(validate_json_schema(&json!({"type": "object"})).is_ok());
        assert!(validate_json_schema(&json!({"type": "bogus"})).is_err());
        assert!(validate_json_schema(&json!("object")).is_err());
    }
}
