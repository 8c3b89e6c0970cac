//! Serializable configuration of a rate limiter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key::KeySpec;
use super::rate::{Policy, Rate};
use crate::config::{check_nonzero, check_range, ConfigError};

/// What a keyed limiter does with a new key when it already tracks
/// `max_keys` keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Forget the least recently used keys (a forgotten key starts again
    /// with a full burst). The default.
    #[default]
    EvictLeastRecent,
    /// Keys beyond the bound share one limit of the default policy: never
    /// more than one policy's worth of extra traffic, but heavy new keys
    /// starve each other until old ones go idle.
    Shared,
}

/// Configuration of a rate limiter: `rate = "100/s", burst = 20`.
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::rate_limit::RateLimitConfig;
///
/// let cfg: RateLimitConfig =
///     serde_json::from_str(r#"{ "rate": "100/s", "burst": 20, "max_wait": "50ms" }"#).unwrap();
/// assert_eq!(cfg.rate.count(), 100);
/// assert_eq!(cfg.policy().burst, 20);
/// cfg.validate().unwrap();
/// // Without `burst`, a second's worth of requests may come at once.
/// let cfg: RateLimitConfig = serde_json::from_str(r#"{ "rate": "50/s" }"#).unwrap();
/// assert_eq!(cfg.policy().burst, 50);
/// assert!(serde_json::from_str::<RateLimitConfig>(r#"{ "rate": "fast" }"#).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The steady rate. Default `100/s`.
    pub rate: Rate,
    /// The most requests admitted at once. Default: the rate's count (a
    /// period's worth).
    pub burst: Option<u32>,
    /// How long a call may wait for a permit before it is rejected with
    /// [`RateLimited`](super::RateLimited). Default zero: reject at once
    /// (servers); an outbound throttle sets it.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// The most keys a keyed limiter tracks at once. Default 10,000.
    pub max_keys: usize,
    /// What happens to new keys beyond `max_keys`.
    pub overflow: Overflow,
    /// Where each request's key comes from (`header:x-api-key`,
    /// `claim:sub`, `authority`, `peer-ip`, `global`: see [`KeySpec`]);
    /// `None`: one limit for all.
    pub key: Option<KeySpec>,
    /// A shared store: `redis://host:port/db` (feature `rate-limit-redis`)
    /// makes the limit shared by every instance. `None`: in process.
    pub store: Option<String>,
    /// The timeout of every call to the store. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// When the store cannot decide: `open` (admit through a local limit
    /// of `fallback_rate`) or `closed` (reject). Default `open`.
    pub on_store_error: StoreErrorPolicy,
    /// The per-instance rate while the store is unavailable (fail open).
    /// Default: the shared rate.
    pub fallback_rate: Option<Rate>,
    /// Leased mode: the most tokens an instance takes from the store at
    /// once (0, the default: one decision per call).
    pub lease: u32,
}

impl std::fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A password in the store's URL stays out.
        f.debug_struct("RateLimitConfig")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("max_wait", &self.max_wait)
            .field("max_keys", &self.max_keys)
            .field("overflow", &self.overflow)
            .field("key", &self.key)
            .field("store", &self.store.as_deref().map(crate::redact::RedactedUrl))
            .field("store_timeout", &self.store_timeout)
            .field("on_store_error", &self.on_store_error)
            .field("fallback_rate", &self.fallback_rate)
            .field("lease", &self.lease)
            .finish()
    }
}

/// What a shared limiter does when its store cannot decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreErrorPolicy {
    /// Admit through a per-instance local limit.
    #[default]
    Open,
    /// Reject.
    Closed,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: Rate::per_second(100).expect("100/s is a rate"),
            burst: None,
            max_wait: Duration::ZERO,
            max_keys: 10_000,
            overflow: Overflow::default(),
            key: None,
            store: None,
            store_timeout: Duration::from_millis(50),
            on_store_error: StoreErrorPolicy::default(),
            fallback_rate: None,
            lease: 0,
        }
    }
}

impl RateLimitConfig {
    /// The rate and burst.
    pub fn policy(&self) -> Policy {
        Policy::new(self.rate, self.burst.unwrap_or(self.rate.count()))
    }

    /// Check the values: `burst` and `max_keys` at least 1, `max_wait` at
    /// most one hour, a `store` only with feature `rate-limit-redis` and a
    /// `redis://` (or `rediss://`, `unix://`) URL, a store timeout between
    /// 1 ms and 60 s.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nonzero("rate_limit.burst", self.burst == Some(0))?;
        check_nonzero("rate_limit.max_keys", self.max_keys == 0)?;
        check_range("rate_limit.max_wait", self.max_wait.as_secs_f64(), 0.0, 3600.0)?;
        if let Some(store) = &self.store {
            if !cfg!(feature = "rate-limit-redis") {
                return Err(ConfigError::Conflict {
                    field: "rate_limit.store",
                    other: "features",
                    reason: "needs the `rate-limit-redis` Cargo feature",
                });
            }
            if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|p| store.starts_with(p)) {
                return Err(ConfigError::Conflict {
                    field: "rate_limit.store",
                    other: "rate_limit.store",
                    reason: "not a redis:// URL",
                });
            }
            check_range("rate_limit.store_timeout", self.store_timeout.as_secs_f64(), 0.001, 60.0)?;
        }
        Ok(())
    }
}
