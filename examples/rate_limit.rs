//! Two axum server instances in one process sharing one rate limit through
//! Redis (TOWER_MESH_REDIS_URL, default redis://127.0.0.1:6379), a client
//! that overruns it, and a summary. Without Redis, each instance falls back
//! to its own local limit (and says so).
//!
//! Run: `cargo run --example rate_limit --features stack,rate-limit-redis`

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_mesh::stack::MeshConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TOWER_MESH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let host = url.trim_start_matches("redis://").split('/').next().unwrap_or("127.0.0.1:6379").to_owned();
    let shared = tokio::net::TcpStream::connect(&host).await.is_ok();
    let store = if shared {
        println!("sharing one limit of 20/s (burst 5) between both instances through Redis at {url}");
        format!(", store = \"{url}\"")
    } else {
        println!("no Redis at {host}: each instance uses its own local limit of 20/s (burst 5)");
        String::new()
    };
    let name = format!("example-{}", std::process::id());
    let toml = format!("[server]\nname = \"{name}\"\nrate_limit = {{ rate = \"20/s\", burst = 5{store} }}\n");
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let cfg = MeshConfig::from_toml_str(&toml)?;
        let app = Router::new().route("/", get(|| async { "ok" })).layer(cfg.server.stack()?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (mut admitted, mut limited, mut honoured) = (0, 0, 0);
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        // 100 requests per second, alternating between the instances.
        let addr = addrs[i % 2];
        i += 1;
        let req = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new()))?;
        let res = client.request(req).await?;
        if res.status() == 429 {
            limited += 1;
            let after: u64 = res.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
            if limited % 50 == 1 {
                // Now and then, honour Retry-After and try again.
                tokio::time::sleep(Duration::from_secs(after)).await;
                let req = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new()))?;
                if client.request(req).await?.status() == 200 {
                    honoured += 1;
                }
            }
        } else {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{i} requests in {secs:.1} s: {admitted} admitted ({:.1}/s across both instances), {limited} answered 429, {honoured} retried after Retry-After and admitted",
        admitted as f64 / secs
    );
    Ok(())
}
