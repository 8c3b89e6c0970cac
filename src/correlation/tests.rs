use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, Request, Response};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the inner service saw: its request headers and the current context.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    extension: Option<RequestContext>,
    current: Option<RequestContext>,
}

fn recording() -> impl Service<Request<()>, Response = Response<Seen>, Error = Infallible, Future: Send> + Clone {
    service_fn(|req: Request<()>| async move {
        let extension = req.extensions().get::<RequestContext>().cloned();
        // Yield once, so the context is checked across polls too.
        tokio::task::yield_now().await;
        let seen = Seen { headers: req.headers().clone(), extension, current: RequestContext::current() };
        Ok::<_, Infallible>(Response::new(seen))
    })
}

fn request(headers: &[(&str, &[u8])]) -> Request<()> {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
    }
    req
}

async fn serve(layer: CorrelationIdLayer, req: Request<()>) -> (HeaderMap, Seen) {
    let res = layer.layer(recording()).oneshot(req).await.unwrap();
    let (parts, seen) = res.into_parts();
    (parts.headers, seen)
}

#[tokio::test]
async fn a_valid_incoming_id_is_kept_made_current_and_echoed() {
    let (res, seen) = serve(CorrelationIdLayer::new(), request(&[("x-correlation-id", b"order-42")])).await;
    assert_eq!(res["x-correlation-id"], "order-42");
    assert_eq!(seen.headers["x-correlation-id"], "order-42");
    let ctx = seen.extension.unwrap();
    assert_eq!(ctx.correlation_id.as_str(), "order-42");
    assert_eq!(seen.current.as_ref(), Some(&ctx), "current while the inner future runs");
    assert_eq!(RequestContext::current(), None, "and only then");
}

#[tokio::test]
async fn x_request_id_is_accepted_and_moved_to_the_main_header() {
    let (res, seen) = serve(CorrelationIdLayer::new(), request(&[("x-request-id", b"from-lb-1")])).await;
    assert_eq!(res["x-correlation-id"], "from-lb-1");
    assert_eq!(seen.headers["x-correlation-id"], "from-lb-1");
    assert!(!seen.headers.contains_key("x-request-id"));

    // The main header wins; a custom header and accept list.
    let layer = CorrelationIdLayer::new()
        .header(http::HeaderName::from_static("x-trace-key"))
        .accept_only_main_header()
        .accept(http::HeaderName::from_static("x-amzn-trace-id"));
    let (res, _) =
        serve(layer.clone(), request(&[("x-amzn-trace-id", b"b"), ("x-trace-key", b"a"), ("x-request-id", b"c")]))
            .await;
    assert_eq!(res["x-trace-key"], "a");
    let (res, _) = serve(layer.clone(), request(&[("x-amzn-trace-id", b"b"), ("x-request-id", b"c")])).await;
    assert_eq!(res["x-trace-key"], "b");
    let (res, _) = serve(layer, request(&[("x-request-id", b"c")])).await;
    assert_ne!(res["x-trace-key"], "c", "x-request-id no longer accepted");
}

#[tokio::test]
async fn invalid_incoming_ids_are_replaced_never_echoed_or_passed_on() {
    let long = vec![b'a'; 129];
    let cases: [&[u8]; 7] = [b"has space", b"tab\there", "caf\u{e9}".as_bytes(), &long, b"", b"a,b", b"\xff\xfe"];
    for bad in cases {
        let layer = CorrelationIdLayer::new().forbid(b",;");
        let (res, seen) = serve(layer, request(&[("x-correlation-id", bad), ("x-request-id", bad)])).await;
        let echoed = res["x-correlation-id"].as_bytes();
        assert_ne!(echoed, bad);
        assert!(uuid::Uuid::parse_str(std::str::from_utf8(echoed).unwrap()).is_ok(), "a fresh UUID");
        assert_eq!(seen.headers["x-correlation-id"].as_bytes(), echoed, "the inner service sees the new id");
        assert!(!seen.headers.contains_key("x-request-id"), "the refused alternate is removed");
        assert_eq!(seen.extension.unwrap().correlation_id.as_bytes(), echoed);
    }
    // An invalid main header, a valid alternate: the alternate is used.
    let (res, _) =
        serve(CorrelationIdLayer::new(), request(&[("x-correlation-id", b"a b"), ("x-request-id", b"ok")])).await;
    assert_eq!(res["x-correlation-id"], "ok");
}

