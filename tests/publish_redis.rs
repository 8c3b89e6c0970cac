#![cfg(all(
    feature = "redis",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The Redis publisher against the real local server (TOWER_MESH_REDIS_URL,
//! default redis://127.0.0.1:6379): 10,000 events through the full
//! resilience stack read back with XRANGE, connection cuts through a TCP
//! proxy, broker down at start, pub/sub. Each test uses its own stream key
//! and deletes it.

#[path = "support/services.rs"]
mod services;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, AsyncConnectionConfig};
use tower::{Service, ServiceExt};
use tower_mesh::publish::redis::{Redis, RedisBuilder, BODY_FIELD};
use tower_mesh::publish::{Event, PublishError, PublisherConfig, ReconnectBackoff};

use services::proxy::Proxy;
use services::stack::{self, TP};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

fn url() -> Option<String> {
    services::require_service("Redis", "TOWER_MESH_REDIS_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_REDIS_URL", DEFAULT_URL))
}

/// The URL of `url` with its host:port replaced by `addr` (the proxy).
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    url.replacen(services::host_port(url), &addr.to_string(), 1)
}

/// A stream key of its own for one test, deleted on drop.
struct TestStream {
    client: redis::Client,
    key: String,
}

impl TestStream {
    fn new(url: &str) -> TestStream {
        let run = correlation_uuid::Uuid::new_v4().simple().to_string();
        TestStream { client: redis::Client::open(url).unwrap(), key: format!("towermesh:test:{run}") }
    }

    /// A connection of the test's own, without redis-rs's default response
    /// (500 ms) and connection (1 s) timeouts: on a loaded machine a reply
    /// may take longer, and the test must not fail for it.
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&config).await.unwrap()
    }

    /// Every entry in the stream, in stream order, as consumed events; checks
    /// the attribute fields of each. Returns the events and the event id of
    /// every entry (duplicates included).
    async fn consume(&self) -> (Vec<stack::Seen>, Vec<String>) {
        let mut conn = self.conn().await;
        let mut seen = Vec::new();
        let mut ids = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: StreamRangeReply = conn.xrange_count(&self.key, &start, "+", 1000).await.unwrap();
            let Some(last) = page.ids.last() else { break };
            start = format!("({}", last.id);
            for entry in &page.ids {
                let get = |k: &str| -> Option<String> { entry.get(k) };
                let body: Vec<u8> = entry.get(BODY_FIELD).expect("body field");
                let event = Event::from_structured_json(&body).expect("a CloudEvents JSON body");
                assert_eq!(get("id").as_deref(), Some(event.id()));
                assert_eq!(get("type").as_deref(), Some(event.ty()));
                assert_eq!(get("correlationid").as_deref(), Some("req-7f3a"));
                assert_eq!(&get("traceparent").expect("traceparent")[..35], &TP[..35]);
                assert_eq!(get("tracestate").as_deref(), Some("vendor=1"));
                assert_eq!(get("content-type").as_deref(), Some("application/cloudevents+json"));
                ids.push(event.id().to_owned());
                seen.push(stack::Seen::of(&event));
            }
        }
        (seen, ids)
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        if let Ok(mut conn) = self.client.get_connection() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&self.key).query(&mut conn);
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

fn builder(url: &str, ts: &TestStream) -> RedisBuilder {
    let key = ts.key.clone();
    Redis::builder(url).stream(move |_: &Event| key.clone()).config(config())
}

