//! The etcd endpoint source against a real etcd (Debian's `etcd-server`
//! package) started by the test on free loopback ports with a temporary data
//! directory.

#![cfg(feature = "discovery-etcd")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tower_mesh::discovery::{EtcdSource, Registry};

fn required() -> bool {
    std::env::var("TOWER_MESH_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private etcd; killed (and its data directory removed) on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_etcd() -> Option<Etcd> {
    let bin = std::env::var("TOWER_MESH_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
    if Command::new(&bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        let msg = format!("skipped: no etcd binary `{bin}` (apt-get install etcd-server)");
        assert!(!required(), "{msg}, and TOWER_MESH_REQUIRE_SERVICES=1");
        println!("{msg}");
        return None;
    }
    let (client, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tower-mesh-etcd-{}-{client}", std::process::id()));
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&bin)
        .args(["--name", "test", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}"), "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    Some(Etcd { child, dir, url })
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
    let Some(etcd) = start_etcd() else { return };
    // Wait for etcd to answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while post(&etcd.url, "/v3/kv/range", serde_json::json!({ "key": b64("x") })).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
