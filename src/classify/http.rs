use std::ops::RangeInclusive;

use http::{Response, StatusCode};

use super::{Classify, EosEvent, EosSlot, FailureKind, Outcome, OutcomeRecorder};

/// A set of HTTP status codes (100–999) stored as a fixed bitmap: membership
/// tests are a shift and a mask, with no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// The empty set.
    pub const fn empty() -> Self {
        StatusSet([0; 16])
    }

    /// Add one status code.
    pub fn insert(&mut self, status: StatusCode) {
        let c = status.as_u16() as usize;
        self.0[c / 64] |= 1 << (c % 64);
    }

    /// Remove one status code.
    pub fn remove(&mut self, status: StatusCode) {
        let c = status.as_u16() as usize;
        self.0[c / 64] &= !(1 << (c % 64));
    }

    /// Add every valid status code in `range` (codes outside 100–999 are skipped).
    pub fn insert_range(&mut self, range: RangeInclusive<u16>) {
        for code in range {
            if let Ok(s) = StatusCode::from_u16(code) {
                self.insert(s);
            }
        }
    }

    /// Whether `status` is in the set.
    #[inline]
    pub fn contains(&self, status: StatusCode) -> bool {
        let c = status.as_u16() as usize;
        self.0[c / 64] & (1 << (c % 64)) != 0
    }
}

/// Classifies `http::Response`s by status code.
///
/// By default 5xx, `429 Too Many Requests` and `408 Request Timeout` are
/// failures, every other status is a success, and an `Err` from the inner
/// service is a [`FailureKind::Error`]. Statuses can be moved between the
/// failure, success and ignored sets.
///
/// ```
/// use tower_mesh::classify::{Classify, HttpClassifier, Outcome};
/// use http::{Response, StatusCode};
///
/// let c = HttpClassifier::new()
///     .success(StatusCode::NOT_IMPLEMENTED)   // 501 is not the dependency being unwell
///     .ignore(StatusCode::CONFLICT);          // 409 counts for nothing
/// let res = Response::builder().status(501).body(()).unwrap();
/// assert_eq!(Classify::<_, ()>::classify(&c, Ok(&res)), Outcome::Success);
/// let res = Response::builder().status(409).body(()).unwrap();
/// assert_eq!(Classify::<_, ()>::classify(&c, Ok(&res)), Outcome::Ignored);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpClassifier {
    failures: StatusSet,
    ignored: StatusSet,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// 5xx, 429 and 408 are failures.
    pub fn new() -> Self {
        let mut failures = StatusSet::empty();
        failures.insert_range(500..=599);
        failures.insert(StatusCode::TOO_MANY_REQUESTS);
        failures.insert(StatusCode::REQUEST_TIMEOUT);
        HttpClassifier { failures, ignored: StatusSet::empty() }
    }

    /// Only the given statuses are failures.
    pub fn with_failures(failures: StatusSet) -> Self {
        HttpClassifier { failures, ignored: StatusSet::empty() }
    }

    /// Count `status` as a failure.
    pub fn failure(mut self, status: StatusCode) -> Self {
        self.failures.insert(status);
        self.ignored.remove(status);
        self
    }

    /// Count `status` as a success.
    pub fn success(mut self, status: StatusCode) -> Self {
        self.failures.remove(status);
        self.ignored.remove(status);
        self
    }

    /// Count `status` as neither.
    pub fn ignore(mut self, status: StatusCode) -> Self {
        self.failures.remove(status);
        self.ignored.insert(status);
        self
    }

    /// Classify a bare status code.
    #[inline]
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        if self.failures.contains(status) {
            Outcome::Failure(FailureKind::HttpStatus(status))
        } else if self.ignored.contains(status) {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    /// The status decides; but a success whose body is watched (an
    /// [`EosSlot`] in the extensions: [`ClassifyEosLayer`](super::ClassifyEosLayer)
    /// or a [`TimeoutLayer`](crate::timeout::TimeoutLayer) covering the body
    /// below) is [`Outcome::Deferred`] to the end of the body: a body that
    /// fails or times out is then a failure.
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => match self.classify_status(res.status()) {
                Outcome::Success if res.extensions().get::<EosSlot>().is_some() => Outcome::Deferred,
                o => o,
            },
            Err(_) => Outcome::Failure(FailureKind::Error),
        }
    }

    fn defer(&self, response: &mut Response<B>, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        match response.extensions().get::<EosSlot>() {
            Some(slot) => {
                slot.watch(move |event| {
                    recorder.record(match event {
                        EosEvent::End(_) => Outcome::Success,
                        EosEvent::Error => Outcome::Failure(FailureKind::Error),
                        EosEvent::Timeout => Outcome::Failure(FailureKind::Timeout),
                    })
                });
                Ok(())
            }
            None => Err(recorder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = HttpClassifier::new();
        for code in [500u16, 502, 503, 504, 599, 429, 408] {
            assert!(c.classify_status(StatusCode::from_u16(code).unwrap()).is_failure(), "{code}");
        }
        for code in [200u16, 201, 204, 301, 400, 401, 403, 404, 409, 422] {
            assert_eq!(c.classify_status(StatusCode::from_u16(code).unwrap()), Outcome::Success, "{code}");
        }
        let err: Result<&Response<()>, &&str> = Err(&"boom");
        assert_eq!(c.classify(err), Outcome::Failure(FailureKind::Error));
    }

    #[test]
    fn reconfigure() {
        let c = HttpClassifier::new()
            .success(StatusCode::SERVICE_UNAVAILABLE)
            .failure(StatusCode::NOT_FOUND)
            .ignore(StatusCode::BAD_REQUEST);
        assert_eq!(c.classify_status(StatusCode::SERVICE_UNAVAILABLE), Outcome::Success);
        assert!(c.classify_status(StatusCode::NOT_FOUND).is_failure());
        assert_eq!(c.classify_status(StatusCode::BAD_REQUEST), Outcome::Ignored);
        // moving back from ignored to failure works
        let c = c.failure(StatusCode::BAD_REQUEST);
        assert!(c.classify_status(StatusCode::BAD_REQUEST).is_failure());
    }

    #[test]
    fn a_watched_body_decides_a_success() {
        use std::sync::{Arc, Mutex};
        let c = HttpClassifier::new();
        let mut res = Response::new(());
        res.extensions_mut().insert(EosSlot::default());
        assert_eq!(Classify::<_, ()>::classify(&c, Ok(&res)), Outcome::Deferred);
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let recorder = OutcomeRecorder::new(move |o| *s.lock().unwrap() = Some(o));
        assert!(Classify::<_, ()>::defer(&c, &mut res, recorder).is_ok());
        res.extensions().get::<EosSlot>().unwrap().fire(EosEvent::Timeout);
        assert_eq!(*seen.lock().unwrap(), Some(Outcome::Failure(FailureKind::Timeout)));
        // A failure status needs no body.
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        assert!(Classify::<_, ()>::classify(&c, Ok(&res)).is_failure());
    }

    #[test]
    fn status_set_edges() {
        let mut s = StatusSet::empty();
        s.insert_range(0..=1200);
        assert!(s.contains(StatusCode::from_u16(100).unwrap()));
        assert!(s.contains(StatusCode::from_u16(999).unwrap()));
    }
}