/// The test's own connection waits for a slow reply: a `BLPOP` that the
/// server answers only after a second (past redis-rs's default 500 ms
/// response timeout, which failed a consumer on a busy machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tests_client_waits_for_a_slow_reply() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let mut conn = ts.conn().await;
    let reply: Option<(String, String)> = conn.blpop(format!("{}:empty", ts.key), 1.0).await.unwrap();
    assert_eq!(reply, None, "nothing to pop: the server answers nil after its 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_full_stack() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let publisher = builder(&url, &ts).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("redis"));
    let receipts = stack::publish_all(svc, stack::N, "redis", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let (seen, ids) = ts.consume().await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), stack::N, "no entry twice without a fault");
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_stream_loses_nothing() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let proxy = Proxy::start(services::host_port(&url)).await;
    let publisher = builder(&via(&url, proxy.addr()), &ts).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("redis-fault"));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, "redis-fault", |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            proxy.cut();
            cuts += 1;
        }
    })
    .await;
    assert_eq!(receipts, stack::FAULT_N);
    assert!(cuts >= 3);
    assert!(proxy.accepted() > cuts, "the publisher reconnected after every cut");

    let (seen, ids) = ts.consume().await;
    // At least once: every event is there; a copy re-sent after a cut (its
    // reply was lost) is the same event, with the same id, seq and key.
    let mut first: HashMap<&str, &stack::Seen> = HashMap::new();
    for s in &seen {
        if let Some(prev) = first.insert(&s.id, s) {
            assert_eq!((&prev.key, prev.seq), (&s.key, s.seq), "a duplicate is the same event");
        }
    }
    assert_eq!(first.len(), stack::FAULT_N, "0 lost");
    // Per key, the first copy of each event comes in order.
    let mut unique = Vec::new();
    let mut once = HashSet::new();
    for s in &seen {
        if once.insert(s.id.clone()) {
            unique.push(s.clone());
        }
    }
    stack::check_all_present_in_order(&unique, stack::FAULT_N);
    println!(
        "redis fault test: {cuts} cuts, {} connections, 0 lost, {} duplicates",
        proxy.accepted(),
        ids.len() - stack::FAULT_N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_opens_the_breaker_and_recovers() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    let publisher = builder(&via(&url, proxy.addr()), &ts).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "redis-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_trims_and_errors_are_typed() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let key = ts.key.clone();
    let mut publisher = Redis::builder(&url).stream(move |_| key.clone()).max_len(10).config(config()).build().unwrap();
    for i in 0..2000 {
        publisher.ready().await.unwrap().call(stack::event(i, "redis-trim")).await.unwrap();
    }
    let mut conn = ts.conn().await;
    let len: usize = conn.xlen(&ts.key).await.unwrap();
    // Approximate trimming keeps at least 10 and drops whole nodes (100 entries by default).
    assert!((10..2000).contains(&len), "stream trimmed to about 10 entries, has {len}");

    // A key of the wrong type: the server refuses, the message alone fails.
    let plain = format!("{}:plain", ts.key);
    let _: () = conn.set(&plain, "x").await.unwrap();
    let target = plain.clone();
    let mut wrong = Redis::builder(&url).stream(move |_| target.clone()).config(config()).build().unwrap();
    let err = wrong.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::Rejected { .. }), "{err}");
    assert!(!err.is_transient());
    let _: () = conn.del(&plain).await.unwrap();

    let mut empty = Redis::builder(&url).stream(|_| String::new()).config(config()).build().unwrap();
    let err = empty.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(_)), "{err}");
}

