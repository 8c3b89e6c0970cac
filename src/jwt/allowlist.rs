//! The hosts a token may be sent to.

use std::fmt;

use http::uri::{Authority, Scheme};

use super::error::JwtConfigError;

/// The targets [`JwtClientLayer`](super::JwtClientLayer) may send a token to.
///
/// Entries (case-insensitive, a trailing `.` ignored):
/// - `host` — that host on any port (`api.internal`, `10.0.0.7`, `[::1]`);
/// - `host:port` — that host on that port only (a URL without a port is on
///   its scheme's default port);
/// - `*.suffix` — any host **under** `suffix` (`a.suffix`, `a.b.suffix`,
///   not `suffix` itself nor `xsuffix`), on any port;
/// - `*.suffix:port` — the same, on that port only.
///
/// **Scheme.** An entry allows `https` targets only: a bearer token is never
/// sent in clear text unless an entry says so. Prefix an entry with
/// `http://` to allow plain `http` for it (and only `http`; e.g.
/// `http://127.0.0.1:8080` for a loopback server in development, or a gRPC
/// channel without TLS); `https://` may be written out and changes nothing.
/// A target whose scheme is unknown (a path-only request and no
/// [`origin`](super::JwtClientLayer::origin) scheme) or another scheme gets
/// no token.
///
/// Nothing else: no `*` alone, no wildcard elsewhere, no user info, path or
/// other scheme. An empty allowlist allows nothing.
///
/// ```
/// use tower_mesh::jwt::Allowlist;
///
/// let allow = Allowlist::new(["orders.internal:8443", "*.mesh.local", "http://127.0.0.1"]).unwrap();
/// assert!(allow.allows_uri(&"https://orders.internal:8443/v1".parse().unwrap()));
/// assert!(!allow.allows_uri(&"https://orders.internal/v1".parse().unwrap())); // port 443
/// assert!(allow.allows_uri(&"https://billing.mesh.local/".parse().unwrap()));
/// assert!(!allow.allows_uri(&"http://billing.mesh.local/".parse().unwrap())); // clear text
/// assert!(!allow.allows_uri(&"https://mesh.local/".parse().unwrap()));
/// assert!(!allow.allows_uri(&"https://evilmesh.local/".parse().unwrap()));
/// assert!(allow.allows_uri(&"http://127.0.0.1:3000/".parse().unwrap())); // explicit http:// entry
/// assert!(!allow.allows_uri(&"https://127.0.0.1:3000/".parse().unwrap()));
/// assert!(Allowlist::new(["*"]).is_err());
/// assert!(Allowlist::new(["user@host"]).is_err());
/// assert!(Allowlist::new(["ftp://host"]).is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// Lowercase, no trailing dot. For a wildcard, the suffix with its
    /// leading dot (`.mesh.local`).
    host: Box<str>,
    wildcard: bool,
    port: Option<u16>,
    /// The entry was written `http://…`: plain `http` targets only.
    /// Otherwise `https` targets only.
    plain: bool,
}

impl Allowlist {
    /// An allowlist of `entries` (see the type's docs for their forms).
    pub fn new<I>(entries: I) -> Result<Self, JwtConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let entries = entries.into_iter().map(|e| parse_entry(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    /// An allowlist that allows nothing.
    pub fn none() -> Self {
        Allowlist::default()
    }

    /// Whether no host is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a token may go to `authority`, reached with `scheme`: `https`
    /// for every entry, plain `http` only for the entries written `http://…`;
    /// no other scheme, nor `None` (scheme unknown). The scheme also gives
    /// the port when the authority has none.
    pub fn allows(&self, authority: &Authority, scheme: Option<&Scheme>) -> bool {
        if self.entries.is_empty() || authority.as_str().contains('@') {
            return false;
        }
        let (plain, default_port) = match scheme {
            Some(s) if *s == Scheme::HTTPS => (false, 443),
            Some(s) if *s == Scheme::HTTP => (true, 80),
            _ => return false,
        };
        let host = authority.host();
        let host = host.strip_suffix('.').unwrap_or(host);
        let port = authority.port_u16().unwrap_or(default_port);
        self.entries.iter().any(|e| e.plain == plain && e.matches(host, port))
    }

    /// Whether a token may go to the authority of `uri` (`false` when it has
    /// none).
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        uri.authority().is_some_and(|a| self.allows(a, uri.scheme()))
    }
}

impl Entry {
    #[inline]
    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.wildcard {
            // At least one label before the suffix (the suffix starts with '.').
            host.len() > self.host.len()
                && host.is_char_boundary(host.len() - self.host.len())
                && host[host.len() - self.host.len()..].eq_ignore_ascii_case(&self.host)
                && !host[..host.len() - self.host.len()].ends_with('.')
        } else {
            host.eq_ignore_ascii_case(&self.host)
        }
    }
}

fn parse_entry(entry: &str) -> Result<Entry, JwtConfigError> {
    // User info is refused; the error does not echo it.
    let err = |reason| JwtConfigError::AllowlistEntry { entry: crate::redact::redact_url(entry).into_owned(), reason };
    let (plain, rest) = match entry.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (false, rest),
        Some(_) => return Err(err("the only schemes are `https://` (the default) and `http://`")),
        None => (false, entry),
    };
    let (wildcard, rest) = match rest.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() {
        return Err(err("no host"));
    }
    if rest.contains(['*', '@', '/', '?', '#']) {
        return Err(err("only `host`, `host:port`, `*.suffix` or `*.suffix:port`, optionally after `http://`"));
    }
    let authority: Authority = rest.parse().map_err(|_| err("not a host[:port]"))?;
    let host = authority.host();
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.starts_with('.') || host.contains("..") {
        return Err(err("not a host name"));
    }
    if wildcard && (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()) {
        return Err(err("a wildcard needs a domain name"));
    }
    // After an IPv6 literal's `]`, or anywhere in a name: a `:` starts the port.
    let after_host = rest.rsplit_once(']').map_or(rest, |(_, r)| r);
    let port = match authority.port() {
        Some(p) => Some(p.as_u16()),
        None if after_host.contains(':') => return Err(err("not a port")),
        None => None,
    };
    let host = if wildcard { format!(".{host}") } else { host };
    Ok(Entry { host: host.into(), wildcard, port, plain })
}

impl fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| e.to_string())).finish()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plain {
            f.write_str("http://")?;
        }
        if self.wildcard {
            f.write_str("*")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}
