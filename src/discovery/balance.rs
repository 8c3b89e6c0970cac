//! Endpoint tables, peak-EWMA load, power-of-two-choices and outlier ejection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use metrics::Counter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use tokio::sync::watch;

use super::error::DiscoveryError;
use super::registry::{Registry, Resolution};
use crate::config::{check_nonzero, check_range, ConfigError};

/// How the layer picks an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Power of two choices over peak-EWMA load (latency × outstanding
    /// requests), as tower's `balance::p2c` with `load::PeakEwma` (default).
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

/// Passive health checking: Envoy-style outlier ejection driven by the
/// layer's classifier.
///
/// An endpoint whose calls fail `consecutive_failures` times in a row is
/// ejected for `base_ejection × n` (n = how often it has been ejected, capped
/// at `max_ejection`), then receives traffic again. At most
/// `max_ejection_percent` of a service's endpoints are ejected at once (at
/// least one endpoint always stays).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint (default 5; 0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this (default 10 s).
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection (default 300 s).
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Largest share of a service's endpoints ejected at once, in percent (default 50).
    pub max_ejection_percent: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50.0,
        }
    }
}

impl OutlierConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("discovery.outlier.max_ejection_percent", self.max_ejection_percent, 0.0, 100.0)?;
        if self.consecutive_failures > 0 {
            check_nonzero("discovery.outlier.base_ejection", self.base_ejection.is_zero())?;
        }
        if self.max_ejection < self.base_ejection {
            return Err(ConfigError::Conflict {
                field: "discovery.outlier.max_ejection",
                other: "discovery.outlier.base_ejection",
                reason: "the longest ejection is shorter than the first",
            });
        }
        Ok(())
    }
}

/// Decay time of the latency EWMA (as tower's `PeakEwma` default).
const DECAY_NS: f64 = 10e9;
/// Latency assumed for an endpoint never measured (tower uses a default RTT too).
const DEFAULT_RTT_NS: f64 = 1e6;

/// Live statistics of one endpoint, shared by every clone of the layer's service.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    pub(crate) authority: Authority,
    in_flight: AtomicUsize,
    /// f64 bits: peak-EWMA of the latency in ns.
    ewma_ns: AtomicU64,
    /// ns since the clock's base of the last EWMA update.
    updated_ns: AtomicU64,
    consecutive_failures: AtomicU32,
    /// ns since the clock's base until which the endpoint is ejected (0: not ejected).
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
}

impl EndpointStats {
    fn new(authority: Authority) -> Self {
        EndpointStats {
            authority,
            in_flight: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            updated_ns: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    #[inline]
    fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) > now_ns
    }

    /// Peak-EWMA load: latency estimate × (outstanding + 1).
    #[inline]
    fn load(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    fn observe_latency(&self, now_ns: u64, rtt_ns: f64) {
        let prev = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let last = self.updated_ns.swap(now_ns, Ordering::Relaxed);
        let next = if rtt_ns > prev {
            // Peak: jump up at once.
            rtt_ns
        } else {
            let elapsed = now_ns.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY_NS).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// A logical service's endpoint watch and its current table.
#[derive(Debug)]
struct Route {
    rx: watch::Receiver<Resolution>,
    table: Arc<Table>,
}

/// One service's endpoint table, rebuilt when its endpoint set changes.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) service: Arc<str>,
    ejections: Counter,
    pub(crate) endpoints: Vec<Arc<EndpointStats>>,
    pub(crate) stale: bool,
    // Copies of the layer's settings (not an `Arc<Shared>`: the shared route
    // map holds the tables, so that would be a reference cycle).
    balance: Balance,
    outlier: OutlierConfig,
    base: Instant,
    rr: AtomicUsize,
    /// Held while an ejection is decided and made, so the cap check and the
    /// ejection are one step; shared by the tables of one service (a refresh
    /// keeps it).
    eject_gate: Arc<Mutex<()>>,
}

/// State shared by all clones of one layer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) balance: Balance,
    pub(crate) outlier: OutlierConfig,
    base: Instant,
    stats: Mutex<HashMap<Authority, Weak<EndpointStats>>>,
    /// Each logical service's watch and current table, shared by all clones
    /// (a clone made per call, as `Retry` does, starts up to date).
    routes: Mutex<HashMap<Arc<str>, Route>>,
    /// The layer's name (logs only).
    pub(crate) name: Arc<str>,
}

impl Shared {
    pub(crate) fn new(name: Arc<str>, balance: Balance, outlier: OutlierConfig) -> Self {
        Shared {
            balance,
            outlier,
            base: Instant::now(),
            stats: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            name,
        }
    }

