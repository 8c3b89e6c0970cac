//! etcd: keys under a prefix, listed then watched through etcd's JSON gateway.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::registry::Registry;
use super::source::{open_watch, run_list_watch, HttpClient, Lines, ListWatch, SourceTask, WatchCx, WatchEnd};
use crate::redact::RedactedUrl;
use crate::BoxError;

/// Endpoints kept in etcd as keys under a prefix whose values are `host:port`
/// (e.g. `/services/orders/i-1 = 10.0.0.7:8080`): listed with
/// `POST /v3/kv/range`, then followed with `POST /v3/watch` from the next
/// revision, through etcd's JSON (gRPC-gateway) API — plain HTTP and JSON, so
/// no protobuf compiler is needed to build tower-mesh.
///
/// The watch asks for progress notifications and the source keeps the
/// revision of every event and notification: a watch that ends or breaks is
/// resumed from the next revision, and only a compacted or cancelled one lists
/// again. A watch silent for the [idle timeout](Self::idle_timeout) (default
/// 20 minutes) is taken for a dead connection and reconnected; a failed
/// reconnect, or a second silent watch in a row, marks the endpoints stale
/// (the last set keeps serving) and retries with backoff. The default client
/// sets TCP keepalive, which fails a connection to a vanished host in about a
/// minute.
///
/// ```no_run
/// use tower_mesh::discovery::{EtcdSource, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// let registry = Registry::new();
/// let _task = EtcdSource::new("http://127.0.0.1:2379".parse()?, "/services/orders/").spawn(registry.clone(), "orders");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdSource {
    base: Uri,
    prefix: Vec<u8>,
    client: HttpClient,
    idle: Duration,
}

/// Default idle timeout of a watch: two of etcd's default progress-notification intervals.
const DEFAULT_IDLE: Duration = Duration::from_secs(20 * 60);
impl fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Any user info in the URL stays out.
        f.debug_struct("EtcdSource")
            .field("base", &RedactedUrl(&self.base))
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("client", &self.client)
            .field("idle", &self.idle)
            .finish()
    }
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Deserialize)]
struct Kv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    mod_revision: Option<String>,
}

#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Option<Header>,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    compact_revision: Option<String>,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    created: bool,
}

#[derive(Deserialize)]
struct Event {
    /// Absent for a PUT (the default of the enum is not serialized).
    #[serde(rename = "type", default)]
    kind: Option<String>,
    kv: Kv,
}

/// The end of the key range of everything starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // whole keyspace
}

impl EtcdSource {
    /// Follow the keys under `prefix` on the etcd at `base` (e.g. `http://127.0.0.1:2379`).
    pub fn new(base: Uri, prefix: impl Into<String>) -> Self {
        EtcdSource { base, prefix: prefix.into().into_bytes(), client: HttpClient::default(), idle: DEFAULT_IDLE }
    }

    /// The HTTP client (default: plain HTTP).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = client;
        self
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<Request<Full<Bytes>>, BoxError> {
        let base = self.base.to_string();
        Ok(Request::post(format!("{}{path}", base.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?)
    }

    /// Longest a watch may stay silent — no event and no progress
    /// notification — before the source takes its connection for dead and
    /// reconnects, resuming from the last revision it saw (default 20
    /// minutes: two of etcd's default 10-minute progress-notification
    /// intervals, `--experimental-watch-progress-notify-interval`; lower it
    /// with that interval). A second silent watch in a row marks the
    /// endpoints stale and backs off. Also bounds the wait for a watch's
    /// response head. Zero is taken as one millisecond.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(1));
        self
    }

    /// Start following, publishing into `registry` under `service`.
    pub fn spawn(self, registry: Registry, service: &str) -> SourceTask {
        registry.register(service);
        let idle = self.idle;
        SourceTask::spawn(run_list_watch(self, idle, registry, service.to_owned()))
    }
}

impl ListWatch for EtcdSource {
    type State = State;
    const KIND: &'static str = "etcd";
    const RELIST_REASON: &'static str = "watch compacted or cancelled";

