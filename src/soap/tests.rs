use bytes::Bytes;

use super::*;

fn parse(s: &str) -> Result<Envelope, SoapError> {
    Envelope::parse(Bytes::copy_from_slice(s.as_bytes()), &SoapLimits::default())
}

const ENV11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

#[test]
fn body_and_header_blocks_are_exact_slices() {
    let msg = format!(
        "<?xml version=\"1.0\"?>\n<s:Envelope xmlns:s=\"{ENV11}\">\n <s:Header>\n  <a:One xmlns:a=\"urn:a\" s:mustUnderstand=\"1\">x</a:One>\n  <b:Two xmlns:b=\"urn:b\" s:actor=\"urn:other\"/>\n </s:Header>\n <s:Body>  <m:Op xmlns:m=\"urn:m\"><v>1 &lt; 2</v></m:Op>  </s:Body>\n</s:Envelope>\n"
    );
    let env = parse(&msg).unwrap();
    assert_eq!(env.version(), SoapVersion::V11);
    assert_eq!(env.body_str(), "  <m:Op xmlns:m=\"urn:m\"><v>1 &lt; 2</v></m:Op>  ");
    assert_eq!(env.body_element(), Some(&QualifiedName::new("urn:m", "Op")));
    let h = env.headers();
    assert_eq!(h.len(), 2);
    // The blocks use the Envelope's `s` prefix: its declaration is carried onto them.
    let declared = format!("xmlns:s=\"{ENV11}\"");
    assert_eq!(
        std::str::from_utf8(h[0].raw()).unwrap(),
        format!("<a:One {declared} xmlns:a=\"urn:a\" s:mustUnderstand=\"1\">x</a:One>")
    );
    assert!(h[0].must_understand() && h[0].targets_ultimate_receiver());
    assert_eq!(h[0].name(), &QualifiedName::new("urn:a", "One"));
    assert_eq!(
        std::str::from_utf8(h[1].raw()).unwrap(),
        format!("<b:Two {declared} xmlns:b=\"urn:b\" s:actor=\"urn:other\"/>")
    );
    assert!(!h[1].must_understand());
    assert_eq!(h[1].role(), Some("urn:other"));
    assert!(!h[1].targets_ultimate_receiver());
    assert!(env.fault().is_none());
    // The body is a view into the same allocation.
    assert_eq!(env.body().as_ptr(), env.message()[msg.find("  <m:Op").unwrap()..].as_ptr());
}

#[test]
fn empty_body_and_default_namespace() {
    let env = parse("<Envelope xmlns=\"http://www.w3.org/2003/05/soap-envelope\"><Body/></Envelope>").unwrap();
    assert_eq!(env.version(), SoapVersion::V12);
    assert_eq!(env.body_str(), "");
    assert!(env.body_element().is_none());
}

type Check = fn(&SoapError) -> bool;

