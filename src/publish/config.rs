//! Configuration shared by every publisher.

use std::time::Duration;

use super::event::ContentMode;
use crate::config::{check_range, ConfigError};

/// Settings of a [`Publisher`](super::Publisher), whatever the broker.
///
/// Deserializable (durations as `"250ms"`, `"10s"`); checked by
/// [`validate`](PublisherConfig::validate) when a publisher is built.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// `service` label of the metrics (default: the broker name).
    pub name: String,
    /// Most messages sent and not yet confirmed; `poll_ready` waits beyond it.
    pub max_in_flight: usize,
    /// How many times an unconfirmed message is sent again after reconnects
    /// before it fails with [`PublishError::ConnectionLost`](super::PublishError::ConnectionLost).
    pub max_resends: u32,
    /// How long a confirmation may take before the connection is considered
    /// broken (reconnect and re-send).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Delay between connection attempts.
    pub reconnect: ReconnectBackoff,
    /// How long a message may wait for the broker while it cannot be
    /// reached. Zero (the default): once a connection attempt has failed,
    /// calls fail at once with
    /// [`PublishError::Unavailable`](super::PublishError::Unavailable) (for a
    /// circuit breaker above), and so do the messages that were waiting for
    /// that attempt. Otherwise calls are accepted while the broker is down,
    /// up to [`max_in_flight`](Self::max_in_flight) (so `poll_ready` holds a
    /// producer back), sent in order once it is back, and each one still
    /// unsent after this long fails with `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub outage_wait: Duration,
    /// Structured (JSON envelope, default) or binary (data as body, attributes as headers).
    pub mode: ContentMode,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            name: String::new(),
            max_in_flight: 1024,
            max_resends: 10,
            confirm_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            reconnect: ReconnectBackoff::default(),
            outage_wait: Duration::ZERO,
            mode: ContentMode::Structured,
        }
    }
}

impl PublisherConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(ConfigError::Zero { field: "publish.max_in_flight" });
        }
        check_range(
            "publish.max_in_flight",
            self.max_in_flight as f64,
            1.0,
            (tokio::sync::Semaphore::MAX_PERMITS / 2) as f64,
        )?;
        if self.confirm_timeout.is_zero() {
            return Err(ConfigError::Zero { field: "publish.confirm_timeout" });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Zero { field: "publish.connect_timeout" });
        }
        self.reconnect.validate()
    }
}

/// How long to wait before reconnecting.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectBackoff {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Largest delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        ReconnectBackoff { initial: Duration::from_millis(100), multiplier: 2.0, max: Duration::from_secs(10) }
    }
}

impl ReconnectBackoff {
    /// The delay after `failures` failed attempts (0 for the first), with
    /// equal jitter: half fixed, half random.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(failures.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let d = capped / 2.0 + fastrand::f64() * capped / 2.0;
        Duration::from_secs_f64(d)
    }
}

impl ReconnectBackoff {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial.is_zero() {
            return Err(ConfigError::Zero { field: "publish.reconnect.initial" });
        }
        check_range("publish.reconnect.multiplier", self.multiplier, 1.0, 100.0)?;
        if self.max < self.initial {
            return Err(ConfigError::Conflict {
                field: "publish.reconnect.max",
                other: "publish.reconnect.initial",
                reason: "the largest delay is smaller than the first",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = ReconnectBackoff { initial: Duration::from_millis(100), multiplier: 2.0, max: Duration::from_secs(1) };
        for n in 0..20 {
            let d = b.delay(n);
            let cap = (0.1 * 2f64.powi(n as i32)).min(1.0);
            assert!(d.as_secs_f64() >= cap / 2.0 - 1e-9 && d.as_secs_f64() <= cap + 1e-9, "{n}: {d:?}");
        }
    }

    #[test]
    fn config_validates_and_deserialises() {
        assert!(PublisherConfig::default().validate().is_ok());
        let bad = PublisherConfig { max_in_flight: 0, ..Default::default() };
        assert_eq!(bad.validate(), Err(ConfigError::Zero { field: "publish.max_in_flight" }));
        let bad = PublisherConfig {
            reconnect: ReconnectBackoff { max: Duration::from_millis(1), ..Default::default() },
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Conflict { .. })));
        let c: PublisherConfig = serde_json::from_str(
            r#"{"max_in_flight": 64, "confirm_timeout": "2s", "reconnect": {"initial": "50ms", "max": "5s"}, "mode": "binary"}"#,
        )
        .unwrap();
        assert_eq!(c.max_in_flight, 64);
        assert_eq!(c.confirm_timeout, Duration::from_secs(2));
        assert_eq!(c.reconnect.initial, Duration::from_millis(50));
        assert_eq!(c.mode, ContentMode::Binary);
    }
}
