//! Typed SOAP faults.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;

use super::security::WSSE_NS;
use super::version::SoapVersion;
use super::write::{escape_into, push_str};

/// An XML name with its namespace, e.g. `{http://example.com/stock}GetLastTradePrice`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// The namespace, if the name is in one.
    pub namespace: Option<String>,
    /// The local part.
    pub local: String,
}

impl QualifiedName {
    /// A name in `namespace`.
    pub fn new(namespace: impl Into<String>, local: impl Into<String>) -> Self {
        QualifiedName { namespace: Some(namespace.into()), local: local.into() }
    }

    /// A name in no namespace.
    pub fn local(local: impl Into<String>) -> Self {
        QualifiedName { namespace: None, local: local.into() }
    }

    /// Whether this is `local` in `namespace`.
    pub fn is(&self, namespace: &str, local: &str) -> bool {
        self.local == local && self.namespace.as_deref() == Some(namespace)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{{{ns}}}{}", self.local),
            None => f.write_str(&self.local),
        }
    }
}

/// The class of a fault: the standard fault codes of SOAP 1.1 and 1.2.
///
/// SOAP 1.1 `Client` and SOAP 1.2 `Sender` are both [`FaultCode::Client`];
/// `Server` and `Receiver` are both [`FaultCode::Server`]. SOAP 1.1 dotted
/// codes such as `Client.Authentication` are classed by their first part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// The envelope was of a version the receiver does not speak.
    VersionMismatch,
    /// A `mustUnderstand` header block was not understood.
    MustUnderstand,
    /// The encoding of a header or body was not understood (SOAP 1.2).
    DataEncodingUnknown,
    /// The request was wrong: sending it again will not help (1.1 `Client`, 1.2 `Sender`).
    Client,
    /// The receiver failed: the same request may succeed later (1.1 `Server`, 1.2 `Receiver`).
    Server,
    /// A code outside the SOAP envelope namespace.
    Other,
}

impl FaultCode {
    /// The local name of this code in `version` (`Other` has none and gives `Server`/`Receiver`).
    pub const fn local_name(self, version: SoapVersion) -> &'static str {
        match (self, version) {
            (FaultCode::VersionMismatch, _) => "VersionMismatch",
            (FaultCode::MustUnderstand, _) => "MustUnderstand",
            (FaultCode::DataEncodingUnknown, _) => "DataEncodingUnknown",
            (FaultCode::Client, SoapVersion::V11) => "Client",
            (FaultCode::Client, SoapVersion::V12) => "Sender",
            (FaultCode::Server | FaultCode::Other, SoapVersion::V11) => "Server",
            (FaultCode::Server | FaultCode::Other, SoapVersion::V12) => "Receiver",
        }
    }

    /// The code with this local name in the envelope namespace (either version's spelling).
    pub(crate) fn from_local(local: &str) -> Self {
        match local {
            "VersionMismatch" => FaultCode::VersionMismatch,
            "MustUnderstand" => FaultCode::MustUnderstand,
            "DataEncodingUnknown" => FaultCode::DataEncodingUnknown,
            "Client" | "Sender" => FaultCode::Client,
            "Server" | "Receiver" => FaultCode::Server,
            _ => FaultCode::Other,
        }
    }
}

/// The fault codes of WS-Security (SOAP Message Security 1.0, section 12), in
/// the [`WSSE_NS`] namespace. They all say the *request* was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WsseFault {
    /// `wsse:UnsupportedSecurityToken`: an unsupported token was provided.
    UnsupportedSecurityToken,
    /// `wsse:UnsupportedAlgorithm`: an unsupported signature or encryption algorithm was used.
    UnsupportedAlgorithm,
    /// `wsse:InvalidSecurity`: an error was discovered processing the `wsse:Security` header.
    InvalidSecurity,
    /// `wsse:InvalidSecurityToken`: an invalid security token was provided.
    InvalidSecurityToken,
    /// `wsse:FailedAuthentication`: the security token could not be authenticated or authorized.
    FailedAuthentication,
    /// `wsse:FailedCheck`: the signature or decryption was invalid.
    FailedCheck,
    /// `wsse:SecurityTokenUnavailable`: referenced security token could not be retrieved.
    SecurityTokenUnavailable,
    /// `wsse:MessageExpired`: the message has expired.
    MessageExpired,
}

