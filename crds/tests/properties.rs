//! Properties of the bundle compiler: the output does not depend on input order; every
//! accepted workflow graph has a bound on each of its cycles (checked by an independent
//! algorithm); and no input, however malformed, makes parsing or compiling panic.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::OnceLock;

use agentry_crds::bundle::{
    BundleSources, Compilation, ObjectKind, Resource, compile, group_by_tenant, parse_documents,
};
use agentry_crds::validate::openapi_schema;
use agentry_crds::workflow::{
    BranchCase, EndNode, Node, ParallelNode, ToolNode, TransformNode, Workflow, WorkflowSpec,
};
use agentry_crds::{Agent, FeatureFlag, Tenant, Tool};
use kube::ResourceExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn acme_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/acme.yaml");
    std::fs::read_to_string(path).unwrap()
}

fn sources_of(resources: Vec<Resource>) -> BundleSources {
    let (mut tenants, diagnostics) = group_by_tenant(resources);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(tenants.len(), 1);
    tenants.remove(0)
}

fn parse_ok(yaml: &str) -> Vec<Resource> {
    let (resources, errors) = parse_documents(yaml);
    assert!(errors.is_empty(), "{errors:?}");
    resources
}

/// The acme example plus objects that produce diagnostics whose outcome could depend on order:
/// two different Agents with one name, two FeatureFlags declaring one key, an invalid Tool.
fn acme_with_conflicts() -> BundleSources {
    let mut sources = sources_of(parse_ok(&acme_yaml()));
    let mut twin = sources.agents[0].clone();
    twin.spec.description = Some("A second agent of the same name.".to_owned());
    sources.agents.push(twin);
    let mut broken: Tool = sources.tools[0].clone();
    broken.metadata.name = Some("broken".to_owned());
    broken.spec.http = None;
    sources.tools.push(broken);
    let mut again: FeatureFlag = sources.flags[0].clone();
    again.metadata.name = Some("more".to_owned());
    sources.flags.push(again);
    sources
}

/// Hash, canonical bytes and diagnostics of a compilation.
type Fingerprint = (String, String, Vec<String>);

/// The conflicts fixture and its compiled fingerprint, computed once.
fn conflicts() -> &'static (BundleSources, Fingerprint) {
    static CELL: OnceLock<(BundleSources, Fingerprint)> = OnceLock::new();
    CELL.get_or_init(|| {
        let sources = acme_with_conflicts();
        let fp = fingerprint(&compile(&sources));
        (sources, fp)
    })
}

/// The acme documents and the fingerprint of their bundle, computed once.
fn acme_baseline() -> &'static (Vec<Value>, Fingerprint) {
    static CELL: OnceLock<(Vec<Value>, Fingerprint)> = OnceLock::new();
    CELL.get_or_init(|| {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&acme_yaml()).unwrap();
        let fp = fingerprint(&compile(&sources_of(parse_ok(&acme_yaml()))));
        (docs, fp)
    })
}

fn fingerprint(c: &Compilation) -> Fingerprint {
    (
        c.bundle.hash.clone(),
        c.bundle.to_canonical_json(),
        c.diagnostics.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn conflicts_fixture_has_order_sensitive_diagnostics() {
    // Guards the shuffle property below: it must have diagnostics to keep stable.
    let c = compile(&acme_with_conflicts());
    let kinds: BTreeSet<ObjectKind> = c.diagnostics.iter().map(|d| d.kind).collect();
    assert!(kinds.contains(&ObjectKind::Agent), "{:#?}", c.diagnostics);
    assert!(kinds.contains(&ObjectKind::Tool), "{:#?}", c.diagnostics);
    assert!(
        kinds.contains(&ObjectKind::FeatureFlag),
        "{:#?}",
        c.diagnostics
    );
}

proptest! {
    #![proptest_config(Config { cases: 64, ..Config::default() })]

    #[test]
    fn input_order_never_changes_the_bundle(
        agents in Just(conflicts().0.agents.clone()).prop_shuffle(),
        tools in Just(conflicts().0.tools.clone()).prop_shuffle(),
        workflows in Just(conflicts().0.workflows.clone()).prop_shuffle(),
        flags in Just(conflicts().0.flags.clone()).prop_shuffle(),
    ) {
        let (sources, baseline) = conflicts();
        let shuffled = BundleSources {
            tenant: sources.tenant.clone(),
            agents,
            tools,
            workflows,
            flags,
        };
        prop_assert_eq!(&fingerprint(&compile(&shuffled)), baseline);
    }

    #[test]
    fn key_order_in_yaml_never_changes_the_hash(seed in any::<u64>()) {
        let (docs, baseline) = acme_baseline();
        // YAML is a superset of JSON: write each document with its keys in a seeded order.
        let mut yaml = String::new();
        for doc in docs.iter().filter(|d| !d.is_null()) {
            yaml.push_str("---\n");
            write_shuffled(doc, seed, &mut yaml);
            yaml.push('\n');
        }
        let c = compile(&sources_of(parse_ok(&yaml)));
        prop_assert!(c.diagnostics.is_empty());
        prop_assert_eq!(&fingerprint(&c), baseline);
    }
}

fn write_shuffled(value: &Value, seed: u64, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                let mut h = DefaultHasher::new();
                (seed, k).hash(&mut h);
                h.finish()
            });
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(key).unwrap());
                out.push_str(": ");
                write_shuffled(&map[key], seed, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_shuffled(item, seed, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).unwrap()),
    }
}

