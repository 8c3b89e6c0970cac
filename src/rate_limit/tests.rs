use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;
use tower_test::mock;

use super::*;
use crate::error::{error_response, MeshError};
use crate::BoxError;

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn limited(e: BoxError) -> RateLimited {
    e.downcast::<RateLimited>().map(|b| *b).expect("a RateLimited")
}

type Echo = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, Infallible>>>;

fn echo() -> Echo {
    service_fn((|n| std::future::ready(Ok(n))) as fn(u32) -> _)
}

async fn call<S: Service<u32, Response = u32, Error = BoxError>>(svc: &mut S, n: u32) -> Result<u32, BoxError> {
    svc.ready().await?.call(n).await
}

#[tokio::test(start_paused = true)]
async fn burst_then_steady_rate_with_exact_retry_after() {
    let mut svc = RateLimitLayer::new(rate("10/s"), 3).layer(echo());
    for n in 0..3 {
        assert_eq!(call(&mut svc, n).await.unwrap(), n, "the burst is admitted at once");
    }
    let e = limited(call(&mut svc, 3).await.unwrap_err());
    assert_eq!(e.retry_after(), Duration::from_millis(100), "one interval until the next permit");
    assert_eq!(e.reason(), Reason::OverLimit);
    assert_eq!(e.policy(), Policy::new(rate("10/s"), 3));

    tokio::time::advance(Duration::from_millis(40)).await;
    let e = limited(call(&mut svc, 3).await.unwrap_err());
    assert_eq!(e.retry_after(), Duration::from_millis(60), "Retry-After counts down with the clock");

    // Steady state: one call per 100 ms, never two.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(60)).await;
        call(&mut svc, 0).await.unwrap();
        assert!(call(&mut svc, 0).await.is_err());
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(call(&mut svc, 0).await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn refill_after_idle_is_capped_at_the_burst() {
    let layer = RateLimitLayer::new(rate("100/s"), 5);
    let mut svc = layer.layer(echo());
    for _ in 0..5 {
        call(&mut svc, 0).await.unwrap();
    }
    assert!(call(&mut svc, 0).await.is_err());
    // A long idle spell refills the bucket to `burst`, not more.
    tokio::time::advance(Duration::from_secs(10)).await;
    let admitted = {
        let mut n = 0;
        while call(&mut svc, 0).await.is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(admitted, 5);
    // Half-refilled: 30 ms at 100/s is 3 permits.
    tokio::time::advance(Duration::from_millis(30)).await;
    let mut n = 0;
    while layer.try_acquire().is_ok() {
        n += 1;
    }
    assert_eq!(n, 3);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_takes_no_permit() {
    let layer = RateLimitLayer::new(rate("1/s"), 1);
    for _ in 0..10 {
        let mut svc = layer.layer(echo());
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        drop(svc);
    }
    assert!(layer.try_acquire().is_ok(), "services made ready and dropped spent nothing");
}

#[tokio::test(start_paused = true)]
async fn waits_up_to_max_wait_then_calls() {
    let layer =
        RateLimitLayer::builder().rate(rate("10/s")).burst(1).max_wait(Duration::from_millis(250)).build().unwrap();
    let mut svc = layer.layer(echo());
    let start = Instant::now();
    call(&mut svc, 1).await.unwrap();
    // The next two wait 100 ms and 200 ms (paused time: exact).
    call(&mut svc, 2).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    call(&mut svc, 3).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    // Two at once: both wake at 300 ms, one takes the permit, the other
    // waits again (still within its 250 ms) and goes at 400 ms.
    let (a, b) = tokio::join!(svc.call(4), svc.call(5));
    assert_eq!((a.unwrap(), b.unwrap()), (4, 5));
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    // Three at once from 400 ms: 500, 600, and the third (700 > 650) is rejected.
    let (a, b, c) = tokio::join!(svc.call(6), svc.call(7), svc.call(8));
    let ok = [a.is_ok(), b.is_ok(), c.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(ok, 2);
    assert_eq!(start.elapsed(), Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_max_wait_is_rejected_at_once() {
    let layer =
        RateLimitLayer::builder().rate(rate("1/s")).burst(1).max_wait(Duration::from_millis(500)).build().unwrap();
    let mut svc = layer.layer(echo());
    call(&mut svc, 1).await.unwrap();
    let start = Instant::now();
    let e = limited(call(&mut svc, 2).await.unwrap_err());
    assert_eq!(start.elapsed(), Duration::ZERO, "no point waiting for a permit that comes too late");
    assert_eq!(e.retry_after(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_too_long_for_an_instant_waits_as_long_as_needed() {
    // `with_limiter` takes any duration (the builder caps it at an hour).
    let limiter = LocalLimiter::new("forever".into(), Policy::new(rate("1/min"), 1));
    let mut svc = RateLimitLayer::with_limiter(limiter, "forever", Duration::MAX).layer(echo());
    call(&mut svc, 1).await.unwrap();
    let start = Instant::now();
    assert_eq!(call(&mut svc, 2).await.unwrap(), 2, "waited for the permit instead of being rejected");
    assert_eq!(start.elapsed(), Duration::from_secs(60));
}
#[tokio::test(start_paused = true)]
async fn a_wait_never_outlasts_the_deadline() {
    let layer = RateLimitLayer::builder().rate(rate("10/s")).burst(1).max_wait(Duration::from_secs(5)).build().unwrap();
    let mut svc = layer.layer(echo());
    call(&mut svc, 1).await.unwrap();
    let start = Instant::now();
    let deadline = crate::deadline::Deadline::after(Duration::from_millis(50));
    let fut = deadline.sync_scope(|| svc.call(2));
    assert!(fut.await.unwrap_err().is::<RateLimited>());
    assert_eq!(start.elapsed(), Duration::ZERO);
    // With room before the deadline it waits.
    let deadline = crate::deadline::Deadline::after(Duration::from_millis(150));
    let fut = deadline.sync_scope(|| svc.call(3));
    assert_eq!(fut.await.unwrap(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_wait_spends_nothing_and_reaches_nothing() {
    let layer = RateLimitLayer::builder().rate(rate("10/s")).burst(1).max_wait(Duration::from_secs(1)).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_with::<u32, u32, _, _>(|s| layer.layer(s));
    handle.allow(10);
    assert_ready_ok!(svc.poll_ready());
    let first = svc.call(1);
    assert_ready_ok!(svc.poll_ready());
    let mut waiting = tokio_test::task::spawn(svc.call(2));
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_pending!(waiting.poll());
    drop(waiting); // cancelled half way
    tokio::time::advance(Duration::from_millis(50)).await;
    // The permit that came is still there for the next call.
    assert!(layer.try_acquire().is_ok());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    send.send_response(1);
    assert_eq!(first.await.unwrap(), 1);
    assert_pending!(handle.poll_request(), "the cancelled call never reached the service");
}

#[tokio::test(start_paused = true)]
async fn server_answer_and_classification() {
    let mut svc = RateLimitLayer::builder().name("api").rate(rate("2/s")).burst(1).build().unwrap().layer(echo());
    call(&mut svc, 0).await.unwrap();
    let e = limited(call(&mut svc, 0).await.unwrap_err());
    assert_eq!(e.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.grpc_code(), crate::classify::GrpcCode::ResourceExhausted);
    assert_eq!(MeshError::retry_after(&e), Some(Duration::from_millis(500)));
    let answer = error_response(&e).unwrap();
    let http: http::Response<String> = crate::error::to_response(answer, false);
    assert_eq!(http.status(), 429);
    assert_eq!(http.headers()["retry-after"], "1");
    let grpc: http::Response<String> = crate::error::to_response(answer, true);
    assert_eq!(grpc.headers()["grpc-status"], "8");
    assert_eq!(grpc.headers()["grpc-retry-pushback-ms"], "500");
    assert!(e.to_string().contains("rate limiter `api`"), "{e}");

    // A rejection, not a failure of the dependency.
    use crate::classify::{Classify, IgnoreRejections, Outcome, ResultClassifier};
    let boxed: BoxError = Box::new(e);
    assert_eq!(Classify::<(), BoxError>::classify(&IgnoreRejections(ResultClassifier), Err(&boxed)), Outcome::Ignored);
}

#[cfg(feature = "stack")]
#[tokio::test(start_paused = true)]
async fn server_error_layer_sends_429_with_ratelimit_fields() {
    use crate::error::ServerErrorLayer;
    let limit = RateLimitLayer::builder().name("api").rate(rate("10/s")).burst(1).build().unwrap();
    let svc = tower::ServiceBuilder::new().layer(ServerErrorLayer::new()).layer(limit).service_fn(
        |_req: http::Request<String>| async { Ok::<_, Infallible>(http::Response::new(String::from("ok"))) },
    );
    let ok = svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
    assert_eq!(ok.status(), 200);
    let res = svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["ratelimit-policy"], "\"api\";q=10;w=1");
    assert_eq!(res.headers()["ratelimit"], "\"api\";r=0;t=1");
    let grpc = http::Request::builder().header("content-type", "application/grpc").body(String::new()).unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "100");

    let se = crate::service_error::ServiceError::from_error(RateLimited::new(
        "x".into(),
        Policy::new(rate("1/s"), 1),
        Duration::from_secs(2),
    ));
    assert_eq!(se.kind(), crate::service_error::ServiceErrorKind::RateLimited);
    assert_eq!(se.retry_after(), Some(Duration::from_secs(2)));
    assert!(se.is_retryable());
}

type Req = (Option<&'static str>, u32);
type KeyOf = fn(&Req) -> Option<&'static str>;

fn keyed_layer(max_keys: usize, overflow: Overflow) -> KeyedRateLimitLayer<&'static str, KeyOf> {
    let config = RateLimitConfig { rate: rate("1/s"), burst: Some(2), max_keys, overflow, ..Default::default() };
    RateLimitLayer::builder()
        .config(&config)
        .key((|req: &Req| req.0) as KeyOf)
        .tier("gold", Policy::new(rate("10/s"), 5))
        .build()
        .unwrap()
}

fn admitted<L: Limiter<(Option<&'static str>, u32)>>(l: &L, key: Option<&'static str>, n: usize) -> usize {
    (0..n).filter(|_| matches!(l.acquire(&(key, 0)), Acquire::Admitted)).count()
}

#[tokio::test(start_paused = true)]
async fn keys_have_their_own_limits_and_tiers() {
    let layer = keyed_layer(100, Overflow::EvictLeastRecent);
    let l = layer.limiter();
    assert_eq!(admitted(l, Some("a"), 10), 2);
    assert_eq!(admitted(l, Some("b"), 10), 2, "another key is not affected");
    assert_eq!(admitted(l, Some("gold"), 10), 5, "a tier's own burst");
    assert_eq!(admitted(l, None, 10), 2, "requests without a key share one limit");
    assert_eq!(admitted(l, None, 10), 0);
    assert_eq!(l.keys(), 3);
    match l.acquire(&(Some("a"), 0)) {
        Acquire::Denied(e) => assert_eq!(e.retry_after(), Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    let mut svc = layer.layer(service_fn(|r: (Option<&'static str>, u32)| async move { Ok::<_, Infallible>(r.1) }));
    assert!(svc.ready().await.unwrap().call((Some("a"), 7)).await.unwrap_err().is::<RateLimited>());
    assert_eq!(svc.ready().await.unwrap().call((Some("c"), 7)).await.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn least_recently_used_keys_are_evicted_at_the_bound() {
    let layer = keyed_layer(4, Overflow::EvictLeastRecent);
    let l = layer.limiter();
    for k in ["a", "b", "c", "d"] {
        admitted(l, Some(k), 1);
    }
    admitted(l, Some("a"), 1); // a is recent again; b is now the oldest
    admitted(l, Some("e"), 1);
    assert_eq!(l.keys(), 4, "never more than max_keys");
    assert!(!l.contains(&"b"));
    for k in ["a", "c", "d", "e"] {
        assert!(l.contains(&k), "{k}");
    }
    // Many new keys: the map stays bounded.
    let many: Vec<&'static str> = (0..1000).map(|i| &*Box::leak(format!("k{i}").into_boxed_str())).collect();
    for k in &many {
        admitted(l, Some(k), 1);
    }
    assert!(l.keys() <= 4);
}

#[tokio::test(start_paused = true)]
async fn overflow_keys_share_one_limit() {
    let layer = keyed_layer(2, Overflow::Shared);
    let l = layer.limiter();
    assert_eq!(admitted(l, Some("a"), 5), 2);
    assert_eq!(admitted(l, Some("b"), 5), 2);
    assert_eq!(admitted(l, Some("c"), 5), 2, "c goes to the shared overflow limit");
    assert_eq!(admitted(l, Some("d"), 5), 0, "and d shares it");
    assert_eq!(l.keys(), 2);
}

#[test]
fn config_validation() {
    assert!(RateLimitConfig::default().validate().is_ok());
    let bad = RateLimitConfig { burst: Some(0), ..Default::default() };
    assert!(bad.validate().is_err());
    let bad = RateLimitConfig { max_keys: 0, ..Default::default() };
    assert!(bad.validate().is_err());
    assert!(RateLimitLayer::builder().burst(0).build().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For any arrivals, the calls admitted in any span `d` are at most
    /// `burst + d / interval` (+1 for a span's closed ends), and a call
    /// whose `Retry-After` has passed is admitted.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate(
        count in 1u32..50,
        period_ms in 10u64..2000,
        burst in 1u32..10,
        gaps in proptest::collection::vec(0u64..50, 1..200),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let Some(r) = Rate::new(count, Duration::from_millis(period_ms)) else { return Ok(()) };
            let policy = Policy::new(r, burst);
            let layer = RateLimitLayer::new(r, burst);
            let start = Instant::now();
            let mut times = Vec::new();
            for gap in gaps {
                tokio::time::advance(Duration::from_millis(gap)).await;
                match layer.try_acquire() {
                    Ok(()) => times.push(start.elapsed()),
                    Err(e) => {
                        prop_assert!(e.retry_after() > Duration::ZERO);
                        prop_assert!(e.retry_after() <= r.interval() + Duration::from_nanos(1));
                        tokio::time::advance(e.retry_after()).await;
                        prop_assert!(layer.try_acquire().is_ok(), "admitted once Retry-After has passed");
                        times.push(start.elapsed());
                    }
                }
            }
            let t = r.interval().as_nanos() as f64;
            for i in 0..times.len() {
                for j in i..times.len() {
                    let span = (times[j] - times[i]).as_nanos() as f64;
                    let n = (j - i + 1) as f64;
                    prop_assert!(n <= f64::from(policy.burst) + span / t + 1.0, "{n} calls in {span} ns");
                }
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn admit_path_counts_calls() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = RateLimitLayer::new(rate("1000/s"), 10).layer(service_fn(move |_: ()| {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    let mut ok = 0;
    for _ in 0..20 {
        if svc.clone().oneshot(()).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(calls.load(Ordering::SeqCst), 10, "rejected calls never reach the inner service");
}

#[test]
fn claim_and_peer_keys() {
    let spec: KeySpec = "claim:sub".parse().unwrap_or(KeySpec::Global);
    let mut req = http::Request::new(());
    let peer: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
    req.extensions_mut().insert(peer);
    assert_eq!(KeySpec::PeerIp.key(&req).as_deref(), Some("192.0.2.7"));
    #[cfg(feature = "jwt")]
    {
        assert_eq!(spec, KeySpec::Claim("sub".into()));
        assert_eq!(spec.key(&req), None, "no claims: the anonymous limit");
        let claims: crate::jwt::Claims =
            serde_json::from_str(r#"{"sub":"alice","aud":"api","tenant":"acme","tier":3,"roles":["a"]}"#).unwrap();
        req.extensions_mut().insert(claims);
        let key = |s: &str| s.parse::<KeySpec>().unwrap().key(&req);
        assert_eq!(key("claim:sub").as_deref(), Some("alice"));
        assert_eq!(key("claim:aud").as_deref(), Some("api"));
        assert_eq!(key("claim:tenant").as_deref(), Some("acme"));
        assert_eq!(key("claim:tier").as_deref(), Some("3"));
        assert_eq!(key("claim:roles"), None, "not a string or a number");
        let cfg: RateLimitConfig = serde_json::from_str(r#"{ "key": "claim:sub" }"#).unwrap();
        assert_eq!(serde_json::to_value(&cfg).unwrap()["key"], "claim:sub");
    }
    #[cfg(not(feature = "jwt"))]
    assert_eq!(spec, KeySpec::Global, "claim keys need the jwt feature");
    assert!("claim:".parse::<KeySpec>().is_err());
}

#[tokio::test(start_paused = true)]
async fn configured_peer_keys_read_the_named_extension() {
    #[derive(Clone)]
    struct ConnectInfo(std::net::SocketAddr);
    impl std::ops::Deref for ConnectInfo {
        type Target = std::net::SocketAddr;
        fn deref(&self) -> &std::net::SocketAddr {
            &self.0
        }
    }
    let cfg: RateLimitConfig = serde_json::from_str(r#"{ "rate": "1/min", "burst": 1, "key": "peer-ip" }"#).unwrap();
    let layer = cfg.layer_with_peer("peers", PeerAddr::of::<ConnectInfo>()).unwrap();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(()) }));
    let from = |ip: &str| {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(ConnectInfo(format!("{ip}:1").parse().unwrap()));
        req
    };
    svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert!(svc.clone().oneshot(from("192.0.2.1")).await.is_err(), "that peer spent its limit");
    svc.clone().oneshot(from("192.0.2.2")).await.expect("another peer has its own");
}
