//! Health and readiness: breaker states, bulkhead occupation, discovery
//! health and the application's own checks, as one report served over HTTP.
//!
//! [`Health`] holds the components, registered at startup:
//! [`breaker`](Health::breaker), [`keyed_breakers`](Health::keyed_breakers),
//! [`bulkhead`](Health::bulkhead), `discovery` (feature `discovery`) and
//! [`check`](Health::check). [`Health::report`] evaluates them into a
//! [`HealthReport`] (serializable); [`Health::readiness`] and
//! [`Health::liveness`] are [`HealthService`]s answering HTTP probes with it,
//! to mount on an axum router (`Router::route_service`) or any tower-based
//! server.
//!
//! # Rules
//!
//! | component | `up` | `degraded` | `down` | `down` fails readiness |
//! |---|---|---|---|---|
//! | circuit breaker | closed, disabled, metrics-only | half-open; open with its wait elapsed | open, forced-open | only with [`breaker_fails_readiness(true)`](Health::breaker_fails_readiness) |
//! | keyed breakers | every key up (or no key) | worst key degraded | worst key down | likewise |
//! | bulkhead | a permit is free | no permit free | — | — |
//! | discovery | endpoints, fresh | endpoints, stale | no endpoints, unknown service | yes |
//! | custom check | as it says | as it says | as it says (or it panicked) | yes |
//!
//! The report is `down` when a component that fails readiness is `down`
//! (readiness answers `503`), else `degraded` when any component is not `up`
//! (readiness answers `200`), else `up`.
//!
//! A breaker does not fail readiness by default: a dependency being down is
//! no reason to take this instance out of its load balancer — every instance
//! shares the dependency, and an instance out of rotation gets no call that
//! could close its breaker. This is the reasoning behind the default
//! `allowHealthIndicatorToFail=false` of resilience4j's Spring Boot health
//! indicator. The open breaker still shows as `down` in the report, which is
//! then `degraded`.
//!
//! Liveness evaluates nothing: it answers `200` as long as the process can
//! answer at all. Do not make liveness depend on dependencies, or an outage
//! of one restarts every instance.
//!
//! # Observability
//!
//! Each report sets the gauge `tower_mesh_health_status{component}` (1 up,
//! 0.5 degraded, 0 down) and logs with `tracing` the components whose
//! status changed since the previous report (`info` when back up, `warn`
//! otherwise; the first report logs only components that are not up).
//!
//! # Example
//!
//! ```
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_mesh::circuit_breaker::CircuitBreakerLayer;
//! use tower_mesh::health::{ComponentStatus, Health, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder().name("payments").build().unwrap();
//! let health = Health::new()
//!     .breaker(breaker.handle())
//!     .check("database", || ComponentStatus::up());
//!
//! // With axum:
//! //   Router::new()
//! //       .route_service("/ready", health.readiness())
//! //       .route_service("/live", health.liveness())
//! let ready = health.readiness();
//! let res = ready.clone().oneshot(Request::get("/ready").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["content-type"], "application/json");
//!
//! // An open breaker degrades the report but keeps the instance ready …
//! breaker.handle().transition_to_open();
//! let res = ready.clone().oneshot(Request::get("/ready").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["status"], "degraded");
//! assert_eq!(json["components"][0]["details"]["state"], "open");
//!
//! // … unless asked otherwise.
//! let health = health.breaker_fails_readiness(true);
//! assert_eq!(health.report().status, Status::Down);
//! let res = health.readiness().oneshot(Request::get("/ready").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//!
//! // Liveness stays up.
//! let res = health.liveness().oneshot(Request::get("/live").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # }
//! ```

mod checks;
mod report;
mod service;
#[cfg(test)]
mod tests;

pub use self::checks::Health;
pub use self::report::{
    BreakerDetails, BulkheadDetails, ComponentDetails, ComponentKind, ComponentReport, ComponentStatus, CustomDetails,
    DiscoveryDetails, HealthReport, KeyedBreaker, KeyedBreakerDetails, Status,
};
pub use self::service::HealthService;

/// At most this many breakers of a keyed layer are listed in a report (worst
/// first); the counts cover them all.
pub const MAX_LISTED_KEYS: usize = 50;