#[test]
fn refusals_are_typed() {
    let cases: &[(&str, Check)] = &[
        ("<!DOCTYPE x [<!ENTITY a \"aaaa\">]><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>&a;</s:Body></s:Envelope>", |e| matches!(e, SoapError::DocType)),
        ("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><x>&lol9;</x></s:Body></s:Envelope>", |e| matches!(e, SoapError::UndefinedEntity(n) if n == "lol9")),
        ("<s:Envelope xmlns:s=\"urn:not-soap\"><s:Body/></s:Envelope>", |e| matches!(e, SoapError::VersionMismatch { namespace } if namespace == "urn:not-soap")),
        ("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"></s:Envelope>", |e| matches!(e, SoapError::Structure(_))),
        ("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><a></b></s:Body></s:Envelope>", |e| matches!(e, SoapError::Malformed(_))),
        ("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><a>", |e| matches!(e, SoapError::Structure(_) | SoapError::Malformed(_))),
        ("<html><body>502 Bad Gateway</body></html>", |e| matches!(e, SoapError::NotAnEnvelope)),
        ("", |e| matches!(e, SoapError::NotAnEnvelope)),
        ("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope><extra/>", |e| matches!(e, SoapError::Structure(_) | SoapError::Malformed(_))),
    ];
    for (doc, check) in cases {
        let err = parse(doc).unwrap_err();
        assert!(check(&err), "{doc}: {err:?}");
    }
    assert!(matches!(
        Envelope::parse(Bytes::from_static(b"\xff\xfe<"), &SoapLimits::default()),
        Err(SoapError::NotUtf8)
    ));
}

#[test]
fn size_and_depth_limits() {
    let deep = format!(
        "<s:Envelope xmlns:s=\"{ENV11}\"><s:Body>{}{}</s:Body></s:Envelope>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert!(matches!(parse(&deep), Err(SoapError::TooDeep { limit: 64 })));
    let ok = Envelope::parse(Bytes::from(deep.clone()), &SoapLimits::new().max_depth(200));
    assert!(ok.is_ok());
    let small = SoapLimits::new().max_body(10);
    assert!(matches!(Envelope::parse(Bytes::from(deep), &small), Err(SoapError::TooLarge { limit: 10 })));
}

#[test]
fn written_faults_parse_back_in_both_versions() {
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let fault = SoapFault::client("bad <input> & \"more\"")
            .with_subcode(QualifiedName::new("urn:app", "InvalidAccount"))
            .with_actor("urn:billing")
            .with_detail("<e:code xmlns:e=\"urn:app\">42</e:code>");
        let body = EnvelopeBody::fault(version, &fault).to_bytes();
        let env = Envelope::parse(body, &SoapLimits::default()).unwrap();
        let back = env.fault().unwrap();
        assert_eq!(back.version(), version);
        assert!(back.is_client());
        assert_eq!(back.reason(), "bad <input> & \"more\"");
        assert_eq!(back.actor(), Some("urn:billing"));
        assert_eq!(back.subcodes()[0].local, "InvalidAccount");
        if version == SoapVersion::V12 {
            assert_eq!(back.subcodes()[0].namespace.as_deref(), Some("urn:app"));
        }
        assert_eq!(&back.detail().unwrap()[..], &b"<e:code xmlns:e=\"urn:app\">42</e:code>"[..]);
    }
}

#[test]
fn username_token_digest_and_freshness() {
    let token = UsernameToken::digest("alice", "s3cret").timestamp(None);
    let mut out = Vec::new();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_704_067_200); // 2024-01-01
    token.write_with(SoapVersion::V11, t, b"0123456789abcdef", &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains("<wsse:Username>alice</wsse:Username>"));
    assert!(s.contains("#PasswordDigest\">OV9P0br1OAsNn9E57LcrmYfobc0=</wsse:Password>"), "{s}");
    assert!(s.contains(">MDEyMzQ1Njc4OWFiY2RlZg==</wsse:Nonce>"));
    assert!(s.contains("<wsu:Created>2024-01-01T00:00:00.000Z</wsu:Created>"));
    assert!(!s.contains("s3cret"));

    let mut a = Vec::new();
    let mut b = Vec::new();
    token.write(SoapVersion::V11, &mut a).unwrap();
    token.write(SoapVersion::V11, &mut b).unwrap();
    let nonce = |v: &[u8]| {
        let s = std::str::from_utf8(v).unwrap().to_owned();
        let start = s.find("Base64Binary\">").unwrap() + 14;
        s[start..start + 24].to_owned()
    };
    assert_ne!(nonce(&a), nonce(&b), "a fresh nonce per request");

    let text = UsernameToken::text("bob", "p<w>");
    let mut out = Vec::new();
    text.write(SoapVersion::V12, &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains("#PasswordText\">p&lt;w&gt;</wsse:Password>"));
    assert!(s.contains("soap:mustUnderstand=\"true\""));
    assert!(s.contains("<wsu:Timestamp><wsu:Created>"));
}

#[test]
fn classifier_counts_server_faults_only() {
    use crate::classify::{Classify, Outcome};
    let c = SoapClassifier::new();
    let outcome = |e: SoapError| Classify::<(), SoapError>::classify(&c, Err(&e));
    assert_eq!(outcome(SoapFault::server("x").into()), Outcome::Failure(SERVER_FAULT));
    assert_eq!(outcome(SoapFault::client("x").into()), Outcome::Success);
    assert_eq!(outcome(SoapFault::new(FaultCode::MustUnderstand, "x").into()), Outcome::Success);
    assert_eq!(outcome(SoapFault::new(FaultCode::VersionMismatch, "x").into()), Outcome::Success);
    assert!(outcome(SoapError::Status(http::StatusCode::BAD_GATEWAY)).is_failure());
    assert!(outcome(SoapError::Transport("refused".into())).is_failure());
    let ignoring = SoapClassifier::new().client_faults(Outcome::Ignored);
    let e: SoapError = SoapFault::client("x").into();
    assert_eq!(Classify::<(), SoapError>::classify(&ignoring, Err(&e)), Outcome::Ignored);
    // Boxed errors too.
    let boxed: crate::BoxError = Box::new(SoapFault::server("x"));
    assert!(Classify::<(), crate::BoxError>::classify(&c, Err(&boxed)).is_failure());
    let boxed: crate::BoxError = Box::new(SoapError::from(SoapFault::client("x")));
    assert_eq!(Classify::<(), crate::BoxError>::classify(&c, Err(&boxed)), Outcome::Success);
    assert_eq!(Classify::<u8, SoapError>::classify(&c, Ok(&1)), Outcome::Success);
}

