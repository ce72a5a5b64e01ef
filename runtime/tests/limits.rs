//! Rate limits (GCRA per tenant, key and user), token limits and the stream cap, on a fake
//! clock so that every refusal and its `Retry-After` are exact.

mod limits_support;

use std::sync::Arc;
use std::time::Duration;

use agentry_crds::bundle::LimitsConfig;
use agentry_runtime::error::ApiError;
use agentry_runtime::gateway::Caller;
use agentry_runtime::gateway::limits::{Limit, Limiter};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use governor::clock::FakeRelativeClock;
use limits_support::{key_caller, limiter, refused, tenant, user_caller};
use tower::ServiceExt as _;
use uuid::Uuid;

#[test]
fn the_tenant_rate_is_shared_by_all_its_callers() {
    let (limiter, clock) = limiter(1);
    let t = tenant(LimitsConfig {
        requests_per_minute: Some(3),
        ..LimitsConfig::default()
    });
    let (a, b) = (key_caller(&t, Uuid::new_v4()), user_caller(&t, "alice"));
    limiter.check_request(&a).unwrap();
    limiter.check_request(&b).unwrap();
    limiter.check_request(&a).unwrap();
    let e = refused(limiter.check_request(&b));
    assert_eq!(e.limit, "tenant_rpm");
    // One request every 20 s: the next is possible in 20 s.
    assert_eq!(e.retry_after_secs, 20);
    assert!(e.message.contains("tenant_rpm") && e.message.contains("3 requests per minute"));
    clock.advance(Duration::from_secs(19));
    assert_eq!(refused(limiter.check_request(&a)).retry_after_secs, 1);
    clock.advance(Duration::from_secs(1));
    limiter.check_request(&a).unwrap();
    assert!(limiter.check_request(&a).is_err());

    // Another tenant is unaffected.
    let other = tenant(LimitsConfig {
        requests_per_minute: Some(3),
        ..LimitsConfig::default()
    });
    limiter
        .check_request(&key_caller(&other, Uuid::new_v4()))
        .unwrap();
}

#[test]
fn each_key_has_its_own_rate_and_refusals_spare_the_tenant() {
    let (limiter, _clock) = limiter(1);
    let t = tenant(LimitsConfig {
        requests_per_minute: Some(5),
        per_key_requests_per_minute: Some(2),
        ..LimitsConfig::default()
    });
    let (a, b, c) = (
        key_caller(&t, Uuid::new_v4()),
        key_caller(&t, Uuid::new_v4()),
        key_caller(&t, Uuid::new_v4()),
    );
    limiter.check_request(&a).unwrap();
    limiter.check_request(&a).unwrap();
    for _ in 0..3 {
        let e = refused(limiter.check_request(&a));
        assert_eq!(e.limit, "key_rpm");
        assert_eq!(e.retry_after_secs, 30);
        assert!(e.message.contains("this API key"));
    }
    // A's refused requests did not spend the tenant's five.
    limiter.check_request(&b).unwrap();
    limiter.check_request(&b).unwrap();
    limiter.check_request(&c).unwrap();
    assert_eq!(refused(limiter.check_request(&c)).limit, "tenant_rpm");
}

#[test]
fn each_end_user_has_its_own_rate() {
    let (limiter, clock) = limiter(1);
    let t = tenant(LimitsConfig {
        per_user_requests_per_minute: Some(1),
        per_key_requests_per_minute: Some(100),
        ..LimitsConfig::default()
    });
    let (alice, bob) = (user_caller(&t, "alice"), user_caller(&t, "bob"));
    limiter.check_request(&alice).unwrap();
    let e = refused(limiter.check_request(&alice));
    assert_eq!(e.limit, "user_rpm");
    assert_eq!(e.retry_after_secs, 60);
    limiter.check_request(&bob).unwrap();
    clock.advance(Duration::from_secs(60));
    limiter.check_request(&alice).unwrap();
}

