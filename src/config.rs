//! Validation errors for the layers' configuration.
//!
//! Every layer's config struct is `serde`-deserializable and has a
//! `validate()` (called by the layer's builder): an invalid value is a
//! [`ConfigError`] at build time, never a panic.

use std::fmt;

/// A configuration value that cannot work.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number outside its allowed range.
    OutOfRange {
        /// The offending field, e.g. `circuit_breaker.failure_rate_threshold`.
        field: &'static str,
        /// The value given.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// A size, count or duration that must not be zero.
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// Two fields that contradict each other.
    Conflict {
        /// The first field.
        field: &'static str,
        /// The field it contradicts.
        other: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange { field, value, min, max } => {
                write!(f, "invalid configuration: `{field}` is {value}, must be between {min} and {max}")
            }
            ConfigError::Zero { field } => write!(f, "invalid configuration: `{field}` must be greater than zero"),
            ConfigError::Conflict { field, other, reason } => {
                write!(f, "invalid configuration: `{field}` conflicts with `{other}`: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Helper for config validation: `Err(OutOfRange)` unless `min <= value <= max` (NaN is out of range).
pub fn check_range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { field, value, min, max })
    }
}

/// Helper for config validation: `Err(Zero)` when `is_zero`.
pub fn check_nonzero(field: &'static str, is_zero: bool) -> Result<(), ConfigError> {
    if is_zero {
        Err(ConfigError::Zero { field })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field() {
        let e = check_range("retry.budget.ratio", 1.5, 0.0, 1.0).unwrap_err();
        assert_eq!(e.to_string(), "invalid configuration: `retry.budget.ratio` is 1.5, must be between 0 and 1");
        assert!(check_range("x", f64::NAN, 0.0, 1.0).is_err());
        assert!(check_range("x", 1.0, 0.0, 1.0).is_ok());
        assert_eq!(
            check_nonzero("bulkhead.max_concurrent_calls", true).unwrap_err().to_string(),
            "invalid configuration: `bulkhead.max_concurrent_calls` must be greater than zero"
        );
    }
}
