//! A rate (`100/s`) and the policy of a limiter (rate + burst).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of requests per period: `100/s`, `10/min`, `5/100ms`, `1000/h`.
///
/// Parsed from (and written as) `"<count>/<period>"`, the period being a
/// unit (`ms`, `s`, `min`, `h`, `d`; also `sec`, `m`, `second`, `minute`,
/// `hour`, `day`) with an optional number in front (`100/10s`).
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::rate_limit::Rate;
///
/// let r: Rate = "100/s".parse().unwrap();
/// assert_eq!(r.count(), 100);
/// assert_eq!(r.period(), Duration::from_secs(1));
/// assert_eq!(r.interval(), Duration::from_millis(10));
/// assert_eq!("5/100ms".parse::<Rate>().unwrap().interval(), Duration::from_millis(20));
/// assert!("0/s".parse::<Rate>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period: Duration,
}

impl Rate {
    /// `count` requests per `period`; `None` when either is zero or the
    /// interval between two requests (`period / count`) would be below one
    /// nanosecond.
    pub fn new(count: u32, period: Duration) -> Option<Rate> {
        if count == 0 || period.is_zero() || period.as_nanos() < u128::from(count) {
            return None;
        }
        Some(Rate { count, period })
    }

    /// `count` requests per second (`None` for zero).
    pub fn per_second(count: u32) -> Option<Rate> {
        Rate::new(count, Duration::from_secs(1))
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time one request takes from the limit at the steady rate
    /// (`period / count`): GCRA's emission interval.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos((self.period.as_nanos() / u128::from(self.count)).min(u64::MAX as u128) as u64)
    }

    /// Requests per second, as a float.
    pub fn per_sec_f64(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }
}

/// A rate that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateParseError {
    input: String,
}

impl fmt::Display for RateParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate `{}`: expected `<count>/<period>` such as `100/s`, `10/min` or `5/100ms`, with a count above zero",
            self.input
        )
    }
}

impl std::error::Error for RateParseError {}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateParseError { input: s.to_owned() };
        let (count, period) = s.split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let period = period.trim();
        let split = period.find(|c: char| !c.is_ascii_digit()).unwrap_or(period.len());
        let (n, unit) = period.split_at(split);
        let n: u64 = if n.is_empty() { 1 } else { n.parse().map_err(|_| err())? };
        let unit = match unit.trim() {
            "ms" => Duration::from_millis(1),
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(err()),
        };
        let n = u32::try_from(n).map_err(|_| err())?;
        Rate::new(count, unit.checked_mul(n).ok_or_else(err)?).ok_or_else(err)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.period;
        let units: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")];
        let ms = p.as_millis();
        if p.subsec_nanos().is_multiple_of(1_000_000) {
            for (size, unit) in units {
                if ms.is_multiple_of(u128::from(size)) {
                    let n = ms / u128::from(size);
                    return if n == 1 {
                        write!(f, "{}/{unit}", self.count)
                    } else {
                        write!(f, "{}/{n}{unit}", self.count)
                    };
                }
            }
            return write!(f, "{}/{ms}ms", self.count);
        }
        write!(f, "{}/{}ms", self.count, p.as_secs_f64() * 1000.0)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a limiter allows: a steady [`Rate`] and a `burst` — the most
/// requests admitted at once after an idle spell (GCRA's bucket size).
///
/// Over a span `d` from a full bucket, at most `burst + rate × d` requests
/// are admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// The steady rate.
    pub rate: Rate,
    /// The most requests admitted at once (at least 1).
    pub burst: u32,
}

impl Policy {
    /// A policy of `rate` with `burst` (a burst of zero is taken as 1).
    pub fn new(rate: Rate, burst: u32) -> Self {
        Policy { rate, burst: burst.max(1) }
    }

    /// The window announced in `RateLimit-Policy` (`w`), in whole seconds
    /// (at least 1).
    pub(crate) fn window_secs(&self) -> u64 {
        let p = self.rate.period;
        (p.as_secs() + u64::from(p.subsec_nanos() > 0)).max(1)
    }

    /// The quota announced in `RateLimit-Policy` (`q`): the requests
    /// admitted per announced window at the steady rate.
    pub(crate) fn quota_per_window(&self) -> u64 {
        let w = self.window_secs() as f64;
        (self.rate.per_sec_f64() * w).floor().max(1.0) as u64
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (burst {})", self.rate, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for (s, count, period, shown) in [
            ("100/s", 100, Duration::from_secs(1), "100/s"),
            ("100/1s", 100, Duration::from_secs(1), "100/s"),
            ("10/min", 10, Duration::from_secs(60), "10/min"),
            ("10/m", 10, Duration::from_secs(60), "10/min"),
            ("5/100ms", 5, Duration::from_millis(100), "5/100ms"),
            ("1000/h", 1000, Duration::from_secs(3600), "1000/h"),
            (" 7 / 10s ", 7, Duration::from_secs(10), "7/10s"),
            ("3/day", 3, Duration::from_secs(86_400), "3/d"),
        ] {
            let r: Rate = s.parse().unwrap();
            assert_eq!((r.count(), r.period()), (count, period), "{s}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(shown.parse::<Rate>().unwrap(), r);
        }
        for bad in ["", "100", "/s", "0/s", "x/s", "10/", "10/fortnight", "10/0s", "-1/s", "10/s/s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.to_string().contains("invalid rate"), "{bad}");
        }
    }

    #[test]
    fn header_window_and_quota() {
        let p = Policy::new("100/s".parse().unwrap(), 20);
        assert_eq!((p.quota_per_window(), p.window_secs()), (100, 1));
        let p = Policy::new("5/100ms".parse().unwrap(), 0);
        assert_eq!(p.burst, 1);
        assert_eq!((p.quota_per_window(), p.window_secs()), (50, 1));
    }
}
