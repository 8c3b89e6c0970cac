use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::error::BoxError;

/// An upstream that counts its calls and answers `"answer N"` (N = the
/// call's number) when `gate` lets it (one permit per call), or fails
/// when the path is `/fail`.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Upstream {
    fn new() -> Self {
        Upstream { calls: Arc::default(), gate: Arc::new(tokio::sync::Semaphore::new(0)) }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Upstream {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            if req.uri().path() == "/fail" {
                return Err(BoxError::from("upstream failed"));
            }
            Ok(Response::new(format!("answer {n}")))
        })
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// Spawns a call and waits until it is parked (in flight or waiting).
async fn spawn_call(svc: &Svc, req: Request<()>) -> tokio::task::JoinHandle<Result<Response<String>, BoxError>> {
    let handle = tokio::spawn(svc.clone().oneshot(req));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    handle
}

type KeyFn = fn(&Request<()>) -> Option<HttpKey>;
type Svc = Coalesce<Upstream, HttpKey, KeyFn, Response<String>>;

fn layer() -> (CoalesceLayer<HttpKey, KeyFn, Response<String>>, Upstream, Svc) {
    let layer = CoalesceLayer::new(http_key as KeyFn);
    let up = Upstream::new();
    let svc = layer.layer(up.clone());
    (layer, up, svc)
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_identical_gets_make_one_call() {
    let (layer, up, svc) = layer();
    let mut handles = Vec::new();
    for _ in 0..1_000 {
        handles.push(tokio::spawn(svc.clone().oneshot(get("/menu"))));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(up.calls(), 1);
    up.gate.add_permits(1);
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().body(), "answer 1");
    }
    assert_eq!(up.calls(), 1);
    assert_eq!(layer.in_flight(), 0, "nothing left in flight");
}

