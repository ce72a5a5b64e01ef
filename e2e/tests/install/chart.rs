//! The Helm chart: lint, render with default and full values, validate everything rendered,
//! the values schema, the operator Deployment and the migration hook.

use serde_json::Value;

use crate::schemas::validate_all;
use crate::support::{self, default_render, env, full_render, inventory, of_kind, one};

#[test]
fn helm_lint_passes_with_default_and_full_values() {
    let chart = support::chart();
    let chart = chart.to_str().unwrap();
    let full = support::full_values();
    for args in [
        vec!["lint", "--strict", chart],
        vec!["lint", "--strict", chart, "-f", full.to_str().unwrap()],
    ] {
        let out = support::helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "helm {args:?}:\n{out}");
    }
}

#[test]
fn default_render_is_valid_and_minimal() {
    let objects = default_render();
    validate_all("default", objects);
    let kinds = inventory(objects);
    for expected in [
        "ServiceAccount/agentry-operator",
        "ClusterRole/agentry-operator",
        "ClusterRoleBinding/agentry-operator",
        "Role/agentry-operator",
        "RoleBinding/agentry-operator",
        "Deployment/agentry-operator",
        "Service/agentry-operator-metrics",
        "Job/agentry-migrate",
        "NetworkPolicy/agentry-operator",
        "NetworkPolicy/agentry-migrate",
    ] {
        assert!(
            kinds.contains(&expected.to_owned()),
            "{expected} missing: {kinds:#?}"
        );
    }
    assert_eq!(
        of_kind(objects, "CustomResourceDefinition").len(),
        5,
        "{kinds:#?}"
    );
    // Optional features are off by default: a cluster without the Prometheus Operator must be
    // able to install the chart as it is.
    for absent in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "PodDisruptionBudget",
    ] {
        assert!(
            of_kind(objects, absent).is_empty(),
            "{absent} rendered by default"
        );
    }
}

#[test]
fn full_render_is_valid_and_has_every_feature() {
    let objects = full_render();
    validate_all("full", objects);
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
    ] {
        assert_eq!(of_kind(objects, kind).len(), 1, "one {kind}");
    }
    let dashboards = of_kind(objects, "ConfigMap");
    assert_eq!(dashboards.len(), 2, "runtime and operator dashboards");
    for cm in dashboards {
        assert_eq!(cm["metadata"]["namespace"], "monitoring");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    }
    let pdb = one(objects, "PodDisruptionBudget");
    let deployment = one(objects, "Deployment");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

/// A values file that the schema must refuse, and the words helm's message must contain.
const BAD_VALUES: &[(&str, &str)] = &[
    ("replicaCount: 2\n", "replicaCount"),
    ("operator:\n  replicas: 0\n", "/operator/replicas"),
    ("operator:\n  logFormat: yaml\n", "/operator/logFormat"),
    ("database:\n  sslmode: sometimes\n", "/database/sslmode"),
    ("database:\n  port: \"5432\"\n", "/database/port"),
    (
        "database:\n  adminSecret:\n    name: Not_A_Name\n",
        "/database/adminSecret/name",
    ),
    ("database:\n  adminSecret:\n    nme: x\n", "nme"),
    ("nats:\n  url: http://nats:4222\n", "/nats/url"),
    (
        "networkPolicy:\n  postgres:\n    cidrs: [\"10.0.0.0\"]\n",
        "/networkPolicy/postgres/cidrs",
    ),
    (
        "networkPolicy:\n  nats:\n    cidrs: []\n",
        "/networkPolicy/nats/cidrs",
    ),
    (
        "prometheusRules:\n  availabilitySLO: 99.9\n",
        "/prometheusRules/availabilitySLO",
    ),
    (
        "image:\n  operator:\n    pullPolicy: Sometimes\n",
        "/image/operator/pullPolicy",
    ),
    (
        "serviceMonitor:\n  interval: soon\n",
        "/serviceMonitor/interval",
    ),
];

