//! Against a real cluster: install the chart, apply the examples, wait for the Tenant to be
//! `Ready`, chat with it through its runtime Service and delete it.
//!
//! Opt-in: these tests run only when `AGENTRY_E2E_KUBECONFIG` names a kubeconfig, and say so
//! when they do not (they pass without doing anything, printing why). The cluster must be able
//! to run the image `agentry:e2e` (built from the Dockerfile and imported, as
//! `.github/workflows/e2e-k3d.yml` does with k3d). `helm` and `kubectl` come from
//! `scripts/tools.sh`. The install tests, which need no cluster, still run everywhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The variable that turns the suite on.
const KUBECONFIG_VAR: &str = "AGENTRY_E2E_KUBECONFIG";
const RELEASE: &str = "agentry";
const RELEASE_NAMESPACE: &str = "agentry-system";
/// The example tenant the test chats with, and its namespace (manifests/examples/acme.yaml).
const TENANT: &str = "acme";
const TENANT_NAMESPACE: &str = "tenant-acme";
/// operator/src/builders: the credentials Secret, its admin key, and the runtime Service.
const CREDENTIALS_SECRET: &str = "agentry-runtime-credentials";
const ADMIN_API_KEY_KEY: &str = "admin-api-key";
const RUNTIME_SERVICE: &str = "agentry-runtime";

