//! Serializable configuration of an adaptive concurrency limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::algorithm::{Aimd, Gradient2};
use crate::config::{check_range, ConfigError};

/// The largest `max_limit` accepted.
pub(crate) const MAX_LIMIT: usize = 1 << 20;

/// Which algorithm moves the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmKind {
    /// [`Gradient2`] (the default).
    #[default]
    Gradient2,
    /// [`Aimd`].
    Aimd,
}

/// Configuration of an [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer):
///
/// ```toml
/// algorithm = "gradient2"   # or "aimd"
/// initial_limit = 20
/// min_limit = 1
/// max_limit = 1000
/// max_wait = "0s"           # wait for a slot this long before rejecting
/// gradient2 = { smoothing = 0.2, tolerance = 1.5, long_window = 600, queue_size = 4, window = "100ms", min_window_samples = 10 }
/// aimd = { backoff_ratio = 0.9, increase = 1, timeout = "5s" }
/// ```
///
/// ```
/// use tower_mesh::adaptive_concurrency::{AdaptiveConcurrencyConfig, AlgorithmKind};
///
/// let cfg: AdaptiveConcurrencyConfig = serde_json::from_str(
///     r#"{ "algorithm": "aimd", "max_limit": 200, "aimd": { "timeout": "250ms" } }"#,
/// ).unwrap();
/// assert_eq!(cfg.algorithm, AlgorithmKind::Aimd);
/// assert_eq!(cfg.aimd.timeout, std::time::Duration::from_millis(250));
/// cfg.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    /// Which algorithm moves the limit. Default `gradient2`.
    pub algorithm: AlgorithmKind,
    /// The limit to start from. Default 20 (Netflix's).
    pub initial_limit: usize,
    /// The limit never goes below this. Default 1.
    pub min_limit: usize,
    /// The limit never goes above this. Default 1000.
    pub max_limit: usize,
    /// How long a call may wait for a free slot before it is rejected with
    /// [`ConcurrencyLimited`](super::ConcurrencyLimited). Default zero:
    /// reject at once. At most `limit` calls wait at once.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// The settings of [`Gradient2`].
    pub gradient2: Gradient2,
    /// The settings of [`Aimd`].
    pub aimd: Aimd,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        AdaptiveConcurrencyConfig {
            algorithm: AlgorithmKind::Gradient2,
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            max_wait: Duration::ZERO,
            gradient2: Gradient2::default(),
            aimd: Aimd::default(),
        }
    }
}

impl AdaptiveConcurrencyConfig {
    /// Check the values: `1 <= min_limit <= initial_limit <= max_limit <= 2^20`,
    /// and the chosen algorithm's settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("adaptive_concurrency.min_limit", self.min_limit as f64, 1.0, MAX_LIMIT as f64)?;
        check_range("adaptive_concurrency.max_limit", self.max_limit as f64, self.min_limit as f64, MAX_LIMIT as f64)?;
        check_range(
            "adaptive_concurrency.initial_limit",
            self.initial_limit as f64,
            self.min_limit as f64,
            self.max_limit as f64,
        )?;
        match self.algorithm {
            AlgorithmKind::Gradient2 => self.gradient2.validate(),
            AlgorithmKind::Aimd => self.aimd.validate(),
        }
    }
}
