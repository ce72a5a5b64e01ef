//! The CEL `x-kubernetes-validations` rules of the generated CRDs: each compiles, stays within
//! the API server's cost budget, and is exercised by fixtures. `fixtures/valid/*.yaml` must be
//! admitted; each `fixtures/invalid/*.yaml` must be refused with exactly one problem that
//! contains its `# expect: <text>` header (the first line). A fixture with a `# transition` line
//! among its first two holds two documents, the old object then the new one, and is checked as
//! an update.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use agentry_crds::bundle::ObjectKind;
use agentry_crds::validate::{openapi_schema, validate_object};
use kube::core::cel::{
    CompiledSchema, ScopeContext, Validator, WarningKind, analyze_rule, compile_schema,
};
use serde_json::{Value, json};

const KINDS: [ObjectKind; 5] = [
    ObjectKind::Tenant,
    ObjectKind::Agent,
    ObjectKind::Tool,
    ObjectKind::Workflow,
    ObjectKind::FeatureFlag,
];

/// One `x-kubernetes-validations` entry and where it sits.
#[derive(Debug)]
struct FoundRule {
    kind: ObjectKind,
    path: String,
    rule: String,
    message: String,
}

fn collect_rules(kind: ObjectKind, node: &Value, path: &str, out: &mut Vec<FoundRule>) {
    let Some(map) = node.as_object() else { return };
    for rule in map
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(FoundRule {
            kind,
            path: path.to_owned(),
            rule: rule["rule"].as_str().unwrap_or_default().to_owned(),
            message: rule["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    for (name, sub) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        collect_rules(kind, sub, &join(path, name), out);
    }
    if let Some(items) = map.get("items") {
        collect_rules(kind, items, &format!("{path}[]"), out);
    }
    if let Some(extra) = map.get("additionalProperties") {
        collect_rules(kind, extra, &join(path, "*"), out);
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn all_rules() -> Vec<FoundRule> {
    let mut rules = Vec::new();
    for kind in KINDS {
        collect_rules(kind, openapi_schema(kind), "", &mut rules);
    }
    rules
}

/// The compiled schema node at `path` (as written by [`collect_rules`]).
fn compiled_at<'a>(root: &'a CompiledSchema, path: &str) -> &'a CompiledSchema {
    let mut node = root;
    if path.is_empty() {
        return node;
    }
    for segment in path.split('.') {
        let (name, depth) = match segment.find("[]") {
            Some(i) => (&segment[..i], segment[i..].matches("[]").count()),
            None => (segment, 0),
        };
        node = if name == "*" {
            node.additional_properties
                .as_deref()
                .expect("additionalProperties")
        } else {
            node.properties
                .get(name)
                .unwrap_or_else(|| panic!("no {name} in {path}"))
        };
        for _ in 0..depth {
            node = node.items.as_deref().expect("items");
        }
    }
    node
}

/// Counts rules in the compiled tree, so that none is skipped by the compiler.
fn compiled_rule_count(node: &CompiledSchema) -> usize {
    node.validations.len()
        + node
            .properties
            .values()
            .map(compiled_rule_count)
            .sum::<usize>()
        + node.items.as_deref().map_or(0, compiled_rule_count)
        + node
            .additional_properties
            .as_deref()
            .map_or(0, compiled_rule_count)
}

#[test]
fn every_rule_compiles() {
    let rules = all_rules();
    // Rules are written by hand in crds/src; losing one silently would weaken the API.
    assert!(rules.len() >= 25, "found only {} rules", rules.len());
    for kind in KINDS {
        let schema = openapi_schema(kind);
        let compiled = compile_schema(schema);
        assert!(
            compiled.compilation_errors().is_empty(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
        let declared = rules.iter().filter(|r| r.kind == kind).count();
        assert_eq!(compiled_rule_count(&compiled), declared, "{kind}");
    }
    for r in &rules {
        assert!(!r.message.is_empty(), "{r:?}: every rule has a message");
        assert!(!r.rule.is_empty(), "{r:?}");
    }
}

/// Variables a rule binds with a comprehension macro (`list.all(x, ...)`).
fn comprehension_variables(rule: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for macro_ in [".all(", ".exists(", ".exists_one(", ".map(", ".filter("] {
        for (at, _) in rule.match_indices(macro_) {
            let rest = &rule[at + macro_.len()..];
            if let Some((var, _)) = rest.split_once(',') {
                out.insert(var.trim().to_owned());
            }
        }
    }
    out
}

#[test]
fn every_rule_is_within_the_crd_cost_budget_and_scope() {
    for kind in KINDS {
        let compiled = compile_schema(openapi_schema(kind));
        let mut rules = Vec::new();
        collect_rules(kind, openapi_schema(kind), "", &mut rules);
        for r in rules {
            let node = compiled_at(&compiled, &r.path);
            let bound = comprehension_variables(&r.rule);
            let serious: Vec<_> = analyze_rule(&r.rule, node, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| match w.kind {
                    WarningKind::CostExceeded | WarningKind::MissingBounds => true,
                    // kube-cel 0.8 reports the iteration variable of `all`/`exists` as out of
                    // scope; only a variable the rule does not bind itself is a real problem.
                    WarningKind::WrongScope => !bound
                        .iter()
                        .any(|v| w.message.contains(&format!("variable '{v}'"))),
                    _ => false,
                })
                .collect();
            assert!(
                serious.is_empty(),
                "{kind} {}: {}: {serious:?}",
                r.path,
                r.rule
            );
        }
    }
}

/// A property name as a rule writes it: CEL reserved words are escaped as `__word__`.
fn unescape(part: &str) -> &str {
    part.strip_prefix("__")
        .and_then(|p| p.strip_suffix("__"))
        .unwrap_or(part)
}

/// The schema node a chain such as `self.models` or `m.provider` stands for, given the nodes
/// the rule's comprehension variables range over, and the part of the chain it resolved.
fn resolve<'a>(
    chain: &str,
    here: &'a Value,
    vars: &[(String, &'a Value)],
) -> Option<(&'a Value, String)> {
    let mut parts = chain.split('.');
    let head = parts.next()?;
    let mut node = if head == "self" || head == "oldSelf" {
        here
    } else {
        vars.iter().find(|(v, _)| v == head).map(|(_, n)| *n)?
    };
    let mut path = head.to_owned();
    for part in parts {
        match node.pointer(&format!("/properties/{}", unescape(part))) {
            Some(next) => node = next,
            // A method call (`.all`, `.matches`) or a field outside the schema (metadata).
            None => return (path != head).then_some((node, path)),
        }
        path = format!("{path}.{part}");
    }
    (path != head).then_some((node, path))
}

/// CEL's reserved words; the API server escapes a property of that name as `__word__`, so a
/// rule that writes `self.namespace` does not see the field.
const CEL_RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Functions and macros a chain may end with.
const CEL_MEMBERS: [&str; 9] = [
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "matches",
    "size",
    "startsWith",
    "endsWith",
];

/// Every field a rule names exists in the schema (the API server type-checks rules against it;
/// kube-cel evaluates dynamically and would only see a typo as a missing value).
#[test]
fn every_field_a_rule_names_exists() {
    for r in all_rules() {
        let here = node_at(openapi_schema(r.kind), &r.path);
        let vars = bind_comprehension_variables(&r.rule, here);
        for (chain, _) in chains(&r.rule) {
            let mut parts = chain.split('.');
            let head = parts.next().unwrap_or_default();
            let mut node = match head {
                "self" | "oldSelf" => here,
                _ => match vars.iter().find(|(v, _)| v == head) {
                    Some((_, node)) => *node,
                    None => continue,
                },
            };
            let mut at_root_metadata = r.path.is_empty();
            for part in parts {
                assert!(
                    !CEL_RESERVED.contains(&part),
                    "{} {}: rule {:?} must write {part} as __{part}__",
                    r.kind,
                    r.path,
                    r.rule
                );
                if let Some(next) = node.pointer(&format!("/properties/{}", unescape(part))) {
                    node = next;
                    at_root_metadata = false;
                } else if at_root_metadata && part == "metadata" {
                    // The API server gives root rules metadata.name and metadata.generateName.
                    node = &Value::Null;
                } else if node.is_null() && ["name", "generateName"].contains(&part) {
                    break;
                } else {
                    assert!(
                        CEL_MEMBERS.contains(&part),
                        "{} {}: rule {:?} names {part}, which is not a field there",
                        r.kind,
                        r.path,
                        r.rule
                    );
                    break;
                }
            }
        }
    }
}

/// The schema node of a rule's path (as written by [`collect_rules`]).
fn node_at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut here = schema;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        here = &here["properties"][segment.trim_end_matches("[]")];
        for _ in 0..segment.matches("[]").count() {
            here = &here["items"];
        }
    }
    here
}

/// Binds each comprehension variable of `rule` to the items of the list it ranges over.
fn bind_comprehension_variables<'a>(rule: &str, here: &'a Value) -> Vec<(String, &'a Value)> {
    let mut vars: Vec<(String, &Value)> = Vec::new();
    for (chain, end) in chains(rule) {
        for macro_ in ["all", "exists", "exists_one", "map", "filter"] {
            let Some(list) = chain.strip_suffix(&format!(".{macro_}")) else {
                continue;
            };
            let var = rule[end + 1..].split(',').next().unwrap_or_default().trim();
            if let Some((node, _)) = resolve(list, here, &vars) {
                vars.push((var.to_owned(), &node["items"]));
            }
        }
    }
    vars
}

/// Identifier chains (`self.a.b`) outside string literals, with the byte offset of each end.
fn chains(rule: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let bytes = rule.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
                {
                    i += 1;
                }
                out.push((rule[start..i].trim_end_matches('.').to_owned(), i));
                continue;
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// The API server estimates the cost of a rule from the schema: a string without `maxLength`
/// counts as long as a whole request (3 MiB), a list without `maxItems` as many items as fit
/// in one. `n.id == self.start` over 200 nodes with unbounded strings is estimated at about
/// 200 × 3 MiB × 0.1 ≈ 6·10^7, over the per-rule budget of 10^7, and the CRD is refused.
/// kube-cel's estimator does not model string sizes, so this checks directly that every list
/// or map a rule iterates and every string it reads is bounded.
#[test]
fn every_value_a_rule_reads_is_bounded() {
    for r in all_rules() {
        let here = node_at(openapi_schema(r.kind), &r.path);
        let found = chains(&r.rule);
        let vars = bind_comprehension_variables(&r.rule, here);
        assert_eq!(
            vars.len(),
            comprehension_variables(&r.rule).len(),
            "{} {}: every comprehension of {:?} ranges over a known list",
            r.kind,
            r.path,
            r.rule
        );
        for (chain, end) in &found {
            let Some((node, path)) = resolve(chain, here, &vars) else {
                continue;
            };
            let before = r.rule[..end - chain.len()].trim_end();
            if before.ends_with("has(") {
                // A presence test costs the same whatever the value's size.
                continue;
            }
            let iterated = chain.ends_with(".all")
                || chain.ends_with(".exists")
                || chain.ends_with(".exists_one")
                || (before.ends_with(" in") && node["type"] == "array")
                || before.ends_with("size(");
            let bounded = match node["type"].as_str() {
                Some("string") => node.get("maxLength").is_some() || node.get("enum").is_some(),
                Some("array") if iterated => node.get("maxItems").is_some(),
                Some("object") if iterated => node.get("maxProperties").is_some(),
                _ => true,
            };
            assert!(
                bounded,
                "{} {}: rule {:?} reads {path}, which has no maxLength/maxItems bound",
                r.kind, r.path, r.rule
            );
        }
    }
}

struct Fixture {
    path: PathBuf,
    expect: Option<String>,
    transition: bool,
    docs: Vec<Value>,
}

fn fixtures(dir: &str) -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            let expect = lines
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .map(|e| e.trim().to_owned());
            let transition = text.lines().take(2).any(|l| l.trim() == "# transition");
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
            Fixture {
                path,
                expect,
                transition,
                docs,
            }
        })
        .collect()
}

