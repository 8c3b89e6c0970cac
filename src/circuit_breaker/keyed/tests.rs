use std::collections::BTreeSet;

use metrics_util::debugging::DebuggingRecorder;
use tower::ServiceExt;

use super::*;
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};

/// A request: its key and whether the call fails.
type Req = (String, bool);

fn inner() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|(_, fail): Req| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    })
}

fn req(key: &str, fail: bool) -> Req {
    (key.to_owned(), fail)
}

#[tokio::test(start_paused = true)]
async fn twenty_thousand_keys_leave_bounded_entries_and_metric_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = CircuitBreakerLayer::builder()
        .name("keys")
        .key(|r: &Req| r.0.clone())
        .max_keys(100)
        .metric_keys(["vip"])
        .metric_key_buckets(8)
        .build()
        .unwrap();
    let registry = layer.registry();
    let svc = layer.layer(inner());
    for i in 0..20_000 {
        // Every tenth call fails, so the breakers record all outcomes.
        svc.clone().oneshot(req(&format!("attacker-{i}"), i % 10 == 0)).await.ok();
        if i % 1000 == 0 {
            svc.clone().oneshot(req("vip", false)).await.unwrap();
        }
    }
    assert!(registry.len() <= 100, "{} keys live", registry.len());
    assert_eq!(registry.max_keys(), 100);
    assert!(registry.state(&"attacker-19999".to_owned()).is_some(), "the newest key is kept");

    let snapshot = snapshotter.snapshot().into_vec();
    let ours: Vec<_> = snapshot
        .iter()
        .map(|(k, ..)| k.key())
        .filter(|k| k.labels().any(|l| l.key() == "service" && l.value() == "keys"))
        .collect();
    let key_labels: BTreeSet<_> =
        ours.iter().flat_map(|k| k.labels()).filter(|l| l.key() == "key").map(|l| l.value().to_owned()).collect();
    // The listed key, at most 8 buckets (and no overflow: closed keys are evicted).
    assert!(key_labels.contains("\"vip\""), "{key_labels:?}");
    assert!(key_labels.iter().all(|l| l == "\"vip\"" || l.starts_with("bucket-")), "{key_labels:?}");
    assert!(key_labels.len() <= 9, "{key_labels:?}");
    // Per label value: 4 call outcomes, slow calls, state, duration and a
    // few transitions; plus the registry's own 4 series.
    assert!(ours.len() <= 9 * 12 + 4, "{} series", ours.len());
}

#[tokio::test(start_paused = true)]
async fn a_full_registry_evicts_the_least_recently_used_closed_key() {
    let layer = CircuitBreakerLayer::builder().key(|r: &Req| r.0.clone()).max_keys(3).build().unwrap();
    let registry = layer.registry();
    let svc = layer.layer(inner());
    for k in ["a", "b", "c", "a"] {
        svc.clone().oneshot(req(k, false)).await.unwrap();
    }
    // Least recently used first: b, c, a.
    svc.clone().oneshot(req("d", false)).await.unwrap();
    let mut keys: Vec<_> = registry.keys().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["a", "c", "d"]);
    assert!(registry.overflow_breaker().is_none());
    assert!(CircuitBreakerLayer::builder().key(|r: &u32| *r).max_keys(0).build::<u32>().is_err());
}

#[tokio::test(start_paused = true)]
async fn open_breakers_are_kept_and_later_keys_share_the_overflow_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .name("api")
        .count_window(2)
        .minimum_calls(2)
        .key(|r: &Req| r.0.clone())
        .max_keys(2)
        .build()
        .unwrap();
    let registry = layer.registry();
    let svc = layer.layer(inner());
    for k in ["a", "a", "b", "b"] {
        assert!(svc.clone().oneshot(req(k, true)).await.is_err());
    }
    assert_eq!(registry.state(&"a".to_owned()), Some(CircuitState::Open));
    assert_eq!(registry.state(&"b".to_owned()), Some(CircuitState::Open));
    // Full of open breakers: flooding new keys must not evict (close) them.
    assert!(svc.clone().oneshot(req("c", true)).await.is_err());
    assert!(svc.clone().oneshot(req("d", true)).await.is_err());
    assert_eq!(registry.len(), 2);
    assert_eq!(registry.state(&"a".to_owned()), Some(CircuitState::Open));
    assert_eq!(registry.state(&"c".to_owned()), None);
    // c and d failed on one shared breaker, which is now open for e too.
    let overflow = registry.overflow_breaker().unwrap();
    assert_eq!(overflow.state(), CircuitState::Open);
    let err = svc.clone().oneshot(req("e", false)).await.unwrap_err();
    assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().name(), "api[overflow]");
    // A known key still uses its own breaker.
    let err = svc.clone().oneshot(req("a", false)).await.unwrap_err();
    assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().name(), "api[\"a\"]");
}

proptest::proptest! {
    /// Whatever the calls: never more than `max_keys` keys; an open
    /// breaker is never evicted to make room; a key just called either
    /// has its breaker or uses the overflow breaker.
    #[test]
    fn registry_stays_bounded_and_keeps_open_breakers(
        max_keys in 1usize..6,
        calls in proptest::collection::vec((0u8..12, proptest::bool::ANY), 1..200),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let layer = CircuitBreakerLayer::builder()
                .count_window(2)
                .minimum_calls(2)
                .key(|r: &Req| r.0.clone())
                .max_keys(max_keys)
                .build()
                .unwrap();
            let registry = layer.registry();
            let svc = layer.layer(inner());
            let mut open = HashSet::new();
            for (k, fail) in calls {
                let key = format!("k{k}");
                let _ = svc.clone().oneshot(req(&key, fail)).await;
                assert!(registry.len() <= max_keys);
                assert!(registry.state(&key).is_some() || registry.overflow_breaker().is_some());
                for o in &open {
                    assert_eq!(registry.state(o), Some(CircuitState::Open), "{o} evicted or closed");
                }
                if registry.state(&key) == Some(CircuitState::Open) {
                    open.insert(key);
                }
            }
        });
    }
}

#[test]
fn unlisted_keys_get_a_bucket_or_other() {
    let labels = KeyLabels { listed: ["\"vip\"".to_owned()].into(), buckets: 4 };
    assert_eq!(labels.label("\"vip\"".into()), "\"vip\"");
    let buckets: BTreeSet<_> = (0..1000).map(|i| labels.label(format!("k{i}"))).collect();
    assert_eq!(buckets.len(), 4, "{buckets:?}");
    assert_eq!(labels.label("k1".into()), labels.label("k1".into()), "stable");
    let other = KeyLabels { listed: HashSet::new(), buckets: 0 };
    assert_eq!(other.label("k1".into()), "other");
}
