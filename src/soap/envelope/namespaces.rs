//! Namespace declarations in scope, and the checks of a start tag's attributes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use quick_xml::events::attributes::{AttrError, Attribute};
use quick_xml::events::BytesStart;

use crate::soap::error::SoapError;

/// A namespace declaration's prefix or namespace: a slice of the message or,
/// when the attribute needed unescaping, a string held by [`Bindings`].
#[derive(Clone, Copy)]
pub(super) enum NsStr<'a> {
    Borrowed(&'a str),
    Owned(usize),
}

/// A namespace declaration in scope.
#[derive(Clone, Copy)]
pub(super) struct Binding<'a> {
    /// Depth of the declaring element.
    pub(super) depth: usize,
    /// The prefix, "" for the default namespace.
    pub(super) prefix: NsStr<'a>,
    pub(super) namespace: NsStr<'a>,
    /// The position of the declaration of the same prefix this one hides
    /// ([`NONE`] if none); kept once [`Bindings`] has an index.
    pub(super) hides: u32,
}

/// No position.
pub(super) const NONE: u32 = u32::MAX;

/// How many declarations [`Bindings`] holds without allocating: envelopes
/// usually declare a handful of namespaces.
pub(super) const INLINE_BINDINGS: usize = 8;

/// The namespace declarations in scope, innermost last: the first
/// [`INLINE_BINDINGS`] in place, any further ones in a `Vec` (plain values
/// borrowed from the message, so that nothing here allocates or needs
/// dropping for a usual envelope).
///
/// Up to [`INLINE_BINDINGS`] declarations a prefix is looked up by scanning
/// them; past that through a hash index of the innermost declaration of each
/// prefix (each declaration remembering the one it hides), so that a lookup
/// costs the same however many declarations are in scope.
pub(super) struct Bindings<'a> {
    pub(super) inline: [Binding<'a>; INLINE_BINDINGS],
    pub(super) len: usize,
    pub(super) spill: Vec<Binding<'a>>,
    /// The unescaped prefixes and namespaces, in declaration order.
    pub(super) owned: Vec<String>,
    /// Prefix → position of its innermost declaration, once there were more
    /// than [`INLINE_BINDINGS`].
    pub(super) index: Option<HashMap<Cow<'a, str>, u32>>,
}

impl<'a> Bindings<'a> {
    pub(super) fn new() -> Self {
        let empty = Binding { depth: 0, prefix: NsStr::Borrowed(""), namespace: NsStr::Borrowed(""), hides: NONE };
        Bindings { inline: [empty; INLINE_BINDINGS], len: 0, spill: Vec::new(), owned: Vec::new(), index: None }
    }

    pub(super) fn hold(&mut self, s: Cow<'a, str>) -> NsStr<'a> {
        match s {
            Cow::Borrowed(s) => NsStr::Borrowed(s),
            Cow::Owned(s) => {
                self.owned.push(s);
                NsStr::Owned(self.owned.len() - 1)
            }
        }
    }

    /// The index key of `s`.
    pub(super) fn key(&self, s: NsStr<'a>) -> Cow<'a, str> {
        match s {
            NsStr::Borrowed(s) => Cow::Borrowed(s),
            NsStr::Owned(i) => Cow::Owned(self.owned[i].clone()),
        }
    }

    pub(super) fn at(&self, i: usize) -> &Binding<'a> {
        if i < INLINE_BINDINGS {
            &self.inline[i]
        } else {
            &self.spill[i - INLINE_BINDINGS]
        }
    }

    pub(super) fn at_mut(&mut self, i: usize) -> &mut Binding<'a> {
        if i < INLINE_BINDINGS {
            &mut self.inline[i]
        } else {
            &mut self.spill[i - INLINE_BINDINGS]
        }
    }

    /// Note the binding at position `i` in the index.
    pub(super) fn index_one(&mut self, i: usize) {
        let key = self.key(self.at(i).prefix);
        let hides = self.index.as_mut().and_then(|index| index.insert(key, i as u32)).unwrap_or(NONE);
        self.at_mut(i).hides = hides;
    }

    pub(super) fn push(&mut self, depth: usize, prefix: Cow<'a, str>, namespace: Cow<'a, str>) {
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

    pub(super) fn pop(&mut self) {
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

    pub(super) fn last(&self) -> Option<Binding<'a>> {
        self.len.checked_sub(1).map(|i| *self.at(i))
    }

    pub(super) fn get(&self, s: NsStr<'a>) -> &str {
        match s {
            NsStr::Borrowed(s) => s,
            NsStr::Owned(i) => &self.owned[i],
        }
    }

    /// The position of the innermost declaration of `prefix`.
    pub(super) fn position(&self, prefix: &str) -> Option<usize> {
        if let Some(index) = &self.index {
            return index.get(prefix).map(|i| *i as usize);
        }
        (0..self.len).rev().find(|i| self.get(self.at(*i).prefix) == prefix)
    }

    /// The namespace bound to `prefix` by the innermost declaration of it.
    pub(super) fn find(&self, prefix: &str) -> Option<&str> {
        let i = self.position(prefix)?;
        Some(self.get(self.at(i).namespace))
    }

    /// The declarations in scope for an element at `depth` that it does not
    /// make itself: the innermost one of each prefix declared above it,
    /// unless it undeclares the default namespace (`xmlns=""`).
    pub(super) fn inherited(&self, depth: usize) -> impl Iterator<Item = (NsStr<'a>, NsStr<'a>)> + '_ {
        (0..self.len).filter_map(move |i| {
            let b = self.at(i);
            let innermost = self.position(self.get(b.prefix)) == Some(i);
            let declared = !self.get(b.namespace).is_empty();
            (b.depth < depth && innermost && declared).then_some((b.prefix, b.namespace))
        })
    }
}

/// Attribute names of one start tag seen so far, to refuse duplicates as
/// quick-xml's own check does but without the `Vec` it allocates for every
/// tag: up to eight names on the stack, a hash set past that so that a tag
/// with very many attributes is still checked in linear time.
pub(super) struct SeenKeys<'k> {
    pub(super) small: [&'k str; 8],
    pub(super) len: usize,
    pub(super) many: Option<HashSet<&'k str>>,
}

impl<'k> SeenKeys<'k> {
    pub(super) fn new() -> Self {
        SeenKeys { small: [""; 8], len: 0, many: None }
    }

    /// Note `key`; `Err` with the earlier occurrence if it was already seen.
    pub(super) fn insert(&mut self, key: &'k str) -> Result<(), &'k str> {
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
pub(super) fn split_qname(qname: &str) -> (Option<&str>, &str) {
    match qname.bytes().position(|b| b == b':') {
        Some(i) => (Some(&qname[..i]), &qname[i + 1..]),
        None => (None, qname),
    }
}

/// Whether a start tag's attributes may declare a namespace (contain `xmlns`).
pub(super) fn mentions_xmlns(attributes: &str) -> bool {
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
pub(super) fn rebase<'a>(text: &'a str, s: &str) -> Option<&'a str> {
    let offset = (s.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    text.get(offset..offset + s.len()).filter(|t| t.as_ptr() == s.as_ptr())
}

/// Call `f` with every attribute of `e`: syntax and unique names checked (as
/// quick-xml's `attributes()` does), at most `max` of them, errors reported
/// at `at`.
pub(super) fn for_each_attribute<'e>(
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
