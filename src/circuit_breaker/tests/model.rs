//! The breaker against a straightforward reference model of resilience4j's
//! semantics (a Vec rescanned on every step), and probe-slot leak checks.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::advance;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::{builder, call, inner, is_open};
use crate::circuit_breaker::CircuitState;

const SLOW_MS: u64 = 1000;
const MIN_CALLS: usize = 3;
const PERMITTED: usize = 2;
const WAIT_MS: u64 = 2000;
const MAX_WAIT_MS: u64 = 6000;
const MAX_HALF_OPEN_MS: u64 = 5000;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Count(usize),
    Time(u64),
}

#[derive(Debug)]
struct Model {
    kind: Kind,
    state: CircuitState,
    events: Vec<(u64, bool, bool)>,
    open_until: u64,
    trips: u32,
    probes_free: usize,
    probes: Vec<(bool, bool)>,
    half_open_since: u64,
}

impl Model {
    fn new(kind: Kind) -> Self {
        Model {
            kind,
            state: CircuitState::Closed,
            events: vec![],
            open_until: 0,
            trips: 0,
            probes_free: 0,
            probes: vec![],
            half_open_since: 0,
        }
    }

    fn go(&mut self, to: CircuitState, now: u64) {
        self.state = to;
        match to {
            CircuitState::Open => {
                self.trips += 1;
                let wait = (WAIT_MS << (self.trips - 1).min(20)).min(MAX_WAIT_MS);
                self.open_until = now + wait;
            }
            CircuitState::HalfOpen => {
                self.probes_free = PERMITTED;
                self.probes.clear();
                self.half_open_since = now;
            }
            _ => {
                self.trips = 0;
                self.events.clear();
            }
        }
    }

    /// Half-open ends at the end of its max wait, whenever that is noticed:
    /// the open wait starts from that moment.
    fn expire(&mut self, now: u64) {
        let end = self.half_open_since + MAX_HALF_OPEN_MS;
        if self.state == CircuitState::HalfOpen && now >= end {
            self.go(CircuitState::Open, end);
        }
    }

    /// `Some(probe)` if admitted.
    fn acquire(&mut self, now: u64) -> Option<bool> {
        self.expire(now);
        if self.state == CircuitState::Open && now >= self.open_until {
            self.go(CircuitState::HalfOpen, now);
        }
        match self.state {
            CircuitState::Closed => Some(false),
            CircuitState::HalfOpen if self.probes_free > 0 => {
                self.probes_free -= 1;
                Some(true)
            }
            _ => None,
        }
    }

    fn window(&self, now: u64) -> Vec<(bool, bool)> {
        match self.kind {
            Kind::Count(n) => self.events.iter().rev().take(n).map(|e| (e.1, e.2)).collect(),
            Kind::Time(secs) => {
                let cur = now / 1000;
                self.events.iter().filter(|e| e.0 / 1000 + secs > cur).map(|e| (e.1, e.2)).collect()
            }
        }
    }

    fn exceeded(w: &[(bool, bool)]) -> bool {
        let n = w.len() as f64;
        let f = w.iter().filter(|e| e.0).count() as f64 * 100.0 / n;
        let s = w.iter().filter(|e| e.1).count() as f64 * 100.0 / n;
        f >= 50.0 || s >= 80.0
    }