// ---- Workflow graphs -------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Target {
    /// The node after this one (or `end` after the last): keeps most nodes reachable.
    Following,
    Node(usize),
    End,
}

#[derive(Clone, Debug)]
struct GenNode {
    /// 0 transform, 1 branch, 2 end, 3 tool, 4 parallel.
    kind: u8,
    next: Option<Target>,
    on_error: Option<Target>,
    branch: Vec<Target>,
    parallel: Vec<usize>,
    max_visits: Option<u32>,
}

fn target(n: usize) -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => Just(Target::Following),
        3 => (0..n).prop_map(Target::Node),
        1 => Just(Target::End),
    ]
}

fn graph() -> impl Strategy<Value = Vec<GenNode>> {
    (1usize..=12).prop_flat_map(|n| {
        let node = (
            prop_oneof![3 => Just(0u8), 3 => Just(1), 1 => Just(2), 2 => Just(3), 1 => Just(4)],
            proptest::option::weighted(0.9, target(n)),
            proptest::option::weighted(0.2, target(n)),
            proptest::collection::vec(target(n), 1..3),
            proptest::collection::vec(0..n, 1..3),
            proptest::option::weighted(0.5, 1u32..5),
        )
            .prop_map(
                |(kind, next, on_error, branch, parallel, max_visits)| GenNode {
                    kind,
                    next,
                    on_error,
                    branch,
                    parallel,
                    max_visits,
                },
            );
        proptest::collection::vec(node, n)
    })
}

fn id(i: usize) -> String {
    format!("n{i}")
}

fn resolve_target(t: &Target, i: usize, n: usize) -> String {
    match t {
        Target::Following if i + 1 < n => id(i + 1),
        Target::Following | Target::End => "end".to_owned(),
        Target::Node(j) => id(*j),
    }
}

fn build_nodes(spec: &[GenNode]) -> Vec<Node> {
    let n = spec.len();
    spec.iter()
        .enumerate()
        .map(|(i, g)| {
            let mut node = Node {
                id: id(i),
                next: g.next.as_ref().map(|t| resolve_target(t, i, n)),
                on_error: g.on_error.as_ref().map(|t| resolve_target(t, i, n)),
                max_visits: g.max_visits,
                ..Node::default()
            };
            match g.kind {
                0 => {
                    node.transform = Some(TransformNode {
                        template: BTreeMap::from([("x".to_owned(), "{{ state }}".to_owned())]),
                        ..TransformNode::default()
                    });
                }
                1 => {
                    node.branch = Some(
                        g.branch
                            .iter()
                            .map(|t| BranchCase {
                                when: "true".to_owned(),
                                next: resolve_target(t, i, n),
                            })
                            .collect(),
                    );
                }
                2 => {
                    node.end = Some(EndNode::default());
                    node.next = None;
                }
                3 => {
                    node.tool = Some(ToolNode {
                        name: "clock".to_owned(),
                        args: BTreeMap::new(),
                    });
                }
                _ => {
                    node.parallel = Some(ParallelNode {
                        nodes: g.parallel.iter().map(|j| id(*j)).collect(),
                        max_concurrency: None,
                    });
                }
            }
            node
        })
        .collect()
}

/// Every edge of the graph, by node id, read straight from the nodes.
fn edges_of(nodes: &[Node]) -> BTreeMap<String, Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            let mut out: Vec<String> = n.next.iter().chain(n.on_error.iter()).cloned().collect();
            out.extend(n.branch.iter().flatten().map(|c| c.next.clone()));
            out.extend(n.parallel.iter().flat_map(|p| p.nodes.iter().cloned()));
            out.extend(n.approval.iter().filter_map(|a| a.on_deny.clone()));
            (n.id.clone(), out)
        })
        .collect()
}

