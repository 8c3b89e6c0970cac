//! SOAP envelope overhead: wrapping a payload and unwrapping a response with the soap module,
//! against doing the same by hand with a bare quick-xml scan of the same bytes.
//!
//! Subjects, for a 1 KB and a 100 KB Body:
//! - `unwrap/ours`: `Envelope::parse` (safety checks, namespace resolution, header blocks,
//!   fault detection) and the zero-copy Body slice;
//!   `unwrap/quick-xml`: a bare `quick_xml::Reader` scan of every event of the same bytes that
//!   notes where the Body starts and ends (no namespaces, no checks).
//! - `wrap_unwrap/ours`: `EnvelopeBody::new` around the payload, flattened to one buffer (as it
//!   arrives on the other side), then `Envelope::parse` + `body()`;
//!   `wrap_unwrap/quick-xml`: the envelope written by hand into a `Vec` and the bare scan.
//! - `client_call/ours`: a whole `SoapClient` call (request built with headers, response read
//!   and parsed) over an in-memory transport answering a prebuilt response;
//!   `client_call/bare`: the same transport called with a hand-built request and the response
//!   scanned by hand.
//!
//! Before the run it prints heap allocations per call; after it, the throughput ratios
//! (ours / quick-xml; the target is >= 0.9).
//!
//! `soap/adversarial/*`: `Envelope::parse` of hostile messages of 3–4 MiB (under the 4 MiB
//! limit), refused at a limit or parsed: namespace and attribute floods, header-block floods,
//! the limits filled (every name resolved through a full scope), long names, nesting at the
//! depth limit, a Fault detail and a Body made standalone. Target: at most 50 ms per MiB.
//! With a filter naming `adversarial` only that group runs, and its figures (ms per MiB) are
//! printed after it.
//!
//! Run: `cargo bench --no-default-features --features soap --bench soap -- --warm-up-time 1 --measurement-time 3`
//! (adversarial shapes only: `… --bench soap -- adversarial --warm-up-time 1 --measurement-time 3`)

use std::convert::Infallible;
use std::future::{ready, Future};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::task::noop_waker_ref;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use quick_xml::events::Event;
use quick_xml::Reader;
use tower::{Layer, Service};
use tower_mesh::soap::{Envelope, EnvelopeBody, SoapEnvelopeLayer, SoapLimits, SoapRequest, SoapVersion};

#[path = "support/alloc.rs"]
mod alloc;
use alloc::ALLOCATIONS;

fn allocations_per_call(mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let n = 1000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// A Body of about `size` bytes: items with attributes, text and escapes.
fn payload(size: usize) -> Bytes {
    let mut s = String::from("<m:Items xmlns:m=\"urn:bench\">");
    let mut i = 0;
    while s.len() + 12 < size {
        s.push_str(&format!("<m:item id=\"{i}\">value {i} &amp; more</m:item>"));
        i += 1;
    }
    s.push_str("</m:Items>");
    Bytes::from(s)
}

const HEAD: &str = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>";
const TAIL: &str = "</soap:Body></soap:Envelope>";

/// The bare quick-xml baseline: validate UTF-8, scan every event, note the Body's content range.
fn quick_xml_scan(msg: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let (mut start, mut end) = (0, 0);
    loop {
        let before = reader.buffer_position() as usize;
        match reader.read_event().ok()? {
            Event::Start(e) => {
                depth += 1;
                if depth == 2 && e.local_name().into_inner() == "Body" {
                    start = reader.buffer_position() as usize;
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    end = before;
                }
                depth -= 1;
            }
            Event::Eof => return Some((start, end)),
            _ => {}
        }
    }
}

fn hand_wrap(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD.len() + payload.len() + TAIL.len());
    v.extend_from_slice(HEAD.as_bytes());
    v.extend_from_slice(payload);
    v.extend_from_slice(TAIL.as_bytes());
    v
}

fn ours_unwrap(msg: &Bytes, limits: &SoapLimits) -> Bytes {
    Envelope::parse(msg.clone(), limits).unwrap().body()
}

