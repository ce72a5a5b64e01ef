//! Dev mode through the real binary: keys, hot reload without dropped requests, rejected
//! changes, bad configuration.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::{Duration, Instant};

use agentry_e2e::{DevRuntime, binary, copy_examples};
use serde_json::Value;

async fn bundle(client: &reqwest::Client, rt: &DevRuntime, tenant: &str) -> Value {
    client
        .get(format!("{}/api/v1/admin/bundle", rt.base_url))
        .bearer_auth(rt.key(tenant))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_changes_apply_within_two_seconds_without_dropping_requests() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let manifests = copy_examples().unwrap();
    // This test hammers one key; lift acme's rate limits so that 429s do not mask reload gaps.
    let acme = manifests.path().join("acme.yaml");
    let text = std::fs::read_to_string(&acme)
        .unwrap()
        .replace("requestsPerMinute: 600", "requestsPerMinute: 1000000")
        .replace(
            "perKey: {requestsPerMinute: 300}",
            "perKey: {requestsPerMinute: 1000000}",
        );
    std::fs::write(&acme, text).unwrap();
    let rt = DevRuntime::start(manifests.path()).await.unwrap();
    let client = reqwest::Client::new();
    let before = bundle(&client, &rt, "acme").await;
    assert_eq!(before["tenant"], "acme");
    let old_hash = before["hash"].as_str().unwrap().to_owned();
    assert!(
        !before["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "returns")
    );

    // Load during the reload: every request must succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, url, key, stop) = (
            client.clone(),
            rt.base_url.clone(),
            rt.key("acme").to_owned(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .get(format!("{url}/api/v1/admin/bundle"))
                    .bearer_auth(&key)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };

    let path = manifests.path().join("acme.yaml");
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str(
        "---\napiVersion: agentry.dev/v1alpha1\nkind: Agent\nmetadata: {name: returns, namespace: tenant-acme}\nspec:\n  model: {name: small}\n",
    );
    let changed_at = Instant::now();
    std::fs::write(&path, &yaml).unwrap();
    let applied = loop {
        let b = bundle(&client, &rt, "acme").await;
        if b["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "returns")
        {
            break b;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(5),
            "change not applied: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = changed_at.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "new configuration served after {took:?}"
    );
    assert_ne!(applied["hash"].as_str().unwrap(), old_hash);

    // A broken file is rejected; the last good bundle keeps serving and says why.
    std::fs::write(&path, format!("{yaml}\n---\nkind: Agent\napiVersion: agentry.dev/v1alpha1\nmetadata: {{name: broken, namespace: tenant-acme}}\nspec: {{model: {{name: small, router: x}}}}\n")).unwrap();
    let rejected = loop {
        let b = bundle(&client, &rt, "acme").await;
        if !b["lastError"].is_null() {
            break b;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(10),
            "broken change not reported: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rejected["hash"], applied["hash"]);
    assert!(
        rejected["lastError"]
            .as_str()
            .unwrap()
            .contains("exactly one of name and router"),
        "{rejected}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 10, "load generator made only {ok} requests");
    assert!(
        failed.is_empty(),
        "requests failed during reload: {failed:?}"
    );

    let metrics = client
        .get(format!("{}/metrics", rt.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("agentry_bundle_reloads_total{tenant=\"acme\",result=\"applied\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"rejected\""), "{metrics}");
    rt.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_configuration_exits_with_one_clear_message() {
    let out = tokio::process::Command::new(binary("agentry-runtime").unwrap())
        .args([
            "serve",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--bundle",
            "/nonexistent/bundle.json",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("agentry-runtime: "), "{stderr}");
    assert!(last.contains("database"), "{stderr}");

    let out = tokio::process::Command::new(binary("agentry-runtime").unwrap())
        .args([
            "dev",
            "--manifests",
            "/nonexistent-folder",
            "--database-url",
            "not a url",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AGENTRY_DATABASE_URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
