//! The gateway every model call goes through: it resolves catalog models to providers (built
//! from the tenant's bundle and rebuilt when their configuration changes), retries, falls back,
//! keeps a circuit breaker per (tenant, provider), and prices and meters every call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentry_crds::RuntimeBundle;
use agentry_crds::bundle::{ModelConfig, ProviderConfig};
use agentry_crds::tenant::ProviderType;
use futures::StreamExt as _;
use parking_lot::RwLock;
use tracing::Instrument as _;

use super::LlmConfig;
use super::cost::{
    Prices, SharedUsageSink, UsageOutcome, UsageRecord, UsageSink, estimate_input_tokens,
    estimate_output_tokens,
};
use super::error::LlmError;
use super::offline::OfflineProvider;
use super::openai::OpenAiProvider;
use super::provider::{Provider, ProviderReply};
use super::resilience::{Backoff, BreakerPermit, CircuitBreaker, CircuitState, Clock, SystemClock};
use super::secrets::{ApiKey, KeyFile, dev_key_env};
use super::stream::{LlmStream, StreamMeta};
use super::types::{ChatRequest, Completion, Usage};
use crate::metrics::{Metrics, ProviderLabels};

/// Reads an environment variable (injected so tests need not touch the process environment).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

struct ProviderEntry {
    /// `None` for a provider registered in code, which bundle changes never replace.
    config: Option<ProviderConfig>,
    provider: Arc<dyn Provider>,
    breaker: Arc<CircuitBreaker>,
}

/// A catalog model resolved to its provider.
struct Target<'b> {
    name: &'b str,
    model: &'b ModelConfig,
    entry: Arc<ProviderEntry>,
}

/// A call that a model answered: which one, its unsettled breaker permit, what it answered
/// and the upstream calls made in all (failed ones and other models' included).
struct Answered<'b, T> {
    target: Target<'b>,
    permit: BreakerPermit,
    value: T,
    attempts: u32,
}

/// Model calls for every tenant of the process.
pub struct LlmGateway {
    http: reqwest::Client,
    config: LlmConfig,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    env: EnvLookup,
    metrics: Option<Arc<Metrics>>,
    sinks: Vec<SharedUsageSink>,
    /// tenant → provider name → entry.
    providers: RwLock<HashMap<String, HashMap<String, Arc<ProviderEntry>>>>,
}

impl std::fmt::Debug for LlmGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmGateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlmGateway {
    /// A gateway making HTTP calls with `http`.
    pub fn new(http: reqwest::Client, config: LlmConfig) -> Self {
        Self {
            backoff: Backoff::new(config.retry.clone(), config.jitter_seed),
            http,
            config,
            clock: Arc::new(SystemClock),
            env: Arc::new(|name| std::env::var(name).ok()),
            metrics: None,
            sinks: Vec::new(),
            providers: RwLock::new(HashMap::new()),
        }
    }

    /// Uses `clock` for circuit breakers.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Reads dev-mode keys through `env`.
    pub fn with_env(mut self, env: EnvLookup) -> Self {
        self.env = env;
        self
    }

