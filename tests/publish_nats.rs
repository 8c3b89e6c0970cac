#![cfg(all(
    feature = "nats",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The NATS JetStream publisher against the real local server
//! (TOWER_MESH_NATS_URL, default nats://127.0.0.1:4222): 10,000 events
//! through the full resilience stack, connection cuts through a TCP proxy,
//! typed errors. Each test uses its own stream and deletes it.

#[path = "support/services.rs"]
mod services;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tower::{Service, ServiceExt};
use tower_mesh::publish::nats::Nats;
use tower_mesh::publish::{Event, PublishError, PublisherConfig, ReconnectBackoff};

use services::proxy::Proxy;
use services::stack::{self, TP};

const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

fn url() -> Option<String> {
    services::require_service("NATS", "TOWER_MESH_NATS_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_NATS_URL", DEFAULT_URL))
}

/// A stream of its own for one test, deleted on drop.
struct TestStream {
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn new(url: &str) -> TestStream {
        TestStream::with(url, |_| {}).await
    }

    /// A stream whose configuration `tune` changes.
    async fn with(url: &str, tune: impl FnOnce(&mut stream::Config)) -> TestStream {
        // The test's own client waits as long as it takes (async-nats's
        // defaults, 5 s and 10 s, are real-time margins on a loaded machine).
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(services::PATIENCE)
            .request_timeout(Some(services::PATIENCE))
            .connect(url)
            .await
            .unwrap();
        let mut js = jetstream::new(client);
        js.set_timeout(services::PATIENCE);
        let run = correlation_uuid::Uuid::new_v4().simple().to_string();
        let name = format!("TOWER_MESH_TEST_{run}");
        let prefix = format!("towermesh.test.{run}");
        let mut config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        tune(&mut config);
        js.create_stream(config).await.unwrap();
        TestStream { js, name, prefix }
    }

    /// Every message in the stream, in stream order, as consumed events.
    async fn consume(&self, want: usize) -> Vec<stack::Seen> {
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut seen = Vec::new();
        let mut ids = HashSet::new();
        while seen.len() < want {
            let Ok(Some(m)) = tokio::time::timeout(services::PATIENCE, messages.next()).await else { break };
            let m = m.unwrap();
            let h = m.headers.clone().expect("headers");
            let event = Event::from_structured_json(&m.payload).expect("a CloudEvents JSON body");
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
            assert_eq!(get("Nats-Msg-Id").as_deref(), Some(event.id()));
            assert_eq!(get("ce-id").as_deref(), Some(event.id()));
            assert_eq!(get("ce-type").as_deref(), Some(event.ty()));
            assert_eq!(get("ce-correlationid").as_deref(), Some("req-7f3a"));
            assert_eq!(&get("traceparent").expect("traceparent")[..35], &TP[..35]);
            assert_eq!(get("tracestate").as_deref(), Some("vendor=1"));
            assert!(ids.insert(event.id().to_owned()), "JetStream stored {} twice", event.id());
            seen.push(stack::Seen::of(&event));
        }
        seen
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ =
                std::thread::spawn(move || handle.block_on(async move { js.delete_stream(&name).await.ok() })).join();
        }
    }
}

fn config() -> PublisherConfig {
    PublisherConfig {
        max_in_flight: 512,
        confirm_timeout: Duration::from_secs(3),
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

fn builder(url: &str, ts: &TestStream) -> tower_mesh::publish::nats::NatsBuilder {
    let prefix = ts.prefix.clone();
    Nats::builder(url)
        .subject(move |e: &Event| format!("{prefix}.{}", e.partition_key().unwrap_or("none")))
        .config(config())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_full_stack() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url).await;
    let publisher = builder(&url, &ts).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("nats"));
    let receipts = stack::publish_all(svc, stack::N, "nats", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let seen = ts.consume(stack::N).await;
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_stream_loses_nothing() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    let publisher = builder(&format!("nats://{}", proxy.addr()), &ts).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("nats-fault"));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, "nats-fault", |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            proxy.cut();
            cuts += 1;
        }
    })
    .await;
    assert_eq!(receipts, stack::FAULT_N);
    assert!(cuts >= 3);
    assert!(proxy.accepted() > cuts, "the publisher reconnected after every cut");
    // JetStream de-duplicates by Nats-Msg-Id: every event exactly once.
    let seen = ts.consume(stack::FAULT_N).await;
    assert_eq!(seen.len(), stack::FAULT_N, "0 lost");
    let info = ts.js.get_stream(&ts.name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(info, stack::FAULT_N as u64, "no copy stored twice");
    println!("nats fault test: {cuts} cuts, {} connections, 0 lost", proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_opens_the_breaker_and_recovers() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    let publisher = builder(&format!("nats://{}", proxy.addr()), &ts).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "nats-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_dropped_and_unroutable_is_typed() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url).await;
    let mut publisher = builder(&url, &ts).build().unwrap();
    let event = Event::builder("/test", "t").partition_key("k").build().unwrap();
    let first = publisher.ready().await.unwrap().call(event.clone()).await.unwrap();
    let again = publisher.ready().await.unwrap().call(event).await.unwrap();
    assert!(!first.confirmation.duplicate);
    assert!(again.confirmation.duplicate, "Nats-Msg-Id = event id de-duplicates");
    assert_eq!(first.confirmation.sequence, again.confirmation.sequence);

    let mut nowhere = Nats::builder(url.as_str())
        .subject(|_: &Event| "towermesh.no-stream.here".to_owned())
        .config(config())
        .build()
        .unwrap();
    let err = nowhere.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
    assert!(!err.is_transient());

    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Event::builder("/t", "t").partition_key("a b").build().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_only_the_messages_over_its_limit() {
    let Some(url) = url() else { return };
    // Five messages at most, and new ones are refused when it is full.
    let ts = TestStream::with(&url, |c| {
        c.max_messages = 5;
        c.discard = stream::DiscardPolicy::New;
    })
    .await;
    let mut publisher = builder(&url, &ts).build().unwrap();
    // Handed in together: their acks come on one inbox, each to its own message.
    let mut pending = Vec::new();
    for n in 0..8 {
        let event = Event::builder("/test", "t").id(format!("full-{n}")).partition_key("k").build().unwrap();
        pending.push(publisher.ready().await.unwrap().call(event));
    }
    let mut stored = Vec::new();
    for (n, receipt) in pending.into_iter().enumerate() {
        match receipt.await {
            Ok(r) => stored.push((n, r.confirmation.sequence)),
            Err(PublishError::Nacked { reason: Some(reason), .. }) => {
                assert!(reason.contains("maximum messages"), "{reason}");
                assert!(n >= 5, "message {n} was refused although the stream had room");
            }
            Err(other) => panic!("message {n}: {other}"),
        }
    }
    let want: Vec<_> = (0..5).map(|n| (n, Some(n as u64 + 1))).collect();
    assert_eq!(stored, want, "the first five are stored, in order, each with its own sequence");
}