impl WsseFault {
    /// The code's local name, e.g. `FailedAuthentication`.
    pub const fn local_name(self) -> &'static str {
        match self {
            WsseFault::UnsupportedSecurityToken => "UnsupportedSecurityToken",
            WsseFault::UnsupportedAlgorithm => "UnsupportedAlgorithm",
            WsseFault::InvalidSecurity => "InvalidSecurity",
            WsseFault::InvalidSecurityToken => "InvalidSecurityToken",
            WsseFault::FailedAuthentication => "FailedAuthentication",
            WsseFault::FailedCheck => "FailedCheck",
            WsseFault::SecurityTokenUnavailable => "SecurityTokenUnavailable",
            WsseFault::MessageExpired => "MessageExpired",
        }
    }

    /// The fault string the specification gives for the code.
    pub const fn reason(self) -> &'static str {
        match self {
            WsseFault::UnsupportedSecurityToken => "An unsupported token was provided",
            WsseFault::UnsupportedAlgorithm => "An unsupported signature or encryption algorithm was used",
            WsseFault::InvalidSecurity => "An error was discovered processing the <wsse:Security> header",
            WsseFault::InvalidSecurityToken => "An invalid security token was provided",
            WsseFault::FailedAuthentication => "The security token could not be authenticated or authorized",
            WsseFault::FailedCheck => "The signature or decryption was invalid",
            WsseFault::SecurityTokenUnavailable => "Referenced security token could not be retrieved",
            WsseFault::MessageExpired => "The message has expired",
        }
    }

    /// The code as a qualified name in [`WSSE_NS`].
    pub fn name(self) -> QualifiedName {
        QualifiedName::new(WSSE_NS, self.local_name())
    }
}

/// A SOAP Fault: the error a SOAP service answers with, SOAP 1.1
/// (`faultcode`, `faultstring`, `faultactor`, `detail`) or 1.2 (`Code/Value`,
/// `Subcode`, `Reason/Text`, `Node`, `Role`, `Detail`).
///
/// The client layer returns it as [`SoapError::Fault`](super::SoapError::Fault);
/// a server handler returns it (as its error) to answer with this fault.
///
/// ```
/// use tower_mesh::soap::{SoapFault, FaultCode};
///
/// let fault = SoapFault::client("account number is not valid").with_actor("urn:billing");
/// assert!(fault.is_client() && !fault.is_server());
/// assert_eq!(fault.code(), FaultCode::Client);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoapFault {
    pub(crate) version: SoapVersion,
    pub(crate) code: FaultCode,
    pub(crate) code_name: QualifiedName,
    pub(crate) subcodes: Vec<QualifiedName>,
    pub(crate) reason: String,
    pub(crate) actor: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) detail: Option<Bytes>,
    pub(crate) http_status: Option<StatusCode>,
}

impl SoapFault {
    /// A fault with a standard `code` and a human-readable `reason`.
    pub fn new(code: FaultCode, reason: impl Into<String>) -> Self {
        SoapFault {
            version: SoapVersion::V11,
            code,
            code_name: QualifiedName::new(SoapVersion::V11.namespace(), code.local_name(SoapVersion::V11)),
            subcodes: Vec::new(),
            reason: reason.into(),
            actor: None,
            node: None,
            detail: None,
            http_status: None,
        }
    }

    /// A `Client` (1.2: `Sender`) fault: the request was wrong.
    pub fn client(reason: impl Into<String>) -> Self {
        Self::new(FaultCode::Client, reason)
    }

    /// A `Server` (1.2: `Receiver`) fault: the service failed.
    pub fn server(reason: impl Into<String>) -> Self {
        Self::new(FaultCode::Server, reason)
    }

    /// A WS-Security fault: a `Client` (1.2: `Sender`) fault with the
    /// `wsse` code as its subcode and the specification's reason. Written in
    /// SOAP 1.1 as `<faultcode>wsse:FailedAuthentication</faultcode>`, in 1.2
    /// as `soap:Sender` with the subcode `wsse:FailedAuthentication`.
    ///
    /// ```
    /// use tower_mesh::soap::{SoapFault, WsseFault};
    ///
    /// let fault = SoapFault::wsse(WsseFault::FailedAuthentication);
    /// assert!(fault.is_client() && fault.is_security());
    /// assert_eq!(fault.reason(), "The security token could not be authenticated or authorized");
    /// ```
    pub fn wsse(code: WsseFault) -> Self {
        Self::client(code.reason()).with_subcode(code.name())
    }

    /// Add an application subcode. SOAP 1.2 writes it as `Subcode/Value`
    /// with its namespace. SOAP 1.1 has no subcodes and one name per
    /// fault: a subcode is appended to `faultcode` with a dot
    /// (`soap:Client.Authentication`, its namespace dropped, so receivers
    /// still see the class), except a WS-Security code ([`WSSE_NS`]), which
    /// becomes the `faultcode` itself with its namespace
    /// (`wsse:FailedAuthentication`, as WS-Security specifies; receivers
    /// class it as a client fault), later subcodes appended to it.
    pub fn with_subcode(mut self, code: QualifiedName) -> Self {
        self.subcodes.push(code);
        self
    }

