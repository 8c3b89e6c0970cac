//! Plumbing shared by the endpoint sources: the task handle and the refresh
//! loop with stale-while-error and backoff (every source), and the HTTP
//! client of the sources that poll or watch an HTTP API (Consul, etcd,
//! Kubernetes).

use std::future::Future;
use std::time::Duration;

use super::registry::Registry;
use crate::BoxError;

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
use {
    bytes::{Buf, Bytes, BytesMut},
    http::{Request, Response},
    http_body_util::{BodyExt, Full},
    hyper_util::client::legacy::connect::HttpConnector,
    hyper_util::client::legacy::Client,
    hyper_util::rt::TokioExecutor,
    std::fmt,
    tower::util::BoxCloneSyncService,
    tower::ServiceExt,
};

/// The HTTP client an API-backed source talks through. The default is a plain
/// HTTP hyper-util client; for TLS (a real Kubernetes API server, Consul or
/// etcd behind HTTPS) pass your own — e.g. a hyper-util client with a
/// hyper-rustls connector — through [`HttpClient::new`].
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
#[derive(Clone)]
pub struct HttpClient(BoxCloneSyncService<Request<Full<Bytes>>, Response<BoxBody>, BoxError>);

/// Response body type of [`HttpClient`].
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl Default for HttpClient {
    /// Plain HTTP with TCP keepalive (first probe after 30 s idle, then every
    /// 10 s, 3 probes: a dead peer fails the connection in about a minute)
    /// and a 10 s connect timeout.
    fn default() -> Self {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(default_connector());
        HttpClient::new(client)
    }
}

/// TCP keepalive idle time of the default connector.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
/// TCP keepalive probe interval of the default connector.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive probes before the default connector's connection fails.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// The connector of the default client: TCP keepalive, so a peer that
/// vanished without closing (a dead host, a dropped NAT entry) fails a
/// long-lived watch instead of leaving it waiting for ever.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) fn default_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_keepalive(Some(KEEPALIVE_TIME));
    connector.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    connector.set_nodelay(true);
    connector
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl HttpClient {
    /// Wrap any HTTP client service.
    pub fn new<S, B>(client: S) -> Self
    where
        S: tower_service::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let svc = client
            .map_err(Into::into)
            .map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed_unsync()));
        HttpClient(BoxCloneSyncService::new(svc))
    }

    /// Send `req`; fail on a non-2xx status (with a short excerpt of the body).
    pub(crate) fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<BoxBody>, BoxError>> + Send + 'static {
        let call = self.0.clone().oneshot(req);
        async move {
            match call.await {
                Ok(res) => check_status(res).await,
                Err(e) => Err(e),
            }
        }
    }

    /// Send `req` and read the whole body (at most `limit` bytes).
    pub(crate) fn fetch(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> impl Future<Output = Result<(http::HeaderMap, Bytes), BoxError>> + Send + 'static {
        let send = self.send(req);
        async move {
            let (parts, body) = match send.await {
                Ok(res) => res.into_parts(),
                Err(e) => return Err(e),
            };
            match collect_limited(body, limit).await {
                Ok(body) => Ok((parts.headers, body)),
                Err(e) => Err(e),
            }
        }
    }
}

/// An API answered with a non-2xx status.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
#[derive(Debug)]
pub(crate) struct StatusError {
    pub(crate) status: http::StatusCode,
    excerpt: String,
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.excerpt)
    }
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl std::error::Error for StatusError {}

/// Fail on a non-2xx status, with a short excerpt of the body.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
async fn check_status(res: Response<BoxBody>) -> Result<Response<BoxBody>, BoxError> {
    if !res.status().is_success() {
        let status = res.status();
        // The excerpt is bounded in time too: a server that sends an error
        // status and then stalls does not hold the source.
        let body = tokio::time::timeout(Duration::from_secs(5), collect_limited(res.into_body(), 512))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let excerpt = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(Box::new(StatusError { status, excerpt }));
    }
    Ok(res)
}