#[test]
fn wsdl_url_credentials() {
    let u = WsdlUrl::parse("https://secure.example.com/service?WSDL&user=username&password=pa%20ss").unwrap();
    assert_eq!(u.uri(), "https://secure.example.com/service?WSDL");
    assert_eq!(u.username(), Some("username"));
    assert!(u.has_password());
    let auth = u.authorization().unwrap();
    assert!(auth.is_sensitive());
    // base64("username:pa ss")
    assert_eq!(auth, "Basic dXNlcm5hbWU6cGEgc3M=");
    assert!(!u.to_string().contains("pa ss") && !format!("{u:?}").contains("pa"));
    let plain = WsdlUrl::parse("http://127.0.0.1:8080/calc?wsdl").unwrap();
    assert!(plain.authorization().is_none());
    assert_eq!(plain.to_string(), "http://127.0.0.1:8080/calc?wsdl");
    // Credentials in both places: the user-info's are used, and the query's
    // copy is neither sent nor shown.
    let both = WsdlUrl::parse("https://alice:first@example.com/svc?wsdl&password=second&user=bob").unwrap();
    assert_eq!(both.username(), Some("alice"));
    assert_eq!(both.uri().to_string(), "https://example.com/svc?wsdl");
    assert!(!both.to_string().contains("second") && !both.to_string().contains("first"), "{both}");
    assert!(!format!("{both:?}").contains("second"));
    assert!(WsdlUrl::parse("ftp://x/y").is_err());
    assert!(WsdlUrl::parse("no-scheme").is_err());
    assert!(WsdlUrl::parse("http://u:%zz@h/").is_err());
}

#[test]
fn bare_envelope_heads_are_what_the_writer_writes() {
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let mut head = Vec::new();
        write::open_envelope(version, &mut head);
        head.extend_from_slice(b"<soap:Body>");
        assert_eq!(write::bare_head(version), head);
        // With header blocks the head is written (at its exact length, checked in debug builds).
        let blocks = [Bytes::from_static(b"<h:A xmlns:h=\"urn:h\"/>"), Bytes::from_static(b"<h:B xmlns:h=\"urn:h\"/>")];
        let mut expected = Vec::new();
        write::open_envelope(version, &mut expected);
        expected.extend_from_slice(
            b"<soap:Header><h:A xmlns:h=\"urn:h\"/><h:B xmlns:h=\"urn:h\"/></soap:Header><soap:Body><p/>",
        );
        expected.extend_from_slice(b"</soap:Body></soap:Envelope>");
        assert_eq!(EnvelopeBody::new(version, &blocks, Bytes::from_static(b"<p/>")).to_bytes(), expected);
    }
}

#[test]
fn soap_action_values() {
    assert_eq!(client::action_value_for_test(SoapVersion::V11, Some("urn:a#b")).unwrap(), "\"urn:a#b\"");
    assert_eq!(client::action_value_for_test(SoapVersion::V11, None).unwrap(), "\"\"");
    assert_eq!(
        client::action_value_for_test(SoapVersion::V12, Some("urn:a")).unwrap(),
        "application/soap+xml; charset=utf-8; action=\"urn:a\""
    );
    assert!(client::action_value_for_test(SoapVersion::V11, Some("a\"b")).is_err());
    assert_eq!(client::action_value_for_test(SoapVersion::V12, None).unwrap(), "application/soap+xml; charset=utf-8");
    assert!(client::action_value_for_test(SoapVersion::V12, Some("a\r\nX: y")).is_err());
}

