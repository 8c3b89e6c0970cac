//! The etcd endpoint source against a real etcd (Debian's `etcd-server`
//! package) started by the test on free loopback ports with a temporary data
//! directory.

#![cfg(feature = "discovery-etcd")]

#[path = "support/services.rs"]
mod services;

use std::ffi::OsString;
use std::time::Duration;

use services::process::{free_port, require_binary, ServerProcess};
use tower_mesh::discovery::{EtcdSource, Registry};

/// A private etcd, answering at `url`; stopped (and its data directory
/// removed) on drop.
struct Etcd {
    _process: ServerProcess,
    url: String,
}

/// Start an etcd and wait until it answers; `None` (skipped) without the
/// binary.
async fn start_etcd() -> Option<Etcd> {
    let bin = require_binary("etcd", "TOWER_MESH_ETCD_BIN", "etcd", "apt-get install etcd-server")?;
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("test={peer_url}");
    let mut process = ServerProcess::start("etcd", &bin, |dir| {
        let flags = [
            ["--name", "test"],
            ["--listen-client-urls", &url],
            ["--advertise-client-urls", &url],
            ["--listen-peer-urls", &peer_url],
            ["--initial-advertise-peer-urls", &peer_url],
            ["--initial-cluster", &cluster],
            ["--log-level", "error"],
        ];
        let data_dir = [OsString::from("--data-dir"), dir.join("data").into()];
        flags.into_iter().flatten().map(OsString::from).chain(data_dir).collect::<Vec<_>>()
    });
    process
        .wait_ready(|| async { post(&url, "/v3/kv/range", serde_json::json!({ "key": b64("x") })).await.is_ok() })
        .await;
    Some(Etcd { _process: process, url })
}

/// A JSON-gateway call (for the test's own writes).
async fn post(url: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("{url}{path}")).body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn put(url: &str, key: &str, value: &str) {
    post(url, "/v3/kv/put", serde_json::json!({ "key": b64(key), "value": b64(value) })).await.unwrap();
}

async fn delete(url: &str, key: &str) {
    post(url, "/v3/kv/deleterange", serde_json::json!({ "key": b64(key) })).await.unwrap();
}

