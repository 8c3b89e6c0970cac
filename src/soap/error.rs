//! The error type of the SOAP layers.

use std::fmt;

use http::StatusCode;

use super::fault::SoapFault;
use super::version::SoapVersion;
use crate::BoxError;

/// Why a SOAP call or message failed.
///
/// Malformed or hostile input always ends here, never in a panic.
#[derive(Debug)]
#[non_exhaustive]
pub enum SoapError {
    /// The service answered with a SOAP Fault.
    Fault(Box<SoapFault>),
    /// The inner (transport) service failed.
    Transport(BoxError),
    /// Reading the HTTP body failed.
    Body(BoxError),
    /// The message is larger than the configured limit (bytes).
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Elements are nested deeper than the configured limit.
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// An element has more namespace declarations in scope than the
    /// configured limit ([`SoapLimits::max_namespaces`](super::SoapLimits::max_namespaces)).
    TooManyNamespaces {
        /// The limit.
        limit: usize,
    },
    /// A start tag has more attributes than the configured limit
    /// ([`SoapLimits::max_attributes`](super::SoapLimits::max_attributes)).
    TooManyAttributes {
        /// The limit.
        limit: usize,
    },
    /// The Header has more blocks than the configured limit
    /// ([`SoapLimits::max_header_blocks`](super::SoapLimits::max_header_blocks)).
    TooManyHeaderBlocks {
        /// The limit.
        limit: usize,
    },
    /// The document has a DOCTYPE declaration; SOAP forbids them and they are
    /// never processed (no DTD, no entity expansion).
    DocType,
    /// The document refers to an entity that is not one of XML's predefined
    /// ones (`&lt;` …) or a character reference. Nothing is expanded.
    UndefinedEntity(String),
    /// The document is not well-formed XML.
    Malformed(XmlError),
    /// The message is neither UTF-8 nor UTF-16 (which needs a byte order
    /// mark or a leading `<`), or its bytes are not valid in its encoding.
    NotUtf8,
    /// The root element is not a SOAP `Envelope`.
    NotAnEnvelope,
    /// The root is an `Envelope` in a namespace that is neither SOAP 1.1 nor 1.2.
    VersionMismatch {
        /// The namespace found (empty if none).
        namespace: String,
    },
    /// The envelope is not shaped as SOAP requires (e.g. no `Body`).
    Structure(&'static str),
    /// A non-success HTTP response that carries no SOAP envelope.
    Status(StatusCode),
    /// The response is of another SOAP version than the request.
    WrongVersion {
        /// The version sent.
        expected: SoapVersion,
        /// The version received.
        found: SoapVersion,
    },
    /// A value could not be serialized to XML.
    Serialize(String),
    /// The Body could not be deserialized into the requested type.
    Deserialize(String),
    /// A value given for an HTTP header (SOAP action) is not valid there.
    InvalidHeader(&'static str),
    /// A WSDL URL could not be used (the reason never includes a password).
    InvalidUrl(&'static str),
    /// The document is not a WSDL 1.1 `definitions`.
    NotWsdl,
    /// A WSDL document (with its imports) is larger than the size limit.
    WsdlTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A document a WSDL imports (`wsdl:import`) could not be fetched or read.
    WsdlImport {
        /// The import's location, resolved, without credentials.
        location: String,
        /// Why.
        source: Box<SoapError>,
    },
}

impl SoapError {
    /// The fault, if the service answered with one.
    pub fn fault(&self) -> Option<&SoapFault> {
        match self {
            SoapError::Fault(f) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn xml(position: u64, err: quick_xml::Error) -> Self {
        SoapError::Malformed(XmlError { position, message: err.to_string() })
    }
}

impl fmt::Display for SoapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SoapError::Fault(fault) => fmt::Display::fmt(fault, f),
            SoapError::Transport(_) => f.write_str("SOAP transport failed"),
            SoapError::Body(_) => f.write_str("reading the SOAP message body failed"),
            SoapError::TooLarge { limit } => write!(f, "SOAP message larger than {limit} bytes"),
            SoapError::TooDeep { limit } => write!(f, "SOAP message nested deeper than {limit} elements"),
            SoapError::TooManyNamespaces { limit } => {
                write!(f, "SOAP message has more than {limit} namespace declarations in scope")
            }
            SoapError::TooManyAttributes { limit } => {
                write!(f, "SOAP message has a tag with more than {limit} attributes")
            }
            SoapError::TooManyHeaderBlocks { limit } => write!(f, "SOAP message has more than {limit} header blocks"),
            SoapError::DocType => f.write_str("SOAP message has a DOCTYPE declaration (refused)"),
            SoapError::UndefinedEntity(name) => write!(f, "SOAP message refers to undefined entity `{name}`"),
            SoapError::Malformed(e) => write!(f, "malformed XML: {e}"),
            SoapError::NotUtf8 => f.write_str("SOAP message is not valid UTF-8 or UTF-16"),
            SoapError::NotAnEnvelope => f.write_str("root element is not a SOAP Envelope"),
            SoapError::VersionMismatch { namespace } => {
                write!(f, "SOAP Envelope in unknown namespace `{namespace}`")
            }
            SoapError::Structure(what) => write!(f, "invalid SOAP envelope: {what}"),
            SoapError::Status(s) => write!(f, "HTTP {} without a SOAP envelope", s.as_u16()),
            SoapError::WrongVersion { expected, found } => write!(f, "expected a {expected} response, got {found}"),
            SoapError::Serialize(e) => write!(f, "serializing the SOAP body failed: {e}"),
            SoapError::Deserialize(e) => write!(f, "deserializing the SOAP body failed: {e}"),
            SoapError::InvalidHeader(what) => write!(f, "invalid {what} header value"),
            SoapError::InvalidUrl(why) => write!(f, "invalid WSDL URL: {why}"),
            SoapError::NotWsdl => f.write_str("not a WSDL 1.1 document"),
            SoapError::WsdlTooLarge { limit } => write!(f, "WSDL document larger than {limit} bytes"),
            SoapError::WsdlImport { location, source } => {
                write!(f, "WSDL import `{location}` could not be read: {source}")
            }
        }
    }
}

impl std::error::Error for SoapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SoapError::Fault(f) => Some(&**f),
            SoapError::Transport(e) | SoapError::Body(e) => Some(&**e),
            SoapError::Malformed(e) => Some(e),
            SoapError::WsdlImport { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl From<SoapFault> for SoapError {
    fn from(f: SoapFault) -> Self {
        SoapError::Fault(Box::new(f))
    }
}

/// A well-formedness error, with the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlError {
    position: u64,
    message: String,
}

impl XmlError {
    /// Byte offset in the message.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.position)
    }
}

impl std::error::Error for XmlError {}
