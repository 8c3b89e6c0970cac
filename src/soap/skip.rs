//! Skipping an element's content without building events.
//!
//! The envelope parser reads the Envelope, the Header blocks and the first
//! Body element with quick-xml, but the content of the elements it only
//! passes on (the Body entries, handed to the user as a slice) it skips here:
//! quick-xml builds an event for every tag and text run and checks each one's
//! bytes are UTF-8 again (the message was checked once already), which made a
//! 1 KB Body cost more than all the rest of the parse. This scan keeps the
//! checks that matter for content passed on: the nesting depth limit, every
//! end tag matching its start tag, references (XML's five predefined entities
//! and character references only), no `DOCTYPE`, and comments, CDATA
//! sections, processing instructions, tags and quoted attribute values all
//! closed. Like quick-xml's event reader it does not check attribute syntax
//! or name characters; whoever reads the Body does, with a full parser.

use memchr::{memchr, memchr2, memchr3, memmem};
use quick_xml::errors::{IllFormedError, SyntaxError};
use quick_xml::events::BytesRef;

use super::envelope::resolve_ref;
use super::error::SoapError;

/// Open elements tracked without allocating; deeper ones go to a `Vec`.
const INLINE: usize = 16;

/// The names of the elements open inside the skipped one.
struct Open<'t> {
    inline: [&'t str; INLINE],
    spill: Vec<&'t str>,
    len: usize,
}

impl<'t> Open<'t> {
    fn new() -> Self {
        Open { inline: [""; INLINE], spill: Vec::new(), len: 0 }
    }

    fn push(&mut self, name: &'t str) {
        if self.len < INLINE {
            self.inline[self.len] = name;
        } else {
            self.spill.push(name);
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<&'t str> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        if self.len < INLINE {
            Some(self.inline[self.len])
        } else {
            self.spill.pop()
        }
    }
}

fn malformed(at: usize, err: impl Into<quick_xml::Error>) -> SoapError {
    SoapError::xml(at as u64, err.into())
}

/// Skip the content of the element whose start tag ends just before `from`
/// in `text`, the element being at nesting depth `depth` (of at most
/// `max_depth`). Returns the offset of the `</` of its end tag, which is left
/// for the caller's reader (quick-xml checks its name against the start tag
/// it read).
pub(crate) fn skip_content(text: &str, from: usize, depth: usize, max_depth: usize) -> Result<usize, SoapError> {
    let b = text.as_bytes();
    let mut open = Open::new();
    let mut i = from;
    loop {
        let Some(lt) = memchr2(b'<', b'&', &b[i..]).map(|k| i + k) else {
            return Err(SoapError::Structure("unclosed element"));
        };
        if b[lt] == b'&' {
            i = reference(text, lt)?;
            continue;
        }
        match b.get(lt + 1) {
            Some(b'/') => {
                let Some(gt) = memchr(b'>', &b[lt..]).map(|k| lt + k) else {
                    return Err(malformed(lt, SyntaxError::UnclosedTag));
                };
                let found = text[lt + 2..gt].trim_end_matches([' ', '\t', '\r', '\n']);
                match open.pop() {
                    None => return Ok(lt),
                    Some(expected) if expected == found => {}
                    Some(expected) => {
                        let err =
                            IllFormedError::MismatchedEndTag { expected: expected.to_owned(), found: found.to_owned() };
                        return Err(malformed(lt, err));
                    }
                }
                i = gt + 1;
            }
            Some(b'!') => i = bang(b, lt)?,
            // The `?` opening a processing instruction does not close it:
            // `<?>` is unclosed (as quick-xml reads it), whatever follows.
            Some(b'?') => match memmem::find(&b[lt + 2..], b"?>") {
                Some(k) if b.get(lt + 2) != Some(&b'>') => i = lt + 2 + k + 2,
                _ => return Err(malformed(lt, SyntaxError::UnclosedPI)),
            },
            Some(_) => {
                let gt = tag_end(b, lt)?;
                let empty = b[gt - 1] == b'/';
                let inner = &text[lt + 1..if empty { gt - 1 } else { gt }];
                let name_len =
                    inner.bytes().position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(inner.len());
                if name_len == 0 {
                    return Err(malformed(lt, SyntaxError::UnclosedTag));
                }
                if !empty {
                    if depth + open.len + 1 > max_depth {
                        return Err(SoapError::TooDeep { limit: max_depth });
                    }
                    open.push(&inner[..name_len]);
                }
                i = gt + 1;
            }
            None => return Err(malformed(lt, SyntaxError::UnclosedTag)),
        }
    }
}