use correlation_uuid as uuid;

#[tokio::test]
async fn missing_ids_come_from_the_generator() {
    let layer = CorrelationIdLayer::new().generator(|| CorrelationId::parse("made-here").unwrap());
    let (res, seen) = serve(layer, request(&[])).await;
    assert_eq!(res["x-correlation-id"], "made-here");
    assert_eq!(seen.headers["x-correlation-id"], "made-here");
    let (res, _) = serve(CorrelationIdLayer::new().echo(false), request(&[])).await;
    assert!(!res.contains_key("x-correlation-id"));
}

#[tokio::test]
async fn a_valid_traceparent_continues_the_trace_with_a_new_span() {
    let (_, seen) =
        serve(CorrelationIdLayer::new(), request(&[("traceparent", TP.as_bytes()), ("tracestate", b"a=1, b=2")])).await;
    let incoming = TraceParent::parse(TP).unwrap();
    let ctx = seen.extension.unwrap();
    let tp = ctx.traceparent.unwrap();
    assert_eq!(tp.trace_id(), incoming.trace_id());
    assert_ne!(tp.parent_id(), incoming.parent_id());
    assert!(tp.sampled());
    assert_eq!(ctx.tracestate.unwrap().as_str(), "a=1,b=2");
    assert_eq!(seen.headers["traceparent"], TP, "a valid header is left alone");
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_and_is_removed() {
    let bad = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "garbage",
    ];
    for v in bad {
        let layer = CorrelationIdLayer::new().sample_new_traces(false);
        let (_, seen) = serve(layer, request(&[("traceparent", v.as_bytes()), ("tracestate", b"a=1")])).await;
        let ctx = seen.extension.unwrap();
        let tp = ctx.traceparent.unwrap();
        assert_ne!(tp.trace_id().to_string(), v.get(3..35).unwrap_or(""));
        assert!(!tp.sampled());
        assert_eq!(ctx.tracestate, None);
        assert!(!seen.headers.contains_key("traceparent") && !seen.headers.contains_key("tracestate"));
    }
    // An invalid tracestate alone is dropped; the trace goes on.
    let (_, seen) =
        serve(CorrelationIdLayer::new(), request(&[("traceparent", TP.as_bytes()), ("tracestate", b"A=1")])).await;
    let ctx = seen.extension.unwrap();
    assert_eq!(ctx.traceparent.unwrap().trace_id(), TraceParent::parse(TP).unwrap().trace_id());
    assert_eq!(ctx.tracestate, None);
    assert!(!seen.headers.contains_key("tracestate"));
    // Without a traceparent, tracestate means nothing.
    let (_, seen) = serve(CorrelationIdLayer::new(), request(&[("tracestate", b"a=1")])).await;
    assert_eq!(seen.extension.unwrap().tracestate, None);
    assert!(!seen.headers.contains_key("tracestate"));
}

#[tokio::test]
async fn trace_context_can_be_turned_off() {
    let layer = CorrelationIdLayer::new().trace_context(false);
    let (_, seen) = serve(layer, request(&[("traceparent", b"garbage")])).await;
    assert_eq!(seen.extension.unwrap().traceparent, None);
    assert_eq!(seen.headers["traceparent"], "garbage", "left alone");
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<()>, _>(CorrelationIdLayer::new());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(request(&[("x-correlation-id", b"m-1")]));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<RequestContext>().unwrap().correlation_id.as_str(), "m-1");
    send.send_response(Response::new(()));
    assert_eq!(fut.await.unwrap().headers()["x-correlation-id"], "m-1");
}

#[tokio::test]
async fn errors_pass_through_without_an_echo() {
    let svc = CorrelationIdLayer::new().layer(service_fn(|_: Request<()>| async { Err::<Response<()>, _>("down") }));
    assert_eq!(svc.oneshot(request(&[])).await.unwrap_err(), "down");
}

