use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::classify::{FailureKind, HttpClassifier};
use crate::deadline::Deadline;

/// A service that fails the first `failures` calls, recording when each came.
fn flaky(failures: usize) -> (impl Service<u32, Response = u32, Error = &'static str> + Clone, Arrivals) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = service_fn(move |x: u32| {
        let mut calls = s.lock().unwrap();
        calls.push(Instant::now());
        let n = calls.len();
        async move {
            if n <= failures {
                Err("down")
            } else {
                Ok(x)
            }
        }
    });
    (svc, seen)
}

fn none(ms: u64) -> Backoff {
    Backoff::exponential(Duration::from_millis(ms), 2.0, Duration::from_secs(60)).jitter(Jitter::None)
}

fn gaps(seen: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let v = seen.lock().unwrap();
    v.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn retries_with_exact_exponential_delays() {
    let (svc, seen) = flaky(3);
    let layer = RetryLayer::builder().max_retries(3).backoff(none(100)).build().unwrap();
    assert_eq!(layer.layer(svc).oneshot(7).await, Ok(7));
    assert_eq!(gaps(&seen), [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_with_the_last_error() {
    let (svc, seen) = flaky(10);
    let layer = RetryLayer::builder().max_retries(2).backoff(none(10)).build().unwrap();
    assert_eq!(layer.layer(svc).oneshot(7).await, Err("down"));
    assert_eq!(seen.lock().unwrap().len(), 3, "max_retries 2 = 3 attempts");
    let (svc, seen) = flaky(10);
    let layer = RetryLayer::builder().max_retries(0).build().unwrap();
    assert_eq!(layer.layer(svc).oneshot(7).await, Err("down"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_if_filters_failures() {
    fn not_errors(k: &FailureKind) -> bool {
        !matches!(k, FailureKind::Error)
    }
    let (svc, seen) = flaky(10);
    let layer = RetryLayer::builder().max_retries(5).retry_if(not_errors).build().unwrap();
    assert_eq!(layer.layer(svc).oneshot(7).await, Err("down"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_and_is_shared_by_clones() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
    let (svc, seen) = flaky(usize::MAX);
    let layer = RetryLayer::builder().max_retries(5).backoff(none(1)).budget(budget.clone()).build().unwrap();
    let a = layer.layer(svc.clone());
    let b = layer.layer(svc);
    // Each call deposits half a retry: four calls earn two retries in all.
    for s in [a.clone(), b.clone(), a, b] {
        let _ = s.oneshot(1).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 4 + 2);
    assert!(budget.balance() < 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_during_backoff_returns_its_budget_token() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
    let (svc, seen) = flaky(usize::MAX);
    let mut svc =
        RetryLayer::builder().max_retries(3).backoff(none(1000)).budget(budget.clone()).build().unwrap().layer(svc);
    svc.ready().await.unwrap();
    let mut fut = tokio_test::task::spawn(svc.call(1));
    assert!(fut.poll().is_pending(), "first attempt failed, now in backoff");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(budget.balance() < 0.5, "the retry took its token: {}", budget.balance());
    drop(fut);
    assert!((budget.balance() - 1.0).abs() < 1e-9, "token returned: {}", budget.balance());
}

#[tokio::test(start_paused = true)]
async fn never_sleeps_past_the_deadline() {
    let (svc, seen) = flaky(usize::MAX);
    let svc = RetryLayer::builder().max_retries(10).backoff(none(100)).build().unwrap().layer(svc);
    let start = Instant::now();
    let res = Deadline::after(Duration::from_millis(350)).scope(svc.oneshot(1)).await;
    assert_eq!(res, Err("down"));
    // Attempts at 0, 100, 300 ms; the next would start at 700 ms > 350 ms.
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(Instant::now() - start, Duration::from_millis(300));
}

/// The deadline comes with the request: behind a `Buffer` (another task,
/// where no deadline is current), a retry that would start after it is not
/// made, and every retry carries it.
#[tokio::test(start_paused = true)]
async fn the_deadline_in_the_request_bounds_the_retries_in_another_task() {
    use crate::deadline::DeadlineCarrier;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = service_fn(move |req: Request<Full<Bytes>>| {
        s.lock().unwrap().push((Instant::now(), req.deadline(), req.extensions().len()));
        async { Ok::<_, &'static str>(status(503, &[])) }
    });
    let retry =
        RetryLayer::builder().max_retries(10).backoff(none(100)).classifier(HttpClassifier::new()).http().build();
    let svc = tower::ServiceBuilder::new().buffer(8).layer(retry.unwrap()).service(backend);
    let start = Instant::now();
    let deadline = Deadline::at(start + Duration::from_millis(350));
    let mut req = get();
    req.set_deadline(deadline);
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 503);
    // Attempts at 0, 100, 300 ms; the next would start at 700 ms > 350 ms.
    let expected: Vec<_> = [0, 100, 300].map(|ms| (start + Duration::from_millis(ms), Some(deadline), 1)).into();
    assert_eq!(*seen.lock().unwrap(), expected);
    assert_eq!(Instant::now() - start, Duration::from_millis(300));
}

type Arrivals = Arc<Mutex<Vec<Instant>>>;

fn http_service(
    script: Vec<Response<Full<Bytes>>>,
) -> (impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = &'static str> + Clone, Arrivals) {
    let script = Arc::new(Mutex::new(script.into_iter()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        s.lock().unwrap().push(Instant::now());
        let next = script.lock().unwrap().next();
        async move { next.ok_or("script ran out") }
    });
    (svc, seen)
}

fn status(code: u16, headers: &[(&'static str, &str)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(code);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn http_layer(max_retries: u32) -> RetryLayer<HttpClassifier, HttpRequests> {
    RetryLayer::builder()
        .max_retries(max_retries)
        .backoff(none(10))
        .classifier(HttpClassifier::new())
        .http()
        .build()
        .unwrap()
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://svc/items").body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(start_paused = true)]
async fn http_statuses_are_classified() {
    let (svc, seen) = http_service(vec![status(503, &[]), status(404, &[]), status(200, &[])]);
    let res = http_layer(3).layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "404 is not retried");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff_even_past_max_delay() {
    let (svc, seen) = http_service(vec![status(503, &[("retry-after", "3")]), status(200, &[])]);
    let res = http_layer(2).layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gaps(&seen), [Duration::from_secs(3)]);

    // The server asked for two minutes; the backoff's longest delay is 5 s:
    // the retry comes when the server asked, not sooner.
    let (svc, seen) = http_service(vec![status(429, &[("retry-after", "120")]), status(200, &[])]);
    let layer = RetryLayer::builder()
        .max_retries(1)
        .backoff(Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(5)))
        .classifier(HttpClassifier::new())
        .http()
        .build()
        .unwrap();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(gaps(&seen), [Duration::from_secs(120)], "not cut to max_delay");

    // The same for gRPC pushback.
    let (svc, seen) = http_service(vec![
        status(200, &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "30000")]),
        status(200, &[("grpc-status", "0")]),
    ]);
    let layer = RetryLayer::builder()
        .max_retries(1)
        .backoff(Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1)))
        .classifier(crate::classify::GrpcClassifier::new())
        .requests(GrpcRequests::new())
        .build()
        .unwrap();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap().headers()["grpc-status"], "0");
    assert_eq!(gaps(&seen), [Duration::from_secs(30)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_gives_up_with_the_servers_answer() {
    let (svc, seen) = http_service(vec![status(503, &[("retry-after", "5")]), status(200, &[])]);
    let svc = http_layer(3).layer(svc);
    let start = Instant::now();
    let res = Deadline::after(Duration::from_secs(2)).scope(svc.oneshot(get())).await.unwrap();
    assert_eq!(res.status(), 503, "the server's answer, not a timeout");
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(Instant::now() - start, Duration::ZERO, "no sleep that could not end in a retry");

    // Pushback that ends inside the deadline is waited out in full.
    let (svc, seen) = http_service(vec![status(503, &[("retry-after", "1")]), status(200, &[])]);
    let svc = http_layer(3).layer(svc);
    let res = Deadline::after(Duration::from_secs(2)).scope(svc.oneshot(get())).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gaps(&seen), [Duration::from_secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn pushback_longer_than_max_pushback_gets_no_retry() {
    // Longer than the default 5 minutes, or absurd: no retry, no panic, the
    // server's answer at once — with or without a deadline.
    for after in ["301", "18446744073709551615"] {
        for deadline in [None, Some(Duration::from_secs(10))] {
            let (svc, seen) = http_service(vec![status(503, &[("retry-after", after)]), status(200, &[])]);
            let call = http_layer(3).layer(svc).oneshot(get());
            let start = Instant::now();
            let res = match deadline {
                Some(d) => Deadline::after(d).scope(call).await,
                None => call.await,
            };
            assert_eq!(res.unwrap().status(), 503, "{after} {deadline:?}");
            assert_eq!(seen.lock().unwrap().len(), 1);
            assert_eq!(Instant::now(), start);
        }
    }
    let (svc, seen) = http_service(vec![
        status(200, &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "9223372036854775807")]),
        status(200, &[("grpc-status", "0")]),
    ]);
    let res = grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call("/a.B/C")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A longer limit: the wait is honoured.
    let (svc, seen) = http_service(vec![status(503, &[("retry-after", "600")]), status(200, &[])]);
    let layer = RetryLayer::builder()
        .max_retries(1)
        .max_pushback(Duration::from_secs(900))
        .classifier(HttpClassifier::new())
        .http()
        .build()
        .unwrap();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(gaps(&seen), [Duration::from_secs(600)]);
    let cfg: RetryConfig = serde_json::from_str(r#"{"max_pushback": "15m"}"#).unwrap();
    assert_eq!(cfg.max_pushback, Duration::from_secs(900));
}

#[tokio::test(start_paused = true)]
async fn no_backoff_retries_at_once() {
    let (svc, seen) = flaky(2);
    let layer = RetryLayer::builder().max_retries(2).backoff(Backoff::none()).build().unwrap();
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(7).await, Ok(7));
    assert_eq!(gaps(&seen), [Duration::ZERO, Duration::ZERO]);
    assert_eq!(Instant::now(), start);
    // From configuration: both delays zero.
    let cfg: RetryConfig =
        serde_json::from_str(r#"{"max_retries": 2, "backoff": {"initial": "0s", "max_delay": "0s"}}"#).unwrap();
    let (svc, seen) = flaky(2);
    assert_eq!(RetryLayer::from_config(&cfg).unwrap().layer(svc).oneshot(7).await, Ok(7));
    assert_eq!(gaps(&seen), [Duration::ZERO, Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_gives_the_same_delays_every_run() {
    let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10)).seed(2026);
    let run = || async move {
        let (svc, seen) = flaky(4);
        let layer = RetryLayer::builder().max_retries(4).backoff(backoff).build().unwrap();
        assert_eq!(layer.layer(svc).oneshot(1).await, Ok(1));
        gaps(&seen)
    };
    let first = run().await;
    assert_eq!(first, run().await);
    // They are the full-jitter delays drawn from a generator with that seed
    // (the timer rounds up to the millisecond).
    let mut rng = fastrand::Rng::with_seed(2026);
    let expected: Vec<_> = (0..4)
        .map(|n| backoff.delay_with(n, Duration::ZERO, || rng.f64()))
        .map(|d| Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64))
        .collect();
    assert_eq!(first, expected);
    // The seed can come from configuration too.
    let cfg: RetryConfig = serde_json::from_str(
        r#"{"max_retries": 4, "backoff": {"initial": "100ms", "max_delay": "10s", "jitter": "full", "seed": 2026}}"#,
    )
    .unwrap();
    let (svc, seen) = flaky(4);
    assert_eq!(RetryLayer::from_config(&cfg).unwrap().layer(svc).oneshot(1).await, Ok(1));
    assert_eq!(gaps(&seen), expected);
}

fn grpc(code: &str) -> Response<Full<Bytes>> {
    status(200, &[("content-type", "application/grpc"), ("grpc-status", code)])
}

fn grpc_call(path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://svc{path}")).body(Full::new(Bytes::from_static(b"\0\0\0\0\0"))).unwrap()
}

fn grpc_layer(requests: GrpcRequests) -> RetryLayer<crate::classify::GrpcClassifier, GrpcRequests> {
    RetryLayer::builder()
        .max_retries(2)
        .backoff(none(10))
        .classifier(crate::classify::GrpcClassifier::new())
        .requests(requests)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_are_retried_only_when_the_server_did_not_process_them() {
    const CREATE: &str = "/orders.v1.Orders/CreateOrder";
    // The server may have done the work: sent once.
    for code in ["4", "13", "2", "15"] {
        let (svc, seen) = http_service(vec![grpc(code), grpc("0")]);
        let res = grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call(CREATE)).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], code);
        assert_eq!(seen.lock().unwrap().len(), 1, "grpc-status {code}");
    }
    // UNAVAILABLE: not processed, retried.
    let (svc, seen) = http_service(vec![grpc("14"), grpc("0")]);
    let res = grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call(CREATE)).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // RESOURCE_EXHAUSTED: retried only when the server says when.
    let (svc, seen) = http_service(vec![grpc("8"), grpc("0")]);
    grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call(CREATE)).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    let mut pushed = grpc("8");
    pushed.headers_mut().insert("grpc-retry-pushback-ms", "20".parse().unwrap());
    let (svc, seen) = http_service(vec![pushed, grpc("0")]);
    grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call(CREATE)).await.unwrap();
    assert_eq!(gaps(&seen), [Duration::from_millis(20)]);
    // A method marked idempotent: retried after DEADLINE_EXCEEDED too.
    let marked = GrpcRequests::new().idempotent("/orders.v1.Orders/GetOrder").unwrap();
    let (svc, seen) = http_service(vec![grpc("4"), grpc("13"), grpc("0")]);
    let res = grpc_layer(marked).layer(svc).oneshot(grpc_call("/orders.v1.Orders/GetOrder")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_call_whose_connection_was_refused_is_retried() {
    use crate::BoxError;
    for (kind, expected) in [(std::io::ErrorKind::ConnectionRefused, 2), (std::io::ErrorKind::ConnectionReset, 1)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = service_fn(move |_req: Request<Full<Bytes>>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err::<Response<Full<Bytes>>, BoxError>(Box::new(std::io::Error::from(kind))),
                    _ => Ok(grpc("0")),
                }
            }
        });
        let _ = grpc_layer(GrpcRequests::new()).layer(svc).oneshot(grpc_call("/orders.v1.Orders/CreateOrder")).await;
        assert_eq!(calls.load(Ordering::SeqCst), expected, "{kind:?}");
    }
}

#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn a_per_attempt_timeout_is_retried_only_for_idempotent_grpc_methods() {
    use crate::timeout::{Elapsed, TimeoutLayer};
    let arrivals = Arc::new(AtomicUsize::new(0));
    let a = arrivals.clone();
    // Answers after 5 s: every attempt times out after 1 s.
    let slow = service_fn(move |_req: Request<Full<Bytes>>| {
        a.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, crate::BoxError>(grpc("0"))
        }
    });
    let marked = GrpcRequests::new().idempotent("/orders.v1.Orders/*").unwrap();
    let svc = grpc_layer(marked).layer(TimeoutLayer::per_attempt(Duration::from_secs(1)).layer(slow));
    let err = svc.clone().oneshot(grpc_call("/billing.v1.Billing/Charge")).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    assert_eq!(arrivals.load(Ordering::SeqCst), 1, "a call the server may have processed is sent once");
    let err = svc.oneshot(grpc_call("/orders.v1.Orders/GetOrder")).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    assert_eq!(arrivals.load(Ordering::SeqCst), 1 + 3, "an idempotent method is retried");
}

#[cfg(feature = "circuit-breaker")]
#[tokio::test(start_paused = true)]
async fn a_retry_rejected_by_an_open_breaker_keeps_the_last_real_failure() {
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    use crate::classify::{IgnoreRejections, ResultClassifier};
    use crate::BoxError;

    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let handle = breaker.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // The first attempt fails for real, and the breaker opens meanwhile.
    let backend = service_fn(move |_x: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        handle.transition_to_open();
        async { Err::<u32, BoxError>("connection reset by peer".into()) }
    });
    let retry = RetryLayer::builder().max_retries(3).backoff(none(10)).build().unwrap();
    let svc = retry.with_classifier(IgnoreRejections(ResultClassifier)).layer(breaker.layer(backend));
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let rejected = err.downcast_ref::<RetryRejected>().expect("RetryRejected");
    assert_eq!(rejected.last_error().map(|e| e.to_string()).as_deref(), Some("connection reset by peer"));
    assert_eq!(rejected.last_failure(), FailureKind::Error);
    assert_eq!(rejected.attempts(), 1);
    assert!(rejected.rejection().downcast_ref::<CircuitOpen>().is_some());
    let source = std::error::Error::source(rejected).expect("source");
    assert!(source.is::<CircuitOpen>(), "the rejection is the source");
    assert!(err.to_string().contains("connection reset by peer"), "{err}");
    assert!(crate::classify::is_rejection(&err), "still a rejection for the layers above");

    // A call rejected at its first attempt gets the bare rejection.
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    breaker.handle().transition_to_open();
    let backend = service_fn(|x: u32| async move { Ok::<u32, BoxError>(x) });
    let retry = RetryLayer::builder().max_retries(3).backoff(none(10)).build().unwrap();
    let svc = retry.with_classifier(IgnoreRejections(ResultClassifier)).layer(breaker.layer(backend));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn negative_grpc_pushback_means_do_not_retry() {
    let (svc, seen) =
        http_service(vec![status(200, &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")]), status(200, &[])]);
    let layer =
        RetryLayer::builder().max_retries(3).classifier(crate::classify::GrpcClassifier::new()).http().build().unwrap();
    let res = layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) =
        http_service(vec![status(200, &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "250")]), status(200, &[])]);
    let layer =
        RetryLayer::builder().max_retries(3).classifier(crate::classify::GrpcClassifier::new()).http().build().unwrap();
    layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(gaps(&seen), [Duration::from_millis(250)]);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_and_unreplayable_requests_are_sent_once() {
    let (svc, seen) = http_service(vec![status(503, &[]), status(200, &[])]);
    let post = Request::post("http://svc/orders").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let res = http_layer(3).layer(svc).oneshot(post).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (svc, seen) = http_service(vec![status(503, &[]), status(200, &[])]);
    let layer = RetryLayer::builder()
        .max_retries(3)
        .classifier(HttpClassifier::new())
        .requests(HttpRequests::new().max_body(8))
        .build()
        .unwrap();
    let big = Request::put("http://svc/blob").body(Full::new(Bytes::from(vec![0u8; 9]))).unwrap();
    assert_eq!(layer.layer(svc).oneshot(big).await.unwrap().status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1, "a body over the limit is not kept for replay");
}

#[tokio::test(start_paused = true)]
async fn retries_wait_for_readiness_of_the_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut svc = RetryLayer::builder().max_retries(1).backoff(none(10)).build().unwrap().layer(mock);
    handle.allow(1);
    svc.ready().await.unwrap();
    let mut fut = tokio_test::task::spawn(svc.call(5));
    assert!(fut.poll().is_pending());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    send.send_error("boom");
    assert!(fut.poll().is_pending(), "backing off");
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(fut.poll().is_pending(), "not ready: no capacity allowed yet");
    handle.allow(1);
    assert!(fut.poll().is_pending());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    send.send_response(6);
    assert_eq!(fut.await.unwrap(), 6);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_attempts_and_retries() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder().name("orders").max_retries(2).backoff(none(1)).build().unwrap()
    });
    let (svc, _) = flaky(usize::MAX);
    let _ = layer.layer(svc).oneshot(1).await;
    let counts: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => Some((k.key().name().to_string(), c)),
            _ => None,
        })
        .collect();
    assert_eq!(counts["tower_mesh_retry_attempts_total"], 3);
    assert_eq!(counts["tower_mesh_retry_retries_total"], 2);
    assert_eq!(counts["tower_mesh_retry_exhausted_total"], 1);
}

