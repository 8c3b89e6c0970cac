//! Consul and Kubernetes endpoint sources against local HTTP servers that
//! replay the response formats of their API documentation (neither server
//! can run on the development machines).

#![cfg(all(feature = "discovery-consul", feature = "discovery-k8s"))]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_mesh::discovery::{ConsulSource, KubernetesSource, Registry};

type Body = BoxBody<Bytes, Infallible>;

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).boxed()
}

/// Serve `handler` on a free loopback port.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// Wait (up to 5 s) until `service`'s endpoints, sorted, are `want`.
async fn wait_for(registry: &Registry, service: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut got: Vec<String> = registry
            .resolution(service)
            .map(|r| r.endpoints().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        got.sort();
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "endpoints of {service}: got {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Consul: GET /v1/health/service/<name>?passing&index=&wait= (blocking query, X-Consul-Index)
// ---------------------------------------------------------------------------------------------

/// One entry in the format of Consul's `/v1/health/service` documentation.
fn consul_entry(node_addr: &str, svc_addr: &str, port: u16) -> String {
    format!(
        r#"{{"Node":{{"ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Node":"foobar","Address":"{node_addr}","Datacenter":"dc1","TaggedAddresses":{{"lan":"{node_addr}","wan":"10.1.10.12"}},"Meta":{{"instance_type":"t2.medium"}}}},"Service":{{"ID":"redis","Service":"redis","Tags":["primary"],"Address":"{svc_addr}","TaggedAddresses":{{}},"Meta":null,"Port":{port},"Weights":{{"Passing":10,"Warning":1}},"Namespace":"default"}},"Checks":[{{"Node":"foobar","CheckID":"service:redis","Name":"Service 'redis' check","Status":"passing","Notes":"","Output":"","ServiceID":"redis","ServiceName":"redis","ServiceTags":["primary"],"Namespace":"default"}}]}}"#
    )
}

#[derive(Clone)]
struct Consul {
    /// (index, JSON body, fail with 500)
    state: watch::Sender<(u64, String, bool)>,
    queries: Arc<Mutex<Vec<String>>>,
}

impl Consul {
    fn set(&self, body: String) {
        self.state.send_modify(|s| {
            s.0 += 1;
            s.1 = body;
        });
    }
    fn fail(&self, fail: bool) {
        self.state.send_modify(|s| s.2 = fail);
    }
}

async fn consul_server(initial: String) -> (SocketAddr, Consul) {
    let (tx, _) = watch::channel((7u64, initial, false));
    let consul = Consul { state: tx, queries: Arc::default() };
    let c = consul.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let c = c.clone();
        async move {
            let q = req.uri().query().unwrap_or("").to_owned();
            c.queries.lock().unwrap().push(q.clone());
            assert_eq!(req.uri().path(), "/v1/health/service/redis");
            let params: HashMap<_, _> = q.split('&').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect();
            assert!(params.contains_key("passing"));
            let index: u64 = params.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut rx = c.state.subscribe();
            // Blocking query: wait while nothing changed since `index` (bounded for the test).
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| s.0 > index || s.2)).await;
            let (idx, body, fail) = rx.borrow().clone();
            if fail {
                return Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(full("rpc error".into()))
                    .unwrap();
            }
            Response::builder()
                .header("content-type", "application/json")
                .header("x-consul-index", idx.to_string())
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    (addr, consul)
}

#[tokio::test]
async fn consul_blocking_queries_follow_changes_and_keep_the_last_set_on_errors() {
    let body = format!("[{},{}]", consul_entry("10.1.10.12", "", 8000), consul_entry("10.1.10.13", "10.2.0.5", 8001));
    let (addr, consul) = consul_server(body).await;
    let registry = Registry::new();
    let _task = ConsulSource::new(format!("http://{addr}").parse().unwrap(), "redis")
        .wait(Duration::from_secs(1))
        .spawn(registry.clone(), "redis");
    // Service address wins over the node address when set.
    wait_for(&registry, "redis", &["10.1.10.12:8000", "10.2.0.5:8001"]).await;

    consul.set(format!("[{}]", consul_entry("10.1.10.14", "", 9000)));
    wait_for(&registry, "redis", &["10.1.10.14:9000"]).await;
    // The query resumed from the index Consul answered.
    assert!(consul.queries.lock().unwrap().iter().any(|q| q.contains("index=8")));

    consul.fail(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !registry.resolution("redis").unwrap().is_stale() {
        assert!(tokio::time::Instant::now() < deadline, "never marked stale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(registry.resolution("redis").unwrap().endpoints().len(), 1, "last known set kept");
    consul.fail(false);
    consul.set(format!("[{}]", consul_entry("10.1.10.15", "", 9001)));
    wait_for(&registry, "redis", &["10.1.10.15:9001"]).await;
    assert!(!registry.resolution("redis").unwrap().is_stale());
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: list then watch discovery.k8s.io/v1 EndpointSlices
// ---------------------------------------------------------------------------------------------

/// An EndpointSlice in the format of the Kubernetes API reference.
fn slice(name: &str, rv: u32, endpoints: &[(&str, bool)], port: u16) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, ready)| {
            format!(
                r#"{{"addresses":["{ip}"],"conditions":{{"ready":{ready},"serving":{ready},"terminating":false}},"nodeName":"node-1","targetRef":{{"kind":"Pod","namespace":"shop","name":"orders-{ip}","uid":"d3a5"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{{"name":"{name}","namespace":"shop","resourceVersion":"{rv}","labels":{{"kubernetes.io/service-name":"orders","endpointslice.kubernetes.io/managed-by":"endpointslice-controller.k8s.io"}}}},"addressType":"IPv4","endpoints":[{}],"ports":[{{"name":"metrics","protocol":"TCP","port":9090}},{{"name":"http","protocol":"TCP","port":{port}}}]}}"#,
        eps.join(",")
    )
}

/// The source of the tests' Kubernetes Service `shop/orders`, port `http`, on the API server at `addr`.
fn orders_source(addr: SocketAddr) -> KubernetesSource {
    KubernetesSource::new(format!("http://{addr}").parse().unwrap(), "shop", "orders").port_name("http")
}

#[tokio::test]
async fn kubernetes_lists_then_watches_endpoint_slices() {
    let (events_tx, events_rx) = mpsc::channel::<String>(16);
    let events_rx = Arc::new(tokio::sync::Mutex::new(Some(events_rx)));
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let reqs = requests.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let events_rx = events_rx.clone();
        let reqs = reqs.clone();
        async move {
            let q = req.uri().query().unwrap_or("").to_owned();
            reqs.lock().unwrap().push(format!("{}?{q}", req.uri().path()));
            assert_eq!(req.uri().path(), "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices");
            assert!(q.contains("labelSelector=kubernetes.io%2Fservice-name%3Dorders"));
            assert_eq!(req.headers().get("authorization").unwrap(), "Bearer sa-token");
            if !q.contains("watch=1") {
                let list = format!(
                    r#"{{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{{"resourceVersion":"100"}},"items":[{},{}]}}"#,
                    slice("orders-a", 90, &[("10.0.1.1", true), ("10.0.1.2", false)], 8080),
                    slice("orders-b", 95, &[("10.0.2.1", true)], 8080)
                );
                return Response::new(full(list));
            }
            assert!(q.contains("resourceVersion=100"));
            let Some(rx) = events_rx.lock().await.take() else {
                // A second watch: keep it open and quiet.
                return Response::new(StreamBody::new(futures::stream::pending()).boxed());
            };
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|ev| (Ok::<_, Infallible>(Frame::data(Bytes::from(ev + "\n"))), rx))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
    })
    .await;

    let registry = Registry::new();
    let _task = orders_source(addr).token("sa-token").spawn(registry.clone(), "orders");
    // Not-ready endpoints are left out; the named port is used.
    wait_for(&registry, "orders", &["10.0.1.1:8080", "10.0.2.1:8080"]).await;

    let modified = slice("orders-a", 101, &[("10.0.1.1", true), ("10.0.1.2", true)], 8080);
    events_tx.send(format!(r#"{{"type":"MODIFIED","object":{modified}}}"#)).await.unwrap();
    wait_for(&registry, "orders", &["10.0.1.1:8080", "10.0.1.2:8080", "10.0.2.1:8080"]).await;

    events_tx.send(r#"{"type":"BOOKMARK","object":{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"102"}}}"#.to_owned()).await.unwrap();
    let deleted = slice("orders-b", 103, &[("10.0.2.1", true)], 8080);
    events_tx.send(format!(r#"{{"type":"DELETED","object":{deleted}}}"#)).await.unwrap();
    wait_for(&registry, "orders", &["10.0.1.1:8080", "10.0.1.2:8080"]).await;

    let added = slice("orders-c", 104, &[("10.0.3.1", true)], 8080);
    events_tx.send(format!(r#"{{"type":"ADDED","object":{added}}}"#)).await.unwrap();
    wait_for(&registry, "orders", &["10.0.1.1:8080", "10.0.1.2:8080", "10.0.3.1:8080"]).await;

    // The watch expires (410 Gone as an ERROR event): the source lists again.
    events_tx
        .send(r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#.to_owned())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while requests.lock().unwrap().iter().filter(|r| !r.contains("watch=1")).count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no relist after the watch expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The relist's answer (slices a and b) replaces the watched state.
    wait_for(&registry, "orders", &["10.0.1.1:8080", "10.0.2.1:8080"]).await;
}

// ---------------------------------------------------------------------------------------------
// Watch robustness: resume, 410, idle timeout; Consul index rules
// ---------------------------------------------------------------------------------------------

/// Wait (up to 20 s: the machine may be loaded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of query parameter `name` in `query`.
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// A body of these lines (each newline-terminated), then open and silent
/// (`hang`) or ended.
fn lines_body(lines: Vec<String>, hang: bool) -> Response<Body> {
    let frames =
        futures::stream::iter(lines.into_iter().map(|l| Ok::<_, Infallible>(Frame::data(Bytes::from(l + "\n")))));
    Response::new(if hang {
        StreamBody::new(futures::StreamExt::chain(frames, futures::stream::pending())).boxed()
    } else {
        StreamBody::new(frames).boxed()
    })
}

/// A fake API server for EndpointSlices: `list` answers each list with
/// (resourceVersion, slices); `watch` answers the n-th watch (from 0). It
/// records each request's query, in order.
async fn k8s_server<L, W>(list: L, watch: W) -> (SocketAddr, Arc<Mutex<Vec<String>>>)
where
    L: Fn(usize) -> (u32, Vec<String>) + Send + Sync + 'static,
    W: Fn(usize) -> Response<Body> + Send + Sync + 'static,
{
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let (reqs, list, watch) = (requests.clone(), Arc::new(list), Arc::new(watch));
    let addr = serve(move |req: Request<Incoming>| {
        let (reqs, list, watch) = (reqs.clone(), list.clone(), watch.clone());
        async move {
            let q = req.uri().query().unwrap_or("").to_owned();
            let (lists, watches) = {
                let mut reqs = reqs.lock().unwrap();
                let watches = reqs.iter().filter(|r| r.contains("watch=1")).count();
                let lists = reqs.len() - watches;
                reqs.push(q.clone());
                (lists, watches)
            };
            if q.contains("watch=1") {
                return watch(watches);
            }
            let (rv, items) = list(lists);
            Response::new(full(format!(
                r#"{{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#,
                items.join(",")
            )))
        }
    })
    .await;
    (addr, requests)
}

fn bookmark(rv: u32) -> String {
    format!(
        r#"{{"type":"BOOKMARK","object":{{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{{"resourceVersion":"{rv}"}}}}}}"#
    )
}

fn status(code: u16) -> Response<Body> {
    Response::builder().status(code).body(full(r#"{"kind":"Status","code":0}"#.into())).unwrap()
}

#[tokio::test]
async fn kubernetes_watch_ending_after_a_bookmark_resumes_from_it_without_listing() {
    let (addr, requests) = k8s_server(
        |_| (100, vec![slice("orders-a", 90, &[("10.0.1.1", true)], 8080)]),
        |n| match n {
            // An event, a bookmark, then the server ends the watch (its timeoutSeconds).
            0 => lines_body(
                vec![
                    format!(
                        r#"{{"type":"MODIFIED","object":{}}}"#,
                        slice("orders-a", 120, &[("10.0.1.2", true)], 8080)
                    ),
                    bookmark(150),
                ],
                false,
            ),
            _ => lines_body(vec![], true),
        },
    )
    .await;
    let registry = Registry::new();
    let _task = orders_source(addr).spawn(registry.clone(), "orders");
    wait_for(&registry, "orders", &["10.0.1.2:8080"]).await;
    eventually("a second watch", || requests.lock().unwrap().len() >= 3).await;

    let requests = requests.lock().unwrap().clone();
    assert!(!requests[0].contains("watch=1"), "first a list: {requests:?}");
    assert_eq!(param(&requests[1], "resourceVersion"), Some("100"), "the watch starts at the list's version");
    assert_eq!(param(&requests[1], "allowWatchBookmarks"), Some("true"));
    assert!(requests[2].contains("watch=1"), "the ended watch is resumed, not relisted: {requests:?}");
    assert_eq!(param(&requests[2], "resourceVersion"), Some("150"), "resumed from the bookmark's version");
    assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 1, "the watched state is kept");
}

#[tokio::test]
async fn kubernetes_watch_error_resumes_and_410_gone_lists_again() {
    let (addr, requests) = k8s_server(
        |n| match n {
            0 => (100, vec![slice("orders-a", 90, &[("10.0.1.1", true)], 8080)]),
            _ => (200, vec![slice("orders-a", 190, &[("10.0.1.9", true)], 8080)]),
        },
        |n| match n {
            // A server error: resume the watch from the same version.
            0 => status(500),
            // The version has expired.
            1 => status(410),
            _ => lines_body(vec![], true),
        },
    )
    .await;
    let registry = Registry::new();
    let _task = orders_source(addr).spawn(registry.clone(), "orders");
    eventually("list, watch, watch, list, watch", || requests.lock().unwrap().len() >= 5).await;
    wait_for(&registry, "orders", &["10.0.1.9:8080"]).await;

    let requests = requests.lock().unwrap().clone();
    let watch_rv: Vec<Option<&str>> = requests
        .iter()
        .take(5)
        .map(|q| if q.contains("watch=1") { param(q, "resourceVersion") } else { None })
        .collect();
    assert_eq!(watch_rv, [None, Some("100"), Some("100"), None, Some("200")], "requests: {requests:?}");
    assert!(!registry.resolution("orders").unwrap().is_stale());
}

#[tokio::test]
async fn kubernetes_silent_watch_reconnects_after_the_idle_timeout_and_goes_stale_when_it_cannot() {
    let (addr, requests) = k8s_server(
        |_| (100, vec![slice("orders-a", 90, &[("10.0.1.1", true)], 8080)]),
        |n| match n {
            // Accepted, a bookmark, then silence on an open connection.
            0 => lines_body(vec![bookmark(120)], true),
            // The server is gone.
            _ => status(503),
        },
    )
    .await;
    let registry = Registry::new();
    let _task = orders_source(addr).idle_timeout(Duration::from_millis(300)).spawn(registry.clone(), "orders");
    wait_for(&registry, "orders", &["10.0.1.1:8080"]).await;

    eventually("a reconnect after the idle timeout", || requests.lock().unwrap().len() >= 3).await;
    let reqs = requests.lock().unwrap().clone();
    assert!(reqs[2].contains("watch=1"), "reconnected, not relisted: {reqs:?}");
    assert_eq!(param(&reqs[2], "resourceVersion"), Some("120"), "from the last bookmark");

    eventually("marked stale", || registry.resolution("orders").unwrap().is_stale()).await;
    assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 1, "last known set kept");
    assert!(requests.lock().unwrap().iter().skip(1).all(|q| q.contains("watch=1")), "never relisted");
}

#[tokio::test]
async fn consul_index_zero_is_taken_as_one_and_a_backwards_index_resets_to_zero() {
    // The X-Consul-Index of each answer, in order; then the queries block.
    const INDEXES: [u64; 4] = [0, 5, 3, 9];
    let queries = Arc::new(Mutex::new(Vec::<String>::new()));
    let qs = queries.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let qs = qs.clone();
        async move {
            let n = {
                let mut qs = qs.lock().unwrap();
                qs.push(req.uri().query().unwrap_or("").to_owned());
                qs.len() - 1
            };
            let Some(index) = INDEXES.get(n) else {
                return futures::future::pending().await;
            };
            Response::builder()
                .header("x-consul-index", index.to_string())
                .body(full(format!("[{}]", consul_entry("10.1.10.12", "", 8000))))
                .unwrap()
        }
    })
    .await;
    let registry = Registry::new();
    let _task = ConsulSource::new(format!("http://{addr}").parse().unwrap(), "redis")
        .wait(Duration::from_secs(60))
        .spawn(registry.clone(), "redis");
    eventually("five queries", || queries.lock().unwrap().len() >= 5).await;
    let queries = queries.lock().unwrap().clone();
    let index: Vec<&str> = queries.iter().take(5).map(|q| param(q, "index").unwrap()).collect();
    // 0 → 1 (never a non-blocking 0 in a loop); 5 → 5; 3 < 5 → 0; 9 → 9.
    assert_eq!(index, ["0", "1", "5", "0", "9"], "queries: {queries:?}");
}

#[tokio::test]
async fn kubernetes_second_silent_watch_in_a_row_marks_stale_and_a_live_one_clears_it() {
    let live = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let l = live.clone();
    let (addr, requests) = k8s_server(
        |_| (100, vec![slice("orders-a", 90, &[("10.0.1.1", true)], 8080)]),
        move |n| match n {
            0 => lines_body(vec![bookmark(120)], true),
            // Accepted, but nothing ever comes — until the server is fixed.
            _ if !l.load(std::sync::atomic::Ordering::SeqCst) => lines_body(vec![], true),
            _ => lines_body(vec![bookmark(130)], true),
        },
    )
    .await;
    let registry = Registry::new();
    let _task = orders_source(addr).idle_timeout(Duration::from_millis(300)).spawn(registry.clone(), "orders");
    wait_for(&registry, "orders", &["10.0.1.1:8080"]).await;

    eventually("marked stale after two silent watches", || registry.resolution("orders").unwrap().is_stale()).await;
    {
        let reqs = requests.lock().unwrap();
        assert!(reqs.len() >= 3, "{reqs:?}");
        assert!(reqs.iter().skip(2).all(|q| param(q, "resourceVersion") == Some("120")), "{reqs:?}");
    }
    live.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("a live watch clears the stale mark", || !registry.resolution("orders").unwrap().is_stale()).await;
    assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 1);
    assert_eq!(requests.lock().unwrap().iter().filter(|q| !q.contains("watch=1")).count(), 1, "never relisted");
}
