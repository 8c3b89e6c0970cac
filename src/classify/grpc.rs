use http::{HeaderMap, Response, StatusCode};

use super::{Classify, EosEvent, EosSlot, FailureKind, GrpcCode, Outcome, OutcomeRecorder};

/// A set of gRPC status codes as a bitmask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GrpcCodeSet(u32);

impl GrpcCodeSet {
    /// The empty set.
    pub const fn empty() -> Self {
        GrpcCodeSet(0)
    }

    /// The codes that mean the *server* is unwell and a call may succeed later:
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`,
    /// `UNAVAILABLE`, `DATA_LOSS`.
    pub fn server_errors() -> Self {
        let mut s = Self::empty();
        for c in [
            GrpcCode::Unknown,
            GrpcCode::DeadlineExceeded,
            GrpcCode::ResourceExhausted,
            GrpcCode::Internal,
            GrpcCode::Unavailable,
            GrpcCode::DataLoss,
        ] {
            s.insert(c);
        }
        s
    }

    /// Add a code.
    pub fn insert(&mut self, code: GrpcCode) {
        self.0 |= 1 << (code as i32);
    }

    /// Remove a code.
    pub fn remove(&mut self, code: GrpcCode) {
        self.0 &= !(1 << (code as i32));
    }

    /// Whether `code` is in the set.
    #[inline]
    pub fn contains(&self, code: GrpcCode) -> bool {
        self.0 & (1 << (code as i32)) != 0
    }
}

/// Turn a numeric gRPC status into a [`GrpcCode`]; out-of-range values are
/// `UNKNOWN`, as the gRPC spec says.
pub(crate) fn code_from_i32(code: i32) -> GrpcCode {
    use GrpcCode::*;
    match code {
        0 => Ok,
        1 => Cancelled,
        2 => Unknown,
        3 => InvalidArgument,
        4 => DeadlineExceeded,
        5 => NotFound,
        6 => AlreadyExists,
        7 => PermissionDenied,
        8 => ResourceExhausted,
        9 => FailedPrecondition,
        10 => Aborted,
        11 => OutOfRange,
        12 => Unimplemented,
        13 => Internal,
        14 => Unavailable,
        15 => DataLoss,
        16 => Unauthenticated,
        _ => Unknown,
    }
}

/// The `grpc-status` in `headers`, if present; malformed values are `UNKNOWN`.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    let v = headers.get("grpc-status")?;
    let code = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(code_from_i32)
        .unwrap_or(GrpcCode::Unknown);
    Some(code)
}

/// The gRPC code for an HTTP status returned *instead of* a gRPC response, as
/// in the gRPC "HTTP to gRPC status code mapping".
pub(crate) fn code_from_http(status: StatusCode) -> GrpcCode {
    match status.as_u16() {
        400 => GrpcCode::Internal,
        401 => GrpcCode::Unauthenticated,
        403 => GrpcCode::PermissionDenied,
        404 => GrpcCode::Unimplemented,
        429 | 502 | 503 | 504 => GrpcCode::Unavailable,
        _ => GrpcCode::Unknown,
    }
}

/// Classifies gRPC responses by `grpc-status`.
///
/// * A trailers-only response (how a unary call usually reports an error)
///   carries `grpc-status` in its headers and is classified at once.
/// * A non-200 HTTP status is mapped to a gRPC code as the gRPC spec says.
/// * Otherwise the status arrives in the trailers: the outcome is
///   [`Outcome::Deferred`] and, when [`ClassifyEosLayer`](super::ClassifyEosLayer)
///   sits below, reported at end of stream. A stream that ends without a
///   `grpc-status` is an `UNKNOWN` failure.
///
/// Codes in the failure set (default [`GrpcCodeSet::server_errors`]) are
/// failures; the rest (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) are the caller's
/// problem and count as successes.
///
/// ```
/// use tower_mesh::classify::{Classify, GrpcClassifier, GrpcCode, FailureKind, Outcome};
///
/// let c = GrpcClassifier::new();
/// let res = http::Response::builder()
///     .header("content-type", "application/grpc")
///     .header("grpc-status", "14")
///     .body(())
///     .unwrap();
/// assert_eq!(
///     Classify::<_, ()>::classify(&c, Ok(&res)),
///     Outcome::Failure(FailureKind::Grpc(GrpcCode::Unavailable))
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcClassifier {
    failures: GrpcCodeSet,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// Server errors are failures.
    pub fn new() -> Self {
        GrpcClassifier { failures: GrpcCodeSet::server_errors() }
    }

    /// Exactly `failures` are failures.
    pub fn with_failures(failures: GrpcCodeSet) -> Self {
        GrpcClassifier { failures }
    }

    /// Count `code` as a failure.
    pub fn failure(mut self, code: GrpcCode) -> Self {
        self.failures.insert(code);
        self
    }

    /// Count `code` as a success.
    pub fn success(mut self, code: GrpcCode) -> Self {
        self.failures.remove(code);
        self
    }

    /// Classify a gRPC code.
    #[inline]
    pub fn classify_code(&self, code: GrpcCode) -> Outcome {
        if self.failures.contains(code) {
            Outcome::Failure(FailureKind::Grpc(code))
        } else {
            Outcome::Success
        }
    }

    fn classify_eos(&self, event: EosEvent<'_>) -> Outcome {
        match event {
            EosEvent::End(Some(trailers)) => self.classify_code(grpc_status(trailers).unwrap_or(GrpcCode::Unknown)),
            EosEvent::End(None) => self.classify_code(GrpcCode::Unknown),
            EosEvent::Error => Outcome::Failure(FailureKind::Error),
            EosEvent::Timeout => Outcome::Failure(FailureKind::Timeout),
        }
    }
}

impl<B, E> Classify<Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        let res = match result {
            Ok(res) => res,
            Err(_) => return Outcome::Failure(FailureKind::Error),
        };
        if res.status() != StatusCode::OK {
            return self.classify_code(code_from_http(res.status()));
        }
        match grpc_status(res.headers()) {
            Some(code) => self.classify_code(code),
            None => Outcome::Deferred,
        }
    }

    fn defer(&self, response: &mut Response<B>, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        match response.extensions().get::<EosSlot>() {
            Some(slot) => {
                let this = *self;
                slot.watch(move |event| recorder.record(this.classify_eos(event)));
                Ok(())
            }
            None => Err(recorder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{ClassifyEosLayer, EosBody};
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use tower_layer::Layer;
    use tower_service::Service;

    fn res(status: u16, grpc: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).unwrap()
    }

    fn c(r: &Response<()>) -> Outcome {
        Classify::<_, ()>::classify(&GrpcClassifier::new(), Ok(r))
    }

    #[test]
    fn header_codes() {
        assert_eq!(c(&res(200, Some("0"))), Outcome::Success);
        assert_eq!(c(&res(200, Some("5"))), Outcome::Success); // NOT_FOUND
        assert!(c(&res(200, Some("14"))).is_failure());
        assert!(c(&res(200, Some("4"))).is_failure());
        // malformed → UNKNOWN → failure
        assert_eq!(c(&res(200, Some("abc"))), Outcome::Failure(FailureKind::Grpc(GrpcCode::Unknown)));
        assert_eq!(c(&res(200, Some("99"))), Outcome::Failure(FailureKind::Grpc(GrpcCode::Unknown)));
        assert_eq!(c(&res(200, None)), Outcome::Deferred);
        assert_eq!(c(&res(503, None)), Outcome::Failure(FailureKind::Grpc(GrpcCode::Unavailable)));
        assert_eq!(c(&res(404, None)), Outcome::Success); // UNIMPLEMENTED is not a server failure
    }

    #[test]
    fn configurable() {
        let k = GrpcClassifier::new().failure(GrpcCode::NotFound).success(GrpcCode::Unavailable);
        assert!(k.classify_code(GrpcCode::NotFound).is_failure());
        assert_eq!(k.classify_code(GrpcCode::Unavailable), Outcome::Success);
    }

    type Frames = Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>>;

    async fn streamed(frames: Frames, read_all: bool) -> Option<Outcome> {
        let frames = Mutex::new(Some(frames));
        let svc = tower::service_fn(move |_: ()| {
            let frames = frames.lock().unwrap().take().unwrap();
            async move {
                let body = StreamBody::new(futures::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        });
        let mut svc = ClassifyEosLayer::new().layer(svc);
        let mut res = svc.call(()).await.unwrap();
        let classifier = GrpcClassifier::new();
        assert_eq!(Classify::<_, ()>::classify(&classifier, Ok(&res)), Outcome::Deferred);
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        Classify::<_, ()>::defer(&classifier, &mut res, OutcomeRecorder::new(move |o| *s.lock().unwrap() = Some(o)))
            .expect("slot present");
        let body: EosBody<_> = res.into_body();
        if read_all {
            let _ = body.collect().await;
        } else {
            drop(body);
        }
        let out = *seen.lock().unwrap();
        out
    }

    fn trailers(code: &str) -> http_body::Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        http_body::Frame::trailers(t)
    }

    #[tokio::test]
    async fn trailers_are_classified_at_end_of_stream() {
        let data = http_body::Frame::data(Bytes::from_static(b"x"));
        assert_eq!(streamed(vec![Ok(data), Ok(trailers("0"))], true).await, Some(Outcome::Success));
        let data = http_body::Frame::data(Bytes::from_static(b"x"));
        assert_eq!(
            streamed(vec![Ok(data), Ok(trailers("13"))], true).await,
            Some(Outcome::Failure(FailureKind::Grpc(GrpcCode::Internal)))
        );
        // no trailers at all: UNKNOWN
        assert_eq!(streamed(vec![], true).await, Some(Outcome::Failure(FailureKind::Grpc(GrpcCode::Unknown))));
        // body dropped before the end: cancelled
        assert_eq!(streamed(vec![Ok(trailers("0"))], false).await, Some(Outcome::Cancelled));
    }

    #[test]
    fn defer_without_slot_gives_recorder_back() {
        let mut r = res(200, None);
        let out = Classify::<_, ()>::defer(&GrpcClassifier::new(), &mut r, OutcomeRecorder::new(|_| {}));
        assert!(out.is_err());
    }
}
