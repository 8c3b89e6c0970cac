//! tower-mesh metrics in Prometheus: `metrics-exporter-prometheus` serves
//! `/metrics` on 127.0.0.1 while a hyper-util client, wrapped in the client
//! stack built from configuration, calls an upstream that sometimes fails
//! and is sometimes slow.
//!
//! An embedded hyper server on 127.0.0.1 answers 10 % of requests with 503
//! and delays another 10 % by 80 ms (3 % by 300 ms, longer than the attempt
//! timeout); from 2 s to 3 s it fails 90 % of them, and the breaker opens.
//! Twelve workers call it for 5 s through a bulkhead of 8. Every second the
//! example scrapes its own `/metrics` endpoint with the hyper client and
//! prints a line; at the end it prints the `tower_mesh_*` series that have
//! data: client calls by outcome, breaker state and transitions, bulkhead in
//! flight and rejections, retries, timeouts, and the latency summaries. It
//! needs no outside service and finishes in about 6 s.
//!
//! ```text
//! cargo run --no-default-features --features stack --example prometheus
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::stack::MeshConfig;

/// The client stack of the `catalog` service: the `testing` preset with
/// these values changed.
const CONFIG: &str = r#"
preset = "testing"

[client.catalog]
correlation = false   # the example is built without the correlation-id feature
timeout = { attempt = "150ms", total = "500ms" }
retry = { max_retries = 2, backoff = { initial = "5ms", max_delay = "20ms" } }
circuit_breaker = { sliding_window = { count = 50 }, minimum_calls = 20, failure_rate_threshold = 50.0, slow_call_duration = "60ms", slow_call_rate_threshold = 80.0, wait_in_open = "500ms", permitted_calls_in_half_open = 5 }
bulkhead = { max_concurrent_calls = 8, max_wait = "10ms" }
"#;

