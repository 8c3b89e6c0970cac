//! Skipping an element's content with quick-xml's reader.
//!
//! The envelope parser resolves names only where it has to (the Envelope,
//! the Header blocks' start tags, the first Body element, a Fault); the
//! content of the elements it only passes on (the Body entries, handed to
//! the user as a slice; header blocks; a Fault's detail) it reads here as
//! quick-xml events and drops them. quick-xml checks the markup (every end
//! tag matching its start tag, comments, CDATA sections, processing
//! instructions, tags and quoted attribute values all closed); this adds the
//! checks of the rest of the parse: the nesting depth limit, references
//! (XML's five predefined entities and character references only, never
//! expanded past that) and no `DOCTYPE`.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::envelope::resolve_ref;
use super::error::SoapError;

/// The next event of `reader`: a `DOCTYPE` is refused, errors are reported
/// at the reader's error position.
pub(crate) fn next_event<'a>(reader: &mut Reader<&'a [u8]>) -> Result<Event<'a>, SoapError> {
    match reader.read_event() {
        Ok(Event::DocType(_)) => Err(SoapError::DocType),
        Ok(e) => Ok(e),
        Err(e) => Err(SoapError::xml(reader.error_position(), e)),
    }
}

/// Read the content of the element whose start tag `reader` has just read,
/// up to and including its end tag, the element being at nesting depth
/// `depth` (of at most `max_depth`). Returns the offset (in the reader's
/// input) of the `<` of the end tag.
pub(crate) fn skip_content(reader: &mut Reader<&[u8]>, depth: usize, max_depth: usize) -> Result<usize, SoapError> {
    let mut open = 0usize;
    loop {
        let before = reader.buffer_position() as usize;
        match next_event(reader)? {
            Event::Start(_) => {
                open += 1;
                if depth + open > max_depth {
                    return Err(SoapError::TooDeep { limit: max_depth });
                }
            }
            Event::End(_) if open == 0 => return Ok(before),
            Event::End(_) => open -= 1,
            Event::GeneralRef(r) => {
                resolve_ref(&r)?;
            }
            Event::Eof => return Err(SoapError::Structure("unclosed element")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Skip the content of the root of `doc` (e.g. `<r>…</r>`); `Ok` with the
    /// offset of the root's end tag.
    fn skip_root(doc: &str, max_depth: usize) -> Result<usize, SoapError> {
        let mut reader = Reader::from_str(doc);
        match next_event(&mut reader)? {
            Event::Start(_) => skip_content(&mut reader, 1, max_depth),
            e => panic!("not a start tag: {e:?}"),
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
        assert!(err("<r><a></b></r>").contains("expected `</a>`, but `</b>` was found"), "{}", err("<r><a></b></r>"));
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
    fn deep_nesting_within_the_limit_is_read() {
        let depth = 48;
        let doc = format!("<r>{}{}</r>", "<e>".repeat(depth), "</e>".repeat(depth));
        assert_eq!(skip_root(&doc, depth + 1).unwrap(), doc.len() - 4);
        assert!(matches!(skip_root(&doc, depth), Err(SoapError::TooDeep { .. })));
        let bad = format!("<r>{}</f>{}</r>", "<e>".repeat(depth), "</e>".repeat(depth - 1));
        assert!(skip_root(&bad, depth + 1).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(s in "\\PC{0,64}") {
            let doc = format!("<r>{s}");
            let _ = skip_root(&doc, 4);
        }
    }
}
