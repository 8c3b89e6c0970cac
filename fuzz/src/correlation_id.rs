//! Correlation ids, `traceparent` and `tracestate` from arbitrary bytes:
//! the validators directly, and the same bytes as the headers of a request
//! through `CorrelationIdLayer`.
//!
//! Input: one flag byte, then the bytes to validate. For the layer they are
//! split at `\n` into `x-correlation-id`, `x-request-id`, `traceparent` and
//! any number of `tracestate` fields (each sent only when it is a valid
//! HTTP header value); flag bit 0 makes the layer forbid `,` and `;`.
//!
//! Properties:
//! - nothing panics;
//! - an id is accepted exactly when it is 1 to 128 bytes of visible ASCII
//!   (without the forbidden separators), and then it is a valid header value
//!   equal to the input; a refused id is reported at the right byte;
//! - a `traceparent` is accepted exactly as the W3C rules say (checked by an
//!   independent implementation), and is written back as version 00 with the
//!   same ids and the known flags;
//! - a `tracestate` is within the limits, round-trips, is the same whether
//!   sent as one field or several, and every member can be re-inserted;
//! - the layer gives the handler a valid id — the incoming one when valid,
//!   never an invalid one — on the request, in the extensions, as the
//!   current context and on the response; the same trace with a new parent
//!   id when the `traceparent` is valid, a new trace otherwise (and the bad
//!   trace headers removed).

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_mesh::correlation::{
    CorrelationId, CorrelationIdLayer, InvalidCorrelationId, RequestContext, TraceParent, TraceState, TRACEPARENT,
    TRACESTATE, X_CORRELATION_ID, X_REQUEST_ID,
};

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

thread_local! {
    /// What the handler saw: the request's headers and context, and the current context.
    static SEEN: RefCell<Option<(HeaderMap, RequestContext, Option<RequestContext>)>> = const { RefCell::new(None) };
}

/// The rules of a correlation id, written out again.
fn id_ok(b: &[u8], forbidden: &[u8]) -> bool {
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c) && !forbidden.contains(c))
}

fn check_id(b: &[u8]) {
    let Ok(s) = std::str::from_utf8(b) else { return };
    match CorrelationId::parse(s) {
        Ok(id) => {
            assert!(id_ok(b, b""), "accepted {s:?}");
            assert_eq!(id.as_str(), s);
            assert_eq!(id.as_bytes(), b);
            // A value accepted by the validator is a valid header value, the same bytes.
            let hv = HeaderValue::from_str(id.as_str()).expect("a valid header value");
            assert_eq!(&hv, id.as_header_value());
            assert_eq!(CorrelationId::from_header_value(&hv).as_ref(), Ok(&id));
            assert_eq!(CorrelationId::try_from(s.to_owned()).as_ref(), Ok(&id));
            assert_eq!(id.to_string(), s);
            assert_eq!(RequestContext::from_parts(s, None, None).expect("a valid context").correlation_id, id);
        }
        Err(e) => {
            assert!(!id_ok(b, b""), "refused {s:?}: {e}");
            match e {
                InvalidCorrelationId::Empty => assert!(b.is_empty()),
                InvalidCorrelationId::TooLong { len } => assert!(len == b.len() && len > 128),
                InvalidCorrelationId::InvalidByte { index } => {
                    assert!(b.len() <= 128);
                    assert!(!(0x21..=0x7e).contains(&b[index]), "index {index} of {s:?}");
                    assert!(b[..index].iter().all(|c| (0x21..=0x7e).contains(c)));
                }
                other => panic!("unexpected refusal {other:?}"),
            }
            let _ = e.to_string();
            assert!(RequestContext::from_parts(s, None, None).is_err());
        }
    }
    if let Ok(hv) = HeaderValue::from_bytes(b) {
        assert_eq!(CorrelationId::from_header_value(&hv).is_ok(), id_ok(b, b""));
    }
}

