//! Finding the local services (brokers, databases) the integration tests use.
//!
//! Include it with `#[path = "support/services.rs"] mod services;`.
//!
//! A service's address comes from an environment variable (a `host:port` or a
//! URL such as `amqp://guest:guest@127.0.0.1:5672/%2f`) or the default. When
//! nothing answers there the test prints `skipped: no <name> at <addr>` and
//! passes — unless `TOWER_MESH_REQUIRE_SERVICES=1`, where it fails.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a test's own client waits for something that should come (the
/// next consumed message, a reply) before it gives up. Generous: the tests
/// run on loaded machines, and only a lost message should stop them.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Set to `1` (CI) to make a missing service a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "TOWER_MESH_REQUIRE_SERVICES";

/// `true` when [`REQUIRE_ENV`] is `1` or `true`.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The value of `env_var`, or `default` when unset or empty.
pub fn env_or(env_var: &str, default: &str) -> String {
    match std::env::var(env_var) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// The `host:port` part of a URL or address (`scheme://user:pass@host:port/path?q`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, hp)| hp)
}

/// The address of service `name`: from `env_var` (address or URL) or
/// `default_addr`, if something accepts TCP connections there.
///
/// Otherwise prints `skipped: no <name> at <addr>` and returns `None` — or
/// panics (fails the test) when [`REQUIRE_ENV`] is set.
pub fn require_service(name: &str, env_var: &str, default_addr: &str) -> Option<SocketAddr> {
    let configured = env_or(env_var, default_addr);
    let hp = host_port(&configured).to_owned();
    let found = hp
        .to_socket_addrs()
        .ok()
        .and_then(|addrs| addrs.into_iter().find(|a| TcpStream::connect_timeout(a, Duration::from_secs(10)).is_ok()));
    match found {
        Some(addr) => Some(addr),
        None if services_required() => {
            panic!("{name} is required ({REQUIRE_ENV}=1) but nothing answers at {hp} (set {env_var})")
        }
        None => {
            println!("skipped: no {name} at {hp}");
            eprintln!("skipped: no {name} at {hp} (set {env_var} to its address)");
            None
        }
    }
}