    /// Read the keys and publish them.
    async fn list(&self, registry: &Registry, service: &str) -> Result<State, BoxError> {
        let range = self.post(
            "/v3/kv/range",
            serde_json::json!({ "key": B64.encode(&self.prefix), "range_end": B64.encode(prefix_end(&self.prefix)) }),
        )?;
        let (_, body) = tokio::time::timeout(Duration::from_secs(30), self.client.fetch(range, 16 << 20)).await??;
        let range: RangeResponse = serde_json::from_slice(&body)?;
        let revision: u64 = range.header.revision.as_deref().unwrap_or("0").parse()?;
        let mut keys: BTreeMap<String, Authority> = BTreeMap::new();
        for kv in range.kvs {
            apply(&mut keys, service, Some(kv));
        }
        registry.set(service, keys.values().cloned());
        Ok(State { revision, keys })
    }

    /// Watch from the revision after `st.revision` until the stream ends,
    /// keeping `st` up to date.
    async fn watch(&self, st: &mut State, cx: &mut WatchCx<'_>) -> Result<WatchEnd, BoxError> {
        let watch = self.post(
            "/v3/watch",
            serde_json::json!({ "create_request": {
                "key": B64.encode(&self.prefix),
                "range_end": B64.encode(prefix_end(&self.prefix)),
                "start_revision": (st.revision + 1).to_string(),
                "progress_notify": true,
            }}),
        )?;
        let mut lines = Lines::new(open_watch(&self.client, watch, self.idle).await?.into_body());
        while let Some(line) = lines.next_within(self.idle).await? {
            let line: WatchLine = serde_json::from_slice(&line)?;
            if let Some(err) = line.error {
                return Err(format!("etcd watch error: {err}").into());
            }
            let Some(result) = line.result else { continue };
            let first = !std::mem::replace(&mut cx.heard, true);
            cx.delay.reset();
            if result.canceled || result.compact_revision.as_deref().is_some_and(|r| r != "0") {
                // Compacted past our revision, or cancelled: list again.
                return Ok(WatchEnd::Relist);
            }
            let changed = !result.events.is_empty();
            for ev in result.events {
                if let Some(rev) = ev.kv.mod_revision.as_deref().and_then(|r| r.parse::<u64>().ok()) {
                    st.revision = st.revision.max(rev);
                }
                if ev.kind.as_deref() == Some("DELETE") {
                    if let Ok(k) = B64.decode(&ev.kv.key) {
                        st.keys.remove(&String::from_utf8_lossy(&k).into_owned());
                    }
                } else {
                    apply(&mut st.keys, cx.service, Some(ev.kv));
                }
            }
            // A progress notification (no events, not the creation answer,
            // whose header is the store's revision before the watch caught
            // up) carries the revision every event up to has been sent.
            if !changed && !result.created {
                if let Some(rev) = result.header.and_then(|h| h.revision).and_then(|r| r.parse::<u64>().ok()) {
                    st.revision = st.revision.max(rev);
                }
            }
            if changed || first {
                // An event, or the first line of a live watch (which clears a stale mark).
                cx.registry.set(cx.service, st.keys.values().cloned());
            }
        }
        Ok(WatchEnd::Closed)
    }

    fn resume_from(st: &State) -> String {
        st.revision.to_string()
    }
}

/// What the source knows between watches.
pub(crate) struct State {
    /// The last revision seen (of the list, an event or a progress notification).
    revision: u64,
    keys: BTreeMap<String, Authority>,
}

/// Put a key/value into the map; a value that is not `host:port` is skipped with a warning.
fn apply(keys: &mut BTreeMap<String, Authority>, service: &str, kv: Option<Kv>) {
    let Some(kv) = kv else { return };
    let Ok(key) = B64.decode(&kv.key) else { return };
    let key = String::from_utf8_lossy(&key).into_owned();
    let value = kv.value.as_deref().and_then(|v| B64.decode(v).ok()).unwrap_or_default();
    let value = String::from_utf8_lossy(&value);
    match super::registry::parse_endpoints([value.trim()]) {
        Ok(mut a) => {
            keys.insert(key, a.remove(0));
        }
        Err(e) => {
            keys.remove(&key);
            tracing::warn!(service, key = %key, error = %e, "etcd value is not an endpoint; skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_range() {
        assert_eq!(prefix_end(b"/services/"), b"/services0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
