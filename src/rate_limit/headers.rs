//! The `RateLimit-Policy` and `RateLimit` response fields
//! (draft-ietf-httpapi-ratelimit-headers).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::RateLimited;

/// `RateLimit-Policy`: the quota policy, `"name";q=<quota>;w=<window seconds>`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the current state, `"name";r=<remaining>;t=<seconds until reset>`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The first [`RateLimited`] in `err`'s source chain.
pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RateLimited> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<RateLimited>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// A policy name as a structured-field string: printable ASCII other than
/// `"` and `\`, anything else replaced by `_`.
fn sf_string(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    s.extend(name.chars().map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '_' }));
    s.push('"');
    s
}

/// Add the `RateLimit-Policy` and `RateLimit` fields describing the
/// rejection `e` (remaining `0`, reset in the whole seconds of its
/// `Retry-After`, rounded up) to `headers`.
pub fn insert(headers: &mut HeaderMap, e: &RateLimited) {
    let policy = e.policy();
    let name = sf_string(e.name());
    let after = e.retry_after();
    let reset = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
    let fields = [
        (RATELIMIT_POLICY, format!("{name};q={};w={}", policy.quota_per_window(), policy.window_secs())),
        (RATELIMIT, format!("{name};r=0;t={reset}")),
    ];
    for (field, value) in fields {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(field, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::rate_limit::Policy;

    #[test]
    fn fields() {
        let e = RateLimited::new(
            Arc::from("api \"v1\""),
            Policy::new("100/s".parse().unwrap(), 20),
            Duration::from_millis(1500),
        );
        let mut h = HeaderMap::new();
        insert(&mut h, &e);
        assert_eq!(h[RATELIMIT_POLICY], "\"api _v1_\";q=100;w=1");
        assert_eq!(h[RATELIMIT], "\"api _v1_\";r=0;t=2");
        let e = RateLimited::new(Arc::from("m"), Policy::new("10/min".parse().unwrap(), 1), Duration::from_millis(10));
        insert(&mut h, &e);
        assert_eq!(h[RATELIMIT_POLICY], "\"m\";q=10;w=60");
        assert_eq!(h[RATELIMIT], "\"m\";r=0;t=1");
    }
}