/// Read a body, failing once it exceeds `limit` bytes.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) async fn collect_limited(body: BoxBody, limit: usize) -> Result<Bytes, BoxError> {
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame: http_body::Frame<Bytes> = frame?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("response body larger than {limit} bytes").into());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// The background task of a source; dropping it (or [`abort`](Self::abort))
/// stops the source. The registry keeps the last endpoints it published.
#[derive(Debug)]
pub struct SourceTask(tokio::task::JoinHandle<()>);

impl SourceTask {
    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) -> Self {
        SourceTask(tokio::spawn(f))
    }

    /// Stop the source.
    pub fn abort(&self) {
        self.0.abort();
    }

    /// Whether the task has ended (it only ends when aborted).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for SourceTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Retry delays of a failing source: 100 ms doubling up to 10 s.
#[derive(Debug)]
pub(crate) struct RetryDelay(Duration);

impl RetryDelay {
    pub(crate) fn new() -> Self {
        RetryDelay(Duration::from_millis(100))
    }
    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        d
    }
}

/// A source failed: keep the last endpoints (marked stale), log once per
/// failure with the source's kind, and wait before the next attempt.
pub(crate) async fn failed(
    registry: &Registry,
    service: &str,
    kind: &'static str,
    err: BoxError,
    delay: &mut RetryDelay,
) {
    registry.mark_stale(service);
    metrics::counter!("tower_mesh_discovery_source_errors_total", "service" => service.to_owned(), "source" => kind)
        .increment(1);
    let wait = delay.next();
    tracing::warn!(service, source = kind, error = %err, retry_in = ?wait, "discovery source failed");
    tokio::time::sleep(wait).await;
}

/// Newline-delimited JSON objects from a streaming body (the watch APIs of
/// etcd and Kubernetes) (a line is capped at 16 MiB).
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
#[cfg_attr(not(any(feature = "discovery-etcd", feature = "discovery-k8s")), allow(dead_code))]
pub(crate) struct Lines {
    body: BoxBody,
    buf: BytesMut,
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
#[cfg_attr(not(any(feature = "discovery-etcd", feature = "discovery-k8s")), allow(dead_code))]
impl Lines {
    pub(crate) fn new(body: BoxBody) -> Self {
        Lines { body, buf: BytesMut::new() }
    }

    /// The next line, or [`WatchIdle`] when none is complete within `idle`
    /// (the watch may be on a dead connection).
    pub(crate) async fn next_within(&mut self, idle: Duration) -> Result<Option<Bytes>, BoxError> {
        match tokio::time::timeout(idle, self.next()).await {
            Ok(line) => line,
            Err(_) => Err(Box::new(WatchIdle(idle))),
        }
    }

    /// The next line (cancel-safe: a line is taken from the buffer only when returned).
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1).freeze();
                let line = line.slice(..pos);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > 16 << 20 {
                return Err("watch event larger than 16 MiB".into());
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(mut data) = frame?.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                None => {
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    let rest = std::mem::take(&mut self.buf).freeze();
                    return Ok(Some(rest));
                }
            }
        }
    }
}

/// A watch sent nothing — no event, bookmark or progress notification — for
/// its idle timeout.
#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
#[cfg_attr(not(any(feature = "discovery-etcd", feature = "discovery-k8s")), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct WatchIdle(pub(crate) Duration);

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl std::fmt::Display for WatchIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "watch silent for {:?} (idle timeout)", self.0)
    }
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s"))]
impl std::error::Error for WatchIdle {}

/// Send a watch request: its response head must come within `idle` too.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) async fn open_watch(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    idle: Duration,
) -> Result<Response<BoxBody>, BoxError> {
    match tokio::time::timeout(idle, client.send(req)).await {
        Ok(res) => res,
        Err(_) => Err(Box::new(WatchIdle(idle))),
    }
}

/// A watch went silent: count it and say so; the caller reconnects at once,
/// resuming from the last version it saw.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) fn watch_idle(service: &str, kind: &'static str, idle: Duration, resume_from: &str) {
    metrics::counter!("tower_mesh_discovery_watch_idle_total", "service" => service.to_owned(), "source" => kind)
        .increment(1);
    tracing::warn!(service, source = kind, idle = ?idle, resume_from, "discovery watch silent past its idle timeout; reconnecting");
}

