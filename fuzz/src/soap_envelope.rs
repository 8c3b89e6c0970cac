//! SOAP envelopes from arbitrary bytes: `Envelope::parse` directly, and the
//! same bytes as a request to `SoapServerLayer` and as a response to
//! `SoapEnvelopeLayer`.
//!
//! Input: one flag byte, then (when flag bit 5 is set) an action up to the
//! first `\n`, then the message.
//!
//! Properties:
//! - nothing panics;
//! - a parsed envelope's Body and header blocks are slices of the message on
//!   UTF-8 boundaries, a Fault has the envelope's version, the size limit is
//!   honoured, and a message that parses within tight limits parses the same
//!   within loose ones;
//! - quick-xml reads every message the parser accepts through to its end
//!   without an error (matching end tags, only predefined and character
//!   references, no `DOCTYPE`): the parser skips the Body's content with its
//!   own scan, which must never let through what quick-xml refuses;
//! - the server layer calls the handler exactly when the envelope parses and
//!   has no `mustUnderstand` block for it, with the same Body, version and
//!   first element, and a clean action; every answer it writes (fault or
//!   not) is a well-formed envelope of the right version and status, made
//!   only of XML 1.0 characters;
//! - the client layer's result agrees with a direct parse (fault, version,
//!   HTTP status).

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_mesh::soap::{
    Envelope, FaultCode, SoapEnvelopeLayer, SoapError, SoapLimits, SoapOperation, SoapRequest, SoapServerLayer,
    SoapVersion, SOAP_ACTION,
};

/// Body limit of the layers and of the direct parse: small enough that the
/// fuzzer reaches it.
const MAX_BODY: usize = 2048;

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

/// What the server-side handler was given.
struct Handled {
    body: Bytes,
    op: SoapOperation,
    envelope_body: Bytes,
}

thread_local! {
    static HANDLED: RefCell<Vec<Handled>> = const { RefCell::new(Vec::new()) };
}

fn limits() -> SoapLimits {
    SoapLimits::new().max_body(MAX_BODY).max_depth(16)
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// `part` lies inside `whole`.
fn is_slice_of(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

/// quick-xml reads the whole message, with the checks the parser makes.
fn quick_xml_reads(message: &[u8]) -> Result<(), String> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(message).map_err(|e| e.to_string())?;
    let mut reader = quick_xml::Reader::from_str(text);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Eof => return Ok(()),
            Event::DocType(_) => return Err("DOCTYPE".into()),
            Event::GeneralRef(r) => match r.as_bytes() {
                b"lt" | b"gt" | b"amp" | b"apos" | b"quot" => {}
                _ => match r.resolve_char_ref() {
                    Ok(Some(_)) => {}
                    _ => return Err("an undefined entity".into()),
                },
            },
            _ => {}
        }
    }
}

fn check_envelope(env: &Envelope, message: &Bytes) {
    // The message as parsed: without a UTF-8 byte order mark, or transcoded from UTF-16.
    let parsed = env.message();
    if let Err(e) = quick_xml_reads(parsed) {
        panic!("accepted a message quick-xml refuses: {e}");
    }
    if parsed.len() == message.len() {
        assert_eq!(parsed, message);
    }
    let body = env.body();
    assert!(is_slice_of(&body, parsed), "the Body is a slice of the message");
    assert_eq!(std::str::from_utf8(&body).expect("the Body lies on UTF-8 boundaries"), env.body_str());
    let standalone = env.standalone_body();
    assert!(std::str::from_utf8(standalone).is_ok(), "the standalone Body is UTF-8");
    for h in env.headers() {
        // A slice of the message, or a copy with the declarations it uses added.
        assert!(h.raw().starts_with(b"<"), "a header block starts with its element");
        std::str::from_utf8(h.raw()).expect("a header block lies on UTF-8 boundaries");
        if let Err(e) = quick_xml_reads(h.raw()) {
            panic!("a header block quick-xml refuses: {e}");
        }
    }
    if let Some(f) = env.fault() {
        assert_eq!(f.version(), env.version());
        let first = env.body_element().expect("a Fault is the first Body element");
        assert!(first.is(env.version().namespace(), "Fault"));
        let _ = f.to_string();
        assert!(matches!(env.clone().into_result(), Err(SoapError::Fault(_))));
    } else {
        assert!(env.clone().into_result().is_ok());
    }
    // Deserializing the Body into anything never panics.
    let _ = env.deserialize::<serde::de::IgnoredAny>();
}