/// A request that counts how often it is cloned.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted(self.0.clone())
    }
}

// A request type of its own: it opts in to carrying no deadline.
impl crate::deadline::DeadlineCarrier for Counted {}

#[test]
fn calls_counted_by_an_atomic_are_not_cloned_needlessly() {
    // max_retries 0: the request is not copied at all.
    let clones = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let svc = service_fn(|_c: Counted| async { Ok::<_, &'static str>(()) });
        let svc = RetryLayer::builder().max_retries(0).build().unwrap().layer(svc);
        svc.oneshot(Counted(clones.clone())).await.unwrap();
    });
    assert_eq!(clones.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_request_is_copied_once_per_possible_retry() {
    // max_retries 2 against a service that always fails: one copy for each
    // retry, none kept after the last one (3 attempts, 2 clones).
    let clones = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let svc = service_fn(move |_c: Counted| {
        a.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("down") }
    });
    let layer = RetryLayer::builder().max_retries(2).backoff(none(10)).build().unwrap();
    assert_eq!(layer.layer(svc).oneshot(Counted(clones.clone())).await, Err("down"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(clones.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_is_counted_and_labelled() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // ratio 0, no reserve: every retry is refused.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder().name("billing").max_retries(3).backoff(none(1)).budget(budget).build().unwrap()
    });
    let (svc, seen) = flaky(usize::MAX);
    assert_eq!(layer.layer(svc).oneshot(1).await, Err("down"));
    assert_eq!(seen.lock().unwrap().len(), 1, "no retry without budget");
    let exhausted: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "tower_mesh_retry_budget_exhausted_total")
        .map(|(k, _, _, v)| {
            let label = k.key().labels().find(|l| l.key() == "service").map(|l| l.value().to_string());
            (label, v)
        })
        .collect();
    assert_eq!(exhausted, [(Some("billing".to_string()), metrics_util::debugging::DebugValue::Counter(1))]);
}

/// A service that counts how often it is cloned and fails the calls whose
/// number is in `failing`.
struct CloneCounting {
    clones: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    failing: &'static [usize],
}

impl Clone for CloneCounting {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        CloneCounting { clones: self.clones.clone(), calls: self.calls.clone(), failing: self.failing }
    }
}