/// Check the reference starting with the `&` at `at`; returns the offset
/// after its `;`.
fn reference(text: &str, at: usize) -> Result<usize, SoapError> {
    let b = text.as_bytes();
    // A reference ends at the first `;`; markup or another `&` before it
    // means it is not closed.
    let end = match memchr3(b';', b'<', b'&', &b[at + 1..]).map(|k| at + 1 + k) {
        Some(end) if b[end] == b';' => end,
        _ => return Err(malformed(at, IllFormedError::UnclosedReference)),
    };
    resolve_ref(&BytesRef::new(&text[at + 1..end]))?;
    Ok(end + 1)
}

/// Skip the `<!` markup at `lt`: a comment or a CDATA section (a `DOCTYPE`
/// is refused); returns the offset after it.
fn bang(b: &[u8], lt: usize) -> Result<usize, SoapError> {
    let rest = &b[lt + 2..];
    if let Some(body) = rest.strip_prefix(b"--") {
        return match memmem::find(body, b"-->") {
            Some(k) => Ok(lt + 4 + k + 3),
            None => Err(malformed(lt, SyntaxError::UnclosedComment)),
        };
    }
    if let Some(body) = rest.strip_prefix(b"[CDATA[") {
        return match memmem::find(body, b"]]>") {
            Some(k) => Ok(lt + 9 + k + 3),
            None => Err(malformed(lt, SyntaxError::UnclosedCData)),
        };
    }
    if rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"DOCTYPE") {
        return Err(SoapError::DocType);
    }
    Err(malformed(lt, SyntaxError::InvalidBangMarkup))
}

