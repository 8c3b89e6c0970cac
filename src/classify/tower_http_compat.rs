use http::Response;
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos as _, ClassifyResponse, GrpcFailureClass, ServerErrorsFailureClass,
};

use super::grpc::code_from_i32;
use super::{Classify, EosEvent, EosSlot, FailureKind, Outcome, OutcomeRecorder};

/// Use any tower-http [`ClassifyResponse`] (e.g. `ServerErrorsAsFailures`,
/// `GrpcErrorsAsFailures`, `StatusInRangeAsFailures`) as a tower-mesh classifier.
///
/// Its failure class must convert into a [`FailureKind`]; conversions for
/// tower-http's own classes are provided. End-of-stream classifiers are driven
/// through [`ClassifyEosLayer`](super::ClassifyEosLayer).
///
/// ```
/// use tower_mesh::classify::{Classify, TowerHttpClassifier, Outcome};
/// use tower_http::classify::ServerErrorsAsFailures;
///
/// let c = TowerHttpClassifier::new(ServerErrorsAsFailures::new());
/// let res = http::Response::builder().status(500).body(()).unwrap();
/// assert!(Classify::<_, ()>::classify(&c, Ok(&res)).is_failure());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TowerHttpClassifier<C>(C);

impl<C> TowerHttpClassifier<C> {
    /// Wrap a tower-http classifier.
    pub fn new(classifier: C) -> Self {
        TowerHttpClassifier(classifier)
    }
}

impl From<ServerErrorsFailureClass> for FailureKind {
    fn from(c: ServerErrorsFailureClass) -> Self {
        match c {
            ServerErrorsFailureClass::StatusCode(s) => FailureKind::HttpStatus(s),
            ServerErrorsFailureClass::Error(_) => FailureKind::Error,
        }
    }
}

impl From<GrpcFailureClass> for FailureKind {
    fn from(c: GrpcFailureClass) -> Self {
        match c {
            GrpcFailureClass::Status(status) => FailureKind::Grpc(code_from_i32(status.code_raw())),
            _ => FailureKind::Error,
        }
    }
}

impl<C, B, E> Classify<Response<B>, E> for TowerHttpClassifier<C>
where
    C: ClassifyResponse + Clone,
    C::FailureClass: Into<FailureKind>,
    C::ClassifyEos: Send + 'static,
{
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure(FailureKind::Error),
            Ok(res) => match self.0.clone().classify_response(res) {
                ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
                ClassifiedResponse::Ready(Err(class)) => Outcome::Failure(class.into()),
                ClassifiedResponse::RequiresEos(_) => Outcome::Deferred,
            },
        }
    }

    fn defer(&self, response: &mut Response<B>, recorder: OutcomeRecorder) -> Result<(), OutcomeRecorder> {
        let Some(slot) = response.extensions().get::<EosSlot>().cloned() else {
            return Err(recorder);
        };
        let ClassifiedResponse::RequiresEos(eos) = self.0.clone().classify_response(response) else {
            return Err(recorder);
        };
        slot.watch(move |event| {
            let outcome = match event {
                EosEvent::End(trailers) => match eos.classify_eos(trailers) {
                    Ok(()) => Outcome::Success,
                    Err(class) => Outcome::Failure(class.into()),
                },
                EosEvent::Error => Outcome::Failure(FailureKind::Error),
                EosEvent::Timeout => Outcome::Failure(FailureKind::Timeout),
            };
            recorder.record(outcome);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_http::classify::{GrpcErrorsAsFailures, ServerErrorsAsFailures};

    #[test]
    fn server_errors() {
        let c = TowerHttpClassifier::new(ServerErrorsAsFailures::new());
        let ok = Response::builder().status(404).body(()).unwrap();
        let bad = Response::builder().status(502).body(()).unwrap();
        assert_eq!(Classify::<_, ()>::classify(&c, Ok(&ok)), Outcome::Success);
        assert_eq!(
            Classify::<_, ()>::classify(&c, Ok(&bad)),
            Outcome::Failure(FailureKind::HttpStatus(http::StatusCode::BAD_GATEWAY))
        );
    }

    #[test]
    fn grpc_requires_eos() {
        let c = TowerHttpClassifier::new(GrpcErrorsAsFailures::new());
        let res = Response::builder().status(200).body(()).unwrap();
        assert_eq!(Classify::<_, ()>::classify(&c, Ok(&res)), Outcome::Deferred);
        let res = Response::builder().header("grpc-status", "14").body(()).unwrap();
        assert_eq!(
            Classify::<_, ()>::classify(&c, Ok(&res)),
            Outcome::Failure(FailureKind::Grpc(crate::classify::GrpcCode::Unavailable))
        );
    }
}
