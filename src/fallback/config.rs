//! The serde form of a fallback for HTTP clients, for configuration files.

use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::source::{FallbackSource, Stale};
use super::{FallbackLayer, FallbackReason, Trigger};
use crate::classify::HttpClassifier;
use crate::config::{check_nonzero, ConfigError};
use crate::error::BoxError;
use crate::request_key::{http_key, HttpKey};

/// A fallback for an HTTP client, as configuration: the last good answer
/// to the same `GET` / `HEAD` (a stale cache), and, when it has none, a
/// fixed answer.
///
/// ```toml
/// on = "both"                 # "rejections", "failures" or "both"
/// capacity = 1000             # keys kept
/// ttl = "60s"                 # the oldest answer given
/// header = "x-mesh-fallback"  # optional marker header
/// stale = true                # false: no stale cache, the fixed answer only
/// answer = { status = 200, body = "[]", headers = { content-type = "application/json" } }
/// ```
///
/// A closure or a second service as the source is code only
/// ([`FallbackLayer::from_fn`], [`FallbackLayer::service`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Which outcomes get the fallback answer (default `both`).
    #[serde(default)]
    pub on: Trigger,
    /// The most keys kept (default 1,000).
    #[serde(default = "default_capacity")]
    pub capacity: NonZeroUsize,
    /// The oldest answer given (default 60 s).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// A header set on fallback answers to the reason.
    #[serde(default)]
    pub header: Option<String>,
    /// Keep the last good answers and answer from them (default `true`).
    #[serde(default = "yes")]
    pub stale: bool,
    /// The fixed answer given when there is no stale one (default none).
    #[serde(default)]
    pub answer: Option<StaticAnswer>,
}

/// A fixed fallback answer: `{ status = 200, body = "[]", headers = { … } }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticAnswer {
    /// The status (default 200).
    pub status: Option<u16>,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
}

fn yes() -> bool {
    true
}

fn default_capacity() -> NonZeroUsize {
    NonZeroUsize::new(1_000).expect("non-zero")
}

fn default_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            on: Trigger::default(),
            capacity: default_capacity(),
            ttl: default_ttl(),
            header: None,
            stale: true,
            answer: None,
        }
    }
}

/// The key function of [`FallbackConfig::http_layer`].
pub type HttpKeyFn<B> = fn(&Request<B>) -> Option<HttpKey>;

/// The layer [`FallbackConfig::http_layer`] makes.
pub type HttpStaleLayer<B, ResB> = FallbackLayer<Stale<HttpKey, HttpKeyFn<B>, Response<ResB>>, HttpClassifier>;

impl FallbackConfig {
    /// The stale-cache layer: the last good answer to a `GET` / `HEAD` of
    /// the same URI, failures as the [`HttpClassifier`] sees them; `None`
    /// when the marker header is not a valid header name. It leaves out
    /// `stale` and `answer`: [`layer`](Self::layer) takes every field.
    pub fn http_layer<B, ResB>(&self, name: &str) -> Option<HttpStaleLayer<B, ResB>> {
        let layer = FallbackLayer::stale(http_key as HttpKeyFn<B>, self.capacity, self.ttl)
            .classifier(HttpClassifier::new())
            .on(self.on)
            .name(name);
        match &self.header {
            Some(h) => Some(layer.header(HeaderName::from_bytes(h.as_bytes()).ok()?)),
            None => Some(layer),
        }
    }
}

/// The layer [`FallbackConfig::layer`] makes.
pub type ConfiguredFallbackLayer<B, ResB> = FallbackLayer<Configured<B, ResB>, HttpClassifier>;

