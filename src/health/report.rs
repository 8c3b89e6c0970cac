//! The report: statuses, components and their details.

use serde::{Serialize, Serializer};

use crate::circuit_breaker::CircuitState;

/// Health of one component, or of the whole process.
///
/// Ordered from best to worst, so `max` of several statuses is the worst one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Working normally.
    Up,
    /// Working, but not fully: a breaker probing, a stale endpoint set, a
    /// saturated bulkhead, a dependency down that does not fail readiness.
    Degraded,
    /// Not working.
    Down,
}

impl Status {
    /// Short name (`up`, `degraded`, `down`), as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }

    /// The value of the `tower_mesh_health_status` gauge: 1 up, 0.5 degraded, 0 down.
    pub fn gauge_value(self) -> f64 {
        match self {
            Status::Up => 1.0,
            Status::Degraded => 0.5,
            Status::Down => 0.0,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a custom check ([`Health::check`](super::Health::check)) returns: a
/// status and an optional message for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    status: Status,
    message: Option<String>,
}

impl ComponentStatus {
    /// Up, no message.
    pub fn up() -> Self {
        ComponentStatus { status: Status::Up, message: None }
    }

    /// Degraded, with the reason.
    pub fn degraded(message: impl Into<String>) -> Self {
        ComponentStatus { status: Status::Degraded, message: Some(message.into()) }
    }

    /// Down, with the reason.
    pub fn down(message: impl Into<String>) -> Self {
        ComponentStatus { status: Status::Down, message: Some(message.into()) }
    }

    /// Replace the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    pub(crate) fn into_parts(self) -> (Status, Option<String>) {
        (self.status, self.message)
    }
}

impl From<Status> for ComponentStatus {
    fn from(status: Status) -> Self {
        ComponentStatus { status, message: None }
    }
}

/// What a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ComponentKind {
    /// A circuit breaker, or the per-key breakers of a keyed layer.
    CircuitBreaker,
    /// A bulkhead.
    Bulkhead,
    /// A logical service of a discovery registry.
    Discovery,
    /// A check of the application's own.
    Custom,
}

impl ComponentKind {
    /// Short name (`circuit_breaker`, `bulkhead`, `discovery`, `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::CircuitBreaker => "circuit_breaker",
            ComponentKind::Bulkhead => "bulkhead",
            ComponentKind::Discovery => "discovery",
            ComponentKind::Custom => "custom",
        }
    }
}

/// The health of the process and of each registered component, as made by
/// [`Health::report`](super::Health::report) and served as JSON by
/// [`Health::readiness`](super::Health::readiness).
///
/// ```json
/// {
///   "status": "degraded",
///   "components": [
///     { "name": "payments", "kind": "circuit_breaker", "status": "down", "critical": false,
///       "details": { "state": "open", "failure_rate": 100.0, "slow_call_rate": 0.0, "calls": 4,
///                    "failures": 4, "slow_calls": 0, "not_permitted": 0, "retry_after_ms": 29500 } },
///     { "name": "orders", "kind": "discovery", "status": "up", "critical": true,
///       "details": { "service": "orders", "registered": true, "endpoints": 2, "stale": false } }
///   ]
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `down` if a critical component is down (readiness fails), else
    /// `degraded` if any component is not up, else `up`.
    pub status: Status,
    /// One entry per registered component, in registration order.
    pub components: Vec<ComponentReport>,
}

impl HealthReport {
    /// Whether the instance should receive traffic: the status is not `down`.
    pub fn is_ready(&self) -> bool {
        self.status != Status::Down
    }

    /// The first component named `name`.
    pub fn component(&self, name: &str) -> Option<&ComponentReport> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// One component of a [`HealthReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentReport {
    /// The component's name.
    pub name: String,
    /// What it is.
    pub kind: ComponentKind,
    /// Its status.
    pub status: Status,
    /// Whether this component being `down` fails readiness (makes the report
    /// `down` and the readiness answer `503`). A non-critical component that
    /// is down only degrades the report.
    pub critical: bool,
    /// Kind-specific details.
    pub details: ComponentDetails,
}

/// The details of a component, by kind (serialized as the inner object).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ComponentDetails {
    /// A circuit breaker.
    CircuitBreaker(BreakerDetails),
    /// The per-key breakers of a keyed layer.
    KeyedCircuitBreakers(KeyedBreakerDetails),
    /// A bulkhead.
    Bulkhead(BulkheadDetails),
    /// A logical service of a discovery registry.
    Discovery(DiscoveryDetails),
    /// A custom check.
    Custom(CustomDetails),
}

fn state_str<S: Serializer>(state: &CircuitState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(state.as_str())
}

/// A breaker's state and counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BreakerDetails {
    /// The state (`closed`, `open`, `half_open`, `disabled`, `forced_open`, `metrics_only`).
    #[serde(serialize_with = "state_str")]
    pub state: CircuitState,
    /// Failure rate of the window in percent (`null` below the minimum number of calls).
    pub failure_rate: Option<f64>,
    /// Slow-call rate of the window in percent (`null` below the minimum number of calls).
    pub slow_call_rate: Option<f64>,
    /// Calls recorded in the window (in half-open: the probes so far).
    pub calls: u32,
    /// Failed calls among them.
    pub failures: u32,
    /// Slow calls among them.
    pub slow_calls: u32,
    /// Calls rejected since the breaker was built.
    pub not_permitted: u64,
    /// When open: milliseconds until the breaker admits probes (`0`: it will
    /// on the next call). `null` in any other state.
    pub retry_after_ms: Option<u64>,
}

/// The per-key breakers of a keyed layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KeyedBreakerDetails {
    /// Number of keys (breakers) in the registry.
    pub keys: usize,
    /// How many of them are open or forced open.
    pub open: usize,
    /// How many of them are half-open.
    pub half_open: usize,
    /// The breakers, worst first, then by key; at most
    /// [`MAX_LISTED_KEYS`](super::MAX_LISTED_KEYS) of them.
    pub breakers: Vec<KeyedBreaker>,
}

/// One breaker of a keyed layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct KeyedBreaker {
    /// The key, as its `Debug` form (the `key` label of the breaker's metrics).
    pub key: String,
    /// This key breaker's status.
    pub status: Status,
    /// Its state and counters.
    #[serde(flatten)]
    pub breaker: BreakerDetails,
}

/// A bulkhead's occupation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BulkheadDetails {
    /// Calls holding a permit now (`max - available`).
    pub in_flight: usize,
    /// Calls allowed at once.
    pub max: usize,
    /// Permits free now.
    pub available: usize,
}

/// A logical service of a discovery registry.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DiscoveryDetails {
    /// The logical service.
    pub service: String,
    /// Whether the registry knows the service at all.
    pub registered: bool,
    /// Endpoints known now.
    pub endpoints: usize,
    /// Whether they are the last known set of a source that cannot refresh it.
    pub stale: bool,
}

/// A custom check's message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CustomDetails {
    /// What the check said, if anything.
    pub message: Option<String>,
}
