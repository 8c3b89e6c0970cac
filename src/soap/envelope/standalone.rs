//! Making a fragment of a message standalone: the namespace declarations it uses added.

use std::collections::{HashMap, HashSet};

use quick_xml::events::Event;
use quick_xml::Reader;

use super::namespaces::{for_each_attribute, rebase, INLINE_BINDINGS};
use crate::soap::error::SoapError;
use crate::soap::skip::{next_event, skip_content};

/// Whether `c` may be in an XML name without a colon (an NCName; XML 1.0
/// fifth edition, `NameChar` less `:`).
pub(super) fn is_ncname_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' | '.' | '\u{B7}'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{203F}'..='\u{2040}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}'
        | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// Declarations in scope that a fragment may be given (see [`standalone`]),
/// with what finding the ones a piece of text uses needs.
pub(super) struct Scope<'d> {
    /// `(prefix, namespace)`, without `xml`/`xmlns` and undeclarations.
    pub(super) decls: Vec<(&'d str, &'d str)>,
    /// Prefix → position, past a few declarations.
    pub(super) index: Option<HashMap<&'d str, usize>>,
    /// The position of the default namespace's declaration.
    pub(super) default: Option<usize>,
    /// The round in which each declaration was last found used.
    pub(super) mark: Vec<u32>,
    pub(super) round: u32,
}

impl<'d> Scope<'d> {
    pub(super) fn new<P: AsRef<str>, N: AsRef<str>>(inherited: &'d [(P, N)]) -> Self {
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
    pub(super) fn used(&mut self, text: &str, out: &mut Vec<usize>) {
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
pub(super) fn standalone<P: AsRef<str>, N: AsRef<str>>(
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
    let mut own: Vec<&str> = Vec::new();
    let mut reader = Reader::from_str(fragment);
    loop {
        let pos = reader.buffer_position() as usize;
        let event = next_event(&mut reader)?;
        let after = reader.buffer_position() as usize;
        let (e, is_start) = match event {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::Eof => break,
            _ => continue,
        };
        let lt = pos + memchr::memchr(b'<', &b[pos..after]).unwrap_or(0);
        let name_end = lt + 1 + e.name().0.len();
        let end = if is_start {
            skip_content(&mut reader, 0, usize::MAX)?;
            reader.buffer_position() as usize
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
            crate::soap::write::escape_into(namespace, &mut out);
            out.push(b'"');
            // All of `out` but the declarations was copied from the fragment up to `copied`.
            if out.len() - copied > *budget {
                return Err(SoapError::TooLarge { limit });
            }
        }
    }
    if copied == 0 {
        return Ok(None);
    }
    out.extend_from_slice(&b[copied..]);
    *budget -= out.len() - b.len();
    Ok(Some(out))
}
