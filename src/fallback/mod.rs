//! Fallbacks: answer from somewhere else when a call fails or is rejected.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_mesh::classify::HttpClassifier;
//! use tower_mesh::fallback::{FallbackLayer, FallbackReason, ServedByFallback};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         FallbackLayer::from_fn(|_reason| Response::new("cached menu".to_owned()))
//!             .classifier(HttpClassifier::new())
//!             .header(http::HeaderName::from_static("x-fallback")),
//!     )
//!     .service_fn(|_: Request<()>| async {
//!         let res = Response::builder().status(StatusCode::BAD_GATEWAY).body(String::new()).unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     });
//!
//! let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! assert_eq!(res.body(), "cached menu");
//! assert_eq!(res.headers()["x-fallback"], "failure");
//! assert_eq!(res.extensions().get::<ServedByFallback>(), Some(&ServedByFallback(FallbackReason::Failed)));
//! # }
//! ```
//!
//! The equivalent of resilience4j's and Polly's fallbacks and
//! tower-resilience's `fallback`. [`FallbackLayer`] watches each call's
//! result with the crate's one [classifier](crate::classify) and, when the
//! call **failed** (an error, or a response the classifier calls a failure)
//! or a layer below **rejected** it (circuit open, bulkhead full, rate
//! limited — [`FallbackReason::Rejected`] — or timed out —
//! [`FallbackReason::TimedOut`]), answers from a [`FallbackSource`]:
//!
//! | constructor | answers with |
//! |---|---|
//! | [`FallbackLayer::value`] | a fixed response (cloned) |
//! | [`FallbackLayer::from_fn`] | what a closure makes from the reason |
//! | [`FallbackLayer::service`] | a second service called with a copy of the request (a replica, another region) |
//! | [`FallbackLayer::stale`] | the last good response for the same key, if younger than a TTL (a bounded LRU) |
//!
//! [`on`](FallbackLayer::on) says which outcomes trigger it
//! ([`Trigger`]: rejections and timeouts only, failures only, or both — the
//! default). A fallback answer is marked: the [`ServedByFallback`] response
//! extension (HTTP responses, through [`MarkFallback`]) and, with
//! [`header`](FallbackLayer::header), a response header naming the reason.
//! When the source has no answer (a stale-cache miss) the caller gets the
//! original result; when the fallback itself fails, its error.
//!
//! A panic is never caught and a dropped call is never answered: the layer
//! only looks at results.
//!
//! Put it at the top of a client stack, above the timeouts, retries,
//! breaker and bulkhead whose rejections it covers.
//!
//! [`FallbackConfig`] is the fallback of an HTTP client as configuration
//! (`on`, `capacity`, `ttl`, `header`, `stale`, `answer`): the stale cache,
//! then a fixed answer; [`FallbackConfig::layer`] builds it, as the
//! configured client stack does.
//!
//! # Metrics
//!
//! `tower_mesh_fallback_total{service, reason}` counts fallback answers
//! (`reason` is `rejected`, `timeout` or `failure`); each also emits a
//! `debug` tracing event.

mod config;
mod future;
mod layer;
mod service;
mod source;

#[cfg(test)]
mod tests;

use http::{HeaderName, HeaderValue};

use crate::error::{BoxError, MeshErrorKind};

pub use crate::request_key::{http_key, HttpKey};
pub use config::{Configured, ConfiguredFallbackLayer, FallbackConfig, HttpKeyFn, HttpStaleLayer, StaticAnswer};
pub use future::ResponseFuture;
pub use layer::FallbackLayer;
pub use service::Fallback;
pub use source::{Backup, BackupFuture, FallbackSource, FromFn, Stale, Value};

/// Why a call got a fallback answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// A layer below refused the call: circuit open, bulkhead full, rate
    /// limited.
    Rejected,
    /// A timeout layer below gave up on the call.
    TimedOut,
    /// The dependency failed: an error, or a response the classifier calls
    /// a failure.
    Failed,
}

impl FallbackReason {
    /// The reason of an error: a tower-mesh rejection or timeout, else a
    /// failure.
    pub fn of_error(error: &BoxError) -> Self {
        match crate::error::find_mesh_error(&**error).map(|e| e.kind()) {
            Some(MeshErrorKind::Rejected) => FallbackReason::Rejected,
            Some(kind) if kind.is_timeout() => FallbackReason::TimedOut,
            _ => FallbackReason::Failed,
        }
    }

    /// A short, stable label (`rejected`, `timeout`, `failure`), used in
    /// metrics and the marker header.
    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackReason::Rejected => "rejected",
            FallbackReason::TimedOut => "timeout",
            FallbackReason::Failed => "failure",
        }
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which outcomes get a fallback answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Rejections and timeouts of the layers below only.
    Rejections,
    /// Failures of the dependency only.
    Failures,
    /// Both (the default).
    #[default]
    Both,
}

impl Trigger {
    pub(crate) fn covers(self, reason: FallbackReason) -> bool {
        match (self, reason) {
            (Trigger::Both, _) => true,
            (Trigger::Rejections, r) => r != FallbackReason::Failed,
            (Trigger::Failures, r) => r == FallbackReason::Failed,
        }
    }
}

/// Response extension of a fallback answer, with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedByFallback(pub FallbackReason);

/// A response that can say it is a fallback answer: `http::Response` gets
/// the [`ServedByFallback`] extension and, if asked, a header; the plain
/// types below are left as they are. Other response types opt in with an
/// empty `impl MarkFallback for MyResponse {}` or mark themselves.
pub trait MarkFallback {
    /// Mark `self` as a fallback answer given for `reason`, with `header`
    /// (if any) set to the reason's label.
    fn mark(&mut self, reason: FallbackReason, header: Option<&HeaderName>) {
        let _ = (reason, header);
    }
}

impl<B> MarkFallback for http::Response<B> {
    fn mark(&mut self, reason: FallbackReason, header: Option<&HeaderName>) {
        self.extensions_mut().insert(ServedByFallback(reason));
        if let Some(name) = header {
            self.headers_mut().insert(name.clone(), HeaderValue::from_static(reason.as_str()));
        }
    }
}

macro_rules! unmarked {
    ($($t:ty),*) => { $(impl MarkFallback for $t {})* };
}
unmarked!((), bool, u8, u16, u32, u64, i32, i64, usize, String, &'static str, Vec<u8>, bytes::Bytes);
