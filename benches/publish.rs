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
use std::pin::Pin;

use tower_mesh::publish::nats::Nats;
use tower_mesh::publish::rabbitmq::RabbitMq;
use tower_mesh::publish::{ContentMode, Outgoing};

#[path = "support/publish.rs"]
mod harness;
use harness::*;

const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "nats://127.0.0.1:4222";

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
        // The same subject string, cloned per message, as the raw client does.
        let s = format!("{subject}.x");
        let ours = Nats::builder(url.as_str()).subject(move |_| s.clone()).config(config()).build().unwrap();
        ours.wait_connected().await.unwrap();
        let s = format!("{subject}.x");
        let stacked = Nats::builder(url.as_str()).subject(move |_| s.clone()).config(config()).build().unwrap();
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

fn main() {
    run(|rt| [rabbitmq(rt), nats(rt)].into_iter().flatten().collect());
}
