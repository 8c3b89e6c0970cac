//! The registry of components and how each one is evaluated.

use std::fmt;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::report::{
    BreakerDetails, BulkheadDetails, ComponentDetails, ComponentKind, ComponentReport, ComponentStatus, CustomDetails,
    HealthReport, KeyedBreaker, KeyedBreakerDetails, Status,
};
use super::service::{HealthService, Probe};
use super::MAX_LISTED_KEYS;
use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerRegistry, CircuitMetrics, CircuitState};

/// `Component::last` before the first report.
const UNKNOWN: u8 = u8::MAX;

type CheckFn = dyn Fn() -> ComponentStatus + Send + Sync;

/// The per-key breakers of a keyed layer, whatever their key type.
trait KeyedBreakers: Send + Sync {
    /// Every key (as its `Debug` form) with its counters and, when open, the
    /// rest of its wait.
    fn snapshot(&self) -> Vec<(String, CircuitMetrics, Option<Duration>)>;
}

impl<K> KeyedBreakers for CircuitBreakerRegistry<K>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    fn snapshot(&self) -> Vec<(String, CircuitMetrics, Option<Duration>)> {
        self.keys()
            .into_iter()
            .map(|(key, m)| {
                let retry_after =
                    if m.state == CircuitState::Open { self.get(&key).and_then(|h| h.retry_after()) } else { None };
                (format!("{key:?}"), m, retry_after)
            })
            .collect()
    }
}

enum Source {
    Breaker(CircuitBreakerHandle),
    Keyed(Arc<dyn KeyedBreakers>),
    Bulkhead {
        layer: BulkheadLayer,
        max: usize,
    },
    #[cfg(feature = "discovery")]
    Discovery {
        registry: crate::discovery::Registry,
        service: String,
    },
    Custom(Box<CheckFn>),
}

struct Component {
    name: String,
    kind: ComponentKind,
    source: Source,
    /// The status of the last report (`UNKNOWN` before the first).
    last: AtomicU8,
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Replaced (copy on write) by a registration; a report clones the `Arc`
    /// under a short read lock and evaluates without any lock held.
    components: RwLock<Arc<[Arc<Component>]>>,
    breaker_fails_readiness: AtomicBool,
}

/// The health of the process: breakers, bulkheads, discovery and custom
/// checks, reported as a [`HealthReport`] and served by
/// [`readiness`](Self::readiness) and [`liveness`](Self::liveness).
///
/// Cloning is cheap (one `Arc`), and clones share their components:
/// registering on one clone is seen by all of them, including the services
/// already made. Register at startup; a report reads the list under a short
/// read lock and evaluates the components without holding any lock of its own.
///
/// See the [module documentation](super) for the status rules.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let components = self.components();
        f.debug_struct("Health")
            .field("components", &components.iter().map(|c| (&c.name, c.kind)).collect::<Vec<_>>())
            .field("breaker_fails_readiness", &self.inner.breaker_fails_readiness.load(Ordering::Relaxed))
            .finish()
    }
}

impl Health {
    /// No components: the report is `up`.
    pub fn new() -> Self {
        Health::default()
    }

