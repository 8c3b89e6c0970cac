#![cfg(all(
    feature = "rabbitmq",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The RabbitMQ publisher against the real local broker (TOWER_MESH_RABBITMQ_URL,
//! default amqp://guest:guest@127.0.0.1:5672/%2f): 10,000 events through the
//! full resilience stack, broker faults through a TCP proxy, typed errors.

#[path = "support/services.rs"]
mod services;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::publish::rabbitmq::RabbitMq;
use tower_mesh::publish::{ConnectionState, Event, PublishError, PublisherConfig, ReconnectBackoff};
use tower_mesh::timeout::{Elapsed, TimeoutKind, TimeoutLayer};

use services::proxy::Proxy;
use services::stack::{self, TP};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn url() -> Option<String> {
    services::require_service("RabbitMQ", "TOWER_MESH_RABBITMQ_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_RABBITMQ_URL", DEFAULT_URL))
}

/// The same URL pointing at `addr` (a proxy) instead.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    url.replacen(services::host_port(url), &addr.to_string(), 1)
}

/// A fresh auto-delete topic exchange and an exclusive queue bound to it with `#`.
async fn topology(url: &str) -> (Connection, Channel, String, String) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = format!("tower-mesh.test.{}", correlation_uuid::Uuid::new_v4());
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    let queue = q.name().to_string();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch, exchange, queue)
}