fn status_of(selector: u8) -> StatusCode {
    [200, 500, 400, 202, 404, 503, 413, 204][usize::from(selector & 7)].try_into().expect("a status")
}

fn server(message: &Bytes, v12_request: bool, action: Option<&[u8]>, direct: &Result<Envelope, SoapError>) {
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        let op = req.extensions().get::<SoapOperation>().cloned().expect("the operation is in the extensions");
        let envelope_body = req.extensions().get::<Envelope>().expect("the envelope is in the extensions").body();
        let body = http_body_util::BodyExt::collect(req.into_body()).await.expect("infallible").to_bytes();
        HANDLED.with(|h| h.borrow_mut().push(Handled { body, op, envelope_body }));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"<ok/>"))))
    });
    let svc = SoapServerLayer::new().limits(limits()).layer(handler);
    let mut req = Request::post("/soap").body(Full::new(message.clone())).expect("a request");
    let ct = if v12_request { "application/soap+xml; charset=utf-8" } else { "text/xml; charset=utf-8" };
    let mut ct = ct.as_bytes().to_vec();
    if let Some(action) = action {
        if v12_request {
            ct.extend_from_slice(b"; action=");
            ct.extend_from_slice(action);
        } else if let Ok(v) = HeaderValue::from_bytes(action) {
            req.headers_mut().insert(SOAP_ACTION, v);
        }
    }
    let ct = HeaderValue::from_bytes(&ct)
        .unwrap_or_else(|_| HeaderValue::from_static(if v12_request { "application/soap+xml" } else { "text/xml" }));
    let hint = SoapVersion::from_content_type(ct.as_bytes());
    req.headers_mut().insert(http::header::CONTENT_TYPE, ct);

    HANDLED.with(|h| h.borrow_mut().clear());
    let res = RT.block_on(svc.oneshot(req)).expect("infallible");
    let handled = HANDLED.with(|h| std::mem::take(&mut *h.borrow_mut()));

    let status = res.status();
    let bytes = res.into_body().to_bytes();
    let text = std::str::from_utf8(&bytes).expect("the answer is UTF-8");
    if let Some(c) = text.chars().find(|c| !is_xml_char(*c)) {
        panic!("the answer holds {c:?}, not an XML 1.0 character: {text:?}");
    }
    let answer = Envelope::parse(bytes.clone(), &SoapLimits::default())
        .unwrap_or_else(|e| panic!("the answer is not an envelope ({e}): {text:?}"));

    match direct {
        Ok(env) => {
            let must_understand = env.headers().iter().any(|h| h.must_understand() && h.targets_ultimate_receiver());
            assert_eq!(answer.version(), env.version(), "answered in the request's version");
            if env.version() != hint {
                assert!(handled.is_empty(), "an envelope under the other version's media type stops the request");
                assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
                assert!(answer.fault().is_some_and(|f| f.is_client()));
                return;
            }
            if must_understand {
                assert!(handled.is_empty(), "a mustUnderstand block stops the request");
                let fault = answer.fault().expect("a MustUnderstand fault");
                assert!(fault.is_must_understand());
                return;
            }
            assert_eq!(handled.len(), 1, "the handler is called once");
            let h = &handled[0];
            assert_eq!(h.body, env.body(), "the handler gets the Body");
            assert_eq!(h.envelope_body, env.body());
            assert_eq!(h.op.version(), env.version());
            assert_eq!(h.op.element(), env.body_element());
            if let Some(a) = h.op.action() {
                assert!(!a.is_empty() && a.len() <= 1024);
                assert!(a.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"'), "a clean action: {a:?}");
            }
            assert_eq!(status, StatusCode::OK);
            assert!(answer.fault().is_none());
            assert_eq!(answer.body(), "<ok/>");
        }
        Err(e) => {
            assert!(handled.is_empty(), "the handler never sees a message that does not parse");
            let fault = answer.fault().unwrap_or_else(|| panic!("a fault for {e}: {text:?}"));
            match e {
                SoapError::VersionMismatch { .. } => {
                    assert!(fault.is_version_mismatch());
                    assert_eq!(answer.version(), SoapVersion::V11);
                }
                _ => {
                    assert_eq!(fault.code(), FaultCode::Client);
                    assert_eq!(answer.version(), hint);
                }
            }
            let expected = match e {
                SoapError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => fault.status_for(answer.version()),
            };
            assert_eq!(status, expected);
        }
    }
}