/// How a watch ended without an error.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) enum WatchEnd {
    /// The stream ended (the server's timeout, a closed connection): resume
    /// from the last position seen.
    Closed,
    /// The position is too old to resume from (etcd: compacted or cancelled;
    /// Kubernetes: 410 Gone): list again.
    Relist,
}

/// What a watch works with: where it publishes, the backoff it resets while
/// it hears from the server, and whether it has sent a line yet.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) struct WatchCx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) service: &'a str,
    pub(crate) delay: &'a mut RetryDelay,
    /// The watch has sent a line.
    pub(crate) heard: bool,
}

/// A source that lists everything once and then watches for changes,
/// resuming each watch from the last position it saw (etcd, Kubernetes).
/// [`run_list_watch`] drives it.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) trait ListWatch: Send + Sync + 'static {
    /// What the source knows between watches.
    type State: Send;
    /// The source's kind, as in logs and metric labels.
    const KIND: &'static str;
    /// Why a watch that ended with [`WatchEnd::Relist`] cannot resume (for the log).
    const RELIST_REASON: &'static str;

    /// List everything and publish it.
    fn list(&self, registry: &Registry, service: &str) -> impl Future<Output = Result<Self::State, BoxError>> + Send;

    /// Watch from the state's position until the stream ends, keeping the
    /// state up to date.
    fn watch(
        &self,
        st: &mut Self::State,
        cx: &mut WatchCx<'_>,
    ) -> impl Future<Output = Result<WatchEnd, BoxError>> + Send;

    /// The position the next watch resumes from, for logs.
    fn resume_from(st: &Self::State) -> String;
}

/// The list-then-watch loop of a [`ListWatch`] source: list (again when
/// needed), then watch and resume for ever. A watch silent past `idle` is
/// reconnected at once; a failed list or watch, or a second silent watch in a
/// row, marks the endpoints stale and backs off.
#[cfg(any(feature = "discovery-etcd", feature = "discovery-k8s"))]
pub(crate) async fn run_list_watch<S: ListWatch>(source: S, idle: Duration, registry: Registry, service: String) {
    let kind = S::KIND;
    let mut delay = RetryDelay::new();
    // The listed-and-watched state; `None` lists (again).
    let mut state: Option<S::State> = None;
    let mut silent_in_row = 0u32;
    loop {
        let st = match &mut state {
            Some(st) => st,
            None => match source.list(&registry, &service).await {
                Ok(st) => {
                    delay.reset();
                    state.insert(st)
                }
                Err(e) => {
                    failed(&registry, &service, kind, e, &mut delay).await;
                    continue;
                }
            },
        };
        let mut cx = WatchCx { registry: &registry, service: &service, delay: &mut delay, heard: false };
        let result = source.watch(st, &mut cx).await;
        let heard = cx.heard;
        if heard {
            silent_in_row = 0;
        }
        match result {
            Ok(WatchEnd::Closed) => {
                tracing::debug!(service, source = kind, resume_from = %S::resume_from(st), "discovery watch ended; resuming");
                if !heard {
                    // Ended without a line: do not spin on a server that closes at once.
                    tokio::time::sleep(delay.next()).await;
                }
            }
            Ok(WatchEnd::Relist) => {
                tracing::debug!(
                    service,
                    source = kind,
                    resume_from = %S::resume_from(st),
                    reason = S::RELIST_REASON,
                    "discovery watch cannot resume; listing again"
                );
                state = None;
            }
            Err(e) if e.is::<WatchIdle>() && silent_in_row == 0 => {
                silent_in_row += 1;
                watch_idle(&service, kind, idle, &S::resume_from(st));
            }
            Err(e) => {
                if e.is::<WatchIdle>() {
                    silent_in_row += 1;
                }
                failed(&registry, &service, kind, e, &mut delay).await;
            }
        }
    }
}

#[cfg(all(test, any(feature = "discovery-consul", feature = "discovery-etcd", feature = "discovery-k8s")))]
mod tests {
    use super::{default_connector, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, KEEPALIVE_TIME};
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_default_connector_sets_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let io = default_connector().oneshot(uri).await.unwrap();
        let sock = socket2::SockRef::from(io.inner());
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE");
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
            assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        }
        assert!(sock.tcp_nodelay().unwrap());
    }
}
