//! The resilience stack around a real hyper-util client, against a real hyper
//! server on 127.0.0.1 that fails and slows down on demand.

#![cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::upstream::{Mode, Upstream};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower_mesh::classify::HttpClassifier;
use tower_mesh::error::ServerErrorLayer;
use tower_mesh::retry::{Backoff, Jitter, RetryLayer};
use tower_mesh::timeout::{Elapsed, TimeoutLayer};
use tower_mesh::BoxError;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http()
}

fn get(up: &Upstream) -> Request<Full<Bytes>> {
    Request::get(up.uri("/items")).body(Full::new(Bytes::new())).unwrap()
}

async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    svc.ready().await.map_err(Into::into)?.call(req).await.map_err(Into::into)
}

#[tokio::test]
async fn breaker_opens_at_threshold_and_recovers_through_half_open() {
    let up = Upstream::start().await;
    let layer = CircuitBreakerLayer::builder()
        .name("orders")
        .count_window(10)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_millis(300))
        .permitted_calls_in_half_open(3)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(client());

    // 4 successes, then failures: the window of 10 reaches 6/10 = 60 % failed.
    for _ in 0..4 {
        assert_eq!(send(&mut svc, get(&up)).await.unwrap().status(), 200);
    }
    up.control.set(Mode::Status(500));
    for i in 0..6 {
        assert_eq!(handle.state(), CircuitState::Closed, "call {i}");
        assert_eq!(send(&mut svc, get(&up)).await.unwrap().status(), 500);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(up.control.requests(), 10);

    // Open: rejected without reaching the upstream, with a hint when to come back.
    let err = send(&mut svc, get(&up)).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    let after = open.retry_after().expect("retry_after");
    assert!(after <= Duration::from_millis(300), "{after:?}");
    assert_eq!(up.control.requests(), 10);

    // The upstream heals; after the wait the breaker lets 3 probes through and closes.
    up.control.set(Mode::Healthy);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        assert_eq!(send(&mut svc, get(&up)).await.unwrap().status(), 200);
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(up.control.requests(), 13);
}

#[tokio::test]
async fn half_open_failure_reopens() {
    let up = Upstream::start().await;
    up.control.set(Mode::Status(503));
    let layer = CircuitBreakerLayer::builder()
        .count_window(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_millis(100))
        .permitted_calls_in_half_open(2)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(client());
    for _ in 0..4 {
        send(&mut svc, get(&up)).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..2 {
        assert_eq!(send(&mut svc, get(&up)).await.unwrap().status(), 503);
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test]
async fn retry_honours_retry_after() {
    let up = Upstream::start().await;
    up.control.set(Mode::RetryAfterOnce(1));
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(
                    Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(5)).jitter(Jitter::None),
                )
                .classifier(HttpClassifier::new())
                .http()
                .build()
                .unwrap(),
        )
        .service(client());
    let res = send(&mut svc, get(&up)).await.unwrap();
    assert_eq!(res.status(), 200);
    let arrivals = up.control.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    // The server asked for one second; the 10 ms backoff must not have been used.
    assert!(arrivals[1] - arrivals[0] >= Duration::from_secs(1), "{:?}", arrivals[1] - arrivals[0]);
}

#[tokio::test]
async fn retry_does_not_repeat_non_idempotent_requests() {
    let up = Upstream::start().await;
    up.control.set(Mode::Status(503));
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_retries(3)
                .backoff(Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(10)))
                .classifier(HttpClassifier::new())
                .http()
                .build()
                .unwrap(),
        )
        .service(client());
    let post = Request::post(up.uri("/orders")).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    assert_eq!(send(&mut svc, post).await.unwrap().status(), 503);
    assert_eq!(up.control.requests(), 1);
    assert_eq!(send(&mut svc, get(&up)).await.unwrap().status(), 503);
    assert_eq!(up.control.requests(), 1 + 4);
}

