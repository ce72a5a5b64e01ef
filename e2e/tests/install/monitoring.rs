//! What the chart ships for monitoring: the ServiceMonitor and PodMonitor, the PrometheusRule
//! (SLO burn-rate alerts, each with a runbook in docs/runbooks/), and the Grafana dashboards.
//! Every PromQL expression must parse and name only metrics the binaries export.

use std::collections::BTreeSet;
use std::path::Path;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;

use crate::support::{self, full_render, of_kind, one};

/// Metric names an expression selects.
fn selected_metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(name) = selector.and_then(|vs| vs.name.clone()) {
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let ast = parser::parse(expr)?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

fn rules(render: &[Value]) -> Vec<&Value> {
    one(render, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

fn alerts(render: &[Value]) -> Vec<&Value> {
    rules(render)
        .into_iter()
        .filter(|r| r["alert"].is_string())
        .collect()
}

#[test]
fn every_rule_expression_parses_and_uses_defined_recordings() {
    let rules = rules(full_render());
    let recorded: BTreeSet<&str> = rules.iter().filter_map(|r| r["record"].as_str()).collect();
    assert!(!recorded.is_empty());
    for rule in &rules {
        let expr = rule["expr"].as_str().expect("expr");
        let names = selected_metrics(expr)
            .unwrap_or_else(|e| panic!("rule {} does not parse: {e}\n{expr}", rule["alert"]));
        for name in names.iter().filter(|n| n.contains(':')) {
            assert!(
                recorded.contains(name.as_str()),
                "{name} is used but never recorded"
            );
        }
    }
}

#[test]
fn alerts_carry_severity_summary_and_thresholds_from_values() {
    let alerts = alerts(full_render());
    let names: BTreeSet<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    for expected in [
        "AgentryRuntimeErrorBudgetBurnFast",
        "AgentryRuntimeErrorBudgetBurnSlow",
        "AgentryReconcileErrorBudgetBurnFast",
        "AgentryReconcileErrorBudgetBurnSlow",
        "AgentryOutboxLagHigh",
        "AgentryUsageWriteDelayHigh",
        "AgentryBundleRejected",
        "AgentryOperatorDown",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    for alert in &alerts {
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{alert}");
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert["annotations"][key].is_string(),
                "{} lacks {key}",
                alert["alert"]
            );
        }
        if let Some(d) = alert["for"].as_str() {
            assert!(crate::schemas::is_duration(d), "{d}");
        }
    }
    let by_name = |n: &str| {
        alerts
            .iter()
            .find(|a| a["alert"] == n)
            .and_then(|a| a["expr"].as_str())
            .unwrap()
    };
    // ci/full-values.yaml sets availabilitySLO 0.995, outboxLagSeconds 120 and
    // usageWriteDelaySeconds 2.5.
    assert!(by_name("AgentryRuntimeErrorBudgetBurnFast").contains("14.4 * (1 - 0.995)"));
    assert!(by_name("AgentryOutboxLagHigh").contains("> 120"));
    assert!(by_name("AgentryUsageWriteDelayHigh").contains("> 2.5"));
    assert!(by_name("AgentryReconcileErrorBudgetBurnFast").contains("(1 - 0.99)"));
}

#[test]
fn every_alert_links_a_runbook_that_exists() {
    let runbooks = support::root().join("docs/runbooks");
    let mut linked = BTreeSet::new();
    for alert in alerts(full_render()) {
        let name = alert["alert"].as_str().unwrap();
        let url = alert["annotations"]["runbook_url"].as_str().unwrap();
        let file = format!("{name}.md");
        assert!(
            url.ends_with(&format!("/docs/runbooks/{file}")),
            "{name}: runbook_url {url} is not docs/runbooks/{file}"
        );
        let path = runbooks.join(&file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{name} links {}, which cannot be read: {e}", path.display())
        });
        assert!(
            text.starts_with(&format!("# {name}")),
            "{file} must start with `# {name}`"
        );
        for section in ["## Symptom", "## Impact", "## Diagnosis", "## Fix"] {
            assert!(text.contains(section), "{file} lacks a `{section}` section");
        }
        linked.insert(file);
    }
    // No runbook for an alert that no longer exists.
    for entry in std::fs::read_dir(&runbooks).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file != "README.md" {
            assert!(
                linked.contains(&file),
                "docs/runbooks/{file} belongs to no alert"
            );
        }
    }
}