/// Servers a test starts itself (etcd, a Kafka broker): find the binary,
/// pick a free loopback port, wait until it answers, stop it on drop.
pub mod process {
    use std::ffi::OsString;
    use std::future::Future;
    use std::net::{SocketAddr, TcpListener};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// The binary of server `name`: the path in `env_var`, else `default`
    /// (looked up in `PATH`), if it runs with `--version`. Otherwise prints
    /// `skipped: no <name> binary ...` (with `install`, how to get it) and
    /// returns `None` — or panics when [`REQUIRE_ENV`](super::REQUIRE_ENV) is set.
    pub fn require_binary(name: &str, env_var: &str, default: &str, install: &str) -> Option<PathBuf> {
        let bin = PathBuf::from(super::env_or(env_var, default));
        let runs = Command::new(&bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if runs.is_ok_and(|s| s.success()) {
            return Some(bin);
        }
        let msg = format!("no {name} binary `{}` ({install}; or set {env_var})", bin.display());
        assert!(!super::services_required(), "{name} is required ({}=1) but there is {msg}", super::REQUIRE_ENV);
        println!("skipped: {msg}");
        eprintln!("skipped: {msg}");
        None
    }

    /// A port that was free on 127.0.0.1 a moment ago (for a server that
    /// cannot be told to pick its own).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A server process started by a test, with a fresh temporary directory
    /// (its data directory, if it needs one, and its output in `log`);
    /// killed, waited for and the directory removed on drop.
    pub struct ServerProcess {
        name: String,
        child: Child,
        dir: PathBuf,
    }

    impl ServerProcess {
        /// Start `bin` with the arguments `args(dir)`, `dir` the process's
        /// own temporary directory.
        pub fn start<I, A>(name: &str, bin: &Path, args: impl FnOnce(&Path) -> I) -> ServerProcess
        where
            I: IntoIterator<Item = A>,
            A: Into<OsString>,
        {
            static STARTED: AtomicUsize = AtomicUsize::new(0);
            let n = STARTED.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("tower-mesh-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let log = std::fs::File::create(dir.join("log")).unwrap();
            let child = Command::new(bin)
                .args(args(&dir).into_iter().map(Into::into))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name} (`{}`): {e}", bin.display()));
            ServerProcess { name: name.to_owned(), child, dir }
        }

        /// What the process has printed so far.
        pub fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        }

        /// Poll `ready` every 50 ms until it says yes. Fails the test when
        /// the process exits first, or after [`PATIENCE`](super::PATIENCE)
        /// (a bound only a broken server reaches), with the process's output.
        pub async fn wait_ready<F: Future<Output = bool>>(&mut self, mut ready: impl FnMut() -> F) {
            let deadline = tokio::time::Instant::now() + super::PATIENCE;
            loop {
                if ready().await {
                    return;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("{} exited ({status}) before it was ready; its output:\n{}", self.name, self.log());
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} not ready after {:?}; its output:\n{}",
                    self.name,
                    super::PATIENCE,
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// [`wait_ready`](Self::wait_ready) until `addr` accepts TCP connections.
        pub async fn wait_accepting(&mut self, addr: SocketAddr) {
            self.wait_ready(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A private Kafka-protocol broker (tansu) for one test.
#[cfg(feature = "kafka")]
#[path = "tansu.rs"]
pub mod tansu;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("amqp://guest:guest@127.0.0.1:5672/%2f"), "127.0.0.1:5672");
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://:secret@localhost:6379/0?x=1"), "localhost:6379");
    }
}

/// A TCP proxy between a client and a service, to simulate faults without
/// touching the shared service: [`cut`](proxy::Proxy::cut) closes every open
/// connection, [`set_refusing`](proxy::Proxy::set_refusing) closes new ones at once,
/// [`set_stalled`](proxy::Proxy::set_stalled) swallows what clients send.
pub mod proxy {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    /// A running proxy; stops accepting when dropped.
    pub struct Proxy {
        addr: SocketAddr,
        refusing: Arc<AtomicBool>,
        generation: watch::Sender<u64>,
        accepted: Arc<AtomicUsize>,
        stalled: Arc<AtomicBool>,
        received: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Client to service: forwards what it reads, or drops it while
    /// `stalled`; counts the bytes read in `received`.
    async fn upstream_copy(
        mut from: tokio::net::tcp::ReadHalf<'_>,
        mut to: tokio::net::tcp::WriteHalf<'_>,
        stalled: &AtomicBool,
        received: &AtomicUsize,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            received.fetch_add(n, Ordering::SeqCst);
            if !stalled.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    impl Proxy {
        /// Listen on 127.0.0.1 (a free port) and forward to `upstream` (`host:port`).
        pub async fn start(upstream: &str) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let refusing = Arc::new(AtomicBool::new(false));
            let accepted = Arc::new(AtomicUsize::new(0));
            let stalled = Arc::new(AtomicBool::new(false));
            let received = Arc::new(AtomicUsize::new(0));
            let (generation, _) = watch::channel(0u64);
            let upstream = upstream.to_owned();
            let task = tokio::spawn({
                let refusing = refusing.clone();
                let accepted = accepted.clone();
                let generation = generation.clone();
                let stalled = stalled.clone();
                let received = received.clone();
                async move {
                    loop {
                        let Ok((mut client, _)) = listener.accept().await else { return };
                        if refusing.load(Ordering::SeqCst) {
                            drop(client);
                            continue;
                        }
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let mut cut = generation.subscribe();
                        let upstream = upstream.clone();
                        let (stalled, received) = (stalled.clone(), received.clone());
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                            cut.mark_unchanged();
                            let (client_read, mut client_write) = client.split();
                            let (mut server_read, server_write) = server.split();
                            // Either direction ending closes both.
                            tokio::select! {
                                _ = upstream_copy(client_read, server_write, &stalled, &received) => {}
                                _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
                                _ = cut.changed() => {}
                            }
                            // Dropping both sockets cuts the connection.
                        });
                    }
                }
            });
            Proxy { addr, refusing, generation, accepted, stalled, received, task }
        }

        /// The address clients connect to.
        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// Close every connection open now.
        pub fn cut(&self) {
            self.generation.send_modify(|g| *g += 1);
        }

        /// While `true`, new connections are closed at once (the service looks down).
        pub fn set_refusing(&self, refusing: bool) {
            self.refusing.store(refusing, Ordering::SeqCst);
            if refusing {
                self.cut();
            }
        }

        /// While `true`, what clients send is read (and counted) but not
        /// forwarded: the service never sees it, and a client's writes still
        /// complete. The stream is broken from there on: cut the connections
        /// before un-stalling.
        pub fn set_stalled(&self, stalled: bool) {
            self.stalled.store(stalled, Ordering::SeqCst);
        }

        /// Bytes read from clients so far (forwarded or not).
        pub fn received(&self) -> usize {
            self.received.load(Ordering::SeqCst)
        }

        /// Connections forwarded so far.
        pub fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
            self.cut();
        }
    }
}

/// The publisher tests' resilience stack and checks, shared by the brokers.
#[cfg(all(
    feature = "publish",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
pub mod stack {
    use std::collections::HashMap;
    use std::time::Duration;

