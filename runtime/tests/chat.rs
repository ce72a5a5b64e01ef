//! The chat API and the agent loop against real PostgreSQL, with the example tenants served
//! by the offline provider and HTTP tools pointed at a loopback server (allowlisted the way a
//! tenant allowlists an internal service).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on a broken fixture"
)]

mod auth_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentry_e2e::mock_llm::{MockConfig, MockLlm};
use agentry_runtime::agents::ESCALATED_REPLY;
use auth_support::{Harness, bearer, call, point_order_tools, serve};
use axum::Router;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The order service the acme tools call: counts lookups and refunds.
#[derive(Clone, Default)]
struct Orders {
    lookups: Arc<AtomicUsize>,
    refunds: Arc<AtomicUsize>,
}

async fn order_server(orders: Orders) -> SocketAddr {
    let (l, r) = (orders.lookups.clone(), orders.refunds.clone());
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let l = l.clone();
                    async move {
                        l.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({"order": {"id": id, "status": "shipped"}}))
                    }
                },
            ),
        )
        .route(
            "/orders/{id}/refunds",
            post(move || {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"refund": {"id": "R-77", "status": "issued"}}))
                }
            }),
        );
    serve(app).await
}

struct Setup {
    h: Harness,
    app: Router,
    state: agentry_runtime::state::AppState,
    acme: String,
    globex: String,
}

/// The example tenants on a shared (dev) role, acme's order tools pointed at `orders`.
async fn setup(admin: PgPool, orders: Option<SocketAddr>, budget: Option<i64>) -> Setup {
    setup_with(admin, orders, |acme| {
        if let Some(b) = budget {
            acme.tenant.limits.monthly_budget_micros = Some(b);
        }
    })
    .await
}

/// [`setup`] with acme's bundle changed by `tweak`.
async fn setup_with(
    admin: PgPool,
    orders: Option<SocketAddr>,
    tweak: impl FnOnce(&mut agentry_crds::RuntimeBundle),
) -> Setup {
    let mut h = Harness::new(admin).await;
    let acme = h.bundles.get_mut("acme").unwrap();
    if let Some(addr) = orders {
        point_order_tools(acme, addr);
    }
    tweak(acme);
    acme.hash = acme.content_hash();
    let db = h.shared_db().await;
    let (app, state) = h.app(db, &["acme", "globex"], true);
    let (_, acme) = h.insert_key("acme", &["chat"]).await;
    let (_, globex) = h.insert_key("globex", &["chat"]).await;
    Setup {
        h,
        app,
        state,
        acme,
        globex,
    }
}

impl Setup {
    async fn post(&self, key: &str, uri: &str, body: Value) -> auth_support::Answer {
        let auth = bearer(key);
        call(
            &self.app,
            Method::POST,
            uri,
            &[("authorization", &auth)],
            Some(body),
        )
        .await
    }

    async fn get(&self, key: &str, uri: &str) -> auth_support::Answer {
        let auth = bearer(key);
        call(
            &self.app,
            Method::GET,
            uri,
            &[("authorization", &auth)],
            None,
        )
        .await
    }

    async fn conversation(&self, agent: Option<&str>) -> String {
        let body = match agent {
            Some(a) => json!({"agent": a, "title": "test"}),
            None => json!({}),
        };
        let a = self
            .post(&self.acme, "/api/v1/chat/conversations", body)
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["id"].as_str().unwrap().to_owned()
    }

    async fn say(&self, conversation: &str, content: &str) -> auth_support::Answer {
        self.post(
            &self.acme,
            &format!("/api/v1/chat/conversations/{conversation}/messages"),
            json!({"content": content}),
        )
        .await
    }