/// The metric names a crate's sources register with prometheus-client, with every prefix the
/// same file declares; a counter is exported with `_total`, a histogram with `_bucket`, ...
fn exported_metric_bases(dir: &Path, bases: &mut BTreeSet<String>, sources: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            exported_metric_bases(&path, bases, sources);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let literal_after = |marker: &str| -> Vec<String> {
            text.match_indices(marker)
                .filter_map(|(i, _)| {
                    let rest = text[i + marker.len()..].trim_start();
                    let rest = rest.strip_prefix('"')?;
                    Some(rest[..rest.find('"')?].to_owned())
                })
                .collect()
        };
        let prefixes = literal_after("prefix(");
        let mut chains = vec![String::new()];
        let mut chain = String::new();
        for p in &prefixes {
            chain = if chain.is_empty() {
                p.clone()
            } else {
                format!("{chain}_{p}")
            };
            chains.push(chain.clone());
            chains.push(p.clone());
        }
        for name in literal_after("register(")
            .into_iter()
            .chain(literal_after("register_with_unit("))
        {
            for prefix in &chains {
                bases.insert(if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}_{name}")
                });
            }
        }
        sources.push_str(&text);
    }
}

fn assert_exported(used: &BTreeSet<String>, origin: &str) {
    let root = support::root();
    let mut bases = BTreeSet::new();
    let mut sources = String::new();
    for krate in ["runtime/src", "operator/src"] {
        exported_metric_bases(&root.join(krate), &mut bases, &mut sources);
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|m| m.starts_with("agentry_"))
        .filter(|m| {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .unwrap_or(m);
            !bases.contains(*m) && !bases.contains(base) && !sources.contains(&format!("\"{m}\""))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "{origin} use metrics that neither runtime/src nor operator/src exports: {unknown:?}\n\
         (exported: {bases:?})"
    );
}

#[test]
fn rules_use_only_exported_metrics() {
    let mut used = BTreeSet::new();
    for rule in rules(full_render()) {
        used.extend(selected_metrics(rule["expr"].as_str().unwrap()).unwrap());
    }
    assert!(used.contains("agentry_http_requests_total"));
    assert!(used.contains("agentry_outbox_lag_seconds"));
    assert!(used.contains("agentry_usage_write_delay_seconds_bucket"));
    assert_exported(&used, "the PrometheusRule's expressions");
}

/// A dashboard query with Grafana's variables replaced by values PromQL accepts.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1d")
        .replace("$slo", "0.999")
}

fn dashboards() -> Vec<(String, Value)> {
    of_kind(full_render(), "ConfigMap")
        .into_iter()
        .flat_map(|cm| {
            cm["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(file, json)| {
                    let dashboard = serde_json::from_str(json.as_str().unwrap())
                        .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
                    (file.clone(), dashboard)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dashboards_parse_and_query_exported_metrics() {
    let dashboards = dashboards();
    let files: BTreeSet<&str> = dashboards.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(files, BTreeSet::from(["operator.json", "runtime.json"]));
    let mut uids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (file, dashboard) in &dashboards {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_owned()),
            "{file}: duplicate uid"
        );
        assert!(
            dashboard["title"]
                .as_str()
                .unwrap()
                .starts_with("Agentry / ")
        );
        let mut panel_ids = BTreeSet::new();
        let mut queries = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(
                panel_ids.insert(panel["id"].as_i64().unwrap()),
                "{file}: duplicate panel id"
            );
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = concrete(target["expr"].as_str().unwrap());
                let names = selected_metrics(&expr)
                    .unwrap_or_else(|e| panic!("{file}, panel {:?}: {e}\n{expr}", panel["title"]));
                used.extend(names);
                queries += 1;
            }
        }
        assert!(queries >= 5, "{file} has {queries} queries");
        // Every datasource is the dashboard's variable, so it works in any Grafana.
        let text = dashboard.to_string();
        assert!(
            !text.contains("\"uid\":\"prometheus\""),
            "{file} pins a datasource"
        );
    }
    assert_exported(&used, "the Grafana dashboards");
}

#[test]
fn monitors_select_what_exposes_metrics() {
    let objects = full_render();
    let monitor = one(objects, "ServiceMonitor");
    let service = one(objects, "Service");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor misses the Service"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let pods = one(objects, "PodMonitor");
    assert_eq!(pods["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(pods["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
}
