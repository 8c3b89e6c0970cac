//! The hedge, fallback and coalescing layers in the configured client stack.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

use super::*;
use crate::config::ConfigError;

/// The field of a validation error.
fn field(e: &StackError) -> &'static str {
    match e {
        StackError::Invalid { source: ConfigError::Conflict { field, .. }, .. }
        | StackError::Invalid { source: ConfigError::OutOfRange { field, .. }, .. }
        | StackError::Invalid { source: ConfigError::Zero { field }, .. } => field,
        other => panic!("not a validation error: {other:?}"),
    }
}

fn client(toml: &str) -> Result<ClientConfig, StackError> {
    MeshConfig::from_toml_str(&format!("preset = \"testing\"\n[client.orders]\n{toml}"))?.client("orders")
}

#[test]
fn presets_leave_hedge_fallback_and_coalesce_off() {
    for p in [Preset::Development, Preset::Testing, Preset::Production] {
        let cfg = ClientConfig::preset(p);
        #[cfg(feature = "hedge")]
        assert!(cfg.hedge.is_none(), "{p}");
        #[cfg(feature = "fallback")]
        assert!(cfg.fallback.is_none(), "{p}");
        #[cfg(feature = "coalesce")]
        assert!(cfg.coalesce.is_none(), "{p}");
        // So the plain stacks build from every preset.
        cfg.http_stack().unwrap();
    }
}

#[cfg(feature = "hedge")]
#[test]
fn hedge_sections_are_read_and_checked() {
    use crate::hedge::{DelaySpec, HedgeConfig};

    let on = client("hedge = true").unwrap().hedge.unwrap();
    assert_eq!(on, HedgeConfig::default());
    assert_eq!((on.delay, on.max, on.budget, on.min_samples), (DelaySpec::Percentile(95.0), 1, 0.05, 100));
    let h = client("hedge = { delay = \"p99\", min_samples = 20 }").unwrap().hedge.unwrap();
    assert_eq!((h.delay, h.min_samples, h.max), (DelaySpec::Percentile(99.0), 20, 1));
    let h = client("hedge = { delay = \"10ms\", max = 2, budget = 0.1 }").unwrap().hedge.unwrap();
    assert_eq!((h.delay, h.max, h.budget), (DelaySpec::Fixed(Duration::from_millis(10)), 2, 0.1));
    // From the environment too.
    let cfg = MeshConfig::from_vars([("TOWER_MESH__CLIENT__A__HEDGE__DELAY", "25ms")]).unwrap();
    assert_eq!(cfg.client("a").unwrap().hedge.unwrap().delay, DelaySpec::Fixed(Duration::from_millis(25)));

    // Typed errors, naming the field.
    assert_eq!(field(&client("hedge = { budget = 1.5 }").unwrap_err()), "hedge.budget");
    assert_eq!(field(&client("hedge = { max = 0 }").unwrap_err()), "hedge.max");
    assert_eq!(field(&client("hedge = { delay = \"p150\" }").unwrap_err()), "hedge.delay");
    assert_eq!(field(&client("hedge = { delay = \"0ms\" }").unwrap_err()), "hedge.delay");
    assert_eq!(field(&client("hedge = { delay = \"p95\", window = \"0s\" }").unwrap_err()), "hedge.window");
    // The testing preset's attempt timeout is 2 s, the total 5 s.
    let e = client("hedge = { delay = \"3s\" }").unwrap_err();
    assert!(
        matches!(
            e,
            StackError::Invalid {
                source: ConfigError::Conflict { field: "hedge.delay", other: "timeout.attempt", .. },
                ..
            }
        ),
        "{e:?}"
    );
    let mut cfg = ClientConfig::preset(Preset::Testing);
    cfg.timeout.attempt = None;
    cfg.hedge = Some(HedgeConfig { delay: DelaySpec::Fixed(Duration::from_secs(6)), ..HedgeConfig::default() });
    let e = cfg.validate().unwrap_err();
    assert!(matches!(e, ConfigError::Conflict { field: "hedge.delay", other: "timeout.total", .. }), "{e:?}");
    let e = client("hedge = { delay = \"soon\" }").unwrap_err();
    assert!(matches!(&e, StackError::Section { service, .. } if service == "orders"), "{e:?}");
}

#[cfg(feature = "fallback")]
#[test]
fn fallback_sections_are_read_and_checked() {
    let f = client("fallback = true").unwrap().fallback.unwrap();
    assert!(f.stale && f.answer.is_none());
    let f = client("fallback = { on = \"rejections\", stale = false, answer = { status = 503, body = \"[]\" } }")
        .unwrap()
        .fallback
        .unwrap();
    assert_eq!(f.on, crate::fallback::Trigger::Rejections);
    assert_eq!(f.answer.unwrap().status, Some(503));

    assert_eq!(field(&client("fallback = { stale = false }").unwrap_err()), "fallback.stale");
    assert_eq!(field(&client("fallback = { ttl = \"0s\" }").unwrap_err()), "fallback.ttl");
    assert_eq!(field(&client("fallback = { header = \"bad header\" }").unwrap_err()), "fallback.header");
    assert_eq!(field(&client("fallback = { answer = { status = 1000 } }").unwrap_err()), "fallback.answer.status");
    let bad_value = "fallback = { answer = { headers = { x-a = \"line\\nbreak\" } } }";
    assert_eq!(field(&client(bad_value).unwrap_err()), "fallback.answer.headers");
    let e = client("fallback = { capacity = 0 }").unwrap_err();
    assert!(matches!(e, StackError::Section { .. }), "{e:?}");

    // It keeps responses: not in a stack without a buffered body.
    let cfg = client("fallback = true").unwrap();
    let e = cfg.http_stack().unwrap_err();
    assert!(matches!(e, StackError::NeedsBufferedBody { layer: "fallback", .. }), "{e:?}");
    assert!(e.to_string().contains("buffered_http_stack"), "{e}");
    cfg.buffered_http_stack::<Full<Bytes>, Full<Bytes>>().unwrap();
}

