//! Classifying SOAP results for the breaker and retry layers.

use crate::classify::{Classify, FailureKind, Outcome};
use crate::BoxError;

use super::error::SoapError;
use super::fault::{FaultCode, SoapFault};

/// Failure kind of a `Server` / `Receiver` fault (and of faults with a non-standard code).
pub const SERVER_FAULT: FailureKind = FailureKind::Custom("soap server fault");

/// Classifies SOAP calls: `Server`/`Receiver` faults, transport errors and
/// unreadable responses are failures (they count towards a breaker and are
/// retried); `Client`/`Sender`, `MustUnderstand`, `VersionMismatch` and
/// `DataEncodingUnknown` faults say the *request* was wrong — sending it again
/// cannot help and the service is healthy — so they are a success by default
/// (or [`Outcome::Ignored`] with [`client_faults`](Self::client_faults)).
/// WS-Security faults (`wsse:FailedAuthentication`, `wsse:InvalidSecurity`,
/// … — in SOAP 1.1 the namespaced `faultcode`, in 1.2 a `Sender` subcode) are
/// client faults in both versions: the credentials were wrong, not the
/// service. Any other fault code outside the SOAP namespace counts as a
/// server fault.
///
/// Works on the [`SoapError`] of [`SoapClient`](super::SoapClient) and on a
/// [`BoxError`] holding a `SoapError` or a [`SoapFault`].
///
/// ```
/// use tower_mesh::classify::{Classify, Outcome};
/// use tower_mesh::soap::{SoapClassifier, SoapError, SoapFault};
///
/// let c = SoapClassifier::new();
/// let server: SoapError = SoapFault::server("database down").into();
/// let client: SoapError = SoapFault::client("no such account").into();
/// assert!(Classify::<(), _>::classify(&c, Err(&server)).is_failure());
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&client)), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SoapClassifier {
    client_faults: Outcome,
}

impl Default for SoapClassifier {
    fn default() -> Self {
        SoapClassifier { client_faults: Outcome::Success }
    }
}

impl SoapClassifier {
    /// Client faults are successes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The outcome of client-side faults (`Success` by default; `Ignored` to
    /// count them nowhere).
    pub fn client_faults(mut self, outcome: Outcome) -> Self {
        self.client_faults = outcome;
        self
    }

    /// The outcome of a fault.
    pub fn fault(&self, fault: &SoapFault) -> Outcome {
        match fault.code() {
            FaultCode::Other if fault.is_security() => self.client_faults,
            FaultCode::Server | FaultCode::Other => Outcome::Failure(SERVER_FAULT),
            FaultCode::Client
            | FaultCode::MustUnderstand
            | FaultCode::VersionMismatch
            | FaultCode::DataEncodingUnknown => self.client_faults,
        }
    }

    /// The outcome of an error.
    pub fn error(&self, err: &SoapError) -> Outcome {
        match err {
            SoapError::Fault(f) => self.fault(f),
            // Our own request could not be built: not the dependency's fault.
            SoapError::InvalidHeader(_) | SoapError::Serialize(_) => self.client_faults,
            _ => Outcome::Failure(FailureKind::Error),
        }
    }
}

impl<Res> Classify<Res, SoapError> for SoapClassifier {
    #[inline]
    fn classify(&self, result: Result<&Res, &SoapError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => self.error(e),
        }
    }
}

impl<Res> Classify<Res, BoxError> for SoapClassifier {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => {
                if let Some(e) = e.downcast_ref::<SoapError>() {
                    self.error(e)
                } else if let Some(f) = e.downcast_ref::<SoapFault>() {
                    self.fault(f)
                } else {
                    Outcome::Failure(FailureKind::Error)
                }
            }
        }
    }
}