#[tokio::test(flavor = "current_thread")]
async fn different_keys_and_unsafe_methods_are_not_shared() {
    let (_layer, up, svc) = layer();
    let a = spawn_call(&svc, get("/a")).await;
    let b = spawn_call(&svc, get("/b")).await;
    let post = spawn_call(&svc, Request::post("/a").body(()).unwrap()).await;
    assert_eq!(up.calls(), 3);
    up.gate.add_permits(3);
    for h in [a, b, post] {
        assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiter_that_goes_away_does_not_disturb_the_others() {
    let (_layer, up, svc) = layer();
    let leader = spawn_call(&svc, get("/menu")).await;
    let quitter = spawn_call(&svc, get("/menu")).await;
    let stayer = spawn_call(&svc, get("/menu")).await;
    quitter.abort();
    assert!(quitter.await.unwrap_err().is_cancelled());
    up.gate.add_permits(1);
    assert_eq!(leader.await.unwrap().unwrap().body(), "answer 1");
    assert_eq!(stayer.await.unwrap().unwrap().body(), "answer 1");
    assert_eq!(up.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn when_the_leader_goes_away_a_waiter_runs_the_call() {
    let (layer, up, svc) = layer();
    let leader = spawn_call(&svc, get("/menu")).await;
    let waiters: Vec<_> = futures::future::join_all((0..3).map(|_| spawn_call(&svc, get("/menu")))).await;
    assert_eq!(up.calls(), 1);
    leader.abort();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(up.calls(), 2, "one waiter took the call over");
    up.gate.add_permits(1);
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().body(), "answer 2");
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_reaches_every_waiter() {
    let (_layer, up, svc) = layer();
    let leader = spawn_call(&svc, get("/fail")).await;
    let waiter = spawn_call(&svc, get("/fail")).await;
    up.gate.add_permits(1);
    for h in [leader, waiter] {
        let err = h.await.unwrap().unwrap_err();
        let shared = err.downcast_ref::<CoalescedError>().expect("a CoalescedError");
        assert_eq!(shared.to_string(), "upstream failed");
        assert!(std::error::Error::source(shared).is_some());
    }
    // Alone, the caller gets its own error as it was.
    let alone = spawn_call(&svc, get("/fail")).await;
    up.gate.add_permits(1);
    let err = alone.await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<CoalescedError>().is_none());
    assert_eq!(err.to_string(), "upstream failed");
}

#[tokio::test(flavor = "current_thread")]
async fn beyond_max_keys_requests_run_alone() {
    let layer = CoalesceLayer::new(http_key as KeyFn).max_keys(1);
    let up = Upstream::new();
    let svc = layer.layer(up.clone());
    let a = spawn_call(&svc, get("/a")).await;
    let b1 = spawn_call(&svc, get("/b")).await;
    let b2 = spawn_call(&svc, get("/b")).await;
    assert_eq!(up.calls(), 3, "/b is not tracked: both run");
    assert_eq!(layer.in_flight(), 1);
    up.gate.add_permits(3);
    for h in [a, b1, b2] {
        h.await.unwrap().unwrap();
    }
    assert_eq!(layer.in_flight(), 0);
}

#[cfg(feature = "stack")] // toml
#[tokio::test(flavor = "current_thread")]
async fn config_makes_an_http_layer() {
    let cfg: CoalesceConfig = toml::from_str("max_keys = 1").unwrap();
    let layer = cfg.http_layer::<(), Response<String>>("menu");
    let up = Upstream::new();
    let svc = layer.layer(up.clone());
    let a = tokio::spawn(svc.clone().oneshot(get("/a")));
    let b = tokio::spawn(svc.clone().oneshot(get("/b")));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.in_flight(), 1, "max_keys = 1");
    up.gate.add_permits(2);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(CoalesceConfig::default().max_keys, 10_000);
    assert!(toml::from_str::<CoalesceConfig>("max = 1").is_err());
}

#[test]
fn http_keys_differ_in_every_part() {
    let key = |method: &str, uri: &str| http_key(&Request::builder().method(method).uri(uri).body(()).unwrap());
    let a = key("GET", "http://a.example/menu?x=1").unwrap();
    assert_eq!(Some(a.clone()), key("GET", "http://a.example/menu?x=1"));
    for other in [
        key("HEAD", "http://a.example/menu?x=1"),
        key("GET", "https://a.example/menu?x=1"),
        key("GET", "http://b.example/menu?x=1"),
        key("GET", "http://a.example/menu?x=2"),
        key("GET", "/menu?x=1"),
    ] {
        assert_ne!(Some(a.clone()), other);
    }
    assert_eq!(key("PUT", "/menu"), None);
    assert_eq!(a.method(), http::Method::GET);
    assert_eq!(a.uri().path(), "/menu");
}

/// A key whose hash is the same for every path: the table must tell keys
/// of equal hash apart by comparing them, and end each flight by its own
/// identity.
#[derive(PartialEq, Eq)]
struct SameHash(String);

impl std::hash::Hash for SameHash {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

#[tokio::test(flavor = "current_thread")]
async fn keys_of_equal_hash_are_not_merged() {
    type SameHashFn = fn(&Request<()>) -> Option<SameHash>;
    let key: SameHashFn = |req| Some(SameHash(req.uri().path().to_owned()));
    let layer = CoalesceLayer::new(key);
    let up = Upstream::new();
    let svc = layer.layer(up.clone());
    let call = |path: &str| tokio::spawn(svc.clone().oneshot(get(path)));
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    let (a, b) = (call("/a"), call("/b"));
    settle().await;
    let a2 = call("/a");
    settle().await;
    assert_eq!(up.calls(), 2, "/a and /b run apart; the second /a waits for the first");
    assert_eq!(layer.in_flight(), 2);
    up.gate.add_permits(1); // /a's call, the first to wait on the gate
    assert_eq!(a.await.unwrap().unwrap().body(), "answer 1");
    assert_eq!(a2.await.unwrap().unwrap().body(), "answer 1");
    assert_eq!(layer.in_flight(), 1, "/a's end removed its own entry, not /b's");
    let b2 = call("/b");
    settle().await;
    assert_eq!(up.calls(), 2, "a later /b still finds /b's call");
    up.gate.add_permits(1);
    assert_eq!(b.await.unwrap().unwrap().body(), "answer 2");
    assert_eq!(b2.await.unwrap().unwrap().body(), "answer 2");
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_leader_that_goes_away_unwaited_ends_its_flight() {
    let (layer, up, svc) = layer();
    let leader = spawn_call(&svc, get("/menu")).await;
    assert_eq!(layer.in_flight(), 1);
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(layer.in_flight(), 0);
    let next = spawn_call(&svc, get("/menu")).await;
    assert_eq!(up.calls(), 2, "the next request runs a call of its own");
    up.gate.add_permits(1);
    assert_eq!(next.await.unwrap().unwrap().body(), "answer 2");
}

#[tokio::test(flavor = "current_thread")]
async fn a_leader_that_goes_away_after_its_waiters_ends_its_flight() {
    let (layer, up, svc) = layer();
    let leader = spawn_call(&svc, get("/menu")).await;
    let waiter = spawn_call(&svc, get("/menu")).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!((layer.in_flight(), up.calls()), (0, 1), "nobody took the call over");
}

#[tokio::test(flavor = "current_thread")]
async fn a_key_bound_slot_frees_when_its_call_ends() {
    let layer = CoalesceLayer::new(http_key as KeyFn).max_keys(1);
    let up = Upstream::new();
    let svc = layer.layer(up.clone());
    let a = spawn_call(&svc, get("/a")).await;
    up.gate.add_permits(1);
    a.await.unwrap().unwrap();
    let b1 = spawn_call(&svc, get("/b")).await;
    let b2 = spawn_call(&svc, get("/b")).await;
    assert_eq!((up.calls(), layer.in_flight()), (2, 1), "/a's slot went to /b, whose calls are shared");
    up.gate.add_permits(1);
    for h in [b1, b2] {
        assert_eq!(h.await.unwrap().unwrap().body(), "answer 2");
    }
    assert_eq!(layer.in_flight(), 0);
}