    /// The current table of `service`, refreshed if its endpoint set changed;
    /// the first request for a service subscribes to it in `registry`.
    pub(crate) fn route(self: &Arc<Self>, registry: &Registry, service: &str) -> Result<Arc<Table>, DiscoveryError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = routes.get_mut(service) {
            if route.rx.has_changed().unwrap_or(false) {
                let res = route.rx.borrow_and_update().clone();
                let gate = route.table.eject_gate.clone();
                route.table = self.table_with_gate(route.table.service.clone(), res.endpoints(), res.is_stale(), gate);
            }
            return Ok(route.table.clone());
        }
        let mut rx = registry.watch(service)?;
        let res = rx.borrow_and_update().clone();
        let name: Arc<str> = Arc::from(service);
        let table = self.table(name.clone(), res.endpoints(), res.is_stale());
        routes.insert(name, Route { rx, table: table.clone() });
        Ok(table)
    }

    /// The table of `service` as last refreshed, if any request used it.
    pub(crate) fn current(&self, service: &str) -> Option<Arc<Table>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(service).map(|r| r.table.clone())
    }

    /// Build a table for `service`, keeping the statistics of endpoints that
    /// stay (so a refresh does not forget load or ejections).
    pub(crate) fn table(&self, service: Arc<str>, endpoints: &[Authority], stale: bool) -> Arc<Table> {
        self.table_with_gate(service, endpoints, stale, Arc::default())
    }

    /// [`table`](Self::table), sharing the ejection gate of the service's previous table.
    fn table_with_gate(
        &self,
        service: Arc<str>,
        endpoints: &[Authority],
        stale: bool,
        eject_gate: Arc<Mutex<()>>,
    ) -> Arc<Table> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.retain(|_, w| w.strong_count() > 0);
        let endpoints: Vec<Arc<EndpointStats>> = endpoints
            .iter()
            .map(|a| match stats.get(a).and_then(Weak::upgrade) {
                Some(s) => s,
                None => {
                    let s = Arc::new(EndpointStats::new(a.clone()));
                    stats.insert(a.clone(), Arc::downgrade(&s));
                    s
                }
            })
            .collect();
        drop(stats);
        metrics::gauge!("tower_mesh_discovery_endpoints", "service" => service.to_string()).set(endpoints.len() as f64);
        metrics::gauge!("tower_mesh_discovery_stale", "service" => service.to_string()).set(stale as u8 as f64);
        tracing::info!(service = %service, endpoints = endpoints.len(), stale, "discovery endpoint set changed");
        let ejections = metrics::counter!("tower_mesh_discovery_ejections_total", "service" => service.to_string());
        Arc::new(Table {
            service,
            ejections,
            endpoints,
            stale,
            balance: self.balance,
            outlier: self.outlier,
            base: self.base,
            rr: AtomicUsize::new(0),
            eject_gate,
        })
    }
}