#[test]
fn values_schema_rejects_bad_values() {
    let dir = support::scratch("bad-values");
    let chart = support::chart();
    for (i, (values, needle)) in BAD_VALUES.iter().enumerate() {
        let file = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let out = support::helm(&[
            "template",
            support::RELEASE,
            chart.to_str().unwrap(),
            "-f",
            file.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the schema accepted:\n{values}");
        assert!(
            stderr.contains(needle),
            "refusing\n{values}\nshould name {needle}, helm said:\n{stderr}"
        );
    }
}

#[test]
fn two_replicas_need_leader_election() {
    let chart = support::chart();
    let out = support::helm(&[
        "template",
        support::RELEASE,
        chart.to_str().unwrap(),
        "--set",
        "operator.replicas=2",
        "--set",
        "operator.leaderElection.enabled=false",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaderElection"));
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Pod Security "restricted", as the namespace label in kustomize/base enforces it.
fn assert_restricted(pod_spec: &Value, container: &Value) {
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod_spec["securityContext"]["runAsUser"], 0);
    assert_eq!(
        pod_spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
}

#[test]
fn operator_deployment_is_hardened_and_configured_from_values() {
    for (objects, secret, key, nats, domain) in [
        (
            default_render(),
            "agentry-database",
            "url",
            "nats://nats.nats.svc.cluster.local:4222",
            "agentry.example.com",
        ),
        (
            full_render(),
            "agentry-pg-admin",
            "database-url",
            "tls://nats.messaging.svc.cluster.local:4222",
            "ai.example.com",
        ),
    ] {
        let deployment = one(objects, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let operator = container(pod, "operator");
        assert_restricted(pod, operator);
        assert_eq!(operator["command"], serde_json::json!(["agentry-operator"]));
        assert_eq!(operator["args"], serde_json::json!(["run"]));
        assert_eq!(operator["ports"][0]["name"], "metrics");
        assert_eq!(operator["ports"][0]["containerPort"], 9090);
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            assert_eq!(operator[probe]["httpGet"]["path"], path, "{probe}");
            assert_eq!(operator[probe]["httpGet"]["port"], "metrics", "{probe}");
        }
        let url = &env(operator, "AGENTRY_DATABASE_URL")["valueFrom"]["secretKeyRef"];
        assert_eq!(url["name"], secret);
        assert_eq!(url["key"], key);
        assert_eq!(env(operator, "AGENTRY_NATS_URL")["value"], nats);
        assert_eq!(env(operator, "AGENTRY_BASE_DOMAIN")["value"], domain);
        assert_eq!(
            env(operator, "AGENTRY_METRICS_ADDR")["value"],
            "0.0.0.0:9090"
        );
        assert!(
            env(operator, "AGENTRY_RUNTIME_IMAGE")["value"]
                .as_str()
                .unwrap()
                .ends_with(":0.1.0"),
            "the runtime image defaults to the appVersion"
        );
        assert_eq!(
            pod["serviceAccountName"],
            one(objects, "ServiceAccount")["metadata"]["name"]
        );
    }
    let full = one(full_render(), "Deployment");
    assert_eq!(full["spec"]["replicas"], 2);
    let operator = container(&full["spec"]["template"]["spec"], "operator");
    assert_eq!(
        env(operator, "AGENTRY_POSTGRES_CIDRS")["value"],
        "10.20.0.0/16"
    );
    assert_eq!(
        env(operator, "AGENTRY_NATS_CIDRS")["value"],
        "10.30.0.0/16,10.31.0.0/16"
    );
    assert_eq!(env(operator, "AGENTRY_INGRESS_CLASS")["value"], "traefik");
    assert_eq!(
        env(operator, "AGENTRY_GATEWAY_NAMESPACE")["value"],
        "traefik"
    );
    assert_eq!(
        env(operator, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
        "http://otel-collector.observability:4318"
    );
}

#[test]
fn migrations_run_in_a_pre_install_and_pre_upgrade_hook_job() {
    let objects = full_render();
    let job = one(objects, "Job");
    let annotations = &job["metadata"]["annotations"];
    let hooks: Vec<&str> = annotations["helm.sh/hook"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert!(
        hooks.contains(&"pre-install") && hooks.contains(&"pre-upgrade"),
        "{hooks:?}"
    );
    let delete: Vec<&str> = annotations["helm.sh/hook-delete-policy"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert!(
        delete.contains(&"before-hook-creation") && delete.contains(&"hook-succeeded"),
        "{delete:?}"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let migrate = container(pod, "migrate");
    assert_restricted(pod, migrate);
    assert_eq!(migrate["command"], serde_json::json!(["agentry-runtime"]));
    assert_eq!(migrate["args"], serde_json::json!(["migrate"]));
    assert_eq!(
        migrate["image"], "registry.example.com/platform/agentry:0.1.0",
        "migrations run the runtime's image"
    );
    let url = &env(migrate, "AGENTRY_DATABASE_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(url["name"], "agentry-pg-admin");
    assert_eq!(url["key"], "database-url");
    // The hook runs before the chart's ServiceAccount exists on a first install.
    assert!(pod["serviceAccountName"].is_null());
    assert_eq!(pod["automountServiceAccountToken"], false);

    let without = support::template(&["--set", "migrations.enabled=false"]);
    assert!(of_kind(&without, "Job").is_empty());
}

#[test]
fn network_policies_follow_the_values() {
    let objects = full_render();
    let policies = of_kind(objects, "NetworkPolicy");
    assert_eq!(policies.len(), 2);
    for policy in &policies {
        let egress = policy["spec"]["egress"].as_array().unwrap();
        let postgres = egress
            .iter()
            .find(|rule| rule["ports"][0]["port"] == 5432)
            .unwrap_or_else(|| panic!("no PostgreSQL egress in {policy}"));
        assert_eq!(postgres["to"][0]["ipBlock"]["cidr"], "10.20.0.0/16");
        assert!(
            !egress
                .iter()
                .any(|r| r["to"].is_null() && r["ports"].is_null()),
            "an egress rule that allows everything"
        );
    }
    let off = support::template(&["--set", "networkPolicy.enabled=false"]);
    assert!(of_kind(&off, "NetworkPolicy").is_empty());
}

#[test]
fn notes_explain_the_secret_and_warn_about_open_cidrs() {
    let chart = support::chart();
    let notes = support::helm_ok(&[
        "install",
        support::RELEASE,
        chart.to_str().unwrap(),
        "--dry-run=client",
        "--namespace",
        support::NAMESPACE,
    ]);
    assert!(
        notes.contains("create secret generic agentry-database"),
        "{notes}"
    );
    assert!(
        notes.contains("WARNING"),
        "default CIDRs are wide open: {notes}"
    );
    let full = support::full_values();
    let notes = support::helm_ok(&[
        "install",
        support::RELEASE,
        chart.to_str().unwrap(),
        "--dry-run=client",
        "--namespace",
        support::NAMESPACE,
        "-f",
        full.to_str().unwrap(),
    ]);
    assert!(!notes.contains("WARNING"), "{notes}");
}