    /// Counts rows after the usage records queued so far are written.
    async fn count(&self, sql: &str) -> i64 {
        self.state.usage.flush().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.h.admin)
            .await
            .unwrap()
    }
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_tool_call_round_trip_is_answered_and_persisted(admin: PgPool) {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    let s = setup(admin, Some(addr), None).await;
    let id = s.conversation(Some("billing")).await;
    let a = s.say(&id, "Can you lookup order A-1001?").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(orders.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(a.body["toolCalls"][0]["name"], "lookup-order");
    assert_eq!(
        a.body["toolCalls"][0]["arguments"],
        json!({"orderId": "A-1001"})
    );
    let text = a.body["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("lookup-order returned") && text.contains("shipped"),
        "{text}"
    );
    assert_eq!(a.body["agent"], "billing");
    assert_eq!(a.body["usage"]["modelCalls"], 2);
    assert!(
        a.body["usage"]["costMicros"].as_i64().unwrap() > 0,
        "{}",
        a.body
    );

    let detail = s
        .get(&s.acme, &format!("/api/v1/chat/conversations/{id}"))
        .await;
    assert_eq!(detail.status, StatusCode::OK);
    let roles: Vec<&str> = detail.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(
        s.count("select count(*) from agentry.usage_records where source = 'chat'")
            .await,
        2
    );
    assert_eq!(
        s.count("select count(*) from agentry.events where type = 'usage.recorded'")
            .await,
        2
    );
    assert_eq!(
        s.count("select count(*) from agentry.events where type = 'message.created'")
            .await,
        4
    );
    // Feedback on the answer.
    let mid = a.body["message"]["id"].as_str().unwrap();
    let f = s
        .post(
            &s.acme,
            &format!("/api/v1/chat/conversations/{id}/messages/{mid}/feedback"),
            json!({"rating": "up", "comment": "thanks"}),
        )
        .await;
    assert_eq!(f.status, StatusCode::NO_CONTENT, "{}", f.body);
    assert_eq!(
        s.count("select count(*) from agentry.events where type = 'message.feedback'")
            .await,
        1
    );
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_transfer_switches_the_agent(admin: PgPool) {
    let s = setup(admin, None, None).await;
    let id = s.conversation(None).await;
    let a = s.say(&id, "I need help with billing please").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["agent"], "billing", "{}", a.body);
    assert_eq!(a.body["toolCalls"][0]["name"], "transfer-to-agent");
    let detail = s
        .get(&s.acme, &format!("/api/v1/chat/conversations/{id}"))
        .await;
    assert_eq!(detail.body["agent"], "billing");
    assert_eq!(
        s.count("select count(*) from agentry.events where type = 'conversation.handoff'")
            .await,
        1
    );
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn approvals_run_or_deny_the_call(admin: PgPool) {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    let s = setup(admin, Some(addr), None).await;

    let id = s.conversation(Some("billing")).await;
    let a = s.say(&id, "Please issue refund for A-1001").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["message"].is_null(), "{}", a.body);
    let approval = a.body["approval"]["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(a.body["approval"]["tool"], "issue-refund");
    assert_eq!(
        orders.refunds.load(Ordering::SeqCst),
        0,
        "nothing runs before approval"
    );
    assert_eq!(
        s.count(&format!(
            "select count(*) from agentry.tool_approvals a join agentry.messages m
               on m.tenant_id = a.tenant_id and m.id = a.message_id
             where a.id = '{approval}' and m.role = 'assistant'
               and m.tool_calls -> 0 ->> 'id' = a.tool_call_id"
        ))
        .await,
        1,
        "the approval points at the assistant message that made the call"
    );
    let d = s
        .post(
            &s.acme,
            &format!("/api/v1/chat/approvals/{approval}"),
            json!({"approve": true, "comment": "ok"}),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(orders.refunds.load(Ordering::SeqCst), 1);
    let text = d.body["message"]["content"].as_str().unwrap();
    assert!(text.contains("R-77"), "{text}");
    // Decided once only.
    let again = s
        .post(
            &s.acme,
            &format!("/api/v1/chat/approvals/{approval}"),
            json!({"approve": true}),
        )
        .await;
    again.error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(orders.refunds.load(Ordering::SeqCst), 1);

    let id = s.conversation(Some("billing")).await;
    let a = s.say(&id, "Please issue refund for A-2002").await;
    let approval = a.body["approval"]["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = s
        .post(
            &s.acme,
            &format!("/api/v1/chat/approvals/{approval}"),
            json!({"approve": false, "comment": "not eligible"}),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let text = d.body["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("denied") && text.contains("not eligible"),
        "{text}"
    );
    assert_eq!(
        orders.refunds.load(Ordering::SeqCst),
        1,
        "a denied call never runs"
    );
    // Another tenant cannot decide acme's approvals.
    let other = s
        .post(
            &s.globex,
            &format!("/api/v1/chat/approvals/{approval}"),
            json!({"approve": true}),
        )
        .await;
    other.error(StatusCode::NOT_FOUND, "not_found");
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn one_approval_waits_at_a_time_and_blocks_new_messages(admin: PgPool) {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    // A scripted upstream, so that one answer asks for two calls; both order tools need a
    // person's approval.
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let s = setup_with(admin, Some(addr), |acme| {
        let local = acme.tenant.providers.get_mut("local").unwrap();
        local.type_ = agentry_crds::tenant::ProviderType::Openai;
        local.base_url = Some(mock.base_url());
        acme.tools.get_mut("lookup-order").unwrap().require_approval = true;
    })
    .await;
    let id = s.conversation(Some("billing")).await;
    let both = "#tool lookup-order {\"orderId\": \"A-1001\"}\n#tool issue-refund {\"orderId\": \"A-1001\"}";
    let a = s.say(&id, both).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // The first waits for approval; the second is answered at once with an error the model
    // can act on after the decision.
    assert_eq!(a.body["approval"]["tool"], "lookup-order", "{}", a.body);
    assert!(a.body["message"].is_null());
    let calls = a.body["toolCalls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{}", a.body);
    assert_eq!(calls[0]["name"], "issue-refund");
    assert_eq!(calls[0]["error"], true);
    let result = calls[0]["result"].as_str().unwrap();
    assert!(result.contains("waiting for approval"), "{result}");
    let approval = a.body["approval"]["approvalId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.count("select count(*) from agentry.tool_approvals where status = 'pending'")
            .await,
        1
    );

    // While it waits, the conversation takes no new message (its last tool call has no
    // result yet).
    let busy = s.say(&id, "Hello?").await;
    let message = busy.error(StatusCode::CONFLICT, "conflict");
    assert!(message.contains(&approval), "{message}");
    assert_eq!(
        s.count("select count(*) from agentry.messages where content = 'Hello?'")
            .await,
        0
    );

    let d = s
        .post(
            &s.acme,
            &format!("/api/v1/chat/approvals/{approval}"),
            json!({"approve": true}),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(orders.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(orders.refunds.load(Ordering::SeqCst), 0);
    let text = d.body["message"]["content"].as_str().unwrap();
    assert!(text.contains("shipped"), "{text}");
    // The model saw both results, each answering its call.
    let sent = mock.last_request().unwrap();
    let tool_ids: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(tool_ids.len(), 2, "{sent}");

    // Decided: the conversation goes on, and the refund can be asked for again.
    let a = s
        .say(&id, "#tool issue-refund {\"orderId\": \"A-1001\"}")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["approval"]["tool"], "issue-refund", "{}", a.body);
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_handoff_escalates_the_conversation(admin: PgPool) {
    let s = setup(admin, None, None).await;
    let id = s.conversation(Some("triage")).await;
    let a = s.say(&id, "Please escalate to human now").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["escalated"], true);
    assert_eq!(a.body["message"]["content"], ESCALATED_REPLY);
    let detail = s
        .get(&s.acme, &format!("/api/v1/chat/conversations/{id}"))
        .await;
    assert_eq!(detail.body["status"], "escalated");
    assert_eq!(detail.body["escalated"], true);
    assert_eq!(
        s.count("select count(*) from agentry.events where type = 'conversation.escalated'")
            .await,
        1
    );
    s.say(&id, "hello?")
        .await
        .error(StatusCode::CONFLICT, "conflict");
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_spent_budget_refuses_with_402(admin: PgPool) {
    let s = setup(admin, None, Some(0)).await;
    let id = s.conversation(None).await;
    s.say(&id, "hello")
        .await
        .error(StatusCode::PAYMENT_REQUIRED, "budget_exhausted");
    assert_eq!(
        s.count("select count(*) from agentry.messages where role = 'assistant'")
            .await,
        0
    );
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn conversations_are_tenant_scoped(admin: PgPool) {
    let s = setup(admin, None, None).await;
    let id = s.conversation(None).await;
    let uri = format!("/api/v1/chat/conversations/{id}");
    s.get(&s.globex, &uri)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    s.post(
        &s.globex,
        &format!("{uri}/messages"),
        json!({"content": "hi"}),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    let list = s.get(&s.globex, "/api/v1/chat/conversations").await;
    assert_eq!(list.body["conversations"], json!([]));
    let list = s.get(&s.acme, "/api/v1/chat/conversations").await;
    assert_eq!(list.body["conversations"].as_array().unwrap().len(), 1);
    let bad = s
        .post(
            &s.acme,
            "/api/v1/chat/conversations",
            json!({"agent": "nobody"}),
        )
        .await;
    let msg = bad.error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert!(msg.contains("nobody"), "{msg}");
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_openai_surface_serves_agents_and_models(admin: PgPool) {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    let s = setup(admin, Some(addr), None).await;
    let models = s.get(&s.acme, "/v1/models").await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.body);
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"agent/billing") && ids.contains(&"small"),
        "{ids:?}"
    );

    let a = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "small", "messages": [{"role": "user", "content": "Hello there. More text."}]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["object"], "chat.completion");
    assert_eq!(
        a.body["choices"][0]["message"]["content"],
        "I can help with that: Hello there."
    );
    assert!(a.body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let a = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "agent/billing", "messages": [{"role": "user", "content": "Can you lookup order A-1001?"}]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let text = a.body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("shipped"), "{text}");
    assert_eq!(orders.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.count("select count(*) from agentry.usage_records").await,
        3,
        "one model call for the catalog model, two for the agent"
    );
    let bad = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "agent/nobody", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let error = openai_error(&bad, StatusCode::NOT_FOUND, "model_not_found");
    assert_eq!(error["param"], "model");

    // A client history with its own tool round: an agent keeps only the text of user and
    // assistant messages (its conversation never made those calls).
    let a = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "agent/general", "messages": [
                {"role": "user", "content": "Look it up."},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                  "function": {"name": "lookup", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{}"},
                {"role": "user", "content": "Hello there."}]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body["choices"][0]["message"]["content"],
        "I can help with that: Hello there."
    );
    assert_eq!(
        s.count(
            "select count(*) from agentry.messages m join agentry.conversations c
               on c.tenant_id = m.tenant_id and c.id = m.conversation_id
             where c.metadata ->> 'source' = 'openai' and m.role = 'tool'"
        )
        .await,
        1,
        "only the agent's own tool call of the lookup above"
    );
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn conversations_opened_by_the_chat_api_and_the_openai_surface_are_stored(admin: PgPool) {
    let s = setup(admin, None, None).await;
    let created = s
        .post(
            &s.acme,
            "/api/v1/chat/conversations",
            json!({"agent": "billing", "title": "refunds", "metadata": {"ticket": 7}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["agent"], "billing");
    assert_eq!(created.body["workflow"], Value::Null);
    assert_eq!(created.body["title"], "refunds");
    assert_eq!(created.body["metadata"], json!({"ticket": 7}));
    assert_eq!(created.body["status"], "open");
    let id = created.body["id"].as_str().unwrap();
    let announced: Vec<(String, String, Value)> = sqlx::query_as(
        "select subject, actor, data from agentry.events where type = 'conversation.created'",
    )
    .fetch_all(&s.h.admin)
    .await
    .unwrap();
    assert_eq!(announced.len(), 1, "{announced:?}");
    let (subject, actor, data) = &announced[0];
    assert_eq!(subject, id);
    assert!(actor.starts_with("key:"), "{actor}");
    assert_eq!(
        *data,
        json!({"conversationId": id, "agent": "billing", "workflow": null, "userId": null})
    );

    // An agent model of the OpenAI-compatible surface: a conversation of that agent holding
    // the request's user and assistant messages, then the answer.
    let history = json!([
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Do you sell blue widgets?"}]);
    let request = json!({"model": "agent/general", "messages": history});
    let a = s.post(&s.acme, "/v1/chat/completions", request).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let (conversation, agent, title, metadata): (uuid::Uuid, String, Option<String>, Value) =
        sqlx::query_as(
            "select id, agent, title, metadata from agentry.conversations
             where metadata ->> 'source' = 'openai'",
        )
        .fetch_one(&s.h.admin)
        .await
        .unwrap();
    assert_eq!(
        (agent.as_str(), title, metadata),
        ("general", None, json!({"source": "openai"}))
    );
    let messages: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select role, content, agent from agentry.messages
         where conversation_id = $1 order by created_at, id",
    )
    .bind(conversation)
    .fetch_all(&s.h.admin)
    .await
    .unwrap();
    let general = Some("general".to_owned());
    assert_eq!(
        messages[..3],
        [
            ("user".to_owned(), "Hi.".to_owned(), general.clone()),
            ("assistant".to_owned(), "Hello.".to_owned(), general.clone()),
            (
                "user".to_owned(),
                "Do you sell blue widgets?".to_owned(),
                general.clone()
            ),
        ]
    );
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(
        messages[3].1,
        a.body["choices"][0]["message"]["content"].as_str().unwrap()
    );
    s.h.cleanup().await;
}

/// Asserts OpenAI's error shape, `{"error": {message, type, param, code}}` and nothing else,
/// with `status` and `code`; returns the `error` object.
fn openai_error(answer: &auth_support::Answer, status: StatusCode, code: &str) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    let top = answer.body.as_object().unwrap();
    assert_eq!(top.len(), 1, "{}", answer.body);
    let error = top["error"].as_object().unwrap();
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "param", "type"],
        "{}",
        answer.body
    );
    assert_eq!(error["code"], code, "{}", answer.body);
    assert!(!error["message"].as_str().unwrap().is_empty());
    assert!(error["type"].is_string());
    top["error"].clone()
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_openai_surface_answers_errors_as_openai_does(admin: PgPool) {
    // A spent budget, so that a model call is refused.
    let s = setup(admin, None, Some(0)).await;
    let user_hi = json!([{"role": "user", "content": "hi"}]);

    for uri in ["/v1/models", "/v1/chat/completions"] {
        let method = if uri == "/v1/models" {
            Method::GET
        } else {
            Method::POST
        };
        let bogus = bearer("agk_bogus_key");
        for headers in [vec![("authorization", bogus.as_str())], vec![]] {
            let a = call(&s.app, method.clone(), uri, &headers, Some(json!({}))).await;
            let e = openai_error(&a, StatusCode::UNAUTHORIZED, "invalid_api_key");
            assert_eq!(e["type"], "invalid_request_error");
        }
    }

    let a = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": user_hi}),
        )
        .await;
    let e = openai_error(&a, StatusCode::NOT_FOUND, "model_not_found");
    assert_eq!(
        (e["param"].as_str(), e["type"].as_str()),
        (Some("model"), Some("invalid_request_error"))
    );
    assert!(e["message"].as_str().unwrap().contains("gpt-9"), "{e}");

    let a = s
        .post(
            &s.acme,
            "/v1/chat/completions",
            json!({"model": "small", "messages": [{"role": "system", "content": "Be brief."}]}),
        )
        .await;
    let e = openai_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(e["param"], "messages");

    // A body of the wrong shape (no `messages`) and one that is not JSON: 400.
    let a = s
        .post(&s.acme, "/v1/chat/completions", json!({"model": "small"}))
        .await;
    let e = openai_error(&a, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(e["message"].as_str().unwrap().contains("messages"), "{e}");
    let auth = bearer(&s.acme);
    let a = auth_support::call_raw(
        &s.app,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        Some("{\"model\": ".to_owned()),
    )
    .await;
    openai_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // The spent budget: 429 `insufficient_quota`, streamed or not.
    for stream in [false, true] {
        let a = s
            .post(
                &s.acme,
                "/v1/chat/completions",
                json!({"model": "small", "messages": user_hi, "stream": stream}),
            )
            .await;
        let e = openai_error(&a, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota");
        assert_eq!(e["type"], "insufficient_quota");
    }

    // An unknown route under /v1 answers in the same shape; the rest of the API keeps its own.
    let a = s.get(&s.acme, "/v1/embeddings").await;
    openai_error(&a, StatusCode::NOT_FOUND, "not_found");
    s.get(
        &s.acme,
        &format!("/api/v1/chat/conversations/{}", uuid::Uuid::nil()),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn the_openai_surface_reports_rate_limits_as_openai_does(admin: PgPool) {
    let s = setup_with(admin, None, |acme| {
        acme.tenant.limits.per_key_requests_per_minute = Some(1);
    })
    .await;
    let a = s.get(&s.acme, "/v1/models").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let auth = bearer(&s.acme);
    let request = axum::http::Request::get("/v1/models")
        .header("authorization", &auth)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(s.app.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let a = auth_support::Answer {
        status: StatusCode::TOO_MANY_REQUESTS,
        body: serde_json::from_slice(&body).unwrap(),
    };
    let e = openai_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    assert_eq!(e["type"], "requests");
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn end_users_see_only_their_own_conversations(admin: PgPool) {
    let s = setup(admin, None, None).await;
    let token = |sub: &str| {
        bearer(&auth_support::sign_rs256(
            &auth_support::claims(sub),
            "k1",
            auth_support::ISSUER_PEM,
        ))
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let as_user = |auth: &str| {
        [
            ("authorization", auth.to_owned()),
            ("x-agentry-tenant", "acme".to_owned()),
        ]
    };
    let req = async |auth: &str, method: Method, uri: &str, body: Option<Value>| {
        let h = as_user(auth);
        let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        call(&s.app, method, uri, &headers, body).await
    };
    let created = req(
        &alice,
        Method::POST,
        "/api/v1/chat/conversations",
        Some(json!({})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["userId"], "alice");
    let id = created.body["id"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/chat/conversations/{id}");
    assert_eq!(
        req(&alice, Method::GET, &uri, None).await.status,
        StatusCode::OK
    );
    req(&bob, Method::GET, &uri, None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    let list = req(&bob, Method::GET, "/api/v1/chat/conversations", None).await;
    assert_eq!(list.body["conversations"], json!([]));
    let list = req(&alice, Method::GET, "/api/v1/chat/conversations", None).await;
    assert_eq!(list.body["conversations"].as_array().unwrap().len(), 1);
    // An API key of the tenant sees every conversation of the tenant.
    let list = s.get(&s.acme, "/api/v1/chat/conversations").await;
    assert_eq!(list.body["conversations"].as_array().unwrap().len(), 1);
    s.h.cleanup().await;
}

#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn sse_reports_the_turn_in_order(admin: PgPool) {
    use tower::ServiceExt as _;
    let s = setup(admin, None, None).await;
    let id = s.conversation(None).await;
    let request = axum::http::Request::post(format!("/api/v1/chat/conversations/{id}/messages"))
        .header("authorization", bearer(&s.acme))
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"content": "I need help with billing please"}).to_string(),
        ))
        .unwrap();
    let response = s.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = String::from_utf8(bytes.to_vec()).unwrap();
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .filter(|n| *n != "token")
        .collect();
    assert_eq!(
        names,
        ["tool_call", "handoff", "tool_result", "done"],
        "{body}"
    );
    assert!(body.contains("event: token"), "{body}");
    let done = body
        .split("event: done\ndata: ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let done: Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["agent"], "billing");
    s.h.cleanup().await;
}

/// What one tool round trip writes, on a tenant's own role (each write one statement, no
/// transaction) and on a shared role: every message with its `message.created` event, every
/// model call's usage row (as the message states it, charged to the key) with its
/// `usage.recorded` event, every event in the outbox, and one relay wake-up per write.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn a_turn_writes_each_message_with_its_usage_and_events(admin: PgPool) {
    let orders = Orders::default();
    let addr = order_server(orders.clone()).await;
    let mut h = Harness::new(admin).await;
    let acme = h.bundles.get_mut("acme").unwrap();
    point_order_tools(acme, addr);
    acme.hash = acme.content_hash();
    for tenant_role in [true, false] {
        let db = if tenant_role {
            h.tenant_db("acme").await
        } else {
            h.shared_db().await
        };
        let (app, _state) = h.app(db, &["acme"], false);
        let (key_id, key) = h.insert_key("acme", &["chat"]).await;
        let mut listener = sqlx::postgres::PgListener::connect_with(&h.admin)
            .await
            .unwrap();
        listener
            .listen(agentry_runtime::events::relay::NOTIFY_CHANNEL)
            .await
            .unwrap();
        let request = json!({"model": "agent/billing",
            "messages": [{"role": "user", "content": "Can you lookup order A-1001?"}]});
        let auth = bearer(&key);
        let a = call(
            &app,
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            Some(request),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        // The conversation with its user message, the call, the tool's answer, the answer.
        let mut wakeups = 0;
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), listener.try_recv()).await
        {
            wakeups += 1;
        }
        assert_eq!(wakeups, 4, "tenant role: {tenant_role}");

        let conversation: uuid::Uuid = sqlx::query_scalar(
            "select id from agentry.conversations order by created_at desc, id desc limit 1",
        )
        .fetch_one(&h.admin)
        .await
        .unwrap();
        let messages: Vec<(uuid::Uuid, String, Option<String>, i32, i32, i64)> = sqlx::query_as(
            "select id, role, model, tokens_in, tokens_out, cost_micros from agentry.messages
             where conversation_id = $1 order by created_at, id",
        )
        .bind(conversation)
        .fetch_all(&h.admin)
        .await
        .unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m.1.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
        let announced: Vec<uuid::Uuid> = sqlx::query_scalar(
            "select (data ->> 'messageId')::uuid from agentry.events
             where type = 'message.created' and subject = $1::text order by id",
        )
        .bind(conversation)
        .fetch_all(&h.admin)
        .await
        .unwrap();
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.0).collect();
        assert_eq!(announced, ids);

        let usage: Vec<(uuid::Uuid, Option<uuid::Uuid>, String, i32, i32, i64)> = sqlx::query_as(
            "select u.id, u.key_id, u.model, u.tokens_in, u.tokens_out, u.cost_micros
               from agentry.usage_records u
               join agentry.events e on e.type = 'usage.recorded'
                and (e.data ->> 'id')::uuid = u.id and e.subject = $1::text
              order by u.id",
        )
        .bind(conversation)
        .fetch_all(&h.admin)
        .await
        .unwrap();
        let calls: Vec<(Option<String>, i32, i32, i64)> = messages
            .iter()
            .filter(|m| m.1 == "assistant")
            .map(|m| (m.2.clone(), m.3, m.4, m.5))
            .collect();
        let charged: Vec<(Option<String>, i32, i32, i64)> = usage
            .iter()
            .map(|u| (Some(u.2.clone()), u.3, u.4, u.5))
            .collect();
        assert_eq!(charged, calls);
        assert!(usage.iter().all(|u| u.1 == Some(key_id)), "{usage:?}");
        assert!(calls.iter().all(|c| c.1 > 0 && c.3 > 0), "{calls:?}");

        let unqueued: i64 = sqlx::query_scalar(
            "select count(*) from agentry.events e
              where e.subject = $1::text
                and not exists (select 1 from agentry.event_outbox o where o.event_id = e.id)",
        )
        .bind(conversation)
        .fetch_one(&h.admin)
        .await
        .unwrap();
        assert_eq!(unqueued, 0);
        let touched: bool = sqlx::query_scalar(
            "select updated_at > created_at from agentry.conversations where id = $1",
        )
        .bind(conversation)
        .fetch_one(&h.admin)
        .await
        .unwrap();
        assert!(touched);
    }
    h.cleanup().await;
}

/// An agent model of the OpenAI-compatible surface answers from the request's messages as
/// stored (user and assistant text), cut to the agent's memory window, as a later turn reads
/// them back from the conversation.
#[sqlx::test(migrator = "agentry_runtime::db::MIGRATOR")]
async fn an_agent_model_sees_the_request_within_its_memory_window(admin: PgPool) {
    let mock = MockLlm::start(MockConfig::default()).await.unwrap();
    let s = setup_with(admin, None, |acme| {
        let local = acme.tenant.providers.get_mut("local").unwrap();
        local.type_ = agentry_crds::tenant::ProviderType::Openai;
        local.base_url = Some(mock.base_url());
        acme.agents.get_mut("general").unwrap().memory_window = 3;
    })
    .await;
    let request = json!({"model": "agent/general", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "tool", "tool_call_id": "x", "content": "dropped"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"}]});
    let a = s.post(&s.acme, "/v1/chat/completions", request).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = |sent: Value| -> Vec<(String, String)> {
        sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let pair = |role: &str, content: &str| (role.to_owned(), content.to_owned());
    assert_eq!(
        seen(mock.last_request().unwrap()),
        [
            pair("user", "three"),
            pair("assistant", "four"),
            pair("user", "five")
        ]
    );

    // The next turn reads the same conversation back from the database.
    let answer = a.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let conversation: uuid::Uuid = sqlx::query_scalar(
        "select id from agentry.conversations where metadata ->> 'source' = 'openai'",
    )
    .fetch_one(&s.h.admin)
    .await
    .unwrap();
    let next = s.say(&conversation.to_string(), "six").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert_eq!(
        seen(mock.last_request().unwrap()),
        [
            pair("user", "five"),
            pair("assistant", &answer),
            pair("user", "six")
        ]
    );
    s.h.cleanup().await;
}
