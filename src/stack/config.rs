//! The serde configuration of a stack: presets, per-service sections, TOML
//! and environment loading, cross-field validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::StackError;
use crate::bulkhead::BulkheadConfig;
use crate::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
use crate::config::{check_range, ConfigError};
use crate::retry::{BudgetConfig, RetryConfig};
use crate::timeout::TimeoutConfig;

/// The environment a configuration is made for; each preset follows the
/// defaults of the client libraries users come from.
///
/// | | `development` | `testing` | `production` |
/// |---|---|---|---|
/// | bulkhead (max concurrent calls, the connection limit) | 50 | 20 | 200 |
/// | breaker minimum calls | 10 | 2 | 20 |
/// | breaker window | 20 calls | 20 calls | 60 s |
/// | breaker wait in open | 5 s | 1 s | 30 s, growing ×2 to 5 min |
/// | breaker max wait in half-open | 60 s | 10 s | 60 s |
/// | timeouts (attempt / total) | 10 s / 30 s | 2 s / 5 s | 3 s / 10 s |
/// | retry | 2 retries, 1 s ×2.0, ≤ 10 s | 2 retries, 10 ms ×2.0, ≤ 100 ms | 2 retries, 1 s ×2.0, ≤ 10 s, budget 20 % |
/// | per-call log events | on | off | off |
/// | hedge, fallback, coalesce | off | off | off |
///
/// Hedging, fallback and coalescing are off in every preset: a hedge adds
/// load on the dependency (worth it where its latency tail matters), what a
/// fallback answers is the application's choice, and both fallback and
/// coalescing need a buffered response body
/// ([`ClientConfig::buffered_http_stack`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Local development: generous timeouts, every call logged.
    Development,
    /// Test suites: small pools, fast trips (a breaker opens after 2 calls),
    /// short delays.
    Testing,
    /// Production (the default): large pools, a time-based breaker window
    /// with a growing open wait, a retry budget.
    #[default]
    Production,
}

impl FromStr for Preset {
    type Err = StackError;
    fn from_str(s: &str) -> Result<Self, StackError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Preset::Development),
            "testing" | "test" => Ok(Preset::Testing),
            "production" | "prod" => Ok(Preset::Production),
            _ => Err(StackError::UnknownPreset(s.to_owned())),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Development => "development",
            Preset::Testing => "testing",
            Preset::Production => "production",
        })
    }
}

/// The configuration of all the services a process talks to or serves.
///
/// ```toml
/// preset = "production"          # defaults of every service
///
/// [client.orders]                # the stack of calls to `orders`
/// timeout = { attempt = "500ms", total = "2s" }
/// retry = { max_retries = 1 }
/// circuit_breaker = { failure_rate_threshold = 25.0 }
/// bulkhead = false               # switch a preset's layer off
///
/// [server]                       # the layers of this process's own server
/// timeout = "5s"
/// max_concurrent_requests = 512
/// ```
///
/// Every field of a section is optional: what a file does not say comes from
/// the preset. Load with [`from_toml_str`](Self::from_toml_str),
/// [`from_file`](Self::from_file) or [`from_env`](Self::from_env), then get
/// a validated service with [`client`](Self::client) and build its stack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshConfig {
    /// The preset every service starts from.
    pub preset: Preset,
    /// Per-service client stacks, by service name.
    pub clients: BTreeMap<String, ClientConfig>,
    /// The server-side layers.
    pub server: ServerConfig,
}

