//! Publisher throughput and publish-to-ack latency for Redis Streams, MQTT
//! and Kafka: our `Service` (alone and under the full resilience stack) vs
//! the raw client doing the same confirmed publish, same run. Redis and
//! Mosquitto are the local servers; Kafka is librdkafka's mock cluster
//! (in-process, over TCP on loopback).
//!
//! ```text
//! cargo bench --bench publish_brokers --features redis,mqtt,kafka,timeout,retry,circuit-breaker,bulkhead -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Every variant sends the same messages (same body, same fields / properties
//! / headers, built by the publishers' own helpers) with at most `WINDOW`
//! unconfirmed. After the criterion groups, a summary runs each variant in
//! alternating rounds and prints messages per second, p50/p99 publish-to-ack
//! latency and the ratio to the raw client. A server that is not reachable
//! is skipped.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::publish::kafka::Kafka;
use tower_mesh::publish::mqtt::Mqtt;
use tower_mesh::publish::redis::Redis;
use tower_mesh::publish::{ContentMode, Event, Outgoing, PublishClassifier, Publisher, PublisherConfig, Transport};
use tower_mesh::retry::{Backoff, RetryLayer};
use tower_mesh::timeout::TimeoutLayer;

const WINDOW: usize = 256;
const BATCH: usize = 1_000;
const ROUND: usize = 5_000;
const ROUNDS: usize = 5;
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
/// Trim the bench stream to about this many entries.
const MAX_LEN: usize = 10_000;

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

/// Raw redis-rs: the same XADD (same fields, `MAXLEN ~`) on a multiplexed connection.
struct RawRedis {
    conn: redis::aio::MultiplexedConnection,
    key: String,
}

impl Variant for RawRedis {
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let out = Outgoing::new(event(i), ContentMode::Structured);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key).arg("MAXLEN").arg("~").arg(MAX_LEN).arg("*");
        for (name, value) in Redis::fields(&out) {
            cmd.arg(name).arg(&value[..]);
        }
        let mut conn = self.conn.clone();
        let mut reply = Box::pin(async move {
            let _: redis::Value = conn.send_packed_command(&cmd).await.unwrap();
        });
        // Queue the command now, as the publisher does.
        match futures::poll!(reply.as_mut()) {
            std::task::Poll::Ready(()) => Box::pin(async {}),
            std::task::Poll::Pending => reply,
        }
    }
}

/// Raw rumqttc (MQTT 5, QoS 1): an event loop task resolving the oldest
/// waiter on each PUBACK (Mosquitto acknowledges in order).
struct RawMqtt {
    client: rumqttc::v5::AsyncClient,
    waiters: Arc<Mutex<VecDeque<tokio::sync::oneshot::Sender<()>>>>,
    topic: String,
}

impl RawMqtt {
    async fn connect(host: &str, port: u16, topic: String) -> RawMqtt {
        let mut o = rumqttc::v5::MqttOptions::new(format!("bench-raw-{}", std::process::id()), host, port);
        o.set_outgoing_inflight_upper_limit(WINDOW as u16);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, WINDOW);
        let waiters: Arc<Mutex<VecDeque<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) = ev {
                    if let Some(tx) = w.lock().unwrap().pop_front() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        RawMqtt { client, waiters, topic }
    }
}

impl Variant for RawMqtt {
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let out = Outgoing::new(event(i), ContentMode::Structured);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.lock().unwrap().push_back(tx);
        self.client
            .publish_with_properties(
                self.topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                out.body.clone(),
                Mqtt::properties(&out),
            )
            .await
            .unwrap();
        Box::pin(async move {
            rx.await.unwrap();
        })
    }
}

/// Raw rdkafka: the same idempotent producer settings, record, key and headers.
struct RawKafka {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl Variant for RawKafka {
    async fn send(&mut self, i: usize) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let out = Outgoing::new(event(i), ContentMode::Structured);
        let record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&out.body[..])
            .key(out.event.partition_key().unwrap().as_bytes())
            .headers(Kafka::headers(&out));
        let delivery = self.producer.send_result(record).map_err(|(e, _)| e).unwrap();
        Box::pin(async move {
            delivery.await.unwrap().unwrap();
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

fn redis(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    let url = env_or("TOWER_MESH_REDIS_URL", REDIS_URL);
    if !reachable("Redis", &url) {
        return None;
    }
    rt.block_on(async {
        let client = redis::Client::open(url.as_str()).unwrap();
        // The same queue size as the publisher's (its in-flight bound).
        let raw_config = redis::AsyncConnectionConfig::new().set_pipeline_buffer_size(WINDOW);
        let conn = client.get_multiplexed_async_connection_with_config(&raw_config).await.unwrap();
        let key = format!("towermesh:bench:{}", std::process::id());
        let k = key.clone();
        let ours = Redis::builder(&url).stream(move |_| k.clone()).max_len(MAX_LEN).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let k = key.clone();
        let stacked =
            Redis::builder(&url).stream(move |_| k.clone()).max_len(MAX_LEN).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        let mut cleanup_conn = conn.clone();
        let cleanup_key = key.clone();
        Some(Broker {
            name: "redis",
            raw: runner(RawRedis { conn, key }),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup: Box::new(move |rt| {
                rt.block_on(async move {
                    let _: Result<(), _> = redis::cmd("DEL").arg(&cleanup_key).query_async(&mut cleanup_conn).await;
                })
            }),
        })
    })
}

fn mqtt(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    let url = env_or("TOWER_MESH_MQTT_URL", MQTT_URL);
    if !reachable("Mosquitto", &url) {
        return None;
    }
    let hp = url.split_once("://").map_or(url.as_str(), |(_, r)| r).trim_end_matches('/');
    let (host, port) =
        hp.rsplit_once(':').map(|(h, p)| (h.to_owned(), p.parse().unwrap())).unwrap_or((hp.to_owned(), 1883));
    rt.block_on(async {
        // No subscriber: Mosquitto acknowledges QoS 1 publishes all the same.
        let topic = format!("towermesh/bench/{}", std::process::id());
        let raw = RawMqtt::connect(&host, port, topic.clone()).await;
        let t = topic.clone();
        let ours = Mqtt::builder(&url).topic(move |_| t.clone()).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let t = topic.clone();
        let stacked = Mqtt::builder(&url).topic(move |_| t.clone()).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        Some(Broker {
            name: "mqtt",
            raw: runner(raw),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup: Box::new(|_| {}),
        })
    })
}

fn kafka(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    // The mock cluster lives as long as the bench (leaked: it is not Send).
    let mock = Box::leak(Box::new(rdkafka::mocking::MockCluster::new(1).unwrap()));
    let topic = format!("towermesh.bench.{}", std::process::id());
    mock.create_topic(&topic, 4, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    rt.block_on(async {
        let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let t = topic.clone();
        let ours = Kafka::builder(bootstrap.as_str()).topic(move |_| t.clone()).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let t = topic.clone();
        let stacked = Kafka::builder(bootstrap.as_str()).topic(move |_| t.clone()).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        Some(Broker {
            name: "kafka-mock",
            raw: runner(RawKafka { producer, topic }),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup: Box::new(|_| {}),
        })
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    let mut brokers: Vec<Broker> = [redis(&rt), mqtt(&rt), kafka(&rt)].into_iter().flatten().collect();

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
