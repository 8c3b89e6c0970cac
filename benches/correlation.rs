//! Per-request cost of the correlation layers against tower-http's request-id middleware and a
//! bare stack.
//!
//! Every subject is a server stack whose handler makes one call to the same no-op downstream
//! service, on the same incoming request:
//!
//! - `bare`: no ids at all;
//! - `tower-http`: `SetRequestIdLayer` + `PropagateRequestIdLayer` (`x-request-id`, UUID v4) on
//!   the server, the handler copying the `RequestId` onto its outgoing request by hand (tower-http
//!   has no client side);
//! - `ours/ids`: `CorrelationIdLayer` + `CorrelationIdClientLayer` on `x-request-id`, trace
//!   context off — the same work as tower-http, plus validation and the task-local scope;
//! - `ours/full`: the same with W3C trace context on (parse or start a trace, a new parent id per
//!   outgoing call).
//!
//! Each runs with the id present on the incoming request (`with-id`) and absent (`no-id`, so one
//! is generated). One measured request is `poll_ready` + `call` + one poll of the response
//! future (everything is ready at once), driven by hand with a no-op waker. Before the criterion
//! run the bench prints heap allocations per request for every subject.
//!
//! A second group compares the task-local scope this crate uses (a thread-local set around each
//! poll, `RequestContext::scope`) with `tokio::task_local!`.
//!
//! Run: `cargo bench --no-default-features --features correlation-id --bench correlation`.

use std::convert::Infallible;
use std::future::{ready, Future};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::task::noop_waker_ref;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Service, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_mesh::correlation::{CorrelationIdClientLayer, CorrelationIdLayer, RequestContext, TraceParent};

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The downstream service every handler calls: answers at once.
fn downstream() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Unpin> + Clone {
    service_fn(|req: Request<()>| {
        black_box(req.headers());
        ready(Ok::<_, Infallible>(Response::new(())))
    })
}

/// Poll a future that must be ready at once.
#[inline]
fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(noop_waker_ref());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the bench services are always ready"),
    }
}

/// One request through `svc`.
#[inline]
fn serve<S>(svc: &mut S, req: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(svc.poll_ready(&mut cx).is_ready());
    now(svc.call(req)).unwrap()
}

type Server = Box<dyn FnMut(Request<()>) -> Response<()>>;

fn bare() -> Server {
    let mut svc = service_fn(move |_req: Request<()>| {
        let mut client = downstream();
        async move { client.call(Request::new(())).await }
    });
    Box::new(move |req| serve(&mut svc, req))
}

fn tower_http() -> Server {
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .service_fn(move |req: Request<()>| {
            let mut client = downstream();
            let id = req.extensions().get::<RequestId>().cloned();
            async move {
                let mut out = Request::new(());
                if let Some(id) = id {
                    out.headers_mut().insert(X_REQUEST_ID, id.into_header_value());
                }
                client.call(out).await
            }
        });
    Box::new(move |req| serve(&mut svc, req))
}

fn ours(trace_context: bool) -> Server {
    let client = ServiceBuilder::new()
        .layer(CorrelationIdClientLayer::new().header(X_REQUEST_ID).trace_context(trace_context))
        .service(downstream());
    let mut svc = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new().header(X_REQUEST_ID).accept_only_main_header().trace_context(trace_context))
        .service_fn(move |_req: Request<()>| {
            let mut client = client.clone();
            async move { client.call(Request::new(())).await }
        });
    Box::new(move |req| serve(&mut svc, req))
}

fn subjects() -> Vec<(&'static str, Server)> {
    vec![("bare", bare()), ("tower-http", tower_http()), ("ours/ids", ours(false)), ("ours/full", ours(true))]
}

const INCOMING_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The incoming request: with or without an id (and a traceparent, which tower-http ignores).
fn request(with_id: bool) -> Request<()> {
    let mut req = Request::new(());
    if with_id {
        req.headers_mut().insert(X_REQUEST_ID, HeaderValue::from_static("0192f0c1-7d2e-7c4b-9a51-3c2e8f1d2a4b"));
        req.headers_mut().insert("traceparent", HeaderValue::from_static(INCOMING_TP));
    }
    req
}

fn print_allocations() {
    println!("heap allocations per request (request construction included):");
    for with_id in [true, false] {
        for (name, mut server) in subjects() {
            for _ in 0..10 {
                server(request(with_id));
            }
            const N: u64 = 1000;
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 0..N {
                black_box(server(request(with_id)));
            }
            let per = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64;
            println!("  {:<7} {name:<11} {per:.1}", if with_id { "with-id" } else { "no-id" });
        }
    }
}

fn layers(c: &mut Criterion) {
    print_allocations();
    for with_id in [true, false] {
        let mut group = c.benchmark_group(if with_id { "correlation/with-id" } else { "correlation/no-id" });
        for (name, mut server) in subjects() {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_batched(|| request(with_id), &mut server, criterion::BatchSize::SmallInput)
            });
        }
        group.finish();
    }
}

tokio::task_local! {
    static TOKIO_CTX: RequestContext;
}

fn scope(c: &mut Criterion) {
    let ctx =
        RequestContext::new("order-42".parse().unwrap()).with_traceparent(TraceParent::parse(INCOMING_TP).unwrap());
    let mut group = c.benchmark_group("scope");
    group.bench_function("thread-local/enter", |b| {
        b.iter_batched(|| ctx.clone(), |ctx| now(ctx.scope(ready(black_box(1)))), criterion::BatchSize::SmallInput)
    });
    group.bench_function("tokio-task-local/enter", |b| {
        b.iter_batched(
            || ctx.clone(),
            |ctx| now(TOKIO_CTX.scope(ctx, ready(black_box(1)))),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("thread-local/enter+read", |b| {
        b.iter_batched(
            || ctx.clone(),
            |ctx| now(ctx.scope(async { RequestContext::current().map(|c| c.correlation_id) })),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("tokio-task-local/enter+read", |b| {
        b.iter_batched(
            || ctx.clone(),
            |ctx| now(TOKIO_CTX.scope(ctx, async { TOKIO_CTX.try_with(|c| c.correlation_id.clone()).ok() })),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, layers, scope);
criterion_main!(benches);
