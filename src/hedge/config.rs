//! The serde form of a hedge layer, for configuration files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{HedgeBuilder, HedgeDelay, HedgeLayer};
use crate::config::{check_nonzero, check_range, ConfigError};

/// A hedge layer as configuration:
///
/// ```toml
/// delay = "p95"        # a percentile of recent latencies, or a fixed "10ms"
/// max = 1              # copies sent after the first request
/// budget = 0.05        # hedges at most 5 % of the requests of the last 10 s
/// min_samples = 100    # answers a window holds before its percentile is used
/// window = "10s"       # the percentile's window
/// ```
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::hedge::{HedgeConfig, HedgeDelay};
///
/// let cfg: HedgeConfig = serde_json::from_str(r#"{ "delay": "10ms", "max": 2 }"#).unwrap();
/// assert_eq!(cfg.delay(), HedgeDelay::Fixed(Duration::from_millis(10)));
/// cfg.validate().unwrap();
/// let cfg: HedgeConfig = serde_json::from_str(r#"{ "delay": "p99.9", "min_samples": 1000 }"#).unwrap();
/// assert!(matches!(cfg.delay(), HedgeDelay::Percentile { percentile, min_samples: 1000, .. } if percentile == 99.9));
/// assert!(serde_json::from_str::<HedgeConfig>(r#"{ "delay": "soon" }"#).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// When a hedge is sent (default `p95`).
    pub delay: DelaySpec,
    /// Copies sent after the first request, one per delay (default 1).
    pub max: u32,
    /// Hedges may be at most this share (0 – 1) of the requests of the last
    /// 10 s (default 0.05).
    pub budget: f64,
    /// Answers the window must hold before its percentile is used (default
    /// 100; percentile delays only).
    pub min_samples: u64,
    /// The length of a percentile window (default 10 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            delay: DelaySpec::Percentile(95.0),
            max: 1,
            budget: 0.05,
            min_samples: 100,
            window: Duration::from_secs(10),
        }
    }
}

/// The `delay` of a [`HedgeConfig`]: `"p95"` (a percentile, e.g. `"p99.9"`)
/// or a duration (`"10ms"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DelaySpec {
    /// This percentile of recent latencies.
    Percentile(f64),
    /// A fixed delay.
    Fixed(Duration),
}

impl FromStr for DelaySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix('p').or_else(|| s.strip_prefix('P')) {
            return p.parse().map(DelaySpec::Percentile).map_err(|_| format!("invalid percentile {s:?}"));
        }
        humantime::parse_duration(s)
            .map(DelaySpec::Fixed)
            .map_err(|_| format!("invalid hedge delay {s:?}: expected a percentile (\"p95\") or a duration (\"10ms\")"))
    }
}

impl fmt::Display for DelaySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelaySpec::Percentile(p) => write!(f, "p{p}"),
            DelaySpec::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for DelaySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DelaySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl HedgeConfig {
    /// The delay as the layer takes it.
    pub fn delay(&self) -> HedgeDelay {
        match self.delay {
            DelaySpec::Fixed(d) => HedgeDelay::Fixed(d),
            DelaySpec::Percentile(percentile) => {
                HedgeDelay::Percentile { percentile, min_samples: self.min_samples, window: self.window }
            }
        }
    }

    /// Check the values: a percentile above 0 and at most 100, a non-zero
    /// fixed delay, window and `max`, a budget within 0 – 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("hedge.max", self.max == 0)?;
        check_range("hedge.budget", self.budget, 0.0, 1.0)?;
        if let DelaySpec::Fixed(d) = self.delay {
            check_nonzero("hedge.delay", d.is_zero())?;
        }
        self.delay().validate()
    }

    /// A builder with these values (named `name`), to set the classifier
    /// and the request policy on.
    pub fn builder(&self, name: &str) -> HedgeBuilder {
        HedgeLayer::builder().name(name).delay(self.delay()).max_hedges(self.max).budget_ratio(self.budget)
    }
}
