//! A short chaos drill, in process and in paused time: the production stack
//! keeps its promises while the upstream fails in every way the drill has.

#[path = "../examples/chaos_drill/drill.rs"]
mod drill;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::util::BoxCloneService;
use tower_mesh::circuit_breaker::CircuitState;

#[tokio::test(start_paused = true)]
async fn the_production_stack_keeps_its_promises_through_the_drill() {
    let phases = drill::phases();
    let upstream = drill::Upstream::new(&phases);
    let transport: drill::Client = BoxCloneService::new(upstream.clone());
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let stack = drill::production_stack(transport.clone(), upstream.clone(), transitions.clone());
    let phase_len = Duration::from_secs(3);
    let with_stack = drill::drive(stack, &upstream, phases.len(), phase_len, 8, Duration::from_millis(10)).await;
    let bare = drill::drive(transport, &upstream, phases.len(), phase_len, 8, Duration::from_millis(10)).await;
    drill::print(&phases, &with_stack, &bare);
    let transitions = transitions.lock().unwrap().clone();
    println!("{transitions:?}");

    for (phase, report) in phases.iter().zip(&with_stack) {
        assert!(report.calls > 50, "{}: {report:?}", phase.name);
        assert_eq!(report.hung, 0, "{}: every call through the stack ends", phase.name);
        // Paused time: the tokio clock, not the machine's, measures calls.
        assert!(report.max() <= drill::TOTAL_TIMEOUT, "{}: a call waited {:?}", phase.name, report.max());
    }
    let (errors, black_hole, healthy_again) = (&with_stack[1], &with_stack[3], &with_stack[4]);
    assert!(errors.success_rate() >= 0.99, "30 % errors: {errors:?}");
    assert!(bare[1].success_rate() < 0.8, "bare, the errors reach the callers: {:?}", bare[1]);
    assert!(black_hole.fallbacks > 0 && black_hole.success_rate() >= 0.99, "black hole: {black_hole:?}");
    assert!(bare[3].hung > 0, "bare, black-holed calls never end");
    assert!(
        transitions.iter().any(|&(phase, _, to)| phase == 3 && to == CircuitState::Open),
        "the breaker opens during the black hole: {transitions:?}"
    );
    assert_eq!(
        transitions.iter().rev().find(|&&(phase, ..)| phase >= 3).map(|&(phase, _, to)| (phase, to)),
        Some((4, CircuitState::Closed)),
        "the breaker closes after the black hole: {transitions:?}"
    );
    // The breaker is still open for a moment: fallbacks, then good answers.
    assert!(healthy_again.success_rate() >= 0.99, "healthy again: {healthy_again:?}");
    assert!(healthy_again.ok as f64 / healthy_again.calls as f64 > 0.5, "healthy again: {healthy_again:?}");
}
