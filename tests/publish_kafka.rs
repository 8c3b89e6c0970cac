#![cfg(all(
    feature = "kafka",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The Kafka publisher against a real Kafka-protocol broker, tansu (a
//! private one per test, started on a free loopback port: see
//! `support/tansu.rs`), and against librdkafka's built-in mock cluster.
//!
//! On both (`tansu_*` and `mock_*`): 10,000 events through the full
//! resilience stack read back with a raw rdkafka consumer (each once, in
//! per-key order, with its headers and key), the cluster unreachable at
//! start (through the TCP proxy), delivery reports and typed errors.
//! tansu only: connections cut mid-stream by the TCP proxy (the mock's
//! metadata names its own listeners, so no proxy can sit in front of it),
//! an unknown topic (the mock creates topics on first use). Mock only:
//! the broker closing the connection and answering retriable errors on
//! produce requests (its fault controls).

#[path = "support/services.rs"]
mod services;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tower::{Service, ServiceExt};
use tower_mesh::publish::kafka::{Kafka, KafkaBuilder};
use tower_mesh::publish::{Event, PublishError, PublisherConfig, ReconnectBackoff};

use services::proxy::Proxy;
use services::stack::{self, TP};
use services::tansu::Tansu;

const PARTITIONS: i32 = 4;

fn config() -> PublisherConfig {
    PublisherConfig {
        max_in_flight: 512,
        confirm_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

/// The cluster a test runs against.
enum Cluster {
    /// librdkafka's mock cluster (in this process).
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    /// A private tansu broker (a child process).
    Tansu(Tansu),
}

impl Cluster {
    /// A mock cluster of `brokers` brokers.
    fn mock(brokers: i32) -> Cluster {
        Cluster::Mock(MockCluster::new(brokers).unwrap())
    }

    /// A tansu broker; `None` (skipped) without the binary.
    async fn tansu() -> Option<Cluster> {
        Tansu::start().await.map(Cluster::Tansu)
    }

    fn bootstrap(&self) -> String {
        match self {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::Tansu(tansu) => tansu.bootstrap().to_owned(),
        }
    }

    /// A new topic of [`PARTITIONS`] partitions.
    async fn topic(&self) -> String {
        let topic = topic_name();
        match self {
            Cluster::Mock(mock) => mock.create_topic(&topic, PARTITIONS, 1).unwrap(),
            Cluster::Tansu(tansu) => tansu.create_topic(&topic, PARTITIONS).await,
        }
        topic
    }
}

/// A topic name no other test uses.
fn topic_name() -> String {
    format!("towermesh.test.{}", correlation_uuid::Uuid::new_v4().simple())
}

fn builder(bootstrap: &str, topic: &str) -> KafkaBuilder {
    let topic = topic.to_owned();
    Kafka::builder(bootstrap).topic(move |_: &Event| topic.clone()).config(config())
}

/// Every message of `topic` (all partitions from the beginning) until
/// `want` distinct events arrived (or nothing came for
/// [`services::PATIENCE`]); checks the headers of
/// each. Returns every copy, in per-partition order.
async fn consume(bootstrap: &str, topic: &str, want: usize) -> Vec<stack::Seen> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tower-mesh-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    let mut keys: HashMap<String, i32> = HashMap::new();
    while ids.len() < want {
        let Ok(m) = tokio::time::timeout(services::PATIENCE, consumer.recv()).await else { break };
        let m = m.unwrap();
        let event = Event::from_structured_json(m.payload().expect("a body")).expect("a CloudEvents JSON body");
        let headers = m.headers().expect("headers");
        let get = |k: &str| {
            headers.iter().find(|h| h.key == k).and_then(|h| h.value).map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("ce_id").as_deref(), Some(event.id()));
        assert_eq!(get("ce_type").as_deref(), Some(event.ty()));
        assert_eq!(get("ce_correlationid").as_deref(), Some("req-7f3a"));
        assert_eq!(&get("traceparent").expect("traceparent")[..35], &TP[..35]);
        assert_eq!(get("tracestate").as_deref(), Some("vendor=1"));
        assert_eq!(get("content-type").as_deref(), Some("application/cloudevents+json"));
        let key = std::str::from_utf8(m.key().expect("key = partition key")).unwrap().to_owned();
        assert_eq!(Some(key.as_str()), event.partition_key());
        let partition = *keys.entry(key).or_insert(m.partition());
        assert_eq!(partition, m.partition(), "one key, one partition");
        ids.insert(event.id().to_owned());
        seen.push(stack::Seen::of(&event));
    }
    seen
}

fn first_copies(seen: &[stack::Seen]) -> Vec<stack::Seen> {
    let mut first: HashMap<&str, &stack::Seen> = HashMap::new();
    let mut unique = Vec::new();
    for s in seen {
        match first.get(s.id.as_str()) {
            Some(prev) => assert_eq!((&prev.key, prev.seq), (&s.key, s.seq), "a duplicate is the same event"),
            None => {
                first.insert(&s.id, s);
                unique.push(s.clone());
            }
        }
    }
    unique
}

async fn ten_thousand_events_through_the_full_stack(cluster: Cluster) {
    let topic = cluster.topic().await;
    let bootstrap = cluster.bootstrap();
    let publisher = builder(&bootstrap, &topic).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("kafka"));
    let receipts = stack::publish_all(svc, stack::N, "kafka", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let seen = consume(&bootstrap, &topic, stack::N).await;
    assert_eq!(seen.len(), stack::N, "each event once (idempotent producer)");
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_ten_thousand_events_through_the_full_stack() {
    ten_thousand_events_through_the_full_stack(Cluster::mock(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_ten_thousand_events_through_the_full_stack() {
    let Some(cluster) = Cluster::tansu().await else { return };
    ten_thousand_events_through_the_full_stack(cluster).await;
}

/// `FAULT_N` events through the full stack, `cut()` six times on the way;
/// then every event is read back: 0 lost, each key in order (a duplicate
/// only as a copy of the same event).
async fn publish_through_cuts(bootstrap: &str, topic: &str, name: &str, mut cut: impl FnMut()) {
    let publisher = builder(bootstrap, topic).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker(name));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, name, |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            cut();
            cuts += 1;
        }
    })
    .await;
    assert_eq!(receipts, stack::FAULT_N);
    assert!(cuts >= 3);
    let seen = consume(bootstrap, topic, stack::FAULT_N).await;
    let unique = first_copies(&seen);
    assert_eq!(unique.len(), stack::FAULT_N, "0 lost");
    stack::check_all_present_in_order(&unique, stack::FAULT_N);
    println!("{name}: {cuts} cuts, 0 lost, {} duplicates", seen.len() - stack::FAULT_N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_connections_cut_by_the_broker_mid_stream_lose_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let topic = topic_name();
    mock.create_topic(&topic, PARTITIONS, 1).unwrap();
    // The TCP proxy cannot sit in front of the mock cluster (its metadata
    // names its own listeners): the mock broker cuts the connection itself,
    // on the next produce request (as a cut would), then answers retriable
    // errors (leader moved, request timed out).
    publish_through_cuts(&mock.bootstrap_servers(), &topic, "kafka-fault", || {
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_connections_cut_mid_stream_by_the_proxy_lose_nothing() {
    // The broker names the proxy in its metadata: after the bootstrap every
    // connection (the publisher's, the test consumer's) goes through it.
    let port = services::process::free_port();
    let proxy = Proxy::start(&format!("127.0.0.1:{port}")).await;
    let Some(tansu) = Tansu::start_advertising(port, proxy.addr()).await else { return };
    let topic = topic_name();
    tansu.create_topic(&topic, PARTITIONS).await;
    let before = proxy.accepted();
    publish_through_cuts(tansu.bootstrap(), &topic, "kafka-cut", || proxy.cut()).await;
    assert!(proxy.accepted() > before + 3, "the publisher reconnected through the proxy after the cuts");
}

async fn broker_down_at_start_opens_the_breaker_and_recovers(cluster: Cluster) {
    let topic = cluster.topic().await;
    let proxy = Proxy::start(&cluster.bootstrap()).await;
    proxy.set_refusing(true);
    let publisher = builder(&proxy.addr().to_string(), &topic).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "kafka-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_broker_down_at_start_opens_the_breaker_and_recovers() {
    broker_down_at_start_opens_the_breaker_and_recovers(Cluster::mock(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_broker_down_at_start_opens_the_breaker_and_recovers() {
    let Some(cluster) = Cluster::tansu().await else { return };
    broker_down_at_start_opens_the_breaker_and_recovers(cluster).await;
}

/// Partition and offset in the receipts; an invalid topic name, a message
/// over `message.max.bytes` and (where the cluster does not create topics on
/// first use) an unknown topic fail with their typed errors.
async fn delivery_report_and_typed_errors(cluster: Cluster) {
    let topic = cluster.topic().await;
    let bootstrap = cluster.bootstrap();
    let mut publisher = builder(&bootstrap, &topic).build().unwrap();
    let event = stack::context().sync_scope(|| stack::event(7, "kafka-one"));
    let first = publisher.ready().await.unwrap().call(event.clone()).await.unwrap();
    let second = publisher.ready().await.unwrap().call(stack::event(7 + 16, "kafka-one")).await.unwrap();
    assert!(first.confirmation.partition.is_some());
    assert_eq!(first.confirmation.partition, second.confirmation.partition, "same key, same partition");
    assert_eq!(second.confirmation.sequence, first.confirmation.sequence.map(|o| o + 1), "next offset");

    let mut bad =
        Kafka::builder(bootstrap.as_str()).topic(|_| "no/slashes".to_owned()).config(config()).build().unwrap();
    let err = bad.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(_)), "{err}");

    let mut big = builder(&bootstrap, &topic).set("message.max.bytes", "2000").build().unwrap();
    let large = Event::builder("/t", "t").data("application/octet-stream", vec![0u8; 10_000]).build().unwrap();
    let err = big.ready().await.unwrap().call(large).await.unwrap_err();
    assert!(matches!(err, PublishError::Rejected { .. }), "{err}");
    assert!(!err.is_transient());

    if let Cluster::Tansu(_) = cluster {
        let mut unknown = builder(&bootstrap, &topic_name()).build().unwrap();
        let err = unknown.ready().await.unwrap().call(stack::event(1, "kafka-unknown")).await.unwrap_err();
        assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
        assert!(!err.is_transient());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_delivery_report_and_typed_errors() {
    delivery_report_and_typed_errors(Cluster::mock(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_delivery_report_and_typed_errors() {
    let Some(cluster) = Cluster::tansu().await else { return };
    delivery_report_and_typed_errors(cluster).await;
}

/// A broker without the idempotent producer (the mock cluster with
/// `InitProducerId` turned off): each message fails at once with a typed,
/// permanent `Rejected` that says how to turn idempotence off, not a hang or
/// an endless replacement of the producer; with `idempotence(false)` it goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_broker_without_the_idempotent_producer_fails_typed_until_idempotence_is_off() {
    let mock = MockCluster::new(1).unwrap();
    mock.apiversion(RDKafkaApiKey::InitProducerId, None, None).unwrap();
    let topic = topic_name();
    mock.create_topic(&topic, PARTITIONS, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();

    let mut publisher = builder(&bootstrap, &topic).build().unwrap();
    for i in 0..3 {
        let call = publisher.ready().await.unwrap().call(stack::event(i, "kafka-no-idempotence"));
        let err = tokio::time::timeout(services::PATIENCE, call).await.expect("an answer, not a hang").unwrap_err();
        assert!(matches!(err, PublishError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("idempotence(false)"), "{err}");
        assert!(!err.is_transient());
    }

    let mut plain = builder(&bootstrap, &topic).idempotence(false).build().unwrap();
    let receipt = plain.ready().await.unwrap().call(stack::event(3, "kafka-no-idempotence")).await.unwrap();
    assert!(receipt.confirmation.partition.is_some());
}
