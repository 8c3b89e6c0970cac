//! What the chaos layer injects, to which requests, and its dice.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};

use super::error::ChaosConfigError;

/// How long an injected delay lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// Always the same delay.
    Fixed(Duration),
    /// A delay drawn uniformly between `min` and `max`.
    Uniform {
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// A delay drawn from an exponential distribution with this mean (a long
    /// tail of rare slow calls), cut at ten times the mean.
    Exponential(Duration),
}

impl Delay {
    /// The delay for a draw `u` in `[0, 1)`.
    pub(crate) fn sample(&self, u: f64) -> Duration {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Uniform { min, max } => min + (max.saturating_sub(min)).mul_f64(u),
            Delay::Exponential(mean) => mean.mul_f64((-(1.0 - u).ln()).min(10.0)),
        }
    }

    pub(crate) fn check(&self) -> Result<(), ChaosConfigError> {
        match *self {
            Delay::Uniform { min, max } if min > max => Err(ChaosConfigError::DelayRange),
            _ => Ok(()),
        }
    }
}

/// What an injected failure looks like to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP response with this status and an empty body.
    Status(StatusCode),
    /// A gRPC trailers-only response (`200`, `content-type:
    /// application/grpc`) with this `grpc-status` code (1–16).
    Grpc(u16),
    /// An [`InjectedFault`](super::InjectedFault) error of this I/O kind
    /// instead of a response; `ConnectionReset` stands for an aborted
    /// connection.
    Io(io::ErrorKind),
}

impl Abort {
    /// An aborted connection: an `io::ErrorKind::ConnectionReset` error.
    pub const fn connection_reset() -> Self {
        Abort::Io(io::ErrorKind::ConnectionReset)
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Abort::Status(_) => "abort_http",
            Abort::Grpc(_) => "abort_grpc",
            Abort::Io(_) => "abort_io",
        }
    }

    pub(crate) fn check(&self) -> Result<(), ChaosConfigError> {
        match *self {
            Abort::Grpc(code) if !(1..=16).contains(&code) => Err(ChaosConfigError::AbortCode(format!("grpc:{code}"))),
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for Abort {
    type Err = ChaosConfigError;

    /// `"503"` (HTTP status), `"grpc:14"` (gRPC code), `"reset"` (aborted
    /// connection), `"refused"`, `"timed-out"` or `"broken-pipe"` (I/O errors).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ChaosConfigError::AbortCode(s.chars().take(32).collect());
        let abort = match s {
            "reset" => Abort::connection_reset(),
            "refused" => Abort::Io(io::ErrorKind::ConnectionRefused),
            "timed-out" => Abort::Io(io::ErrorKind::TimedOut),
            "broken-pipe" => Abort::Io(io::ErrorKind::BrokenPipe),
            _ => match s.strip_prefix("grpc:") {
                Some(code) => Abort::Grpc(code.parse().map_err(|_| bad())?),
                None => {
                    let code: u16 = s.parse().map_err(|_| bad())?;
                    if !(100..=599).contains(&code) {
                        return Err(bad());
                    }
                    Abort::Status(StatusCode::from_u16(code).map_err(|_| bad())?)
                }
            },
        };
        abort.check().map(|()| abort)
    }
}

/// Which requests probabilistic faults apply to: all of the given
/// conditions must hold (an empty match takes every request).
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    methods: Vec<Method>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestMatch {
    /// A match that takes every request.
    pub fn new() -> Self {
        RequestMatch::default()
    }

    /// Only requests with this method (call again to allow more methods).
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// Only requests whose path starts with `prefix`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Only requests that carry this header with exactly this value.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub(crate) fn matches<B>(&self, req: &Request<B>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.path_prefix.as_deref().is_none_or(|p| req.uri().path().starts_with(p))
            && self.headers.iter().all(|(n, v)| req.headers().get_all(n).iter().any(|h| h == v))
    }
}

