//! Kubernetes: EndpointSlices of a Service, listed then watched.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::registry::Registry;
use super::source::{
    open_watch, run_list_watch, HttpClient, Lines, ListWatch, SourceTask, StatusError, WatchCx, WatchEnd,
};
use crate::redact::{redact_opt, RedactedUrl};
use crate::BoxError;

/// Endpoints of a Kubernetes Service: the ready addresses of its
/// `discovery.k8s.io/v1` EndpointSlices (label
/// `kubernetes.io/service-name`), listed once and then watched
/// (`?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=…`).
///
/// The source keeps the resource version of every event and BOOKMARK; when a
/// watch ends (the server's `timeoutSeconds`, a broken connection) it watches
/// again from there, without listing. Only `410 Gone` — as the HTTP status or
/// an `ERROR` event with code 410 — lists again. A watch silent for the
/// [idle timeout](Self::idle_timeout) (default 3 minutes) is taken for a dead
/// connection and reconnected; a failed reconnect, or a second silent watch
/// in a row, marks the endpoints stale (the last set keeps serving) and
/// retries with backoff. The default client sets TCP keepalive.
///
/// It speaks the API over the given [`HttpClient`]: a real API server needs
/// HTTPS, so pass a TLS-capable client and the service-account token
/// ([`token`](Self::token)); the default plain-HTTP client suits `kubectl
/// proxy`.
///
/// ```no_run
/// use tower_mesh::discovery::{KubernetesSource, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// let registry = Registry::new();
/// // through `kubectl proxy` on its default port
/// let _task = KubernetesSource::new("http://127.0.0.1:8001".parse()?, "shop", "orders")
///     .port_name("http")
///     .spawn(registry.clone(), "orders");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubernetesSource {
    base: Uri,
    namespace: String,
    k8s_service: String,
    port_name: Option<String>,
    token: Option<String>,
    client: HttpClient,
    idle: Duration,
}

/// Default idle timeout of a watch: three of the API server's bookmark
/// intervals (it sends a bookmark about every minute to a watch that asked
/// for them and set `timeoutSeconds`).
const DEFAULT_IDLE: Duration = Duration::from_secs(180);

/// How long each watch asks the server to run (`timeoutSeconds`) before it
/// ends the stream cleanly and the source resumes it.
const WATCH_TIMEOUT_SECS: u64 = 300;

/// What the source knows between watches.
pub(crate) struct State {
    /// The resource version of the last list, event or bookmark.
    rv: String,
    slices: BTreeMap<String, Vec<Authority>>,
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bearer token and any user info in the URL stay out.
        f.debug_struct("KubernetesSource")
            .field("base", &RedactedUrl(&self.base))
            .field("namespace", &self.namespace)
            .field("k8s_service", &self.k8s_service)
            .field("port_name", &self.port_name)
            .field("token", &redact_opt(&self.token))
            .field("client", &self.client)
            .field("idle", &self.idle)
            .finish()
    }
}

#[derive(Deserialize)]
struct SliceList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Slice>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct Slice {
    metadata: Meta,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Vec<SlicePort>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Deserialize, Default)]
struct Conditions {
    /// Absent means unknown, which consumers treat as ready.
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl KubernetesSource {
    /// Watch Service `k8s_service` in `namespace` on the API server at `base`.
    pub fn new(base: Uri, namespace: impl Into<String>, k8s_service: impl Into<String>) -> Self {
        KubernetesSource {
            base,
            namespace: namespace.into(),
            k8s_service: k8s_service.into(),
            port_name: None,
            token: None,
            client: HttpClient::default(),
            idle: DEFAULT_IDLE,
        }
    }

    /// Use the slice port with this name (default: the first port).
    pub fn port_name(mut self, name: impl Into<String>) -> Self {
        self.port_name = Some(name.into());
        self
    }

    /// Bearer token for the API server, sent as a sensitive `Authorization`
    /// header (never in `Debug` or logs).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The HTTP client (default: plain HTTP).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = client;
        self
    }