#[tokio::test]
async fn the_inner_call_itself_runs_in_the_scope() {
    // A service whose `call` (not its future) reads the context.
    #[derive(Clone)]
    struct ReadsInCall;
    impl Service<Request<()>> for ReadsInCall {
        type Response = Response<Option<RequestContext>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(RequestContext::current())))
        }
    }
    let res = CorrelationIdLayer::new().layer(ReadsInCall).oneshot(request(&[("x-correlation-id", b"c-1")])).await;
    assert_eq!(res.unwrap().into_body().unwrap().correlation_id.as_str(), "c-1");
}

#[test]
fn a_dropped_response_future_leaves_no_context_behind() {
    let (svc, _handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = CorrelationIdLayer::new().layer(svc);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let mut fut = tokio_test::task::spawn(svc.call(request(&[])));
        assert_pending!(fut.poll());
        drop(fut);
        assert_eq!(RequestContext::current(), None);
    });
}

fn counters(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => {
                let labels: Vec<String> = k.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                Some((format!("{}{{{}}}", k.key().name(), labels.join(",")), c))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_accepted_generated_and_rejected() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (server, client) = metrics::with_local_recorder(&recorder, || {
        (CorrelationIdLayer::new().name("edge"), CorrelationIdClientLayer::new().name("out"))
    });
    let svc = server.layer(recording());
    let _ = svc.clone().oneshot(request(&[("x-correlation-id", b"ok"), ("traceparent", TP.as_bytes())])).await;
    let _ = svc
        .clone()
        .oneshot(request(&[("x-correlation-id", b"ok"), ("traceparent", TP.as_bytes()), ("tracestate", b"X")]))
        .await;
    let _ = svc.clone().oneshot(request(&[])).await;
    let _ = svc.clone().oneshot(request(&[("x-correlation-id", b"a b"), ("traceparent", b"x")])).await;
    let out = client.layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(()) }));
    out.clone().oneshot(request(&[])).await.unwrap();
    RequestContext::generate().scope(out.oneshot(request(&[]))).await.unwrap();
    let c = counters(&snapshotter);
    assert_eq!(c["tower_mesh_correlation_ids_total{service=edge,outcome=accepted}"], 2);
    assert_eq!(c["tower_mesh_correlation_ids_total{service=edge,outcome=generated}"], 1);
    assert_eq!(c["tower_mesh_correlation_ids_total{service=edge,outcome=rejected}"], 1);
    assert_eq!(c["tower_mesh_correlation_traces_total{service=edge,outcome=accepted}"], 2);
    assert_eq!(c["tower_mesh_correlation_traces_total{service=edge,outcome=generated}"], 1);
    assert_eq!(c["tower_mesh_correlation_traces_total{service=edge,outcome=rejected}"], 1);
    assert_eq!(c["tower_mesh_correlation_tracestate_rejected_total{service=edge}"], 1);
    assert_eq!(c["tower_mesh_correlation_outbound_total{service=out,outcome=generated}"], 1);
    assert_eq!(c["tower_mesh_correlation_outbound_total{service=out,outcome=propagated}"], 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

#[test]
fn refused_values_are_logged_by_reason_never_by_content() {
    let (out, _guard) = capture();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let bad_tp = "00-SECRETSECRETSECRETSECRETSECRET12-00f067aa0ba902b7-01";
        let (res, _) = serve(
            CorrelationIdLayer::new(),
            request(&[("x-correlation-id", b"inject\tSECRET-ID"), ("traceparent", bad_tp.as_bytes())]),
        )
        .await;
        let (_, _) = serve(
            CorrelationIdLayer::new(),
            request(&[("traceparent", TP.as_bytes()), ("tracestate", b"k=SECRET-STATE,BAD")]),
        )
        .await;
        let logs = out.text();
        assert!(logs.contains("replaced an invalid incoming correlation id"), "{logs}");
        assert!(logs.contains("reason=\"invalid_byte\"") || logs.contains("reason=invalid_byte"), "{logs}");
        assert!(logs.contains(res["x-correlation-id"].to_str().unwrap()), "the replacement is logged");
        assert!(logs.contains("replaced an invalid incoming traceparent"), "{logs}");
        assert!(logs.contains("dropped an invalid incoming tracestate"), "{logs}");
        assert!(!logs.contains("SECRET"), "{logs}");
    });
}

