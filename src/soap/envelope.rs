//! Parsing envelopes safely: no DTD, no entity expansion, bounded size and depth.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use quick_xml::events::{BytesRef, BytesStart};
use quick_xml::Reader;

use super::error::SoapError;
use super::fault::{QualifiedName, SoapFault};
use super::version::SoapVersion;

mod limits;
mod namespaces;
mod parser;
mod standalone;

pub use self::limits::{
    SoapLimits, DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_BODY, DEFAULT_MAX_DEPTH, DEFAULT_MAX_HEADER_BLOCKS,
    DEFAULT_MAX_NAMESPACES,
};
use self::namespaces::{for_each_attribute, rebase, Bindings};
use self::parser::Parser;
use self::standalone::standalone;

/// One header block of a received envelope.
///
/// Its `Debug` output leaves out the content of a `Security` block
/// (WS-Security: passwords, tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    name: QualifiedName,
    must_understand: bool,
    role: Option<String>,
    raw: Bytes,
}

impl HeaderBlock {
    /// The block's element name.
    pub fn name(&self) -> &QualifiedName {
        &self.name
    }

    /// Whether it is marked `mustUnderstand="1"` / `"true"`.
    pub fn must_understand(&self) -> bool {
        self.must_understand
    }

    /// Its `actor` (1.1) or `role` (1.2) attribute.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// The whole element as standalone XML: a slice of the message, or —
    /// when it uses namespace declarations of the `Envelope` or `Header`
    /// (a prefix written before a `:` in it, or the default namespace) that
    /// it does not make itself — a copy with them added to its start tag, so
    /// that any namespace-aware parser reads it on its own.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether the block is meant for the ultimate receiver: no role, or the
    /// `next` / `ultimateReceiver` roles.
    pub fn targets_ultimate_receiver(&self) -> bool {
        match self.role.as_deref() {
            None | Some("") => true,
            Some(r) => {
                r == "http://schemas.xmlsoap.org/soap/actor/next"
                    || r == "http://www.w3.org/2003/05/soap-envelope/role/next"
                    || r == "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver"
            }
        }
    }
}

/// A parsed SOAP envelope. It keeps the message bytes; the Body content and
/// the header blocks are slices of them (no copy).
///
/// ```
/// use bytes::Bytes;
/// use tower_mesh::soap::{Envelope, SoapLimits, SoapVersion};
///
/// let msg = Bytes::from_static(br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">
///   <s:Body><m:GetPriceResponse xmlns:m="urn:shop"><m:Price>1.90</m:Price></m:GetPriceResponse></s:Body>
/// </s:Envelope>"#);
/// let env = Envelope::parse(msg, &SoapLimits::default()).unwrap();
/// assert_eq!(env.version(), SoapVersion::V12);
/// assert_eq!(env.body_element().unwrap().local, "GetPriceResponse");
/// assert!(env.body().starts_with(b"<m:GetPriceResponse"));
/// ```
#[derive(Clone)]
pub struct Envelope {
    message: Bytes,
    version: SoapVersion,
    headers: Vec<HeaderBlock>,
    body: Range<usize>,
    /// Where the first Body element's name is; made a [`QualifiedName`]
    /// (which allocates) only when asked for.
    first: Option<FirstElement>,
    first_name: OnceLock<QualifiedName>,
    fault: Option<Box<SoapFault>>,
    /// The contents (name and attributes) of the `Envelope` and `Body`
    /// start tags: the namespace declarations in scope in the Body, read
    /// again by [`standalone_body`](Envelope::standalone_body).
    scope: [Range<usize>; 2],
    standalone_body: OnceLock<Bytes>,
    /// The size limit the message was read with: also the most the
    /// standalone Body may add.
    limit: usize,
}

impl fmt::Debug for HeaderBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderBlock")
            .field("name", &self.name)
            .field("must_understand", &self.must_understand)
            .field("role", &self.role)
            .field("raw", &super::write::Redacted(&self.raw))
            .finish()
    }
}

/// Shows the header blocks (a `Security` block's content left out) and the
/// Body, never the whole message.
impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("len", &self.message.len())
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body", &super::write::Redacted(&self.body()))
            .field("first", &self.body_element())
            .field("fault", &self.fault)
            .finish()
    }
}

/// The first Body element's name: namespace and local part.
#[derive(Clone, Debug)]
struct FirstElement {
    namespace: Option<Text>,
    local: Text,
}

/// A string found while parsing: a range of the message, or a copy when it is
/// not one (a namespace declared with references, or the `xml` namespace).
#[derive(Clone, Debug)]
enum Text {
    Message(Range<usize>),
    Owned(Box<str>),
}

impl Text {
    fn new(text: &str, s: &str) -> Self {
        match rebase(text, s) {
            Some(slice) => {
                let start = slice.as_ptr() as usize - text.as_ptr() as usize;
                Text::Message(start..start + slice.len())
            }
            None => Text::Owned(s.into()),
        }
    }