#[tokio::test]
async fn bulkhead_of_10_never_exceeds_10_in_flight() {
    let up = Upstream::start().await;
    up.control.set_delay(Duration::from_millis(2));
    let layer = BulkheadLayer::builder()
        .name("inventory")
        .max_concurrent_calls(10)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(client());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            let req = get(&up);
            tokio::spawn(async move { svc.oneshot(req).await.map(|r| r.status()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(up.control.requests(), 1000);
    assert!(up.control.max_in_flight() <= 10, "max in flight {}", up.control.max_in_flight());
    assert!(up.control.max_in_flight() >= 2, "the test did not run concurrently");
}

#[tokio::test]
async fn bulkhead_without_wait_rejects_at_once() {
    let up = Upstream::start().await;
    up.control.set_delay(Duration::from_millis(200));
    let svc = ServiceBuilder::new().layer(BulkheadLayer::new(2)).service(client());
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (svc, req) = (svc.clone(), get(&up));
            tokio::spawn(async move { svc.oneshot(req).await })
        })
        .collect();
    // Let the two calls take their permits.
    while up.control.in_flight.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = svc.clone().oneshot(get(&up)).await.unwrap_err();
    assert!(err.downcast_ref::<BulkheadFull>().is_some(), "{err}");
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(up.control.requests(), 2);
}

#[tokio::test]
async fn whole_stack_times_out_a_slow_upstream() {
    let up = Upstream::start().await;
    up.control.set_delay(Duration::from_millis(500));
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(100)))
        .layer(
            RetryLayer::builder()
                .max_retries(5)
                .backoff(Backoff::exponential(Duration::from_millis(20), 2.0, Duration::from_secs(1)))
                .classifier(HttpClassifier::new())
                .http()
                .build()
                .unwrap(),
        )
        .layer(TimeoutLayer::per_attempt(Duration::from_millis(40)))
        .layer(CircuitBreakerLayer::builder().classifier(HttpClassifier::new()).build().unwrap())
        .layer(BulkheadLayer::new(16))
        .service(client());
    let err = send(&mut svc, get(&up)).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    // Each attempt was cut at 40 ms; the total of 100 ms allows at most 3 attempts.
    let n = up.control.requests();
    assert!((1..=3).contains(&n), "{n} attempts");

    up.control.set_delay(Duration::ZERO);
    let res = send(&mut svc, get(&up)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
}

/// Server side: the stack protects a hyper server, and the errors become the
/// right statuses for its clients.
#[tokio::test]
async fn server_maps_open_breaker_to_503_with_retry_after() {
    let breaker = CircuitBreakerLayer::builder()
        .count_window(2)
        .minimum_calls(2)
        .wait_in_open(Duration::from_secs(30))
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = ServiceBuilder::new().layer(ServerErrorLayer::new()).layer(breaker).service_fn(
        |_req: Request<Incoming>| async {
            Ok::<_, BoxError>(Response::builder().status(500).body(Full::new(Bytes::new())).unwrap())
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    let client = Arc::new(client());
    let uri = format!("http://{addr}/");
    for _ in 0..2 {
        let res = client.request(Request::get(&uri).body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(res.status(), 500);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let res = client.request(Request::get(&uri).body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let secs: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&secs), "{secs}");
    server.abort();
}

/// A stack loaded from TOML with a hedge, a fallback and coalescing, around
/// a hyper-util client whose response bodies are buffered (with a cap).
#[cfg(all(feature = "stack", feature = "hedge", feature = "fallback", feature = "coalesce"))]
#[tokio::test]
async fn configured_stack_hedges_coalesces_and_falls_back_against_a_real_upstream() {
    use http_body_util::Limited;
    use tower_mesh::fallback::ServedByFallback;
    use tower_mesh::stack::MeshConfig;

    let cfg = MeshConfig::from_toml_str(
        r#"
        preset = "testing"
        [client.items]
        retry = { max_retries = 1 }
        hedge = { delay = "50ms", max = 1, budget = 1.0 }
        coalesce = { max_keys = 100 }
        fallback = { on = "both", ttl = "60s", header = "x-mesh-fallback", answer = { status = 200, body = "default" } }
        "#,
    )
    .unwrap();
    let stack = cfg.client("items").unwrap().buffered_http_stack().unwrap();
    let http = client();
    let buffered = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let http = http.clone();
        async move {
            let (parts, body) = http.request(req).await?.into_parts();
            let bytes = Limited::new(body, 1 << 20).collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, Full::new(bytes)))
        }
    });
    let svc = ServiceBuilder::new().layer(stack).service(buffered);
    let up = Upstream::start().await;
    let body = |res: Response<Full<Bytes>>| async move { res.into_body().collect().await.unwrap().to_bytes() };

    // Five identical GETs in flight while the upstream is slow: one shared
    // call, hedged once (its first request has not answered after 50 ms).
    up.control.set_delay(Duration::from_millis(300));
    let call = || svc.clone().oneshot(get(&up));
    let (a, b, c, d, e) = tokio::join!(call(), call(), call(), call(), call());
    for res in [a, b, c, d, e] {
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.extensions().get::<ServedByFallback>().is_none());
        assert_eq!(body(res).await, "ok");
    }
    assert_eq!(up.control.requests(), 2, "one coalesced call and its hedge");

    // The upstream fails: the last good answer to the same GET, then the
    // fixed answer for a GET never answered.
    up.control.set_delay(Duration::ZERO);
    up.control.set(Mode::Status(500));
    let res = svc.clone().oneshot(get(&up)).await.unwrap();
    assert!(res.headers().contains_key("x-mesh-fallback"), "{:?}", res.headers());
    assert!(res.extensions().get::<ServedByFallback>().is_some());
    assert_eq!(body(res).await, "ok");
    let other = Request::get(up.uri("/other")).body(Full::new(Bytes::new())).unwrap();
    let res = svc.clone().oneshot(other).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-mesh-fallback"));
    assert_eq!(body(res).await, "default");
}