/// Kahn's algorithm on the graph without its bounded nodes: nodes left over lie on (or after)
/// a cycle that no `maxVisits` bounds.
fn has_unbounded_cycle(nodes: &[Node]) -> bool {
    let edges = edges_of(nodes);
    let bounded: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.max_visits.is_some())
        .map(|n| n.id.as_str())
        .collect();
    let kept = |id: &str| edges.contains_key(id) && !bounded.contains(id);
    let mut indegree: BTreeMap<&str, usize> = edges
        .keys()
        .filter(|id| kept(id))
        .map(|id| (id.as_str(), 0))
        .collect();
    for (from, targets) in &edges {
        if !kept(from) {
            continue;
        }
        for to in targets.iter().filter(|t| kept(t)) {
            *indegree.get_mut(to.as_str()).unwrap() += 1;
        }
    }
    let mut ready: VecDeque<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut removed = 0;
    while let Some(id) = ready.pop_front() {
        removed += 1;
        for to in edges[id].iter().filter(|t| kept(t)) {
            let d = indegree.get_mut(to.as_str()).unwrap();
            *d -= 1;
            if *d == 0 {
                ready.push_back(to.as_str());
            }
        }
    }
    removed < indegree.len()
}

fn reachable(nodes: &[Node], start: &str) -> BTreeSet<String> {
    let edges = edges_of(nodes);
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_owned()];
    while let Some(id) = stack.pop() {
        if edges.contains_key(&id) && seen.insert(id.clone()) {
            stack.extend(edges[&id].iter().cloned());
        }
    }
    seen
}

fn graph_tenant() -> BundleSources {
    sources_of(parse_ok(
        "apiVersion: agentry.dev/v1alpha1
kind: Tenant
metadata: {name: graphs}
spec: {}
---
apiVersion: agentry.dev/v1alpha1
kind: Tool
metadata: {name: clock, namespace: tenant-graphs}
spec: {description: The time., type: builtin, builtin: {name: current_time}}
",
    ))
}

