//! State shared by every service a bulkhead layer makes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tokio::time::Instant;

use super::error::BulkheadFull;
use super::pool::{BulkheadPermit, Pool};

/// Name, limits and metric handles of one bulkhead.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) max: usize,
    pub(crate) max_wait: Duration,
    in_flight: Gauge,
    rejections: Counter,
    permit_wait: Histogram,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("max_concurrent_calls", &self.max)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

impl Shared {
    /// Register the metric handles once, labelled with the bulkhead's name.
    pub(crate) fn new(name: Arc<str>, max: usize, max_wait: Duration) -> Self {
        let label = name.to_string();
        Shared {
            in_flight: metrics::gauge!("tower_mesh_bulkhead_in_flight", "service" => label.clone()),
            rejections: metrics::counter!("tower_mesh_bulkhead_rejections_total", "service" => label.clone()),
            permit_wait: metrics::histogram!("tower_mesh_bulkhead_permit_wait_seconds", "service" => label),
            name,
            max,
            max_wait,
        }
    }

    /// A call got its permit and is now in flight.
    #[inline]
    pub(crate) fn in_flight(&self, permit: BulkheadPermit) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight { _permit: permit, gauge: self.in_flight.clone() }
    }

    /// A call is rejected: count it, log it and make the error.
    #[cold]
    pub(crate) fn reject(&self, waited: Duration) -> BulkheadFull {
        self.rejections.increment(1);
        tracing::debug!(service = %self.name, max_concurrent_calls = self.max, ?waited, "bulkhead full, call rejected");
        BulkheadFull::new(self.name.clone(), self.max, waited)
    }

    /// A call that had to wait for a permit got one, or gave up.
    pub(crate) fn waited(&self, started: Instant) -> Duration {
        let waited = started.elapsed();
        self.permit_wait.record(waited.as_secs_f64());
        waited
    }

    /// Start waiting, up to `max_wait`, for a permit of `pool`. Only used
    /// on the slow path, so the one allocation is fine.
    pub(crate) fn wait(&self, pool: &Arc<Pool>) -> Waiting {
        let acquire = tokio::time::timeout(self.max_wait, pool.clone().acquire());
        Waiting { acquire: Box::pin(async move { acquire.await.ok() }), started: Instant::now() }
    }
}

/// A permit held by a call in flight; released (and the in-flight gauge
/// decremented) when dropped.
pub(crate) struct InFlight {
    _permit: BulkheadPermit,
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlight")
    }
}

/// Waiting for a permit, for at most `max_wait`: resolves to `None` on timeout.
pub(crate) struct Waiting {
    pub(crate) acquire: Pin<Box<dyn Future<Output = Option<BulkheadPermit>> + Send + Sync>>,
    pub(crate) started: Instant,
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiting").field("started", &self.started).finish_non_exhaustive()
    }
}
