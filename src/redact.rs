//! Secrets kept out of `Debug` output and error messages.

use std::borrow::Cow;
use std::fmt;

/// What stands in for a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// `Debug`s as `<redacted>`: the field of a secret (token, password).
#[cfg_attr(not(any(feature = "discovery-consul", feature = "discovery-k8s")), allow(dead_code))]
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `Some(<redacted>)` or `None`: whether an optional secret is set, not what it is.
#[cfg_attr(not(any(feature = "discovery-consul", feature = "discovery-k8s")), allow(dead_code))]
pub(crate) fn redact_opt<T>(secret: &Option<T>) -> Option<Redacted> {
    secret.as_ref().map(|_| Redacted)
}

/// `url` (`scheme://user:password@host/...`, or a bare `user:password@host:port`)
/// with its user info replaced by `<redacted>`; unchanged when it has none.
pub(crate) fn redact_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}{REDACTED}{}", &url[..start], &url[start + at..])),
        None => Cow::Borrowed(url),
    }
}

/// `Debug`s a URL (anything `Display`) as a string with its user info redacted.
#[cfg_attr(
    not(any(feature = "discovery-http", feature = "jwt", feature = "stack", feature = "rate-limit")),
    allow(dead_code)
)]
pub(crate) struct RedactedUrl<'a, T: ?Sized>(pub(crate) &'a T);

impl<T: fmt::Display + ?Sized> fmt::Debug for RedactedUrl<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0.to_string()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_redacted() {
        for (url, shown) in [
            ("amqp://user:pass@host:5672/%2f", "amqp://<redacted>@host:5672/%2f"),
            ("redis://:pass@host:6379", "redis://<redacted>@host:6379"),
            ("http://a:b@c@host/p?q=x@y", "http://<redacted>@host/p?q=x@y"),
            ("user:pass@10.0.0.7:8080", "<redacted>@10.0.0.7:8080"),
            ("http://host/p?q=x@y", "http://host/p?q=x@y"),
            ("http://host:8500", "http://host:8500"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        assert_eq!(format!("{:?}", RedactedUrl("nats://u:p@h")), r#""nats://<redacted>@h""#);
        assert_eq!(format!("{:?}", redact_opt(&Some("t"))), "Some(<redacted>)");
        assert_eq!(format!("{:?}", redact_opt::<&str>(&None)), "None");
    }
}
