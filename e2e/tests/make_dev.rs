//! `make dev` from a fresh state folder prints each tenant's key and a curl line that works,
//! and Ctrl-C stops it.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::Duration;

use agentry_e2e::{binary, postgres_admin_url, repo_root};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[tokio::test]
async fn make_dev_prints_keys_and_a_working_curl_line() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (database, role) = (
        format!("agentry_makedev_{suffix}"),
        format!("agentry_makedev_{suffix}"),
    );
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = std::process::Command::new("make");
    command
        .arg("--no-print-directory")
        .arg("dev")
        .current_dir(repo_root())
        .env("AGENTRY_RUNTIME_BIN", binary("agentry-runtime").unwrap())
        .env(
            "AGENTRY_DATABASE_URL",
            format!("{}/{database}", postgres_admin_url()),
        )
        .env("AGENTRY_DEV_ROLE", &role)
        .env("AGENTRY_STATE_DIR", state.path())
        .env("AGENTRY_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pgid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut keys = Vec::new();
    let mut curl = None;
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("admin key agk_") {
                keys.push(line.clone());
            }
            if line.trim_start().starts_with("curl ") && curl.is_none() {
                curl = Some(line.trim().to_owned());
            }
            if keys.len() == 2 && curl.is_some() {
                break;
            }
        }
    })
    .await
    .expect("make dev printed keys and a curl line");
    assert!(
        keys.iter().any(|k| k.contains("acme")) && keys.iter().any(|k| k.contains("globex")),
        "{keys:?}"
    );
    // Keep reading its output so that the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let curl = curl.unwrap();
    assert!(
        curl.contains(&format!("127.0.0.1:{port}/api/v1/audit")),
        "{curl}"
    );

    // The printed line, run as printed, returns the tenant's audit log.
    let mut body = String::new();
    for _ in 0..50 {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&curl)
            .output()
            .await
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("\"items\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(audit["items"].is_array(), "{audit}");

    // Ctrl-C: SIGINT to the whole process group stops everything it started.
    tokio::process::Command::new("kill")
        .args(["-s", "INT", "--"])
        .arg(format!("-{pgid}"))
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("make dev stopped")
        .unwrap();
    let _ = status;
    let refused = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "runtime still answering after Ctrl-C");

    let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_admin_url()))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists {database} with (force)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop role if exists {role}")))
        .execute(&mut conn)
        .await
        .unwrap();
}
