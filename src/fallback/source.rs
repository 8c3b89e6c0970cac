//! Where a fallback answer comes from.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use lru::LruCache;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::util::Oneshot;
use tower_service::Service;

use super::FallbackReason;
use crate::error::BoxError;

/// A source of fallback answers for requests `Req` of a service answering
/// `Res`.
///
/// [`keep`](Self::keep) takes what the source needs of the request before
/// the call consumes it (nothing, a copy, a key); after the call,
/// [`fallback`](Self::fallback) makes the answer — or declines, and the
/// caller gets the original result — and a good answer is shown to
/// [`success`](Self::success) (the stale cache keeps it).
pub trait FallbackSource<Req, Res>: Clone {
    /// What the source keeps of a request.
    type Keep;
    /// The future of a fallback answer.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Keep what [`fallback`](Self::fallback) will need of `req`.
    fn keep(&self, req: &Req) -> Self::Keep;

    /// The call succeeded with `res`.
    fn success(&self, kept: Self::Keep, res: &Res) {
        let _ = (kept, res);
    }

    /// The fallback answer for a call that ended for `reason`, or `None`
    /// when the source has none.
    fn fallback(&mut self, kept: Self::Keep, reason: FallbackReason) -> Option<Self::Future>;
}

/// A fixed answer ([`FallbackLayer::value`](super::FallbackLayer::value)).
#[derive(Debug, Clone)]
pub struct Value<Res>(pub(crate) Res);

impl<Req, Res: Clone> FallbackSource<Req, Res> for Value<Res> {
    type Keep = ();
    type Future = Ready<Result<Res, BoxError>>;

    fn keep(&self, _: &Req) {}

    fn fallback(&mut self, (): (), _: FallbackReason) -> Option<Self::Future> {
        Some(ready(Ok(self.0.clone())))
    }
}

/// An answer made by a closure from the reason
/// ([`FallbackLayer::from_fn`](super::FallbackLayer::from_fn)).
#[derive(Clone)]
pub struct FromFn<F>(pub(crate) F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn(..)")
    }
}

impl<Req, Res, F> FallbackSource<Req, Res> for FromFn<F>
where
    F: Fn(FallbackReason) -> Res + Clone,
{
    type Keep = ();
    type Future = Ready<Result<Res, BoxError>>;

    fn keep(&self, _: &Req) {}

    fn fallback(&mut self, (): (), reason: FallbackReason) -> Option<Self::Future> {
        Some(ready(Ok((self.0)(reason))))
    }
}

/// A second service called with a copy of the request — a read replica,
/// another region ([`FallbackLayer::service`](super::FallbackLayer::service)).
/// The request type must be `Clone` (`http::Request<B>` is, for a `Clone`
/// body such as `Full<Bytes>` or `String`).
#[derive(Debug, Clone)]
pub struct Backup<S>(pub(crate) S);

impl<Req, S> FallbackSource<Req, S::Response> for Backup<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Keep = Req;
    type Future = BackupFuture<S, Req>;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn fallback(&mut self, req: Req, _: FallbackReason) -> Option<Self::Future> {
        Some(BackupFuture { call: Oneshot::new(self.0.clone(), req) })
    }
}

pin_project! {
    /// The call to a [`Backup`] service.
    pub struct BackupFuture<S: Service<Req>, Req> {
        #[pin]
        call: Oneshot<S, Req>,
    }
}

impl<S: Service<Req>, Req> fmt::Debug for BackupFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupFuture")
    }
}

impl<S, Req> Future for BackupFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx).map_err(Into::into)
    }
}

/// The last good answer for the same key, if it is recent enough
/// ([`FallbackLayer::stale`](super::FallbackLayer::stale)).
///
/// At most `capacity` keys are kept (the least recently used goes first),
/// each answer for at most `ttl`. Every good answer is copied into the
/// cache, so the response type is `Clone` (buffer streaming bodies first).
pub struct Stale<K, F, Res> {
    key: F,
    cache: Arc<Mutex<LruCache<K, (Instant, Res)>>>,
    ttl: Duration,
}

impl<K, F: Clone, Res> Clone for Stale<K, F, Res> {
    fn clone(&self) -> Self {
        Stale { key: self.key.clone(), cache: self.cache.clone(), ttl: self.ttl }
    }
}

impl<K, F, Res> fmt::Debug for Stale<K, F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stale").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, F, Res> Stale<K, F, Res> {
    pub(crate) fn new(key: F, capacity: NonZeroUsize, ttl: Duration) -> Self {
        Stale { key, cache: Arc::new(Mutex::new(LruCache::new(capacity))), ttl }
    }

    /// The number of answers kept.
    pub fn len(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<Req, Res, K, F> FallbackSource<Req, Res> for Stale<K, F, Res>
where
    F: Fn(&Req) -> Option<K> + Clone,
    K: Hash + Eq,
    Res: Clone,
{
    type Keep = Option<K>;
    type Future = Ready<Result<Res, BoxError>>;

    fn keep(&self, req: &Req) -> Option<K> {
        (self.key)(req)
    }

    fn success(&self, kept: Option<K>, res: &Res) {
        if let Some(key) = kept {
            let entry = (Instant::now(), res.clone());
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).put(key, entry);
        }
    }

    fn fallback(&mut self, kept: Option<K>, _: FallbackReason) -> Option<Self::Future> {
        let key = kept?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(&key) {
            Some((at, res)) if at.elapsed() <= self.ttl => Some(ready(Ok(res.clone()))),
            Some(_) => {
                cache.pop(&key);
                None
            }
            None => None,
        }
    }
}
