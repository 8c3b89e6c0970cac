//! Serializable configuration of the timeouts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::TimeoutLayer;
use crate::config::{check_nonzero, ConfigError};

/// Configuration of the two timeouts of a client stack: the total time a call
/// may take (including retries) and the time one attempt may take, as in
/// resilience4j's `TimeLimiterConfig` plus a retry-aware total.
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::timeout::TimeoutConfig;
///
/// let cfg: TimeoutConfig =
///     serde_json::from_str(r#"{ "attempt": "200ms", "total": "1s", "grpc_timeout": true }"#).unwrap();
/// let layers = cfg.layers().unwrap();
/// assert_eq!(layers.total.unwrap().duration(), Duration::from_secs(1));
/// assert_eq!(layers.attempt.unwrap().duration(), Duration::from_millis(200));
///
/// let bad = TimeoutConfig { attempt: Some(Duration::from_secs(2)), ..cfg };
/// assert!(bad.validate().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Timeout of one attempt (a layer below the retry layer). `None`: no
    /// per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub attempt: Option<Duration>,
    /// Timeout of the whole call, retries included (a layer above the retry
    /// layer). `None`: no total timeout.
    #[serde(with = "humantime_serde")]
    pub total: Option<Duration>,
    /// Also send the remaining time as a `grpc-timeout` header.
    pub grpc_timeout: bool,
}

/// The layers a [`TimeoutConfig`] describes; use them with
/// `ServiceBuilder::option_layer`, `total` above the retry layer and
/// `attempt` below it.
#[derive(Clone, Debug)]
pub struct TimeoutLayers {
    /// The total timeout, if configured.
    pub total: Option<TimeoutLayer>,
    /// The per-attempt timeout, if configured.
    pub attempt: Option<TimeoutLayer>,
}

impl TimeoutConfig {
    /// Check the values: timeouts must not be zero, and the per-attempt
    /// timeout must not be longer than the total.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("timeout.attempt", self.attempt.is_some_and(|d| d.is_zero()))?;
        check_nonzero("timeout.total", self.total.is_some_and(|d| d.is_zero()))?;
        if let (Some(attempt), Some(total)) = (self.attempt, self.total) {
            if attempt > total {
                return Err(ConfigError::Conflict {
                    field: "timeout.attempt",
                    other: "timeout.total",
                    reason: "the per-attempt timeout must not be longer than the total timeout",
                });
            }
        }
        Ok(())
    }

    /// Validate and make the layers.
    pub fn layers(&self) -> Result<TimeoutLayers, ConfigError> {
        self.validate()?;
        Ok(TimeoutLayers {
            total: self.total.map(|d| TimeoutLayer::new(d).grpc_timeout(self.grpc_timeout)),
            attempt: self.attempt.map(|d| TimeoutLayer::per_attempt(d).grpc_timeout(self.grpc_timeout)),
        })
    }
}