impl Service<u32> for CloneCounting {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Result<u32, &'static str>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if self.failing.contains(&n) { Err("down") } else { Ok(x) })
    }
}

#[tokio::test(start_paused = true)]
async fn the_service_is_cloned_once_then_only_for_retries() {
    let (clones, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Calls 3 and 4 fail: the third request is retried twice.
    let svc = CloneCounting { clones: clones.clone(), calls: calls.clone(), failing: &[3, 4] };
    let mut svc = RetryLayer::builder().max_retries(3).backoff(none(1)).build().unwrap().layer(svc);
    for i in 0..10 {
        assert_eq!(svc.ready().await.unwrap().call(i).await, Ok(i));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    // One clone kept at the first call for the retries, one per retry; a call
    // that succeeds at once clones nothing (tower's `Retry` clones per call).
    assert_eq!(clones.load(Ordering::SeqCst), 3);
}

#[test]
fn the_response_future_does_not_hold_the_service() {
    // A large service: the future of a call is as small as if it were not.
    let large = [0u8; 4096];
    let svc = service_fn(move |x: u32| std::future::ready(Ok::<_, &'static str>(x + u32::from(large[0]))));
    let svc = RetryLayer::builder().build().unwrap().layer(svc);
    fn future_size<S: Service<u32>>(_: &S) -> usize {
        std::mem::size_of::<S::Future>()
    }
    assert!(future_size(&svc) < 256, "{} bytes", future_size(&svc));
}
