//! tower-mesh quickstart: a hyper-util client wrapped in
//! timeout → retry → circuit breaker → bulkhead → attempt timeout, calling a flaky upstream.
//!
//! An embedded hyper server on 127.0.0.1 runs through a schedule — healthy,
//! failing with 503, slow, healthy again — while 16 workers send a few thousand
//! requests. At the end the example prints what each layer did: successes,
//! retries, breaker transitions with their times, rejections and latency
//! percentiles. It needs no outside service and finishes in about 8 seconds.
//!
//! ```text
//! cargo run --example quickstart
//! ```

#[path = "../tests/support/upstream.rs"]
mod upstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::{BulkheadFull, BulkheadLayer};
use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
use tower_mesh::classify::{HttpClassifier, IgnoreRejections};
use tower_mesh::retry::{Backoff, Jitter, RetryBudget, RetryLayer};
use tower_mesh::timeout::{Elapsed, TimeoutLayer};
use upstream::{Mode, Upstream};

const RUN_FOR: Duration = Duration::from_secs(8);
const WORKERS: usize = 16;

#[derive(Default)]
struct Tally {
    ok: u64,
    upstream_errors: u64,
    circuit_open: u64,
    bulkhead_full: u64,
    timeouts: u64,
    other: u64,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Metrics handles are registered when the layers are built, so the
    // recorder goes in first.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder)?;

    let upstream = Upstream::start().await;
    let uri = upstream.uri("/items");
    println!("flaky upstream listening on {}", upstream.addr);

    let started = Instant::now();
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let log = transitions.clone();

    // The recommended client stack, outermost first.
    let breaker = CircuitBreakerLayer::builder()
        .name("items")
        .classifier(IgnoreRejections(HttpClassifier::new()))
        .count_window(50)
        .minimum_calls(20)
        .failure_rate_threshold(50.0)
        .slow_call_duration(Duration::from_millis(100))
        .slow_call_rate_threshold(80.0)
        .wait_in_open(Duration::from_millis(500))
        .permitted_calls_in_half_open(5)
        .on_state_change(move |change| {
            log.lock().unwrap().push((started.elapsed(), format!("{:?} -> {:?}", change.from, change.to)));
        })
        .build()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(800)))
        .layer(
            RetryLayer::builder()
                .name("items")
                .max_retries(2)
                .backoff(
                    Backoff::exponential(Duration::from_millis(20), 2.0, Duration::from_millis(200))
                        .jitter(Jitter::Full),
                )
                .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2))
                .classifier(IgnoreRejections(HttpClassifier::new()))
                .http()
                .build()?,
        )
        .layer(breaker)
        .layer(
            BulkheadLayer::builder()
                .name("items")
                .max_concurrent_calls(8)
                .max_wait(Duration::from_millis(50))
                .build()?,
        )
        .layer(TimeoutLayer::per_attempt(Duration::from_millis(250)))
        .service(client);

    // The upstream's schedule.
    let control = upstream.control.clone();
    let schedule = tokio::spawn(async move {
        let phases = [
            (Duration::from_millis(1500), Mode::Healthy, Duration::from_millis(1), "healthy"),
            (Duration::from_millis(1500), Mode::Status(503), Duration::from_millis(1), "failing with 503"),
            (Duration::from_millis(1500), Mode::Healthy, Duration::from_millis(400), "slow (400 ms)"),
            (Duration::from_millis(3500), Mode::Healthy, Duration::from_millis(1), "healthy again"),
        ];
        for (len, mode, delay, name) in phases {
            println!("{:>6.2}s upstream: {name}", started.elapsed().as_secs_f64());
            control.set(mode);
            control.set_delay(delay);
            tokio::time::sleep(len).await;
        }
    });

    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (svc, tally, uri) = (svc.clone(), tally.clone(), uri.clone());
            tokio::spawn(async move {
                while started.elapsed() < RUN_FOR {
                    let req = Request::get(&uri).body(Full::new(Bytes::new())).unwrap();
                    let t0 = Instant::now();
                    let result = match svc.clone().oneshot(req).await {
                        // Read the body so the connection goes back to the pool.
                        Ok(res) if res.status().is_success() => {
                            res.into_body().collect().await.map(|_| true).map_err(Into::into)
                        }
                        Ok(_) => Ok(false),
                        Err(e) => Err(e),
                    };
                    let took = t0.elapsed();
                    {
                        let mut t = tally.lock().unwrap();
                        let t = &mut *t;
                        match result {
                            Ok(true) => {
                                t.ok += 1;
                                t.latencies.push(took);
                            }
                            Ok(false) => t.upstream_errors += 1,
                            Err(e) if e.is::<CircuitOpen>() => t.circuit_open += 1,
                            Err(e) if e.is::<BulkheadFull>() => t.bulkhead_full += 1,
                            Err(e) if e.is::<Elapsed>() => t.timeouts += 1,
                            Err(_) => t.other += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    schedule.abort();

    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.latencies.sort();
    let pct =
        |p: f64| t.latencies.get(((t.latencies.len() as f64 * p) as usize).min(t.latencies.len().saturating_sub(1)));
    let total = t.ok + t.upstream_errors + t.circuit_open + t.bulkhead_full + t.timeouts + t.other;
    let counter = |name: &str| -> u64 {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., v)| if let DebugValue::Counter(c) = v { c } else { 0 })
            .sum()
    };

    println!("\n== summary after {:.1}s", started.elapsed().as_secs_f64());
    println!("requests sent by the workers   {total}");
    println!("  succeeded                    {}", t.ok);
    println!("  failed upstream (after retry){:>6}", t.upstream_errors);
    println!("  rejected: circuit open       {}", t.circuit_open);
    println!("  rejected: bulkhead full      {}", t.bulkhead_full);
    println!("  timed out                    {}", t.timeouts);
    println!("  other errors                 {}", t.other);
    println!("attempts that reached upstream {}", upstream.control.requests());
    println!("retries                        {}", counter("tower_mesh_retry_retries_total"));
    println!("retry budget exhausted         {}", counter("tower_mesh_retry_budget_exhausted_total"));
    if let (Some(p50), Some(p99)) = (pct(0.50), pct(0.99)) {
        println!("latency of successes           p50 {:.1} ms, p99 {:.1} ms", ms(*p50), ms(*p99));
    }
    println!("circuit breaker transitions:");
    for (at, what) in transitions.lock().unwrap().iter() {
        println!("  {:>6.2}s  {what}", at.as_secs_f64());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