    fn get<'m>(&'m self, message: &'m [u8]) -> &'m str {
        match self {
            // The message is UTF-8 and the range a slice of it as `str`.
            Text::Message(range) => std::str::from_utf8(&message[range.clone()]).unwrap_or_default(),
            Text::Owned(s) => s,
        }
    }
}

impl Envelope {
    /// Parse and check `message`.
    ///
    /// Reads UTF-8, with or without a byte order mark, and UTF-16 (LE or BE,
    /// with a byte order mark or starting with `<`), which is transcoded to
    /// UTF-8 first. Refuses DOCTYPEs, entity references other than XML's five
    /// predefined ones and character references, other encodings and invalid
    /// bytes, and messages over any of the [`SoapLimits`] (size, depth,
    /// namespace declarations in scope, attributes per start tag, header
    /// blocks) with a typed error; within them the time taken is linear in
    /// the message's size. Checks that the root is a SOAP 1.1 or 1.2
    /// `Envelope` with a `Body` (after an optional `Header`). A Fault in the
    /// Body is parsed (see [`fault`](Self::fault)) but is not an error here.
    pub fn parse(message: Bytes, limits: &SoapLimits) -> Result<Envelope, SoapError> {
        if message.len() > limits.max_body {
            return Err(SoapError::TooLarge { limit: limits.max_body });
        }
        let message = match utf8_bytes(&message)? {
            Cow::Borrowed(b) => message.slice_ref(b),
            Cow::Owned(v) => Bytes::from(v),
        };
        let text = std::str::from_utf8(&message).map_err(|_| SoapError::NotUtf8)?;
        let parsed = Parser {
            reader: Reader::from_str(text),
            limits,
            depth: 0,
            bindings: Bindings::new(),
            text,
            budget: limits.max_body,
        }
        .envelope(&message)?;
        Ok(parsed)
    }

    /// The SOAP version (from the envelope namespace).
    pub fn version(&self) -> SoapVersion {
        self.version
    }

    /// The header blocks, in order.
    pub fn headers(&self) -> &[HeaderBlock] {
        &self.headers
    }

    /// The Body content: everything between `<Body>` and `</Body>`, a slice of
    /// the message (no copy). Namespace prefixes declared on the `Envelope` or
    /// `Body` are not repeated inside it: see
    /// [`standalone_body`](Self::standalone_body) for a fragment that carries them.
    pub fn body(&self) -> Bytes {
        self.message.slice(self.body.clone())
    }

    /// The Body content as text.
    pub fn body_str(&self) -> &str {
        // The whole message was checked to be UTF-8 and the range lies on tag boundaries.
        std::str::from_utf8(&self.message[self.body.clone()]).unwrap_or_default()
    }

    /// The Body content as standalone XML: [`body`](Self::body) with the
    /// namespace declarations it may use from the `Envelope` and `Body`
    /// start tags — each prefix written before a `:` in it (element and
    /// attribute names, QNames in values such as `xsi:type`), and the
    /// default namespace — added to each of its top-level elements that does
    /// not make them itself, so that any namespace-aware parser reads it on
    /// its own. The same slice as [`body`](Self::body) when nothing is to be
    /// added, else a copy, made on the first call (the plain slice if the
    /// declarations to add would exceed the size limit).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_mesh::soap::{Envelope, SoapLimits};
    ///
    /// let msg = Bytes::from_static(br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:m="urn:shop">
    ///   <s:Body><m:Price>1.90</m:Price></s:Body>
    /// </s:Envelope>"#);
    /// let env = Envelope::parse(msg, &SoapLimits::default()).unwrap();
    /// assert_eq!(&env.body()[..], b"<m:Price>1.90</m:Price>");
    /// assert_eq!(&env.standalone_body()[..], br#"<m:Price xmlns:m="urn:shop">1.90</m:Price>"#);
    /// ```
    pub fn standalone_body(&self) -> &Bytes {
        self.standalone_body.get_or_init(|| match self.make_standalone_body() {
            Some(made) => Bytes::from(made),
            None => self.body(),
        })
    }