/// Who may drive faults with request headers (see
/// [`ChaosLayerBuilder::header_faults`](super::ChaosLayerBuilder::header_faults)).
#[derive(Clone)]
pub enum AllowedCallers {
    /// Callers whose address — the request's `SocketAddr` extension, as
    /// hyper-util and tower-mesh's servers set it, or axum's
    /// `ConnectInfo<SocketAddr>` mapped into one — is one of these.
    PeerIps(Vec<IpAddr>),
    /// Callers whose request carries this header with exactly this value.
    /// Anyone can send a header: use it only behind a proxy that strips it
    /// from outside traffic, or in tests.
    Header(HeaderName, HeaderValue),
    /// Callers the function accepts.
    Custom(CallerCheck),
}

/// A function that says whether a request (its headers and extensions)
/// comes from an allowed caller.
pub type CallerCheck = Arc<dyn Fn(&HeaderMap, &http::Extensions) -> bool + Send + Sync>;

impl AllowedCallers {
    pub(crate) fn allows<B>(&self, req: &Request<B>) -> bool {
        match self {
            AllowedCallers::PeerIps(ips) => {
                req.extensions().get::<SocketAddr>().is_some_and(|peer| ips.contains(&peer.ip()))
            }
            AllowedCallers::Header(name, value) => req.headers().get_all(name).iter().any(|v| v == value),
            AllowedCallers::Custom(f) => f(req.headers(), req.extensions()),
        }
    }
}

impl fmt::Debug for AllowedCallers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedCallers::PeerIps(ips) => f.debug_tuple("PeerIps").field(ips).finish(),
            AllowedCallers::Header(name, _) => f.debug_tuple("Header").field(name).finish_non_exhaustive(),
            AllowedCallers::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The request header that asks for a delay, in milliseconds.
pub const DELAY_HEADER: &str = "x-mesh-fault-delay";
/// The request header that asks for an abort: an HTTP status, `grpc:CODE`,
/// `reset` (and the other forms of [`Abort`]'s `FromStr`), or `black-hole`.
pub const ABORT_HEADER: &str = "x-mesh-fault-abort";

/// Faults a request asked for with headers.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HeaderFaults {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<Abort>,
    pub(crate) black_hole: bool,
}

impl HeaderFaults {
    /// Reads the fault headers; a malformed value is ignored (the request
    /// goes on unharmed) and a delay is cut at `max_delay`.
    pub(crate) fn read(headers: &HeaderMap, max_delay: Duration) -> Self {
        let mut faults = HeaderFaults::default();
        if let Some(ms) = headers.get(DELAY_HEADER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()) {
            faults.delay = Some(Duration::from_millis(ms).min(max_delay));
        }
        if let Some(v) = headers.get(ABORT_HEADER).and_then(|v| v.to_str().ok()) {
            match v.trim() {
                "black-hole" => faults.black_hole = true,
                v => faults.abort = v.parse().ok(),
            }
        }
        faults
    }
}

/// The layer's source of chance: seeded (the same sequence of draws each
/// run, for tests and drills) or from the thread's fast random generator.
#[derive(Debug)]
pub(crate) enum Dice {
    Seeded { seed: u64, draws: AtomicU64 },
    Random,
}

impl Dice {
    /// A draw in `[0, 1)`.
    pub(crate) fn roll(&self) -> f64 {
        match self {
            Dice::Seeded { seed, draws } => {
                let n = draws.fetch_add(1, Ordering::Relaxed);
                (splitmix64(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 11) as f64
                    / (1u64 << 53) as f64
            }
            Dice::Random => fastrand::f64(),
        }
    }

    /// True with probability `p` (no draw for 0 and 1, so a fault that is
    /// off costs nothing and does not shift a seeded sequence).
    pub(crate) fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.roll() < p
        }
    }
}

/// SplitMix64's output function: a well-mixed 64-bit value from a counter.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