impl Table {
    #[inline]
    fn now_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Pick an endpoint index, or `None` when the table is empty.
    pub(crate) fn pick(&self, now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let now_ns = self.now_ns(now);
        let ok = |i: usize| !self.endpoints[i].ejected(now_ns);
        match self.balance {
            Balance::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i)).or(Some(start % n))
            }
            Balance::PeakEwma => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                match (ok(a), ok(b)) {
                    (true, true) => Some(if self.endpoints[a].load() <= self.endpoints[b].load() { a } else { b }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both ejected: any healthy endpoint, else (all ejected) `a`.
                    (false, false) => (0..n).find(|&i| ok(i)).or(Some(a)),
                }
            }
        }
    }

    #[inline]
    pub(crate) fn start(&self, i: usize) {
        self.endpoints[i].in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call to endpoint `i` ended: `failed` is `None` when it was cancelled
    /// or its outcome ignored (only the in-flight count changes).
    pub(crate) fn finish(&self, i: usize, started: Instant, failed: Option<bool>) {
        let e = &self.endpoints[i];
        e.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(failed) = failed else { return };
        let now = Instant::now();
        let now_ns = self.now_ns(now);
        e.observe_latency(now_ns, now.saturating_duration_since(started).as_nanos() as f64);
        let cfg = &self.outlier;
        if !failed {
            e.consecutive_failures.store(0, Ordering::Relaxed);
            // Healthy for longer than the longest ejection: forget past ejections.
            let until = e.ejected_until_ns.load(Ordering::Relaxed);
            if until != 0 && now_ns > until + cfg.max_ejection.as_nanos() as u64 {
                e.ejections.store(0, Ordering::Relaxed);
                e.ejected_until_ns.store(0, Ordering::Relaxed);
            }
            return;
        }
        if cfg.consecutive_failures == 0 {
            return;
        }
        let run = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if run < cfg.consecutive_failures || e.ejected(now_ns) {
            return;
        }
        // The cap check and the ejection are one step: a failure deciding
        // while another one is at it leaves its endpoint to its next failure
        // (its run of failures stays over the threshold) rather than wait or
        // count ejections not yet made.
        let _gate = match self.eject_gate.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if e.ejected(now_ns) {
            return;
        }
        // Cap: never more than the allowed share, and never the last endpoint.
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|x| x.ejected(now_ns)).count();
        let allowed = ((n as f64 * cfg.max_ejection_percent / 100.0).floor() as usize).min(n.saturating_sub(1));
        if ejected >= allowed {
            return;
        }
        #[cfg(test)]
        if let Some(hook) = tests::BETWEEN_CHECK_AND_EJECT.with(|h| h.borrow_mut().take()) {
            hook();
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let dur = cfg.base_ejection.saturating_mul(times).min(cfg.max_ejection);
        e.ejected_until_ns.store(now_ns + dur.as_nanos() as u64, Ordering::Relaxed);
        // Back from ejection it starts from the default latency, not from the
        // timeouts that got it ejected.
        e.ewma_ns.store(DEFAULT_RTT_NS.to_bits(), Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.increment(1);
        tracing::warn!(
            service = %self.service,
            endpoint = %e.authority,
            failures = run,
            ejected_for = ?dur,
            "discovery: endpoint ejected"
        );
    }

    /// Calls in flight to endpoint `i`.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, i: usize) -> usize {
        self.endpoints[i].in_flight.load(Ordering::Relaxed)
    }

    /// Endpoints currently ejected (for health reporting and tests).
    pub(crate) fn ejected(&self, now: Instant) -> Vec<Authority> {
        let now_ns = self.now_ns(now);
        self.endpoints.iter().filter(|e| e.ejected(now_ns)).map(|e| e.authority.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;

    use http::uri::Authority;
    use tokio::time::Instant;

    use super::{Balance, OutlierConfig, Shared, Table};

    thread_local! {
        /// Run once between an ejection's cap check and the ejection itself:
        /// where a concurrent failure would interleave.
        pub(super) static BETWEEN_CHECK_AND_EJECT: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    fn table(n: usize, percent: f64) -> Arc<Table> {
        let outlier =
            OutlierConfig { consecutive_failures: 1, max_ejection_percent: percent, ..OutlierConfig::default() };
        let shared = Shared::new("test".into(), Balance::RoundRobin, outlier);
        let endpoints: Vec<Authority> = (0..n).map(|i| format!("10.0.0.{i}:80").parse().unwrap()).collect();
        shared.table("s".into(), &endpoints, false)
    }

    fn fail(table: &Table, i: usize) {
        table.start(i);
        table.finish(i, Instant::now(), Some(true));
    }

    #[test]
    fn a_failure_interleaved_between_the_cap_check_and_the_ejection_does_not_eject_past_the_cap() {
        // 4 endpoints at 25 %: one ejection allowed.
        let t = table(4, 25.0);
        let other = t.clone();
        BETWEEN_CHECK_AND_EJECT.with(|h| *h.borrow_mut() = Some(Box::new(move || fail(&other, 1))));
        fail(&t, 0);
        assert_eq!(t.ejected(Instant::now()), vec![t.endpoints[0].authority.clone()], "only the first decision ejects");
        // The deferred endpoint keeps failing: still no room.
        fail(&t, 1);
        assert_eq!(t.ejected(Instant::now()).len(), 1);
    }

    #[test]
    fn concurrent_failures_on_many_threads_never_eject_past_the_cap() {
        for _ in 0..200 {
            let t = table(10, 30.0);
            let barrier = Arc::new(std::sync::Barrier::new(10));
            let threads: Vec<_> = (0..10)
                .map(|i| {
                    let (t, barrier) = (t.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        fail(&t, i);
                    })
                })
                .collect();
            for th in threads {
                th.join().unwrap();
            }
            let ejected = t.ejected(Instant::now()).len();
            assert!((1..=3).contains(&ejected), "{ejected} of 10 ejected at a 30 % cap");
        }
    }
}
