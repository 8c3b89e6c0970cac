//! Writing envelopes: the message body type shared by the client and server layers.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::fault::SoapFault;
use super::version::SoapVersion;

/// The envelope prefix used for the elements this crate writes.
pub(crate) const PREFIX: &str = "soap";

#[inline]
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// Append `s` with the five XML special characters escaped (valid in text and
/// in double- or single-quoted attribute values), CR as a character reference
/// (a parser would turn a literal one into LF), and every character XML 1.0
/// does not allow at all (controls other than tab, LF and CR; U+FFFE and
/// U+FFFF) replaced by U+FFFD, so what is written is always well-formed — even
/// a fault reason quoting the bytes of a malformed request.
pub(crate) fn escape_into(s: &str, out: &mut Vec<u8>) {
    const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (rep, len): (&[u8], usize) = match bytes[i] {
            b'&' => (b"&amp;", 1),
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'"' => (b"&quot;", 1),
            b'\'' => (b"&apos;", 1),
            b'\r' => (b"&#xD;", 1),
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0..=0x1f => (REPLACEMENT, 1),
            // U+FFFE and U+FFFF (EF BF BE, EF BF BF in UTF-8).
            0xef if bytes.get(i + 1) == Some(&0xbf) && matches!(bytes.get(i + 2), Some(0xbe | 0xbf)) => {
                (REPLACEMENT, 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn tail() -> Bytes {
    Bytes::from_static(b"</soap:Body></soap:Envelope>")
}

const ENVELOPE_OPEN: &str = "<soap:Envelope xmlns:soap=\"";
const ENVELOPE_OPEN_END: &str = "\">";
const HEADER_OPEN: &str = "<soap:Header>";
const HEADER_CLOSE: &str = "</soap:Header>";
const BODY_OPEN: &str = "<soap:Body>";

/// Start an envelope of `version`: its start tag, up to the opening `Header`
/// or `Body` tag.
pub(crate) fn open_envelope(version: SoapVersion, out: &mut Vec<u8>) {
    push_str(out, ENVELOPE_OPEN);
    push_str(out, version.namespace());
    push_str(out, ENVELOPE_OPEN_END);
}

/// The start of an envelope of `version` without header blocks, up to the
/// opening `Body` tag: what [`open_envelope`] and `<soap:Body>` write, as a
/// static slice.
pub(crate) fn bare_head(version: SoapVersion) -> Bytes {
    Bytes::from_static(match version {
        SoapVersion::V11 => b"<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>",
        SoapVersion::V12 => b"<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\"><soap:Body>",
    })
}

/// A SOAP message as an HTTP body: the envelope's start and end around a
/// payload that is never copied.
///
/// It yields up to three frames (envelope start and headers, the Body
/// content, the envelope end) and knows its exact length.
///
/// ```
/// use bytes::Bytes;
/// use tower_mesh::soap::{EnvelopeBody, SoapVersion};
///
/// let body = EnvelopeBody::new(SoapVersion::V11, &[], Bytes::from_static(b"<m:Ping xmlns:m=\"urn:m\"/>"));
/// assert_eq!(
///     body.to_bytes(),
///     "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
///      <soap:Body><m:Ping xmlns:m=\"urn:m\"/></soap:Body></soap:Envelope>"
/// );
/// ```
///
/// Its `Debug` output shows the message with the content of every
/// `Security` header block (WS-Security: passwords, tokens) left out.
#[derive(Clone, Default)]
pub struct EnvelopeBody {
    parts: [Bytes; 3],
    next: usize,
}

impl EnvelopeBody {
    /// An envelope of `version` with raw XML `header_blocks` (each one
    /// well-formed element with its namespaces declared) around `payload`
    /// (the Body content, raw XML).
    pub fn new(version: SoapVersion, header_blocks: &[Bytes], payload: Bytes) -> Self {
        if header_blocks.is_empty() {
            return Self::from_parts(bare_head(version), payload, tail());
        }
        // Exactly this long: a Vec filled to its capacity becomes Bytes without another allocation.
        let len = ENVELOPE_OPEN.len()
            + version.namespace().len()
            + ENVELOPE_OPEN_END.len()
            + HEADER_OPEN.len()
            + header_blocks.iter().map(Bytes::len).sum::<usize>()
            + HEADER_CLOSE.len()
            + BODY_OPEN.len();
        let mut head = Vec::with_capacity(len);
        open_envelope(version, &mut head);
        push_str(&mut head, HEADER_OPEN);
        for block in header_blocks {
            head.extend_from_slice(block);
        }
        push_str(&mut head, HEADER_CLOSE);
        push_str(&mut head, BODY_OPEN);
        debug_assert_eq!(head.len(), len);
        Self::from_parts(Bytes::from(head), payload, tail())
    }

    /// An envelope whose Body is `fault`, in `version`.
    pub fn fault(version: SoapVersion, fault: &SoapFault) -> Self {
        Self::fault_with_headers(version, &[], fault)
    }

    pub(crate) fn fault_with_headers(version: SoapVersion, header_blocks: &[Bytes], fault: &SoapFault) -> Self {
        let mut out = Vec::with_capacity(512);
        open_envelope(version, &mut out);
        if !header_blocks.is_empty() {
            push_str(&mut out, "<soap:Header>");
            for block in header_blocks {
                out.extend_from_slice(block);
            }
            push_str(&mut out, "</soap:Header>");
        }
        push_str(&mut out, "<soap:Body>");
        fault.write(version, PREFIX, &mut out);
        Self::from_parts(Bytes::from(out), Bytes::new(), tail())
    }

    pub(crate) fn from_parts(head: Bytes, payload: Bytes, tail: Bytes) -> Self {
        EnvelopeBody { parts: [head, payload, tail], next: 0 }
    }

    /// The whole message's length in bytes.
    pub fn len(&self) -> usize {
        self.parts[self.next.min(3)..].iter().map(Bytes::len).sum()
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole (remaining) message in one buffer (copies; for tests and logging).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for part in &self.parts[self.next.min(3)..] {
            out.extend_from_slice(part);
        }
        out.freeze()
    }
}

impl fmt::Debug for EnvelopeBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeBody").field("len", &self.len()).field("message", &Redacted(&self.to_bytes())).finish()
    }
}

/// XML shown in `Debug` output: lossy UTF-8, with the content of every
/// element whose local name is `Security` (the WS-Security header block, in
/// any namespace and with any prefix) replaced by `<!-- redacted -->`.
pub(crate) struct Redacted<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_security(self.0), f)
    }
}