    use futures::stream::{FuturesUnordered, StreamExt};
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
    use tower_mesh::bulkhead::BulkheadLayer;
    use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    use tower_mesh::correlation::{CorrelationId, RequestContext, TraceParent, TraceState};
    use tower_mesh::publish::{Event, PublishClassifier, PublishError, Receipt};
    use tower_mesh::retry::{Backoff, Jitter, RetryLayer};
    use tower_mesh::timeout::TimeoutLayer;

    /// (A build check: these tests link the crate of this tree, whose
    /// publisher has `outage_wait` and `Receipt::resent`.)
    const _: fn(&Receipt) -> bool = |r| {
        let _ = tower_mesh::publish::PublisherConfig::default().outage_wait;
        r.resent()
    };

    /// Events in the full-stack test.
    pub const N: usize = 10_000;
    /// Events in the fault test.
    pub const FAULT_N: usize = 3_000;
    /// Partition keys.
    pub const KEYS: usize = 16;
    /// The traceparent of the request in scope while publishing.
    pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Timeout (total) → retry (3 attempts, exponential from `retry_initial`
    /// × 2.0, 10 s max, jitter) → circuit breaker → bulkhead → timeout (per
    /// attempt) → `publisher`, with [`PublishClassifier`].
    pub fn full_stack<S>(
        publisher: S,
        retry_initial: Duration,
        breaker: CircuitBreakerLayer<PublishClassifier>,
    ) -> impl Service<Event, Response = Receipt, Error = BoxError, Future: Send> + Clone + Send
    where
        S: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(60)))
            .layer(
                RetryLayer::builder()
                    .max_retries(2)
                    .backoff(Backoff::exponential(retry_initial, 2.0, Duration::from_secs(10)).jitter(Jitter::Equal))
                    .classifier(PublishClassifier)
                    .build()
                    .unwrap(),
            )
            .layer(breaker)
            .layer(BulkheadLayer::new(4096))
            .layer(TimeoutLayer::per_attempt(Duration::from_secs(20)))
            .service(publisher)
    }

    /// A breaker that opens after 5 calls with half failing, for 300 ms.
    pub fn breaker(name: &str) -> CircuitBreakerLayer<PublishClassifier> {
        CircuitBreakerLayer::builder()
            .name(name)
            .minimum_calls(5)
            .failure_rate_threshold(50.0)
            .wait_in_open(Duration::from_millis(300))
            .classifier(PublishClassifier)
            .build()
            .unwrap()
    }

    /// One consumed event.
    #[derive(Clone, Debug)]
    pub struct Seen {
        /// Event id.
        pub id: String,
        /// Partition key.
        pub key: String,
        /// Position in its key's sequence.
        pub seq: u64,
    }

    impl Seen {
        /// From a consumed event made by [`publish_all`].
        pub fn of(e: &Event) -> Seen {
            Seen {
                id: e.id().to_owned(),
                key: e.partition_key().expect("partition key").to_owned(),
                seq: e.extension("seq").expect("seq extension").parse().unwrap(),
            }
        }
    }

    /// The request context the events are published in.
    pub fn context() -> RequestContext {
        RequestContext::new(CorrelationId::parse("req-7f3a").unwrap())
            .with_traceparent(TraceParent::parse(TP).unwrap())
            .with_tracestate(TraceState::parse("vendor=1").unwrap())
    }

    /// Event `i` of a run: key `k{i % KEYS}`, `seq` = its position in the key.
    pub fn event(i: usize, source: &str) -> Event {
        Event::builder(format!("/tower-mesh/tests/{source}"), "tower_mesh.test.created")
            .partition_key(format!("k{}", i % KEYS))
            .extension("seq", (i / KEYS).to_string())
            .json(&serde_json::json!({ "n": i }))
            .unwrap()
            .build()
            .unwrap()
    }

    /// Publish `n` events through `svc` inside a request context, at most
    /// 512 unanswered; `between(i)` runs before event `i` (fault injection).
    /// Every call must succeed; returns how many did.
    pub async fn publish_all<S>(svc: S, n: usize, source: &str, mut between: impl FnMut(usize)) -> usize
    where
        S: Service<Event, Response = Receipt, Error = BoxError> + Clone,
    {
        let mut svc = svc;
        let ctx = context();
        let mut pending = FuturesUnordered::new();
        let mut ok = 0;
        for i in 0..n {
            between(i);
            let event = ctx.clone().sync_scope(|| event(i, source));
            assert_eq!(event.correlation_id(), Some("req-7f3a"));
            let call = svc.ready().await.unwrap().call(event);
            pending.push(call);
            while pending.len() >= 512 {
                let r: Receipt = pending.next().await.unwrap().unwrap_or_else(|e| panic!("publish failed: {e}"));
                assert!(r.sends >= 1);
                ok += 1;
            }
        }
        while let Some(r) = pending.next().await {
            r.unwrap_or_else(|e| panic!("publish failed: {e}"));
            ok += 1;
        }
        ok
    }

    /// All `n` events present, each key's events in order.
    pub fn check_all_present_in_order(seen: &[Seen], n: usize) {
        assert_eq!(seen.len(), n, "all {n} events consumed");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for s in seen {
            if let Some(prev) = last.insert(&s.key, s.seq) {
                assert!(s.seq > prev, "key {} out of order: {} after {}", s.key, s.seq, prev);
            }
        }
        assert_eq!(last.len(), KEYS);
    }

    /// The first error of type `T` in `err`'s source chain.
    pub fn find<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<T>() {
                return Some(t);
            }
            cur = e.source();
        }
        None
    }

    /// With the broker unreachable (`proxy` refusing): calls fail with a typed
    /// [`PublishError::Unavailable`], the breaker opens; once the proxy
    /// forwards again the breaker lets a call through and it succeeds.
    pub async fn down_then_recover<S>(publisher: S, proxy: &super::proxy::Proxy, name: &str)
    where
        S: Service<Event, Response = Receipt, Error = PublishError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let mut svc = full_stack(publisher, Duration::from_millis(20), breaker(name));
        let mut unavailable = 0;
        let mut opened = false;
        for i in 0..200 {
            let err = svc.ready().await.unwrap().call(event(i, name)).await.expect_err("the broker is down");
            if let Some(p) = find::<PublishError>(&*err) {
                assert!(matches!(p, PublishError::Unavailable { .. }), "{p}");
                unavailable += 1;
            } else if find::<CircuitOpen>(&*err).is_some() {
                opened = true;
                break;
            } else {
                panic!("unexpected error: {err}");
            }
        }
        assert!(unavailable >= 1, "typed Unavailable errors before the breaker opened");
        assert!(opened, "the breaker opened");
        proxy.set_refusing(false);
        // Until a call succeeds (bounded only by the generous PATIENCE).
        let recover = async {
            for i in 1000.. {
                match svc.ready().await.unwrap().call(event(i, name)).await {
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            unreachable!()
        };
        let r = tokio::time::timeout(super::PATIENCE, recover)
            .await
            .expect("publishing works again once the broker is reachable");
        assert!(!r.confirmation.duplicate);
        assert!(proxy.accepted() >= 1);
    }
}