fn ours_wrap_unwrap(payload: &Bytes, limits: &SoapLimits) -> Bytes {
    let wire = EnvelopeBody::new(SoapVersion::V11, &[], payload.clone()).to_bytes();
    Envelope::parse(wire, limits).unwrap().body()
}

fn hand_wrap_unwrap(payload: &Bytes) -> Bytes {
    let wire = Bytes::from(hand_wrap(payload));
    let (s, e) = quick_xml_scan(&wire).unwrap();
    wire.slice(s..e)
}

/// Poll a future that is ready without waiting (the in-memory transport never waits).
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn transport<B>(
    response: Bytes,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Request<B>| ready(Ok::<_, Infallible>(Response::new(Full::new(response.clone())))))
}

/// Hostile messages under the default size limit: (name, message).
fn adversarial() -> Vec<(&'static str, Bytes)> {
    const ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    let envelope = |decls: &str, header: &str, body: &str| {
        Bytes::from(format!(
            "<s:Envelope xmlns:s=\"{ENV}\"{decls}><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        ))
    };
    let fill = |unit: &dyn Fn(usize) -> String, budget: usize| {
        let mut out = String::new();
        let mut i = 0;
        while out.len() < budget {
            out.push_str(&unit(i));
            i += 1;
        }
        out
    };
    let mib = 1024 * 1024;
    let decls127: String = (0..127).map(|i| format!(" xmlns:p{i}=\"urn:p{i}\"")).collect();
    let mut shapes = vec![
        // The message: ~100k declarations and ~100k empty header blocks.
        (
            "namespace_flood",
            envelope(
                &fill(&|i| format!(" xmlns:p{i}=\"urn:p{i}\""), 2 * mib),
                &fill(&|i| format!("<p{}:H/>", i % 1000), mib),
                "",
            ),
        ),
        ("attribute_flood", envelope(&fill(&|i| format!(" a{i}=\"v\""), 3 * mib), "", "")),
        ("header_block_flood", envelope(" xmlns:h=\"urn:h\"", &fill(&|_| "<h:H/>".to_owned(), 3 * mib), "")),
    ];
    // The limits filled: 128 declarations in scope, 256 header blocks of 255 attributes, each
    // name resolved, and 12 KiB of content each.
    let attrs: String = (0..255).map(|i| format!(" p{}:a{i}=\"v\"", i % 127)).collect();
    let content = "<x>text &amp; more</x>".repeat(12 * 1024 / 22);
    shapes.push((
        "limits_filled",
        envelope(
            &decls127,
            &(0..256).map(|i| format!("<p{0}:H{i}{attrs}>{content}</p{0}:H{i}>", i % 127)).collect::<String>(),
            "<p1:Op/>",
        ),
    ));
    // Long names: a 1 MiB prefix declared and used by a header block and the first Body element.
    let long = "n".repeat(mib);
    shapes.push((
        "long_names",
        envelope(&format!(" xmlns:{long}=\"urn:long\""), &format!("<{long}:H/>"), &format!("<{long}:Op/>")),
    ));
    // Nesting at the depth limit (64, the Body's content at 3..64), repeated.
    let nest = format!("{}{}", "<d>".repeat(61), "</d>".repeat(61));
    shapes.push(("deep_nesting", envelope("", "", &fill(&|_| nest.clone(), 4 * mib - 2048))));
    // A Fault whose detail (3.5 MiB of prefixed names) takes the Envelope's declarations.
    let detail =
        fill(&|i| format!("<p{0}:e p{1}:a=\"p{2}:v\"/>", i % 127, (i + 1) % 127, (i + 2) % 127), 3 * mib + mib / 2);
    shapes.push((
        "fault_detail",
        envelope(&decls127, "", &format!("<s:Fault><faultcode>s:Client</faultcode><faultstring>x</faultstring><detail><p0:D>{detail}</p0:D></detail></s:Fault>")),
    ));
    // The same detail without a root: each of its ~120k top-level elements takes the
    // declarations it uses, until they would add more than the size limit.
    shapes.push((
        "detail_many_roots",
        envelope(&decls127, "", &format!("<s:Fault><faultcode>s:Client</faultcode><faultstring>x</faultstring><detail>{detail}</detail></s:Fault>")),
    ));
    shapes
}

/// The adversarial shapes: parse (and for a parsed one, make its Body standalone).
fn adversarial_group(c: &mut Criterion, limits: &SoapLimits) {
    let shapes = adversarial();
    println!("adversarial shapes:");
    for (name, msg) in &shapes {
        let outcome = match Envelope::parse(msg.clone(), limits) {
            Ok(env) => format!("parsed, {} header blocks", env.headers().len()),
            Err(e) => format!("refused: {e}"),
        };
        println!("  {name:<20} {:>5.2} MiB  {outcome}", msg.len() as f64 / (1024.0 * 1024.0));
    }
    let mut g = c.benchmark_group("soap/adversarial");
    for (name, msg) in &shapes {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| match Envelope::parse(black_box(msg.clone()), limits) {
                Ok(env) => drop(black_box(env.standalone_body().len())),
                Err(e) => drop(black_box(e)),
            })
        });
    }
    g.finish();
    let dir = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| "target".into());
    println!("\nadversarial shapes, median time per MiB (target <= 50 ms):");
    for (name, msg) in &shapes {
        let path = dir.join("criterion/soap_adversarial").join(name).join("new/estimates.json");
        let median = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|j| j["median"]["point_estimate"].as_f64());
        match median {
            Some(ns) => {
                let mib = msg.len() as f64 / (1024.0 * 1024.0);
                println!("  {name:<20} {:>8.2} ms  {:>6.2} ms/MiB", ns / 1e6, ns / 1e6 / mib)
            }
            None => println!("  {name:<20} (no estimate)"),
        }
    }
}

