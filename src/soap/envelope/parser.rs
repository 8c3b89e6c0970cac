//! The envelope parser: quick-xml events checked against the limits.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::limits::SoapLimits;
use super::namespaces::{for_each_attribute, mentions_xmlns, rebase, split_qname, Bindings, NsStr};
use super::standalone::standalone;
use super::{fault_part, resolve_ref, Envelope, FirstElement, HeaderBlock, Text, XML_NS};
use crate::soap::error::SoapError;
use crate::soap::fault::{FaultCode, QualifiedName, SoapFault};
use crate::soap::skip::{next_event, skip_content};
use crate::soap::version::SoapVersion;

pub(super) struct Parser<'a, 'l> {
    pub(super) reader: Reader<&'a [u8]>,
    pub(super) limits: &'l SoapLimits,
    pub(super) depth: usize,
    /// Namespace declarations in scope: (depth of the declaring element,
    /// prefix or "" for the default namespace, namespace), innermost last.
    /// Kept only for the elements whose names are resolved; skipped
    /// subtrees (the Body's content, header blocks) declare nothing here.
    pub(super) bindings: Bindings<'a>,
    pub(super) text: &'a str,
    /// How many bytes of namespace declarations standalone header blocks and
    /// fault details may still be given (the size limit, in all).
    pub(super) budget: usize,
}

