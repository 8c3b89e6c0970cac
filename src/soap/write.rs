//! Writing envelopes: the message body type shared by the client and server layers.

use std::convert::Infallible;
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
/// in double- or single-quoted attribute values).
pub(crate) fn escape_into(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&apos;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn tail() -> Bytes {
    Bytes::from_static(b"</soap:Body></soap:Envelope>")
}

/// Start an envelope of `version` up to the opening `Header` tag (when
/// `with_header`) or the opening `Body` tag.
pub(crate) fn open_envelope(version: SoapVersion, out: &mut Vec<u8>) {
    push_str(out, "<soap:Envelope xmlns:soap=\"");
    push_str(out, version.namespace());
    push_str(out, "\">");
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
#[derive(Clone, Debug, Default)]
pub struct EnvelopeBody {
    parts: [Bytes; 3],
    next: usize,
}

impl EnvelopeBody {
    /// An envelope of `version` with raw XML `header_blocks` (each one
    /// well-formed element with its namespaces declared) around `payload`
    /// (the Body content, raw XML).
    pub fn new(version: SoapVersion, header_blocks: &[Bytes], payload: Bytes) -> Self {
        let mut head = Vec::with_capacity(128 + header_blocks.iter().map(Bytes::len).sum::<usize>());
        open_envelope(version, &mut head);
        if !header_blocks.is_empty() {
            push_str(&mut head, "<soap:Header>");
            for block in header_blocks {
                head.extend_from_slice(block);
            }
            push_str(&mut head, "</soap:Header>");
        }
        push_str(&mut head, "<soap:Body>");
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