fn client(message: &Bytes, v12: bool, status: StatusCode, direct: &Result<Envelope, SoapError>) {
    let version = if v12 { SoapVersion::V12 } else { SoapVersion::V11 };
    let answer = message.clone();
    let transport = service_fn(move |_req: Request<_>| {
        let answer = answer.clone();
        async move {
            let mut res = Response::new(Full::new(answer));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    });
    let svc = SoapEnvelopeLayer::new(http::Uri::from_static("http://127.0.0.1/soap"))
        .version(version)
        .limits(limits())
        .layer(transport);
    let call = SoapRequest::new("<m:Ping xmlns:m=\"urn:m\"/>").action("urn:m#Ping");
    let result = RT.block_on(svc.oneshot(call));
    match (&result, direct) {
        (Ok(res), Ok(env)) => {
            assert!(status.is_success());
            assert!(env.fault().is_none());
            assert_eq!(env.version(), version);
            assert_eq!(res.body(), env.body());
            assert_eq!(res.status(), status);
        }
        (Ok(_), Err(e)) => panic!("the client accepted what does not parse: {e}"),
        (Err(SoapError::Fault(f)), Ok(env)) => {
            let g = env.fault().expect("a fault only from a Fault");
            assert_eq!(f.code(), g.code());
            assert_eq!(f.reason(), g.reason());
            assert_eq!(f.http_status(), Some(status));
        }
        (Err(SoapError::WrongVersion { expected, found }), Ok(env)) => {
            assert_eq!((*expected, *found), (version, env.version()));
        }
        (Err(SoapError::Status(s)), _) => {
            assert_eq!(*s, status);
            assert!(!status.is_success());
        }
        (Err(e), Ok(_)) => panic!("the client refused an envelope: {e}"),
        (Err(e), Err(d)) => assert_eq!(e.to_string(), d.to_string()),
    }
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (action, rest) = if flags & 0x20 != 0 {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        }
    } else {
        (None, rest)
    };
    let message = Bytes::copy_from_slice(rest);

    let direct = Envelope::parse(message.clone(), &limits());
    match &direct {
        Ok(env) => {
            check_envelope(env, &message);
            // Looser limits never refuse what tighter ones accepted.
            let loose = Envelope::parse(message.clone(), &SoapLimits::default()).expect("parses within looser limits");
            assert_eq!(loose.body(), env.body());
            assert_eq!(loose.version(), env.version());
            assert_eq!(loose.headers().len(), env.headers().len());
        }
        Err(SoapError::TooLarge { limit }) => assert!(message.len() > *limit),
        Err(e) => {
            assert!(message.len() <= MAX_BODY || matches!(e, SoapError::TooLarge { .. }));
            let _ = e.to_string();
        }
    }

    server(&message, flags & 1 != 0, action, &direct);
    client(&message, flags & 2 != 0, status_of(flags >> 2), &direct);
}