#[test]
fn the_ids_are_recorded_on_the_current_span() {
    let (out, _guard) = capture();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let svc = CorrelationIdLayer::new().layer(service_fn(|_: Request<()>| async {
            tracing::info!("handling");
            Ok::<_, Infallible>(Response::new(()))
        }));
        let span =
            tracing::info_span!("request", correlation_id = tracing::field::Empty, trace_id = tracing::field::Empty);
        let fut = {
            let _entered = span.enter();
            svc.oneshot(request(&[("x-correlation-id", b"span-7"), ("traceparent", TP.as_bytes())]))
        };
        tracing::Instrument::instrument(fut, span).await.unwrap();
    });
    let logs = out.text();
    assert!(logs.contains("correlation_id=span-7"), "{logs}");
    assert!(logs.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"), "{logs}");
}

// ---- client side ----

fn echo_headers() -> impl Service<Request<()>, Response = HeaderMap, Error = Infallible> + Clone {
    service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req.headers().clone()) })
}

#[tokio::test]
async fn the_client_sends_the_current_context_with_a_new_parent_id() {
    let ctx = RequestContext::from_parts("ctx-1", Some(TP), Some("v=1")).unwrap();
    let client = ServiceBuilder::new().layer(CorrelationIdClientLayer::new()).service(echo_headers());
    // A caller-set id is replaced by the scope's.
    let req = request(&[("x-correlation-id", b"stale"), ("tracestate", b"stale=1")]);
    let sent = ctx.clone().scope(client.clone().oneshot(req)).await.unwrap();
    assert_eq!(sent["x-correlation-id"], "ctx-1");
    let tp = TraceParent::parse(sent["traceparent"].to_str().unwrap()).unwrap();
    let parent = ctx.traceparent.unwrap();
    assert_eq!(tp.trace_id(), parent.trace_id());
    assert_ne!(tp.parent_id(), parent.parent_id());
    assert_eq!(sent["tracestate"], "v=1");
    // Each call is a new hop.
    let again = ctx.clone().scope(client.clone().oneshot(request(&[]))).await.unwrap();
    assert_ne!(again["traceparent"], sent["traceparent"]);
    // No tracestate in the context: none is sent.
    let bare = RequestContext::new(CorrelationId::parse("b").unwrap()).with_traceparent(parent);
    let sent = bare.scope(client.oneshot(request(&[("tracestate", b"stale=1")]))).await.unwrap();
    assert!(!sent.contains_key("tracestate"));
}

#[tokio::test]
async fn outside_a_scope_the_client_keeps_valid_values_and_makes_the_rest() {
    let client = CorrelationIdClientLayer::new().layer(echo_headers());
    let sent = client
        .clone()
        .oneshot(request(&[("x-correlation-id", b"job-9"), ("traceparent", TP.as_bytes())]))
        .await
        .unwrap();
    assert_eq!(sent["x-correlation-id"], "job-9");
    assert_eq!(sent["traceparent"], TP);
    let sent = client
        .clone()
        .oneshot(request(&[("x-correlation-id", b"bad id"), ("traceparent", b"bad"), ("tracestate", b"a=1")]))
        .await
        .unwrap();
    assert_ne!(sent["x-correlation-id"], "bad id");
    assert!(CorrelationId::from_header_value(&sent["x-correlation-id"]).is_ok());
    assert!(TraceParent::parse(sent["traceparent"].to_str().unwrap()).is_ok());
    assert!(!sent.contains_key("tracestate"));
    // A context without a trace still gets one on the wire.
    let sent =
        RequestContext::new(CorrelationId::parse("n").unwrap()).scope(client.oneshot(request(&[]))).await.unwrap();
    assert!(TraceParent::parse(sent["traceparent"].to_str().unwrap()).is_ok());
}

