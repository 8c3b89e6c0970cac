//! WSDL locations and the credentials they carry.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Empty;

use crate::soap::error::SoapError;

/// `Basic base64(user:password)`.
pub(crate) fn basic_auth_value(user: &str, password: &str) -> HeaderValue {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::try_from(format!("Basic {token}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// A WSDL location, with the credentials it carried taken out: from the
/// user-info (`https://user:pass@host/…`) or from `user` / `password` query
/// parameters (`…?WSDL&user=u&password=p`). They are sent as HTTP basic
/// authentication and never shown: `Display` and `Debug` print
/// `https://user:***@host/…`.
///
/// ```
/// use tower_mesh::soap::WsdlUrl;
///
/// let url = WsdlUrl::parse("https://alice:p%40ss@example.com/svc?wsdl").unwrap();
/// assert_eq!(url.uri(), "https://example.com/svc?wsdl");
/// assert_eq!(url.username(), Some("alice"));
/// assert_eq!(url.to_string(), "https://alice:***@example.com/svc?wsdl");
/// assert!(!format!("{url:?}").contains("p@ss"));
/// ```
#[derive(Clone)]
pub struct WsdlUrl {
    uri: Uri,
    username: Option<String>,
    password: Option<String>,
}

pub(super) fn percent_decode(s: &str) -> Result<String, SoapError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(SoapError::InvalidUrl("bad percent-encoding"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| SoapError::InvalidUrl("bad percent-encoding"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| SoapError::InvalidUrl("bad percent-encoding"))?);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SoapError::InvalidUrl("credentials are not UTF-8"))
}

impl WsdlUrl {
    /// Parse `url`, taking its credentials out.
    pub fn parse(url: &str) -> Result<WsdlUrl, SoapError> {
        let (scheme, rest) = url.split_once("://").ok_or(SoapError::InvalidUrl("no scheme"))?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(SoapError::InvalidUrl("scheme is not http or https"));
        }
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let (mut username, mut password, host) = match authority.rsplit_once('@') {
            Some((info, host)) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
                    None => (percent_decode(info)?, None),
                };
                (Some(u), p, host)
            }
            None => (None, None, authority),
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Credentials never stay in the URI (which is sent and shown):
            // the user-info's win, a second copy in the query is dropped.
            match k {
                "user" | "username" => {
                    if username.is_none() {
                        username = Some(percent_decode(v)?);
                    }
                }
                "password" => {
                    if password.is_none() {
                        password = Some(percent_decode(v)?);
                    }
                }
                _ => kept.push(pair),
            }
        }
        let mut clean = format!("{scheme}://{host}{path}");
        if !kept.is_empty() {
            clean.push('?');
            clean.push_str(&kept.join("&"));
        }
        let uri: Uri = clean.parse().map_err(|_| SoapError::InvalidUrl("not a valid URI"))?;
        if uri.host().is_none() {
            return Err(SoapError::InvalidUrl("no host"));
        }
        Ok(WsdlUrl { uri, username, password })
    }

    /// The URI without credentials.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The user name, if the URL had credentials.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether a password came with the URL.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The `Authorization: Basic …` value for the URL's credentials (marked sensitive).
    pub fn authorization(&self) -> Option<HeaderValue> {
        let user = self.username.as_deref()?;
        Some(basic_auth_value(user, self.password.as_deref().unwrap_or_default()))
    }

    /// The GET request that fetches the WSDL.
    pub fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        if let Some(auth) = self.authorization() {
            req.headers_mut().insert(AUTHORIZATION, auth);
        }
        req
    }

    /// A client layer for `address` (e.g. a port's address from this WSDL)
    /// using these credentials as basic auth.
    pub fn client_layer(&self, address: Uri) -> super::super::SoapEnvelopeLayer {
        let layer = super::super::SoapEnvelopeLayer::new(address);
        match &self.username {
            Some(u) => layer.basic_auth(u, self.password.as_deref().unwrap_or_default()),
            None => layer,
        }
    }
}

impl fmt::Display for WsdlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.username {
            write!(f, "{u}")?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{authority}{path}")
    }
}

impl fmt::Debug for WsdlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WsdlUrl").field(&format_args!("{self}")).finish()
    }
}
