//! The serde form of a fallback for HTTP clients, for configuration files.

use std::num::NonZeroUsize;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use serde::Deserialize;

use super::source::Stale;
use super::{FallbackLayer, Trigger};
use crate::classify::HttpClassifier;
use crate::request_key::{http_key, HttpKey};

/// A stale-cache fallback for an HTTP client, as configuration:
///
/// ```toml
/// on = "both"                 # "rejections", "failures" or "both"
/// capacity = 1000             # keys kept
/// ttl = "60s"                 # the oldest answer given
/// header = "x-mesh-fallback"  # optional marker header
/// ```
#[derive(Debug, Clone, Deserialize)]
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
}

fn default_capacity() -> NonZeroUsize {
    NonZeroUsize::new(1_000).expect("non-zero")
}

fn default_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig { on: Trigger::default(), capacity: default_capacity(), ttl: default_ttl(), header: None }
    }
}

/// The key function of [`FallbackConfig::http_layer`].
pub type HttpKeyFn<B> = fn(&Request<B>) -> Option<HttpKey>;

/// The layer [`FallbackConfig::http_layer`] makes.
pub type HttpStaleLayer<B, ResB> = FallbackLayer<Stale<HttpKey, HttpKeyFn<B>, Response<ResB>>, HttpClassifier>;

impl FallbackConfig {
    /// The layer: the last good answer to a `GET` / `HEAD` of the same URI,
    /// failures as the [`HttpClassifier`] sees them; `None` when the marker
    /// header is not a valid header name.
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
