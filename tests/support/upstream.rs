//! A real hyper HTTP/1 server on 127.0.0.1 whose behaviour is switched at run
//! time: healthy, failing, slow, or asking clients to come back later. It counts
//! requests and the highest number in flight at once.
//!
//! Shared by the integration tests and `examples/quickstart.rs`.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What the upstream does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 "ok" after `delay`.
    Healthy,
    /// Answer with this status after `delay`.
    Status(u16),
    /// 503 with `Retry-After: secs`, once; then healthy.
    RetryAfterOnce(u64),
}

/// Run-time controls and counters.
#[derive(Debug, Default)]
pub struct Control {
    status: AtomicU16,
    retry_after: AtomicU64,
    delay_us: AtomicU64,
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub arrivals: Mutex<Vec<Instant>>,
}

impl Control {
    pub fn set(&self, mode: Mode) {
        match mode {
            Mode::Healthy => self.status.store(200, Ordering::SeqCst),
            Mode::Status(s) => self.status.store(s, Ordering::SeqCst),
            Mode::RetryAfterOnce(secs) => {
                self.retry_after.store(secs, Ordering::SeqCst);
                self.status.store(200, Ordering::SeqCst);
            }
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    async fn handle(&self, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.arrivals.lock().unwrap().push(Instant::now());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let retry_after = self.retry_after.swap(0, Ordering::SeqCst);
        let res = if retry_after > 0 {
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("retry-after", retry_after.to_string())
                .body(Full::new(Bytes::from_static(b"come back later")))
                .unwrap()
        } else {
            let status = match self.status.load(Ordering::SeqCst) {
                0 => 200,
                s => s,
            };
            Response::builder().status(status).body(Full::new(Bytes::from_static(b"ok"))).unwrap()
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        res
    }
}

/// A running upstream.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Start on a free loopback port.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control::default());
        let ctl = control.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let ctl = ctl.clone();
                        async move { Ok::<_, Infallible>(ctl.handle(req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Upstream { addr, control, task }
    }

    pub fn uri(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