fn header(h: &FieldTable, name: &str) -> Option<String> {
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A consumer of `queue` that acknowledges on delivery.
async fn consumer(ch: &Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions { no_ack: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap()
}

/// Consume until `want` distinct event ids arrived (or nothing comes for [`services::PATIENCE`]).
/// Returns (id, partition key, seq) in arrival order, and the number of copies.
async fn consume(ch: &Channel, queue: &str, want: usize) -> (Vec<stack::Seen>, usize) {
    let mut consumer = consumer(ch, queue).await;
    let mut seen = Vec::new();
    let mut ids = HashMap::new();
    let mut copies = 0;
    while ids.len() < want {
        let Ok(Some(delivery)) = tokio::time::timeout(services::PATIENCE, consumer.next()).await else { break };
        let d = delivery.unwrap();
        let props = &d.properties;
        let h = props.headers().clone().unwrap_or_default();
        let event = Event::from_structured_json(&d.data).expect("a CloudEvents JSON body");
        // Headers and properties carry id, type, correlation id and trace context.
        assert_eq!(props.message_id().as_ref().map(|s| s.to_string()).as_deref(), Some(event.id()));
        assert_eq!(header(&h, "cloudEvents:id").as_deref(), Some(event.id()));
        assert_eq!(header(&h, "cloudEvents:type").as_deref(), Some(event.ty()));
        assert_eq!(props.kind().as_ref().map(|s| s.to_string()).as_deref(), Some(event.ty()));
        assert_eq!(header(&h, "cloudEvents:correlationid").as_deref(), event.correlation_id());
        assert_eq!(props.correlation_id().as_ref().map(|s| s.to_string()).as_deref(), event.correlation_id());
        let tp = header(&h, "traceparent").expect("traceparent header");
        assert_eq!(&tp[..35], &TP[..35], "same trace as the request in scope");
        assert_eq!(header(&h, "tracestate").as_deref(), Some("vendor=1"));
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        let n = ids.entry(event.id().to_owned()).or_insert(0usize);
        *n += 1;
        if *n > 1 {
            copies += 1;
            continue;
        }
        seen.push(stack::Seen::of(&event));
    }
    (seen, copies)
}

fn config() -> PublisherConfig {
    PublisherConfig {
        max_in_flight: 512,
        confirm_timeout: Duration::from_secs(5),
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_full_stack() {
    let Some(url) = url() else { return };
    let (_conn, ch, exchange, queue) = topology(&url).await;
    let publisher = RabbitMq::builder(url.as_str()).exchange(exchange.as_str()).config(config()).build().unwrap();
    let consumer = tokio::spawn({
        let ch = ch.clone();
        let queue = queue.clone();
        async move { consume(&ch, &queue, stack::N).await }
    });
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("rabbitmq"));
    let receipts = stack::publish_all(svc, stack::N, "rabbitmq", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let (seen, _copies) = consumer.await.unwrap();
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_stream_loses_nothing() {
    let Some(url) = url() else { return };
    let (_conn, ch, exchange, queue) = topology(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    let publisher =
        RabbitMq::builder(via(&url, proxy.addr())).exchange(exchange.as_str()).config(config()).build().unwrap();
    let consumer = tokio::spawn({
        let ch = ch.clone();
        let queue = queue.clone();
        async move { consume(&ch, &queue, stack::FAULT_N).await }
    });
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("rabbitmq-fault"));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, "rabbitmq-fault", |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            proxy.cut();
            cuts += 1;
        }
    })
    .await;
    assert!(cuts >= 3, "the proxy cut the connection {cuts} times");
    assert_eq!(receipts, stack::FAULT_N);
    assert!(proxy.accepted() > cuts, "the publisher reconnected after every cut");
    let (seen, copies) = consumer.await.unwrap();
    // Every event arrived (duplicates were counted by id above, so they carry the same id).
    assert_eq!(seen.len(), stack::FAULT_N, "0 lost ({copies} duplicates)");
    println!("rabbitmq fault test: {cuts} cuts, {copies} duplicates, 0 lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_opens_the_breaker_and_recovers() {
    let Some(url) = url() else { return };
    let (_conn, _ch, exchange, _queue) = topology(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    let publisher =
        RabbitMq::builder(via(&url, proxy.addr())).exchange(exchange.as_str()).config(config()).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "rabbitmq-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_nacked_are_typed_errors() {
    let Some(url) = url() else { return };
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = format!("tower-mesh.test.{}", correlation_uuid::Uuid::new_v4());
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A queue that holds one message and refuses the next (x-overflow reject-publish → nack).
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    let q =
        ch.queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, args).await.unwrap();
    ch.queue_bind(
        q.name().as_str().into(),
        exchange.as_str().into(),
        "bounded.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let mut publisher = RabbitMq::builder(url.as_str()).exchange(exchange.as_str()).config(config()).build().unwrap();
    let ev = |ty: &str| Event::builder("/test", ty).json(&serde_json::json!({"x": 1})).unwrap().build().unwrap();

    let err = publisher.ready().await.unwrap().call(ev("nobody.listens")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { code: Some(312), .. }), "{err}");
    assert!(!err.is_transient());

    let first = publisher.ready().await.unwrap().call(ev("bounded.a")).await.unwrap();
    assert_eq!(first.broker, "rabbitmq");
    let err = publisher.ready().await.unwrap().call(ev("bounded.b")).await.unwrap_err();
    assert!(matches!(err, PublishError::Nacked { .. }), "{err}");
    assert!(err.is_transient());

    // A missing exchange: RabbitMQ closes the channel (404); that message is
    // rejected and the publisher recovers on a new channel.
    let mut lost =
        RabbitMq::builder(url.as_str()).exchange("tower-mesh.test.does-not-exist").config(config()).build().unwrap();
    let err = lost.ready().await.unwrap().call(ev("x")).await.unwrap_err();
    assert!(matches!(err, PublishError::Rejected { .. } | PublishError::ConnectionLost { .. }), "{err}");
}

/// Every message in `queue` now, by event id: how many copies RabbitMQ
/// stored of each. Reads exactly the count the queue reports (no waiting for
/// silence).
async fn stored_copies(ch: &Channel, queue: &str) -> HashMap<String, u32> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let count = q.message_count() as usize;
    let mut consumer = consumer(ch, queue).await;
    let mut copies = HashMap::new();
    for _ in 0..count {
        let d = tokio::time::timeout(services::PATIENCE, consumer.next())
            .await
            .expect("a message the queue reported")
            .unwrap()
            .unwrap();
        let event = Event::from_structured_json(&d.data).expect("a CloudEvents JSON body");
        *copies.entry(event.id().to_owned()).or_insert(0) += 1;
    }
    copies
}

/// Wait (generously) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(services::PATIENCE, wait).await.unwrap_or_else(|_| panic!("never: {what}"));
}

/// Issue 23.5: a message written to the connection before it was cut is
/// delivered although its caller gave up on it, even when the reconnect
/// fails first (the broker is down for a while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_message_whose_caller_gave_up_is_delivered_after_the_cut() {
    let Some(url) = url() else { return };
    let (_conn, ch, exchange, queue) = topology(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    let mut publisher =
        RabbitMq::builder(via(&url, proxy.addr())).exchange(exchange.as_str()).config(config()).build().unwrap();
    publisher.wait_connected().await.unwrap();
    // The broker stops hearing us: the message is written, never confirmed.
    proxy.set_stalled(true);
    let before = proxy.received();
    let event = stack::context().sync_scope(|| stack::event(0, "rabbitmq-abandoned"));
    drop(publisher.ready().await.unwrap().call(event.clone()));
    until("the message reached the proxy", || proxy.received() > before).await;
    // Cut, and the broker is unreachable: the reconnect fails.
    proxy.set_refusing(true);
    until("the publisher is down", || publisher.state() == ConnectionState::Down).await;
    proxy.set_stalled(false);
    proxy.set_refusing(false);
    until("the message is confirmed", || publisher.in_flight() == 0).await;
    let copies = stored_copies(&ch, &queue).await;
    assert_eq!(copies.get(event.id()), Some(&1), "delivered once: {copies:?}");
}

/// Issue 23.6: a broker that accepts the TCP connection and never answers
/// (a listener that never accepts): under a 1 s timeout the call fails with
/// the timeout's typed error, instead of readiness waiting out the connect
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_broker_fails_the_call_within_the_callers_timeout() {
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", blackhole.local_addr().unwrap());
    // A connect timeout far past the caller's, so that only the caller's
    // timeout can end the call however loaded the machine is.
    let cfg = PublisherConfig { connect_timeout: services::PATIENCE, ..config() };
    let publisher = RabbitMq::builder(url).exchange("tower-mesh.test.blackhole").config(cfg).build().unwrap();
    let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(1))).service(publisher.clone());
    let err = svc.oneshot(Event::builder("/test", "t").build().unwrap()).await.unwrap_err();
    let elapsed = err.downcast_ref::<Elapsed>().unwrap_or_else(|| panic!("a timeout error, got: {err}"));
    assert_eq!(elapsed.kind(), TimeoutKind::Total);
    assert_eq!(publisher.state(), ConnectionState::Connecting, "the first attempt is still under way");
    drop(blackhole);
}

