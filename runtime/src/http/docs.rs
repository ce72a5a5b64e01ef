//! `/openapi.json` (OpenAPI 3.1, generated from the handlers) and a docs page at `/docs`.
//!
//! The page lists every operation rendered on the server, so it works offline, and upgrades to
//! an interactive Redoc view when the browser can load Redoc.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::state::AppState;

/// Declares the bearer scheme (API key or JWT) used by every `/api/v1` operation.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub fn router(openapi: Arc<OpenApi>) -> Router<AppState> {
    let page = Arc::new(render_page(&openapi));
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move { Json(openapi.as_ref().clone()) }),
        )
        .route(
            "/docs",
            get(move || async move { Html(page.as_ref().clone()) }),
        )
}

fn render_page(openapi: &OpenApi) -> String {
    let mut rows = String::new();
    for (path, item) in &openapi.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                let summary = op
                    .summary
                    .clone()
                    .or_else(|| op.description.clone())
                    .unwrap_or_default();
                let _ = writeln!(
                    rows,
                    "<tr><td><code>{method}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                    escape(path),
                    escape(&summary)
                );
            }
        }
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}td{{padding:.25rem .75rem;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>{title}</h1>
<p>{description}</p>
<p>Machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<table><thead><tr><th>Method</th><th>Path</th><th>Summary</th></tr></thead><tbody>
{rows}</tbody></table>
<div id="redoc"></div>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
<script>if (window.Redoc) {{ Redoc.init('/openapi.json', {{}}, document.getElementById('redoc')); }}</script>
</body></html>
"#,
        title = escape(&openapi.info.title),
        description = escape(openapi.info.description.as_deref().unwrap_or_default()),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