fn main() {
    let limits = SoapLimits::default();
    if std::env::args().skip(1).any(|a| a.contains("adversarial")) {
        let mut c = Criterion::default().configure_from_args();
        adversarial_group(&mut c, &limits);
        c.final_summary();
        return;
    }
    let sizes = [("1KB", 1024usize), ("100KB", 100 * 1024)];

    println!("heap allocations per call:");
    for (name, size) in sizes {
        let p = payload(size);
        let msg = Bytes::from(hand_wrap(&p));
        println!(
            "  unwrap/{name}/ours        {:>6.1}",
            allocations_per_call(|| drop(black_box(ours_unwrap(&msg, &limits))))
        );
        println!(
            "  unwrap/{name}/quick-xml   {:>6.1}",
            allocations_per_call(|| {
                black_box(quick_xml_scan(&msg));
            })
        );
        println!(
            "  wrap_unwrap/{name}/ours   {:>6.1}",
            allocations_per_call(|| drop(black_box(ours_wrap_unwrap(&p, &limits))))
        );
        println!("  wrap_unwrap/{name}/hand   {:>6.1}", allocations_per_call(|| drop(black_box(hand_wrap_unwrap(&p)))));
    }
    let p = payload(1024);
    let response = Bytes::from(hand_wrap(&p));
    let mut client = SoapEnvelopeLayer::new("http://127.0.0.1:8080/svc".parse().unwrap())
        .layer(transport::<EnvelopeBody>(response.clone()));
    let mut bare = transport::<Full<Bytes>>(response.clone());
    let call_ours = |client: &mut tower_mesh::soap::SoapClient<_>| {
        now(std::future::poll_fn(|cx| client.poll_ready(cx))).unwrap();
        let res = now(client.call(SoapRequest::new(p.clone()).action("urn:bench#Items"))).unwrap();
        black_box(res.body());
    };
    let mut call_bare = || {
        let mut req = Request::new(Full::new(Bytes::from(hand_wrap(&p))));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("http://127.0.0.1:8080/svc");
        req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/xml; charset=utf-8"));
        req.headers_mut().insert("soapaction", http::HeaderValue::from_static("\"urn:bench#Items\""));
        now(std::future::poll_fn(|cx| bare.poll_ready(cx))).unwrap();
        let res = now(bare.call(req)).unwrap();
        let body = now(res.into_body().collect()).unwrap().to_bytes();
        let (s, e) = quick_xml_scan(&body).unwrap();
        black_box(body.slice(s..e));
    };
    println!("  client_call/1KB/ours      {:>6.1}", allocations_per_call(|| call_ours(&mut client)));
    println!("  client_call/1KB/bare      {:>6.1}", allocations_per_call(&mut call_bare));

    println!("\nthroughput ratio ours / baseline, interleaved (best of 30 alternating rounds; robust to a shared machine's load):");
    for (name, size) in sizes {
        let p = payload(size);
        let msg = Bytes::from(hand_wrap(&p));
        let iters = (200_000 / size).max(20);
        let r = interleaved(
            iters,
            || drop(black_box(ours_unwrap(&msg, &limits))),
            || {
                black_box(quick_xml_scan(&msg));
            },
        );
        println!("  soap/unwrap/{name:<6}       {r}");
        let r = interleaved(
            iters,
            || drop(black_box(ours_wrap_unwrap(&p, &limits))),
            || drop(black_box(hand_wrap_unwrap(&p))),
        );
        println!("  soap/wrap_unwrap/{name:<6}  {r}");
    }
    let r = interleaved(200, || call_ours(&mut client), &mut call_bare);
    println!("  soap/client_call/1KB    {r}");

    let mut c = Criterion::default().configure_from_args();
    for (name, size) in sizes {
        let p = payload(size);
        let msg = Bytes::from(hand_wrap(&p));
        let mut g = c.benchmark_group(format!("soap/unwrap/{name}"));
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("ours"), |b| b.iter(|| ours_unwrap(black_box(&msg), &limits)));
        g.bench_function(BenchmarkId::from_parameter("quick-xml"), |b| b.iter(|| quick_xml_scan(black_box(&msg))));
        g.finish();
        let mut g = c.benchmark_group(format!("soap/wrap_unwrap/{name}"));
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("ours"), |b| b.iter(|| ours_wrap_unwrap(black_box(&p), &limits)));
        g.bench_function(BenchmarkId::from_parameter("quick-xml"), |b| b.iter(|| hand_wrap_unwrap(black_box(&p))));
        g.finish();
    }
    let mut g = c.benchmark_group("soap/client_call/1KB");
    g.bench_function(BenchmarkId::from_parameter("ours"), |b| b.iter(|| call_ours(&mut client)));
    g.bench_function(BenchmarkId::from_parameter("bare"), |b| b.iter(&mut call_bare));
    g.finish();
    adversarial_group(&mut c, &limits);
    c.final_summary();
    print_ratios();
}

