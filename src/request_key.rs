//! The key of an HTTP request for the layers that share or cache answers.

use http::{Method, Request, Uri};

/// The key of an HTTP request for [`CoalesceLayer`](crate::coalesce::CoalesceLayer)
/// and the stale-cache [`FallbackLayer`](crate::fallback::FallbackLayer):
/// its method and URI, for `GET` and `HEAD` requests only (other methods
/// are not safe to answer with another request's response).
pub fn http_key<B>(req: &Request<B>) -> Option<(Method, Uri)> {
    matches!(*req.method(), Method::GET | Method::HEAD).then(|| (req.method().clone(), req.uri().clone()))
}