#[test]
fn replicas_each_enforce_their_share() {
    let (limiter, _clock) = limiter(3);
    let t = tenant(LimitsConfig {
        requests_per_minute: Some(6),
        ..LimitsConfig::default()
    });
    let a = key_caller(&t, Uuid::new_v4());
    limiter.check_request(&a).unwrap();
    limiter.check_request(&a).unwrap();
    let e = refused(limiter.check_request(&a));
    // The message names the configured (tenant-wide) rate; the wait is this replica's.
    assert!(e.message.contains("6 requests per minute"));
    assert_eq!(e.retry_after_secs, 30);
}

#[test]
fn a_reloaded_rate_applies_at_once_and_idle_state_is_swept() {
    let (limiter, clock) = limiter(1);
    let t = tenant(LimitsConfig {
        requests_per_minute: Some(1),
        ..LimitsConfig::default()
    });
    let a = key_caller(&t, Uuid::new_v4());
    limiter.check_request(&a).unwrap();
    assert!(limiter.check_request(&a).is_err());
    let mut bundle = (*t.bundle()).clone();
    bundle.tenant.limits.requests_per_minute = Some(120);
    t.swap_bundle(bundle);
    for _ in 0..120 {
        limiter.check_request(&a).unwrap();
    }
    assert_eq!(refused(limiter.check_request(&a)).retry_after_secs, 1);
    assert!(limiter.tracked_keys() > 0);
    // Once every key's bucket is full again its state is indistinguishable from none;
    // governor keeps it one emission interval longer (60 s at 1 per minute).
    clock.advance(Duration::from_secs(61));
    limiter.sweep();
    assert_eq!(
        limiter.tracked_keys(),
        1,
        "the 1-per-minute bucket is kept a while"
    );
    clock.advance(Duration::from_secs(60));
    limiter.sweep();
    assert_eq!(limiter.tracked_keys(), 0);
    limiter.check_request(&a).unwrap();
}

#[test]
fn tokens_beyond_the_estimate_are_charged_and_refuse_the_next_call() {
    let (limiter, clock) = limiter(1);
    let t = tenant(LimitsConfig {
        tokens_per_minute: Some(1000),
        ..LimitsConfig::default()
    });
    let a = key_caller(&t, Uuid::new_v4());
    limiter.check_tokens(&a, 100).unwrap();
    // The call used far more than estimated: 1,900 beyond, more than the bucket holds.
    limiter.record_tokens(&a, 2000);
    assert_eq!(limiter.token_debt(&a, Limit::TenantTpm), 1900);
    let e = refused(limiter.check_tokens(&a, 10));
    assert_eq!(e.limit, "tenant_tpm");
    // A full bucket is needed (100 tokens short at 60 ms each).
    assert_eq!(e.retry_after_secs, 6);
    clock.advance(Duration::from_secs(60));
    // Admitted on a full bucket; the rest of the debt is still owed.
    limiter.check_tokens(&a, 10).unwrap();
    limiter.record_tokens(&a, 10);
    assert_eq!(limiter.token_debt(&a, Limit::TenantTpm), 910);
    assert!(limiter.check_tokens(&a, 1).is_err());
    clock.advance(Duration::from_secs(60));
    limiter.check_tokens(&a, 1).unwrap();
    limiter.record_tokens(&a, 1);
    assert_eq!(limiter.token_debt(&a, Limit::TenantTpm), 0);
}

#[test]
fn estimates_of_overlapping_calls_are_pooled_and_unused_ones_forfeited() {
    let (limiter, _clock) = limiter(1);
    let t = tenant(LimitsConfig {
        tokens_per_minute: Some(1000),
        per_user_tokens_per_minute: Some(700),
        ..LimitsConfig::default()
    });
    let alice = user_caller(&t, "alice");
    limiter.check_tokens(&alice, 300).unwrap();
    limiter.check_tokens(&alice, 300).unwrap();
    // One call used more than its estimate, the other less: together within 600.
    limiter.record_tokens(&alice, 500);
    limiter.record_tokens(&alice, 50);
    assert_eq!(limiter.token_debt(&alice, Limit::UserTpm), 0);
    // 600 of alice's 700 are spent; 100 remain.
    let e = refused(limiter.check_tokens(&alice, 101));
    assert_eq!(e.limit, "user_tpm");
    assert!(e.message.contains("700 tokens per minute for this user"));
    limiter.check_tokens(&alice, 100).unwrap();
    limiter.record_tokens(&alice, 0);
    // Bob is limited by the tenant: 1000 - 700 spent by alice = 300.
    let bob = user_caller(&t, "bob");
    assert_eq!(refused(limiter.check_tokens(&bob, 301)).limit, "tenant_tpm");
    limiter.check_tokens(&bob, 300).unwrap();
}