    /// Set the actor (1.1 `faultactor`, 1.2 `Role`).
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Set the detail: a raw XML fragment, written as is inside `detail`/`Detail`.
    /// It must be well-formed XML with its namespaces declared.
    pub fn with_detail(mut self, xml: impl Into<Bytes>) -> Self {
        self.detail = Some(xml.into());
        self
    }

    /// The class of the fault.
    pub fn code(&self) -> FaultCode {
        self.code
    }

    /// The code exactly as sent, resolved to its namespace (e.g. `Client.Authentication`
    /// in the SOAP 1.1 namespace, or a custom code).
    pub fn code_name(&self) -> &QualifiedName {
        &self.code_name
    }

    /// SOAP 1.2 subcodes, outermost first (for SOAP 1.1, the dotted parts of `faultcode`).
    pub fn subcodes(&self) -> &[QualifiedName] {
        &self.subcodes
    }

    /// `faultstring` / the first `Reason/Text`.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// `faultactor` / `Role`.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// `Node` (SOAP 1.2 only).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The inner XML of `detail`/`Detail` as standalone XML: a slice of the
    /// response bytes, or — when it uses namespace declarations of the
    /// elements around it (`Envelope`, `Body`, `Fault`, `detail`) — a copy
    /// with them added to each of its top-level elements, so that any
    /// namespace-aware parser reads it on its own.
    pub fn detail(&self) -> Option<&Bytes> {
        self.detail.as_ref()
    }

    /// The SOAP version of the message the fault came in.
    pub fn version(&self) -> SoapVersion {
        self.version
    }

    /// The HTTP status of the response that carried the fault (usually `500`).
    pub fn http_status(&self) -> Option<StatusCode> {
        self.http_status
    }

    /// A `Client` / `Sender` fault: the caller's request was at fault. A
    /// WS-Security fault (see [`is_security`](Self::is_security)) is one in
    /// both versions, also as the namespaced SOAP 1.1 `faultcode`
    /// `wsse:FailedAuthentication` (whose [`code`](Self::code) is
    /// [`FaultCode::Other`]).
    pub fn is_client(&self) -> bool {
        self.code == FaultCode::Client || (self.code == FaultCode::Other && self.is_security())
    }

