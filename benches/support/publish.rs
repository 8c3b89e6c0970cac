//! Shared harness of the publisher benches (`publish`, `publish_brokers`):
//! the event, the variants' driver with a bounded window, the resilience
//! stack, and the criterion groups plus alternating-rounds summary.

use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::publish::{Event, PublishClassifier, Publisher, PublisherConfig, Transport};
use tower_mesh::retry::{Backoff, RetryLayer};
use tower_mesh::timeout::TimeoutLayer;

pub const WINDOW: usize = 256;
pub const BATCH: usize = 1_000;
pub const ROUND: usize = 5_000;
pub const ROUNDS: usize = 9;
/// How long a summary round of the raw client lasts, about.
pub const ROUND_TIME: Duration = Duration::from_millis(300);

pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
}

pub fn reachable(name: &str, url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let ok = hp
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok()))
        .is_some();
    if !ok {
        println!("skipped: no {name} at {hp}");
    }
    ok
}

pub fn event(i: usize) -> Event {
    Event::builder("/bench", "bench.created")
        .partition_key(format!("k{}", i % 16))
        .correlation_id("bench-corr")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&serde_json::json!({ "n": i, "payload": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }))
        .unwrap()
        .build()
        .unwrap()
}

/// One way of publishing: `send` starts the confirmed publish of event `i`
/// and returns a future resolving on the broker's ack.
pub trait Variant {
    fn send(&mut self, i: usize) -> impl Future<Output = Pin<Box<dyn Future<Output = ()> + Send>>> + Send;
}

/// Publish `n` events with at most `WINDOW` unconfirmed; returns the elapsed
/// time and every publish-to-ack latency.
pub async fn drive<V: Variant>(v: &mut V, n: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        let t = Instant::now();
        let ack = v.send(i).await;
        pending.push(async move {
            ack.await;
            t.elapsed()
        });
        while pending.len() >= WINDOW {
            lat.push(pending.next().await.unwrap());
        }
    }
    while let Some(d) = pending.next().await {
        lat.push(d);
    }
    (start.elapsed(), lat)
}

/// Our service (any stack) as a variant.
pub struct Ours<S>(pub S);

impl<S> Variant for Ours<S>
where
    S: Service<Event> + Send,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send + 'static,
{
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let e = event(i);
        let fut = self.0.ready().await.unwrap().call(e);
        Box::pin(async move {
            fut.await.unwrap();
        })
    }
}

pub fn stack<T: Transport>(
    p: Publisher<T>,
) -> impl Service<Event, Response = tower_mesh::publish::Receipt, Error = BoxError, Future: Send> + Send {
    ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10)))
                .classifier(PublishClassifier)
                .build()
                .unwrap(),
        )
        .layer(CircuitBreakerLayer::builder().classifier(PublishClassifier).build().unwrap())
        .layer(BulkheadLayer::new(4 * WINDOW))
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(10)))
        .service(p)
}

pub fn config() -> PublisherConfig {
    PublisherConfig { max_in_flight: WINDOW, ..Default::default() }
}

/// Runs `n` confirmed publishes on the runtime: (elapsed, per-publish latencies).
pub type Runner = Box<dyn FnMut(&tokio::runtime::Runtime, usize) -> (Duration, Vec<Duration>)>;

/// The variants of one broker, boxed behind a common runner.
pub struct Broker {
    pub name: &'static str,
    pub raw: Runner,
    pub ours: Runner,
    pub stacked: Runner,
    pub cleanup: Box<dyn FnOnce(&tokio::runtime::Runtime)>,
}

/// Each run drives the variant from a task on the runtime's workers, as a
/// service that publishes is called (from `block_on` the bench's main thread
/// would be a third busy thread on a two-core machine, and the variants with
/// background tasks would pay for it most).
pub fn runner<V: Variant + Send + 'static>(v: V) -> Runner {
    let mut slot = Some(v);
    Box::new(move |rt, n| {
        let mut v = slot.take().expect("a variant runs one round at a time");
        let task = rt.spawn(async move {
            let out = drive(&mut v, n).await;
            (v, out)
        });
        let (v, out) = rt.block_on(task).expect("the bench task panicked");
        slot = Some(v);
        out
    })
}