/// Issue 23.7: under a storm of connection resets, a message is re-sent only
/// after a connection it was written to broke, and the receipt counts those
/// sends: RabbitMQ stores each message at least once and at most `sends`
/// times (1 + the cuts it was in flight for); a message never written to a
/// broken connection is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_storm_stores_each_message_at_most_once_per_send() {
    let Some(url) = url() else { return };
    let (_conn, ch, exchange, queue) = topology(&url).await;
    let proxy = std::sync::Arc::new(Proxy::start(services::host_port(&url)).await);
    // Messages handed in between connections wait for the next one.
    let cfg =
        PublisherConfig { max_in_flight: 256, max_resends: u32::MAX, outage_wait: services::PATIENCE, ..config() };
    let mut publisher =
        RabbitMq::builder(via(&url, proxy.addr())).exchange(exchange.as_str()).config(cfg).build().unwrap();
    const N: usize = 2_000;
    // Resets every 40 ms, 50 of them (bounded: on a slow machine a
    // connection may never live long enough to confirm anything)...
    let storm = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                proxy.cut();
            }
        }
    });
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut sends = HashMap::new();
    let started = std::time::Instant::now();
    for i in 0..N {
        // ... and one every 400 messages, wherever the storm is.
        if i > 0 && i % 400 == 0 {
            proxy.cut();
        }
        let event = stack::context().sync_scope(|| stack::event(i, "rabbitmq-storm"));
        pending.push(publisher.ready().await.unwrap().call(event));
        while pending.len() >= 256 {
            let r = pending.next().await.unwrap().expect("every message confirmed");
            sends.insert(r.event.id().to_owned(), r.sends);
        }
    }
    while let Some(r) = pending.next().await {
        let r = r.expect("every message confirmed");
        sends.insert(r.event.id().to_owned(), r.sends);
    }
    let took = started.elapsed();
    storm.abort();
    assert_eq!(sends.len(), N);
    let copies = stored_copies(&ch, &queue).await;
    for (id, &n) in &sends {
        let stored = copies.get(id).copied().unwrap_or(0);
        assert!(stored >= 1, "{id} confirmed but not stored");
        assert!(stored <= n, "{id} stored {stored} times, sent {n} times");
    }
    let total: u32 = copies.values().sum();
    let resent = sends.values().filter(|&&n| n > 1).count();
    println!(
        "rabbitmq reset storm: {N} messages in {took:?}, {} connections, {resent} re-sent, {total} stored copies",
        proxy.accepted()
    );
}
