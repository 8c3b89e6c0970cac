//! Where the key of an HTTP request comes from ([`KeySpec`]), and where its
//! peer address is found ([`PeerAddr`]).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::str::FromStr;

/// Where the key of an HTTP request comes from, as written in configuration:
///
/// - `header:<name>`: a request header's value;
/// - `claim:<name>`: a claim of the request's validated JWT (feature `jwt`:
///   the [`Claims`](crate::jwt::Claims) that
///   [`JwtPropagationLayer`](crate::jwt::JwtPropagationLayer) puts in the
///   extensions — so that layer must run before the rate limit, outside it);
/// - `authority`: the URI's authority, or the `Host` header;
/// - `peer-ip`: the peer's IP address, from a `SocketAddr` request
///   extension or the type [`PeerAddr`] names (axum's
///   `ConnectInfo<SocketAddr>`);
/// - `global`: one limit for all.
///
/// A request without the key shares one "anonymous" limit.
///
/// ```
/// use tower_mesh::rate_limit::KeySpec;
///
/// let spec: KeySpec = "header:x-api-key".parse().unwrap();
/// let req = http::Request::get("/").header("x-api-key", "k1").body(()).unwrap();
/// assert_eq!(spec.key(&req).as_deref(), Some("k1"));
/// assert!("cookie:x".parse::<KeySpec>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpec {
    /// One limit for all requests.
    Global,
    /// A request header's value.
    Header(http::HeaderName),
    /// A claim of the request's JWT: `sub`, `iss`, `jti`, `aud` (the first
    /// audience) or any other claim whose value is a string or a number.
    Claim(String),
    /// The request's authority (`host:port`).
    Authority,
    /// The peer's IP address.
    PeerIp,
}

impl serde::Serialize for KeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySpec::Global => s.serialize_str("global"),
            KeySpec::Authority => s.serialize_str("authority"),
            KeySpec::PeerIp => s.serialize_str("peer-ip"),
            KeySpec::Header(h) => s.collect_str(&format_args!("header:{h}")),
            KeySpec::Claim(c) => s.collect_str(&format_args!("claim:{c}")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl KeySpec {
    /// The key of `req`, or `None` (the anonymous limit). `peer-ip` reads a
    /// `SocketAddr` extension; see [`key_with`](Self::key_with) for another
    /// type.
    pub fn key<B>(&self, req: &http::Request<B>) -> Option<String> {
        self.key_with(req, PeerAddr::SOCKET_ADDR)
    }

    /// The key of `req`, `peer-ip` reading the peer address where `peer` says.
    pub fn key_with<B>(&self, req: &http::Request<B>, peer: PeerAddr) -> Option<String> {
        self.with_key(req, peer, |key| key.map(str::to_owned))
    }

    /// Call `f` with the key of `req`, borrowed from the request where it
    /// can be (a header, the authority, a claim) or formatted on the stack
    /// (a peer IP): the keyed limiters look keys up without allocating.
    pub(crate) fn with_key<B, R>(
        &self,
        req: &http::Request<B>,
        peer: PeerAddr,
        f: impl FnOnce(Option<&str>) -> R,
    ) -> R {
        match self {
            KeySpec::Global => f(Some("")),
            KeySpec::Header(name) => f(req.headers().get(name).map(|v| utf8(v.as_bytes())).as_deref()),
            KeySpec::Claim(name) => f(claim(req.extensions(), name).as_deref()),
            KeySpec::Authority => f(req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()))),
            KeySpec::PeerIp => {
                let mut buf = [0u8; IP_MAX_LEN];
                f(peer.get(req.extensions()).map(|a| format_ip(a.ip(), &mut buf)))
            }
        }
    }
}

/// `bytes` as text: borrowed when UTF-8 (checked with `str::from_utf8`,
/// cheaper than `String::from_utf8_lossy`'s chunks), else decoded lossily
/// (the only header key that allocates).
#[inline]
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The longest text of an IP address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const IP_MAX_LEN: usize = 45;

/// `ip` as text, written into `buf`.
fn format_ip(ip: IpAddr, buf: &mut [u8; IP_MAX_LEN]) -> &str {
    let mut rest = &mut buf[..];
    write!(rest, "{ip}").expect("an IP address fits in 45 bytes");
    let len = IP_MAX_LEN - rest.len();
    std::str::from_utf8(&buf[..len]).expect("an IP address is ASCII")
}

#[cfg(feature = "jwt")]
fn claim<'r>(ext: &'r http::Extensions, name: &str) -> Option<Cow<'r, str>> {
    let c = ext.get::<crate::jwt::Claims>()?;
    let borrowed = |s: &'r Option<String>| s.as_deref().map(Cow::Borrowed);
    match name {
        "sub" => borrowed(&c.sub),
        "iss" => borrowed(&c.iss),
        "jti" => borrowed(&c.jti),
        "aud" => c.aud.first().map(|a| Cow::Borrowed(a.as_str())),
        other => match c.extra.get(other)? {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        },
    }
}