/// Time `ours` and `baseline` in alternating rounds of `iters` calls and
/// compare their best rounds: "ours N ns, baseline M ns, ratio M/N".
fn interleaved(iters: usize, mut ours: impl FnMut(), mut baseline: impl FnMut()) -> String {
    let (mut best_ours, mut best_base) = (f64::MAX, f64::MAX);
    for _ in 0..30 {
        let t = std::time::Instant::now();
        for _ in 0..iters {
            ours();
        }
        best_ours = best_ours.min(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            baseline();
        }
        best_base = best_base.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    format!("ours {best_ours:>9.0} ns  baseline {best_base:>9.0} ns  ratio {:.2}", best_base / best_ours)
}

/// Throughput ratios ours / baseline from criterion's saved medians.
fn print_ratios() {
    let dir = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| "target".into());
    let median = |group: &str, id: &str| -> Option<f64> {
        let path = dir.join("criterion").join(group.replace('/', "_")).join(id).join("new/estimates.json");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    println!("\nthroughput ratio ours / baseline (target >= 0.9):");
    for (group, base) in [
        ("soap/unwrap/1KB", "quick-xml"),
        ("soap/unwrap/100KB", "quick-xml"),
        ("soap/wrap_unwrap/1KB", "quick-xml"),
        ("soap/wrap_unwrap/100KB", "quick-xml"),
        ("soap/client_call/1KB", "bare"),
    ] {
        match (median(group, "ours"), median(group, base)) {
            (Some(ours), Some(b)) => {
                println!("  {group:<24} ours {ours:>10.0} ns  {base} {b:>10.0} ns  ratio {:.2}", b / ours)
            }
            _ => println!("  {group:<24} (no estimates)"),
        }
    }
}
