//! SOAP versions and their constants.

use std::fmt;

/// Namespace of the SOAP 1.1 envelope.
pub const SOAP11_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Namespace of the SOAP 1.2 envelope.
pub const SOAP12_ENV_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

/// A SOAP version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SoapVersion {
    /// SOAP 1.1: `text/xml` and a `SOAPAction` header.
    #[default]
    V11,
    /// SOAP 1.2: `application/soap+xml; action="…"`.
    V12,
}

impl SoapVersion {
    /// The namespace of this version's envelope.
    pub const fn namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_ENV_NS,
            SoapVersion::V12 => SOAP12_ENV_NS,
        }
    }

    /// The version whose envelope namespace is `ns`.
    pub fn from_namespace(ns: &str) -> Option<Self> {
        match ns {
            SOAP11_ENV_NS => Some(SoapVersion::V11),
            SOAP12_ENV_NS => Some(SoapVersion::V12),
            _ => None,
        }
    }

    /// The media type of a message of this version (without parameters).
    pub const fn media_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml",
            SoapVersion::V12 => "application/soap+xml",
        }
    }

    /// The version a `Content-Type` value announces: `application/soap+xml`
    /// is 1.2, anything else 1.1.
    pub fn from_content_type(value: &[u8]) -> Self {
        let media = value.split(|b| *b == b';').next().unwrap_or_default();
        if media.trim_ascii().eq_ignore_ascii_case(b"application/soap+xml") {
            SoapVersion::V12
        } else {
            SoapVersion::V11
        }
    }

    /// The value of `mustUnderstand` meaning "yes" in this version.
    pub(crate) const fn true_value(self) -> &'static str {
        match self {
            SoapVersion::V11 => "1",
            SoapVersion::V12 => "true",
        }
    }

    /// `"1.1"` or `"1.2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SoapVersion::V11 => "1.1",
            SoapVersion::V12 => "1.2",
        }
    }
}

impl fmt::Display for SoapVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SOAP {}", self.as_str())
    }
}