#[cfg(not(feature = "jwt"))]
fn claim<'r>(_: &'r http::Extensions, _: &str) -> Option<Cow<'r, str>> {
    None
}

/// Where `peer-ip` keys find the peer's address in a request's extensions:
/// a `SocketAddr` (what hyper-based servers that record the peer insert),
/// or a type that dereferences to one — axum's `ConnectInfo<SocketAddr>`,
/// which `Router::into_make_service_with_connect_info::<SocketAddr>()`
/// inserts — named with [`PeerAddr::of`]. A plain `SocketAddr` is read too.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_mesh::rate_limit::{KeySpec, PeerAddr};
///
/// // A stand-in for axum::extract::ConnectInfo (the same shape).
/// #[derive(Clone)]
/// struct ConnectInfo<T>(T);
/// impl<T> std::ops::Deref for ConnectInfo<T> {
///     type Target = T;
///     fn deref(&self) -> &T { &self.0 }
/// }
///
/// let addr: SocketAddr = "10.0.0.7:4711".parse().unwrap();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ConnectInfo(addr));
/// let spec = KeySpec::PeerIp;
/// assert_eq!(spec.key(&req), None);
/// let key = spec.key_with(&req, PeerAddr::of::<ConnectInfo<SocketAddr>>());
/// assert_eq!(key.as_deref(), Some("10.0.0.7"));
/// ```
#[derive(Clone, Copy)]
pub struct PeerAddr(fn(&http::Extensions) -> Option<SocketAddr>);

impl PeerAddr {
    /// A `SocketAddr` extension only.
    pub const SOCKET_ADDR: PeerAddr = PeerAddr(|ext| ext.get::<SocketAddr>().copied());

    /// A `T` extension (e.g. axum's `ConnectInfo<SocketAddr>`), or else a
    /// `SocketAddr` one.
    pub fn of<T: Deref<Target = SocketAddr> + Send + Sync + 'static>() -> PeerAddr {
        PeerAddr(|ext| ext.get::<T>().map(|t| **t).or_else(|| ext.get::<SocketAddr>().copied()))
    }

    /// The peer address in `ext`.
    pub fn get(&self, ext: &http::Extensions) -> Option<SocketAddr> {
        (self.0)(ext)
    }
}

impl Default for PeerAddr {
    fn default() -> Self {
        PeerAddr::SOCKET_ADDR
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerAddr")
    }
}

/// A key specification that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpecError(String);

impl fmt::Display for KeySpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate limit key `{}`: expected `header:<name>`, `claim:<name>` (feature `jwt`), `authority`, `peer-ip` or `global`",
            self.0
        )
    }
}

impl std::error::Error for KeySpecError {}

impl FromStr for KeySpec {
    type Err = KeySpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || KeySpecError(s.to_owned());
        match s.trim() {
            "global" => Ok(KeySpec::Global),
            "authority" => Ok(KeySpec::Authority),
            "peer-ip" => Ok(KeySpec::PeerIp),
            other => {
                if let Some(name) = other.strip_prefix("claim:") {
                    let name = name.trim();
                    return match cfg!(feature = "jwt") && !name.is_empty() {
                        true => Ok(KeySpec::Claim(name.to_owned())),
                        false => Err(err()),
                    };
                }
                let name = other.strip_prefix("header:").ok_or_else(err)?;
                http::HeaderName::from_bytes(name.trim().as_bytes()).map(KeySpec::Header).map_err(|_| err())
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A request with the header `x-api-key: <value>`.
    pub(crate) fn api_key(value: &[u8]) -> http::Request<()> {
        http::Request::get("/").header("x-api-key", http::HeaderValue::from_bytes(value).unwrap()).body(()).unwrap()
    }

    #[test]
    fn header_keys_are_borrowed_from_the_request() {
        let spec: KeySpec = "header:x-api-key".parse().unwrap();
        let req = api_key(b"k1");
        let value = req.headers()["x-api-key"].as_bytes().as_ptr();
        spec.with_key(&req, PeerAddr::SOCKET_ADDR, |key| {
            assert_eq!(key, Some("k1"));
            assert_eq!(key.unwrap().as_ptr(), value, "the header's own bytes, not a copy");
        });
        let not_utf8 = api_key(b"k\xff");
        assert_eq!(spec.key(&not_utf8).as_deref(), Some("k\u{fffd}"), "decoded lossily");
    }

    #[test]
    fn peer_ip_keys_are_formatted_like_to_string() {
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        let mapped: IpAddr = "::ffff:255.255.255.254".parse().unwrap();
        for ip in [longest, mapped, "255.255.255.255".parse().unwrap()] {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(SocketAddr::new(ip, 80));
            assert_eq!(KeySpec::PeerIp.key(&req), Some(ip.to_string()));
        }
    }
}
