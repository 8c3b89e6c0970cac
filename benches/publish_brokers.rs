//! Publisher throughput and publish-to-ack latency for Redis Streams, MQTT
//! and Kafka: our `Service` (alone and under the full resilience stack) vs
//! the raw client doing the same confirmed publish, same run. Redis and
//! Mosquitto are the local servers; Kafka runs against librdkafka's mock
//! cluster (in-process, over TCP on loopback) and against a real
//! Kafka-protocol broker, tansu, that the bench starts on a free loopback
//! port (row `kafka-tansu`; skipped without the `tansu` binary, see
//! `tests/support/tansu.rs`).
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
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tower_mesh::publish::kafka::Kafka;
use tower_mesh::publish::mqtt::Mqtt;
use tower_mesh::publish::redis::Redis;
use tower_mesh::publish::{ContentMode, Outgoing};

#[path = "support/publish.rs"]
mod harness;
use harness::*;
#[allow(unused_imports)] // its unit tests' imports, unused without the test harness
#[path = "../tests/support/services.rs"]
mod services;
use services::tansu::Tansu;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
/// Trim the bench stream to about this many entries.
const MAX_LEN: usize = 10_000;

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

/// The Kafka variants against the cluster at `bootstrap`, where `topic`
/// exists; `cleanup` runs after the summary.
fn kafka_variants(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    bootstrap: &str,
    topic: String,
    cleanup: Box<dyn FnOnce(&tokio::runtime::Runtime)>,
) -> Broker {
    rt.block_on(async {
        let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let t = topic.clone();
        let ours = Kafka::builder(bootstrap).topic(move |_| t.clone()).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let t = topic.clone();
        let stacked = Kafka::builder(bootstrap).topic(move |_| t.clone()).config(config()).build().unwrap();
        stacked.wait_connected().await.unwrap();
        Broker {
            name,
            raw: runner(RawKafka { producer, topic }),
            ours: runner(Ours(ours)),
            stacked: runner(Ours(stack(stacked))),
            cleanup,
        }
    })
}

fn kafka_mock(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    // The mock cluster lives as long as the bench (leaked: it is not Send).
    let mock = Box::leak(Box::new(rdkafka::mocking::MockCluster::new(1).unwrap()));
    let topic = format!("towermesh.bench.{}", std::process::id());
    mock.create_topic(&topic, 4, 1).unwrap();
    Some(kafka_variants(rt, "kafka-mock", &mock.bootstrap_servers(), topic, Box::new(|_| {})))
}

/// A private tansu broker (stopped after the summary); skipped without the
/// binary (`$TOWER_MESH_TANSU_BIN` or `tansu` in cargo's bin directory).
fn kafka_tansu(rt: &tokio::runtime::Runtime) -> Option<Broker> {
    let tansu = rt.block_on(Tansu::start())?;
    let topic = format!("towermesh.bench.{}", std::process::id());
    rt.block_on(tansu.create_topic(&topic, 4));
    let bootstrap = tansu.bootstrap().to_owned();
    Some(kafka_variants(rt, "kafka-tansu", &bootstrap, topic, Box::new(move |_| drop(tansu))))
}

fn main() {
    run(|rt| [redis(rt), mqtt(rt), kafka_mock(rt), kafka_tansu(rt)].into_iter().flatten().collect());
}
