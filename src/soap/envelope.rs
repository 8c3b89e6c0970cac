//! Parsing envelopes safely: no DTD, no entity expansion, bounded size and depth.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
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
/// Default maximum number of namespace declarations in scope at once (as
/// quick-xml's own namespace reader).
pub const DEFAULT_MAX_NAMESPACES: usize = 128;
/// Default maximum number of attributes (namespace declarations included) of
/// one start tag.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 256;
/// Default maximum number of header blocks.
pub const DEFAULT_MAX_HEADER_BLOCKS: usize = 256;

/// Limits applied to every message read (requests on the server side,
/// responses on the client side, WSDL documents).
///
/// Together they bound the work a message costs: within them, a message of
/// any shape parses in time linear in its size (namespace prefixes are
/// resolved through a hashed scope, not by scanning every declaration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoapLimits {
    max_body: usize,
    max_depth: usize,
    max_namespaces: usize,
    max_attributes: usize,
    max_header_blocks: usize,
}

impl Default for SoapLimits {
    fn default() -> Self {
        SoapLimits {
            max_body: DEFAULT_MAX_BODY,
            max_depth: DEFAULT_MAX_DEPTH,
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            max_header_blocks: DEFAULT_MAX_HEADER_BLOCKS,
        }
    }
}

impl SoapLimits {
    /// The defaults: 4 MiB, depth 64, 128 namespace declarations in scope,
    /// 256 attributes per start tag, 256 header blocks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maximum message size in bytes, as received (a UTF-16 message is
    /// checked before it is transcoded); larger messages fail with
    /// [`SoapError::TooLarge`] before they are read to the end. The
    /// namespace declarations added to make header blocks and a fault detail
    /// standalone (see [`HeaderBlock::raw`]) may add at most as much again.
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

    /// Maximum number of namespace declarations in scope at once on the
    /// elements the parser reads (the `Envelope`, `Header`, `Body`, each
    /// header block's start tag, the first Body element and the Fault);
    /// more fail with [`SoapError::TooManyNamespaces`]. Content passed on as
    /// a slice is not counted: whoever parses it does.
    pub fn max_namespaces(mut self, n: usize) -> Self {
        self.max_namespaces = n;
        self
    }

    /// Maximum number of attributes, namespace declarations included, of a
    /// start tag the parser reads (as for [`max_namespaces`](Self::max_namespaces));
    /// more fail with [`SoapError::TooManyAttributes`].
    pub fn max_attributes(mut self, n: usize) -> Self {
        self.max_attributes = n;
        self
    }

