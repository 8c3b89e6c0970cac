//! The overload bench's workload: an upstream on 127.0.0.1 with a fixed
//! number of workers, an open-loop client offering a fixed rate through a
//! subject (a limiter around hyper-util's client), and the summary of what
//! came back. Included with `#[path = "support/overload.rs"] mod overload;`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_mesh::error::{find_mesh_error, MeshErrorKind};
use tower_mesh::BoxError;

/// What the subjects are called with.
pub type Req = Request<Full<Bytes>>;

/// The workload; each figure can be changed with an environment variable.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// The upstream's workers, C (`OVERLOAD_WORKERS`, default 32).
    pub workers: usize,
    /// How long a request holds a worker (`OVERLOAD_WORK_MS`, default 5).
    pub work: Duration,
    /// Offered requests per second, as a multiple of the capacity
    /// (`OVERLOAD_FACTOR`, default 2).
    pub factor: f64,
    /// An answer later than this is not good (`OVERLOAD_DEADLINE_MS`, default 50).
    pub deadline: Duration,
    /// When the client gives up and drops the call: 4 × the deadline, so a
    /// late answer is seen late rather than cut at the deadline.
    pub give_up: Duration,
}

impl Load {
    /// The defaults of issue 27, overridden from the environment.
    pub fn from_env() -> Load {
        let var =
            |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
        let deadline = Duration::from_secs_f64(var("OVERLOAD_DEADLINE_MS", 50.0) / 1000.0);
        Load {
            workers: var("OVERLOAD_WORKERS", 32.0) as usize,
            work: Duration::from_secs_f64(var("OVERLOAD_WORK_MS", 5.0) / 1000.0),
            factor: var("OVERLOAD_FACTOR", 2.0),
            deadline,
            give_up: deadline * 4,
        }
    }

    /// Requests per second the upstream's `workers` can serve.
    pub fn capacity(&self, workers: usize) -> f64 {
        workers as f64 / self.work.as_secs_f64()
    }

    /// Requests per second offered: `factor` × the capacity of C workers.
    pub fn rate(&self) -> f64 {
        self.factor * self.capacity(self.workers)
    }
}

/// An upstream on 127.0.0.1: each request waits for one of the workers (a
/// FIFO queue, unbounded) and holds it for the work time. A request whose
/// client goes away is dropped where it is (hyper drops the handler when the
/// connection closes), so it gives its place in the queue or its worker back.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    workers: Arc<Semaphore>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream with `workers` workers, each request taking `work`.
    pub async fn start(workers: usize, work: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sem = Arc::new(Semaphore::new(workers));
        let pool = sem.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let _ = stream.set_nodelay(true);
                let pool = pool.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let pool = pool.clone();
                        async move {
                            let _worker = pool.acquire().await.unwrap();
                            tokio::time::sleep(work).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new();
                    let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Upstream { addr, workers: sem, accept }
    }

    /// Takes `n` workers away for good, as they come free (in the queue's
    /// order, so within about one queue wait).
    pub fn remove_workers(&self, n: usize) {
        let sem = self.workers.clone();
        tokio::spawn(async move { sem.acquire_many(n as u32).await.unwrap().forget() });
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered within the deadline.
    Good,
    /// Answered after the deadline, or not before the client gave up.
    Late,
    /// Turned away by the limiter without being sent.
    Rejected,
    /// Any other error (connection refused, reset).
    Failed,
}

/// One call: when it was due (since the start of the run), how long it
/// took from then, and how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// When the arrival process scheduled it, since the start of the run.
    pub due: Duration,
    /// From `due` to the end of the call.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// Calls made so far.
pub type Records = Arc<Mutex<Vec<Record>>>;

/// A limiter's rejection: a tower-mesh `Rejected` error (bulkhead,
/// adaptive limit) or tower's `Overloaded` (`LoadShed`) in the chain.
pub fn is_rejection(e: &BoxError) -> bool {
    let e: &(dyn std::error::Error + 'static) = &**e;
    let shed = std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<tower::load_shed::error::Overloaded>());
    shed || find_mesh_error(e).is_some_and(|m| m.kind() == MeshErrorKind::Rejected)
}

/// One call through `svc`, due at `due`, recorded in `records`.
async fn call<S>(svc: S, uri: http::Uri, start: Instant, due: Instant, load: Load, records: Records)
where
    S: Service<Req, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let answer = async {
        let res = svc.oneshot(req).await.map_err(Into::into)?;
        res.into_body().collect().await?;
        Ok::<_, BoxError>(())
    };
    let result = tokio::time::timeout_at((due + load.give_up).into(), answer).await;
    let latency = due.elapsed();
    let outcome = match result {
        Ok(Ok(())) if latency <= load.deadline => Outcome::Good,
        Ok(Ok(())) | Err(_) => Outcome::Late,
        Ok(Err(e)) if is_rejection(&e) => Outcome::Rejected,
        Ok(Err(_)) => Outcome::Failed,
    };
    let record = Record { due: due - start, latency, outcome };
    records.lock().unwrap().push(record);
}

/// Offers `load.rate()` calls per second through `svc` from `start` until
/// `until` (open loop: each call is due at its own time whatever the others
/// do; latency is counted from that time), then waits for the last to end.
pub async fn offer<S>(svc: S, addr: SocketAddr, load: Load, start: Instant, until: Duration, records: Records)
where
    S: Service<Req, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
    let rate = load.rate();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    loop {
        tick.tick().await;
        let now = start.elapsed().min(until);
        let due = (now.as_secs_f64() * rate) as u64;
        for i in sent..due {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::spawn(call(svc.clone(), uri.clone(), start, at, load, records.clone()));
        }
        sent = due;
        if now >= until {
            break;
        }
    }
    tokio::time::sleep(load.give_up + Duration::from_millis(50)).await;
}

/// The calls due in a window of a run.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Good answers per second.
    pub goodput: f64,
    /// Rejections per second.
    pub rejected: f64,
    /// Late answers (or none before the client gave up) per second.
    pub late: f64,
    /// Other errors per second.
    pub failed: f64,
    /// Median latency of the calls the limiter let through.
    pub p50: Duration,
    /// 99th percentile latency of the calls the limiter let through.
    pub p99: Duration,
}

/// The calls of `records` due in `[from, to)`.
pub fn summarize(records: &[Record], from: Duration, to: Duration) -> Summary {
    let window: Vec<&Record> = records.iter().filter(|r| r.due >= from && r.due < to).collect();
    let secs = (to - from).as_secs_f64();
    let per_s = |o: Outcome| window.iter().filter(|r| r.outcome == o).count() as f64 / secs;
    let mut admitted: Vec<Duration> =
        window.iter().filter(|r| r.outcome != Outcome::Rejected).map(|r| r.latency).collect();
    admitted.sort();
    let at = |q: f64| match admitted.len() {
        0 => Duration::ZERO,
        n => admitted[((n as f64 * q) as usize).min(n - 1)],
    };
    Summary {
        goodput: per_s(Outcome::Good),
        rejected: per_s(Outcome::Rejected),
        late: per_s(Outcome::Late),
        failed: per_s(Outcome::Failed),
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// Milliseconds, one decimal; `≥ give-up` when the client gave up.
pub fn ms(d: Duration, load: &Load) -> String {
    if d >= load.give_up {
        format!("≥ {:.0}", load.give_up.as_secs_f64() * 1000.0)
    } else {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    }
}