    fn record(&mut self, probe: bool, outcome: u8, dur: u64, now: u64) {
        let (failed, slow) = (outcome == 1, dur >= SLOW_MS);
        if probe {
            self.expire(now);
            if self.state != CircuitState::HalfOpen {
                return;
            }
            if outcome == 2 {
                self.probes_free += 1;
                return;
            }
            self.probes.push((failed, slow));
            if self.probes.len() >= PERMITTED {
                let to = if Self::exceeded(&self.probes) { CircuitState::Open } else { CircuitState::Closed };
                self.go(to, now);
            }
        } else if self.state == CircuitState::Closed && outcome != 2 {
            self.events.push((now, failed, slow));
            let w = self.window(now);
            let min = match self.kind {
                Kind::Count(n) => MIN_CALLS.min(n),
                Kind::Time(_) => MIN_CALLS,
            };
            if w.len() >= min && Self::exceeded(&w) {
                self.go(CircuitState::Open, now);
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

fn run_model(kind: Kind, steps: Vec<(u8, u64, u64)>) -> Result<(), TestCaseError> {
    runtime().block_on(async move {
        let b = builder()
            .minimum_calls(MIN_CALLS)
            .slow_call_duration(Duration::from_millis(SLOW_MS))
            .slow_call_rate_threshold(80.0)
            .wait_in_open(Duration::from_millis(WAIT_MS))
            .growing_wait_in_open(2.0, Duration::from_millis(MAX_WAIT_MS))
            .permitted_calls_in_half_open(PERMITTED)
            .max_wait_in_half_open(Duration::from_millis(MAX_HALF_OPEN_MS));
        let b = match kind {
            Kind::Count(n) => b.count_window(n),
            Kind::Time(s) => b.time_window(Duration::from_secs(s)),
        };
        let layer = b.build().unwrap();
        let h = layer.handle();
        let mut svc = layer.layer(inner());
        let mut model = Model::new(kind);
        let mut now = 0u64;
        for (i, (outcome, dur, adv)) in steps.into_iter().enumerate() {
            let admitted = model.acquire(now);
            let r = call(&mut svc, outcome, dur).await;
            prop_assert_eq!(admitted.is_none(), is_open(&r), "step {}: {:?}", i, model);
            if let Some(probe) = admitted {
                now += dur;
                model.record(probe, outcome, dur, now);
            }
            advance(Duration::from_millis(adv)).await;
            now += adv;
            model.expire(now);
            prop_assert_eq!(h.state(), model.state, "step {}: {:?}", i, model);
            if model.state == CircuitState::Open {
                // The open wait counts from the trip (for a half-open max
                // wait, from its end, however late it is noticed).
                let rest = Duration::from_millis(model.open_until.saturating_sub(now));
                prop_assert_eq!(h.retry_after(), Some(rest), "step {}: {:?}", i, model);
            }
            if model.state == CircuitState::Closed {
                let w = model.window(now);
                let m = h.metrics();
                prop_assert_eq!(m.calls as usize, w.len());
                prop_assert_eq!(m.failures as usize, w.iter().filter(|e| e.0).count());
                prop_assert_eq!(m.slow_calls as usize, w.iter().filter(|e| e.1).count());
            }
        }
        Ok(())
    })
}

fn steps() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
    prop::collection::vec(
        (prop_oneof![3 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8)], prop_oneof![Just(0u64), 0..2500u64], 0..2500u64),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn count_window_agrees_with_model(n in 1usize..8, steps in steps()) {
        run_model(Kind::Count(n), steps)?;
    }

    #[test]
    fn time_window_agrees_with_model(secs in 1u64..5, steps in steps()) {
        run_model(Kind::Time(secs), steps)?;
    }

    /// Probe futures dropped at random points never leak their slot: after
    /// the drops, the permitted number of probes can still be admitted and
    /// conclude half-open.
    #[test]
    fn dropped_probes_release_their_slots(drops in prop::collection::vec((any::<bool>(), 0..3u64), 1..20)) {
        runtime().block_on(async move {
            let layer = builder().permitted_calls_in_half_open(3).build().unwrap();
            let h = layer.handle();
            let mut svc = layer.layer(inner());
            h.transition_to_half_open();
            let mut futs = Vec::new();
            for (drop_now, polls) in drops {
                let fut = svc.ready().await.unwrap().call((0, 1000));
                let mut fut = tokio_test::task::spawn(fut);
                for _ in 0..polls {
                    let _ = fut.poll();
                }
                if drop_now {
                    drop(fut);
                } else {
                    futs.push(fut);
                }
                if futs.len() == 3 {
                    futs.clear();
                }
            }
            drop(futs);
            prop_assert_eq!(h.state(), CircuitState::HalfOpen);
            for _ in 0..3 {
                prop_assert!(call(&mut svc, 0, 0).await.is_ok());
            }
            prop_assert_eq!(h.state(), CircuitState::Closed);
            Ok(())
        })?;
    }
}
