//! Workflow graph checks: unknown targets, unreachable nodes, cycles without a bound.

use std::collections::{BTreeMap, BTreeSet};

use crate::workflow::{END, Node};

/// The edges of a workflow, by node id, with the field each edge comes from.
#[derive(Debug, Clone, Default)]
pub struct WorkflowGraph {
    /// Node id → (field path relative to the node, target id).
    pub edges: BTreeMap<String, Vec<(String, String)>>,
    /// Nodes that declare `maxVisits`.
    pub bounded: BTreeSet<String>,
}

impl WorkflowGraph {
    /// Builds the graph of `nodes`. Edges to `end` are kept unless a node is called `end`.
    pub fn new(nodes: &[Node]) -> Self {
        let mut graph = Self::default();
        for node in nodes {
            let mut out = Vec::new();
            if let Some(next) = &node.next {
                out.push(("next".to_owned(), next.clone()));
            }
            if let Some(target) = &node.on_error {
                out.push(("onError".to_owned(), target.clone()));
            }
            for (i, case) in node.branch.iter().flatten().enumerate() {
                out.push((format!("branch[{i}].next"), case.next.clone()));
            }
            if let Some(parallel) = &node.parallel {
                for (i, member) in parallel.nodes.iter().enumerate() {
                    out.push((format!("parallel.nodes[{i}]"), member.clone()));
                }
            }
            if let Some(target) = node.approval.as_ref().and_then(|a| a.on_deny.as_ref()) {
                out.push(("approval.onDeny".to_owned(), target.clone()));
            }
            if node.max_visits.is_some() {
                graph.bounded.insert(node.id.clone());
            }
            graph.edges.entry(node.id.clone()).or_default().extend(out);
        }
        graph
    }

    /// Whether `target` is the implicit end of the run.
    pub fn is_implicit_end(&self, target: &str) -> bool {
        target == END && !self.edges.contains_key(END)
    }

    /// Edges whose target is neither a node nor the implicit end: (node, field, target).
    pub fn unknown_targets(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (id, edges) in &self.edges {
            for (field, target) in edges {
                if !self.edges.contains_key(target) && !self.is_implicit_end(target) {
                    out.push((id.clone(), field.clone(), target.clone()));
                }
            }
        }
        out
    }

    /// Nodes not reachable from `start`, in id order.
    pub fn unreachable_from(&self, start: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.to_owned()];
        while let Some(id) = stack.pop() {
            if !self.edges.contains_key(&id) || !seen.insert(id.clone()) {
                continue;
            }
            for (_, target) in &self.edges[&id] {
                stack.push(target.clone());
            }
        }
        self.edges
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect()
    }
}

/// A cycle none of whose nodes declares `maxVisits`, as the list of its node ids, if any.
pub fn unbounded_cycle(graph: &WorkflowGraph) -> Option<Vec<String>> {
    // Bounded nodes cut every cycle through them; a cycle that survives their removal is
    // unbounded. Iterative DFS with colours finds one in O(nodes + edges).
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let ids: Vec<&String> = graph
        .edges
        .keys()
        .filter(|id| !graph.bounded.contains(*id))
        .collect();
    let mut colour: BTreeMap<&str, Colour> =
        ids.iter().map(|id| (id.as_str(), Colour::White)).collect();
    let successors = |id: &str| -> Vec<&str> {
        graph.edges.get(id).map_or_else(Vec::new, |edges| {
            edges
                .iter()
                .map(|(_, t)| t.as_str())
                .filter(|t| colour_has(t, graph))
                .collect()
        })
    };
    fn colour_has(t: &str, graph: &WorkflowGraph) -> bool {
        graph.edges.contains_key(t) && !graph.bounded.contains(t)
    }
    for root in ids {
        if colour.get(root.as_str()) != Some(&Colour::White) {
            continue;
        }
        let mut path: Vec<(&str, Vec<&str>)> = vec![(root.as_str(), successors(root))];
        colour.insert(root.as_str(), Colour::Grey);
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match colour.get(next).copied() {
                    Some(Colour::White) => {
                        colour.insert(next, Colour::Grey);
                        path.push((next, successors(next)));
                    }
                    Some(Colour::Grey) => {
                        let start = path.iter().position(|(id, _)| *id == next).unwrap_or(0);
                        return Some(
                            path[start..]
                                .iter()
                                .map(|(id, _)| (*id).to_owned())
                                .collect(),
                        );
                    }
                    _ => {}
                },
                None => {
                    colour.insert(node, Colour::Black);
                    path.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{BranchCase, TransformNode};

    fn node(id: &str, next: Option<&str>) -> Node {
        Node {
            id: id.to_owned(),
            transform: Some(TransformNode::default()),
            next: next.map(str::to_owned),
            ..Node::default()
        }
    }

    #[test]
    fn finds_unbounded_cycle_and_accepts_bounded_one() {
        let mut a = node("a", Some("b"));
        let b = node("b", None);
        let mut b_branch = b.clone();
        b_branch.branch = Some(vec![BranchCase {
            when: "true".into(),
            next: "a".into(),
        }]);
        a.next = Some("b".into());
        let nodes = vec![a.clone(), b_branch.clone()];
        let cycle = unbounded_cycle(&WorkflowGraph::new(&nodes)).unwrap();
        assert_eq!(cycle, vec!["a".to_owned(), "b".to_owned()]);

        let mut bounded = a;
        bounded.max_visits = Some(3);
        assert!(unbounded_cycle(&WorkflowGraph::new(&[bounded, b_branch])).is_none());
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let nodes = vec![node("a", Some("a"))];
        assert_eq!(
            unbounded_cycle(&WorkflowGraph::new(&nodes)),
            Some(vec!["a".to_owned()])
        );
    }

    #[test]
    fn unknown_and_unreachable() {
        let nodes = vec![node("a", Some("end")), node("b", Some("nowhere"))];
        let graph = WorkflowGraph::new(&nodes);
        assert_eq!(graph.unreachable_from("a"), vec!["b".to_owned()]);
        assert_eq!(
            graph.unknown_targets(),
            vec![("b".to_owned(), "next".to_owned(), "nowhere".to_owned())]
        );
    }
}
