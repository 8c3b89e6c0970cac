//! The fallback layer.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use metrics::Counter;
use tower_layer::Layer;

use super::service::Fallback;
use super::source::{Backup, FromFn, Stale, Value};
use super::{FallbackReason, Trigger};
use crate::classify::ResultClassifier;

/// Name, marker header and counters, shared by a layer's services.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) header: Option<HeaderName>,
    rejected: Counter,
    timed_out: Counter,
    failed: Counter,
}

impl Shared {
    fn new(name: Arc<str>, header: Option<HeaderName>) -> Self {
        let c = |reason: FallbackReason| metrics::counter!("tower_mesh_fallback_total", "service" => name.to_string(), "reason" => reason.as_str());
        Shared {
            rejected: c(FallbackReason::Rejected),
            timed_out: c(FallbackReason::TimedOut),
            failed: c(FallbackReason::Failed),
            name,
            header,
        }
    }

    pub(crate) fn record(&self, reason: FallbackReason) {
        let counter = match reason {
            FallbackReason::Rejected => &self.rejected,
            FallbackReason::TimedOut => &self.timed_out,
            FallbackReason::Failed => &self.failed,
        };
        counter.increment(1);
        tracing::debug!(service = &*self.name, reason = reason.as_str(), "answered by the fallback");
    }
}

/// Layer that answers from a [`FallbackSource`](super::FallbackSource) when
/// a call fails or is rejected; see the [module docs](super).
///
/// `C` is the [classifier](crate::classify) that says which responses are
/// failures (default [`ResultClassifier`]: only errors are).
#[derive(Debug, Clone)]
pub struct FallbackLayer<Src, C = ResultClassifier> {
    source: Src,
    classifier: C,
    trigger: Trigger,
    shared: Arc<Shared>,
}

impl<Src> FallbackLayer<Src> {
    pub(crate) fn with(source: Src) -> Self {
        FallbackLayer {
            source,
            classifier: ResultClassifier,
            trigger: Trigger::default(),
            shared: Arc::new(Shared::new(Arc::from("fallback"), None)),
        }
    }
}

impl<Res> FallbackLayer<Value<Res>> {
    /// Answer with a copy of `response`.
    pub fn value(response: Res) -> Self {
        FallbackLayer::with(Value(response))
    }
}

impl<F> FallbackLayer<FromFn<F>> {
    /// Answer with what `f` makes from the reason.
    pub fn from_fn(f: F) -> Self {
        FallbackLayer::with(FromFn(f))
    }
}

impl<S> FallbackLayer<Backup<S>> {
    /// Answer with what `backup` answers to a copy of the request.
    pub fn service(backup: S) -> Self {
        FallbackLayer::with(Backup(backup))
    }
}

impl<K: Hash + Eq, F, Res> FallbackLayer<Stale<K, F, Res>> {
    /// Answer with the last good response for the request's key (`key`
    /// returns `None` for requests never to cache, e.g. non-`GET`s), if it
    /// is at most `ttl` old; at most `capacity` keys are kept.
    pub fn stale(key: F, capacity: NonZeroUsize, ttl: Duration) -> Self {
        FallbackLayer::with(Stale::new(key, capacity, ttl))
    }
}

impl<Src, C> FallbackLayer<Src, C> {
    /// Which outcomes get a fallback answer (default [`Trigger::Both`]).
    pub fn on(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The classifier that says which responses are failures.
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayer<Src, C2> {
        FallbackLayer { source: self.source, classifier, trigger: self.trigger, shared: self.shared }
    }

    /// The `service` label of the metrics (default `"fallback"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.shared = Arc::new(Shared::new(name.into(), self.shared.header.clone()));
        self
    }

    /// Mark HTTP fallback answers with this header, set to the reason
    /// (`rejected`, `timeout`, `failure`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.shared = Arc::new(Shared::new(self.shared.name.clone(), Some(name)));
        self
    }

    /// The source of fallback answers (a [`Stale`] one, to look at its size).
    pub fn source(&self) -> &Src {
        &self.source
    }
}

impl<S, Src: Clone, C: Clone> Layer<S> for FallbackLayer<Src, C> {
    type Service = Fallback<S, Src, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.source.clone(), self.classifier.clone(), self.trigger, self.shared.clone())
    }
}