impl FallbackConfig {
    /// Check the values: a source to answer from, a non-zero TTL for the
    /// stale cache, valid header names and values, a valid status.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.prepared().map(drop)
    }

    fn prepared(&self) -> Result<(Option<HeaderName>, Option<Arc<Prepared>>), ConfigError> {
        let invalid = |field, reason| ConfigError::Conflict { field, other: "http", reason };
        if !self.stale && self.answer.is_none() {
            return Err(ConfigError::Conflict {
                field: "fallback.stale",
                other: "fallback.answer",
                reason: "with no stale cache and no answer the fallback has nothing to answer with",
            });
        }
        if self.stale {
            check_nonzero("fallback.ttl", self.ttl.is_zero())?;
        }
        let header = match &self.header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| invalid("fallback.header", "not a valid header name"))?,
            ),
            None => None,
        };
        let answer = match &self.answer {
            Some(a) => {
                let status = StatusCode::from_u16(a.status.unwrap_or(200)).map_err(|_| ConfigError::OutOfRange {
                    field: "fallback.answer.status",
                    value: f64::from(a.status.unwrap_or_default()),
                    min: 100.0,
                    max: 999.0,
                })?;
                let mut headers = HeaderMap::new();
                for (k, v) in &a.headers {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| invalid("fallback.answer.headers", "not a valid header name"))?;
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| invalid("fallback.answer.headers", "not a valid header value"))?;
                    headers.append(name, value);
                }
                Some(Arc::new(Prepared { status, headers, body: Bytes::from(a.body.clone()) }))
            }
            None => None,
        };
        Ok((header, answer))
    }

    /// The layer of the configured stack: the stale answer if there is one,
    /// else the fixed answer; failures as the [`HttpClassifier`] sees them.
    /// The response body must be `Clone` (the stale cache keeps copies) and
    /// made from `Bytes` (the fixed answer): `Full<Bytes>`, `Bytes`, `Vec<u8>`.
    pub fn layer<B, ResB>(&self, name: &str) -> Result<ConfiguredFallbackLayer<B, ResB>, ConfigError> {
        let (header, answer) = self.prepared()?;
        let stale = self.stale.then(|| Stale::new(http_key as HttpKeyFn<B>, self.capacity, self.ttl));
        let layer =
            FallbackLayer::with(Configured { stale, answer }).classifier(HttpClassifier::new()).on(self.on).name(name);
        Ok(match header {
            Some(h) => layer.header(h),
            None => layer,
        })
    }
}

/// A fixed answer, ready to copy.
#[derive(Debug)]
struct Prepared {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The source of a configured fallback ([`FallbackConfig::layer`]): the
/// stale cache, then the fixed answer.
pub struct Configured<B, ResB> {
    stale: Option<Stale<HttpKey, HttpKeyFn<B>, Response<ResB>>>,
    answer: Option<Arc<Prepared>>,
}

impl<B, ResB> Clone for Configured<B, ResB> {
    fn clone(&self) -> Self {
        Configured { stale: self.stale.clone(), answer: self.answer.clone() }
    }
}

impl<B, ResB> std::fmt::Debug for Configured<B, ResB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured").field("stale", &self.stale).field("answer", &self.answer).finish()
    }
}

impl<B, ResB> Configured<B, ResB> {
    /// The stale cache, if configured.
    pub fn stale(&self) -> Option<&Stale<HttpKey, HttpKeyFn<B>, Response<ResB>>> {
        self.stale.as_ref()
    }
}

impl<B, ResB> FallbackSource<Request<B>, Response<ResB>> for Configured<B, ResB>
where
    ResB: Clone + From<Bytes>,
{
    type Keep = Option<HttpKey>;
    type Future = Ready<Result<Response<ResB>, BoxError>>;

    fn keep(&self, req: &Request<B>) -> Option<HttpKey> {
        self.stale.as_ref().and_then(|s| s.keep(req))
    }

    fn success(&self, kept: Option<HttpKey>, res: &Response<ResB>) {
        if let Some(s) = &self.stale {
            s.success(kept, res);
        }
    }

    fn fallback(&mut self, kept: Option<HttpKey>, reason: FallbackReason) -> Option<Self::Future> {
        if let Some(answer) = self.stale.as_mut().and_then(|s| s.fallback(kept, reason)) {
            return Some(answer);
        }
        let a = self.answer.as_ref()?;
        let mut res = Response::new(ResB::from(a.body.clone()));
        *res.status_mut() = a.status;
        *res.headers_mut() = a.headers.clone();
        Some(ready(Ok(res)))
    }
}