/// The client stack of one downstream service (see [`MeshConfig`]).
///
/// A layer whose section is `None` is left out of the stack. In TOML a
/// section is a table, `true` (the preset's or default values) or `false`
/// (left out).
///
/// Its `Debug` redacts any user info (`user:password@`) written in
/// `endpoints` or `forward_token_to`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The service's name: the `service` label of every metric and the name
    /// of its breaker, retry and bulkhead. Set from the table's key.
    pub name: String,
    /// Per-attempt and total timeouts.
    pub timeout: TimeoutConfig,
    /// Retries with backoff and jitter.
    #[serde(with = "toggle")]
    pub retry: Option<RetryConfig>,
    /// The circuit breaker.
    #[serde(with = "toggle")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The bulkhead: the most calls in flight at once (the connection limit).
    #[serde(with = "toggle")]
    pub bulkhead: Option<BulkheadConfig>,
    /// An outbound rate limit (feature `rate-limit`): each attempt takes a
    /// permit, waiting up to its `max_wait`; off in every preset (it needs
    /// the dependency's quota).
    #[cfg(feature = "rate-limit")]
    pub rate_limit: Option<crate::rate_limit::RateLimitConfig>,
    /// Hedged requests (feature `hedge`): a copy of a safe request (as the
    /// retry decides: idempotent methods, gRPC methods in
    /// `retry.idempotent`) when the first has not answered after `delay`;
    /// off in every preset (it adds load on the dependency; turn it on
    /// where the latency tail matters).
    #[cfg(feature = "hedge")]
    #[serde(with = "toggle")]
    pub hedge: Option<crate::hedge::HedgeConfig>,
    /// A fallback answer (feature `fallback`): the last good answer to the
    /// same `GET` / `HEAD`, then a fixed one; off in every preset (what to
    /// answer is the application's choice). Needs
    /// [`buffered_http_stack`](Self::buffered_http_stack).
    #[cfg(feature = "fallback")]
    #[serde(with = "toggle")]
    pub fallback: Option<crate::fallback::FallbackConfig>,
    /// Identical `GET` / `HEAD` requests in flight share one call (feature
    /// `coalesce`); off in every preset (callers get copies of one
    /// response). Needs [`buffered_http_stack`](Self::buffered_http_stack).
    #[cfg(feature = "coalesce")]
    #[serde(with = "toggle")]
    pub coalesce: Option<crate::coalesce::CoalesceConfig>,
    /// Attach the correlation id and trace context in scope to every request
    /// (needs the `correlation-id` feature; on by default when it is
    /// enabled).
    pub correlation: bool,
    /// Forward the inbound bearer token to these authorities only (exact
    /// `host[:port]` or `*.suffix`; needs the `jwt` feature), over `https`
    /// only unless the entry is written `http://host[:port]` (see
    /// `jwt::Allowlist`). Empty: no token is forwarded.
    pub forward_token_to: Vec<String>,
    /// Static endpoints the logical name resolves to (needs the `discovery`
    /// feature); empty: requests go where their URI says.
    pub endpoints: Vec<String>,
    /// Record `tower_mesh_client_*` metrics (calls by method and outcome,
    /// latency).
    pub metrics: bool,
    /// Emit a `tracing` debug event for every call.
    pub log_calls: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::preset(Preset::default())
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::redact::RedactedUrl;
        fn urls(v: &[String]) -> Vec<RedactedUrl<'_, str>> {
            v.iter().map(|e| RedactedUrl(e.as_str())).collect()
        }
        let mut d = f.debug_struct("ClientConfig");
        d.field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("bulkhead", &self.bulkhead);
        #[cfg(feature = "rate-limit")]
        d.field("rate_limit", &self.rate_limit);
        #[cfg(feature = "hedge")]
        d.field("hedge", &self.hedge);
        #[cfg(feature = "fallback")]
        d.field("fallback", &self.fallback);
        #[cfg(feature = "coalesce")]
        d.field("coalesce", &self.coalesce);
        d.field("correlation", &self.correlation)
            .field("forward_token_to", &urls(&self.forward_token_to))
            .field("endpoints", &urls(&self.endpoints))
            .field("metrics", &self.metrics)
            .field("log_calls", &self.log_calls)
            .finish()
    }
}

/// The server-side layers of this process (see [`MeshConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The `service` label of the server metrics.
    pub name: String,
    /// Answer `504` (gRPC `DEADLINE_EXCEEDED`) when a request takes longer.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Shed load: answer `503` (gRPC `RESOURCE_EXHAUSTED`) at once when this
    /// many requests are in flight.
    pub max_concurrent_requests: Option<usize>,
    /// Limit the request rate (feature `rate-limit`): over it, `429` with
    /// `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields (gRPC
    /// `RESOURCE_EXHAUSTED` with pushback), before load shedding. Off in
    /// every preset: a quota is the service's own (a default one would shed
    /// legitimate traffic); a section's unset values are
    /// [`RateLimitConfig`](crate::rate_limit::RateLimitConfig)'s defaults.
    #[cfg(feature = "rate-limit")]
    pub rate_limit: Option<crate::rate_limit::RateLimitConfig>,
    /// Fault injection (feature `chaos`), off unless `enabled = true`; the
    /// `production` preset refuses header-driven faults at load. Not part
    /// of [`ServerStack`](super::ServerStack) (it would ask every handler
    /// for a `Clone` service and a `Default` body): add
    /// [`chaos_layer`](Self::chaos_layer) under the stack with
    /// `ServiceBuilder::option_layer`.
    #[cfg(feature = "chaos")]
    pub chaos: Option<crate::chaos::ChaosConfig>,
    /// Read or make the request's correlation id and trace context, echo it,
    /// make it current for the handler (needs the `correlation-id` feature;
    /// on by default when it is enabled).
    pub correlation: bool,
    /// Record `tower_mesh_server_*` metrics.
    pub metrics: bool,
    /// Emit a `tracing` debug event for every request.
    pub log_calls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::preset(Preset::default())
    }
}