fn lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// W3C Trace Context's `traceparent` rules, written out again.
fn traceparent_ok(v: &[u8]) -> bool {
    if v.len() < 55 || !lower_hex(&v[0..2]) || &v[0..2] == b"ff" {
        return false;
    }
    if &v[0..2] == b"00" && v.len() != 55 {
        return false;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || (v.len() > 55 && v[55] != b'-') {
        return false;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    lower_hex(trace)
        && lower_hex(parent)
        && lower_hex(flags)
        && trace.iter().any(|&c| c != b'0')
        && parent.iter().any(|&c| c != b'0')
}

fn check_traceparent(v: &[u8]) {
    let parsed = TraceParent::parse_bytes(v);
    assert_eq!(parsed.is_ok(), traceparent_ok(v), "{:?}: {parsed:?}", String::from_utf8_lossy(v));
    if let Ok(tp) = parsed {
        let s = tp.to_string();
        assert_eq!(s.len(), TraceParent::LEN);
        assert!(s.starts_with("00-"));
        assert_eq!(s.as_bytes()[3..53], v[3..53], "same trace and parent ids");
        let flags = u8::from_str_radix(std::str::from_utf8(&v[53..55]).unwrap(), 16).unwrap();
        assert_eq!(tp.flags(), flags & 0x03, "only the known flags are kept");
        assert_eq!(TraceParent::parse(&s), Ok(tp));
        assert_eq!(tp.to_header_value(), s.as_str());
        let child = tp.child();
        assert_eq!(child.trace_id(), tp.trace_id());
        assert_ne!(child.parent_id(), tp.parent_id());
        assert_eq!(child.flags(), tp.flags());
    }
}

fn check_tracestate(fields: &[&[u8]]) {
    let joined = fields.join(&b","[..]);
    let Ok(joined_str) = std::str::from_utf8(&joined) else { return };
    let whole = TraceState::parse(joined_str);
    if let Ok(ts) = &whole {
        assert!(ts.len() <= TraceState::MAX_MEMBERS);
        assert!(ts.as_str().len() <= TraceState::MAX_LEN);
        assert_eq!(TraceState::parse(ts.as_str()).as_ref(), Ok(ts), "round trip");
        assert_eq!(ts.as_header_value(), ts.as_str());
        for (k, v) in ts.iter() {
            assert_eq!(ts.get(k), Some(v));
            let again = ts.insert(k, v).expect("a kept member can be inserted again");
            assert_eq!(again.iter().next(), Some((k, v)));
            assert_eq!(again.len(), ts.len());
        }
    }
    // The same list in several header fields.
    let values: Option<Vec<HeaderValue>> = fields.iter().map(|f| HeaderValue::from_bytes(f).ok()).collect();
    if let Some(values) = values.filter(|v| !v.is_empty()) {
        match (TraceState::from_header_values(&values), &whole) {
            (Ok(a), Ok(b)) => assert_eq!(&a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("one field {b:?}, several {a:?}"),
        }
    }
    // Insert a member made of the input.
    if let (Ok(ts), Some((k, v))) = (&whole, joined_str.split_once('=')) {
        if let Ok(next) = ts.insert(k, v) {
            assert!(next.len() <= TraceState::MAX_MEMBERS && next.as_str().len() <= TraceState::MAX_LEN);
            if k.len() + 1 + v.len() <= 128 {
                assert_eq!(next.iter().next(), Some((k, v)), "the inserted member comes first");
            }
            assert_eq!(TraceState::parse(next.as_str()).as_ref(), Ok(&next));
        }
    }
}

fn check_layer(fields: &[&[u8]], forbid: bool) {
    let forbidden: &[u8] = if forbid { b",;" } else { b"" };
    let handler = service_fn(|req: Request<()>| async move {
        let ctx = req.extensions().get::<RequestContext>().cloned().expect("the context is in the extensions");
        SEEN.with(|s| *s.borrow_mut() = Some((req.headers().clone(), ctx, RequestContext::current())));
        Ok::<_, Infallible>(Response::new(()))
    });
    let mut layer = CorrelationIdLayer::new();
    if forbid {
        layer = layer.forbid(forbidden);
    }
    let svc = layer.layer(handler);

    let header = |i: usize| fields.get(i).and_then(|f| HeaderValue::from_bytes(f).ok());
    let mut req = Request::new(());
    let (id, request_id, tp) = (header(0), header(1), header(2));
    for (name, value) in [(X_CORRELATION_ID, &id), (X_REQUEST_ID, &request_id), (TRACEPARENT, &tp)] {
        if let Some(v) = value {
            req.headers_mut().insert(name, v.clone());
        }
    }
    let tracestates: Vec<HeaderValue> = (3..fields.len()).filter_map(header).collect();
    for ts in &tracestates {
        req.headers_mut().append(TRACESTATE, ts.clone());
    }

    SEEN.with(|s| s.borrow_mut().take());
    let res = RT.block_on(svc.oneshot(req)).expect("infallible");
    let (headers, ctx, current) = SEEN.with(|s| s.borrow_mut().take()).expect("the handler ran");

    // The id: valid, the incoming one when that is valid, everywhere the same.
    let used = &ctx.correlation_id;
    assert!(id_ok(used.as_bytes(), forbidden), "the handler never gets an invalid id: {used:?}");
    let valid = |v: &Option<HeaderValue>| v.as_ref().filter(|v| id_ok(v.as_bytes(), forbidden)).cloned();
    match (valid(&id), valid(&request_id)) {
        (Some(v), _) => assert_eq!(used.as_header_value(), &v),
        (None, Some(v)) => assert_eq!(used.as_header_value(), &v),
        (None, None) => {
            assert_eq!(used.as_str().len(), 36, "a fresh UUID");
            assert_eq!(&used.as_str()[14..15], "7", "a UUID v7");
        }
    }
    assert_eq!(headers.get(X_CORRELATION_ID), Some(used.as_header_value()), "the request carries the id in use");
    if valid(&id).is_none() {
        // The id came from x-request-id or was made: the request is rewritten.
        assert!(headers.get(X_REQUEST_ID).is_none(), "x-request-id is replaced by the id in use");
    }
    assert_eq!(res.headers().get(X_CORRELATION_ID), Some(used.as_header_value()), "echoed");
    assert_eq!(current.as_ref(), Some(&ctx), "the context is current in the handler");

    // The trace.
    let this_hop = ctx.traceparent.expect("a trace");
    match tp.as_ref().map(|v| TraceParent::parse_bytes(v.as_bytes())) {
        Some(Ok(incoming)) => {
            assert_eq!(this_hop.trace_id(), incoming.trace_id());
            assert_ne!(this_hop.parent_id(), incoming.parent_id());
            match TraceState::from_header_values(&tracestates) {
                _ if tracestates.is_empty() => assert!(ctx.tracestate.is_none()),
                Ok(ts) => assert_eq!(ctx.tracestate, Some(ts).filter(|t| !t.is_empty())),
                Err(_) => {
                    assert!(headers.get(TRACESTATE).is_none(), "an invalid tracestate is removed");
                    assert!(ctx.tracestate.is_none());
                }
            }
        }
        Some(Err(_)) => {
            assert!(headers.get(TRACEPARENT).is_none(), "an invalid traceparent is removed");
            assert!(headers.get(TRACESTATE).is_none());
            assert!(ctx.tracestate.is_none());
        }
        None => {
            assert!(headers.get(TRACESTATE).is_none(), "no tracestate without a traceparent");
            assert!(ctx.tracestate.is_none());
        }
    }

    // The next hop.
    let mut out = HeaderMap::new();
    ctx.clone().sync_scope(|| RequestContext::current().expect("in scope").inject(&mut out));
    assert_eq!(out.get(X_CORRELATION_ID), Some(used.as_header_value()));
    let sent = TraceParent::parse_bytes(out[TRACEPARENT].as_bytes()).expect("a valid outgoing traceparent");
    assert_eq!(sent.trace_id(), this_hop.trace_id());
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    check_id(rest);
    check_traceparent(rest);
    let fields: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    check_tracestate(&fields);
    for f in &fields {
        check_id(f);
        check_traceparent(f);
    }
    check_layer(&fields, flags & 1 != 0);
}