    /// Longest a watch may stay silent — no event and no bookmark — before
    /// the source takes its connection for dead and reconnects, resuming from
    /// the last resource version (default 3 minutes: three of the API
    /// server's one-minute bookmark intervals). A second silent watch in a
    /// row marks the endpoints stale and backs off. Also bounds the wait for
    /// a watch's response head. Zero is taken as one millisecond.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(1));
        self
    }

    /// Start listing and watching, publishing into `registry` under `service`.
    pub fn spawn(self, registry: Registry, service: &str) -> SourceTask {
        registry.register(service);
        let idle = self.idle;
        SourceTask::spawn(run_list_watch(self, idle, registry, service.to_owned()))
    }

    fn request(&self, query: &str) -> Result<Request<Full<Bytes>>, BoxError> {
        let base = self.base.to_string();
        let uri = format!(
            "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}{query}",
            base.trim_end_matches('/'),
            self.namespace,
            self.k8s_service
        );
        let mut req = Request::get(uri).header("accept", "application/json").body(Full::new(Bytes::new()))?;
        if let Some(t) = &self.token {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {t}"))?;
            v.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        Ok(req)
    }

    fn endpoints_of(&self, slice: &Slice) -> Vec<Authority> {
        let port = match &self.port_name {
            Some(name) => slice.ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
            None => slice.ports.first(),
        }
        .and_then(|p| p.port);
        let Some(port) = port else { return Vec::new() };
        slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready.unwrap_or(true))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| {
                let host = if a.contains(':') { format!("[{a}]") } else { a.clone() };
                format!("{host}:{port}").parse().ok()
            })
            .collect()
    }
}

impl ListWatch for KubernetesSource {
    type State = State;
    const KIND: &'static str = "kubernetes";
    const RELIST_REASON: &'static str = "resource version expired";

    /// List the slices and publish them.
    async fn list(&self, registry: &Registry, service: &str) -> Result<State, BoxError> {
        let (_, body) =
            tokio::time::timeout(Duration::from_secs(30), self.client.fetch(self.request("")?, 16 << 20)).await??;
        let list: SliceList = serde_json::from_slice(&body)?;
        let mut slices: BTreeMap<String, Vec<Authority>> = BTreeMap::new();
        for s in list.items {
            slices.insert(s.metadata.name.clone(), self.endpoints_of(&s));
        }
        registry.set(service, union(&slices));
        Ok(State { rv: list.metadata.resource_version, slices })
    }

    /// Watch from `st.rv` until the stream ends, keeping `st` up to date.
    async fn watch(&self, st: &mut State, cx: &mut WatchCx<'_>) -> Result<WatchEnd, BoxError> {
        let query =
            format!("&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECS}&resourceVersion={}", st.rv);
        let res = match open_watch(&self.client, self.request(&query)?, self.idle).await {
            Ok(res) => res,
            Err(e) if e.downcast_ref::<StatusError>().is_some_and(|e| e.status == http::StatusCode::GONE) => {
                return Ok(WatchEnd::Relist)
            }
            Err(e) => return Err(e),
        };
        let mut lines = Lines::new(res.into_body());
        while let Some(line) = lines.next_within(self.idle).await? {
            let ev: WatchEvent = serde_json::from_slice(&line)?;
            let first = !std::mem::replace(&mut cx.heard, true);
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let slice: Slice = serde_json::from_value(ev.object)?;
                    st.rv = slice.metadata.resource_version.clone();
                    if ev.kind == "DELETED" {
                        st.slices.remove(&slice.metadata.name);
                    } else {
                        st.slices.insert(slice.metadata.name.clone(), self.endpoints_of(&slice));
                    }
                    cx.registry.set(cx.service, union(&st.slices));
                }
                "BOOKMARK" => {
                    if let Some(v) = ev.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()) {
                        st.rv = v.to_owned();
                    }
                    if first {
                        // The watch is live: the set is current again (clears a stale mark).
                        cx.registry.set(cx.service, union(&st.slices));
                    }
                }
                "ERROR" => {
                    // A `Status` object: 410 Gone means the resource version expired.
                    let reason = ev.object.get("reason").and_then(|r| r.as_str());
                    if ev.object.get("code").and_then(|c| c.as_u64()) == Some(410)
                        || matches!(reason, Some("Expired" | "Gone"))
                    {
                        return Ok(WatchEnd::Relist);
                    }
                    let message = ev.object.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
                    return Err(format!("kubernetes watch error: {message}").into());
                }
                other => return Err(format!("unexpected watch event type `{other}`").into()),
            }
            cx.delay.reset();
        }
        Ok(WatchEnd::Closed)
    }

    fn resume_from(st: &State) -> String {
        st.rv.clone()
    }
}

fn union(slices: &BTreeMap<String, Vec<Authority>>) -> Vec<Authority> {
    slices.values().flatten().cloned().collect()
}
