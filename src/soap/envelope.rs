//! Parsing envelopes safely: no DTD, no entity expansion, bounded size and depth.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use quick_xml::events::attributes::{AttrError, Attribute};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

use super::error::SoapError;
use super::fault::{FaultCode, QualifiedName, SoapFault};
use super::version::SoapVersion;

/// Default maximum size of a SOAP message: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// Default maximum element nesting depth.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Limits applied to every message read (requests on the server side,
/// responses on the client side, WSDL documents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoapLimits {
    max_body: usize,
    max_depth: usize,
}

impl Default for SoapLimits {
    fn default() -> Self {
        SoapLimits { max_body: DEFAULT_MAX_BODY, max_depth: DEFAULT_MAX_DEPTH }
    }
}

impl SoapLimits {
    /// The defaults: 4 MiB, depth 64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maximum message size in bytes; larger messages fail with
    /// [`SoapError::TooLarge`] before they are read to the end.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Maximum element nesting depth (the `Envelope` is depth 1); deeper
    /// messages fail with [`SoapError::TooDeep`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// The size limit.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// The depth limit.
    pub fn depth_limit(&self) -> usize {
        self.max_depth
    }
}

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

    /// The whole element, a slice of the message.
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
    /// Refuses DOCTYPEs, entity references other than XML's five predefined
    /// ones and character references, non-UTF-8 input, messages over the size
    /// limit and nesting over the depth limit; checks that the root is a SOAP
    /// 1.1 or 1.2 `Envelope` with a `Body` (after an optional `Header`). A
    /// Fault in the Body is parsed (see [`fault`](Self::fault)) but is not an
    /// error here.
    pub fn parse(message: Bytes, limits: &SoapLimits) -> Result<Envelope, SoapError> {
        if message.len() > limits.max_body {
            return Err(SoapError::TooLarge { limit: limits.max_body });
        }
        let text = std::str::from_utf8(&message).map_err(|_| SoapError::NotUtf8)?;
        let parsed =
            Parser { reader: Reader::from_str(text), limits, depth: 0, bindings: Bindings::new(), text, skipped: 0 }
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
    /// `Body` are not repeated inside it.
    pub fn body(&self) -> Bytes {
        self.message.slice(self.body.clone())
    }

    /// The Body content as text.
    pub fn body_str(&self) -> &str {
        // The whole message was checked to be UTF-8 and the range lies on tag boundaries.
        std::str::from_utf8(&self.message[self.body.clone()]).unwrap_or_default()
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

    /// The whole message.
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

struct Parser<'a, 'l> {
    reader: Reader<&'a [u8]>,
    limits: &'l SoapLimits,
    depth: usize,
    /// Namespace declarations in scope: (depth of the declaring element,
    /// prefix or "" for the default namespace, namespace), innermost last.
    /// Kept only for the elements whose names are resolved; skipped
    /// subtrees (the Body's content, header blocks) declare nothing here.
    bindings: Bindings<'a>,
    text: &'a str,
    /// Bytes skipped past the reader (see [`skip`](Parser::skip)): its
    /// positions count from where it was, so they are offset by this.
    skipped: usize,
}

/// A namespace declaration's prefix or namespace: a slice of the message or,
/// when the attribute needed unescaping, a string held by [`Bindings`].
#[derive(Clone, Copy)]
enum NsStr<'a> {
    Borrowed(&'a str),
    Owned(usize),
}

/// A namespace declaration in scope.
#[derive(Clone, Copy)]
struct Binding<'a> {
    /// Depth of the declaring element.
    depth: usize,
    /// The prefix, "" for the default namespace.
    prefix: NsStr<'a>,
    namespace: NsStr<'a>,
}

/// How many declarations [`Bindings`] holds without allocating: envelopes
/// usually declare a handful of namespaces.
const INLINE_BINDINGS: usize = 8;

/// The namespace declarations in scope, innermost last: the first
/// [`INLINE_BINDINGS`] in place, any further ones in a `Vec` (plain values
/// borrowed from the message, so that nothing here allocates or needs
/// dropping for a usual envelope).
struct Bindings<'a> {
    inline: [Binding<'a>; INLINE_BINDINGS],
    len: usize,
    spill: Vec<Binding<'a>>,
    /// The unescaped prefixes and namespaces, in declaration order.
    owned: Vec<String>,
}

impl<'a> Bindings<'a> {
    fn new() -> Self {
        let empty = Binding { depth: 0, prefix: NsStr::Borrowed(""), namespace: NsStr::Borrowed("") };
        Bindings { inline: [empty; INLINE_BINDINGS], len: 0, spill: Vec::new(), owned: Vec::new() }
    }

    fn hold(&mut self, s: Cow<'a, str>) -> NsStr<'a> {
        match s {
            Cow::Borrowed(s) => NsStr::Borrowed(s),
            Cow::Owned(s) => {
                self.owned.push(s);
                NsStr::Owned(self.owned.len() - 1)
            }
        }
    }

    fn push(&mut self, depth: usize, prefix: Cow<'a, str>, namespace: Cow<'a, str>) {
        let b = Binding { depth, prefix: self.hold(prefix), namespace: self.hold(namespace) };
        if self.len < INLINE_BINDINGS {
            self.inline[self.len] = b;
        } else {
            self.spill.push(b);
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        let Some(b) = self.last() else { return };
        // Owned strings were held in declaration order: release them in reverse.
        for s in [b.namespace, b.prefix] {
            if let NsStr::Owned(i) = s {
                debug_assert_eq!(i + 1, self.owned.len());
                self.owned.pop();
            }
        }
        self.len -= 1;
        if self.len >= INLINE_BINDINGS {
            self.spill.pop();
        }
    }

    fn last(&self) -> Option<Binding<'a>> {
        match self.len {
            0 => None,
            n if n <= INLINE_BINDINGS => Some(self.inline[n - 1]),
            _ => self.spill.last().copied(),
        }
    }

    fn get(&self, s: NsStr<'a>) -> &str {
        match s {
            NsStr::Borrowed(s) => s,
            NsStr::Owned(i) => &self.owned[i],
        }
    }

    /// The namespace bound to `prefix` by the innermost declaration of it.
    fn find(&self, prefix: &str) -> Option<&str> {
        let inline = &self.inline[..self.len.min(INLINE_BINDINGS)];
        let b = self.spill.iter().rev().chain(inline.iter().rev()).find(|b| self.get(b.prefix) == prefix)?;
        Some(self.get(b.namespace))
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

/// Attribute names of one start tag seen so far, to refuse duplicates as
/// quick-xml's own check does but without the `Vec` it allocates for every
/// tag: up to eight names on the stack, a hash set past that so that a tag
/// with very many attributes is still checked in linear time.
struct SeenKeys<'k> {
    small: [&'k str; 8],
    len: usize,
    many: Option<HashSet<&'k str>>,
}

impl<'k> SeenKeys<'k> {
    fn new() -> Self {
        SeenKeys { small: [""; 8], len: 0, many: None }
    }

    /// Note `key`; `Err` with the earlier occurrence if it was already seen.
    fn insert(&mut self, key: &'k str) -> Result<(), &'k str> {
        if let Some(many) = &mut self.many {
            return match many.get(key) {
                Some(prev) => Err(prev),
                None => {
                    many.insert(key);
                    Ok(())
                }
            };
        }
        if let Some(prev) = self.small[..self.len].iter().find(|k| **k == key) {
            return Err(prev);
        }
        if self.len < self.small.len() {
            self.small[self.len] = key;
            self.len += 1;
        } else {
            let mut many: HashSet<&'k str> = self.small.iter().copied().collect();
            many.insert(key);
            self.many = Some(many);
        }
        Ok(())
    }
}

/// A qualified name's prefix (if it has one) and local part.
fn split_qname(qname: &str) -> (Option<&str>, &str) {
    match qname.bytes().position(|b| b == b':') {
        Some(i) => (Some(&qname[..i]), &qname[i + 1..]),
        None => (None, qname),
    }
}

/// Whether a start tag's attributes may declare a namespace (contain `xmlns`).
fn mentions_xmlns(attributes: &str) -> bool {
    let bytes = attributes.as_bytes();
    let mut from = 0;
    while let Some(i) = bytes[from..].iter().position(|b| *b == b'x') {
        if bytes[from + i..].starts_with(b"xmlns") {
            return true;
        }
        from += i + 1;
    }
    false
}

/// `s`, a slice of `text`, with `text`'s lifetime.
fn rebase<'a>(text: &'a str, s: &str) -> Option<&'a str> {
    let offset = (s.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    text.get(offset..offset + s.len()).filter(|t| t.as_ptr() == s.as_ptr())
}

/// Call `f` with every attribute of `e`: syntax and unique names checked (as
/// quick-xml's `attributes()` does), errors reported at `at`.
fn for_each_attribute<'e>(
    e: &'e BytesStart<'_>,
    at: u64,
    mut f: impl FnMut(Attribute<'e>) -> Result<(), SoapError>,
) -> Result<(), SoapError> {
    let mut seen = SeenKeys::new();
    let mut attrs = e.attributes();
    attrs.with_checks(false);
    for attr in attrs {
        let attr = attr.map_err(|err| SoapError::xml(at, err.into()))?;
        if let Err(prev) = seen.insert(attr.key.0) {
            let offset = |s: &str| (s.as_ptr() as usize).wrapping_sub(e.as_ptr() as usize);
            let err = AttrError::Duplicated(offset(attr.key.0), offset(prev));
            return Err(SoapError::xml(at, err.into()));
        }
        f(attr)?;
    }
    Ok(())
}

impl<'a> Parser<'a, '_> {
    fn next(&mut self) -> Result<Event<'a>, SoapError> {
        match self.reader.read_event() {
            Ok(Event::DocType(_)) => Err(SoapError::DocType),
            Ok(e) => Ok(e),
            Err(e) => Err(SoapError::xml(self.reader.error_position() + self.skipped as u64, e)),
        }
    }

    fn pos(&self) -> usize {
        self.reader.buffer_position() as usize + self.skipped
    }

    fn enter(&mut self) -> Result<(), SoapError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(SoapError::TooDeep { limit: self.limits.max_depth });
        }
        Ok(())
    }

    /// Enter the element `e` starts: check the depth and note its namespace declarations.
    fn open(&mut self, e: &BytesStart<'_>) -> Result<(), SoapError> {
        self.enter()?;
        if mentions_xmlns(e.attributes_raw()) {
            let at = self.pos() as u64;
            let (text, depth, bindings) = (self.text, self.depth, &mut self.bindings);
            for_each_attribute(e, at, |attr| {
                let prefix = match attr.key.0 {
                    "xmlns" => "",
                    key => match key.strip_prefix("xmlns:") {
                        Some(p) => p,
                        None => return Ok(()),
                    },
                };
                // Borrowed from the message unless the value needs unescaping or normalizing
                // (a reference or a control character such as tab, LF, CR: one branch-free pass).
                let plain = !attr.value.bytes().fold(false, |any, b| any | (b == b'&') | (b < b' '));
                let value = match rebase(text, &attr.value).filter(|_| plain) {
                    Some(v) => Cow::Borrowed(v),
                    None => Cow::Owned(
                        attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|err| SoapError::xml(at, err))?
                            .into_owned(),
                    ),
                };
                let prefix = match rebase(text, prefix) {
                    Some(p) => Cow::Borrowed(p),
                    None => Cow::Owned(prefix.to_owned()),
                };
                bindings.push(depth, prefix, value);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Leave the current element.
    fn close(&mut self) {
        while self.bindings.last().is_some_and(|b| b.depth >= self.depth) {
            self.bindings.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }

    /// The namespace bound to `prefix` ("" for the default namespace) in scope.
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.bindings.find(prefix).filter(|ns| !ns.is_empty())
    }

    /// Resolve an element (or, `attribute`, attribute) name.
    fn resolve<'n>(&self, qname: &'n str, attribute: bool) -> (Option<&str>, &'n str) {
        match split_qname(qname) {
            (Some(prefix), local) => (self.lookup(prefix), local),
            (None, local) if attribute => (None, local),
            (None, local) => (self.lookup(""), local),
        }
    }

    fn name(&self, e: &BytesStart<'_>) -> (Option<String>, String) {
        let (ns, local) = self.resolve(e.name().0, false);
        (ns.map(str::to_owned), local.to_owned())
    }

    /// Where the name of `e` is, for [`Envelope::body_element`].
    fn first_element(&self, e: &BytesStart<'_>) -> FirstElement {
        let (ns, local) = self.resolve(e.name().0, false);
        FirstElement { namespace: ns.map(|ns| Text::new(self.text, ns)), local: Text::new(self.text, local) }
    }

    /// Whether `e` is `local` in `ns` (the namespace is looked up only when the local name matches).
    fn is(&self, e: &BytesStart<'_>, ns: &str, local: &str) -> bool {
        let (prefix, rlocal) = split_qname(e.name().0);
        rlocal == local && self.lookup(prefix.unwrap_or_default()) == Some(ns)
    }

    /// Resolve a QName written as text (fault codes) in the current scope.
    fn resolve_text_qname(&self, text: &str) -> QualifiedName {
        let (ns, local) = self.resolve(text.trim(), false);
        QualifiedName { namespace: ns.map(str::to_owned), local: local.to_owned() }
    }

    fn envelope(mut self, message: &Bytes) -> Result<Envelope, SoapError> {
        // Prolog: declaration, comments, processing instructions, whitespace.
        let (root, root_empty) = loop {
            match self.next()? {
                Event::Start(e) => break (e, false),
                Event::Empty(e) => break (e, true),
                Event::Text(t) if t.xml10_content().trim().is_empty() => {}
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => return Err(SoapError::NotAnEnvelope),
                Event::GeneralRef(_) | Event::Text(_) | Event::CData(_) | Event::End(_) | Event::DocType(_) => {
                    return Err(SoapError::NotAnEnvelope)
                }
            }
        };
        self.open(&root)?;
        let (ns, local) = self.resolve(root.name().0, false);
        if local != "Envelope" {
            return Err(SoapError::NotAnEnvelope);
        }
        let version = match ns.and_then(SoapVersion::from_namespace) {
            Some(v) => v,
            None => return Err(SoapError::VersionMismatch { namespace: ns.unwrap_or_default().to_owned() }),
        };
        if root_empty {
            return Err(SoapError::Structure("no Body"));
        }
        let env_ns = version.namespace();

        let mut headers = Vec::new();
        let mut body: Option<Range<usize>> = None;
        let mut first = None;
        let mut fault = None;
        let mut seen_header = false;

        // Children of the Envelope.
        loop {
            match self.next()? {
                Event::Start(e) | Event::Empty(e) if body.is_some() && version == SoapVersion::V12 => {
                    let _ = e;
                    return Err(SoapError::Structure("element after Body"));
                }
                Event::Start(e) => {
                    self.open(&e)?;
                    if self.is(&e, env_ns, "Header") && !seen_header && body.is_none() {
                        seen_header = true;
                        self.header_blocks(version, message, &mut headers)?;
                    } else if self.is(&e, env_ns, "Body") && body.is_none() {
                        let start = self.pos();
                        let end = self.body_entries(version, message, &mut first, &mut fault)?;
                        body = Some(start..end);
                    } else if body.is_some() && version == SoapVersion::V11 {
                        // SOAP 1.1 allows trailing elements after the Body; skip them.
                        self.skip()?;
                    } else {
                        return Err(SoapError::Structure("unexpected element in Envelope"));
                    }
                }
                Event::Empty(e) => {
                    self.open(&e)?;
                    if self.is(&e, env_ns, "Header") && !seen_header && body.is_none() {
                        seen_header = true;
                    } else if self.is(&e, env_ns, "Body") && body.is_none() {
                        let at = self.pos();
                        body = Some(at..at);
                    } else if body.is_none() || version == SoapVersion::V12 {
                        return Err(SoapError::Structure("unexpected element in Envelope"));
                    }
                    self.close();
                }
                Event::End(_) => {
                    self.close();
                    break;
                }
                Event::Text(t) if t.xml10_content().trim().is_empty() => {}
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => return Err(SoapError::Structure("unclosed Envelope")),
                _ => return Err(SoapError::Structure("character data in Envelope")),
            }
        }
        let body = body.ok_or(SoapError::Structure("no Body"))?;

        // Epilog.
        loop {
            match self.next()? {
                Event::Eof => break,
                Event::Text(t) if t.xml10_content().trim().is_empty() => {}
                Event::Comment(_) | Event::PI(_) => {}
                _ => return Err(SoapError::Structure("content after the Envelope")),
            }
        }
        if let Some(f) = fault.as_deref_mut() {
            let f: &mut SoapFault = f;
            f.version = version;
        }
        Ok(Envelope { message: message.clone(), version, headers, body, first, first_name: OnceLock::new(), fault })
    }

    /// Read the Header's children up to and including `</Header>`.
    fn header_blocks(
        &mut self,
        version: SoapVersion,
        message: &Bytes,
        out: &mut Vec<HeaderBlock>,
    ) -> Result<(), SoapError> {
        let env_ns = version.namespace();
        loop {
            let before = self.pos();
            let (e, is_start) = match self.next()? {
                Event::Start(e) => (e, true),
                Event::Empty(e) => (e, false),
                Event::End(_) => {
                    self.close();
                    return Ok(());
                }
                Event::Text(t) if t.xml10_content().trim().is_empty() => continue,
                Event::Comment(_) | Event::PI(_) => continue,
                Event::Eof => return Err(SoapError::Structure("unclosed Header")),
                _ => return Err(SoapError::Structure("character data in Header")),
            };
            {
                {
                    let start = before + message[before..].iter().position(|b| *b == b'<').unwrap_or(0);
                    self.open(&e)?;
                    let (ns, local) = self.name(&e);
                    let mut must_understand = false;
                    let mut role = None;
                    for_each_attribute(&e, before as u64, |attr| {
                        let (ans, alocal) = self.resolve(attr.key.0, true);
                        if ans != Some(env_ns) {
                            return Ok(());
                        }
                        let value = attr
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|err| SoapError::xml(before as u64, err))?;
                        match alocal {
                            "mustUnderstand" => {
                                must_understand = match value.trim() {
                                    "1" | "true" => true,
                                    "0" | "false" => false,
                                    _ => return Err(SoapError::Structure("invalid mustUnderstand value")),
                                }
                            }
                            "actor" if version == SoapVersion::V11 => role = Some(value.into_owned()),
                            "role" if version == SoapVersion::V12 => role = Some(value.into_owned()),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    if is_start {
                        self.skip()?;
                    } else {
                        self.close();
                    }
                    let end = self.pos();
                    out.push(HeaderBlock {
                        name: QualifiedName { namespace: ns, local },
                        must_understand,
                        role,
                        raw: message.slice(start..end),
                    });
                }
            }
        }
    }

    /// Read the Body's content up to and including `</Body>`; returns the
    /// offset where `</Body>` starts.
    fn body_entries(
        &mut self,
        version: SoapVersion,
        message: &Bytes,
        first: &mut Option<FirstElement>,
        fault: &mut Option<Box<SoapFault>>,
    ) -> Result<usize, SoapError> {
        loop {
            let before = self.pos();
            match self.next()? {
                Event::Start(e) => {
                    if first.is_some() {
                        // Later entries are only skipped over.
                        self.enter()?;
                        self.skip()?;
                        continue;
                    }
                    self.open(&e)?;
                    let is_fault = first.is_none() && self.is(&e, version.namespace(), "Fault");
                    if first.is_none() {
                        *first = Some(self.first_element(&e));
                    }
                    if is_fault {
                        *fault = Some(Box::new(self.fault(version, message)?));
                    } else {
                        self.skip()?;
                    }
                }
                Event::Empty(e) if first.is_none() => {
                    self.open(&e)?;
                    if self.is(&e, version.namespace(), "Fault") {
                        return Err(SoapError::Structure("empty Fault"));
                    }
                    *first = Some(self.first_element(&e));
                    self.close();
                }
                Event::End(_) => {
                    self.close();
                    return Ok(before);
                }
                Event::GeneralRef(r) => {
                    resolve_ref(&r)?;
                }
                Event::Eof => return Err(SoapError::Structure("unclosed Body")),
                _ => {}
            }
        }
    }

    /// Skip the content of the element just entered, up to and including its
    /// end tag, checking depth, end tags and references (see [`skip`](super::skip)).
    fn skip(&mut self) -> Result<(), SoapError> {
        let from = self.pos();
        let end_tag = super::skip::skip_content(self.text, from, self.depth, self.limits.max_depth)?;
        // Move the reader to the element's end tag and let it read that: it
        // checks the name against the start tag it read.
        let rest: &'a [u8] = self.reader.get_ref();
        *self.reader.get_mut() = &rest[end_tag - from..];
        self.skipped += end_tag - from;
        match self.next()? {
            Event::End(_) => {
                self.close();
                Ok(())
            }
            _ => Err(SoapError::Structure("unclosed element")),
        }
    }

    /// Parse a Fault whose start tag was just read.
    fn fault(&mut self, version: SoapVersion, message: &Bytes) -> Result<SoapFault, SoapError> {
        let base = self.depth;
        let mut path: Vec<String> = Vec::with_capacity(4);
        let mut text = String::new();
        let mut detail_start = 0;
        let mut code: Option<QualifiedName> = None;
        let mut subcodes = Vec::new();
        let mut reason: Option<String> = None;
        let mut actor = None;
        let mut node = None;
        let mut detail = None;
        loop {
            let before = self.pos();
            match self.next()? {
                Event::Start(e) => {
                    self.open(&e)?;
                    let local = e.local_name().into_inner().to_owned();
                    path.push(local);
                    text.clear();
                    if self.depth == base + 1 && matches!(path[0].as_str(), "detail" | "Detail") {
                        detail_start = self.pos();
                    }
                }
                Event::Empty(e) if self.depth == base && matches!(e.local_name().into_inner(), "detail" | "Detail") => {
                    detail = Some(Bytes::new());
                }
                Event::Text(t) => text.push_str(&t.xml10_content()),
                Event::CData(t) => text.push_str(&t.xml10_content()),
                Event::GeneralRef(r) => text.push(resolve_ref(&r)?),
                Event::End(_) => {
                    if self.depth == base {
                        self.close();
                        break;
                    }
                    let p: Vec<&str> = path.iter().map(String::as_str).collect();
                    match (version, p.as_slice()) {
                        (SoapVersion::V11, ["faultcode"]) => code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V11, ["faultstring"]) => reason = Some(text.trim().to_owned()),
                        (SoapVersion::V11, ["faultactor"]) => actor = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Code", "Value"]) => code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V12, ["Code", rest @ .., "Value"])
                            if !rest.is_empty() && rest.iter().all(|s| *s == "Subcode") =>
                        {
                            subcodes.push(self.resolve_text_qname(&text))
                        }
                        (SoapVersion::V12, ["Reason", "Text"]) if reason.is_none() => {
                            reason = Some(text.trim().to_owned())
                        }
                        (SoapVersion::V12, ["Node"]) => node = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Role"]) => actor = Some(text.trim().to_owned()),
                        (_, ["detail" | "Detail"]) => detail = Some(message.slice(detail_start..before)),
                        _ => {}
                    }
                    path.pop();
                    text.clear();
                    self.close();
                }
                Event::Eof => return Err(SoapError::Structure("unclosed Fault")),
                _ => {}
            }
        }
        let code_name = code.ok_or(SoapError::Structure("Fault without a code"))?;
        let env_ns = version.namespace();
        let mut local_parts = code_name.local.split('.');
        let head = local_parts.next().unwrap_or_default();
        let standard = code_name.namespace.as_deref() == Some(env_ns) || code_name.namespace.is_none();
        let class = if standard { FaultCode::from_local(head) } else { FaultCode::Other };
        if version == SoapVersion::V11 {
            for part in local_parts {
                subcodes.push(QualifiedName { namespace: code_name.namespace.clone(), local: part.to_owned() });
            }
        }
        Ok(SoapFault {
            version,
            code: class,
            code_name,
            subcodes,
            reason: reason.unwrap_or_default(),
            actor,
            node,
            detail,
            http_status: None,
        })
    }
}