fn kind_of(doc: &Value) -> ObjectKind {
    match doc["kind"].as_str() {
        Some("Tenant") => ObjectKind::Tenant,
        Some("Agent") => ObjectKind::Agent,
        Some("Tool") => ObjectKind::Tool,
        Some("Workflow") => ObjectKind::Workflow,
        Some("FeatureFlag") => ObjectKind::FeatureFlag,
        other => panic!("unknown kind {other:?}"),
    }
}

/// Problems the API server would report: schema first, then CEL (with the old object for an
/// update).
fn problems(fixture: &Fixture) -> Vec<String> {
    let name = fixture.path.display();
    if fixture.transition {
        assert_eq!(
            fixture.docs.len(),
            2,
            "{name}: a transition is old then new"
        );
        let (old, new) = (&fixture.docs[0], &fixture.docs[1]);
        let kind = kind_of(new);
        assert!(
            validate_object(kind, old).is_empty(),
            "{name}: the old object is valid"
        );
        let schema_problems = validate_object(kind, new);
        if !schema_problems.is_empty() {
            return schema_problems;
        }
        return match Validator::new().validate(openapi_schema(kind), new, Some(old)) {
            Ok(()) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
    }
    fixture
        .docs
        .iter()
        .flat_map(|doc| validate_object(kind_of(doc), doc))
        .collect()
}

#[test]
fn valid_fixtures_are_admitted() {
    let valid = fixtures("valid");
    assert!(valid.len() >= 5, "valid fixtures");
    let mut kinds = BTreeSet::new();
    for fixture in &valid {
        assert!(
            fixture.expect.is_none(),
            "{}: no expect in valid/",
            fixture.path.display()
        );
        assert!(!fixture.docs.is_empty(), "{}", fixture.path.display());
        kinds.extend(fixture.docs.iter().map(kind_of));
        let problems = problems(fixture);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            fixture.path.display()
        );
    }
    assert_eq!(
        kinds,
        KINDS.into_iter().collect(),
        "a valid fixture of every kind"
    );
}