    fn components(&self) -> Arc<[Arc<Component>]> {
        self.inner.components.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn register(self, name: String, kind: ComponentKind, source: Source) -> Self {
        let component = Arc::new(Component { name, kind, source, last: AtomicU8::new(UNKNOWN) });
        {
            let mut list = self.inner.components.write().unwrap_or_else(|e| e.into_inner());
            let mut next = list.to_vec();
            next.push(component);
            *list = next.into();
        }
        self
    }

    /// A circuit breaker, named after the breaker
    /// ([`CircuitBreakerHandle::name`]). Closed, disabled and metrics-only
    /// are `up`; half-open (and open with its wait elapsed) `degraded`; open
    /// and forced-open `down`, which fails readiness only with
    /// [`breaker_fails_readiness`](Self::breaker_fails_readiness).
    pub fn breaker(self, handle: CircuitBreakerHandle) -> Self {
        let name = handle.name().to_owned();
        self.register(name, ComponentKind::CircuitBreaker, Source::Breaker(handle))
    }

    /// The per-key breakers of a keyed layer
    /// ([`KeyedCircuitBreakerLayer::registry`](crate::circuit_breaker::KeyedCircuitBreakerLayer::registry)),
    /// as one component: the worst of the keys' statuses (by the rules of
    /// [`breaker`](Self::breaker)), `up` with no key yet.
    pub fn keyed_breakers<K>(self, name: impl Into<String>, registry: Arc<CircuitBreakerRegistry<K>>) -> Self
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    {
        self.register(name.into(), ComponentKind::CircuitBreaker, Source::Keyed(registry))
    }

    /// A bulkhead, named after it ([`BulkheadLayer::name`]), with the
    /// `max_concurrent_calls` it was built with (the layer does not tell).
    /// `up` while a permit is free, `degraded` when none is (calls are being
    /// rejected or kept waiting); never `down`.
    pub fn bulkhead(self, layer: &BulkheadLayer, max_concurrent_calls: usize) -> Self {
        let name = layer.name().to_owned();
        self.register(
            name,
            ComponentKind::Bulkhead,
            Source::Bulkhead { layer: layer.clone(), max: max_concurrent_calls },
        )
    }

    /// The logical `service` of a discovery registry, as component `name`.
    /// No endpoints (or a service the registry does not know) is `down` and
    /// fails readiness; a stale endpoint set (its source cannot refresh it)
    /// is `degraded`.
    #[cfg(feature = "discovery")]
    pub fn discovery(
        self,
        name: impl Into<String>,
        registry: crate::discovery::Registry,
        service: impl Into<String>,
    ) -> Self {
        self.register(name.into(), ComponentKind::Discovery, Source::Discovery { registry, service: service.into() })
    }

    /// A check of the application's own (a connection pool, a cache warmed
    /// up, …), called on every report: keep it fast and non-blocking (it runs
    /// on the task answering the probe); compute expensive checks in the
    /// background and read the result here. `down` fails readiness; a check
    /// that panics counts as `down`.
    pub fn check(self, name: impl Into<String>, check: impl Fn() -> ComponentStatus + Send + Sync + 'static) -> Self {
        self.register(name.into(), ComponentKind::Custom, Source::Custom(Box::new(check)))
    }

    /// Whether an open (or forced-open) breaker fails readiness. Default
    /// `false`: a dependency being down should not take this instance out of
    /// its load balancer (the other instances share the dependency, and an
    /// instance out of rotation gets no call that could close its breaker)
    /// — as the default `allowHealthIndicatorToFail=false` of resilience4j's
    /// Spring Boot health indicator. The breaker is then reported `down` but
    /// the report only `degraded`.
    ///
    /// Even when `true`, an open breaker whose wait has elapsed counts as
    /// `degraded`: it admits probes on the next call, which it could never get
    /// if this instance were out of rotation. A forced-open breaker stays
    /// `down` until it is transitioned by hand.
    pub fn breaker_fails_readiness(self, fails: bool) -> Self {
        self.inner.breaker_fails_readiness.store(fails, Ordering::Relaxed);
        self
    }

    /// Evaluate every component, update the `tower_mesh_health_status`
    /// gauges and log the components whose status changed since the last
    /// report.
    pub fn report(&self) -> HealthReport {
        let components = self.components();
        let breaker_critical = self.inner.breaker_fails_readiness.load(Ordering::Relaxed);
        let reports: Vec<ComponentReport> = components
            .iter()
            .map(|c| {
                let report = c.evaluate(breaker_critical);
                c.observe(&report);
                report
            })
            .collect();
        let status = if reports.iter().any(|r| r.critical && r.status == Status::Down) {
            Status::Down
        } else if reports.iter().any(|r| r.status != Status::Up) {
            Status::Degraded
        } else {
            Status::Up
        };
        HealthReport { status, components: reports }
    }

    /// A readiness endpoint: `200` with the JSON [`HealthReport`] when the
    /// report is not `down`, `503` with it when it is.
    pub fn readiness(&self) -> HealthService {
        HealthService::new(self.clone(), Probe::Readiness)
    }

    /// A liveness endpoint: `200` with `{"status":"up"}` as long as the
    /// process answers; evaluates nothing.
    pub fn liveness(&self) -> HealthService {
        HealthService::new(self.clone(), Probe::Liveness)
    }
}

fn breaker_details(m: &CircuitMetrics, retry_after: Option<Duration>) -> BreakerDetails {
    let retry_after_ms = (m.state == CircuitState::Open)
        .then(|| retry_after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    BreakerDetails {
        state: m.state,
        failure_rate: m.failure_rate,
        slow_call_rate: m.slow_call_rate,
        calls: m.calls,
        failures: m.failures,
        slow_calls: m.slow_calls,
        not_permitted: m.not_permitted,
        retry_after_ms,
    }
}

fn breaker_status(d: &BreakerDetails) -> Status {
    match d.state {
        CircuitState::Closed | CircuitState::Disabled | CircuitState::MetricsOnly => Status::Up,
        CircuitState::HalfOpen => Status::Degraded,
        // The wait is over: the next call moves it to half-open.
        CircuitState::Open if d.retry_after_ms == Some(0) => Status::Degraded,
        CircuitState::Open | CircuitState::ForcedOpen => Status::Down,
    }
}

impl Component {
    fn evaluate(&self, breaker_critical: bool) -> ComponentReport {
        let (status, critical, details) = match &self.source {
            Source::Breaker(handle) => {
                let details = breaker_details(&handle.metrics(), handle.retry_after());
                (breaker_status(&details), breaker_critical, ComponentDetails::CircuitBreaker(details))
            }
            Source::Keyed(registry) => {
                let mut breakers: Vec<KeyedBreaker> = registry
                    .snapshot()
                    .into_iter()
                    .map(|(key, m, retry_after)| {
                        let breaker = breaker_details(&m, retry_after);
                        KeyedBreaker { key, status: breaker_status(&breaker), breaker }
                    })
                    .collect();
                let status = breakers.iter().map(|b| b.status).max().unwrap_or(Status::Up);
                let count = |f: fn(CircuitState) -> bool| breakers.iter().filter(|b| f(b.breaker.state)).count();
                let open = count(|s| matches!(s, CircuitState::Open | CircuitState::ForcedOpen));
                let half_open = count(|s| s == CircuitState::HalfOpen);
                let keys = breakers.len();
                breakers.sort_by(|a, b| b.status.cmp(&a.status).then_with(|| a.key.cmp(&b.key)));
                breakers.truncate(MAX_LISTED_KEYS);
                let details = KeyedBreakerDetails { keys, open, half_open, breakers };
                (status, breaker_critical, ComponentDetails::KeyedCircuitBreakers(details))
            }
            Source::Bulkhead { layer, max } => {
                let available = layer.available_permits();
                let details =
                    BulkheadDetails { in_flight: max.saturating_sub(available), max: (*max).max(available), available };
                let status = if available == 0 { Status::Degraded } else { Status::Up };
                (status, false, ComponentDetails::Bulkhead(details))
            }
            #[cfg(feature = "discovery")]
            Source::Discovery { registry, service } => {
                let resolution = registry.resolution(service);
                let details = super::report::DiscoveryDetails {
                    service: service.clone(),
                    registered: resolution.is_some(),
                    endpoints: resolution.as_ref().map_or(0, |r| r.endpoints().len()),
                    stale: resolution.as_ref().is_some_and(|r| r.is_stale()),
                };
                let status = if details.endpoints == 0 {
                    Status::Down
                } else if details.stale {
                    Status::Degraded
                } else {
                    Status::Up
                };
                (status, true, ComponentDetails::Discovery(details))
            }
            Source::Custom(check) => {
                let (status, message) = match catch_unwind(AssertUnwindSafe(check)) {
                    Ok(s) => s.into_parts(),
                    Err(_) => (Status::Down, Some("the check panicked".to_owned())),
                };
                (status, true, ComponentDetails::Custom(CustomDetails { message }))
            }
        };
        ComponentReport { name: self.name.clone(), kind: self.kind, status, critical, details }
    }

    /// Set the gauge; log a change from the last report (the first report
    /// logs only a component that is not up).
    fn observe(&self, report: &ComponentReport) {
        let status = report.status;
        metrics::gauge!("tower_mesh_health_status", "component" => self.name.clone()).set(status.gauge_value());
        let prev = self.last.swap(status.to_u8(), Ordering::Relaxed);
        if prev == status.to_u8() || (prev == UNKNOWN && status == Status::Up) {
            return;
        }
        let from = match prev {
            0 => "up",
            1 => "degraded",
            2 => "down",
            _ => "unknown",
        };
        let (component, kind, critical) = (self.name.as_str(), self.kind.as_str(), report.critical);
        match status {
            Status::Up => tracing::info!(component, kind, from, to = "up", critical, "health status changed"),
            Status::Degraded | Status::Down => {
                tracing::warn!(component, kind, from, to = status.as_str(), critical, "health status changed")
            }
        }
    }
}