impl ClientConfig {
    /// The values of a preset (see [`Preset`]), named `client`.
    pub fn preset(preset: Preset) -> Self {
        let name = String::from("client");
        let (max_calls, min_calls) = match preset {
            Preset::Development => (50, 10),
            Preset::Testing => (20, 2),
            Preset::Production => (200, 20),
        };
        let (attempt, total) = match preset {
            Preset::Development => (10, 30),
            Preset::Testing => (2, 5),
            Preset::Production => (3, 10),
        };
        let mut retry = RetryConfig::standard();
        match preset {
            Preset::Development => {}
            Preset::Testing => {
                retry.backoff.initial = Duration::from_millis(10);
                retry.backoff.max_delay = Duration::from_millis(100);
            }
            Preset::Production => retry.budget = Some(BudgetConfig::default()),
        }
        let mut breaker = CircuitBreakerConfig { minimum_calls: min_calls, ..Default::default() };
        match preset {
            Preset::Development => {
                breaker.sliding_window = SlidingWindow::Count(20);
                breaker.wait_in_open = Duration::from_secs(5);
            }
            Preset::Testing => {
                breaker.sliding_window = SlidingWindow::Count(20);
                breaker.wait_in_open = Duration::from_secs(1);
                breaker.permitted_calls_in_half_open = 2;
                breaker.max_wait_in_half_open = Duration::from_secs(10);
            }
            Preset::Production => {
                breaker.sliding_window = SlidingWindow::Time(Duration::from_secs(60));
                breaker.wait_in_open = Duration::from_secs(30);
                breaker.wait_in_open_multiplier = 2.0;
                breaker.max_wait_in_open = Duration::from_secs(300);
            }
        }
        ClientConfig {
            name,
            timeout: TimeoutConfig {
                attempt: Some(Duration::from_secs(attempt)),
                total: Some(Duration::from_secs(total)),
                grpc_timeout: false,
            },
            retry: Some(retry),
            circuit_breaker: Some(breaker),
            bulkhead: Some(BulkheadConfig { max_concurrent_calls: max_calls, max_wait: Duration::ZERO }),
            #[cfg(feature = "rate-limit")]
            rate_limit: None,
            #[cfg(feature = "hedge")]
            hedge: None,
            #[cfg(feature = "fallback")]
            fallback: None,
            #[cfg(feature = "coalesce")]
            coalesce: None,
            correlation: cfg!(feature = "correlation-id"),
            forward_token_to: Vec::new(),
            endpoints: Vec::new(),
            metrics: true,
            log_calls: preset == Preset::Development,
        }
    }

    /// Give the service a name, which also names its breaker and retry layer.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self.sync_names();
        self
    }

    pub(super) fn sync_names(&mut self) {
        if let Some(r) = &mut self.retry {
            r.name.clone_from(&self.name);
        }
        if let Some(b) = &mut self.circuit_breaker {
            b.name.clone_from(&self.name);
        }
    }

    /// Check each section and how they fit together:
    ///
    /// - each layer's own checks (thresholds in range, nothing zero that
    ///   must not be, the attempt timeout not longer than the total, …);
    /// - a time-based breaker window at least as long as the attempt timeout
    ///   (otherwise a slow failure falls out of the window before it counts);
    /// - a bulkhead's wait for a permit and the first retry delay shorter
    ///   than the total timeout (otherwise they can only end in a timeout);
    /// - a retry budget ratio within 0–1;
    /// - a fixed hedge delay shorter than the attempt and total timeouts;
    /// - a fallback with something to answer from, valid header names and
    ///   status; a coalescing bound above zero;
    /// - sections that need a Cargo feature that is not enabled.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.timeout.validate()?;
        let total = self.timeout.total;
        if let Some(r) = &self.retry {
            r.validate()?;
            if let Some(b) = &r.budget {
                check_range("retry.budget.ratio", b.ratio, 0.0, 1.0)?;
            }
            if total.is_some_and(|t| r.max_retries > 0 && r.backoff.initial >= t) {
                return Err(ConfigError::Conflict {
                    field: "retry.backoff.initial",
                    other: "timeout.total",
                    reason: "the first retry delay is not shorter than the total timeout, so no retry could run",
                });
            }
        }
        if let Some(b) = &self.circuit_breaker {
            b.validate()?;
            if let (SlidingWindow::Time(window), Some(attempt)) = (b.sliding_window, self.timeout.attempt) {
                if window < attempt {
                    return Err(ConfigError::Conflict {
                        field: "circuit_breaker.sliding_window",
                        other: "timeout.attempt",
                        reason: "the time window is shorter than one attempt, so a timed-out call leaves the window before it is counted",
                    });
                }
            }
        }
        #[cfg(feature = "rate-limit")]
        if let Some(r) = &self.rate_limit {
            r.validate()?;
            if total.is_some_and(|t| r.max_wait >= t) {
                return Err(ConfigError::Conflict {
                    field: "rate_limit.max_wait",
                    other: "timeout.total",
                    reason: "waiting for a permit may take the whole total timeout",
                });
            }
        }
        #[cfg(feature = "hedge")]
        self.validate_hedge()?;
        #[cfg(feature = "fallback")]
        if let Some(f) = &self.fallback {
            f.validate()?;
        }
        #[cfg(feature = "coalesce")]
        if let Some(c) = &self.coalesce {
            c.validate()?;
        }
        if let Some(b) = &self.bulkhead {
            b.validate()?;
            if total.is_some_and(|t| b.max_wait >= t) {
                return Err(ConfigError::Conflict {
                    field: "bulkhead.max_wait",
                    other: "timeout.total",
                    reason: "waiting for a permit may take the whole total timeout",
                });
            }
        }
        if self.correlation && !cfg!(feature = "correlation-id") {
            return Err(ConfigError::Conflict {
                field: "correlation",
                other: "features",
                reason: "needs the `correlation-id` Cargo feature",
            });
        }
        if !self.forward_token_to.is_empty() && !cfg!(feature = "jwt") {
            return Err(ConfigError::Conflict {
                field: "forward_token_to",
                other: "features",
                reason: "needs the `jwt` Cargo feature",
            });
        }
        if !self.endpoints.is_empty() && !cfg!(feature = "discovery") {
            return Err(ConfigError::Conflict {
                field: "endpoints",
                other: "features",
                reason: "needs the `discovery` Cargo feature",
            });
        }
        Ok(())
    }
}

