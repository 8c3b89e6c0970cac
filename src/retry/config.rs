use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Backoff, Jitter, RetryBudget};
use crate::config::{check_nonzero, check_range, ConfigError};

/// The longest server pushback waited for, by default.
pub(crate) const DEFAULT_MAX_PUSHBACK: Duration = Duration::from_secs(300);

/// Retry configuration, deserializable with `serde` (durations as `"250ms"`,
/// `"1s"`).
///
/// ```
/// use tower_mesh::retry::RetryConfig;
///
/// let c: RetryConfig = serde_json::from_str(r#"{
///     "max_retries": 2,
///     "backoff": { "initial": "1s", "multiplier": 2.0, "max_delay": "10s", "jitter": "equal" },
///     "budget": { "ttl": "10s", "min_per_second": 10, "ratio": 0.2 }
/// }"#).unwrap();
/// c.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Name used as the `service` label of the metrics.
    pub name: String,
    /// Retries after the first attempt: 3 attempts in all is `max_retries: 2`.
    pub max_retries: u32,
    /// Backoff between attempts.
    pub backoff: BackoffConfig,
    /// Optional retry budget shared by all clones of the layer.
    pub budget: Option<BudgetConfig>,
    /// The longest server pushback (`Retry-After`, `grpc-retry-pushback-ms`)
    /// waited for; a server asking for longer gets no retry, and the caller
    /// its answer at once. Default 5 minutes (Envoy's limit).
    #[serde(with = "humantime_serde")]
    pub max_pushback: Duration,
    /// Requests the caller declares safe to repeat after *any* failure, on
    /// top of the protocol's own: gRPC full method paths
    /// (`/orders.v1.Orders/GetOrder`, or `/orders.v1.Orders/*` for every
    /// method of a service) for the stack's `grpc_stack`, HTTP method names
    /// (`POST`, `PATCH`) for its `http_stack`. Other requests are retried
    /// only when the failure shows the server did not process them (see
    /// [`GrpcRequests`](super::GrpcRequests), [`HttpRequests`](super::HttpRequests)).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub idempotent: Vec<String>,
}

/// Backoff part of [`RetryConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth per retry (≥ 1).
    pub multiplier: f64,
    /// Longest delay of the backoff (server pushback is honoured even when
    /// longer). `0s` together with `initial = "0s"`: no backoff.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Randomisation.
    pub jitter: Jitter,
    /// Seed of the jitter's random numbers (see [`Backoff::seed`]): the same
    /// delays run after run, for tests. Unset: random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Budget part of [`RetryConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Window over which requests and retries are counted (1 s – 60 s).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Retries per second always allowed.
    pub min_per_second: u32,
    /// Retries allowed per request, 0.0 – 1.0 (0.2 = one retry per five requests).
    pub ratio: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            name: "retry".into(),
            max_retries: 3,
            backoff: BackoffConfig::default(),
            budget: None,
            max_pushback: DEFAULT_MAX_PUSHBACK,
            idempotent: Vec::new(),
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::Full,
            seed: None,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { ttl: Duration::from_secs(10), min_per_second: 10, ratio: 0.2 }
    }
}

impl RetryConfig {
    /// The defaults of the client libraries users come from: 3 attempts in all
    /// (`max_retries` 2), 1 s initial delay growing ×2.0 up to 10 s, with equal
    /// jitter (never less than half the nominal delay), no budget.
    pub fn standard() -> Self {
        RetryConfig {
            name: "retry".into(),
            max_retries: 2,
            backoff: BackoffConfig {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max_delay: Duration::from_secs(10),
                jitter: Jitter::Equal,
                seed: None,
            },
            budget: None,
            max_pushback: DEFAULT_MAX_PUSHBACK,
            idempotent: Vec::new(),
        }
    }

