use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tokio::time::{advance, sleep};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::*;
use crate::BoxError;

/// (URI sent to, Host header) of each call.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Failing endpoints (by authority) and slow ones (ms); records where calls went.
#[derive(Clone, Default)]
struct Upstreams {
    failing: Arc<Mutex<Vec<String>>>,
    slow_ms: Arc<Mutex<HashMap<String, u64>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    seen: Seen,
}

impl Upstreams {
    fn service(&self) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
        let me = self.clone();
        tower::service_fn(move |req: Request<()>| {
            let me = me.clone();
            async move {
                let auth = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
                let host = req.headers().get(http::header::HOST).map(|h| h.to_str().unwrap().to_owned());
                me.seen.lock().unwrap().push((req.uri().to_string(), host));
                *me.hits.lock().unwrap().entry(auth.clone()).or_default() += 1;
                let slow = me.slow_ms.lock().unwrap().get(&auth).copied();
                if let Some(ms) = slow {
                    sleep(Duration::from_millis(ms)).await;
                }
                if me.failing.lock().unwrap().contains(&auth) {
                    return Err::<Response<()>, BoxError>("connection refused".into());
                }
                Ok(Response::new(()))
            }
        })
    }
    fn hits(&self, a: &str) -> usize {
        self.hits.lock().unwrap().get(a).copied().unwrap_or(0)
    }
    fn reset_hits(&self) {
        self.hits.lock().unwrap().clear();
    }
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn registry3() -> Registry {
    let r = Registry::new();
    r.set_static("orders", ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]).unwrap();
    r
}

#[tokio::test]
async fn rewrites_the_uri_to_an_endpoint_and_keeps_path_query_and_optionally_host() {
    let up = Upstreams::default();
    let mut svc = DiscoveryLayer::new(registry3()).layer(up.service());
    svc.ready().await.unwrap().call(get("http://orders/v1/items?x=1")).await.unwrap();
    let (uri, host) = up.seen.lock().unwrap()[0].clone();
    assert!(uri.starts_with("http://10.0.0."), "{uri}");
    assert!(uri.ends_with(":80/v1/items?x=1"), "{uri}");
    assert_eq!(host, None);

    let mut svc = DiscoveryLayer::builder(registry3()).keep_host(true).build().unwrap().layer(up.service());
    svc.ready().await.unwrap().call(get("https://orders/")).await.unwrap();
    let (uri, host) = up.seen.lock().unwrap()[1].clone();
    assert!(uri.starts_with("https://10.0.0."), "{uri}");
    assert_eq!(host.as_deref(), Some("orders"));
}

#[tokio::test]
async fn fixed_service_name_ignores_the_uri_host() {
    let up = Upstreams::default();
    let mut svc = DiscoveryLayer::builder(registry3()).service("orders").build().unwrap().layer(up.service());
    svc.ready().await.unwrap().call(get("/relative/path")).await.unwrap();
    assert!(up.seen.lock().unwrap()[0].0.ends_with(":80/relative/path"));
}

#[tokio::test]
async fn unknown_empty_and_missing_fail_fast_with_typed_errors() {
    let up = Upstreams::default();
    let registry = registry3();
    registry.register("empty");
    let mut svc = DiscoveryLayer::new(registry).layer(up.service());
    let err = svc.ready().await.unwrap().call(get("http://billing/")).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<DiscoveryError>(), Some(DiscoveryError::UnknownService { .. })));
    let err = svc.ready().await.unwrap().call(get("http://empty/")).await.unwrap_err();
    assert_eq!(err.to_string(), "service `empty` has no endpoints");
    let err = svc.ready().await.unwrap().call(get("/no/authority")).await.unwrap_err();
    assert_eq!(err.downcast_ref::<DiscoveryError>(), Some(&DiscoveryError::MissingAuthority));
    let r = crate::error::error_response(err.as_ref()).unwrap();
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY);
    assert!(up.seen.lock().unwrap().is_empty());
    assert!(Registry::new().set_static("x", ["no-port"]).is_err());
    assert!(Registry::new().set_static("x", ["bad host:1"]).is_err());
}