/// The kubeconfig, or `None` after printing why the test does nothing.
fn kubeconfig(test: &str) -> Option<PathBuf> {
    match std::env::var_os(KUBECONFIG_VAR) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!(
                "SKIPPED {test}: {KUBECONFIG_VAR} is not set. This suite needs a cluster; see \
                 \"Testing against a cluster\" in docs/install.md."
            );
            None
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// A tool from `scripts/tools.sh`; missing is a failure (the suite was asked to run).
fn tool(name: &str) -> PathBuf {
    let path = root().join(".tools/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/tools.sh`",
        path.display()
    );
    path
}

/// helm and kubectl bound to one kubeconfig.
struct Cluster {
    kubeconfig: PathBuf,
}

impl Cluster {
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool(name));
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(root());
        if name == "helm" {
            // Keep helm's cache and config away from the user's.
            let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-helm-home");
            cmd.env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data"));
        }
        cmd
    }

    fn run(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(name, args);
        let shown = format!("{name} {}", args.join(" "));
        println!("$ {shown}");
        cmd.output()
            .unwrap_or_else(|e| panic!("could not run {shown}: {e}"))
    }

    /// Runs and requires success; stdout.
    fn ok(&self, name: &str, args: &[&str]) -> String {
        let out = self.run(name, args);
        assert!(
            out.status.success(),
            "{name} {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.ok("kubectl", args)
    }

    /// `kubectl get ... -o json`, or `None` when the object does not exist.
    fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.run("kubectl", &all);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("NotFound") || stderr.contains("not found"),
                "kubectl {} failed: {stderr}",
                all.join(" ")
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"))
    }

    /// Dumps what helps explain a failure: the Tenant, events and pods.
    fn diagnose(&self) {
        for args in [
            vec!["get", "tenant", TENANT, "-o", "yaml"],
            vec!["get", "pods", "-A", "-o", "wide"],
            vec!["get", "events", "-n", TENANT_NAMESPACE],
            vec![
                "logs",
                "-n",
                RELEASE_NAMESPACE,
                "deployment/agentry-operator",
                "--tail=200",
            ],
        ] {
            let out = self.run("kubectl", &args);
            println!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Polls `check` every two seconds until it answers, or fails after `timeout`.
fn wait_for<T>(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            cluster.diagnose();
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A `kubectl port-forward` to the tenant runtime Service, stopped on drop.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(cluster: &Cluster) -> Self {
        let service = format!("service/{RUNTIME_SERVICE}");
        let mut child = cluster
            .command(
                "kubectl",
                &["port-forward", "-n", TENANT_NAMESPACE, &service, "0:80"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl port-forward starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:43567 -> 8080"
        let port = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("kubectl port-forward exited before forwarding");
            };
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port = rest.split_whitespace().next().unwrap_or_default();
                break port.parse().expect("a port number");
            }
        };
        // Keep draining stdout so that kubectl never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, port }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn condition<'a>(tenant: &'a Value, kind: &str) -> Option<&'a Value> {
    tenant["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn install(cluster: &Cluster) {
    let root = root();
    let path = |p: &str| root.join(p).display().to_string();
    cluster.kubectl(&["apply", "-f", &path("e2e/cluster/deps.yaml")]);
    for statefulset in ["statefulset/postgres", "statefulset/nats"] {
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            "agentry-e2e",
            statefulset,
            "--timeout=300s",
        ]);
    }
    cluster.ok(
        "helm",
        &[
            "upgrade",
            "--install",
            RELEASE,
            &path("helm/agentry"),
            "--namespace",
            RELEASE_NAMESPACE,
            "--values",
            &path("e2e/cluster/values.yaml"),
            "--wait",
            "--timeout",
            "10m",
        ],
    );
}

/// The whole life of a tenant, in order: each step needs the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_installed_answers_a_chat_and_is_deleted() {
    let Some(kubeconfig) = kubeconfig("a_tenant_is_installed_answers_a_chat_and_is_deleted") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = Cluster { kubeconfig };
    install(&cluster);

    let examples = root().join("manifests/examples");
    cluster.kubectl(&["apply", "-f", &examples.display().to_string()]);

    let tenant = wait_for(
        &cluster,
        "Tenant acme Ready",
        Duration::from_secs(600),
        || {
            let t = cluster.get_json(&["tenant", TENANT])?;
            let ready = condition(&t, "Ready")?;
            let current = t["status"]["observedGeneration"] == t["metadata"]["generation"];
            (ready["status"] == "True" && current).then_some(t)
        },
    );
    assert_eq!(tenant["status"]["phase"], "Ready", "{tenant:#}");
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        TENANT_NAMESPACE,
        &format!("deployment/{RUNTIME_SERVICE}"),
        "--timeout=300s",
    ]);

    let secret = cluster
        .get_json(&["secret", "-n", TENANT_NAMESPACE, CREDENTIALS_SECRET])
        .expect("the credentials Secret exists");
    let encoded = secret["data"][ADMIN_API_KEY_KEY]
        .as_str()
        .expect("the Secret holds the admin key");
    let key = base64_decode(encoded);
    assert!(key.starts_with("agk_"), "an API key");

    {
        let forward = PortForward::start(&cluster);
        let base = format!("http://127.0.0.1:{}", forward.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert!(ready.status().is_success(), "{}", ready.status());
        let r = client
            .post(format!("{base}/api/v1/chat/conversations"))
            .bearer_auth(&key)
            .json(&json!({"agent": "general", "title": "cluster e2e"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let conversation: Value = r.json().await.unwrap();
        let id = conversation["id"].as_str().expect("a conversation id");
        let r = client
            .post(format!("{base}/api/v1/chat/conversations/{id}/messages"))
            .bearer_auth(&key)
            .json(&json!({"content": "Do you sell blue widgets?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let turn: Value = r.json().await.unwrap();
        let message = &turn["message"];
        assert_eq!(message["role"], "assistant", "{turn:#}");
        assert!(
            !message["content"].as_str().unwrap_or_default().is_empty(),
            "{turn:#}"
        );
        let r = client
            .get(format!("{base}/api/v1/chat/conversations/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let stored: Value = r.json().await.unwrap();
        assert!(
            stored["messages"].as_array().map_or(0, Vec::len) >= 2,
            "both messages are stored: {stored:#}"
        );
    }

    cluster.kubectl(&["delete", "tenant", TENANT, "--wait=false"]);
    wait_for(
        &cluster,
        "the tenant namespace to be deleted",
        Duration::from_secs(300),
        || {
            cluster
                .get_json(&["namespace", TENANT_NAMESPACE])
                .is_none()
                .then_some(())
        },
    );
    assert!(cluster.get_json(&["tenant", TENANT]).is_none());
}

/// Standard base64 (what `data` of a Secret holds), without a dependency for one call.
fn base64_decode(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for b in s.bytes().filter(|b| *b != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == b)
            .unwrap_or_else(|| panic!("not base64: {s}"));
        bits = (bits << 6) | u32::try_from(v).unwrap();
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).unwrap());
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

#[test]
fn base64_decodes_what_kubectl_prints() {
    assert_eq!(base64_decode("YWdrX3h5eg=="), "agk_xyz");
    assert_eq!(base64_decode("YWdrX3h5"), "agk_xy");
}

#[test]
fn the_suite_says_when_it_does_not_run() {
    // Whatever the environment, the switch is one variable and nothing else.
    let set = std::env::var_os(KUBECONFIG_VAR).is_some_and(|v| !v.is_empty());
    assert_eq!(kubeconfig("probe").is_some(), set);
    assert!(Path::new(&root().join("e2e/cluster/deps.yaml")).is_file());
    assert!(Path::new(&root().join("e2e/cluster/values.yaml")).is_file());
}