const RUN_FOR: Duration = Duration::from_secs(5);
const WORKERS: usize = 12;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder and its `/metrics` listener go in first: the stack
    // registers its metric handles when it is built.
    let listen = free_port()?;
    PrometheusBuilder::new().with_http_listener(listen).set_quantiles(&[0.5, 0.9, 0.99])?.install()?;
    let metrics_uri = format!("http://{listen}/metrics");
    println!("Prometheus endpoint: {metrics_uri}");

    let upstream = Upstream::start().await?;
    println!("upstream on {}: 10 % 503, 10 % slow (3 % longer than the attempt timeout)\n", upstream.addr);

    let stack = MeshConfig::from_toml_str(CONFIG)?.client("catalog")?.http_stack()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().layer(stack).service(client);

    let started = Instant::now();
    let control = upstream.clone();
    let schedule = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("{:>5.1}s upstream: 90 % 503", started.elapsed().as_secs_f64());
        control.fail_percent.store(90, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("{:>5.1}s upstream: back to 10 % 503", started.elapsed().as_secs_f64());
        control.fail_percent.store(10, Ordering::SeqCst);
    });

    let uri = format!("http://{}/items", upstream.addr);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (mut svc, uri) = (svc.clone(), uri.clone());
            tokio::spawn(async move {
                while started.elapsed() < RUN_FOR {
                    let req = Request::get(&uri).body(Full::new(Bytes::new())).unwrap();
                    let Ok(ready) = svc.ready().await else { break };
                    if let Ok(res) = ready.call(req).await {
                        // Read the body so the connection goes back to the pool.
                        let _ = res.into_body().collect().await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    // Scrape our own endpoint while the traffic runs, as Prometheus would.
    let scraper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    println!("  time   calls: success failure rejected timeout | breaker state | bulkhead in flight | retries");
    while started.elapsed() < RUN_FOR {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = scrape(&scraper, &metrics_uri).await?;
        let calls = |outcome: &str| sum(&text, "tower_mesh_client_calls_total", &[("outcome", outcome)]);
        println!(
            "{:>5.1}s   {:>13} {:>7} {:>8} {:>7} | {:>13} | {:>18} | {:>7}",
            started.elapsed().as_secs_f64(),
            calls("success"),
            calls("failure"),
            calls("rejected"),
            calls("timeout"),
            state_name(sum(&text, "tower_mesh_circuit_breaker_state", &[])),
            sum(&text, "tower_mesh_bulkhead_in_flight", &[]),
            sum(&text, "tower_mesh_retry_retries_total", &[]),
        );
    }
    for w in workers {
        w.await?;
    }
    schedule.await?;

    let text = scrape(&scraper, &metrics_uri).await?;
    println!("\n== GET {metrics_uri} after {:.1}s: the tower_mesh_* series with data", started.elapsed().as_secs_f64());
    for line in series_with_data(&text) {
        println!("{line}");
    }
    println!(
        "\nupstream: {} requests, {} answered 503, {} slow",
        upstream.requests.load(Ordering::SeqCst),
        upstream.failed.load(Ordering::SeqCst),
        upstream.slow.load(Ordering::SeqCst)
    );
    Ok(())
}

/// A free port on 127.0.0.1 (the exporter binds it itself).
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

async fn scrape(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let res = client.request(Request::get(uri).body(Empty::new())?).await?;
    if res.status() != StatusCode::OK {
        return Err(format!("{uri}: {}", res.status()).into());
    }
    Ok(String::from_utf8(res.into_body().collect().await?.to_bytes().to_vec())?)
}

/// A sample line's name, labels (`k="v",…`) and value.
fn parse(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    Some((name, labels, value.parse().ok()?))
}

/// The sum of the samples of `name` that have every one of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse)
        .filter(|(n, l, _)| *n == name && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|(.., v)| v)
        .sum()
}

fn state_name(v: f64) -> &'static str {
    match v as u8 {
        0 => "closed",
        1 => "open",
        2 => "half_open",
        _ => "other",
    }
}

/// The `tower_mesh_*` samples worth reading: counters above zero, every
/// gauge, and the summaries (quantiles, sum, count) that have observations.
fn series_with_data(text: &str) -> Vec<&str> {
    let samples: Vec<_> = text.lines().filter(|l| l.starts_with("tower_mesh_")).collect();
    // The label sets of the summaries with no observations.
    let empty: Vec<String> = samples
        .iter()
        .filter_map(|l| parse(l))
        .filter(|(n, _, v)| n.ends_with("_count") && *v == 0.0)
        .map(|(n, l, _)| format!("{}{{{l}", n.trim_end_matches("_count")))
        .collect();
    let mut samples: Vec<_> = samples
        .into_iter()
        .filter(|line| {
            let Some((name, labels, value)) = parse(line) else { return false };
            if name.ends_with("_total") {
                return value > 0.0;
            }
            // A summary's quantile lines carry one label more than its count.
            let base = name.trim_end_matches("_sum").trim_end_matches("_count");
            let labels = labels.split(",quantile=").next().unwrap_or(labels);
            !empty.contains(&format!("{base}{{{labels}"))
        })
        .collect();
    // By metric, each summary's lines in the order they were rendered.
    samples.sort_by_key(|line| {
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        name.trim_end_matches("_sum").trim_end_matches("_count").to_owned()
    });
    samples
}

/// The upstream: 200 "ok", or 503 for `fail_percent` % of requests, or late
/// for 10 % (80 ms; 300 ms for 3 %).
#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    fail_percent: AtomicU32,
    requests: AtomicU64,
    failed: AtomicU64,
    slow: AtomicU64,
}

impl Upstream {
    async fn start() -> std::io::Result<Arc<Upstream>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let up = Arc::new(Upstream {
            addr: listener.local_addr()?,
            fail_percent: AtomicU32::new(10),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        });
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer().await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(up)
    }

    async fn answer(&self) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let roll = fastrand::u32(0..100);
        if roll < self.fail_percent.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let mut res = Response::new(Full::new(Bytes::from_static(b"unavailable")));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return res;
        }
        let slow = fastrand::u32(0..100);
        if slow < 10 {
            self.slow.fetch_add(1, Ordering::SeqCst);
            let delay = if slow < 3 { 300 } else { 80 };
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }
}