    /// Exports breaker states to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sends the usage record of every call (completed, streamed, cancelled) to `sink`.
    pub fn with_usage_sink(mut self, sink: impl UsageSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Serves `tenant`'s provider `name` with `provider` instead of building it from the
    /// bundle (tests, embedders).
    pub fn register_provider(&self, tenant: &str, name: &str, provider: Arc<dyn Provider>) {
        let entry = Arc::new(ProviderEntry {
            config: None,
            provider,
            breaker: self.breaker(tenant, name),
        });
        self.providers
            .write()
            .entry(tenant.to_owned())
            .or_default()
            .insert(name.to_owned(), entry);
    }

    /// The breaker state of `tenant`'s provider `name`, if it was used.
    pub fn circuit_state(&self, tenant: &str, provider: &str) -> Option<CircuitState> {
        self.providers
            .read()
            .get(tenant)
            .and_then(|p| p.get(provider))
            .map(|e| e.breaker.state())
    }

    /// One call: `models[0]`, then each fallback in order, each retried on retryable errors.
    pub async fn complete(
        &self,
        bundle: &RuntimeBundle,
        models: &[String],
        request: &ChatRequest,
    ) -> Result<Completion, LlmError> {
        let span = tracing::info_span!("llm.complete", tenant = %bundle.tenant.name, ?models);
        self.complete_inner(bundle, models, request)
            .instrument(span)
            .await
    }

    async fn complete_inner(
        &self,
        bundle: &RuntimeBundle,
        models: &[String],
        request: &ChatRequest,
    ) -> Result<Completion, LlmError> {
        let answered = self
            .call_with_fallbacks(bundle, models, |provider, upstream| async move {
                provider.complete(&upstream, request).await
            })
            .await?;
        answered.permit.success();
        Ok(self.completed(
            bundle,
            &answered.target,
            request,
            answered.value,
            answered.attempts,
        ))
    }

    /// A streamed call with the same retries and fallbacks, up to the first chunk: once a
    /// provider has produced a chunk the stream is handed over and no longer retried. The
    /// breaker hears how the stream ended (a stream that breaks midway is a failure).
    pub async fn stream(
        &self,
        bundle: &RuntimeBundle,
        models: &[String],
        request: &ChatRequest,
    ) -> Result<LlmStream, LlmError> {
        let span = tracing::info_span!("llm.stream", tenant = %bundle.tenant.name, ?models);
        self.stream_inner(bundle, models, request)
            .instrument(span)
            .await
    }

    async fn stream_inner(
        &self,
        bundle: &RuntimeBundle,
        models: &[String],
        request: &ChatRequest,
    ) -> Result<LlmStream, LlmError> {
        // A stream counts as answered once its first chunk (or its end) arrived.
        let answered = self
            .call_with_fallbacks(bundle, models, |provider, upstream| async move {
                let mut chunks = provider.stream(&upstream, request).await?;
                match chunks.next().await {
                    Some(Ok(first)) => Ok((chunks, Some(first))),
                    None => Ok((chunks, None)),
                    Some(Err(error)) => Err(error),
                }
            })
            .await?;
        let Answered {
            target,
            permit,
            value: (chunks, first),
            attempts,
        } = answered;
        let meta = StreamMeta {
            tenant: bundle.tenant.name.clone(),
            model: target.name.to_owned(),
            provider: target.model.provider.clone(),
            prices: Prices::from(target.model),
            attempts,
            input_estimate: estimate_input_tokens(request),
        };
        // The breaker hears how the stream ends, through the permit it carries.
        Ok(LlmStream::new(
            chunks,
            first,
            meta,
            permit,
            self.sinks.clone(),
        ))
    }

    /// The attempt loop shared by every kind of call: `models[0]`, then each fallback in
    /// order; a model whose provider's circuit is open is skipped at once, and a retryable
    /// error is retried with backoff up to the retry policy. `call` makes one attempt with a
    /// provider and an upstream model id. On success the breaker permit is handed back
    /// unsettled: the caller reports the outcome (at once, or when a stream ends).
    async fn call_with_fallbacks<'b, T, F, Fut>(
        &self,
        bundle: &'b RuntimeBundle,
        models: &'b [String],
        mut call: F,
    ) -> Result<Answered<'b, T>, LlmError>
    where
        F: FnMut(Arc<dyn Provider>, String) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut attempts = 0u32;
        let mut last = LlmError::NoModel;
        for name in models {
            let target = match self.resolve(bundle, name) {
                Ok(target) => target,
                Err(error) => {
                    last = error;
                    continue;
                }
            };
            let mut retry = 0u32;
            loop {
                let Ok(permit) = target.entry.breaker.try_acquire() else {
                    last = LlmError::CircuitOpen {
                        provider: target.model.provider.clone(),
                    };
                    break;
                };
                attempts += 1;
                let attempt = call(
                    target.entry.provider.clone(),
                    target.model.upstream_model.clone(),
                );
                match attempt.await {
                    Ok(value) => {
                        return Ok(Answered {
                            target,
                            permit,
                            value,
                            attempts,
                        });
                    }
                    Err(error) => {
                        settle(permit, &error);
                        self.log_failure(bundle, &target, attempts, &error);
                        match self.next_delay(retry, &error) {
                            Some(delay) => tokio::time::sleep(delay).await,
                            None => {
                                last = error;
                                break;
                            }
                        }
                        retry += 1;
                    }
                }
            }
        }
        Err(exhausted(models, attempts, last))
    }

    /// The wait before retrying after `error`, or `None` to move on to the next model.
    fn next_delay(&self, retry: u32, error: &LlmError) -> Option<Duration> {
        if !error.is_retryable() || retry + 1 >= self.config.retry.max_attempts {
            return None;
        }
        self.backoff.delay(retry, error.retry_after())
    }

    fn completed(
        &self,
        bundle: &RuntimeBundle,
        target: &Target<'_>,
        request: &ChatRequest,
        reply: ProviderReply,
        attempts: u32,
    ) -> Completion {
        let (usage, usage_estimated) = match reply.usage {
            Some(usage) if usage.total() > 0 => (usage, false),
            _ => (
                Usage {
                    input_tokens: estimate_input_tokens(request),
                    output_tokens: estimate_output_tokens(&reply.content, &reply.tool_calls),
                },
                true,
            ),
        };
        let cost_micros = Prices::from(target.model).cost_micros(usage);
        let completion = Completion {
            content: reply.content,
            tool_calls: reply.tool_calls,
            usage,
            usage_estimated,
            finish_reason: reply.finish_reason,
            model: target.name.to_owned(),
            provider: target.model.provider.clone(),
            cost_micros,
            attempts,
        };
        if !self.sinks.is_empty() {
            let record = UsageRecord {
                tenant: bundle.tenant.name.clone(),
                model: completion.model.clone(),
                provider: completion.provider.clone(),
                usage,
                estimated: usage_estimated,
                cost_micros,
                outcome: UsageOutcome::Completed,
                streamed: false,
                attempts,
            };
            for sink in &self.sinks {
                sink.record(record.clone());
            }
        }
        completion
    }

    fn log_failure(&self, bundle: &RuntimeBundle, target: &Target<'_>, attempt: u32, e: &LlmError) {
        tracing::warn!(
            tenant = %bundle.tenant.name,
            model = target.name,
            provider = %target.model.provider,
            attempt,
            code = e.code(),
            error = %e,
            "model call failed"
        );
    }

    fn resolve<'b>(
        &self,
        bundle: &'b RuntimeBundle,
        name: &'b str,
    ) -> Result<Target<'b>, LlmError> {
        let model = bundle
            .tenant
            .models
            .get(name)
            .ok_or_else(|| LlmError::UnknownModel(name.to_owned()))?;
        let config = bundle
            .tenant
            .providers
            .get(&model.provider)
            .ok_or_else(|| LlmError::Config {
                provider: model.provider.clone(),
                message: "not declared by the tenant".to_owned(),
            })?;
        let entry = self.entry(&bundle.tenant.name, &model.provider, config)?;
        Ok(Target { name, model, entry })
    }

    fn entry(
        &self,
        tenant: &str,
        name: &str,
        config: &ProviderConfig,
    ) -> Result<Arc<ProviderEntry>, LlmError> {
        let current = self
            .providers
            .read()
            .get(tenant)
            .and_then(|p| p.get(name))
            .cloned();
        if let Some(entry) = &current
            && entry.config.as_ref().is_none_or(|c| c == config)
        {
            return Ok(entry.clone());
        }
        // New, or its configuration changed with the bundle: build it (with a fresh breaker:
        // a new base URL or key deserves a fresh start).
        let entry = Arc::new(ProviderEntry {
            config: Some(config.clone()),
            provider: self.build(name, config)?,
            breaker: self.breaker(tenant, name),
        });
        let mut providers = self.providers.write();
        let slot = providers.entry(tenant.to_owned()).or_default();
        match slot.get(name) {
            // Another call built the same configuration meanwhile: keep one breaker.
            Some(existing) if existing.config.as_ref().is_none_or(|c| c == config) => {
                Ok(existing.clone())
            }
            _ => {
                slot.insert(name.to_owned(), entry.clone());
                Ok(entry)
            }
        }
    }

    fn breaker(&self, tenant: &str, provider: &str) -> Arc<CircuitBreaker> {
        let gauge = self.metrics.as_ref().map(|m| {
            m.provider_circuit_state
                .get_or_create(&ProviderLabels {
                    tenant: tenant.to_owned(),
                    provider: provider.to_owned(),
                })
                .clone()
        });
        Arc::new(CircuitBreaker::new(
            self.config.breaker.clone(),
            self.clock.clone(),
            gauge,
        ))
    }

    fn build(&self, name: &str, config: &ProviderConfig) -> Result<Arc<dyn Provider>, LlmError> {
        match config.type_ {
            ProviderType::Builtin => Ok(Arc::new(OfflineProvider::new(name))),
            ProviderType::Openai => {
                let base_url = config.base_url.as_deref().ok_or_else(|| LlmError::Config {
                    provider: name.to_owned(),
                    message: "no baseUrl".to_owned(),
                })?;
                Ok(Arc::new(OpenAiProvider::new(
                    name,
                    base_url,
                    self.api_key(name, config),
                    self.http.clone(),
                    Duration::from_millis(u64::from(config.timeout_ms.max(1))),
                    self.config.max_stream,
                )))
            }
        }
    }

    /// The key source: in dev mode `AGENTRY_PROVIDER_<NAME>_API_KEY` wins when set; otherwise
    /// the mounted Secret file; no key when the provider names no Secret.
    fn api_key(&self, name: &str, config: &ProviderConfig) -> ApiKey {
        if self.config.dev_mode
            && let Some(key) = (self.env)(&dev_key_env(name)).filter(|k| !k.trim().is_empty())
        {
            return ApiKey::Fixed(key.trim().to_owned());
        }
        match &config.api_key_secret_ref {
            Some(secret) => ApiKey::File(KeyFile::new(
                self.config.secrets_dir.join(&secret.name).join(&secret.key),
                self.config.key_recheck,
            )),
            None => ApiKey::None,
        }
    }
}

/// Tells the breaker what an error says about the provider: a failure (5xx, timeout,
/// connection, garbage), a sign of life (it answered 4xx or 429), or nothing (the call was
/// never made: configuration).
fn settle(permit: BreakerPermit, error: &LlmError) {
    if error.is_provider_failure() {
        permit.failure();
    } else if matches!(
        error,
        LlmError::Status { .. } | LlmError::RateLimited { .. }
    ) {
        permit.success();
    }
}

fn exhausted(models: &[String], attempts: u32, last: LlmError) -> LlmError {
    if models.is_empty() {
        LlmError::NoModel
    } else {
        LlmError::Exhausted {
            attempts,
            last: Box::new(last),
        }
    }
}
