//! Least privilege: the chart grants the operator exactly the (apiGroup, resource, verb)
//! triples its controllers use, no wildcard and nothing more.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{self, default_render, full_render, one, read_documents};

/// One permission: (apiGroup, resource, verb).
type Triple = (String, String, String);

fn triples<'a>(
    table: impl IntoIterator<Item = (&'a str, &'a str, Vec<&'a str>)>,
) -> BTreeSet<Triple> {
    table
        .into_iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .into_iter()
                .map(move |verb| (group.to_owned(), resource.to_owned(), verb.to_owned()))
        })
        .collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every triple a role's rules grant; fails on wildcards and on rules the operator has no use
/// for (resourceNames, nonResourceURLs).
fn granted(role: &Value) -> BTreeSet<Triple> {
    let mut all = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(
            rule["nonResourceURLs"].is_null(),
            "non-resource rule {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for part in [group, resource, verb] {
                        assert!(!part.contains('*'), "wildcard in {rule}");
                    }
                    all.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
                }
            }
        }
    }
    all
}

/// The chart's single permission list, `helm/agentry/files/operator-permissions.yaml`.
fn chart_list() -> BTreeSet<Triple> {
    let path = support::chart().join("files/operator-permissions.yaml");
    let docs = read_documents(&path);
    let entries = docs[0].as_array().expect("a list");
    triples(entries.iter().map(|e| {
        (
            e["apiGroup"].as_str().expect("apiGroup"),
            e["resource"].as_str().expect("resource"),
            strings(&e["verbs"]),
        )
    }))
}

fn show(set: &BTreeSet<Triple>) -> String {
    set.iter()
        .map(|(g, r, v)| format!("({g:?}, {r}, {v})"))
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn assert_same(what: &str, actual: &BTreeSet<Triple>, expected: &BTreeSet<Triple>) {
    let extra: BTreeSet<_> = actual.difference(expected).cloned().collect();
    let missing: BTreeSet<_> = expected.difference(actual).cloned().collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}\ngranted but not used:\n  {}\nused but not granted:\n  {}",
        show(&extra),
        show(&missing)
    );
}

#[test]
fn rendered_roles_grant_exactly_the_permission_list() {
    let list = chart_list();
    for objects in [default_render(), full_render()] {
        let cluster = granted(one(objects, "ClusterRole"));
        let namespaced = granted(one(objects, "Role"));
        assert!(
            namespaced
                .iter()
                .all(|(g, r, _)| g == "coordination.k8s.io" && r == "leases"),
            "the namespaced Role is for leader election only: {}",
            show(&namespaced)
        );
        assert!(
            cluster.iter().all(|(g, _, _)| g != "coordination.k8s.io"),
            "leases are never granted cluster-wide"
        );
        let all: BTreeSet<Triple> = cluster.union(&namespaced).cloned().collect();
        assert_same(
            "the rendered roles differ from files/operator-permissions.yaml",
            &all,
            &list,
        );

        // Both roles are bound to the operator's ServiceAccount.
        let sa = one(objects, "ServiceAccount");
        for binding in ["ClusterRoleBinding", "RoleBinding"] {
            let binding = one(objects, binding);
            assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
            assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
            assert_eq!(
                binding["subjects"][0]["namespace"],
                sa["metadata"]["namespace"]
            );
        }
        assert_eq!(
            one(objects, "RoleBinding")["roleRef"]["name"],
            one(objects, "Role")["metadata"]["name"]
        );
        assert_eq!(
            one(objects, "ClusterRoleBinding")["roleRef"]["name"],
            one(objects, "ClusterRole")["metadata"]["name"]
        );
    }
}

/// Reads `PERMISSIONS: &[(&str, &str, &[&str])]` out of operator/src/rbac.rs: each tuple's
/// string literals are its group, resource and verbs.
fn operator_table(source: &str) -> BTreeSet<Triple> {
    let start = source
        .find("PERMISSIONS")
        .expect("operator/src/rbac.rs declares no PERMISSIONS table");
    let body = &source[start..];
    let body = &body[body.find("= &[").expect("PERMISSIONS = &[ ... ]") + 4..];
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut current: Vec<String> = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut literal = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    literal.push(c);
                }
                current.push(literal);
            }
            '(' => {
                depth += 1;
                current.clear();
            }
            ')' => {
                depth = depth.saturating_sub(1);
                assert!(
                    current.len() >= 3,
                    "a PERMISSIONS entry without verbs: {current:?}"
                );
                entries.push(std::mem::take(&mut current));
            }
            ']' if depth == 0 => break,
            _ => {}
        }
    }
    triples(entries.iter().map(|e| {
        (
            e[0].as_str(),
            e[1].as_str(),
            e[2..].iter().map(String::as_str).collect(),
        )
    }))
}

#[test]
fn permission_list_matches_the_operator() {
    let path = support::root().join("operator/src/rbac.rs");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}): the operator must export its Kubernetes permissions as \
             `pub const PERMISSIONS: &[(&str, &str, &[&str])]` (apiGroup, resource, verbs) so \
             that the chart's ClusterRole can be checked against what the controllers use",
            path.display()
        )
    });
    let table = operator_table(&source);
    assert!(!table.is_empty(), "PERMISSIONS is empty");
    assert_same(
        "helm/agentry/files/operator-permissions.yaml differs from PERMISSIONS in operator/src/rbac.rs",
        &chart_list(),
        &table,
    );
}

#[test]
fn the_table_reader_reads_tuples_and_skips_comments() {
    let source = r#"
        /// Doc.
        pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
            // ("ignored", "in", &["comments"]),
            ("", "namespaces", &["get", "patch"]),
            ("apps", "deployments", &[
                "get",
            ]),
        ];
        const OTHER: &[&str] = &["not", "read"];
    "#;
    let table = operator_table(source);
    let expected = triples([
        ("", "namespaces", vec!["get", "patch"]),
        ("apps", "deployments", vec!["get"]),
    ]);
    assert_eq!(table, expected);
}