#[tokio::test]
async fn the_client_header_and_trace_context_are_configurable() {
    let client = CorrelationIdClientLayer::new()
        .header(http::HeaderName::from_static("x-request-id"))
        .trace_context(false)
        .generator(|| CorrelationId::parse("gen").unwrap())
        .layer(echo_headers());
    let sent = client.oneshot(request(&[])).await.unwrap();
    assert_eq!(sent["x-request-id"], "gen");
    assert!(!sent.contains_key("x-correlation-id") && !sent.contains_key("traceparent"));
}

#[tokio::test]
async fn server_and_client_together_carry_one_id_across_a_hop() {
    let downstream = CorrelationIdClientLayer::new().layer(echo_headers());
    let server = CorrelationIdLayer::new().layer(service_fn(move |_: Request<()>| {
        let downstream = downstream.clone();
        async move {
            let sent = downstream.oneshot(request(&[])).await?;
            Ok::<_, Infallible>(Response::new(sent))
        }
    }));
    let res = server.oneshot(request(&[("x-request-id", b"edge-5"), ("traceparent", TP.as_bytes())])).await.unwrap();
    assert_eq!(res.headers()["x-correlation-id"], "edge-5");
    let sent = res.into_body();
    assert_eq!(sent["x-correlation-id"], "edge-5");
    let tp = TraceParent::parse(sent["traceparent"].to_str().unwrap()).unwrap();
    assert_eq!(tp.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(tp.parent_id().to_string(), "00f067aa0ba902b7");
}

#[test]
fn futures_and_services_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let mut svc = CorrelationIdLayer::new().layer(recording());
    send_sync(&svc);
    send(&svc.call(request(&[])));
    send_sync(&CorrelationIdClientLayer::new().layer(recording()));
    send_sync(&RequestContext::generate());
}

/// `filler` headers of no interest, then `ours`: with many names a request's
/// headers are looked up rather than searched in one pass.
fn crowded_request(filler: usize, ours: &[(&str, &[u8])]) -> Request<()> {
    let mut req = request(ours);
    for i in 0..filler {
        let name = http::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap();
        req.headers_mut().insert(name, HeaderValue::from_static("v"));
    }
    req
}

#[tokio::test]
async fn small_and_large_header_maps_are_read_alike() {
    for filler in [0, 3, 30] {
        // Server: an alternative id, a trace with its state.
        let req = crowded_request(
            filler,
            &[("x-request-id", b"lb-7"), ("traceparent", TP.as_bytes()), ("tracestate", b"k=v")],
        );
        let (res, seen) = serve(CorrelationIdLayer::new(), req).await;
        assert_eq!(res["x-correlation-id"], "lb-7", "{filler} other headers");
        assert!(!seen.headers.contains_key("x-request-id"));
        let ctx = seen.extension.unwrap();
        assert_eq!(ctx.traceparent.unwrap().trace_id(), TraceParent::parse(TP).unwrap().trace_id());
        assert_eq!(ctx.tracestate.unwrap().as_str(), "k=v");
        // A tracestate without a traceparent is dropped.
        let (_, seen) = serve(CorrelationIdLayer::new(), crowded_request(filler, &[("tracestate", b"k=v")])).await;
        assert!(!seen.headers.contains_key("tracestate"), "{filler} other headers");

        // Client, inside and outside a scope: a stale tracestate is removed.
        let client = CorrelationIdClientLayer::new().layer(echo_headers());
        let ctx =
            RequestContext::new(CorrelationId::parse("c-1").unwrap()).with_traceparent(TraceParent::generate(true));
        let req = crowded_request(filler, &[("tracestate", b"stale=1")]);
        let sent = ctx.scope(client.clone().oneshot(req)).await.unwrap();
        assert_eq!(sent["x-correlation-id"], "c-1");
        assert!(!sent.contains_key("tracestate"), "{filler} other headers");
        let req =
            crowded_request(filler, &[("x-correlation-id", b"job-1"), ("traceparent", b"bad"), ("tracestate", b"a=1")]);
        let sent = client.oneshot(req).await.unwrap();
        assert_eq!(sent["x-correlation-id"], "job-1");
        assert!(TraceParent::parse(sent["traceparent"].to_str().unwrap()).is_ok());
        assert!(!sent.contains_key("tracestate"), "{filler} other headers");
        assert_eq!(sent.keys_len(), filler + 2);
    }
}
