//! Logging and tracing: structured logs always; OpenTelemetry traces over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context crosses process boundaries in
//! HTTP headers and NATS message headers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Whether spans are exported (an OTLP endpoint is configured). Without it no span carries an
/// OpenTelemetry context, so the trace helpers below answer at once instead of building an
/// empty carrier on every call of the request path.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: only then is there a trace context to propagate, and a span
/// made only to carry one (the relay's per event) worth its cost.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the tracer provider alive; flushes spans when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. `json` selects JSON log lines (for clusters).
pub fn init(service: &'static str, json: bool) -> Telemetry {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![Box::new(
        TraceContextPropagator::new(),
    )]));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().compact().boxed()
    };
    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| eprintln!("{service}: OTLP exporter disabled: {e}"))
            .ok()
            .map(|exporter| {
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .build()
            })
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(p) = &provider {
        global::set_tracer_provider(p.clone());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Telemetry { provider }
}

/// The W3C `traceparent` of the current span, when tracing is on.
pub fn current_traceparent() -> Option<String> {
    trace_headers().remove("traceparent")
}

/// Trace context headers (`traceparent`, `tracestate`) for the current span.
pub fn trace_headers() -> HashMap<String, String> {
    if !exporting() {
        return HashMap::new();
    }
    let mut carrier = HashMap::new();
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
}

/// The remote parent context carried by `headers` (for example a `traceparent` from NATS).
pub fn extract_context(headers: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(headers))
}