    /// Check every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.backoff;
        check_range("retry.backoff.multiplier", b.multiplier, 1.0, 1000.0)?;
        // A zero longest delay is "no backoff" only with a zero first delay.
        check_nonzero("retry.backoff.max_delay", b.max_delay.is_zero() && !b.initial.is_zero())?;
        if b.initial > b.max_delay {
            return Err(ConfigError::Conflict {
                field: "retry.backoff.initial",
                other: "retry.backoff.max_delay",
                reason: "the first delay is longer than the longest delay",
            });
        }
        if let Some(budget) = &self.budget {
            check_range("retry.budget.ratio", budget.ratio, 0.0, 1.0)?;
            check_range("retry.budget.ttl", budget.ttl.as_secs_f64(), 1.0, 60.0)?;
        }
        Ok(())
    }

    pub(crate) fn backoff(&self) -> Backoff {
        let b = &self.backoff;
        let backoff = Backoff::exponential(b.initial, b.multiplier, b.max_delay).jitter(b.jitter);
        match b.seed {
            Some(seed) => backoff.seed(seed),
            None => backoff,
        }
    }

    pub(crate) fn budget(&self) -> Option<RetryBudget> {
        self.budget.as_ref().map(|b| RetryBudget::new(b.ttl, b.min_per_second, b.ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_preset() {
        let c = RetryConfig::standard();
        c.validate().unwrap();
        assert_eq!(c.max_retries, 2);
        assert_eq!(c.backoff.initial, Duration::from_secs(1));
        assert_eq!(c.backoff.multiplier, 2.0);
        assert_eq!(c.backoff.max_delay, Duration::from_secs(10));
    }

    #[test]
    fn serde_round_trip_with_humantime() {
        let c = RetryConfig { budget: Some(BudgetConfig::default()), ..RetryConfig::standard() };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["backoff"]["initial"], "1s");
        assert_eq!(json["backoff"]["jitter"], "equal");
        let back: RetryConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let partial: RetryConfig =
            serde_json::from_str(r#"{"max_retries": 1, "backoff": {"initial": "250ms"}}"#).unwrap();
        assert_eq!(partial.max_retries, 1);
        assert_eq!(partial.backoff.initial, Duration::from_millis(250));
        assert_eq!(partial.backoff.max_delay, Duration::from_secs(10), "other fields default");
    }

    #[test]
    fn invalid_values_are_typed_errors() {
        let mut c = RetryConfig::default();
        c.backoff.multiplier = 0.5;
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange { field: "retry.backoff.multiplier", .. })));
        let mut c = RetryConfig::default();
        c.backoff.initial = Duration::from_secs(20);
        assert!(matches!(c.validate(), Err(ConfigError::Conflict { .. })));
        let c = RetryConfig { budget: Some(BudgetConfig { ratio: 1.5, ..Default::default() }), ..Default::default() };
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange { field: "retry.budget.ratio", .. })));
        let mut c = RetryConfig::default();
        c.backoff.max_delay = Duration::ZERO;
        assert!(matches!(c.validate(), Err(ConfigError::Zero { .. })), "zero only with a zero first delay");
        c.backoff.initial = Duration::ZERO;
        c.validate().expect("zero and zero: no backoff");
        assert_eq!(c.backoff().delay(3, Duration::ZERO), Duration::ZERO);
        let none: RetryConfig = serde_json::from_str(r#"{"backoff": {"initial": "0s", "max_delay": "0s"}}"#).unwrap();
        none.validate().expect("no backoff is valid");
        assert_eq!(none.backoff().delay(5, Duration::ZERO), Duration::ZERO);
        let seeded: RetryConfig = serde_json::from_str(r#"{"backoff": {"seed": 9}, "idempotent": ["POST"]}"#).unwrap();
        assert_eq!(seeded.backoff().seed_value(), Some(9));
        assert_eq!(seeded.idempotent, ["POST"]);
        let e = serde_json::from_str::<RetryConfig>(r#"{"max_retry": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