/// Wait (up to `within`) until `service`'s endpoints, sorted, are `want`.
async fn wait_for(registry: &Registry, want: &[&str], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut got: Vec<String> = registry
            .resolution("orders")
            .map(|r| r.endpoints().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        got.sort();
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "got {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn etcd_keys_under_a_prefix_become_endpoints_within_a_second() {
    let Some(etcd) = start_etcd().await else { return };
    put(&etcd.url, "/services/orders/a", "10.0.0.1:8080").await;
    put(&etcd.url, "/services/billing/x", "10.9.9.9:80").await;

    let registry = Registry::new();
    let _task = EtcdSource::new(etcd.url.parse().unwrap(), "/services/orders/").spawn(registry.clone(), "orders");
    wait_for(&registry, &["10.0.0.1:8080"], Duration::from_secs(5)).await;

    // Each change is seen within a second.
    put(&etcd.url, "/services/orders/b", "10.0.0.2:8080").await;
    wait_for(&registry, &["10.0.0.1:8080", "10.0.0.2:8080"], Duration::from_secs(1)).await;
    put(&etcd.url, "/services/orders/a", "10.0.0.3:8080").await;
    wait_for(&registry, &["10.0.0.2:8080", "10.0.0.3:8080"], Duration::from_secs(1)).await;
    delete(&etcd.url, "/services/orders/b").await;
    wait_for(&registry, &["10.0.0.3:8080"], Duration::from_secs(1)).await;
    // A value that is no endpoint is skipped, not fatal.
    put(&etcd.url, "/services/orders/c", "not an endpoint").await;
    put(&etcd.url, "/services/orders/d", "10.0.0.4:8080").await;
    wait_for(&registry, &["10.0.0.3:8080", "10.0.0.4:8080"], Duration::from_secs(1)).await;

    // etcd goes away: the last set stays, marked stale.
    drop(etcd);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !registry.resolution("orders").unwrap().is_stale() {
        assert!(tokio::time::Instant::now() < deadline, "never marked stale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// A silent watch, against a fake gateway on loopback
// ---------------------------------------------------------------------------------------------

/// Wait (up to 20 s: the machine may be loaded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// A fake etcd JSON gateway: the range answers key `a` at revision 10; the
/// first watch sends its creation answer and a PUT of key `b` at revision 12,
/// then stays open and silent; later watches fail with 503. Records each
/// request as (path, JSON body).
async fn silent_etcd() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>) {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use std::sync::{Arc, Mutex};

    let seen: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let watches = {
                            let mut s = s.lock().unwrap();
                            let watches = s.iter().filter(|(p, _)| p == "/v3/watch").count();
                            s.push((path.clone(), json));
                            watches
                        };
                        let header = |rev: u32| {
                            format!(r#"{{"cluster_id":"1","member_id":"2","revision":"{rev}","raft_term":"2"}}"#)
                        };
                        let res: Body = match (path.as_str(), watches) {
                            ("/v3/kv/range", _) => Full::new(bytes::Bytes::from(format!(
                                r#"{{"header":{},"kvs":[{{"key":"{}","create_revision":"10","mod_revision":"10","version":"1","value":"{}"}}],"count":"1"}}"#,
                                header(10),
                                b64("/services/orders/a"),
                                b64("10.0.0.1:8080")
                            )))
                            .boxed(),
                            ("/v3/watch", 0) => {
                                let lines = [
                                    format!(r#"{{"result":{{"header":{},"created":true}}}}"#, header(10)),
                                    format!(
                                        r#"{{"result":{{"header":{},"events":[{{"kv":{{"key":"{}","create_revision":"12","mod_revision":"12","version":"1","value":"{}"}}}}]}}}}"#,
                                        header(12),
                                        b64("/services/orders/b"),
                                        b64("10.0.0.2:8080")
                                    ),
                                ];
                                let frames = futures::stream::iter(
                                    lines.map(|l| Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(l + "\n")))),
                                );
                                StreamBody::new(futures::StreamExt::chain(frames, futures::stream::pending())).boxed()
                            }
                            _ => {
                                let res = http::Response::builder()
                                    .status(503)
                                    .body(Full::new(bytes::Bytes::from_static(b"unavailable")).boxed())
                                    .unwrap();
                                return Ok::<_, std::convert::Infallible>(res);
                            }
                        };
                        Ok(http::Response::new(res))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn etcd_silent_watch_reconnects_from_the_next_revision_after_the_idle_timeout_and_goes_stale_when_it_cannot() {
    let (addr, seen) = silent_etcd().await;
    let registry = Registry::new();
    let _task = EtcdSource::new(format!("http://{addr}").parse().unwrap(), "/services/orders/")
        .idle_timeout(Duration::from_millis(300))
        .spawn(registry.clone(), "orders");
    wait_for(&registry, &["10.0.0.1:8080", "10.0.0.2:8080"], Duration::from_secs(20)).await;

    eventually("a reconnect after the idle timeout", || seen.lock().unwrap().len() >= 3).await;
    {
        let seen = seen.lock().unwrap();
        let (path, body) = &seen[1];
        assert_eq!(path, "/v3/watch");
        assert_eq!(body["create_request"]["start_revision"], "11", "the first watch starts after the range");
        assert_eq!(body["create_request"]["progress_notify"], true, "progress notifications asked for");
        let (path, body) = &seen[2];
        assert_eq!(path, "/v3/watch", "reconnected, not listed again");
        assert_eq!(body["create_request"]["start_revision"], "13", "resumed after the last event's revision");
    }

    eventually("marked stale", || registry.resolution("orders").unwrap().is_stale()).await;
    assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 2, "last known set kept");
    assert!(seen.lock().unwrap().iter().skip(1).all(|(p, _)| p == "/v3/watch"), "never listed again");
}
