//! The key of an HTTP request for the layers that share or cache answers.

use std::hash::{Hash, Hasher};

use http::{Method, Request, Uri};

/// The key of an HTTP request for [`CoalesceLayer`](crate::coalesce::CoalesceLayer)
/// and the stale-cache [`FallbackLayer`](crate::fallback::FallbackLayer):
/// its method and URI, for `GET` and `HEAD` requests only (other methods
/// are not safe to answer with another request's response).
pub fn http_key<B>(req: &Request<B>) -> Option<HttpKey> {
    matches!(*req.method(), Method::GET | Method::HEAD)
        .then(|| HttpKey { method: req.method().clone(), uri: req.uri().clone() })
}

/// A request's method and URI, compared and hashed as written (a host in
/// another case is another key: at worst a call is not shared). Cheaper
/// to hash than `(Method, Uri)`, whose hash goes byte by byte.
#[derive(Debug, Clone)]
pub struct HttpKey {
    method: Method,
    uri: Uri,
}

impl HttpKey {
    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("", |p| p.as_str())
    }
}

impl PartialEq for HttpKey {
    fn eq(&self, other: &Self) -> bool {
        // The part most likely to differ first.
        self.path() == other.path()
            && self.method == other.method
            && self.uri.authority().map(|a| a.as_str()) == other.uri.authority().map(|a| a.as_str())
            && self.uri.scheme_str() == other.uri.scheme_str()
    }
}

impl Eq for HttpKey {}

impl Hash for HttpKey {
    /// The path and query only, in one write: keys equal in them and
    /// differing elsewhere share a bucket, and `eq` tells them apart.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.path().as_bytes());
    }
}
