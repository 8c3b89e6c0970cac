//! The chaos layer's errors.

use std::{error::Error, fmt, io};

/// An error the [`ChaosLayer`](super::ChaosLayer) injected instead of
/// calling the service: an aborted connection or another `io::Error`.
///
/// It stands for a failure of the dependency, so classifiers, retries and
/// breakers treat it as one (it is not a rejection).
#[derive(Debug)]
pub struct InjectedFault {
    error: io::Error,
}

impl InjectedFault {
    pub(crate) fn new(kind: io::ErrorKind) -> Self {
        InjectedFault { error: io::Error::new(kind, "fault injected by the chaos layer") }
    }

    /// The kind of I/O error injected (e.g. `ConnectionReset`).
    pub fn kind(&self) -> io::ErrorKind {
        self.error.kind()
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {}", self.error.kind())
    }
}

impl Error for InjectedFault {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

/// A chaos configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChaosConfigError {
    /// A probability outside `0.0..=1.0` (the field is named).
    Probability(&'static str),
    /// A delay distribution whose minimum is above its maximum.
    DelayRange,
    /// A delay configured with other than exactly one of `fixed`,
    /// `min` + `max`, or `mean`.
    DelayShape,
    /// An abort status outside `100..=599` or gRPC code outside `1..=16`.
    AbortCode(String),
    /// A header name or value in a request match that is not valid HTTP.
    Header(String),
    /// A method in a request match that is not valid HTTP.
    Method(String),
    /// Header-driven faults in the `production` preset, or without any
    /// allowed caller.
    HeaderFaults(&'static str),
}

impl fmt::Display for ChaosConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChaosConfigError::Probability(field) => {
                write!(f, "chaos: `{field}` must be a probability between 0.0 and 1.0")
            }
            ChaosConfigError::DelayRange => f.write_str("chaos: the delay's `min` is above its `max`"),
            ChaosConfigError::DelayShape => {
                f.write_str("chaos: give a delay exactly one of `fixed`, `min` and `max`, or `mean`")
            }
            ChaosConfigError::AbortCode(code) => {
                write!(f, "chaos: `{code}` is not an HTTP status (100-599), a gRPC code (1-16) or an I/O error kind")
            }
            ChaosConfigError::Header(h) => write!(f, "chaos: `{h}` is not a valid header name and value"),
            ChaosConfigError::Method(m) => write!(f, "chaos: `{m}` is not a valid HTTP method"),
            ChaosConfigError::HeaderFaults(why) => write!(f, "chaos: header-driven faults refused: {why}"),
        }
    }
}

impl Error for ChaosConfigError {}
