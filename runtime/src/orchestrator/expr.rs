//! Expressions of a workflow: CEL conditions and transforms, minijinja templates for prompts,
//! arguments and results. Both see the same names: `input`, `state`, `flags` and `run`.
//!
//! Errors never panic and always name the expression, so a step record says exactly what
//! went wrong. Templates are strict about undefined values they print (a typo in
//! `{{ state.ordr.id }}` is an error, not an empty string); `| default(...)` still works.

use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// Compiled CEL programs kept at most; the cache is cleared when it grows past this.
const CEL_CACHE_LIMIT: usize = 4096;
/// Longest expression or template accepted at run time (the compiler enforces the same).
const MAX_SOURCE_BYTES: usize = 65_536;

/// The names an expression sees.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The run's input.
    pub input: &'a Value,
    /// The run state.
    pub state: &'a Map<String, Value>,
    /// Flag values.
    pub flags: &'a Value,
    /// `{"id": ...}` of the run.
    pub run: &'a Value,
}

/// An expression that could not be evaluated; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env
});

static PROGRAMS: LazyLock<DashMap<String, Arc<cel::Program>>> = LazyLock::new(DashMap::new);

fn program(expr: &str) -> Result<Arc<cel::Program>, ExprError> {
    if let Some(p) = PROGRAMS.get(expr) {
        return Ok(p.clone());
    }
    if expr.len() > MAX_SOURCE_BYTES {
        return Err(ExprError(format!(
            "CEL expression is longer than {MAX_SOURCE_BYTES} bytes"
        )));
    }
    let compiled = agentry_crds::bundle::compile_cel(expr)
        .map_err(|e| ExprError(format!("CEL `{expr}` does not compile: {e}")))?;
    let compiled = Arc::new(compiled);
    if PROGRAMS.len() >= CEL_CACHE_LIMIT {
        PROGRAMS.clear();
    }
    PROGRAMS.insert(expr.to_owned(), compiled.clone());
    Ok(compiled)
}

/// Evaluates CEL `expr` and converts the result to JSON.
pub fn eval_cel(expr: &str, scope: Scope<'_>) -> Result<Value, ExprError> {
    let program = program(expr)?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("input", to_cel(scope.input));
    context.add_variable_from_value("state", object_to_cel(scope.state));
    context.add_variable_from_value("flags", to_cel(scope.flags));
    context.add_variable_from_value("run", to_cel(scope.run));
    let value = program
        .execute(&context)
        .map_err(|e| ExprError(format!("CEL `{expr}` failed: {e}")))?;
    value.json().map_err(|e| {
        ExprError(format!(
            "CEL `{expr}` produced a value without a JSON form: {e}"
        ))
    })
}

/// JSON as CEL sees it. Every integer that fits is an `int` (JSON has no unsigned type, and
/// CEL does not mix `int` and `uint` in arithmetic), so `state.count + 1` works on any count.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, f) => cel::Value::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => object_to_cel(map),
    }
}

fn object_to_cel(map: &Map<String, Value>) -> cel::Value {
    let entries: std::collections::HashMap<cel::objects::Key, cel::Value> = map
        .iter()
        .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    cel::Value::Map(cel::objects::Map {
        map: Arc::new(entries),
    })
}

/// Evaluates a CEL condition; anything but a boolean is an error.
pub fn eval_condition(expr: &str, scope: Scope<'_>) -> Result<bool, ExprError> {
    match eval_cel(expr, scope)? {
        Value::Bool(b) => Ok(b),
        other => Err(ExprError(format!(
            "CEL condition `{expr}` yielded {other}, not a boolean"
        ))),
    }
}

/// Renders a template to a string.
pub fn render(template: &str, scope: Scope<'_>) -> Result<String, ExprError> {
    if template.len() > MAX_SOURCE_BYTES {
        return Err(ExprError(format!(
            "template is longer than {MAX_SOURCE_BYTES} bytes"
        )));
    }
    // Plain text needs no engine: most argument values and many prompts are literal.
    if !template.contains("{{") && !template.contains("{%") && !template.contains("{#") {
        return Ok(template.to_owned());
    }
    let ctx = minijinja::context! {
        input => minijinja::Value::from(minijinja::value::Serde(scope.input)),
        state => minijinja::Value::from(minijinja::value::Serde(scope.state)),
        flags => minijinja::Value::from(minijinja::value::Serde(scope.flags)),
        run => minijinja::Value::from(minijinja::value::Serde(scope.run)),
    };
    TEMPLATES.render_str(template, ctx).map_err(|e| {
        let mut msg = e.kind().to_string();
        if let Some(detail) = e.detail() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        ExprError(format!("template `{}`: {msg}", shorten(template)))
    })
}

/// Renders every string inside `value` (objects and arrays walked), other JSON as written.
pub fn render_value(value: &Value, scope: Scope<'_>) -> Result<Value, ExprError> {
    Ok(match value {
        Value::String(s) => Value::String(render(s, scope)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, scope)?)))
                .collect::<Result<_, ExprError>>()?,
        ),
        other => other.clone(),
    })
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_scope<T>(state: Value, f: impl FnOnce(Scope<'_>) -> T) -> T {
        let input = json!({"orderId": "A-1", "body": "hello"});
        let Value::Object(state) = state else {
            return f(Scope {
                input: &input,
                state: &Map::new(),
                flags: &json!({}),
                run: &json!({}),
            });
        };
        f(Scope {
            input: &input,
            state: &state,
            flags: &json!({"tier": "gold"}),
            run: &json!({"id": "r1"}),
        })
    }

    #[test]
    fn conditions_read_input_state_and_flags() {
        with_scope(json!({"order": {"total": 42.5}}), |s| {
            assert_eq!(eval_condition("state.order.total <= 100.0", s), Ok(true));
            assert_eq!(eval_condition("flags.tier == 'gold'", s), Ok(true));
            assert_eq!(eval_condition("input.orderId == 'A-2'", s), Ok(false));
        });
    }

    #[test]
    fn errors_quote_the_expression() {
        with_scope(json!({}), |s| {
            let err = eval_condition("state.order.total > 1.0", s).unwrap_err();
            assert!(err.0.contains("state.order.total > 1.0"), "{err}");
            let err = eval_condition("size(input.body)", s).unwrap_err();
            assert!(err.0.contains("not a boolean"), "{err}");
            let err = eval_cel("input.body +", s).unwrap_err();
            assert!(err.0.contains("does not compile"), "{err}");
        });
    }

    #[test]
    fn cel_values_come_back_as_json() {
        with_scope(json!({"items": [1, 2, 3]}), |s| {
            assert_eq!(eval_cel("size(state.items)", s), Ok(json!(3)));
            assert_eq!(eval_cel("state.items[0] + 1", s), Ok(json!(2)));
            assert_eq!(eval_cel("{'a': input.orderId}", s), Ok(json!({"a": "A-1"})));
        });
    }

    #[test]
    fn templates_render_and_refuse_undefined_values() {
        with_scope(json!({"refund": {"id": "R-9"}}), |s| {
            assert_eq!(
                render("Refund {{ state.refund.id }}", s).unwrap(),
                "Refund R-9"
            );
            assert_eq!(render("{{ state.nope | default('x') }}", s).unwrap(), "x");
            assert!(render("{{ state.nope }}", s).is_err());
            assert!(
                render("{{ state.refund.id", s)
                    .unwrap_err()
                    .0
                    .contains("template")
            );
            assert_eq!(
                render_value(&json!({"a": ["{{ input.orderId }}", 1]}), s).unwrap(),
                json!({"a": ["A-1", 1]})
            );
        });
    }
}