impl<'a> Parser<'a, '_> {
    pub(super) fn next(&mut self) -> Result<Event<'a>, SoapError> {
        next_event(&mut self.reader)
    }

    pub(super) fn pos(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    pub(super) fn enter(&mut self) -> Result<(), SoapError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(SoapError::TooDeep { limit: self.limits.max_depth });
        }
        Ok(())
    }

    /// Enter the element `e` starts: check the depth and its attributes
    /// (syntax, unique names, how many) and note its namespace declarations.
    pub(super) fn open(&mut self, e: &BytesStart<'_>) -> Result<(), SoapError> {
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
    pub(super) fn inherited(&self, depth: usize) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        let b = &self.bindings;
        let cow = |s: NsStr<'a>| match s {
            NsStr::Borrowed(s) => Cow::Borrowed(s),
            NsStr::Owned(i) => Cow::Owned(b.owned[i].clone()),
        };
        b.inherited(depth).map(|(prefix, namespace)| (cow(prefix), cow(namespace))).collect()
    }

    /// Where the content (name and attributes) of the start tag `e` is in the message.
    pub(super) fn span(&self, e: &BytesStart<'_>) -> Range<usize> {
        let start = (e.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize).min(self.text.len());
        start..(start + e.len()).min(self.text.len())
    }

    /// Leave the current element.
    pub(super) fn close(&mut self) {
        while self.bindings.last().is_some_and(|b| b.depth >= self.depth) {
            self.bindings.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }

    /// The namespace bound to `prefix` ("" for the default namespace) in scope.
    pub(super) fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.bindings.find(prefix).filter(|ns| !ns.is_empty())
    }

    /// Resolve an element (or, `attribute`, attribute) name.
    pub(super) fn resolve<'n>(&self, qname: &'n str, attribute: bool) -> (Option<&str>, &'n str) {
        match split_qname(qname) {
            (Some(prefix), local) => (self.lookup(prefix), local),
            (None, local) if attribute => (None, local),
            (None, local) => (self.lookup(""), local),
        }
    }

    pub(super) fn name(&self, e: &BytesStart<'_>) -> (Option<String>, String) {
        let (ns, local) = self.resolve(e.name().0, false);
        (ns.map(str::to_owned), local.to_owned())
    }

    /// Where the name of `e` is, for [`Envelope::body_element`].
    pub(super) fn first_element(&self, e: &BytesStart<'_>) -> FirstElement {
        let (ns, local) = self.resolve(e.name().0, false);
        FirstElement { namespace: ns.map(|ns| Text::new(self.text, ns)), local: Text::new(self.text, local) }
    }

    /// Whether `e` is `local` in `ns` (the namespace is looked up only when the local name matches).
    pub(super) fn is(&self, e: &BytesStart<'_>, ns: &str, local: &str) -> bool {
        let (prefix, rlocal) = split_qname(e.name().0);
        rlocal == local && self.lookup(prefix.unwrap_or_default()) == Some(ns)
    }

    /// Resolve a QName written as text (fault codes) in the current scope.
    pub(super) fn resolve_text_qname(&self, text: &str) -> QualifiedName {
        let (ns, local) = self.resolve(text.trim(), false);
        QualifiedName { namespace: ns.map(str::to_owned), local: local.to_owned() }
    }

    /// Read the prolog and the root's start tag: the contents of the
    /// `Envelope` start tag and the SOAP version.
    fn root(&mut self) -> Result<(Range<usize>, SoapVersion), SoapError> {
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
        Ok((envelope_tag, version))
    }

    /// Read what follows the `Envelope`: comments, processing instructions, whitespace.
    fn epilog(&mut self) -> Result<(), SoapError> {
        loop {
            match self.next()? {
                Event::Eof => break,
                Event::Text(t) if t.xml10_content().trim().is_empty() => {}
                Event::Comment(_) | Event::PI(_) => {}
                _ => return Err(SoapError::Structure("content after the Envelope")),
            }
        }
        Ok(())
    }

    pub(super) fn envelope(mut self, message: &Bytes) -> Result<Envelope, SoapError> {
        let (envelope_tag, version) = self.root()?;
        let mut body_tag = 0..0;
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

        self.epilog()?;
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
    pub(super) fn header_blocks(
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
    pub(super) fn body_entries(
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
    pub(super) fn skip(&mut self) -> Result<usize, SoapError> {
        let end_tag = skip_content(&mut self.reader, self.depth, self.limits.max_depth)?;
        self.close();
        Ok(end_tag)
    }

    /// Parse a Fault whose start tag was just read. Only the elements the
    /// Fault is made of are read; the detail's content and unknown elements
    /// are skipped over.
    pub(super) fn fault(&mut self, version: SoapVersion, message: &Bytes) -> Result<SoapFault, SoapError> {
        let base = self.depth;
        // Local names of the open elements inside the Fault.
        let mut path: Vec<&'a str> = Vec::with_capacity(4);
        let mut text = String::new();
        let mut parts = FaultParts::default();
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
                        parts.detail = Some(match made {
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
                    parts.detail = Some(Bytes::new());
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
                        (SoapVersion::V11, ["faultcode"]) => parts.code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V11, ["faultstring"]) => parts.reason = Some(text.trim().to_owned()),
                        (SoapVersion::V11, ["faultactor"]) => parts.actor = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Code", "Value"]) => parts.code = Some(self.resolve_text_qname(&text)),
                        (SoapVersion::V12, ["Code", .., "Value"]) => {
                            parts.subcodes.push(self.resolve_text_qname(&text))
                        }
                        (SoapVersion::V12, ["Reason", "Text"]) if parts.reason.is_none() => {
                            parts.reason = Some(text.trim().to_owned())
                        }
                        (SoapVersion::V12, ["Node"]) => parts.node = Some(text.trim().to_owned()),
                        (SoapVersion::V12, ["Role"]) => parts.actor = Some(text.trim().to_owned()),
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
        parts.into_fault(version)
    }
}

/// What the elements of a Fault said, as they are read.
#[derive(Default)]
struct FaultParts {
    code: Option<QualifiedName>,
    subcodes: Vec<QualifiedName>,
    reason: Option<String>,
    actor: Option<String>,
    node: Option<String>,
    detail: Option<Bytes>,
}

impl FaultParts {
    /// The Fault of `version` they make; its code is required.
    fn into_fault(mut self, version: SoapVersion) -> Result<SoapFault, SoapError> {
        let code_name = self.code.ok_or(SoapError::Structure("Fault without a code"))?;
        let env_ns = version.namespace();
        let mut local_parts = code_name.local.split('.');
        let head = local_parts.next().unwrap_or_default();
        let standard = code_name.namespace.as_deref() == Some(env_ns) || code_name.namespace.is_none();
        let class = if standard { FaultCode::from_local(head) } else { FaultCode::Other };
        if version == SoapVersion::V11 {
            for part in local_parts {
                self.subcodes.push(QualifiedName { namespace: code_name.namespace.clone(), local: part.to_owned() });
            }
        }
        Ok(SoapFault {
            version,
            code: class,
            code_name,
            subcodes: self.subcodes,
            reason: self.reason.unwrap_or_default(),
            actor: self.actor,
            node: self.node,
            detail: self.detail,
            http_status: None,
        })
    }
}