#[test]
fn invalid_fixtures_are_refused_with_the_expected_message() {
    let invalid = fixtures("invalid");
    assert!(invalid.len() >= 30, "invalid fixtures");
    for fixture in &invalid {
        let name = fixture.path.display();
        let expect = fixture
            .expect
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect: <text>`"));
        assert!(!expect.is_empty(), "{name}");
        if !fixture.transition {
            assert_eq!(
                fixture.docs.len(),
                1,
                "{name}: one document per invalid fixture"
            );
        }
        let problems = problems(fixture);
        assert_eq!(
            problems.len(),
            1,
            "{name}: exactly one problem, got {problems:#?}"
        );
        assert!(
            problems[0].contains(expect),
            "{name}: expected {expect:?}, got {problems:#?}"
        );
    }
}

/// A problem with list indices dropped: `spec.nodes[3]: ...` → `spec.nodes[]: ...`.
fn without_indices(problem: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in problem.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            d if in_index && d.is_ascii_digit() => continue,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A new rule without an invalid fixture fails here: each rule (kind, field and message) must
/// be the problem reported for some invalid fixture.
#[test]
fn every_rule_is_exercised_by_an_invalid_fixture() {
    let reported: Vec<(ObjectKind, String)> = fixtures("invalid")
        .iter()
        .flat_map(|f| {
            let kind = kind_of(f.docs.last().unwrap());
            problems(f)
                .into_iter()
                .map(move |p| (kind, without_indices(&p)))
        })
        .collect();
    let uncovered: Vec<String> = all_rules()
        .into_iter()
        .filter(|r| {
            let expected = if r.path.is_empty() {
                r.message.clone()
            } else {
                format!("{}: {}", r.path, r.message)
            };
            !reported.iter().any(|(k, p)| *k == r.kind && *p == expected)
        })
        .map(|r| format!("{} {}: {}", r.kind, r.path, r.message))
        .collect();
    assert!(
        uncovered.is_empty(),
        "rules without an invalid fixture: {uncovered:#?}"
    );
}

/// `self == oldSelf` guards a value once set; these pin how the rule behaves on update.
#[test]
fn tenant_namespace_cannot_change_once_set() {
    let schema = openapi_schema(ObjectKind::Tenant);
    let tenant = |namespace: Option<&str>| {
        let mut t = json!({
            "apiVersion": "agentry.dev/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"plan": "pro"}
        });
        if let Some(ns) = namespace {
            t["spec"]["namespace"] = json!(ns);
        }
        t
    };
    let v = Validator::new();
    let moved = v
        .validate(
            schema,
            &tenant(Some("acme-two")),
            Some(&tenant(Some("tenant-acme"))),
        )
        .expect_err("a changed namespace is refused");
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].message, "spec.namespace is immutable");
    assert!(
        v.validate(
            schema,
            &tenant(Some("tenant-acme")),
            Some(&tenant(Some("tenant-acme")))
        )
        .is_ok()
    );
    // Setting it for the first time, and creating with it, are allowed.
    assert!(
        v.validate(schema, &tenant(Some("tenant-acme")), Some(&tenant(None)))
            .is_ok()
    );
    assert!(
        v.validate(schema, &tenant(Some("tenant-acme")), None)
            .is_ok()
    );
}