/// See [`Redacted`].
pub(crate) fn redact_security(xml: &[u8]) -> String {
    let text = String::from_utf8_lossy(xml);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    while let Some(lt) = rest.find('<') {
        let after = &rest[lt + 1..];
        let name_len = after.find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/').unwrap_or(after.len());
        let qname = &after[..name_len];
        let local = qname.rsplit(':').next().unwrap_or(qname);
        if local != "Security" {
            out.push_str(&rest[..lt + 1]);
            rest = after;
            continue;
        }
        // The start tag, kept (its attributes are namespaces and mustUnderstand).
        let Some(gt) = after.find('>') else {
            out.push_str(&rest[..lt]);
            out.push_str("<!-- redacted -->");
            return out;
        };
        out.push_str(&rest[..lt + 1 + gt + 1]);
        if after[..gt].ends_with('/') {
            rest = &after[gt + 1..];
            continue;
        }
        out.push_str("<!-- redacted -->");
        let close = format!("</{qname}");
        match after[gt + 1..].find(&close) {
            Some(end) => rest = &after[gt + 1 + end..],
            None => return out,
        }
        // Skip the end tag's name, so it is not taken for another start tag.
        out.push_str(&close);
        rest = &rest[close.len()..];
    }
    out.push_str(rest);
    out
}