    /// The standalone Body, if declarations are to be added.
    fn make_standalone_body(&self) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(&self.message).ok()?;
        // The declarations of the Envelope, then the Body's (overriding them).
        let mut inherited: Vec<(&str, String)> = Vec::new();
        for tag in &self.scope {
            let content = text.get(tag.clone())?;
            let name_len = content.bytes().position(|b| b.is_ascii_whitespace()).unwrap_or(content.len());
            let e = BytesStart::from_content(content, name_len);
            for_each_attribute(&e, 0, usize::MAX, |attr| {
                let prefix = match attr.key.0 {
                    "xmlns" => "",
                    key => match key.strip_prefix("xmlns:") {
                        Some(p) => p,
                        None => return Ok(()),
                    },
                };
                let prefix = rebase(text, prefix).ok_or(SoapError::NotAnEnvelope)?;
                let value = attr
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|err| SoapError::xml(0, err))?
                    .into_owned();
                inherited.retain(|(p, _)| *p != prefix);
                inherited.push((prefix, value));
                Ok(())
            })
            .ok()?;
        }
        inherited.retain(|(_, ns)| !ns.is_empty());
        let mut budget = self.limit;
        standalone(self.body_str(), &inherited, &mut budget, self.limit).ok().flatten()
    }

    /// The name of the first element in the Body (the operation or its response).
    pub fn body_element(&self) -> Option<&QualifiedName> {
        let first = self.first.as_ref()?;
        Some(self.first_name.get_or_init(|| QualifiedName {
            namespace: first.namespace.as_ref().map(|ns| ns.get(&self.message).to_owned()),
            local: first.local.get(&self.message).to_owned(),
        }))
    }

    /// The Fault in the Body, if there is one.
    pub fn fault(&self) -> Option<&SoapFault> {
        self.fault.as_deref()
    }

    /// The Fault as an error, or the envelope.
    pub fn into_result(self) -> Result<Envelope, SoapError> {
        match self.fault {
            Some(f) => Err(SoapError::Fault(f)),
            None => Ok(self),
        }
    }

    /// The whole message as parsed: UTF-8, without a byte order mark (a
    /// UTF-16 message is transcoded; its XML declaration is left as sent).
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// Deserialize the first Body element into `T` with quick-xml's serde
    /// support (element and attribute names are matched without their
    /// namespace prefixes; a field named `$value` or `$text` gets content).
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, SoapError> {
        let body = self.body_str().trim();
        quick_xml::de::from_str(body).map_err(|e| SoapError::Deserialize(e.to_string()))
    }
}

/// Whether an element `local` inside the Fault elements `path` is one a
/// Fault of `version` is made of (the others are skipped).
fn fault_part(version: SoapVersion, path: &[&str], local: &str) -> bool {
    match version {
        SoapVersion::V11 => path.is_empty() && matches!(local, "faultcode" | "faultstring" | "faultactor"),
        SoapVersion::V12 => match (path, local) {
            ([], "Code" | "Reason" | "Node" | "Role") => true,
            (["Reason"], "Text") => true,
            (["Code", subcodes @ ..], "Value" | "Subcode") => subcodes.iter().all(|s| *s == "Subcode"),
            _ => false,
        },
    }
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// The character a predefined entity or character reference stands for.
pub(crate) fn resolve_ref(r: &BytesRef<'_>) -> Result<char, SoapError> {
    match r.as_bytes() {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        [b'#', ..] => match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(c),
            _ => Err(SoapError::UndefinedEntity(truncate(r))),
        },
        _ => Err(SoapError::UndefinedEntity(truncate(r))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The message's bytes as UTF-8, still to be checked: `Cow::Borrowed`
/// without a UTF-8 byte order mark, or `Cow::Owned` transcoded from UTF-16 —
/// with a byte order mark, or without one when it starts with `<` (XML 1.0
/// appendix F). No other encoding is recognised.
pub(crate) fn utf8_bytes(message: &[u8]) -> Result<Cow<'_, [u8]>, SoapError> {
    let big_endian = match message {
        [0xEF, 0xBB, 0xBF, rest @ ..] => return Ok(Cow::Borrowed(rest)),
        // UTF-32LE's byte order mark starts as UTF-16LE's.
        [0xFF, 0xFE, 0, 0, ..] => return Err(SoapError::NotUtf8),
        [0xFF, 0xFE, ..] | [b'<', 0, ..] => false,
        [0xFE, 0xFF, ..] | [0, b'<', ..] => true,
        _ => return Ok(Cow::Borrowed(message)),
    };
    let units = match message {
        [0xFF, 0xFE, rest @ ..] | [0xFE, 0xFF, rest @ ..] => rest,
        all => all,
    };
    if units.len() % 2 != 0 {
        return Err(SoapError::NotUtf8);
    }
    let units = units.chunks_exact(2).map(|u| {
        if big_endian {
            u16::from_be_bytes([u[0], u[1]])
        } else {
            u16::from_le_bytes([u[0], u[1]])
        }
    });
    // A UTF-16 unit is at most 3 bytes of UTF-8 (a surrogate pair, 4 for two).
    let mut text = String::with_capacity(message.len() / 2 * 3);
    for c in char::decode_utf16(units) {
        text.push(c.map_err(|_| SoapError::NotUtf8)?);
    }
    Ok(Cow::Owned(text.into_bytes()))
}

/// The message as UTF-8 text (see [`utf8_bytes`]).
pub(crate) fn utf8_text(message: &[u8]) -> Result<Cow<'_, str>, SoapError> {
    match utf8_bytes(message)? {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| SoapError::NotUtf8),
        Cow::Owned(v) => String::from_utf8(v).map(Cow::Owned).map_err(|_| SoapError::NotUtf8),
    }
}

#[cfg(test)]
mod tests;
