//! The serde form of a chaos layer, for configuration files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use super::error::ChaosConfigError;
use super::fault::{AllowedCallers, Delay, RequestMatch};
use super::layer::{ChaosLayer, ChaosLayerBuilder};

/// A chaos layer as configuration: off unless `enabled = true`.
///
/// ```toml
/// enabled = true
/// seed = 7                                        # optional: repeatable runs
/// delay = { fixed = "300ms", probability = 0.1 }  # or min/max, or mean
/// abort = { with = "503", probability = 0.3 }     # "grpc:14", "reset", ...
/// black_hole = 0.01
/// only = { methods = ["GET"], path_prefix = "/api", headers = { x-canary = "1" } }
/// header_faults = { allowed_ips = ["127.0.0.1"], max_delay = "5s" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Whether the layer injects anything (default `false`).
    #[serde(default)]
    pub enabled: bool,
    /// Seed of the generator, for the same decisions on every run.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Injected delays.
    #[serde(default)]
    pub delay: Option<DelayConfig>,
    /// Injected failures.
    #[serde(default)]
    pub abort: Option<AbortConfig>,
    /// Probability of never answering.
    #[serde(default)]
    pub black_hole: f64,
    /// Which requests the probabilistic faults apply to.
    #[serde(default)]
    pub only: Option<MatchConfig>,
    /// Honour fault headers from these callers.
    #[serde(default)]
    pub header_faults: Option<HeaderFaultsConfig>,
}

/// `delay = { fixed = "300ms" | min = "..", max = ".." | mean = "..", probability = p }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// A fixed delay.
    #[serde(default, with = "humantime_serde")]
    pub fixed: Option<Duration>,
    /// The shortest delay of a uniform distribution (with `max`).
    #[serde(default, with = "humantime_serde")]
    pub min: Option<Duration>,
    /// The longest delay of a uniform distribution (with `min`).
    #[serde(default, with = "humantime_serde")]
    pub max: Option<Duration>,
    /// The mean of an exponential distribution.
    #[serde(default, with = "humantime_serde")]
    pub mean: Option<Duration>,
    /// The fraction of requests delayed.
    pub probability: f64,
}

/// `abort = { with = "503", probability = p }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortConfig {
    /// What the failure is: an HTTP status (`"503"`), a gRPC code
    /// (`"grpc:14"`), or an I/O error (`"reset"`, `"refused"`,
    /// `"timed-out"`, `"broken-pipe"`).
    pub with: String,
    /// The fraction of requests failed.
    pub probability: f64,
}

/// `only = { methods = [..], path_prefix = "..", headers = { name = "value" } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Methods the faults apply to (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix the faults apply to.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Headers (name and exact value) requests must carry.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `header_faults = { allowed_ips = [..], max_delay = ".." }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFaultsConfig {
    /// The peer addresses allowed to send fault headers (at least one).
    pub allowed_ips: Vec<IpAddr>,
    /// The longest delay a header can ask for (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Option<Duration>,
}

impl ChaosConfig {
    /// The layer, `None` when not enabled, or why the configuration cannot
    /// be used. With `production` true (the `production` preset),
    /// header-driven faults are refused.
    pub fn layer(&self, name: &str, production: bool) -> Result<Option<ChaosLayer>, ChaosConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let mut builder = ChaosLayer::builder().name(name).black_hole(self.black_hole);
        if let Some(seed) = self.seed {
            builder = builder.seed(seed);
        }
        if let Some(delay) = &self.delay {
            builder = builder.delay(delay.delay()?, delay.probability);
        }
        if let Some(abort) = &self.abort {
            builder = builder.abort(abort.with.parse()?, abort.probability);
        }
        if let Some(only) = &self.only {
            builder = builder.only(only.matcher()?);
        }
        if let Some(headers) = &self.header_faults {
            builder = headers.apply(builder, production)?;
        }
        builder.build().map(Some)
    }
}

impl DelayConfig {
    fn delay(&self) -> Result<Delay, ChaosConfigError> {
        match (self.fixed, self.min, self.max, self.mean) {
            (Some(d), None, None, None) => Ok(Delay::Fixed(d)),
            (None, Some(min), Some(max), None) => Ok(Delay::Uniform { min, max }),
            (None, None, None, Some(mean)) => Ok(Delay::Exponential(mean)),
            _ => Err(ChaosConfigError::DelayShape),
        }
    }
}

impl MatchConfig {
    fn matcher(&self) -> Result<RequestMatch, ChaosConfigError> {
        let mut matcher = RequestMatch::new();
        for m in &self.methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ChaosConfigError::Method(m.chars().take(32).collect()))?;
            matcher = matcher.method(method);
        }
        if let Some(prefix) = &self.path_prefix {
            matcher = matcher.path_prefix(prefix.clone());
        }
        for (name, value) in &self.headers {
            let bad = || ChaosConfigError::Header(name.chars().take(64).collect());
            let name_ = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value).map_err(|_| bad())?;
            matcher = matcher.header(name_, value);
        }
        Ok(matcher)
    }
}

impl HeaderFaultsConfig {
    fn apply(&self, builder: ChaosLayerBuilder, production: bool) -> Result<ChaosLayerBuilder, ChaosConfigError> {
        if production {
            return Err(ChaosConfigError::HeaderFaults("the production preset does not honour fault headers"));
        }
        let builder = builder.header_faults(AllowedCallers::PeerIps(self.allowed_ips.clone()));
        Ok(match self.max_delay {
            Some(max) => builder.max_header_delay(max),
            None => builder,
        })
    }
}