impl Body for EnvelopeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        while self.next < 3 {
            let i = self.next;
            self.next += 1;
            let part = std::mem::take(&mut self.parts[i]);
            if !part.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{service_fn, Layer, ServiceExt};

    use super::*;
    use crate::soap::{Envelope, SoapLimits, SoapServerLayer};

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        escape_into(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_markup_and_replaces_what_xml_cannot_hold() {
        assert_eq!(escaped("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escaped("tab\tlf\ncr\r"), "tab\tlf\ncr&#xD;");
        assert_eq!(escaped("nul\0bel\u{7}esc\u{1b}"), "nul\u{FFFD}bel\u{FFFD}esc\u{FFFD}");
        assert_eq!(escaped("\u{FFFE}x\u{FFFF}\u{FFFD}\u{EFBF}"), "\u{FFFD}x\u{FFFD}\u{FFFD}\u{EFBF}");
        assert_eq!(escaped("caf\u{e9} \u{1F511} \u{7f}"), "caf\u{e9} \u{1F511} \u{7f}");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn redaction_leaves_out_security_content_only() {
        let r = |s: &str| redact_security(s.as_bytes());
        assert_eq!(
            r("<h><wsse:Security a=\"1\"><wsse:Password>pw</wsse:Password></wsse:Security><x>y</x></h>"),
            "<h><wsse:Security a=\"1\"><!-- redacted --></wsse:Security><x>y</x></h>"
        );
        assert_eq!(r("<Security/><Security>p</Security>"), "<Security/><Security><!-- redacted --></Security>");
        assert_eq!(r("<s:Security>pw never closed"), "<s:Security><!-- redacted -->");
        assert_eq!(r("<s:Security"), "<!-- redacted -->");
        assert_eq!(r("<SecurityToken>t</SecurityToken>"), "<SecurityToken>t</SecurityToken>");
        assert_eq!(r("a < b"), "a < b");
    }

    #[test]
    fn a_fault_reason_with_control_characters_is_well_formed() {
        let fault = SoapFault::client("bad\0byte\r\n").with_actor("urn:\u{1}actor");
        for version in [SoapVersion::V11, SoapVersion::V12] {
            let bytes = EnvelopeBody::fault(version, &fault).to_bytes();
            assert!(!bytes.iter().any(|&b| b < 0x20 && !b"\t\n\r".contains(&b)));
            let env = Envelope::parse(bytes, &SoapLimits::default()).unwrap();
            let parsed = env.fault().unwrap();
            assert_eq!(parsed.reason(), "bad\u{FFFD}byte");
            assert_eq!(parsed.actor(), Some("urn:\u{FFFD}actor"));
        }
    }

    /// Found by the `soap_envelope` fuzz target: the fault answering a
    /// malformed request quotes the parser's message, which quotes the
    /// request's bytes (here a NUL in an end tag); the answer held the NUL
    /// and no XML 1.0 parser could read it.
    #[tokio::test]
    async fn the_fault_for_a_malformed_request_quoting_its_bytes_is_well_formed() {
        let handler = service_fn(|_req: http::Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
        });
        let request =
            "<e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\"><e:Body><a></a\0\0></e:Body></e:Envelope>";
        let req = http::Request::post("/")
            .header(http::header::CONTENT_TYPE, "application/soap+xml")
            .body(Full::new(Bytes::from_static(request.as_bytes())))
            .unwrap();
        let res = SoapServerLayer::new().layer(handler).oneshot(req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
        let bytes = res.into_body().to_bytes();
        assert!(!bytes.contains(&0), "{}", String::from_utf8_lossy(&bytes));
        let answer = Envelope::parse(bytes, &SoapLimits::default()).unwrap();
        let fault = answer.fault().unwrap();
        assert!(fault.is_client());
        assert!(fault.reason().contains("</a\u{FFFD}\u{FFFD}>"), "{}", fault.reason());
    }
}