/// The offset of the `>` closing the start or empty tag at `lt`, past quoted
/// attribute values (which may hold a `>`).
fn tag_end(b: &[u8], lt: usize) -> Result<usize, SoapError> {
    let mut i = lt + 1;
    loop {
        let Some(k) = memchr3(b'>', b'"', b'\'', &b[i..]).map(|k| i + k) else {
            return Err(malformed(lt, SyntaxError::UnclosedTag));
        };
        match b[k] {
            b'>' => return Ok(k),
            quote => match memchr(quote, &b[k + 1..]) {
                Some(close) => i = k + 1 + close + 1,
                None if quote == b'"' => return Err(malformed(lt, SyntaxError::UnclosedDoubleQuotedAttributeValue)),
                None => return Err(malformed(lt, SyntaxError::UnclosedSingleQuotedAttributeValue)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quick_xml::events::Event;
    use quick_xml::Reader;

    /// Skip the content of the root of `doc` (e.g. `<r>…</r>`); `Ok` with the
    /// offset of the root's end tag.
    fn skip_root(doc: &str, max_depth: usize) -> Result<usize, SoapError> {
        let from = doc.find('>').unwrap() + 1;
        skip_content(doc, from, 1, max_depth)
    }

    /// The same with quick-xml's events, as the parser did before: `Ok` when
    /// quick-xml reads the whole root with the same checks.
    fn quick_xml_skip(doc: &str, max_depth: usize) -> Result<(), String> {
        let mut reader = Reader::from_str(doc);
        let mut depth = 0usize;
        loop {
            match reader.read_event().map_err(|e| e.to_string())? {
                Event::Start(_) => {
                    depth += 1;
                    if depth > max_depth {
                        return Err("too deep".into());
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Event::GeneralRef(r) => {
                    resolve_ref(&r).map_err(|e| e.to_string())?;
                }
                Event::DocType(_) => return Err("doctype".into()),
                Event::Eof => return Err("eof".into()),
                _ => {}
            }
        }
    }

    #[test]
    fn skips_to_the_end_tag_of_the_element() {
        let doc = "<r><a x=\"1>2\" y='&lt;'>t &amp; &#65; &#x42;<b/><!-- <c> --><![CDATA[<d>]]><?pi x?></a ></r>";
        assert_eq!(skip_root(doc, 10).unwrap(), doc.len() - "</r>".len());
        assert_eq!(skip_root("<r></r>", 10).unwrap(), 3);
        assert_eq!(skip_root("<r>text only</r>", 10).unwrap(), 12);
    }

    #[test]
    fn refuses_what_the_parser_refuses() {
        let err = |doc: &str| skip_root(doc, 3).unwrap_err().to_string();
        assert!(
            err("<r><a></b></r>").contains("expected `</a>`, but `</b>` was found at byte 6"),
            "{}",
            err("<r><a></b></r>")
        );
        assert!(matches!(skip_root("<r><a><b><c></c></b></a></r>", 3), Err(SoapError::TooDeep { limit: 3 })));
        assert!(skip_root("<r><a><b></b></a></r>", 3).is_ok());
        assert!(matches!(skip_root("<r>&ent;</r>", 3), Err(SoapError::UndefinedEntity(_))));
        assert!(matches!(skip_root("<r>&#0;</r>", 3), Err(SoapError::UndefinedEntity(_))));
        assert!(matches!(skip_root("<r>a & b</r>", 3), Err(SoapError::Malformed(_))));
        assert!(matches!(skip_root("<r><!DOCTYPE x></r>", 3), Err(SoapError::DocType)));
        assert!(matches!(skip_root("<r><!doctype x></r>", 3), Err(SoapError::DocType)));
        for unclosed in [
            "<r><a",
            "<r><a x=\"",
            "<r><a x='",
            "<r><!-- x",
            "<r><![CDATA[ x",
            "<r><? x",
            "<r><?>p?></r>",
            "<r></a",
            "<r><!x>",
        ] {
            assert!(matches!(skip_root(unclosed, 3), Err(SoapError::Malformed(_))), "{unclosed}");
        }
        assert!(matches!(skip_root("<r><a>", 3), Err(SoapError::Structure(_))));
        assert!(matches!(skip_root("<r>< a></a></r>", 3), Err(SoapError::Malformed(_))));
    }

    #[test]
    fn deep_nesting_spills_past_the_inline_names() {
        let depth = INLINE * 3;
        let doc = format!("<r>{}{}</r>", "<e>".repeat(depth), "</e>".repeat(depth));
        assert_eq!(skip_root(&doc, depth + 1).unwrap(), doc.len() - 4);
        let bad = format!("<r>{}</f>{}</r>", "<e>".repeat(depth), "</e>".repeat(depth - 1));
        assert!(skip_root(&bad, depth + 1).is_err());
    }

    /// Well-formed content made of elements, text, references, comments,
    /// CDATA and processing instructions.
    fn content() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "[a-z ]{0,8}",
            Just("&amp;".to_owned()),
            Just("&#x41;".to_owned()),
            Just("<!-- c -->".to_owned()),
            Just("<![CDATA[<x>&]]>".to_owned()),
            Just("<?p d?>".to_owned()),
            Just("<e a=\"1>\" b='2'/>".to_owned()),
        ];
        leaf.prop_recursive(6, 64, 4, |inner| {
            (prop::sample::select(vec!["a", "b:c", "d1"]), prop::collection::vec(inner, 0..4))
                .prop_map(|(name, children)| format!("<{name} k=\"v\">{}</{name}>", children.concat()))
        })
    }

    proptest! {
        #[test]
        fn agrees_with_quick_xml_on_well_formed_content(c in content(), max_depth in 1usize..8) {
            let doc = format!("<r>{c}</r>");
            let ours = skip_root(&doc, max_depth);
            let theirs = quick_xml_skip(&doc, max_depth);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{} {:?} {:?}", doc, ours, theirs);
            if let Ok(end) = ours {
                prop_assert_eq!(end, doc.len() - 4);
            }
        }

        #[test]
        fn accepts_nothing_quick_xml_refuses(c in content(), cut in 0usize..64, junk in "[<>&;/!?\\[\\]a-z\"' -]{0,4}") {
            // Damage well-formed content: what quick-xml refuses, the skip
            // (followed by quick-xml reading the end tag it stops at, as in
            // the parser) refuses too; it may refuse more. Never a panic.
            let mut doc = format!("<r>{c}</r>");
            let at = (3 + cut).min(doc.len() - 4);
            doc.insert_str(at, &junk);
            let ours = match skip_root(&doc, 8) {
                Ok(end) => quick_xml_skip(&format!("<r>{}", &doc[end..]), 8).is_ok(),
                Err(_) => false,
            };
            if quick_xml_skip(&doc, 8).is_err() {
                prop_assert!(!ours, "accepted {}", doc);
            }
        }

        #[test]
        fn never_panics_on_any_input(s in "\\PC{0,64}") {
            let doc = format!("<r>{s}");
            let _ = skip_root(&doc, 4);
        }
    }
}