    /// Maximum number of header blocks; more fail with
    /// [`SoapError::TooManyHeaderBlocks`].
    pub fn max_header_blocks(mut self, n: usize) -> Self {
        self.max_header_blocks = n;
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

    /// The limit on namespace declarations in scope.
    pub fn namespace_limit(&self) -> usize {
        self.max_namespaces
    }

    /// The limit on attributes per start tag.
    pub fn attribute_limit(&self) -> usize {
        self.max_attributes
    }

    /// The limit on header blocks.
    pub fn header_block_limit(&self) -> usize {
        self.max_header_blocks
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
            skipped: 0,
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
    /// How many bytes of namespace declarations standalone header blocks and
    /// fault details may still be given (the size limit, in all).
    budget: usize,
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
    /// The position of the declaration of the same prefix this one hides
    /// ([`NONE`] if none); kept once [`Bindings`] has an index.
    hides: u32,
}

/// No position.
const NONE: u32 = u32::MAX;

/// How many declarations [`Bindings`] holds without allocating: envelopes
/// usually declare a handful of namespaces.
const INLINE_BINDINGS: usize = 8;

/// The namespace declarations in scope, innermost last: the first
/// [`INLINE_BINDINGS`] in place, any further ones in a `Vec` (plain values
/// borrowed from the message, so that nothing here allocates or needs
/// dropping for a usual envelope).
///
/// Up to [`INLINE_BINDINGS`] declarations a prefix is looked up by scanning
/// them; past that through a hash index of the innermost declaration of each
/// prefix (each declaration remembering the one it hides), so that a lookup
/// costs the same however many declarations are in scope.
struct Bindings<'a> {
    inline: [Binding<'a>; INLINE_BINDINGS],
    len: usize,
    spill: Vec<Binding<'a>>,
    /// The unescaped prefixes and namespaces, in declaration order.
    owned: Vec<String>,
    /// Prefix → position of its innermost declaration, once there were more
    /// than [`INLINE_BINDINGS`].
    index: Option<HashMap<Cow<'a, str>, u32>>,
}

impl<'a> Bindings<'a> {
    fn new() -> Self {
        let empty = Binding { depth: 0, prefix: NsStr::Borrowed(""), namespace: NsStr::Borrowed(""), hides: NONE };
        Bindings { inline: [empty; INLINE_BINDINGS], len: 0, spill: Vec::new(), owned: Vec::new(), index: None }
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

    /// The index key of `s`.
    fn key(&self, s: NsStr<'a>) -> Cow<'a, str> {
        match s {
            NsStr::Borrowed(s) => Cow::Borrowed(s),
            NsStr::Owned(i) => Cow::Owned(self.owned[i].clone()),
        }
    }

    fn at(&self, i: usize) -> &Binding<'a> {
        if i < INLINE_BINDINGS {
            &self.inline[i]
        } else {
            &self.spill[i - INLINE_BINDINGS]
        }
    }

    fn at_mut(&mut self, i: usize) -> &mut Binding<'a> {
        if i < INLINE_BINDINGS {
            &mut self.inline[i]
        } else {
            &mut self.spill[i - INLINE_BINDINGS]
        }
    }

    /// Note the binding at position `i` in the index.
    fn index_one(&mut self, i: usize) {
        let key = self.key(self.at(i).prefix);
        let hides = self.index.as_mut().and_then(|index| index.insert(key, i as u32)).unwrap_or(NONE);
        self.at_mut(i).hides = hides;
    }

    fn push(&mut self, depth: usize, prefix: Cow<'a, str>, namespace: Cow<'a, str>) {
        let b = Binding { depth, prefix: self.hold(prefix), namespace: self.hold(namespace), hides: NONE };
        if self.len < INLINE_BINDINGS {
            self.inline[self.len] = b;
        } else {
            self.spill.push(b);
        }
        self.len += 1;
        if self.index.is_none() && self.len > INLINE_BINDINGS {
            self.index = Some(HashMap::with_capacity(2 * INLINE_BINDINGS));
            for i in 0..self.len {
                self.index_one(i);
            }
        } else if self.index.is_some() {
            self.index_one(self.len - 1);
        }
    }

    fn pop(&mut self) {
        let Some(b) = self.last() else { return };
        if let Some(index) = &mut self.index {
            let prefix = match b.prefix {
                NsStr::Borrowed(s) => s,
                NsStr::Owned(i) => &self.owned[i],
            };
            if b.hides == NONE {
                index.remove(prefix);
            } else if let Some(slot) = index.get_mut(prefix) {
                *slot = b.hides;
            }
        }
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
        self.len.checked_sub(1).map(|i| *self.at(i))
    }

    fn get(&self, s: NsStr<'a>) -> &str {
        match s {
            NsStr::Borrowed(s) => s,
            NsStr::Owned(i) => &self.owned[i],
        }
    }

    /// The position of the innermost declaration of `prefix`.
    fn position(&self, prefix: &str) -> Option<usize> {
        if let Some(index) = &self.index {
            return index.get(prefix).map(|i| *i as usize);
        }
        (0..self.len).rev().find(|i| self.get(self.at(*i).prefix) == prefix)
    }

    /// The namespace bound to `prefix` by the innermost declaration of it.
    fn find(&self, prefix: &str) -> Option<&str> {
        let i = self.position(prefix)?;
        Some(self.get(self.at(i).namespace))
    }

    /// The declarations in scope for an element at `depth` that it does not
    /// make itself: the innermost one of each prefix declared above it,
    /// unless it undeclares the default namespace (`xmlns=""`).
    fn inherited(&self, depth: usize) -> impl Iterator<Item = (NsStr<'a>, NsStr<'a>)> + '_ {
        (0..self.len).filter_map(move |i| {
            let b = self.at(i);
            let innermost = self.position(self.get(b.prefix)) == Some(i);
            let declared = !self.get(b.namespace).is_empty();
            (b.depth < depth && innermost && declared).then_some((b.prefix, b.namespace))
        })
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
/// quick-xml's `attributes()` does), at most `max` of them, errors reported
/// at `at`.
fn for_each_attribute<'e>(
    e: &'e BytesStart<'_>,
    at: u64,
    max: usize,
    mut f: impl FnMut(Attribute<'e>) -> Result<(), SoapError>,
) -> Result<(), SoapError> {
    let mut seen = SeenKeys::new();
    let mut attrs = e.attributes();
    attrs.with_checks(false);
    for (n, attr) in attrs.enumerate() {
        if n == max {
            return Err(SoapError::TooManyAttributes { limit: max });
        }
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

/// Whether `c` may be in an XML name without a colon (an NCName; XML 1.0
/// fifth edition, `NameChar` less `:`).
fn is_ncname_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' | '.' | '\u{B7}'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{203F}'..='\u{2040}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}'
        | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// Declarations in scope that a fragment may be given (see [`standalone`]),
/// with what finding the ones a piece of text uses needs.
struct Scope<'d> {
    /// `(prefix, namespace)`, without `xml`/`xmlns` and undeclarations.
    decls: Vec<(&'d str, &'d str)>,
    /// Prefix → position, past a few declarations.
    index: Option<HashMap<&'d str, usize>>,
    /// The position of the default namespace's declaration.
    default: Option<usize>,
    /// The round in which each declaration was last found used.
    mark: Vec<u32>,
    round: u32,
}

impl<'d> Scope<'d> {
    fn new<P: AsRef<str>, N: AsRef<str>>(inherited: &'d [(P, N)]) -> Self {
        let decls: Vec<(&str, &str)> = inherited
            .iter()
            .map(|(p, n)| (p.as_ref(), n.as_ref()))
            .filter(|(p, n)| !n.is_empty() && !matches!(*p, "xml" | "xmlns"))
            .collect();
        let index =
            (decls.len() > INLINE_BINDINGS).then(|| decls.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect());
        // The innermost declaration of the default namespace (the last one).
        let default = decls.iter().rposition(|(p, _)| p.is_empty());
        Scope { mark: vec![0; decls.len()], decls, index, default, round: 0 }
    }

    /// The positions, in order, of the declarations `text` may use: a prefix
    /// that appears as a whole name before a `:` anywhere in it (element and
    /// attribute names, and QNames in values such as `xsi:type`), and the
    /// default namespace. One pass over `text`.
    fn used(&mut self, text: &str, out: &mut Vec<usize>) {
        out.clear();
        self.round += 1;
        let round = self.round;
        if let Some(i) = self.default {
            self.mark[i] = round;
            out.push(i);
        }
        for colon in memchr::memchr_iter(b':', text.as_bytes()) {
            if out.len() == self.decls.len() {
                break;
            }
            let before = &text[..colon];
            // Runs of name characters end at a colon: each byte is walked over once.
            let start =
                before.char_indices().rev().take_while(|(_, c)| is_ncname_char(*c)).last().map_or(colon, |(k, _)| k);
            let name = &before[start..];
            if name.is_empty() {
                continue;
            }
            let found = match &self.index {
                Some(index) => index.get(name).copied(),
                None => self.decls.iter().position(|(p, _)| *p == name),
            };
            if let Some(i) = found.filter(|i| self.mark[*i] != round) {
                self.mark[i] = round;
                out.push(i);
            }
        }
        out.sort_unstable();
    }
}

/// `fragment` — well-formed content: elements, text, comments… — made
/// standalone: each top-level element gets the `inherited` declarations it
/// may use (see [`Scope::used`]) and does not make itself, so that a
/// namespace-aware parser reads it alone. `None` when nothing is to be
/// added; [`SoapError::TooLarge`] when more than `budget` bytes would be
/// (each top-level element repeating declarations could otherwise make a
/// copy many times the message); `budget` is reduced by what is added.
fn standalone<P: AsRef<str>, N: AsRef<str>>(
    fragment: &str,
    inherited: &[(P, N)],
    budget: &mut usize,
    limit: usize,
) -> Result<Option<Vec<u8>>, SoapError> {
    let mut scope = Scope::new(inherited);
    let mut used = Vec::new();
    scope.used(fragment, &mut used);
    if used.is_empty() {
        return Ok(None);
    }
    let b = fragment.as_bytes();
    let mut out = Vec::new();
    let mut copied = 0;
    let mut pos = 0;
    let mut own: Vec<&str> = Vec::new();
    while pos < b.len() {
        let mut reader = Reader::from_str(&fragment[pos..]);
        let event = reader.read_event().map_err(|e| SoapError::xml(pos as u64, e))?;
        let after = pos + reader.buffer_position() as usize;
        let (e, is_start) = match event {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::Eof => break,
            _ => {
                pos = after;
                continue;
            }
        };
        let lt = pos + memchr::memchr(b'<', &b[pos..after]).unwrap_or(0);
        let name_end = lt + 1 + e.name().0.len();
        let end = if is_start {
            let end_tag = super::skip::skip_content(fragment, after, 0, usize::MAX)?;
            end_tag + memchr::memchr(b'>', &b[end_tag..]).map_or(b.len() - end_tag, |k| k + 1)
        } else {
            after
        };
        own.clear();
        for_each_attribute(&e, lt as u64, usize::MAX, |attr| {
            match attr.key.0 {
                "xmlns" => own.push(""),
                key => own.extend(key.strip_prefix("xmlns:").and_then(|p| rebase(fragment, p))),
            }
            Ok(())
        })?;
        let own_set: Option<HashSet<&str>> = (own.len() > INLINE_BINDINGS).then(|| own.iter().copied().collect());
        let declares = |p: &str| match &own_set {
            Some(set) => set.contains(p),
            None => own.contains(&p),
        };
        scope.used(&fragment[lt..end], &mut used);
        for i in &used {
            let (prefix, namespace) = scope.decls[*i];
            if declares(prefix) {
                continue;
            }
            if out.is_empty() {
                out.reserve(fragment.len() + 64);
            }
            out.extend_from_slice(&b[copied..name_end]);
            copied = name_end;
            out.extend_from_slice(if prefix.is_empty() { b" xmlns=\"" } else { b" xmlns:" });
            if !prefix.is_empty() {
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"=\"");
            }
            super::write::escape_into(namespace, &mut out);
            out.push(b'"');
            // All of `out` but the declarations was copied from the fragment up to `copied`.
            if out.len() - copied > *budget {
                return Err(SoapError::TooLarge { limit });
            }
        }
        pos = end;
    }
    if copied == 0 {
        return Ok(None);
    }
    out.extend_from_slice(&b[copied..]);
    *budget -= out.len() - b.len();
    Ok(Some(out))
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

    /// Enter the element `e` starts: check the depth and its attributes
    /// (syntax, unique names, how many) and note its namespace declarations.
    fn open(&mut self, e: &BytesStart<'_>) -> Result<(), SoapError> {
        self.enter()?;
        if e.attributes_raw().bytes().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        let at = self.pos() as u64;
        let declares = mentions_xmlns(e.attributes_raw());
        let (text, depth, bindings, limits) = (self.text, self.depth, &mut self.bindings, self.limits);
        for_each_attribute(e, at, limits.max_attributes, |attr| {
            if !declares {
                return Ok(());
            }
            let prefix = match attr.key.0 {
                "xmlns" => "",
                key => match key.strip_prefix("xmlns:") {
                    Some(p) => p,
                    None => return Ok(()),
                },
            };
            if bindings.len >= limits.max_namespaces {
                return Err(SoapError::TooManyNamespaces { limit: limits.max_namespaces });
            }
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
        })
    }

    /// The declarations in scope for an element at `depth` (the current one
    /// or its content) that it does not make itself (nothing allocated when
    /// there are none).
    fn inherited(&self, depth: usize) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        let b = &self.bindings;
        let cow = |s: NsStr<'a>| match s {
            NsStr::Borrowed(s) => Cow::Borrowed(s),
            NsStr::Owned(i) => Cow::Owned(b.owned[i].clone()),
        };
        b.inherited(depth).map(|(prefix, namespace)| (cow(prefix), cow(namespace))).collect()
    }

    /// Where the content (name and attributes) of the start tag `e` is in the message.
    fn span(&self, e: &BytesStart<'_>) -> Range<usize> {
        let start = (e.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize).min(self.text.len());
        start..(start + e.len()).min(self.text.len())
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
        let envelope_tag = self.span(&root);
        let mut body_tag = 0..0;
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
                        body_tag = self.span(&e);
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
        Ok(Envelope {
            message: message.clone(),
            version,
            headers,
            body,
            first,
            first_name: OnceLock::new(),
            fault,
            scope: [envelope_tag, body_tag],
            standalone_body: OnceLock::new(),
            limit: self.limits.max_body,
        })
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
            if out.len() == self.limits.max_header_blocks {
                return Err(SoapError::TooManyHeaderBlocks { limit: self.limits.max_header_blocks });
            }
            let start = before + message[before..].iter().position(|b| *b == b'<').unwrap_or(0);
            self.open(&e)?;
            let (ns, local) = self.name(&e);
            let mut must_understand = false;
            let mut role = None;
            for_each_attribute(&e, before as u64, self.limits.max_attributes, |attr| {
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
            // The declarations in scope from the Envelope and the Header, for a standalone copy.
            let inherited = self.inherited(self.depth);
            if is_start {
                self.skip()?;
            } else {
                self.close();
            }
            let end = self.pos();
            let raw = match standalone(&self.text[start..end], &inherited, &mut self.budget, self.limits.max_body)? {
                Some(made) => Bytes::from(made),
                None => message.slice(start..end),
            };
            out.push(HeaderBlock { name: QualifiedName { namespace: ns, local }, must_understand, role, raw });
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
    /// Returns the offset of the end tag.
    fn skip(&mut self) -> Result<usize, SoapError> {
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
                Ok(end_tag)
            }
            _ => Err(SoapError::Structure("unclosed element")),
        }
    }

    /// Parse a Fault whose start tag was just read. Only the elements the
    /// Fault is made of are read; the detail's content and unknown elements
    /// are skipped over.
    fn fault(&mut self, version: SoapVersion, message: &Bytes) -> Result<SoapFault, SoapError> {
        let base = self.depth;
        // Local names of the open elements inside the Fault.
        let mut path: Vec<&'a str> = Vec::with_capacity(4);
        let mut text = String::new();
        let mut code: Option<QualifiedName> = None;
        let mut subcodes = Vec::new();
        let mut reason: Option<String> = None;
        let mut actor = None;
        let mut node = None;
        let mut detail = None;
        loop {
            match self.next()? {
                Event::Start(e) => {
                    self.open(&e)?;
                    let local = rebase(self.text, e.local_name().into_inner()).unwrap_or_default();
                    if self.depth == base + 1 && matches!(local, "detail" | "Detail") {
                        let start = self.pos();
                        // The detail's content: its own declarations are in scope too.
                        let inherited = self.inherited(self.depth + 1);
                        let end = self.skip()?;
                        let made =
                            standalone(&self.text[start..end], &inherited, &mut self.budget, self.limits.max_body)?;
                        detail = Some(match made {
                            Some(made) => Bytes::from(made),
                            None => message.slice(start..end),
                        });
                        continue;
                    }
                    if !fault_part(version, &path, local) {
                        self.skip()?;
                        continue;
                    }
                    path.push(local);
                    text.clear();
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
                    match (version, path.as_slice()) {
                        (SoapVersion::V11, ["faultcode"]) => code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V11, ["faultstring"]) => reason = Some(text.trim().to_owned()),
                        (SoapVersion::V11, ["faultactor"]) => actor = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Code", "Value"]) => code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V12, ["Code", .., "Value"]) => subcodes.push(self.resolve_text_qname(&text)),
                        (SoapVersion::V12, ["Reason", "Text"]) if reason.is_none() => {
                            reason = Some(text.trim().to_owned())
                        }
                        (SoapVersion::V12, ["Node"]) => node = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Role"]) => actor = Some(text.trim().to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Open an element declaring these (prefix, namespace) pairs.
        Open(Vec<(u8, u8)>),
        Close,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let open = prop::collection::vec((0u8..12, 0u8..4), 0..6).prop_map(Op::Open);
        prop::collection::vec(prop_oneof![3 => open, 2 => Just(Op::Close)], 0..60)
    }

    proptest! {
        /// The scope with its index agrees with a plain list scanned from
        /// the innermost declaration, across pushes and pops that cross
        /// the number kept in place.
        #[test]
        fn bindings_resolve_as_a_scanned_list(ops in ops()) {
            let prefixes: Vec<String> = (0..12).map(|i| if i == 0 { String::new() } else { format!("p{i}") }).collect();
            let namespaces: Vec<String> = (0..4).map(|n| format!("urn:{n}")).collect();
            let mut bindings = Bindings::new();
            let mut model: Vec<(usize, &str, String)> = Vec::new();
            let mut depth = 0;
            for op in ops {
                match op {
                    Op::Open(decls) => {
                        depth += 1;
                        for (p, n) in decls {
                            let ns = format!("urn:{n}");
                            // Every other namespace held as an owned (unescaped) string.
                            let held = if n % 2 == 0 { Cow::Owned(ns.clone()) } else { Cow::Borrowed(namespaces[n as usize].as_str()) };
                            bindings.push(depth, Cow::Borrowed(prefixes[p as usize].as_str()), held);
                            model.push((depth, prefixes[p as usize].as_str(), ns));
                        }
                    }
                    Op::Close if depth > 0 => {
                        while bindings.last().is_some_and(|b| b.depth >= depth) {
                            bindings.pop();
                        }
                        model.retain(|(d, _, _)| *d < depth);
                        depth -= 1;
                    }
                    Op::Close => {}
                }
                for p in &prefixes {
                    let expected = model.iter().rev().find(|(_, mp, _)| mp == p).map(|(_, _, ns)| ns.as_str());
                    prop_assert_eq!(bindings.find(p), expected, "prefix {:?}", p);
                }
                let inherited: Vec<(String, String)> = bindings
                    .inherited(depth + 1)
                    .map(|(p, n)| (bindings.get(p).to_owned(), bindings.get(n).to_owned()))
                    .collect();
                let mut expected: Vec<(String, String)> = Vec::new();
                for p in &prefixes {
                    if let Some((_, _, ns)) = model.iter().rev().find(|(_, mp, _)| mp == p) {
                        expected.push((p.clone(), ns.clone()));
                    }
                }
                let mut got = inherited.clone();
                got.sort();
                expected.sort();
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn used_declarations_are_found_by_name_before_a_colon() {
        let inherited = [
            ("", "urn:d"),
            ("a", "urn:a"),
            ("b", "urn:b"),
            ("ab", "urn:ab"),
            ("xml", "urn:x"),
            ("é", "urn:e"),
            ("u", ""),
        ];
        let mut scope = Scope::new(&inherited);
        let mut used = |fragment: &str| {
            let mut out = Vec::new();
            scope.used(fragment, &mut out);
            out.into_iter().map(|i| scope.decls[i].0).collect::<Vec<_>>()
        };
        assert_eq!(used("<x/>"), [""]);
        assert_eq!(used("<ab:x/>"), ["", "ab"]);
        assert_eq!(used("<x t=\"b:y\">xml:lang u:x</x>"), ["", "b"]);
        assert_eq!(used("<x>@a:y é:z</x>"), ["", "a", "é"]);
        assert_eq!(used("<x>cab:y</x>"), [""]);
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("p{i}"), format!("urn:{i}"))).collect();
        let mut scope = Scope::new(&many);
        let mut out = Vec::new();
        scope.used("<p7:x p39:y=\"1\">p12:z</p7:x>", &mut out);
        assert_eq!(out.iter().map(|i| scope.decls[*i].0).collect::<Vec<_>>(), ["p7", "p12", "p39"]);
    }

    #[test]
    fn standalone_copies_are_bounded() {
        // Each of many top-level elements takes the (long) declaration it uses.
        let ns = "u".repeat(1000);
        let inherited = [("p", ns.as_str())];
        let fragment = "<p:e/>".repeat(100);
        let mut budget = 200_000;
        let made = standalone(&fragment, &inherited, &mut budget, 7).unwrap().unwrap();
        assert_eq!(made.len(), fragment.len() + 100 * (ns.len() + " xmlns:p=\"\"".len()));
        assert_eq!(budget, 200_000 - (made.len() - fragment.len()));
        let mut budget = 50_000;
        assert!(matches!(standalone(&fragment, &inherited, &mut budget, 7), Err(SoapError::TooLarge { limit: 7 })));
        // Only what each element uses: the second one takes nothing.
        let mut budget = usize::MAX;
        let two = [("a", "urn:a"), ("b", "urn:b")];
        let made = standalone("<a:x/> <y b=\"1\"/>", &two, &mut budget, 0).unwrap().unwrap();
        assert_eq!(std::str::from_utf8(&made).unwrap(), "<a:x xmlns:a=\"urn:a\"/> <y b=\"1\"/>");
    }
}
