//! Publisher throughput and publish-to-ack latency: our `Service` (alone and
//! under the full resilience stack) vs the raw client doing the same
//! confirmed publish, same run, against the local RabbitMQ and NATS.
//!
//! ```text
//! cargo bench --bench publish --features rabbitmq,nats,timeout,retry,circuit-breaker,bulkhead -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Every variant sends the same messages (same body, same headers, built by
//! the publishers' own helpers) with at most `WINDOW` unconfirmed. After the
//! criterion groups, a summary runs each variant in alternating rounds and
//! prints messages per second, p50/p99 publish-to-ack latency and the ratio
//! to the raw client. A broker that is not reachable is skipped.

use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::publish::nats::Nats;
use tower_mesh::publish::rabbitmq::RabbitMq;
use tower_mesh::publish::{ContentMode, Event, Outgoing, PublishClassifier, Publisher, PublisherConfig, Transport};
use tower_mesh::retry::{Backoff, RetryLayer};
use tower_mesh::timeout::TimeoutLayer;

const WINDOW: usize = 256;
const BATCH: usize = 1_000;
const ROUND: usize = 5_000;
const ROUNDS: usize = 5;
const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "nats://127.0.0.1:4222";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
}

fn reachable(name: &str, url: &str) -> bool {
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

fn event(i: usize) -> Event {
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
trait Variant {
    fn send(&mut self, i: usize) -> impl Future<Output = Pin<Box<dyn Future<Output = ()> + Send>>>;
}

/// Publish `n` events with at most `WINDOW` unconfirmed; returns the elapsed
/// time and every publish-to-ack latency.
async fn drive<V: Variant>(v: &mut V, n: usize) -> (Duration, Vec<Duration>) {
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
struct Ours<S>(S);

impl<S> Variant for Ours<S>
where
    S: Service<Event> + Send,
    S::Error: std::fmt::Debug,
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

struct RawRabbit {
    channel: lapin::Channel,
    exchange: String,
}

impl Variant for RawRabbit {
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let out = Outgoing::new(event(i), ContentMode::Structured);
        let props = RabbitMq::properties(&out, true);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                out.event.ty().into(),
                lapin::options::BasicPublishOptions { mandatory: true, ..Default::default() },
                &out.body,
                props,
            )
            .await
            .unwrap();
        Box::pin(async move {
            assert!(confirm.await.unwrap().is_ack());
        })
    }
}

struct RawNats {
    js: async_nats::jetstream::Context,
    subject: String,
}

impl Variant for RawNats {
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let out = Outgoing::new(event(i), ContentMode::Structured);
        let headers = Nats::headers(&out);
        let ack = self.js.publish_with_headers(self.subject.clone(), headers, out.body.clone()).await.unwrap();
        Box::pin(async move {
            ack.await.unwrap();
        })
    }
}

fn stack<T: Transport>(
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

fn config() -> PublisherConfig {
    PublisherConfig { max_in_flight: WINDOW, ..Default::default() }
}

/// Runs `n` confirmed publishes on the runtime: (elapsed, per-publish latencies).
type Runner = Box<dyn FnMut(&tokio::runtime::Runtime, usize) -> (Duration, Vec<Duration>)>;

/// The variants of one broker, boxed behind a common runner.
struct Broker {
    name: &'static str,
    raw: Runner,
    ours: Runner,
    stacked: Runner,
    cleanup: Box<dyn FnOnce(&tokio::runtime::Runtime)>,
}

fn runner<V: Variant + 'static>(v: V) -> Runner {
    let mut v = v;
    Box::new(move |rt, n| rt.block_on(drive(&mut v, n)))
}

fn rabbitmq(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    let url = env_or("TOWER_MESH_RABBITMQ_URL", RABBIT_URL);
    if !reachable("RabbitMQ", &url) {
        return None;
    }
    rt.block_on(async {
        use lapin::options::*;
        use lapin::types::FieldTable;
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let exchange = format!("tower-mesh.bench.{}", std::process::id());
        let ex_opts = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
        ch.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, ex_opts, FieldTable::default())
            .await
            .unwrap();
        // A bounded queue so the messages are routed and stored, and dropped at the head.
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(10_000));
        let q = ch
            .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, args)
            .await
            .unwrap();
        ch.queue_bind(
            q.name().as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let raw_ch = conn.create_channel().await.unwrap();
        raw_ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let ours = RabbitMq::builder(url.as_str()).exchange(exchange.as_str()).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let stacked = RabbitMq::builder(url.as_str()).exchange(exchange.as_str()).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        Some(Broker {
            name: "rabbitmq",
            raw: runner(RawRabbit { channel: raw_ch, exchange }),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup: Box::new(move |rt| {
                rt.block_on(async move {
                    let _ = conn.close(200, "bench done".into()).await;
                })
            }),
        })
    })
}

fn nats(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    let url = env_or("TOWER_MESH_NATS_URL", NATS_URL);
    if !reachable("NATS", &url) {
        return None;
    }
    rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let name = format!("TOWER_MESH_BENCH_{}", std::process::id());
        let subject = format!("towermesh.bench.{}", std::process::id());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            max_messages: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
        let s = subject.clone();
        let ours = Nats::builder(url.as_str()).subject(move |_| format!("{s}.x")).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let s = subject.clone();
        let stacked = Nats::builder(url.as_str()).subject(move |_| format!("{s}.x")).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        let cleanup_js = js.clone();
        Some(Broker {
            name: "nats",
            raw: runner(RawNats { js, subject: format!("{subject}.x") }),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup: Box::new(move |rt| {
                rt.block_on(async move {
                    let _ = cleanup_js.delete_stream(&name).await;
                })
            }),
        })
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    let mut brokers: Vec<Broker> = [rabbitmq(&rt), nats(&rt)].into_iter().flatten().collect();

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

    println!("\nsummary: {ROUNDS} alternating rounds of {ROUND} confirmed publishes, {WINDOW} in flight");
    println!("{:<10} {:<18} {:>10} {:>10} {:>10} {:>8}", "broker", "variant", "msg/s", "p50 ms", "p99 ms", "ratio");
    for b in &mut brokers {
        let mut results: [(Vec<f64>, Vec<Duration>); 3] = Default::default();
        for _ in 0..ROUNDS {
            for (k, f) in [&mut b.raw, &mut b.ours, &mut b.stacked].into_iter().enumerate() {
                let (elapsed, lat) = f(&rt, ROUND);
                results[k].0.push(ROUND as f64 / elapsed.as_secs_f64());
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
                "{:<10} {:<18} {:>10.0} {:>10.2} {:>10.2} {:>8.3}",
                b.name,
                name,
                medians[k],
                percentile(lat, 0.50).as_secs_f64() * 1e3,
                percentile(lat, 0.99).as_secs_f64() * 1e3,
                medians[k] / medians[0]
            );
        }
    }
    for b in brokers {
        (b.cleanup)(&rt);
    }
    criterion.final_summary();
}