/// CPU time this process has used (user + system), where `/proc` tells it.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after the command.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Clock ticks: 100 per second on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The whole bench: criterion groups per broker, then the alternating-rounds
/// summary. `brokers` sets up the brokers that are reachable.
pub fn run(brokers: impl FnOnce(&tokio::runtime::Runtime) -> Vec<Broker>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    let mut brokers = brokers(&rt);

    for b in &mut brokers {
        let mut g = criterion.benchmark_group(format!("publish_{}", b.name));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("raw_client", BATCH), |bch| {
            bch.iter_custom(|iters| (0..iters).map(|_| (b.raw)(&rt, BATCH).0).sum())
        });
        g.bench_function(BenchmarkId::new("publisher_service", BATCH), |bch| {
            bch.iter_custom(|iters| (0..iters).map(|_| (b.ours)(&rt, BATCH).0).sum())
        });
        g.bench_function(BenchmarkId::new("full_stack", BATCH), |bch| {
            bch.iter_custom(|iters| (0..iters).map(|_| (b.stacked)(&rt, BATCH).0).sum())
        });
        g.finish();
    }

    println!(
        "\nsummary: {ROUNDS} alternating rounds of at least {ROUND} confirmed publishes (about {} ms of the raw client's), {WINDOW} in flight",
        ROUND_TIME.as_millis()
    );
    println!(
        "{:<10} {:<18} {:>10} {:>19} {:>10} {:>10} {:>12} {:>8}",
        "broker", "variant", "msg/s", "(min-max of rounds)", "p50 ms", "p99 ms", "cpu µs/msg", "ratio"
    );
    for b in &mut brokers {
        let mut results: [(Vec<f64>, Vec<Duration>); 3] = Default::default();
        let mut cpu = [Duration::ZERO; 3];
        // A round long enough that a scheduling hiccup of a few milliseconds
        // does not decide it: sized from a warm-up round of each variant.
        let warm_up = [&mut b.raw, &mut b.ours, &mut b.stacked].map(|f| f(&rt, ROUND).0);
        let raw_rate = ROUND as f64 / warm_up[0].as_secs_f64();
        let n = ((raw_rate * ROUND_TIME.as_secs_f64()) as usize).div_ceil(1000).max(ROUND / 1000) * 1000;
        println!("{:<10} rounds of {n} publishes", b.name);
        for round in 0..ROUNDS {
            // Each round starts with another variant, so that none is always
            // the one that runs after the same other (the broker may still be
            // busy with the previous variant's work, e.g. trimming a stream).
            let mut variants: [(usize, &mut Runner); 3] = [(0, &mut b.raw), (1, &mut b.ours), (2, &mut b.stacked)];
            variants.rotate_left(round % 3);
            for (k, f) in variants {
                let before = cpu_time();
                let (elapsed, lat) = f(&rt, n);
                if let (Some(a), Some(b)) = (before, cpu_time()) {
                    cpu[k] += b - a;
                }
                results[k].0.push(n as f64 / elapsed.as_secs_f64());
                results[k].1.extend(lat);
            }
        }
        let mut medians = [0.0; 3];
        for (k, (tput, lat)) in results.iter_mut().enumerate() {
            tput.sort_by(|a, b| a.partial_cmp(b).unwrap());
            medians[k] = tput[tput.len() / 2];
            lat.sort();
            let name = ["raw client", "publisher service", "full stack"][k];
            println!(
                "{:<10} {:<18} {:>10.0} {:>19} {:>10.2} {:>10.2} {:>12.2} {:>8.3}",
                b.name,
                name,
                medians[k],
                format!("({:.0}-{:.0})", tput[0], tput[tput.len() - 1]),
                percentile(lat, 0.50).as_secs_f64() * 1e3,
                percentile(lat, 0.99).as_secs_f64() * 1e3,
                cpu[k].as_secs_f64() * 1e6 / (ROUNDS * n) as f64,
                medians[k] / medians[0]
            );
        }
    }
    for b in brokers {
        (b.cleanup)(&rt);
    }
    criterion.final_summary();
}