#[test]
fn accepted_workflows_have_no_unbounded_cycle() {
    let base = graph_tenant();
    let accepted = Cell::new(0u32);
    let accepted_with_loop = Cell::new(0u32);
    let refused_for_cycle = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let result = runner.run(&graph(), |generated| {
        let nodes = build_nodes(&generated);
        let mut workflow = Workflow::new(
            "wf",
            WorkflowSpec {
                description: None,
                input: None,
                start: id(0),
                limits: None,
                nodes: nodes.clone(),
            },
        );
        workflow.metadata.namespace = Some("tenant-graphs".to_owned());
        let mut sources = base.clone();
        sources.workflows.push(workflow);
        let c = compile(&sources);
        let diags = c.diagnostics_for(ObjectKind::Workflow, "wf");
        let cycle_diags: Vec<&str> = diags
            .iter()
            .map(|d| d.message.as_str())
            .filter(|m| m.contains("has no bound"))
            .collect();
        let unbounded = has_unbounded_cycle(&nodes);
        prop_assert!(c.bundle.verify_hash());
        if c.bundle.workflows.contains_key("wf") {
            accepted.set(accepted.get() + 1);
            prop_assert!(diags.is_empty(), "{:?}", diags);
            prop_assert!(!unbounded, "accepted with an unbounded cycle: {:#?}", nodes);
            prop_assert_eq!(reachable(&nodes, "n0").len(), nodes.len());
            if !edges_of(&nodes).values().flatten().all(|t| t == "end") {
                let cyclic = {
                    let mut all_bounded = nodes.clone();
                    all_bounded.iter_mut().for_each(|n| n.max_visits = None);
                    has_unbounded_cycle(&all_bounded)
                };
                if cyclic {
                    accepted_with_loop.set(accepted_with_loop.get() + 1);
                }
            }
        } else {
            prop_assert!(!diags.is_empty(), "left out without a diagnostic");
        }
        if unbounded {
            refused_for_cycle.set(refused_for_cycle.get() + 1);
            prop_assert_eq!(cycle_diags.len(), 1, "{:?}", diags);
            // The reported cycle is real: consecutive edges, back to its start, no bound.
            let listed = cycle_diags[0]
                .strip_prefix("cycle ")
                .and_then(|m| m.split(" has no bound").next())
                .unwrap_or_default();
            let ids: Vec<&str> = listed.split(" -> ").collect();
            let edges = edges_of(&nodes);
            for (i, from) in ids.iter().enumerate() {
                let to = ids[(i + 1) % ids.len()];
                prop_assert!(edges[*from].iter().any(|t| t == to), "{from} -> {to}");
                let node = nodes.iter().find(|n| n.id == *from).unwrap();
                prop_assert!(node.max_visits.is_none(), "{from} is bounded");
            }
        } else {
            prop_assert!(cycle_diags.is_empty(), "{:?}", cycle_diags);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator must reach the interesting cases, or the property proves little.
    assert!(accepted.get() > 0, "no workflow was accepted");
    assert!(
        accepted_with_loop.get() > 0,
        "no accepted workflow had a bounded loop"
    );
    assert!(
        refused_for_cycle.get() > 0,
        "no workflow had an unbounded cycle"
    );
}

// ---- Malformed input never panics ------------------------------------------------------------

/// Property names of every schema, so that random documents look like resources.
fn vocabulary() -> Vec<String> {
    fn collect(node: &Value, out: &mut BTreeSet<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                out.insert(k.clone());
                collect(v, out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = node.get(key) {
                collect(sub, out);
            }
        }
    }
    let mut words = BTreeSet::new();
    for kind in [
        ObjectKind::Tenant,
        ObjectKind::Agent,
        ObjectKind::Tool,
        ObjectKind::Workflow,
        ObjectKind::FeatureFlag,
    ] {
        collect(openapi_schema(kind), &mut words);
    }
    words.into_iter().collect()
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        Just("{{ args.x ".to_owned()),
        Just("{% for x in y %}".to_owned()),
        Just("((((((((((((((((((((((((((((((((((((".to_owned()),
        Just("state.x > 1 &&".to_owned()),
        Just("end".to_owned()),
        Just("n0".to_owned()),
        Just("tenant-acme".to_owned()),
        Just("agentry.dev/v1alpha1".to_owned()),
        Just("https://example.com/{{ args.id }}".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("0.0000001".to_owned()),
    ]
}

fn json_value(words: Vec<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<u32>().prop_map(|i| json!(i)),
        (0u32..300).prop_map(|i| json!(i)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        let key = prop_oneof![
            4 => proptest::sample::select(words.clone()),
            1 => "\\PC{0,8}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parses, groups and compiles; every bundle produced must still verify.
fn run_pipeline(yaml: &str) {
    let (resources, _) = parse_documents(yaml);
    let (tenants, _) = group_by_tenant(resources);
    for sources in &tenants {
        let c = compile(sources);
        assert!(c.bundle.verify_hash());
        for d in &c.diagnostics {
            assert!(!d.message.is_empty());
        }
    }
}

/// Compiles documents that deserialize into the typed API without the schema check (objects
/// stored before a schema tightened reach the operator that way); every bundle must verify.
fn compile_unchecked(docs: &[Value]) {
    let mut tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "agentry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "x"},
        "spec": {},
    }))
    .unwrap();
    let mut sources = BundleSources::new(tenant.clone());
    for doc in docs {
        let doc = doc.clone();
        match doc["kind"].as_str() {
            Some("Tenant") => {
                if let Ok(t) = serde_json::from_value::<Tenant>(doc) {
                    tenant = t;
                }
            }
            Some("Agent") => sources
                .agents
                .extend(serde_json::from_value::<Agent>(doc).ok()),
            Some("Tool") => sources
                .tools
                .extend(serde_json::from_value::<Tool>(doc).ok()),
            Some("Workflow") => sources
                .workflows
                .extend(serde_json::from_value::<Workflow>(doc).ok()),
            Some("FeatureFlag") => sources
                .flags
                .extend(serde_json::from_value::<FeatureFlag>(doc).ok()),
            _ => {}
        }
    }
    sources.tenant = tenant;
    let c = compile(&sources);
    assert!(c.bundle.verify_hash());
}

/// Replaces (or removes) the value at a random place in `doc`.
fn mutate(node: &mut Value, path: &[usize], replacement: Value, remove: bool) {
    let Some((choice, rest)) = path.split_first() else {
        *node = replacement;
        return;
    };
    match node {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(choice % map.len()).cloned().unwrap();
            if rest.is_empty() && remove {
                map.remove(&key);
            } else {
                mutate(map.get_mut(&key).unwrap(), rest, replacement, remove);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = choice % items.len();
            if rest.is_empty() && remove {
                items.remove(i);
            } else {
                mutate(&mut items[i], rest, replacement, remove);
            }
        }
        _ => *node = replacement,
    }
}

fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("key: "),
        Just("- "),
        Just("\n"),
        Just("  "),
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(", "),
        Just("---\n"),
        Just("...\n"),
        Just("apiVersion: agentry.dev/v1alpha1\n"),
        Just("kind: Workflow\n"),
        Just("kind: Tenant\n"),
        Just("metadata: {name: x, namespace: tenant-x}\n"),
        Just("spec:\n"),
        Just("&a "),
        Just("*a "),
        Just("!!str "),
        Just("!!binary "),
        Just("? "),
        Just("|\n"),
        Just(">-\n"),
        Just("'"),
        Just("\""),
        Just("~"),
        Just("1e999"),
        Just("0x1F"),
        Just("#"),
        Just("\t"),
    ];
    proptest::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,300}") {
        run_pipeline(&text);
    }

    #[test]
    fn yaml_soup_never_panics(text in yaml_soup()) {
        run_pipeline(&text);
    }

    #[test]
    fn random_documents_never_panic(
        docs in proptest::collection::vec(
            (
                proptest::sample::select(vec!["Tenant", "Agent", "Tool", "Workflow", "FeatureFlag"]),
                json_value(vocabulary()),
            ),
            1..4,
        ),
    ) {
        let mut yaml = String::new();
        let mut typed = Vec::new();
        for (kind, spec) in docs {
            let doc = json!({
                "apiVersion": "agentry.dev/v1alpha1",
                "kind": kind,
                "metadata": {"name": "x", "namespace": "tenant-x"},
                "spec": spec,
            });
            yaml.push_str("---\n");
            yaml.push_str(&serde_json::to_string(&doc).unwrap());
            yaml.push('\n');
            typed.push(doc);
        }
        yaml.push_str("---\n{apiVersion: agentry.dev/v1alpha1, kind: Tenant, metadata: {name: x}, spec: {}}\n");
        run_pipeline(&yaml);
        compile_unchecked(&typed);
    }

    #[test]
    fn mutated_examples_never_panic(
        mutations in proptest::collection::vec(
            (
                any::<usize>(),
                proptest::collection::vec(any::<usize>(), 1..7),
                json_value(vocabulary()),
                proptest::bool::weighted(0.3),
            ),
            1..4,
        ),
    ) {
        let mut docs: Vec<Value> = acme_baseline().0.clone();
        docs.retain(|d| !d.is_null());
        for (which, path, replacement, remove) in mutations {
            let n = docs.len();
            mutate(&mut docs[which % n], &path, replacement, remove);
        }
        let yaml: String = docs
            .iter()
            .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
            .collect();
        run_pipeline(&yaml);
        compile_unchecked(&docs);
    }
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// The schema caps weights at 100 and shares at 16, but the compiler must not rely on it:
    /// objects stored before a schema tightened, or built in code, reach it unchecked.
    #[test]
    fn rollout_weights_of_any_size_are_summed_exactly(
        weights in proptest::collection::vec(
            prop_oneof![0u32..=100, any::<u32>(), Just(u32::MAX)],
            1..20,
        ),
    ) {
        let rollout: Vec<Value> = weights
            .iter()
            .map(|w| json!({"variant": "a", "weight": w}))
            .collect();
        let flag: FeatureFlag = serde_json::from_value(json!({
            "apiVersion": "agentry.dev/v1alpha1",
            "kind": "FeatureFlag",
            "metadata": {"name": "f", "namespace": "tenant-graphs"},
            "spec": {"flags": [{"key": "k", "variants": {"a": 1}, "defaultVariant": "a", "rollout": rollout}]},
        }))
        .unwrap();
        let mut sources = graph_tenant();
        sources.flags.push(flag);
        let c = compile(&sources);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        prop_assert_eq!(c.bundle.flags.contains_key("k"), total == 100, "{:?}", c.diagnostics);
        if total != 100 {
            let expected = format!("weights sum to {total}, not 100");
            prop_assert!(
                c.diagnostics.iter().any(|d| d.message == expected),
                "{:?}",
                c.diagnostics
            );
        }
    }
}

#[test]
fn pipeline_compiles_the_unmutated_examples() {
    // The mutation property starts from documents that compile; if they did not, every
    // mutation would be refused at parse time and the compiler never exercised.
    let docs: Vec<Value> = serde_saphyr::from_multiple(&acme_yaml()).unwrap();
    let yaml: String = docs
        .iter()
        .filter(|d| !d.is_null())
        .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
        .collect();
    let sources = sources_of(parse_ok(&yaml));
    assert_eq!(sources.tenant.name_any(), "acme");
    assert!(compile(&sources).diagnostics.is_empty());
}
