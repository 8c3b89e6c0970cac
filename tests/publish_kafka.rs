#![cfg(all(
    feature = "kafka",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The Kafka publisher against librdkafka's built-in mock cluster (no Kafka
//! broker runs here; the mock speaks the Kafka protocol over TCP on
//! loopback): 10,000 events through the full resilience stack read back with
//! a raw rdkafka consumer, connections cut by the mock broker mid-stream,
//! cluster unreachable at start (through the TCP proxy).

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

/// A mock cluster with one topic of [`PARTITIONS`] partitions.
fn cluster(brokers: i32) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
    let mock = MockCluster::new(brokers).unwrap();
    let topic = format!("towermesh.test.{}", correlation_uuid::Uuid::new_v4().simple());
    mock.create_topic(&topic, PARTITIONS, 1).unwrap();
    (mock, topic)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_full_stack() {
    let (mock, topic) = cluster(3);
    let bootstrap = mock.bootstrap_servers();
    let publisher = builder(&bootstrap, &topic).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("kafka"));
    let receipts = stack::publish_all(svc, stack::N, "kafka", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let seen = consume(&bootstrap, &topic, stack::N).await;
    assert_eq!(seen.len(), stack::N, "each event once (idempotent producer)");
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_stream_lose_nothing() {
    let (mock, topic) = cluster(1);
    let bootstrap = mock.bootstrap_servers();
    // The TCP proxy cannot sit in front of the mock cluster (its metadata
    // names its own listeners): the mock broker cuts the connection itself.
    let publisher = builder(&bootstrap, &topic).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("kafka-fault"));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, "kafka-fault", |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            // The mock broker closes the connection on the next produce
            // request (as a cut would), then answers retriable errors
            // (leader moved, request timed out).
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                ],
            );
            cuts += 1;
        }
    })
    .await;
    assert_eq!(receipts, stack::FAULT_N);
    assert!(cuts >= 3);
    let seen = consume(&bootstrap, &topic, stack::FAULT_N).await;
    let unique = first_copies(&seen);
    assert_eq!(unique.len(), stack::FAULT_N, "0 lost");
    stack::check_all_present_in_order(&unique, stack::FAULT_N);
    println!("kafka fault test: {cuts} cuts, 0 lost, {} duplicates", seen.len() - stack::FAULT_N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_opens_the_breaker_and_recovers() {
    let (mock, topic) = cluster(1);
    let proxy = Proxy::start(&mock.bootstrap_servers()).await;
    proxy.set_refusing(true);
    let publisher = builder(&proxy.addr().to_string(), &topic).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "kafka-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_report_and_typed_errors() {
    let (mock, topic) = cluster(1);
    let bootstrap = mock.bootstrap_servers();
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
}
