//! The coalescing layer.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use metrics::Counter;
use tower_layer::Layer;

use super::flight::Flights;
use super::service::Coalesce;

/// Name and counters, shared by a layer's services.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    led: Counter,
    followed: Counter,
    alone: Counter,
    took_over: Counter,
}

impl Shared {
    fn new(name: Arc<str>) -> Self {
        let c = |role: &'static str| metrics::counter!("tower_mesh_coalesce_calls_total", "service" => name.to_string(), "role" => role);
        Shared { led: c("leader"), followed: c("follower"), alone: c("alone"), took_over: c("takeover"), name }
    }

    pub(crate) fn led(&self) {
        self.led.increment(1);
    }

    pub(crate) fn followed(&self) {
        self.followed.increment(1);
    }

    pub(crate) fn alone(&self) {
        self.alone.increment(1);
    }

    pub(crate) fn took_over(&self) {
        self.took_over.increment(1);
        tracing::debug!(service = &*self.name, "the caller running a coalesced call went away: a waiter runs it");
    }
}

/// Layer that lets identical requests in flight share one call; see the
/// [module docs](super).
///
/// `F` maps a request to its key (`None`: never shared); the services a
/// layer makes share its calls in flight.
pub struct CoalesceLayer<K, F, Res> {
    key: F,
    flights: Arc<Flights<K, Res>>,
    shared: Arc<Shared>,
}

/// The default bound on keys in flight.
pub(crate) const MAX_KEYS: usize = 10_000;

impl<K: Hash + Eq, F, Res> CoalesceLayer<K, F, Res> {
    /// Share calls between requests with the same key (as `key` says).
    pub fn new(key: F) -> Self {
        CoalesceLayer {
            key,
            flights: Arc::new(Flights::new(MAX_KEYS)),
            shared: Arc::new(Shared::new(Arc::from("coalesce"))),
        }
    }

    /// At most `max` keys in flight (default 10,000); a request with a new
    /// key beyond that runs alone.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.flights = Arc::new(Flights::new(max));
        self
    }

    /// The `service` label of the metrics (default `"coalesce"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.shared = Arc::new(Shared::new(name.into()));
        self
    }

    /// The number of keys with a call in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }
}

impl<K, F: Clone, Res> Clone for CoalesceLayer<K, F, Res> {
    fn clone(&self) -> Self {
        CoalesceLayer { key: self.key.clone(), flights: self.flights.clone(), shared: self.shared.clone() }
    }
}

impl<K, F, Res> fmt::Debug for CoalesceLayer<K, F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, Res> Layer<S> for CoalesceLayer<K, F, Res> {
    type Service = Coalesce<S, K, F, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce::new(inner, self.key.clone(), self.flights.clone(), self.shared.clone())
    }
}
