//! Circuit breaker, after resilience4j's `CircuitBreaker`.
//!
//! Calls pass through while the breaker is **closed**; their outcomes (from a
//! [`Classify`](crate::classify::Classify), default
//! [`ResultClassifier`](crate::classify::ResultClassifier)) go into a sliding
//! window. Once the window holds `minimum_calls`, a failure rate or slow-call
//! rate at or above its threshold **opens** the breaker: calls are rejected
//! with [`CircuitOpen`] (from the response future, never from `poll_ready`)
//! until `wait_in_open` has elapsed. The next call then moves it to
//! **half-open**, which admits `permitted_calls_in_half_open` probes; when they
//! have all completed their rates decide: below the thresholds it closes (with
//! a fresh window), otherwise it opens again (with a longer wait if a
//! multiplier is set). With `max_wait_in_half_open` (default 60 s), probes
//! that have not concluded in time — a probe whose outcome is recorded at the
//! end of a long stream holds its slot until then — re-open the breaker at
//! the end of the max wait, and the open wait counts from that moment: a
//! task armed on entering half-open makes the change on time (state, the
//! state gauge, the transition counter, the `tracing` event and the
//! listeners all see it then, with no call needed); without a tokio runtime
//! with timers, the change is applied when the breaker is next used or
//! observed ([`CircuitBreakerHandle::state`], `metrics`, `retry_after`), as
//! of the same moment. A probe that concludes after that moment counts for
//! nothing.
//!
//! | state | admits | records | leaves by |
//! |---|---|---|---|
//! | closed | all | window | rates ≥ threshold → open |
//! | open | none (`retry_after` = rest of the wait) | — | wait elapsed → half-open (lazily, on the next call) |
//! | half-open | `permitted_calls_in_half_open` probes | probes only | all probes done → closed / open; end of max wait → open (on time) |
//! | disabled | all | nothing | manual transition |
//! | forced-open | none | — | manual transition |
//! | metrics-only | all | window | manual transition |
//!
//! Outcomes: `Failure` is a failure, `Ignored` counts for nothing (an ignored
//! probe gives its slot back), `Deferred` (gRPC trailers) is recorded when the
//! body ends, `Cancelled` (the response future or body dropped) is mapped by
//! the [`CancelPolicy`](crate::classify::CancelPolicy) (default: ignored, so a
//! dropped probe frees its slot and half-open cannot get stuck). Slowness is
//! the duration from `call` to the outcome (end of stream for deferred calls);
//! a call is slow when it takes `slow_call_duration` or longer.
//!
//! A call counts only for the period — the run of one state between two
//! transitions — it was admitted in: a call admitted while closed that ends
//! after the breaker opened (and maybe closed again) is not recorded, nor is
//! a probe of an earlier half-open period.
//!
//! The stack's own rejections coming from below — a full bulkhead's
//! `BulkheadFull`, another breaker's [`CircuitOpen`], anywhere in the error's
//! source chain — are not counted even when the classifier calls them
//! failures: they are this process's load, not the dependency's failures.
//! [`count_rejections(true)`](CircuitBreakerBuilder::count_rejections) counts
//! them again.
//!
//! Slow-call detection is off unless `slow_call_duration` is set (as in
//! tower-resilience): timing a call costs two clock reads, which would be most
//! of the breaker's cost per call. Without it, and with a count window, a call
//! reads no clock at all; a success on a full count window holding no failure
//! changes nothing and is not even recorded under the lock, so a healthy
//! breaker costs about as much as an `Arc` clone. A time window counts the
//! successes of a window holding no failure with one atomic operation; in a
//! multi-thread tokio runtime a timer marks the end of each second, so such
//! a success reads no clock either. Elsewhere (a current-thread runtime,
//! whose timers only fire while it is driven, a paused clock's tests, no
//! runtime) it reads the clock once per call. Either way a call lands in the
//! bucket of the second it ended in — under a timer, of the second the timer
//! had not yet ended (timers fire a millisecond or so late, and a guarded
//! success checks the clock every 256 counts besides).
//!
//! Windows are O(1) per call: a count window is a ring of outcome slots with
//! running totals; a time window is a ring of per-second buckets with running
//! totals, stale buckets being subtracted as time advances. A count window's
//! `minimum_calls` larger than the window is clamped to the window size (as in
//! resilience4j).
//!
//! Readiness: `poll_ready` only delegates to the inner service, so a
//! `Buffer` or `Balance` above is never torn down by an open breaker; a
//! rejected call simply does not use the readiness it was given (the inner
//! service stays ready for the next call).
//!
//! Differences from resilience4j:
//!
//! - a call counts only for the period it was admitted in (above);
//!   resilience4j records a call in whatever state the breaker is in when
//!   the call ends;
//! - a call is slow at `slow_call_duration` or longer (`>=`); resilience4j's
//!   `slowCallDurationThreshold` counts calls longer than it (`>`);
//! - half-open decides once all `permitted_calls_in_half_open` probes have
//!   concluded; resilience4j decides as soon as
//!   `min(minimumNumberOfCalls, permittedNumberOfCallsInHalfOpenState)`
//!   probes have;
//! - `max_wait_in_half_open` defaults to 60 s (resilience4j: 0, unlimited);
//! - slow-call detection is off unless `slow_call_duration` is set
//!   (resilience4j: 60 s);
//! - the stack's own rejections from below are not failures by default.
//!
//! The settings correspond as follows (same role, semantics as above):
//!
//! | resilience4j | tower-mesh |
//! |---|---|
//! | `failureRateThreshold` | `failure_rate_threshold` |
//! | `slowCallRateThreshold` / `slowCallDurationThreshold` | `slow_call_rate_threshold` / `slow_call_duration` |
//! | `slidingWindowType` + `slidingWindowSize` | `sliding_window` (`count_window` / `time_window`) |
//! | `minimumNumberOfCalls` | `minimum_calls` |
//! | `waitDurationInOpenState` / `waitIntervalFunctionInOpenState` | `wait_in_open` / `growing_wait_in_open` |
//! | `permittedNumberOfCallsInHalfOpenState` | `permitted_calls_in_half_open` |
//! | `maxWaitDurationInHalfOpenState` | `max_wait_in_half_open` |
//! | `recordExceptions` / `ignoreExceptions` | a [`Classify`](crate::classify::Classify) |
//! | `CallNotPermittedException` | [`CircuitOpen`] |
//! | `transitionTo…State`, `reset` | [`CircuitBreakerHandle`] |
//!
//! Metrics: `tower_mesh_circuit_breaker_calls_total{service,outcome}`
//! (success/failure/ignored/rejected), `tower_mesh_circuit_breaker_slow_calls_total`,
//! `tower_mesh_circuit_breaker_state{service}` (0 closed, 1 open, 2 half-open,
//! 3 disabled, 4 forced-open, 5 metrics-only),
//! `tower_mesh_circuit_breaker_transitions_total{service,from,to}`,
//! `tower_mesh_circuit_breaker_call_duration_seconds`. The breakers of a keyed
//! layer add a `key` label of bounded cardinality (below). Transitions are logged
//! with `tracing` and passed to `on_state_change` callbacks.
//!
//! Per-key breakers ([`CircuitBreakerBuilder::key`]) keep one breaker per key
//! of the request (e.g. the URI authority) in a [`CircuitBreakerRegistry`]
//! that lists the keys with their states. Keys can come from what clients
//! send, so the registry is bounded:
//!
//! - at most [`max_keys`](KeyedCircuitBreakerBuilder::max_keys) keys (default
//!   1024) live at once; keys idle for the TTL (default 10 minutes) are
//!   evicted; a new key that finds the registry full evicts the least
//!   recently used key whose breaker is closed, and if every breaker is open,
//!   half-open or forced, it uses one **overflow** breaker (`name[overflow]`)
//!   shared by such keys, so flooding keys can neither grow memory nor close
//!   an open breaker;
//! - the `key` metric label is the key itself only for the keys listed in
//!   [`metric_keys`](KeyedCircuitBreakerBuilder::metric_keys); the others are
//!   labelled `bucket-N` (a hash of the key modulo
//!   [`metric_key_buckets`](KeyedCircuitBreakerBuilder::metric_key_buckets),
//!   default 16) or `other`, and the overflow breaker `overflow`: evicted keys
//!   leave no series behind.
//!
//! The registry records `tower_mesh_circuit_breaker_keys{service}` (keys
//! live), `tower_mesh_circuit_breaker_key_evictions_total{service,reason}`
//! (`idle`, `capacity`) and
//! `tower_mesh_circuit_breaker_key_overflow_total{service}` (calls that used
//! the overflow breaker); the first use of the overflow breaker logs a
//! warning. The unkeyed [`CircuitBreaker`] is a separate type and pays
//! nothing for all this.
//!
//! See [`CircuitBreakerLayer`] for an example.

mod closer;
mod config;
mod error;
mod future;
mod keyed;
mod layer;
mod service;
mod state;
#[cfg(test)]
pub(crate) mod tests;

pub use self::config::{CircuitBreakerConfig, SlidingWindow};
pub use self::error::CircuitOpen;
pub use self::future::{BreakerRef, KeyedRef, ResponseFuture};
pub use self::keyed::{
    CircuitBreakerRegistry, KeyedCircuitBreaker, KeyedCircuitBreakerBuilder, KeyedCircuitBreakerLayer,
};
pub use self::layer::{CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer};
pub use self::service::CircuitBreaker;
pub use self::state::{CircuitMetrics, CircuitState, StateChange};