    /// The `code` label of the fault metrics: the class's local name in
    /// `version` (a SOAP 1.1 WS-Security code counts as `Client`; never a
    /// name taken from the message, which would make labels unbounded).
    pub(crate) fn metric_code(&self, version: SoapVersion) -> &'static str {
        if self.code == FaultCode::Other && self.is_security() {
            FaultCode::Client.local_name(version)
        } else {
            self.code.local_name(version)
        }
    }

    /// A WS-Security fault: its code or a subcode is in the [`WSSE_NS`]
    /// namespace (`wsse:FailedAuthentication`, `wsse:InvalidSecurity`, …).
    pub fn is_security(&self) -> bool {
        self.code_name.namespace.as_deref() == Some(WSSE_NS)
            || self.subcodes.iter().any(|s| s.namespace.as_deref() == Some(WSSE_NS))
    }

    /// A `Server` / `Receiver` fault: the service failed to process a valid request.
    pub fn is_server(&self) -> bool {
        self.code == FaultCode::Server
    }

    /// A `VersionMismatch` fault.
    pub fn is_version_mismatch(&self) -> bool {
        self.code == FaultCode::VersionMismatch
    }

    /// A `MustUnderstand` fault.
    pub fn is_must_understand(&self) -> bool {
        self.code == FaultCode::MustUnderstand
    }

    /// A response that makes [`SoapServerLayer`](super::SoapServerLayer)
    /// answer with this fault (in the request's SOAP version): for handlers
    /// that cannot return an error, such as axum's.
    ///
    /// ```
    /// use tower_mesh::soap::SoapFault;
    ///
    /// let res: http::Response<String> = SoapFault::client("no such account").into_response();
    /// assert_eq!(res.status(), 500);
    /// assert!(res.extensions().get::<SoapFault>().is_some());
    /// ```
    pub fn into_response<B: Default>(self) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        res.extensions_mut().insert(self);
        res
    }

    /// The HTTP status a server answers this fault with in `version`: SOAP 1.2
    /// sends `400` for `Sender` faults, everything else is `500`.
    pub fn status_for(&self, version: SoapVersion) -> StatusCode {
        match (version, self.code) {
            (SoapVersion::V12, FaultCode::Client) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Write the `Fault` element for `version`, with `prefix` bound to the
    /// envelope namespace by an enclosing element.
    pub(crate) fn write(&self, version: SoapVersion, prefix: &str, out: &mut Vec<u8>) {
        prefixed_tag(out, prefix, "Fault", false);
        match version {
            SoapVersion::V11 => self.write_v11(prefix, out),
            SoapVersion::V12 => self.write_v12(prefix, out),
        }
        prefixed_tag(out, prefix, "Fault", true);
    }

    /// The content of a SOAP 1.1 `Fault`.
    fn write_v11(&self, prefix: &str, out: &mut Vec<u8>) {
        let code = self.code.local_name(SoapVersion::V11);
        let namespaced = self.subcodes.iter().position(|s| s.namespace.as_deref() == Some(WSSE_NS));
        let dotted = match namespaced {
            Some(i) => {
                let sub = &self.subcodes[i];
                push_str(out, "<faultcode xmlns:sc=\"");
                escape_into(sub.namespace.as_deref().unwrap_or_default(), out);
                push_str(out, "\">sc:");
                escape_into(&sub.local, out);
                &self.subcodes[i + 1..]
            }
            None => {
                push_str(out, "<faultcode>");
                push_str(out, prefix);
                push_str(out, ":");
                push_str(out, code);
                &self.subcodes[..]
            }
        };
        for sub in dotted {
            push_str(out, ".");
            escape_into(&sub.local, out);
        }
        push_str(out, "</faultcode><faultstring>");
        escape_into(&self.reason, out);
        push_str(out, "</faultstring>");
        if let Some(actor) = &self.actor {
            push_str(out, "<faultactor>");
            escape_into(actor, out);
            push_str(out, "</faultactor>");
        }
        if let Some(detail) = &self.detail {
            push_str(out, "<detail>");
            out.extend_from_slice(detail);
            push_str(out, "</detail>");
        }
    }

    /// The content of a SOAP 1.2 `Fault`.
    fn write_v12(&self, prefix: &str, out: &mut Vec<u8>) {
        let code = self.code.local_name(SoapVersion::V12);
        let open = |out: &mut Vec<u8>, name: &str| prefixed_tag(out, prefix, name, false);
        let close = |out: &mut Vec<u8>, name: &str| prefixed_tag(out, prefix, name, true);
        open(out, "Code");
        open(out, "Value");
        push_str(out, prefix);
        push_str(out, ":");
        push_str(out, code);
        close(out, "Value");
        for sub in &self.subcodes {
            open(out, "Subcode");
            push_str(out, "<");
            push_str(out, prefix);
            push_str(out, ":Value");
            match &sub.namespace {
                Some(ns) => {
                    push_str(out, " xmlns:sc=\"");
                    escape_into(ns, out);
                    push_str(out, "\">sc:");
                }
                None => push_str(out, ">"),
            }
            escape_into(&sub.local, out);
            close(out, "Value");
        }
        for _ in &self.subcodes {
            close(out, "Subcode");
        }
        close(out, "Code");
        open(out, "Reason");
        push_str(out, "<");
        push_str(out, prefix);
        push_str(out, ":Text xml:lang=\"en\">");
        escape_into(&self.reason, out);
        close(out, "Text");
        close(out, "Reason");
        if let Some(node) = &self.node {
            open(out, "Node");
            escape_into(node, out);
            close(out, "Node");
        }
        if let Some(actor) = &self.actor {
            open(out, "Role");
            escape_into(actor, out);
            close(out, "Role");
        }
        if let Some(detail) = &self.detail {
            open(out, "Detail");
            out.extend_from_slice(detail);
            close(out, "Detail");
        }
    }
}

/// `<prefix:name>`, or `</prefix:name>` when `end`.
fn prefixed_tag(out: &mut Vec<u8>, prefix: &str, name: &str, end: bool) {
    push_str(out, if end { "</" } else { "<" });
    push_str(out, prefix);
    push_str(out, ":");
    push_str(out, name);
    push_str(out, ">");
}

impl fmt::Display for SoapFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            // A namespaced code (SOAP 1.1 `wsse:FailedAuthentication`): its own name.
            FaultCode::Other => write!(f, "SOAP fault {}", self.code_name.local)?,
            code => write!(f, "SOAP fault {}", code.local_name(self.version))?,
        }
        for sub in &self.subcodes {
            write!(f, ".{}", sub.local)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for SoapFault {}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::classify::{Classify, Outcome};
    use crate::soap::{Envelope, EnvelopeBody, SoapClassifier, SoapError, SoapLimits, SOAP11_ENV_NS};

    fn parsed(msg: &str) -> SoapFault {
        let env = Envelope::parse(Bytes::copy_from_slice(msg.as_bytes()), &SoapLimits::default()).unwrap();
        env.fault().cloned().unwrap()
    }

    fn outcome(fault: &SoapFault) -> Outcome {
        let err = SoapError::from(fault.clone());
        Classify::<(), SoapError>::classify(&SoapClassifier::new(), Err(&err))
    }

    /// A SOAP 1.1 `wsse:FailedAuthentication` (as WSS4J, .NET and spyne write
    /// it) was `FaultCode::Other`, a server failure: retried and counted by
    /// the breaker. It is a client fault, like its SOAP 1.2 form.
    #[test]
    fn wsse_faults_are_client_faults_in_both_versions() {
        let v11 = parsed(&format!(
            "<s:Envelope xmlns:s=\"{SOAP11_ENV_NS}\"><s:Body><s:Fault>\
             <faultcode xmlns:wsse=\"{WSSE_NS}\">wsse:FailedAuthentication</faultcode>\
             <faultstring>The security token could not be authenticated or authorized</faultstring>\
             </s:Fault></s:Body></s:Envelope>"
        ));
        assert_eq!(v11.code_name(), &QualifiedName::new(WSSE_NS, "FailedAuthentication"));
        assert!(v11.is_security() && v11.is_client() && !v11.is_server());
        assert_eq!(outcome(&v11), Outcome::Success);
        assert_eq!(
            v11.to_string(),
            "SOAP fault FailedAuthentication: The security token could not be authenticated or authorized"
        );

        let v12 = parsed(&format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body><s:Fault>\
             <s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value xmlns:wsse=\"{WSSE_NS}\">wsse:InvalidSecurity</s:Value></s:Subcode></s:Code>\
             <s:Reason><s:Text xml:lang=\"en\">bad header</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"
        ));
        assert!(v12.is_security() && v12.is_client());
        assert_eq!(outcome(&v12), Outcome::Success);

        // Other namespaced codes still count as server faults.
        let other = parsed(&format!(
            "<s:Envelope xmlns:s=\"{SOAP11_ENV_NS}\"><s:Body><s:Fault>\
             <faultcode xmlns:x=\"urn:x\">x:Overloaded</faultcode><faultstring>busy</faultstring>\
             </s:Fault></s:Body></s:Envelope>"
        ));
        assert!(!other.is_security() && !other.is_client());
        assert!(outcome(&other).is_failure());
    }

    /// `with_subcode` in SOAP 1.1 wrote `soap:Client.FailedAuthentication`,
    /// dropping the namespace: a WS-Security subcode is now the `faultcode`,
    /// with its namespace, and reads back as the same WS-Security fault.
    #[test]
    fn namespaced_subcodes_keep_their_namespace_when_written() {
        let fault = SoapFault::wsse(WsseFault::FailedAuthentication);
        let v11 = EnvelopeBody::fault(SoapVersion::V11, &fault).to_bytes();
        let text = std::str::from_utf8(&v11).unwrap();
        assert!(!text.contains("Client.FailedAuthentication"), "{text}");
        assert!(
            text.contains(&format!("<faultcode xmlns:sc=\"{WSSE_NS}\">sc:FailedAuthentication</faultcode>")),
            "{text}"
        );
        let back = parsed(text);
        assert_eq!(back.code_name(), &WsseFault::FailedAuthentication.name());
        assert!(back.is_client() && back.is_security());

        let v12 = EnvelopeBody::fault(SoapVersion::V12, &fault).to_bytes();
        let back = parsed(std::str::from_utf8(&v12).unwrap());
        assert_eq!(back.code(), FaultCode::Client);
        assert_eq!(back.subcodes(), &[WsseFault::FailedAuthentication.name()]);
        assert_eq!(fault.status_for(SoapVersion::V12), StatusCode::BAD_REQUEST);

        // Other subcodes stay dotted after the class, which receivers need.
        let dotted = SoapFault::client("no")
            .with_subcode(QualifiedName::local("Authentication"))
            .with_subcode(QualifiedName::new("urn:app", "Expired"));
        let text = EnvelopeBody::fault(SoapVersion::V11, &dotted).to_bytes();
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains("<faultcode>soap:Client.Authentication.Expired</faultcode>"), "{text}");
        assert!(parsed(text).is_client());
    }
}
