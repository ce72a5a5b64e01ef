//! Authentication through the real application over a real database: API keys (scopes,
//! revocation on every replica, tenant isolation), the keys API, and end-user JWTs with every
//! refusal the issue lists. Every refusal must be a JSON error.

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::*;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

const BUNDLE: &str = "/api/v1/admin/bundle";
const KEYS: &str = "/api/v1/keys";

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn api_keys_authenticate_with_their_scopes(admin: sqlx::PgPool) {
    let mut h = Harness::new(admin).await;
    let db = h.tenant_db("acme").await;
    let (app, _state) = h.app(db, &["acme"], false);
    let (admin_id, admin_key) = h.insert_key("acme", &["admin"]).await;
    let (_, chat_key) = h.insert_key("acme", &["chat"]).await;
    let (_, globex_key) = h.insert_key("globex", &["admin"]).await;

    // Positives: Bearer and x-api-key.
    let ok = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &bearer(&admin_key))],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["tenant"], "acme");
    let ok = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("x-api-key", &admin_key)],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // A valid key without the scope: 403.
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &bearer(&chat_key))],
        None,
    )
    .await
    .error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("admin"), "{message}");

    // Missing, malformed, unknown, wrong secret: 401.
    let message = call(&app, Method::GET, BUNDLE, &[], None)
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("missing credentials"), "{message}");
    for header in [
        ("authorization", "Basic YWRtaW46YWRtaW4=".to_owned()),
        ("authorization", bearer("agk_short_secret")),
        ("x-api-key", "sk-not-ours".to_owned()),
        ("authorization", bearer("not-a-jwt-either")),
        ("authorization", bearer(&apikeys_unknown())),
        ("authorization", bearer(&wrong_secret(&admin_key))),
    ] {
        call(&app, Method::GET, BUNDLE, &[(header.0, &header.1)], None)
            .await
            .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // Another tenant's key against this tenant's role: the database never shows it.
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &bearer(&globex_key))],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(message, "invalid API key");

    // Use is recorded off the request path.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("select last_used_at from agentry.api_keys where id = $1")
                .bind(admin_id)
                .fetch_one(&h.admin)
                .await
                .unwrap();
        if used.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn keys_api_creates_lists_and_revokes(admin: sqlx::PgPool) {
    let mut h = Harness::new(admin).await;
    let db = h.tenant_db("acme").await;
    let (app, _state) = h.app(db, &["acme"], false);
    let (admin_id, admin_key) = h.insert_key("acme", &["admin"]).await;
    let (_, chat_key) = h.insert_key("acme", &["chat"]).await;
    let auth = bearer(&admin_key);
    let as_admin = [("authorization", auth.as_str())];

    // Validation: named scope, JSON errors.
    let message = call(
        &app,
        Method::POST,
        KEYS,
        &as_admin,
        Some(json!({"name": "ci", "scopes": ["chat", "root"]})),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert!(message.contains("\"root\""), "{message}");
    call(
        &app,
        Method::POST,
        KEYS,
        &as_admin,
        Some(json!({"name": "", "scopes": ["chat"]})),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    call(
        &app,
        Method::POST,
        KEYS,
        &as_admin,
        Some(json!({"name": "ci"})),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    call_raw(
        &app,
        Method::POST,
        KEYS,
        &as_admin,
        Some("{not json".into()),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_request");
    // Only admins manage keys.
    call(
        &app,
        Method::POST,
        KEYS,
        &[("authorization", &bearer(&chat_key))],
        Some(json!({"name": "x", "scopes": ["chat"]})),
    )
    .await
    .error(StatusCode::FORBIDDEN, "forbidden");
    call(
        &app,
        Method::GET,
        KEYS,
        &[("authorization", &bearer(&chat_key))],
        None,
    )
    .await
    .error(StatusCode::FORBIDDEN, "forbidden");

    // Create: the plaintext is answered once and works at once.
    let created = call(
        &app,
        Method::POST,
        KEYS,
        &as_admin,
        Some(json!({"name": "ingest bot", "scopes": ["ingest", "chat"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let new_key = created.body["key"].as_str().unwrap().to_owned();
    let new_id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    assert!(new_key.starts_with(&format!("agk_{}_", created.body["keyId"].as_str().unwrap())));
    assert_eq!(created.body["scopes"], json!(["chat", "ingest"]));
    assert_eq!(created.body["name"], "ingest bot");
    call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &bearer(&new_key))],
        None,
    )
    .await
    .error(StatusCode::FORBIDDEN, "forbidden");
    // Only the hash is stored.
    let stored: Vec<u8> =
        sqlx::query_scalar("select secret_hash from agentry.api_keys where id = $1")
            .bind(new_id)
            .fetch_one(&h.admin)
            .await
            .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&new_key[17..]));

    // List: newest first, no secrets.
    let list = call(&app, Method::GET, KEYS, &as_admin, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let keys = list.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["id"], new_id.to_string());
    let text = list.body.to_string();
    assert!(!text.contains(&new_key) && !text.contains("secret") && !text.contains("hash"));
    assert_eq!(
        keys[0]["prefix"],
        format!("agk_{}_…", keys[0]["keyId"].as_str().unwrap())
    );
    assert!(keys[0]["revokedAt"].is_null());

    // Revoke: unknown, malformed, self, then for real (twice: idempotent).
    call(
        &app,
        Method::DELETE,
        &format!("{KEYS}/{}", Uuid::now_v7()),
        &as_admin,
        None,
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    call(
        &app,
        Method::DELETE,
        &format!("{KEYS}/not-a-uuid"),
        &as_admin,
        None,
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_request");
    call(
        &app,
        Method::DELETE,
        &format!("{KEYS}/{admin_id}"),
        &as_admin,
        None,
    )
    .await
    .error(StatusCode::CONFLICT, "conflict");
    for _ in 0..2 {
        let revoked = call(
            &app,
            Method::DELETE,
            &format!("{KEYS}/{new_id}"),
            &as_admin,
            None,
        )
        .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.body);
    }
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &bearer(&new_key))],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("revoked"), "{message}");
    let list = call(&app, Method::GET, KEYS, &as_admin, None).await;
    assert!(
        list.body["keys"][0]["revokedAt"].is_string(),
        "{}",
        list.body
    );

    // Audit: one event per change, with the actor and no secret.
    let events: Vec<(String, Option<String>, Option<String>, Value)> =
        sqlx::query_as("select type, subject, actor, data from agentry.events order by id")
            .fetch_all(&h.admin)
            .await
            .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(types, ["apikey.created", "apikey.revoked"]);
    for (_, subject, actor, data) in &events {
        assert_eq!(subject.as_deref(), Some(new_id.to_string().as_str()));
        assert_eq!(actor.as_deref(), Some(format!("key:{admin_id}").as_str()));
        assert!(!data.to_string().contains(&new_key[17..]));
    }
    let outbox: i64 = sqlx::query_scalar("select count(*) from agentry.event_outbox")
        .fetch_one(&h.admin)
        .await
        .unwrap();
    assert_eq!(outbox, 2);

    // The operations are in the OpenAPI document.
    let doc = call(&app, Method::GET, "/openapi.json", &[], None).await;
    assert!(doc.body["paths"]["/api/v1/keys"]["post"].is_object());
    assert!(doc.body["paths"]["/api/v1/keys"]["get"].is_object());
    assert!(doc.body["paths"]["/api/v1/keys/{id}"]["delete"].is_object());
    h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_revoked_key_fails_on_every_replica_within_two_seconds(admin: sqlx::PgPool) {
    let mut h = Harness::new(admin).await;
    let (db_a, db_b) = (h.tenant_db("acme").await, h.tenant_db("acme").await);
    let (replica_a, _a) = h.app(db_a, &["acme"], false);
    let (replica_b, _b) = h.app(db_b, &["acme"], false);
    let (_, operator_key) = h.insert_key("acme", &["admin"]).await;
    let (victim_id, victim_key) = h.insert_key("acme", &["admin"]).await;
    let victim = bearer(&victim_key);

    // Both replicas have the key cached as valid.
    for app in [&replica_a, &replica_b] {
        let ok = call(
            app,
            Method::GET,
            BUNDLE,
            &[("authorization", &victim)],
            None,
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    }
    let revoked = call(
        &replica_a,
        Method::DELETE,
        &format!("{KEYS}/{victim_id}"),
        &[("authorization", &bearer(&operator_key))],
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.body);
    let started = Instant::now();

    // The replica that revoked it refuses it at once.
    call(
        &replica_a,
        Method::GET,
        BUNDLE,
        &[("authorization", &victim)],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    // The other one within two seconds.
    loop {
        let answer = call(
            &replica_b,
            Method::GET,
            BUNDLE,
            &[("authorization", &victim)],
            None,
        )
        .await;
        if answer.status == StatusCode::UNAUTHORIZED {
            let message = answer.error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert!(message.contains("revoked"), "{message}");
            break;
        }
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "replica B still accepts the revoked key after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() <= Duration::from_secs(2));
    h.cleanup().await;
}

/// A key in use is looked up again in the background before its cached entry expires, so that
/// its requests never all wait for the lookup at expiry. Seen from outside: a revocation made
/// behind this replica's back (no `forget_key`) is noticed before the first entry's TTL ends.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_key_in_use_is_refreshed_before_its_cache_entry_expires(admin: sqlx::PgPool) {
    use agentry_runtime::gateway::auth::{KEY_CACHE_TTL, KEY_REFRESH_AFTER};
    let mut h = Harness::new(admin).await;
    let db = h.tenant_db("acme").await;
    let (app, _) = h.app(db, &["acme"], false);
    let (key_id, key) = h.insert_key("acme", &["admin"]).await;
    let auth = bearer(&key);

    // The entry's lookup starts after this instant, so it expires after `first + TTL`.
    let first = Instant::now();
    let ok = call(&app, Method::GET, BUNDLE, &[("authorization", &auth)], None).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    sqlx::query("update agentry.api_keys set revoked_at = now() where id = $1")
        .bind(key_id)
        .execute(&h.admin)
        .await
        .unwrap();

    // Still within the TTL: answered from the cache, and the refresh starts.
    tokio::time::sleep_until((first + KEY_REFRESH_AFTER + Duration::from_millis(50)).into()).await;
    let cached = call(&app, Method::GET, BUNDLE, &[("authorization", &auth)], None).await;
    assert_eq!(cached.status, StatusCode::OK, "{}", cached.body);
    assert!(
        first.elapsed() < KEY_CACHE_TTL,
        "the test itself was too slow"
    );

    // The refreshed entry says revoked before the first one would have expired.
    loop {
        let answer = call(&app, Method::GET, BUNDLE, &[("authorization", &auth)], None).await;
        let elapsed = first.elapsed();
        if answer.status == StatusCode::UNAUTHORIZED {
            let message = answer.error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert!(message.contains("revoked"), "{message}");
            assert!(
                elapsed < KEY_CACHE_TTL,
                "refused only at expiry ({elapsed:?}): the entry was not refreshed"
            );
            break;
        }
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            elapsed < KEY_CACHE_TTL,
            "still accepted after {elapsed:?}: the entry was not refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn jwts_are_verified_and_every_forgery_refused(admin: sqlx::PgPool) {
    let mut h = Harness::new(admin).await;
    let db = h.tenant_db("acme").await;
    let (app, _state) = h.app(db, &["acme"], false);
    let send = |token: String| {
        let app = app.clone();
        async move {
            call(
                &app,
                Method::GET,
                BUNDLE,
                &[("authorization", &bearer(&token))],
                None,
            )
            .await
        }
    };

    // A valid token authenticates an end user with `chat` only, so the admin route is 403,
    // even when the identity provider grants `admin`.
    let mut c = claims("user-1");
    c["scope"] = json!("admin chat");
    let message = send(sign_rs256(&c, "k1", ISSUER_PEM))
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("admin"), "{message}");

    let refused = |fragment: &'static str| {
        move |answer: Answer| {
            let message = answer.error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
    };

    // alg: none, with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("user-1").to_string());
    refused("\"none\"")(send(format!("{header}.{payload}.")).await);
    // RS256 -> HS256: HMAC with the issuer's public key as the secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let swapped = jsonwebtoken::encode(
        &hs,
        &claims("user-1"),
        &EncodingKey::from_secret(ISSUER_PUB_PEM.as_bytes()),
    )
    .unwrap();
    refused("\"HS256\"")(send(swapped).await);
    // Expired (beyond the leeway), not yet valid.
    let mut c = claims("user-1");
    c["exp"] = json!(now() - 120);
    refused("expired")(send(sign_rs256(&c, "k1", ISSUER_PEM)).await);
    let mut c = claims("user-1");
    c["nbf"] = json!(now() + 300);
    refused("not valid yet")(send(sign_rs256(&c, "k1", ISSUER_PEM)).await);
    // Wrong audience, wrong issuer.
    let mut c = claims("user-1");
    c["aud"] = json!("another-service");
    refused("audience")(send(sign_rs256(&c, "k1", ISSUER_PEM)).await);
    let mut c = claims("user-1");
    c["iss"] = json!("https://evil.example");
    refused("issuer")(send(sign_rs256(&c, "k1", ISSUER_PEM)).await);
    // Unknown kid; a known kid with a key the issuer never published.
    refused("\"k2\"")(send(sign_rs256(&claims("user-1"), "k2", OTHER_PEM)).await);
    refused("signature")(send(sign_rs256(&claims("user-1"), "k1", OTHER_PEM)).await);
    // No subject.
    let mut c = claims("user-1");
    c.as_object_mut().unwrap().remove("sub");
    refused("sub")(send(sign_rs256(&c, "k1", ISSUER_PEM)).await);
    // Tampered payload of a valid token.
    let valid = sign_rs256(&claims("user-1"), "k1", ISSUER_PEM);
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(claims("someone-else").to_string());
    refused("signature")(send(format!("{}.{forged_payload}.{}", parts[0], parts[2])).await);
    h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn dev_mode_resolves_each_credential_to_its_tenant(admin: sqlx::PgPool) {
    let mut h = Harness::new(admin).await;
    let db = h.shared_db().await;
    let (app, _state) = h.app(db, &["acme", "globex"], true);
    let (_, acme_key) = h.insert_key("acme", &["admin"]).await;
    let (_, globex_key) = h.insert_key("globex", &["admin"]).await;

    for (key, tenant) in [(&acme_key, "acme"), (&globex_key, "globex")] {
        let ok = call(
            &app,
            Method::GET,
            BUNDLE,
            &[("authorization", &bearer(key))],
            None,
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
        assert_eq!(ok.body["tenant"], tenant);
    }
    // A key used for another tenant than its own.
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[
            ("authorization", &bearer(&acme_key)),
            ("x-agentry-tenant", "globex"),
        ],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("globex"), "{message}");

    // JWTs name their tenant in dev mode.
    let token = bearer(&sign_rs256(&claims("user-1"), "k1", ISSUER_PEM));
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &token)],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("x-agentry-tenant"), "{message}");
    call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &token), ("x-agentry-tenant", "acme")],
        None,
    )
    .await
    .error(StatusCode::FORBIDDEN, "forbidden");
    // globex trusts no issuer; an unknown tenant is refused too.
    let message = call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &token), ("x-agentry-tenant", "globex")],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("does not accept JWTs"), "{message}");
    call(
        &app,
        Method::GET,
        BUNDLE,
        &[("authorization", &token), ("x-agentry-tenant", "initech")],
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn jwks_urls_are_fetched_once_and_not_hammered(admin: sqlx::PgPool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let issuer = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { axum::Json(issuer_jwks()) }
        }),
    );
    let url = format!("http://{}/jwks.json", serve(issuer).await);

    let mut h = Harness::new(admin).await;
    let mut config = inline_jwt_config();
    config.jwks = None;
    config.jwks_url = Some(url);
    h.set_jwt("acme", Some(config));
    let db = h.tenant_db("acme").await;
    let (app, _state) = h.app(db, &["acme"], false);

    let valid = bearer(&sign_rs256(&claims("user-1"), "k1", ISSUER_PEM));
    for _ in 0..3 {
        call(
            &app,
            Method::GET,
            BUNDLE,
            &[("authorization", &valid)],
            None,
        )
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A flood of made-up key ids right after a fetch costs the issuer nothing.
    for i in 0..20 {
        let token = bearer(&sign_rs256(
            &claims("user-1"),
            &format!("made-up-{i}"),
            OTHER_PEM,
        ));
        call(
            &app,
            Method::GET,
            BUNDLE,
            &[("authorization", &token)],
            None,
        )
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    h.cleanup().await;
}

/// A well-formed key that was never issued.
fn apikeys_unknown() -> String {
    agentry_runtime::gateway::apikeys::generate().plaintext
}

/// `key` with its secret changed in its last character.
fn wrong_secret(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}