#[cfg(feature = "coalesce")]
#[test]
fn coalesce_sections_are_read_and_checked() {
    assert_eq!(client("coalesce = true").unwrap().coalesce.unwrap().max_keys, 10_000);
    assert_eq!(client("coalesce = { max_keys = 50 }").unwrap().coalesce.unwrap().max_keys, 50);
    assert_eq!(field(&client("coalesce = { max_keys = 0 }").unwrap_err()), "coalesce.max_keys");
    let cfg = client("coalesce = true").unwrap();
    let e = cfg.grpc_stack().unwrap_err();
    assert!(matches!(e, StackError::NeedsBufferedBody { layer: "coalesce", .. }), "{e:?}");
}

type Body = Full<Bytes>;

fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://orders{path}")).body(Body::default()).unwrap()
}

async fn text(res: Response<Body>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[cfg(feature = "hedge")]
#[tokio::test(start_paused = true)]
async fn the_stacks_hedge_sends_a_second_attempt_after_the_delay() {
    let stack = client("hedge = { delay = \"50ms\", budget = 1.0 }").unwrap().http_stack().unwrap();
    assert_eq!(stack.hedge().unwrap().current_delay(), Some(Duration::from_millis(50)));
    let breaker = stack.breaker().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // The first attempt of each call hangs for a second; a copy answers at once.
    let svc = ServiceBuilder::new().layer(stack).service_fn(move |req: Request<Body>| {
        let first = c.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) || req.method() == http::Method::POST;
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }
    });
    let start = Instant::now();
    let res = svc.clone().oneshot(get("/menu")).await.unwrap();
    assert_eq!(text(res).await, "ok");
    assert_eq!(start.elapsed(), Duration::from_millis(50), "the hedge's answer, not the first attempt's");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The loser was dropped: cancelled, not a failure for the breaker.
    assert_eq!(breaker.metrics().failures, 0);

    // A POST is not safe to send twice: never hedged.
    calls.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let post = Request::post("http://orders/pay").body(Body::default()).unwrap();
    svc.clone().oneshot(post).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "fallback")]
#[tokio::test(start_paused = true)]
async fn the_stacks_fallback_answers_a_static_response_when_the_breaker_is_open() {
    use crate::fallback::{FallbackReason, ServedByFallback};

    let cfg = client(
        "retry = false\nfallback = { on = \"rejections\", stale = false, header = \"x-mesh-fallback\", \
         answer = { status = 200, body = \"[]\", headers = { content-type = \"application/json\" } } }",
    )
    .unwrap();
    let stack = cfg.buffered_http_stack().unwrap();
    let breaker = stack.breaker().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new().layer(stack).service_fn(move |_req: Request<Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::builder().status(503).body(Body::from("down")).unwrap()) }
    });
    // Failures are not covered (`on = "rejections"`): the caller sees them,
    // and the breaker (testing preset: 2 calls) opens.
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/menu")).await.unwrap();
        assert_eq!(res.status(), 503);
        assert!(res.extensions().get::<ServedByFallback>().is_none());
    }
    assert_eq!(breaker.state(), crate::circuit_breaker::CircuitState::Open);
    // Open: the rejection is answered with the configured response.
    let res = svc.clone().oneshot(get("/menu")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["x-mesh-fallback"], "rejected");
    assert_eq!(res.extensions().get::<ServedByFallback>(), Some(&ServedByFallback(FallbackReason::Rejected)));
    assert_eq!(text(res).await, "[]");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the open breaker kept the call from the service");
}

#[cfg(feature = "fallback")]
#[tokio::test(start_paused = true)]
async fn the_stacks_fallback_answers_the_last_good_response_first() {
    let cfg = client("retry = false\nfallback = { answer = { status = 503, body = \"none\" } }").unwrap();
    let stack = cfg.buffered_http_stack().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new().layer(stack).service_fn(move |req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let res = match n {
                0 => Response::new(Body::from(format!("menu of {}", req.uri().path()))),
                _ => Response::builder().status(500).body(Body::default()).unwrap(),
            };
            Ok::<_, Infallible>(res)
        }
    });
    assert_eq!(text(svc.clone().oneshot(get("/menu")).await.unwrap()).await, "menu of /menu");
    // The same GET fails: the stale answer; another one: the fixed answer.
    assert_eq!(text(svc.clone().oneshot(get("/menu")).await.unwrap()).await, "menu of /menu");
    let res = svc.clone().oneshot(get("/drinks")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(text(res).await, "none");
}

#[cfg(feature = "coalesce")]
#[tokio::test(start_paused = true)]
async fn the_stacks_coalescing_merges_identical_gets_in_flight() {
    let stack = client("coalesce = true").unwrap().buffered_http_stack().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new().layer(stack).service_fn(move |req: Request<Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(Response::new(Body::from(format!("{} {}", req.method(), req.uri().path()))))
        }
    });
    let call = |req| svc.clone().oneshot(req);
    let post = Request::post("http://orders/menu").body(Body::default()).unwrap();
    let (a, b, c2, other, post) =
        tokio::join!(call(get("/menu")), call(get("/menu")), call(get("/menu")), call(get("/drinks")), call(post));
    for res in [a, b, c2] {
        assert_eq!(text(res.unwrap()).await, "GET /menu");
    }
    assert_eq!(text(other.unwrap()).await, "GET /drinks");
    assert_eq!(text(post.unwrap()).await, "POST /menu");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call for the three GETs of /menu");
}