#[tokio::test]
async fn client_readiness_follows_the_transport() {
    use std::task::Poll;
    use tower::Layer;
    use tower_service::Service;

    let (mock, mut handle) = tower_test::mock::pair::<http::Request<EnvelopeBody>, http::Response<String>>();
    let mut client = SoapEnvelopeLayer::new("http://127.0.0.1/".parse().unwrap()).layer(mock);
    handle.allow(0);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(client.poll_ready(&mut cx).is_pending(), "not ready while the transport is not");
    handle.allow(1);
    assert!(matches!(client.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = client.call(SoapRequest::new("<a/>").action("urn:x"));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.headers()["content-type"], "text/xml; charset=utf-8");
    assert_eq!(req.headers()["soapaction"], "\"urn:x\"");
    let fault = EnvelopeBody::fault(SoapVersion::V11, &SoapFault::server("down")).to_bytes();
    let mut res = http::Response::new(String::from_utf8(fault.to_vec()).unwrap());
    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    send.send_response(res);
    let err = fut.await.unwrap_err();
    assert!(err.fault().unwrap().is_server());
    assert_eq!(err.fault().unwrap().http_status(), Some(http::StatusCode::INTERNAL_SERVER_ERROR));

    // A transport error is typed and keeps its source.
    handle.allow(1);
    assert!(matches!(client.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = client.call(SoapRequest::new("<a/>"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("connection reset"));
    let err = fut.await.unwrap_err();
    assert!(matches!(err, SoapError::Transport(_)));
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("connection reset"));
}

#[tokio::test]
async fn server_answers_a_failed_readiness_with_a_fault_and_cancels_cleanly() {
    use tower::Layer;
    use tower_service::Service;

    let (mock, mut handle) =
        tower_test::mock::pair::<http::Request<http_body_util::Full<Bytes>>, http::Response<String>>();
    let mut server = SoapServerLayer::new().layer(mock);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    handle.send_error(std::io::Error::other("pool closed"));
    assert!(
        Service::<http::Request<EnvelopeBody>>::poll_ready(&mut server, &mut cx).is_ready(),
        "the server layer never fails"
    );
    let body = EnvelopeBody::new(SoapVersion::V12, &[], Bytes::from_static(b"<a/>"));
    let mut req = http::Request::new(body);
    req.headers_mut().insert("content-type", http::HeaderValue::from_static("application/soap+xml"));
    let res = server.call(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let env = Envelope::parse(res.into_body().to_bytes(), &SoapLimits::default()).unwrap();
    assert!(env.fault().unwrap().is_server());
    assert_eq!(env.version(), SoapVersion::V12);

    // Dropping a call while the handler runs releases it.
    let (mock, mut handle) =
        tower_test::mock::pair::<http::Request<http_body_util::Full<Bytes>>, http::Response<String>>();
    let mut server = SoapServerLayer::new().layer(mock);
    handle.allow(1);
    assert!(Service::<http::Request<EnvelopeBody>>::poll_ready(&mut server, &mut cx).is_ready());
    let body = EnvelopeBody::new(SoapVersion::V11, &[], Bytes::from_static(b"<a/>"));
    let mut req = http::Request::new(body);
    req.headers_mut().insert("content-type", http::HeaderValue::from_static("text/xml"));
    let mut fut = Box::pin(server.call(req));
    assert!(futures::poll!(&mut fut).is_pending());
    let (_req, send) = handle.next_request().await.unwrap();
    drop(fut);
    // The handler's answer goes nowhere, and the service keeps working.
    send.send_response(http::Response::new(String::new()));
    handle.allow(1);
    assert!(Service::<http::Request<EnvelopeBody>>::poll_ready(&mut server, &mut cx).is_ready());
    let body = EnvelopeBody::new(SoapVersion::V11, &[], Bytes::from_static(b"<a/>"));
    let mut req = http::Request::new(body);
    req.headers_mut().insert("content-type", http::HeaderValue::from_static("text/xml"));
    let mut fut = Box::pin(server.call(req));
    assert!(futures::poll!(&mut fut).is_pending(), "the body is read and the handler called");
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<SoapOperation>().and_then(SoapOperation::name), Some("a"));
    send.send_response(http::Response::new("<b/>".to_owned()));
    let res = fut.await.unwrap();
    let env = Envelope::parse(res.into_body().to_bytes(), &SoapLimits::default()).unwrap();
    assert_eq!(env.body_str(), "<b/>");
}

/// The message quick-xml's own (allocating) duplicate check gives for the start tag `tag`.
fn quick_xml_duplicate_error(tag: &str) -> String {
    let mut reader = quick_xml::Reader::from_str(tag);
    let quick_xml::events::Event::Empty(e) = reader.read_event().unwrap() else { panic!("not an empty tag: {tag}") };
    let err = e.attributes().find_map(Result::err).unwrap_or_else(|| panic!("no duplicate in {tag}"));
    quick_xml::Error::from(err).to_string()
}

#[test]
fn duplicate_attributes_are_refused_as_quick_xml_refuses_them() {
    let many: String = (0..20).map(|i| format!(" a{i}=\"{i}\"")).collect();
    let cases = [
        format!("<s:Envelope xmlns:s=\"{ENV11}\" xmlns:s=\"{ENV11}\"><s:Body/></s:Envelope>"),
        format!("<s:Envelope xmlns:s=\"{ENV11}\"><s:Body><m:Op xmlns:m=\"urn:m\" x=\"1\" x=\"2\"/></s:Body></s:Envelope>"),
        format!("<s:Envelope xmlns:s=\"{ENV11}\"><s:Header><h:H xmlns:h=\"urn:h\" s:mustUnderstand=\"1\" s:mustUnderstand=\"0\"/></s:Header><s:Body/></s:Envelope>"),
        // Past the names kept on the stack: the hash-set path.
        format!("<s:Envelope xmlns:s=\"{ENV11}\"{many} a3=\"again\"><s:Body/></s:Envelope>"),
    ];
    for doc in &cases {
        let err = parse(doc).unwrap_err();
        let SoapError::Malformed(xml) = &err else { panic!("{doc}: {err:?}") };
        // Same message (with the same positions in the tag) as quick-xml's own check.
        let start = doc.find("<m:Op").or_else(|| doc.find("<h:H")).unwrap_or(0);
        let tag = &doc[start..start + doc[start..].find('>').unwrap()];
        let tag = format!("{}/>", tag.trim_end_matches('/'));
        assert!(xml.to_string().starts_with(&quick_xml_duplicate_error(&tag)), "{doc}: {xml}");
    }
    // Many distinct attributes are fine.
    let env = parse(&format!(
        "<s:Envelope xmlns:s=\"{ENV11}\"{many}><s:Body><m:Op xmlns:m=\"urn:m\"{many}/></s:Body></s:Envelope>"
    ))
    .unwrap();
    assert_eq!(env.body_element(), Some(&QualifiedName::new("urn:m", "Op")));
}

#[test]
fn many_and_escaped_namespace_declarations_resolve() {
    // Ten declarations on the Envelope (more than are kept in place), one with a reference.
    let decls: String = (0..10).map(|i| format!(" xmlns:p{i}=\"urn:p{i}\"")).collect();
    let env = |header: &str, body: &str| {
        format!("<s:Envelope xmlns:s=\"{ENV11}\"{decls}><s:Header>{header}</s:Header><s:Body xmlns:q=\"urn:q&amp;x\">{body}</s:Body></s:Envelope>")
    };
    let cases = [
        (env("", "<p9:Op/>"), QualifiedName::new("urn:p9", "Op")),
        (env("", "<q:Op><x/></q:Op>"), QualifiedName::new("urn:q&x", "Op")),
        (env("", "<p3:Op xmlns:p3=\"urn:o&#x41;\"/>"), QualifiedName::new("urn:oA", "Op")),
        (env("", "<p3:Op xmlns:p3=\"urn:over\"><p3:x/></p3:Op>"), QualifiedName::new("urn:over", "Op")),
        (env("", "<Op xmlns=\"urn:d&lt;\"/>"), QualifiedName::new("urn:d<", "Op")),
        (env("", "<Op/>"), QualifiedName::local("Op")),
        // A header block's escaped declaration is out of scope in the Body.
        (
            env("<h:H xmlns:h=\"urn:h&amp;\"/><p0:H2 xmlns:p0=\"urn:h2\"/>", "<p0:Op/>"),
            QualifiedName::new("urn:p0", "Op"),
        ),
    ];
    for (doc, name) in &cases {
        let parsed = parse(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(parsed.body_element(), Some(name), "{doc}");
        assert!(format!("{parsed:?}").contains(&format!("local: \"{}\"", name.local)));
    }
    let parsed = parse(&cases[6].0).unwrap();
    assert_eq!(parsed.headers()[0].name(), &QualifiedName::new("urn:h&", "H"));
    assert_eq!(parsed.headers()[1].name(), &QualifiedName::new("urn:h2", "H2"));
}

/// An envelope (SOAP 1.1) with `decls` on the Envelope, `header` in the Header and `body` in the Body.
fn envelope_with(decls: &str, header: &str, body: &str) -> String {
    format!("<s:Envelope xmlns:s=\"{ENV11}\"{decls}><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>")
}

#[test]
fn floods_past_the_limits_are_refused_with_typed_errors() {
    let decls = |n: usize| (0..n).map(|i| format!(" xmlns:p{i}=\"urn:p{i}\"")).collect::<String>();
    let attrs = |n: usize| (0..n).map(|i| format!(" a{i}=\"\"")).collect::<String>();
    let blocks = |n: usize| (0..n).map(|i| format!("<p0:H{i}/>")).collect::<String>();
    // The Envelope's own `s` declaration counts: 127 more fill the scope, 128 more overflow it.
    assert!(parse(&envelope_with(&decls(127), "", "<p126:Op/>")).is_ok());
    type Check = fn(&SoapError) -> bool;
    let cases: Vec<(String, Check)> = vec![
        (envelope_with(&decls(128), "", ""), |e| matches!(e, SoapError::TooManyNamespaces { limit: 128 })),
        // Spread over nesting: 100 on the Envelope, 28 on the first Body element.
        (envelope_with(&decls(100), "", &format!("<m:Op xmlns:m=\"urn:m\"{}/>", decls(27).replace("p", "q"))), |e| {
            matches!(e, SoapError::TooManyNamespaces { limit: 128 })
        }),
        // The shape: ~100k declarations and ~100k empty header blocks, about 3 MB.
        (envelope_with(&decls(100_000), &blocks(100_000), "<p0:Op/>"), |e| {
            matches!(e, SoapError::TooManyNamespaces { limit: 128 })
        }),
        (envelope_with(" xmlns:p0=\"urn:p0\"", &blocks(257), ""), |e| {
            matches!(e, SoapError::TooManyHeaderBlocks { limit: 256 })
        }),
        (envelope_with(" xmlns:p0=\"urn:p0\"", &blocks(100_000), ""), |e| {
            matches!(e, SoapError::TooManyHeaderBlocks { limit: 256 })
        }),
        (envelope_with(&attrs(256), "", ""), |e| matches!(e, SoapError::TooManyAttributes { limit: 256 })),
        (envelope_with(&attrs(200_000), "", ""), |e| matches!(e, SoapError::TooManyAttributes { limit: 256 })),
        (envelope_with("", &format!("<h:H xmlns:h=\"urn:h\"{}/>", attrs(256)), ""), |e| {
            matches!(e, SoapError::TooManyAttributes { limit: 256 })
        }),
        (envelope_with("", "", &format!("<m:Op xmlns:m=\"urn:m\"{}/>", attrs(300))), |e| {
            matches!(e, SoapError::TooManyAttributes { limit: 256 })
        }),
    ];
    for (doc, check) in &cases {
        let err = parse(doc).unwrap_err();
        assert!(check(&err), "{}…: {err:?}", &doc[..doc.len().min(120)]);
        assert!(!err.to_string().is_empty());
    }
    // The limits are settings.
    let tight = SoapLimits::new().max_namespaces(2).max_attributes(3).max_header_blocks(1);
    let parse_with = |doc: &str| Envelope::parse(Bytes::copy_from_slice(doc.as_bytes()), &tight);
    assert!(matches!(parse_with(&envelope_with(&decls(2), "", "")), Err(SoapError::TooManyNamespaces { limit: 2 })));
    assert!(matches!(
        parse_with(&envelope_with(" xmlns:p0=\"urn:p0\"", &blocks(2), "")),
        Err(SoapError::TooManyHeaderBlocks { limit: 1 })
    ));
    assert!(matches!(
        parse_with(&envelope_with("", "", "<m:Op a=\"\" b=\"\" c=\"\" d=\"\"/>")),
        Err(SoapError::TooManyAttributes { limit: 3 })
    ));
    assert!(parse_with(&envelope_with(" xmlns:p0=\"urn:p0\"", &blocks(1), "<m:Op a=\"\" b=\"\" c=\"\"/>")).is_ok());
}

#[test]
fn at_the_limits_every_name_resolves() {
    // 126 declarations on the Envelope (127 with `s`), 256 header blocks: each
    // block's name and attributes resolve through the whole scope, blocks
    // redeclare prefixes for themselves only.
    let decls: String = (0..126).map(|i| format!(" xmlns:p{i}=\"urn:p{i}\"")).collect();
    let mut header = String::new();
    for i in 0..256 {
        let p = i % 126;
        if i % 2 == 0 {
            header.push_str(&format!("<p{p}:H{i} s:mustUnderstand=\"1\" p{p}:a=\"x\"><x/></p{p}:H{i}>"));
        } else {
            // Each odd block hides one Envelope declaration with its own (the 128th in scope).
            header.push_str(&format!("<p{p}:H{i} xmlns:p{p}=\"urn:own{i}\" s:actor=\"urn:a{i}\"/>"));
        }
    }
    let doc = envelope_with(&decls, &header, "<p125:Op p0:x=\"1\"/>");
    let env = parse(&doc).unwrap();
    assert_eq!(env.headers().len(), 256);
    for (i, h) in env.headers().iter().enumerate() {
        let p = i % 126;
        let ns = if i % 2 == 0 { format!("urn:p{p}") } else { format!("urn:own{i}") };
        assert_eq!(h.name(), &QualifiedName::new(ns, format!("H{i}")), "block {i}");
        assert_eq!(h.must_understand(), i % 2 == 0);
        assert_eq!(h.role().is_some(), i % 2 == 1);
    }
    // A block's own declaration went out of scope with it.
    assert_eq!(env.body_element(), Some(&QualifiedName::new("urn:p125", "Op")));
}

/// Every element and prefixed attribute name in `xml` (a fragment) resolves
/// with quick-xml's namespace reader on its own; `Err` names the first that does not.
fn resolves_alone(xml: &[u8]) -> Result<(), String> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let text = std::str::from_utf8(xml).map_err(|e| e.to_string())?;
    let mut reader = quick_xml::NsReader::from_str(text);
    let mut elements = 0;
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(|e| e.to_string())?;
        let e = match event {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Eof if elements > 0 => return Ok(()),
            Event::Eof => return Err("no element".into()),
            _ => continue,
        };
        elements += 1;
        if let ResolveResult::Unknown(p) = ns {
            return Err(format!("element prefix `{p}` is not declared in {text}"));
        }
        for attr in e.attributes() {
            let attr = attr.map_err(|e| e.to_string())?;
            if let (ResolveResult::Unknown(p), _) = reader.resolver().resolve_attribute(attr.key) {
                return Err(format!("attribute prefix `{p}` is not declared in {text}"));
            }
        }
    }
}

#[test]
fn extracted_fragments_carry_the_declarations_they_use() {
    let decls =
        " xmlns:tns=\"urn:tns&amp;x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:unused=\"urn:u\"";
    // A SOAP 1.1 fault whose detail uses prefixes declared on the Envelope.
    let fault = envelope_with(
        decls,
        "",
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>bad</faultstring><detail><tns:BadInput><tns:field xsi:type=\"tns:Name\">n</tns:field></tns:BadInput><tns:More/></detail></s:Fault>",
    );
    let env = parse(&fault).unwrap();
    let detail = env.fault().unwrap().detail().unwrap();
    resolves_alone(detail).unwrap();
    assert_eq!(
        std::str::from_utf8(detail).unwrap(),
        "<tns:BadInput xmlns:tns=\"urn:tns&amp;x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><tns:field xsi:type=\"tns:Name\">n</tns:field></tns:BadInput><tns:More xmlns:tns=\"urn:tns&amp;x\"/>"
    );
    // SOAP 1.2, the declaration on the Body and on the Fault, a default namespace in scope.
    let v12 = "<e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\" xmlns=\"urn:default\"><e:Body xmlns:tns=\"urn:b\"><e:Fault xmlns:f=\"urn:f\"><e:Code><e:Value>e:Sender</e:Value></e:Code><e:Reason><e:Text xml:lang=\"en\">r</e:Text></e:Reason><e:Detail><tns:X f:y=\"1\"><plain/></tns:X></e:Detail></e:Fault></e:Body></e:Envelope>";
    let env = parse(v12).unwrap();
    let detail = env.fault().unwrap().detail().unwrap();
    resolves_alone(detail).unwrap();
    assert_eq!(
        std::str::from_utf8(detail).unwrap(),
        "<tns:X xmlns=\"urn:default\" xmlns:tns=\"urn:b\" xmlns:f=\"urn:f\" f:y=\"1\"><plain/></tns:X>"
    );
    // A header block using the Envelope's prefixes, and the Body.
    let doc = envelope_with(
        decls,
        "<tns:Auth s:mustUnderstand=\"0\"><tns:user>u</tns:user></tns:Auth>",
        "<tns:Op><tns:arg xsi:nil=\"true\"/></tns:Op>",
    );
    let env = parse(&doc).unwrap();
    let raw = env.headers()[0].raw();
    resolves_alone(raw).unwrap();
    assert!(!std::str::from_utf8(raw).unwrap().contains("unused"), "only the prefixes used are carried");
    assert!(resolves_alone(&env.body()).is_err(), "the plain Body is a slice without the declarations");
    let body = env.standalone_body();
    resolves_alone(body).unwrap();
    assert_eq!(
        std::str::from_utf8(body).unwrap(),
        "<tns:Op xmlns:tns=\"urn:tns&amp;x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><tns:arg xsi:nil=\"true\"/></tns:Op>"
    );
    // Nothing to carry: the same slice, no copy.
    let env = parse(&envelope_with("", "<h:H xmlns:h=\"urn:h\"/>", "<m:Op xmlns:m=\"urn:m\"><m:a/></m:Op>")).unwrap();
    assert_eq!(env.standalone_body().as_ptr(), env.body().as_ptr());
    let (raw, message) = (env.headers()[0].raw(), env.message());
    let at = raw.as_ptr() as usize - message.as_ptr() as usize;
    assert!(at + raw.len() <= message.len(), "the header block is a slice of the message");
}

const PING: &str = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Header><h:T xmlns:h=\"urn:h\">1</h:T></s:Header><s:Body><m:Ping xmlns:m=\"urn:m\">é</m:Ping></s:Body></s:Envelope>";

fn utf16(text: &str, big_endian: bool, bom: bool) -> Bytes {
    let mut out = Vec::new();
    let units = if bom {
        Some(0xFEFF).into_iter().chain(text.encode_utf16()).collect::<Vec<u16>>()
    } else {
        text.encode_utf16().collect()
    };
    for u in units {
        out.extend_from_slice(&if big_endian { u.to_be_bytes() } else { u.to_le_bytes() });
    }
    Bytes::from(out)
}

#[test]
fn a_utf8_byte_order_mark_is_accepted_with_exact_slices() {
    for doc in [PING.to_owned(), format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n{PING}")] {
        let msg = Bytes::from(format!("\u{FEFF}{doc}"));
        let env = Envelope::parse(msg, &SoapLimits::default()).unwrap();
        assert_eq!(env.body_str(), "<m:Ping xmlns:m=\"urn:m\">é</m:Ping>");
        assert_eq!(env.body_element(), Some(&QualifiedName::new("urn:m", "Ping")));
        assert_eq!(&env.headers()[0].raw()[..], b"<h:T xmlns:h=\"urn:h\">1</h:T>");
        assert_eq!(&env.message()[..], doc.as_bytes(), "the message as parsed, without the mark");
    }
    // A fault behind a byte order mark.
    let fault = EnvelopeBody::fault(SoapVersion::V12, &SoapFault::client("no").with_detail("<d/>")).to_bytes();
    let env = Envelope::parse(Bytes::from([&b"\xEF\xBB\xBF"[..], &fault].concat()), &SoapLimits::default()).unwrap();
    assert_eq!(&env.fault().unwrap().detail().unwrap()[..], b"<d/>");
    // A WSDL behind one.
    let wsdl = "\u{FEFF}<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\" name=\"W\"><message name=\"M\"/></definitions>";
    let parsed = Wsdl::parse(wsdl.as_bytes(), &SoapLimits::default()).unwrap();
    assert_eq!(parsed.messages, vec!["M".to_owned()]);
}

#[test]
fn utf16_messages_are_transcoded() {
    let decl = format!("<?xml version=\"1.0\" encoding=\"UTF-16\"?>{PING}");
    for (big_endian, bom, text) in
        [(false, true, &decl), (true, true, &decl), (false, false, &PING.to_owned()), (true, false, &PING.to_owned())]
    {
        let env = Envelope::parse(utf16(text, big_endian, bom), &SoapLimits::default())
            .unwrap_or_else(|e| panic!("big endian {big_endian}, bom {bom}: {e}"));
        assert_eq!(env.body_str(), "<m:Ping xmlns:m=\"urn:m\">é</m:Ping>");
        assert_eq!(env.headers()[0].name(), &QualifiedName::new("urn:h", "T"));
        assert_eq!(&env.message()[..], text.as_bytes());
    }
    let wsdl = "<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\"><message name=\"M\"/></definitions>";
    assert_eq!(Wsdl::parse(&utf16(wsdl, false, true), &SoapLimits::default()).unwrap().messages, vec!["M".to_owned()]);
    // Malformed UTF-16: odd length, an unpaired surrogate; UTF-32 is not read.
    let mut odd = utf16(PING, false, true).to_vec();
    odd.push(b'x');
    let mut lone = utf16(PING, false, true).to_vec();
    lone.extend_from_slice(&0xD800u16.to_le_bytes());
    for bad in [odd, lone, b"\xFF\xFE\0\0<\0\0\0".to_vec()] {
        assert!(matches!(Envelope::parse(Bytes::from(bad), &SoapLimits::default()), Err(SoapError::NotUtf8)));
    }
    // The size limit counts the bytes received.
    let wire = utf16(PING, false, true);
    let limits = SoapLimits::new().max_body(wire.len() - 1);
    assert!(matches!(Envelope::parse(wire.clone(), &limits), Err(SoapError::TooLarge { .. })));
    assert!(Envelope::parse(wire.clone(), &SoapLimits::new().max_body(wire.len())).is_ok());
}