/// Messages handed in together go to Redis as one pipeline: a command the
/// server refuses fails its own message only, and the others are appended,
/// in order, each with its own confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_fails_only_its_own_message() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let mut conn = ts.conn().await;
    let plain = format!("{}:plain", ts.key);
    let _: () = conn.set(&plain, "x").await.unwrap();
    let (good, bad) = (ts.key.clone(), plain.clone());
    // Events of key k2 go to the plain key: WRONGTYPE.
    let target = move |e: &Event| if e.partition_key() == Some("k2") { bad.clone() } else { good.clone() };
    let mut publisher = Redis::builder(&url).stream(target).config(config()).build().unwrap();
    publisher.wait_connected().await.unwrap();

    let events: Vec<Event> = (0..40).map(|i| stack::context().sync_scope(|| stack::event(i, "redis-batch"))).collect();
    let mut futs = Vec::new();
    for e in &events {
        // Ready at once (capacity to spare): no await yields, so the
        // connection task gets these messages together.
        futs.push(publisher.ready().await.unwrap().call(e.clone()));
    }
    let mut appended = Vec::new();
    for (e, f) in events.iter().zip(futs) {
        match f.await {
            Ok(receipt) => {
                assert_ne!(e.partition_key(), Some("k2"));
                assert_eq!(receipt.event.id(), e.id());
                appended.push(e.id().to_owned());
            }
            Err(err) => {
                assert_eq!(e.partition_key(), Some("k2"), "{err}");
                assert!(matches!(err, PublishError::Rejected { .. }), "{err}");
                assert!(err.to_string().contains("WRONGTYPE"), "{err}");
            }
        }
    }
    assert_eq!(appended.len(), 37, "3 of the 40 have key k2");
    let (_, ids) = ts.consume().await;
    assert_eq!(ids, appended, "every other message appended once, in order");
    let _: () = conn.del(&plain).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reaches_a_subscriber() {
    let Some(url) = url() else { return };
    let channel = format!("towermesh.test.{}", correlation_uuid::Uuid::new_v4().simple());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();

    let ch = channel.clone();
    let mut publisher =
        Redis::builder(&url).pubsub(move |_| ch.clone()).require_subscriber(true).config(config()).build().unwrap();
    let event = stack::context().sync_scope(|| stack::event(3, "redis-pubsub"));
    let receipt = publisher.ready().await.unwrap().call(event.clone()).await.unwrap();
    assert_eq!(receipt.confirmation.sequence, Some(1), "one subscriber reached");

    let mut messages = pubsub.on_message();
    use futures::StreamExt;
    let msg = tokio::time::timeout(services::PATIENCE, messages.next()).await.unwrap().unwrap();
    let got = Event::from_structured_json(msg.get_payload_bytes()).unwrap();
    assert_eq!(got.id(), event.id());
    assert_eq!(got.correlation_id(), Some("req-7f3a"));
    assert_eq!(got.traceparent().map(|t| &t[..35]), Some(&TP[..35]));
    drop(messages);

    let mut nobody = Redis::builder(&url)
        .pubsub(|_| "towermesh.test.nobody-listens".to_owned())
        .require_subscriber(true)
        .config(config())
        .build()
        .unwrap();
    let err = nobody.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
}

/// Issue 23.8: with `outage_wait`, a producer that publishes as fast as it
/// can while the broker is down is held at `max_in_flight` by `poll_ready`
/// (it does not burn its events on fast failures), and once the broker is
/// back every event is delivered, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_wait_holds_a_producer_until_the_broker_is_back() {
    let Some(url) = url() else { return };
    let ts = TestStream::new(&url);
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    const WINDOW: usize = 64;
    const EVENTS: usize = 1_000;
    let cfg = PublisherConfig { max_in_flight: WINDOW, outage_wait: services::PATIENCE, ..config() };
    let publisher = builder(&via(&url, proxy.addr()), &ts).config(cfg).build().unwrap();
    assert!(publisher.wait_connected().await.is_err(), "down at start");
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = tokio::spawn({
        let (mut publisher, issued) = (publisher.clone(), issued.clone());
        async move {
            let mut receipts = Vec::new();
            for i in 0..EVENTS {
                let event = stack::context().sync_scope(|| stack::event(i, "redis-outage"));
                receipts.push(publisher.ready().await.unwrap().call(event));
                issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            futures::future::join_all(receipts).await
        }
    });
    let held = async {
        while issued.load(std::sync::atomic::Ordering::SeqCst) < WINDOW {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(services::PATIENCE, held).await.expect("the producer handed in a window of events");
    assert_eq!(publisher.in_flight(), WINDOW, "a full window waits for the broker");
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), WINDOW, "and the producer waits for room");
    proxy.set_refusing(false);
    let receipts = producer.await.unwrap();
    for r in &receipts {
        let r = r.as_ref().unwrap_or_else(|e| panic!("publish failed: {e}"));
        assert_eq!(r.sends, 1, "never sent before the broker came back");
    }
    let (seen, ids) = ts.consume().await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), EVENTS, "all there");
    assert_eq!(ids.len(), EVENTS, "each once");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for s in &seen {
        if let Some(prev) = last.insert(&s.key, s.seq) {
            assert!(s.seq > prev, "key {} out of order", s.key);
        }
    }
}
