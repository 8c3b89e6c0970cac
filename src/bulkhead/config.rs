//! Serializable configuration of a bulkhead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{check_nonzero, check_range, ConfigError};

/// The most permits a bulkhead can have (tokio's `Semaphore::MAX_PERMITS`).
pub(crate) const MAX_PERMITS: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Configuration of a [`BulkheadLayer`](super::BulkheadLayer), as in
/// resilience4j's `BulkheadConfig`.
///
/// ```
/// use tower_mesh::bulkhead::BulkheadConfig;
///
/// let cfg: BulkheadConfig =
///     serde_json::from_str(r#"{ "max_concurrent_calls": 10, "max_wait": "50ms" }"#).unwrap();
/// assert_eq!(cfg.max_concurrent_calls, 10);
/// assert_eq!(cfg.max_wait, std::time::Duration::from_millis(50));
/// cfg.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// How many calls may run at once (per partition for a keyed bulkhead).
    /// Default 25, as in resilience4j.
    pub max_concurrent_calls: usize,
    /// How long a call may wait for a permit before it is rejected with
    /// [`BulkheadFull`](super::BulkheadFull). Default zero: reject at once, as
    /// resilience4j's semaphore bulkhead does.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig { max_concurrent_calls: 25, max_wait: Duration::ZERO }
    }
}

impl BulkheadConfig {
    /// Check the values: `max_concurrent_calls` must be at least 1 (and at
    /// most tokio's `Semaphore::MAX_PERMITS`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("bulkhead.max_concurrent_calls", self.max_concurrent_calls == 0)?;
        check_range("bulkhead.max_concurrent_calls", self.max_concurrent_calls as f64, 1.0, MAX_PERMITS as f64)
    }
}