#[test]
fn a_call_larger_than_a_minute_waits_for_a_full_bucket() {
    let (limiter, clock) = limiter(1);
    let t = tenant(LimitsConfig {
        per_key_tokens_per_minute: Some(100),
        ..LimitsConfig::default()
    });
    let a = key_caller(&t, Uuid::new_v4());
    limiter.check_tokens(&a, 250).unwrap();
    limiter.record_tokens(&a, 250);
    assert_eq!(limiter.token_debt(&a, Limit::KeyTpm), 150);
    let e = refused(limiter.check_tokens(&a, 1));
    assert_eq!((e.limit, e.retry_after_secs), ("key_tpm", 60));
    clock.advance(Duration::from_secs(120));
    limiter.check_tokens(&a, 1).unwrap();
}

#[test]
fn the_stream_cap_counts_open_streams_per_tenant() {
    let (limiter, _clock) = limiter(1);
    let t = tenant(LimitsConfig {
        concurrent_streams: Some(2),
        ..LimitsConfig::default()
    });
    let first = limiter.acquire_stream(&t).unwrap();
    let second = limiter.acquire_stream(&t).unwrap();
    let e = limiter.acquire_stream(&t).unwrap_err();
    assert_eq!(e.limit, "streams");
    assert_eq!(e.retry_after_secs, 1);
    assert!(e.message.contains("2 concurrent streams"));
    assert_eq!(limiter.open_streams(t.id), 2);
    drop(first);
    let third = limiter.acquire_stream(&t).unwrap();
    // Another tenant has its own count; an uncapped tenant is only counted.
    let other = tenant(LimitsConfig::default());
    let many: Vec<_> = (0..10)
        .map(|_| limiter.acquire_stream(&other).unwrap())
        .collect();
    assert_eq!(limiter.open_streams(other.id), 10);
    drop((second, third, many));
    assert_eq!(limiter.open_streams(t.id), 0);
    assert_eq!(limiter.open_streams(other.id), 0);

    let (sharded, _clock) = limits_support::limiter(2);
    let _one = sharded.acquire_stream(&t).unwrap();
    assert!(
        sharded.acquire_stream(&t).is_err(),
        "each of 2 replicas takes 1 of 2"
    );
}

/// The gateway's refusal path: the caller is installed by a stand-in for authentication, and
/// the limiter's refusal becomes the HTTP answer.
#[tokio::test]
async fn a_refused_request_answers_429_with_retry_after_and_a_json_error() {
    #[derive(Clone)]
    struct TestState {
        limiter: Arc<Limiter<FakeRelativeClock>>,
        caller: Caller,
    }
    async fn gate(
        State(state): State<TestState>,
        mut request: Request,
        next: Next,
    ) -> Result<Response, ApiError> {
        state.limiter.check_request(&state.caller)?;
        request.extensions_mut().insert(state.caller.clone());
        Ok(next.run(request).await)
    }
    let (limiter, _clock) = limiter(1);
    let t = tenant(LimitsConfig {
        per_key_requests_per_minute: Some(2),
        ..LimitsConfig::default()
    });
    let state = TestState {
        limiter: Arc::new(limiter),
        caller: key_caller(&t, Uuid::new_v4()),
    };
    let app = Router::new()
        .route("/api/v1/ping", get(|| async { "pong" }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state);
    let call = || {
        app.clone()
            .oneshot(Request::get("/api/v1/ping").body(Body::empty()).unwrap())
    };
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    let response = call().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 30);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("key_rpm") && message.contains("2 requests per minute"),
        "{message}"
    );
}