impl ClientConfig {
    /// The hedge's own checks, and a fixed delay shorter than the timeouts
    /// (otherwise no hedge could be sent).
    #[cfg(feature = "hedge")]
    fn validate_hedge(&self) -> Result<(), ConfigError> {
        let Some(h) = &self.hedge else { return Ok(()) };
        h.validate()?;
        if let crate::hedge::DelaySpec::Fixed(delay) = h.delay {
            if self.timeout.attempt.is_some_and(|t| delay >= t) {
                return Err(ConfigError::Conflict {
                    field: "hedge.delay",
                    other: "timeout.attempt",
                    reason: "an attempt times out before its hedge is due, so no hedge could be sent",
                });
            }
            if self.timeout.total.is_some_and(|t| delay >= t) {
                return Err(ConfigError::Conflict {
                    field: "hedge.delay",
                    other: "timeout.total",
                    reason: "the call times out before a hedge is due, so no hedge could be sent",
                });
            }
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The values of a preset: a 30 s request timeout, load shedding above
    /// 1024 requests in flight (256 in `testing`), per-request log events in
    /// `development`.
    pub fn preset(preset: Preset) -> Self {
        ServerConfig {
            name: "server".into(),
            timeout: Some(Duration::from_secs(30)),
            max_concurrent_requests: Some(if preset == Preset::Testing { 256 } else { 1024 }),
            #[cfg(feature = "rate-limit")]
            rate_limit: None,
            #[cfg(feature = "chaos")]
            chaos: None,
            correlation: cfg!(feature = "correlation-id"),
            metrics: true,
            log_calls: preset == Preset::Development,
        }
    }

    /// The configured [`ChaosLayer`](crate::chaos::ChaosLayer) (feature
    /// `chaos`), `None` when not enabled; header-driven faults are refused
    /// under the `production` preset.
    #[cfg(feature = "chaos")]
    pub fn chaos_layer(
        &self,
        preset: Preset,
    ) -> Result<Option<crate::chaos::ChaosLayer>, crate::chaos::ChaosConfigError> {
        match &self.chaos {
            Some(chaos) => chaos.layer(&self.name, preset == Preset::Production),
            None => Ok(None),
        }
    }

    /// Check the values: no zero timeout or limit, features present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Zero { field: "server.timeout" });
        }
        if self.max_concurrent_requests == Some(0) {
            return Err(ConfigError::Zero { field: "server.max_concurrent_requests" });
        }
        #[cfg(feature = "rate-limit")]
        if let Some(r) = &self.rate_limit {
            r.validate()?;
        }
        if self.correlation && !cfg!(feature = "correlation-id") {
            return Err(ConfigError::Conflict {
                field: "server.correlation",
                other: "features",
                reason: "needs the `correlation-id` Cargo feature",
            });
        }
        Ok(())
    }
}

/// `Option<T>` as a table (on), `true` (on with defaults) or `false` (off).
mod toggle {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Toggle<T> {
        Flag(bool),
        Section(T),
    }

    pub(super) fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => t.serialize(s),
            None => s.serialize_bool(false),
        }
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: Deserialize<'de> + Default,
        D: Deserializer<'de>,
    {
        Ok(match Toggle::<T>::deserialize(d)? {
            Toggle::Flag(false) => None,
            Toggle::Flag(true) => Some(T::default()),
            Toggle::Section(t) => Some(t),
        })
    }
}