#[tokio::test]
async fn endpoint_set_changes_are_picked_up_and_stale_is_reported() {
    let up = Upstreams::default();
    let registry = Registry::new();
    registry.set_static("orders", ["10.0.0.1:80"]).unwrap();
    let mut svc = DiscoveryLayer::new(registry.clone()).layer(up.service());
    svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    registry.set_static("orders", ["10.0.0.9:80"]).unwrap();
    svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    assert_eq!((up.hits("10.0.0.1:80"), up.hits("10.0.0.9:80")), (1, 1));
    assert!(!svc.is_stale("orders"));
    registry.mark_stale("orders");
    svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    assert!(svc.is_stale("orders"));
    assert_eq!(up.hits("10.0.0.9:80"), 2, "the last known set keeps serving");
    registry.set_static("orders", Vec::<&str>::new()).unwrap();
    assert!(svc.ready().await.unwrap().call(get("http://orders/")).await.is_err());
}

#[tokio::test]
async fn round_robin_takes_each_endpoint_in_turn() {
    let up = Upstreams::default();
    let mut svc =
        DiscoveryLayer::builder(registry3()).balance(Balance::RoundRobin).build().unwrap().layer(up.service());
    for _ in 0..30 {
        svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(up.hits(&format!("10.0.0.{i}:80")), 10);
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_endpoint_with_lower_peak_ewma_latency() {
    let up = Upstreams::default();
    let registry = Registry::new();
    registry.set_static("orders", ["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
    up.slow_ms.lock().unwrap().insert("10.0.0.2:80".into(), 200);
    let mut svc = DiscoveryLayer::new(registry).layer(up.service());
    // Warm both up: until each has been measured they look alike.
    while up.hits("10.0.0.2:80") == 0 || up.hits("10.0.0.1:80") == 0 {
        svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    }
    up.reset_hits();
    for _ in 0..50 {
        svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    }
    // With two endpoints p2c always compares both: the slow one gets nothing.
    assert_eq!(up.hits("10.0.0.2:80"), 0);
    assert_eq!(up.hits("10.0.0.1:80"), 50);
}

#[tokio::test(start_paused = true)]
async fn failing_endpoint_is_ejected_for_a_growing_time_then_gets_traffic_again() {
    let up = Upstreams::default();
    up.failing.lock().unwrap().push("10.0.0.2:80".into());
    let outlier = OutlierConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
        max_ejection_percent: 50.0,
    };
    let layer = DiscoveryLayer::builder(registry3()).balance(Balance::RoundRobin).outlier(outlier).build().unwrap();
    let mut svc = layer.layer(up.service());
    let mut failures = 0;
    for _ in 0..30 {
        if svc.ready().await.unwrap().call(get("http://orders/")).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "three failures in a row eject it");
    assert_eq!(svc.ejected("orders"), vec!["10.0.0.2:80".parse::<http::uri::Authority>().unwrap()]);

    // Back after 10 s; fails again: the second ejection lasts 20 s.
    advance(Duration::from_secs(11)).await;
    assert!(svc.ejected("orders").is_empty());
    up.reset_hits();
    for _ in 0..30 {
        let _ = svc.ready().await.unwrap().call(get("http://orders/")).await;
    }
    assert_eq!(up.hits("10.0.0.2:80"), 3);
    advance(Duration::from_secs(11)).await;
    assert_eq!(svc.ejected("orders").len(), 1, "second ejection is longer");
    advance(Duration::from_secs(10)).await;
    assert!(svc.ejected("orders").is_empty());

    // Healthy again: it gets its share.
    up.failing.lock().unwrap().clear();
    up.reset_hits();
    for _ in 0..30 {
        svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    }
    assert_eq!(up.hits("10.0.0.2:80"), 10);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_allowed_share_is_ejected() {
    let up = Upstreams::default();
    up.failing.lock().unwrap().extend(["10.0.0.1:80".to_owned(), "10.0.0.2:80".to_owned()]);
    let registry = Registry::new();
    registry.set_static("orders", ["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
    let outlier = OutlierConfig { consecutive_failures: 1, ..OutlierConfig::default() };
    let mut svc = DiscoveryLayer::builder(registry).outlier(outlier).build().unwrap().layer(up.service());
    for _ in 0..20 {
        let _ = svc.ready().await.unwrap().call(get("http://orders/")).await;
    }
    assert_eq!(svc.ejected("orders").len(), 1);
    // A single endpoint is never ejected.
    let registry = Registry::new();
    registry.set_static("solo", ["10.0.0.1:80"]).unwrap();
    let mut svc = DiscoveryLayer::builder(registry).outlier(outlier).build().unwrap().layer(up.service());
    for _ in 0..5 {
        let _ = svc.ready().await.unwrap().call(get("http://solo/")).await;
    }
    assert!(svc.ejected("solo").is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_releases_its_in_flight_count() {
    let up = Upstreams::default();
    up.slow_ms.lock().unwrap().insert("10.0.0.1:80".into(), 1_000);
    let registry = Registry::new();
    registry.set_static("orders", ["10.0.0.1:80"]).unwrap();
    let mut svc = DiscoveryLayer::new(registry).layer(up.service());
    let table = svc.table_for_test("orders");
    let fut = svc.ready().await.unwrap().call(get("http://orders/"));
    assert_eq!(table.in_flight(0), 1);
    drop(fut);
    assert_eq!(table.in_flight(0), 0);
    svc.ready().await.unwrap().call(get("http://orders/")).await.unwrap();
    assert_eq!(table.in_flight(0), 0);
}

#[tokio::test]
async fn feed_changes_sends_inserts_and_removes() {
    use tower::discover::Change;
    let registry = Registry::new();
    registry.set_static("orders", ["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let r = registry.clone();
    let task = tokio::spawn(async move { r.feed_changes("orders", tx, |a| Some(a.to_string())).await });
    let mut inserted = Vec::new();
    for _ in 0..2 {
        match rx.recv().await.unwrap() {
            Change::Insert(k, v) => {
                assert_eq!(k.to_string(), v);
                inserted.push(v)
            }
            Change::Remove(_) => panic!("unexpected remove"),
        }
    }
    inserted.sort();
    assert_eq!(inserted, ["10.0.0.1:80", "10.0.0.2:80"]);
    registry.set_static("orders", ["10.0.0.2:80", "10.0.0.3:80"]).unwrap();
    assert!(matches!(rx.recv().await.unwrap(), Change::Remove(k) if k == "10.0.0.1:80"));
    assert!(matches!(rx.recv().await.unwrap(), Change::Insert(k, _) if k == "10.0.0.3:80"));
    drop(rx);
    task.await.unwrap().unwrap();
}

#[test]
fn outlier_config_is_validated() {
    assert!(OutlierConfig::default().validate().is_ok());
    let bad = OutlierConfig { max_ejection_percent: 120.0, ..OutlierConfig::default() };
    assert!(bad.validate().is_err());
    let bad = OutlierConfig { max_ejection: Duration::from_secs(1), ..OutlierConfig::default() };
    assert!(bad.validate().is_err());
    let cfg: OutlierConfig = serde_json::from_str(r#"{"consecutive_failures": 2, "base_ejection": "5s"}"#).unwrap();
    assert_eq!(cfg.base_ejection, Duration::from_secs(5));
}

proptest! {
    /// Whatever the endpoints' outcomes, at most the allowed share (and never
    /// all) of them is ejected at any time, and every call reaches an endpoint.
    #[test]
    fn ejection_never_exceeds_its_cap(
        n in 1usize..8,
        percent in 0.0f64..=100.0,
        outcomes in proptest::collection::vec((0usize..8, any::<bool>()), 1..200),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let registry = Registry::new();
            let eps: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
            registry.set_static("s", &eps).unwrap();
            let outlier = OutlierConfig { consecutive_failures: 1, max_ejection_percent: percent, ..OutlierConfig::default() };
            let up = Upstreams::default();
            let mut svc = DiscoveryLayer::builder(registry).outlier(outlier).build().unwrap().layer(up.service());
            let allowed = ((n as f64 * percent / 100.0).floor() as usize).min(n - 1);
            for (ep, fail) in outcomes {
                {
                    let mut f = up.failing.lock().unwrap();
                    f.clear();
                    if fail { f.push(eps[ep % n].clone()); }
                }
                let _ = svc.ready().await.unwrap().call(get("http://s/")).await;
                prop_assert!(svc.ejected("s").len() <= allowed);
                advance(Duration::from_millis(500)).await;
            }
            Ok(())
        })?;
    }
}
