#![cfg(feature = "soap")]
//! SOAP layers: published message formats, WSDLs, and our client against our
//! server over real HTTP on 127.0.0.1, in both SOAP versions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_mesh::soap::*;
use tower_mesh::BoxError;

#[cfg(feature = "redis")]
#[path = "support/services.rs"]
mod services;

fn fixture(name: &str) -> Bytes {
    let path = format!("{}/tests/fixtures/soap/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn parse(name: &str) -> Envelope {
    Envelope::parse(fixture(name), &SoapLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------- fixtures

#[test]
fn soap11_spec_request_and_response() {
    let req = parse("soap11_request.xml");
    assert_eq!(req.version(), SoapVersion::V11);
    assert_eq!(req.headers().len(), 1);
    let tx = &req.headers()[0];
    assert_eq!(tx.name(), &QualifiedName::new("some-URI", "Transaction"));
    assert!(tx.must_understand());
    assert_eq!(req.body_element(), Some(&QualifiedName::new("Some-URI", "GetLastTradePrice")));
    assert!(req.body_str().trim().starts_with("<m:GetLastTradePrice"));

    let res = parse("soap11_response.xml");
    assert!(res.fault().is_none());
    #[derive(serde::Deserialize)]
    struct Quote {
        #[serde(rename = "Price")]
        price: f64,
    }
    let quote: Quote = res.deserialize().unwrap();
    assert_eq!(quote.price, 34.5);
}

#[test]
fn soap11_faults() {
    let env = parse("soap11_fault.xml");
    let f = env.fault().unwrap();
    assert!(f.is_server() && !f.is_client());
    assert_eq!(f.reason(), "Server Error");
    assert_eq!(f.code_name(), &QualifiedName::new(SOAP11_ENV_NS, "Server"));
    let detail = std::str::from_utf8(f.detail().unwrap()).unwrap();
    assert!(detail.trim().starts_with("<e:myfaultdetails"), "{detail}");
    assert!(detail.contains("1001"));
    assert!(matches!(env.into_result(), Err(SoapError::Fault(_))));

    let f = parse("soap11_fault_client.xml").fault().cloned().unwrap();
    assert!(f.is_client());
    assert_eq!(f.code(), FaultCode::Client);
    assert_eq!(f.subcodes()[0].local, "Authentication");
    assert_eq!(f.reason(), "Invalid username & password \u{2014} access denied");
    assert_eq!(f.actor(), Some("http://gateway.example.org/auth"));
    assert_eq!(f.detail().map(|d| d.len()), Some(0));
    assert_eq!(f.to_string(), "SOAP fault Client.Authentication: Invalid username & password \u{2014} access denied");

    let f = parse("soap11_fault_mustunderstand.xml").fault().cloned().unwrap();
    assert!(f.is_must_understand() && !f.is_client() && !f.is_server());
}

#[test]
fn soap12_spec_request_and_faults() {
    let req = parse("soap12_request.xml");
    assert_eq!(req.version(), SoapVersion::V12);
    let names: Vec<_> = req.headers().iter().map(|h| h.name().local.as_str()).collect();
    assert_eq!(names, ["reservation", "passenger"]);
    assert!(req.headers().iter().all(|h| h.must_understand() && h.targets_ultimate_receiver()));
    assert_eq!(
        req.body_element(),
        Some(&QualifiedName::new("http://travelcompany.example.org/reservation/travel", "itinerary"))
    );
    assert!(String::from_utf8_lossy(req.headers()[1].raw()).contains("Åke Jógvan Øyvind"));

    let f = parse("soap12_fault.xml").fault().cloned().unwrap();
    assert!(f.is_client());
    assert_eq!(f.version(), SoapVersion::V12);
    assert_eq!(f.subcodes(), &[QualifiedName::new("http://www.example.org/timeouts", "MessageTimeout")]);
    assert_eq!(f.reason(), "Sender Timeout");
    // The detail stands alone: the Envelope's declaration of `m` is carried onto it.
    assert_eq!(
        std::str::from_utf8(f.detail().unwrap()).unwrap().trim(),
        "<m:MaxTime xmlns:m=\"http://www.example.org/timeouts\">P5M</m:MaxTime>"
    );

    let env = parse("soap12_fault_mustunderstand.xml");
    assert_eq!(env.headers().len(), 2);
    let f = env.fault().unwrap();
    assert!(f.is_must_understand());
    assert!(f.reason().starts_with("One or more mandatory"));

    let f = parse("soap12_fault_receiver.xml").fault().cloned().unwrap();
    assert!(f.is_server());
    assert!(f.reason().contains("---> System.DivideByZeroException"));
}

#[test]
fn real_world_wsdls() {
    let wsdl = Wsdl::parse(&fixture("calculator_asmx.wsdl"), &SoapLimits::default()).unwrap();
    assert_eq!(wsdl.target_namespace.as_deref(), Some("http://tempuri.org/"));
    assert_eq!(wsdl.services.len(), 1);
    assert_eq!(wsdl.services[0].ports.len(), 2);
    assert_eq!(wsdl.bindings[1].version, Some(SoapVersion::V12));
    let ops = wsdl.operations();
    assert_eq!(ops.len(), 4);
    let add12 = ops.iter().find(|o| o.name == "Add" && o.version == Some(SoapVersion::V12)).unwrap();
    assert_eq!(add12.port, "CalculatorSoap12");
    assert_eq!(add12.soap_action.as_deref(), Some("http://tempuri.org/Add"));
    assert_eq!(add12.address.as_deref(), Some("http://www.dneonline.com/calculator.asmx"));
    assert_eq!(add12.input.as_deref(), Some("AddSoapIn"));
    assert_eq!(add12.output.as_deref(), Some("AddSoapOut"));
    assert_eq!(add12.style.as_deref(), Some("document"));
    let divide = wsdl.operation("Divide").unwrap();
    assert_eq!(divide.version, Some(SoapVersion::V11));
    assert_eq!(divide.port, "CalculatorSoap");

    let wsdl = Wsdl::parse(&fixture("stockquote_wsdl11_spec.wsdl"), &SoapLimits::default()).unwrap();
    let op = wsdl.operation("GetLastTradePrice").unwrap();
    assert_eq!(op.service, "StockQuoteService");
    assert_eq!(op.soap_action.as_deref(), Some("http://example.com/GetLastTradePrice"));
    assert_eq!(op.address.as_deref(), Some("http://example.com/stockquote"));
    assert_eq!(op.input.as_deref(), Some("GetLastTradePriceInput"));
    assert_eq!(op.style.as_deref(), Some("document"));
}

#[test]
fn hostile_wsdls_are_refused() {
    let limits = SoapLimits::default();
    let xxe = br#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
        <definitions xmlns="http://schemas.xmlsoap.org/wsdl/">&x;</definitions>"#;
    assert!(matches!(Wsdl::parse(xxe, &limits), Err(SoapError::DocType)));
    let undefined = br#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/"><service name="&x;"/></definitions>"#;
    assert!(Wsdl::parse(undefined, &limits).is_err());
    assert!(matches!(Wsdl::parse(b"<html/>", &limits), Err(SoapError::NotWsdl)));
    let deep = format!(
        "<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\">{}{}</definitions>",
        "<x>".repeat(80),
        "</x>".repeat(80)
    );
    assert!(matches!(Wsdl::parse(deep.as_bytes(), &limits), Err(SoapError::TooDeep { .. })));
    assert!(matches!(
        Wsdl::parse(&fixture("calculator_asmx.wsdl"), &SoapLimits::new().max_body(100)),
        Err(SoapError::WsdlTooLarge { limit: 100 })
    ));
}

#[test]
fn billion_laughs_is_refused_without_expansion() {
    let doc = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><x>&lol2;</x></soap:Body></soap:Envelope>"#;
    assert!(matches!(
        Envelope::parse(Bytes::from_static(doc.as_bytes()), &SoapLimits::default()),
        Err(SoapError::DocType)
    ));
    // The same reference without the DTD is an undefined entity, not expanded.
    let body = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><x>&lol2;</x></soap:Body></soap:Envelope>"#;
    assert!(matches!(
        Envelope::parse(Bytes::from_static(body.as_bytes()), &SoapLimits::default()),
        Err(SoapError::UndefinedEntity(_))
    ));
}

// ---------------------------------------------------------------- client ↔ server

#[derive(Debug, serde::Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

/// The calculator handler behind [`SoapServerLayer`]: routes on the operation.
async fn calculator(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let op = req.extensions().get::<SoapOperation>().cloned().expect("operation");
    let env = req.extensions().get::<Envelope>().cloned().expect("envelope");
    let wsse_seen = env.headers().iter().any(|h| h.name().is(WSSE_NS, "Security"));
    match op.name() {
        Some("Add") => {
            let add: Add = env.deserialize()?;
            // The request body handed over is the Body content.
            let body = req.into_body().collect().await?.to_bytes();
            assert_eq!(body, env.body());
            let xml = format!(
                "<c:AddResponse xmlns:c=\"urn:calc\"><c:sum>{}</c:sum><c:secured>{wsse_seen}</c:secured><c:action>{}</c:action></c:AddResponse>",
                add.a + add.b,
                op.action().unwrap_or("")
            );
            Ok(Response::new(Full::new(Bytes::from(xml))))
        }
        Some("Divide") => Err(SoapFault::client("division by zero")
            .with_subcode(QualifiedName::new("urn:calc", "DivideByZero"))
            .with_detail("<c:hint xmlns:c=\"urn:calc\">b must not be 0</c:hint>")
            .into()),
        Some("Crash") => Err(std::io::Error::other("database password is hunter2").into()),
        _ => Err(SoapFault::client("unknown operation").into()),
    }
}

async fn serve<S>(svc: S) -> SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<EnvelopeBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else { return };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    addr
}

async fn calculator_server(layer: SoapServerLayer) -> SocketAddr {
    serve(ServiceBuilder::new().layer(layer).service_fn(calculator)).await
}

fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, EnvelopeBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn add(a: i64, b: i64) -> SoapRequest {
    SoapRequest::new(format!("<c:Add xmlns:c=\"urn:calc\"><c:a>{a}</c:a><c:b>{b}</c:b></c:Add>")).action("urn:calc#Add")
}

#[tokio::test]
async fn client_and_server_both_versions() {
    let server = SoapServerLayer::new()
        .username_token(UsernameTokenValidator::new(|user: &str| (user == "alice").then(|| "s3cret".to_owned())))
        .understands(QualifiedName::new(WSA_NS, "Action"));
    let addr = calculator_server(server).await;
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let uri: http::Uri = format!("http://{addr}/calc").parse().unwrap();
        let mut client = ServiceBuilder::new()
            .layer(
                SoapEnvelopeLayer::new(uri)
                    .version(version)
                    .username_token(UsernameToken::digest("alice", "s3cret"))
                    .addressing(WsAddressing::new()),
            )
            .service(http_client());

        let res = client.ready().await.unwrap().call(add(20, 22)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let expected_ct = if version == SoapVersion::V11 { "text/xml" } else { "application/soap+xml" };
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(expected_ct));
        assert_eq!(res.envelope().version(), version);
        #[derive(serde::Deserialize)]
        struct Sum {
            sum: i64,
            secured: bool,
            action: String,
        }
        let sum: Sum = res.deserialize().unwrap();
        assert_eq!(sum.sum, 42);
        assert!(sum.secured, "the WS-Security header reached the handler");
        assert_eq!(sum.action, "urn:calc#Add", "{version}: action routed from the HTTP header");

        // A client fault, typed, in the same version, over HTTP 500 (1.1) / 400 (1.2).
        let div = SoapRequest::new("<c:Divide xmlns:c=\"urn:calc\"><c:a>1</c:a><c:b>0</c:b></c:Divide>");
        let err = client.ready().await.unwrap().call(div).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_client());
        assert_eq!(fault.version(), version);
        let status = if version == SoapVersion::V11 { 500 } else { 400 };
        assert_eq!(fault.http_status(), Some(StatusCode::from_u16(status).unwrap()));
        assert_eq!(fault.reason(), "division by zero");
        assert_eq!(fault.subcodes()[0].local, "DivideByZero");
        assert!(std::str::from_utf8(fault.detail().unwrap()).unwrap().contains("b must not be 0"));

        // A handler error: a server fault that does not leak the error.
        let crash = SoapRequest::new("<c:Crash xmlns:c=\"urn:calc\"/>");
        let err = client.ready().await.unwrap().call(crash).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_server());
        assert_eq!(fault.http_status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!fault.reason().contains("hunter2"));
    }
}

#[tokio::test]
async fn must_understand_headers_are_enforced() {
    let addr = calculator_server(SoapServerLayer::new()).await;
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
        let mut client = SoapEnvelopeLayer::new(uri).version(version).layer(http_client());
        let t = version.as_str();
        let mu = if version == SoapVersion::V11 { "1" } else { "true" };
        let req = add(1, 2).header(format!("<x:Tx xmlns:x=\"urn:tx\" soap:mustUnderstand=\"{mu}\">{t}</x:Tx>"));
        let err = client.ready().await.unwrap().call(req).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_must_understand(), "{fault}");
        assert!(fault.reason().contains("{urn:tx}Tx"));
        // Not for us: another role. Optional: no mustUnderstand.
        let req = add(1, 2).header("<x:Tx xmlns:x=\"urn:tx\" soap:mustUnderstand=\"0\"/>");
        assert!(client.ready().await.unwrap().call(req).await.is_ok());
        // The UsernameToken is mustUnderstand: refused by a server that did not declare it.
        let mut secured = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap())
            .version(version)
            .username_token(UsernameToken::text("a", "b"))
            .layer(http_client());
        let err = secured.ready().await.unwrap().call(add(1, 2)).await.unwrap_err();
        assert!(err.fault().unwrap().is_must_understand());
    }

    // SOAP 1.2 answers with NotUnderstood header blocks.
    let body = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header><x:Tx xmlns:x="urn:tx" e:mustUnderstand="true"/></e:Header><e:Body><c:Add xmlns:c="urn:calc"/></e:Body></e:Envelope>"#;
    let res = raw_post(addr, "application/soap+xml; charset=utf-8", body).await;
    assert_eq!(res.0, StatusCode::INTERNAL_SERVER_ERROR);
    let env = Envelope::parse(res.1, &SoapLimits::default()).unwrap();
    assert_eq!(env.headers()[0].name(), &QualifiedName::new(SOAP12_ENV_NS, "NotUnderstood"));
    assert!(std::str::from_utf8(env.headers()[0].raw()).unwrap().contains("qname=\"nu:Tx\" xmlns:nu=\"urn:tx\""));
    assert!(env.fault().unwrap().is_must_understand());
}

async fn raw_post(addr: SocketAddr, content_type: &str, body: &'static str) -> (StatusCode, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn server_answers_bad_requests_with_faults() {
    let addr = calculator_server(SoapServerLayer::new().limits(SoapLimits::new().max_body(2048))).await;
    // Not XML at all: a Client fault in SOAP 1.1.
    let (status, body) = raw_post(addr, "text/xml", "hello").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let f = Envelope::parse(body, &SoapLimits::default()).unwrap().fault().cloned().unwrap();
    assert!(f.is_client() && f.version() == SoapVersion::V11);
    // A DOCTYPE, announced as SOAP 1.2: a Sender fault (400) in SOAP 1.2.
    let (status, body) = raw_post(
        addr,
        "application/soap+xml",
        "<!DOCTYPE x><e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\"><e:Body/></e:Envelope>",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let f = Envelope::parse(body, &SoapLimits::default()).unwrap().fault().cloned().unwrap();
    assert!(f.is_client() && f.version() == SoapVersion::V12);
    assert!(f.reason().contains("DOCTYPE"));
    // An unknown envelope namespace: VersionMismatch.
    let (_, body) = raw_post(addr, "text/xml", "<e:Envelope xmlns:e=\"urn:soap-2.0\"><e:Body/></e:Envelope>").await;
    let f = Envelope::parse(body, &SoapLimits::default()).unwrap().fault().cloned().unwrap();
    assert!(f.is_version_mismatch());
    // Too large: 413 with a client fault.
    let big: &'static str = Box::leak(
        format!("<e:Envelope xmlns:e=\"{SOAP11_ENV_NS}\"><e:Body>{}</e:Body></e:Envelope>", "<x/>".repeat(1000))
            .into_boxed_str(),
    );
    let (status, body) = raw_post(addr, "text/xml", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(Envelope::parse(body, &SoapLimits::default()).unwrap().fault().unwrap().is_client());
}

#[tokio::test]
async fn client_refuses_oversized_and_non_soap_responses() {
    // A server answering 502 with HTML, and one answering a huge envelope.
    let html = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let mut res = Response::new(EnvelopeBody::new(SoapVersion::V11, &[], Bytes::new()));
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        *res.body_mut() = EnvelopeBody::default();
        Ok::<_, Infallible>(res)
    });
    let addr = serve(html).await;
    let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).layer(http_client());
    let err = client.ready().await.unwrap().call(add(1, 1)).await.unwrap_err();
    assert!(matches!(err, SoapError::Status(s) if s == StatusCode::BAD_GATEWAY), "{err:?}");

    let huge = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let payload = Bytes::from(vec![b'x'; 64 * 1024]);
        Ok::<_, Infallible>(Response::new(EnvelopeBody::new(SoapVersion::V11, &[], payload)))
    });
    let addr = serve(huge).await;
    let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap())
        .limits(SoapLimits::new().max_body(16 * 1024))
        .layer(http_client());
    let err = client.ready().await.unwrap().call(add(1, 1)).await.unwrap_err();
    assert!(matches!(err, SoapError::TooLarge { limit: 16384 }), "{err:?}");
}

#[cfg(all(feature = "retry", feature = "circuit-breaker"))]
#[tokio::test]
async fn retry_and_breaker_follow_the_fault_class() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower_mesh::circuit_breaker::CircuitBreakerLayer;
    use tower_mesh::retry::{Backoff, RetryLayer};

    // Counts the requests that reach the server, then answers with the fault the body asks for.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let handler = tower::service_fn(move |req: Request<Full<Bytes>>| {
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            let op = req.extensions().get::<SoapOperation>().and_then(|o| o.name().map(str::to_owned));
            let err: BoxError = match op.as_deref() {
                Some("Busy") => SoapFault::server("try later").into(),
                _ => SoapFault::client("bad request").into(),
            };
            Err::<Response<Full<Bytes>>, _>(err)
        }
    });
    let addr = serve(ServiceBuilder::new().layer(SoapServerLayer::new()).service(handler)).await;

    let retry = RetryLayer::builder()
        .max_retries(2)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .classifier(SoapClassifier::new())
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .classifier(SoapClassifier::new())
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .count_window(20)
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .layer(SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()))
        .service(http_client());

    // Client faults: not retried, and never open the breaker.
    for _ in 0..6 {
        let err = client.ready().await.unwrap().call(SoapRequest::new("<Wrong/>")).await.unwrap_err();
        assert!(err.downcast_ref::<SoapError>().and_then(SoapError::fault).is_some_and(SoapFault::is_client));
    }
    assert_eq!(hits.swap(0, Ordering::SeqCst), 6, "one attempt per client fault");

    // Server faults: retried (3 attempts), then the breaker opens.
    let err = client.ready().await.unwrap().call(SoapRequest::new("<Busy/>")).await.unwrap_err();
    assert!(err.downcast_ref::<SoapError>().is_some(), "{err:?}");
    assert!(err.downcast_ref::<SoapError>().and_then(SoapError::fault).is_some_and(SoapFault::is_server));
    assert_eq!(hits.swap(0, Ordering::SeqCst), 3);
    let mut opened = false;
    for _ in 0..10 {
        match client.ready().await {
            Err(e) if e.is::<tower_mesh::circuit_breaker::CircuitOpen>() => {
                opened = true;
                break;
            }
            Ok(svc) => match svc.call(SoapRequest::new("<Busy/>")).await {
                Err(e) if e.is::<tower_mesh::circuit_breaker::CircuitOpen>() => {
                    opened = true;
                    break;
                }
                _ => {}
            },
            Err(e) => panic!("{e}"),
        }
    }
    assert!(opened, "server faults open the breaker");
}

#[tokio::test]
async fn wsdl_fetch_with_basic_auth_from_url() {
    let wsdl = fixture("calculator_asmx.wsdl");
    let seen = Arc::new(std::sync::Mutex::new(None::<String>));
    let s = seen.clone();
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
        *s.lock().unwrap() = auth.clone();
        let wsdl = wsdl.clone();
        async move {
            let mut res = Response::new(Full::new(wsdl));
            if auth.as_deref() != Some("Basic YWxpY2U6cEBzcw==") {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                *res.body_mut() = Full::new(Bytes::new());
            }
            Ok::<_, Infallible>(res)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
        }
    });

    let url = WsdlUrl::parse(&format!("http://alice:p%40ss@{addr}/calculator.asmx?WSDL")).unwrap();
    assert_eq!(url.to_string(), format!("http://alice:***@{addr}/calculator.asmx?WSDL"));
    let client: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let parsed = Wsdl::fetch(client.clone(), &url, &SoapLimits::default()).await.unwrap();
    assert_eq!(parsed.operations().len(), 4);
    assert_eq!(seen.lock().unwrap().as_deref(), Some("Basic YWxpY2U6cEBzcw=="));

    let anonymous = WsdlUrl::parse(&format!("http://{addr}/calculator.asmx?WSDL")).unwrap();
    let err = Wsdl::fetch(client, &anonymous, &SoapLimits::default()).await.unwrap_err();
    assert!(matches!(err, SoapError::Status(StatusCode::UNAUTHORIZED)));
}

/// A `NonceStore` on the real local Redis (`SET key 1 NX PX ttl`), as
/// servers behind a load balancer share it.
#[cfg(feature = "redis")]
struct RedisNonces {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

#[cfg(feature = "redis")]
impl NonceStore for RedisNonces {
    fn insert(&self, key: [u8; 20], ttl: std::time::Duration) -> BoxFuture<Result<bool, BoxError>> {
        let mut conn = self.conn.clone();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}{hex}", self.prefix);
        Box::pin(async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .query_async(&mut conn)
                .await?;
            Ok(set.is_some())
        })
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_nonce_store_refuses_a_replay_across_servers() {
    const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
    if services::require_service("Redis", "TOWER_MESH_REDIS_URL", DEFAULT_URL).is_none() {
        return;
    }
    let url = services::env_or("TOWER_MESH_REDIS_URL", DEFAULT_URL);
    let conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    let prefix = format!("towermesh:test:nonce:{}:", std::process::id());
    let store = || RedisNonces { conn: conn.clone(), prefix: prefix.clone() };
    let a = secured_server(UsernameTokenValidator::new(alice).nonce_store(store())).await;
    let b = secured_server(UsernameTokenValidator::new(alice).nonce_store(store())).await;
    let block = security(&UsernameToken::digest("alice", "s3cret"), SoapVersion::V12, T0, &nonce);
    let req = SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>").header(block);
    let to = |addr: SocketAddr| {
        SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap())
            .version(SoapVersion::V12)
            .layer(http_client())
    };
    // A nonce from an earlier run of this test is still in Redis for the window: clear it.
    let mut clean = conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut clean).await.unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut clean).await.unwrap();
    }
    assert!(to(a).oneshot(req.clone()).await.is_ok());
    let err = to(b).oneshot(req).await.unwrap_err();
    assert_eq!(err.fault().unwrap().subcodes(), &[WsseFault::InvalidSecurity.name()]);
}

// ---------------------------------------------------------------- WSDL imports

/// The path and `Authorization` header of each request a test server got.
type Requests = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// A server of WSDL documents by path on `listener`; an unknown path is a
/// 404. Records the path and `Authorization` header of each request.
fn wsdl_server(listener: tokio::net::TcpListener, docs: Vec<(&'static str, String)>, seen: Requests) {
    let docs = Arc::new(docs);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let docs = docs.clone();
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
        seen.lock().unwrap().push((req.uri().path().to_owned(), auth));
        async move {
            let found = docs.iter().find(|(p, _)| *p == req.uri().path());
            let mut res = Response::new(Full::new(Bytes::from(found.map(|(_, d)| d.clone()).unwrap_or_default())));
            if found.is_none() {
                *res.status_mut() = StatusCode::NOT_FOUND;
            }
            Ok::<_, Infallible>(res)
        }
    });
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
        }
    });
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

const WSDL_HEAD: &str = "<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\" \
    xmlns:soap=\"http://schemas.xmlsoap.org/wsdl/soap/\" xmlns:tns=\"urn:calc\" targetNamespace=\"urn:calc\">";

fn import(location: &str) -> String {
    format!("<import namespace=\"urn:calc\" location=\"{location}\"/>")
}

/// The service (root), the binding (one import away, relative location),
/// the port type and messages (two away, absolute path), and imports back
/// to the root (a cycle) and of the same document twice.
fn split_wsdl(addr: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        (
            "/svc/root.wsdl",
            format!(
                "{WSDL_HEAD}{}<service name=\"Calculator\"><port name=\"CalcSoap\" binding=\"tns:CalcSoap\">\
                 <soap:address location=\"http://{addr}/calc\"/></port></service></definitions>",
                import("binding/binding.wsdl")
            ),
        ),
        (
            "/svc/binding/binding.wsdl",
            format!(
                "{WSDL_HEAD}{}{}{}<binding name=\"CalcSoap\" type=\"tns:Calc\">\
                 <soap:binding transport=\"http://schemas.xmlsoap.org/soap/http\" style=\"document\"/>\
                 <operation name=\"Add\"><soap:operation soapAction=\"urn:calc#Add\"/></operation>\
                 <operation name=\"Divide\"><soap:operation soapAction=\"urn:calc#Divide\"/></operation></binding></definitions>",
                import("/types/porttype.wsdl"),
                import("../root.wsdl"),
                import(&format!("http://{addr}/types/porttype.wsdl#again")),
            ),
        ),
        (
            "/types/porttype.wsdl",
            format!(
                "{WSDL_HEAD}<message name=\"AddIn\"/><message name=\"AddOut\"/><portType name=\"Calc\">\
                 <operation name=\"Add\"><input message=\"tns:AddIn\"/><output message=\"tns:AddOut\"/></operation>\
                 <operation name=\"Divide\"/></portType></definitions>"
            ),
        ),
    ]
}

/// A WSDL whose binding lives in an imported document listed 0 operations
/// with no error; `fetch` follows the imports, with the SOAP layer's client.
#[tokio::test]
async fn wsdl_fetch_follows_imports() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    // The documents name the server's address: bind first, then serve.
    let (listener, addr) = listener().await;
    wsdl_server(listener, split_wsdl(addr), seen.clone());
    let url = WsdlUrl::parse(&format!("http://alice:pw@{addr}/svc/root.wsdl")).unwrap();
    let root = Wsdl::parse(split_wsdl(addr)[0].1.as_bytes(), &SoapLimits::default()).unwrap();
    assert!(root.operations().is_empty(), "alone, the root has no binding");
    assert_eq!(root.imports[0].location.as_deref(), Some("binding/binding.wsdl"));

    // The SOAP client's own HTTP client type (request body EnvelopeBody).
    let wsdl = Wsdl::fetch(http_client(), &url, &SoapLimits::default()).await.unwrap();
    let ops = wsdl.operations();
    let names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["Add", "Divide"]);
    assert_eq!(ops[0].soap_action.as_deref(), Some("urn:calc#Add"));
    assert_eq!(ops[0].input.as_deref(), Some("AddIn"), "the port type two imports away");
    assert_eq!(ops[0].address.as_deref(), Some(format!("http://{addr}/calc").as_str()));
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/svc/root.wsdl", "/svc/binding/binding.wsdl", "/types/porttype.wsdl"], "each read once");
    assert!(seen.iter().all(|(_, auth)| auth.as_deref() == Some("Basic YWxpY2U6cHc=")), "same origin: credentials");
}

#[tokio::test]
async fn wsdl_import_failures_and_bounds_are_reported() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let root = |location: &str| format!("{WSDL_HEAD}{}</definitions>", import(location));
    // A chain of imports deeper than the bound; a missing one; a file: one.
    let mut docs: Vec<(&'static str, String)> = vec![
        ("/missing.wsdl", root("nowhere.wsdl")),
        ("/file.wsdl", root("file:///etc/passwd")),
        ("/big.wsdl", root("filler.wsdl")),
        ("/filler.wsdl", format!("{WSDL_HEAD}<documentation>{}</documentation></definitions>", "x".repeat(3000))),
    ];
    for i in 0..=WSDL_MAX_IMPORT_DEPTH + 1 {
        let path: &'static str = Box::leak(format!("/deep{i}.wsdl").into_boxed_str());
        docs.push((path, root(&format!("deep{}.wsdl", i + 1))));
    }
    let (listener, addr) = listener().await;
    wsdl_server(listener, docs, seen);
    let fetch = |path: &str, limits: SoapLimits| {
        let url = WsdlUrl::parse(&format!("http://{addr}{path}")).unwrap();
        let client = client.clone();
        async move { Wsdl::fetch(client, &url, &limits).await }
    };
    let err = fetch("/missing.wsdl", SoapLimits::default()).await.unwrap_err();
    match &err {
        SoapError::WsdlImport { location, source } => {
            assert_eq!(location, &format!("http://{addr}/nowhere.wsdl"));
            assert!(matches!(**source, SoapError::Status(StatusCode::NOT_FOUND)), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nowhere.wsdl"), "{err}");
    let err = fetch("/file.wsdl", SoapLimits::default()).await.unwrap_err();
    assert!(matches!(&err, SoapError::WsdlImport { location, .. } if location == "file:///etc/passwd"), "{err:?}");
    let err = fetch("/deep0.wsdl", SoapLimits::default()).await.unwrap_err();
    assert!(err.to_string().contains("nested too deep"), "{err}");
    // The root alone fits the limit; with its import it does not.
    let err = fetch("/big.wsdl", SoapLimits::new().max_body(2048)).await.unwrap_err();
    assert!(matches!(err, SoapError::WsdlTooLarge { limit: 2048 }), "{err:?}");
    assert_eq!(err.to_string(), "WSDL document larger than 2048 bytes");
    let err = fetch("/filler.wsdl", SoapLimits::new().max_body(2048)).await.unwrap_err();
    assert!(matches!(err, SoapError::WsdlTooLarge { limit: 2048 }), "a too-large WSDL has its own error: {err:?}");
    assert!(!err.to_string().contains("SOAP message"));
}

// ---------------------------------------------------------------- robustness

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::parse(Bytes::from(bytes.clone()), &SoapLimits::default());
            let _ = Wsdl::parse(&bytes, &SoapLimits::default());
        }

        #[test]
        fn mutated_fixtures_never_panic(
            name in prop::sample::select(vec![
                "soap11_request.xml", "soap11_fault.xml", "soap12_request.xml", "soap12_fault.xml",
                "soap12_fault_mustunderstand.xml", "calculator_asmx.wsdl",
            ]),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut doc = fixture(name).to_vec();
            for (at, byte) in edits {
                let i = at.index(doc.len());
                doc[i] = byte;
            }
            let _ = Envelope::parse(Bytes::from(doc.clone()), &SoapLimits::default());
            let _ = Wsdl::parse(&doc, &SoapLimits::default());
            let end = cut.index(doc.len() + 1);
            let _ = Envelope::parse(Bytes::copy_from_slice(&doc[..end]), &SoapLimits::default());
            let _ = Wsdl::parse(&doc[..end], &SoapLimits::default());
        }

        #[test]
        fn payload_round_trips(text in "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{0,64}", v12 in any::<bool>()) {
            let version = if v12 { SoapVersion::V12 } else { SoapVersion::V11 };
            let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let payload = format!("<m:Echo xmlns:m=\"urn:echo\"><m:text>{escaped}</m:text></m:Echo>");
            let msg = EnvelopeBody::new(version, &[Bytes::from_static(b"<h:H xmlns:h=\"urn:h\"/>")], Bytes::from(payload.clone())).to_bytes();
            let env = Envelope::parse(msg, &SoapLimits::default()).unwrap();
            prop_assert_eq!(env.version(), version);
            prop_assert_eq!(env.body_str(), payload.as_str());
            prop_assert_eq!(env.headers().len(), 1);
            #[derive(serde::Deserialize)]
            struct Echo { text: String }
            let echo: Echo = env.deserialize().unwrap();
            prop_assert_eq!(echo.text, text.replace("\r\n", "\n").replace('\r', "\n"));
        }

        #[test]
        fn faults_round_trip(reason in "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\r\u{fffe}\u{ffff}]{0,64}", server in any::<bool>(), v12 in any::<bool>()) {
            let version = if v12 { SoapVersion::V12 } else { SoapVersion::V11 };
            let fault = if server { SoapFault::server(reason.clone()) } else { SoapFault::client(reason.clone()) };
            let env = Envelope::parse(EnvelopeBody::fault(version, &fault).to_bytes(), &SoapLimits::default()).unwrap();
            let back = env.fault().unwrap();
            prop_assert_eq!(back.is_server(), server);
            prop_assert_eq!(back.reason(), reason.trim());
        }
    }
}

// ---------------------------------------------------------------- server: input and media types

async fn raw_post_opt(addr: SocketAddr, content_type: Option<&str>, body: String) -> (StatusCode, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::post(format!("http://{addr}/"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn add_envelope(version: SoapVersion, a: &str) -> String {
    let body = format!("<c:Add xmlns:c=\"urn:calc\"><c:a>{a}</c:a><c:b>2</c:b></c:Add>");
    String::from_utf8(EnvelopeBody::new(version, &[], Bytes::from(body)).to_bytes().to_vec()).unwrap()
}

/// A valid envelope sent as `application/json`, `text/plain` or without a
/// content type was answered 200; each version needs its own media type.
#[tokio::test]
async fn wrong_media_types_are_refused_with_415() {
    let addr = calculator_server(SoapServerLayer::new()).await;
    let v11 = add_envelope(SoapVersion::V11, "1");
    let v12 = add_envelope(SoapVersion::V12, "1");
    let cases: [(Option<&str>, &String, u16); 9] = [
        (Some("text/xml; charset=utf-8"), &v11, 200),
        (Some("TEXT/XML"), &v11, 200),
        (Some("application/soap+xml; charset=utf-8; action=\"urn:calc#Add\""), &v12, 200),
        (Some("application/json"), &v11, 415),
        (Some("text/plain"), &v11, 415),
        (None, &v11, 415),
        (Some("application/json"), &v12, 415),
        (Some("text/xml"), &v12, 415),
        (Some("application/soap+xml"), &v11, 415),
    ];
    for (ct, body, status) in cases {
        let (got, answer) = raw_post_opt(addr, ct, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{ct:?}");
        if status == 415 {
            let fault = Envelope::parse(answer, &SoapLimits::default()).unwrap().fault().cloned().unwrap();
            assert!(fault.is_client() && fault.reason().contains("media type"), "{fault}");
        }
    }
    // A lenient server takes any media type; the version is the envelope's.
    let lenient = calculator_server(SoapServerLayer::new().lenient_content_type()).await;
    for (ct, body) in [(Some("application/json"), &v11), (None, &v12), (Some("text/xml"), &v12)] {
        let (got, answer) = raw_post_opt(lenient, ct, body.clone()).await;
        assert_eq!(got, StatusCode::OK, "{ct:?}");
        assert!(Envelope::parse(answer, &SoapLimits::default()).unwrap().fault().is_none());
    }
}

/// `env.deserialize()?` on a bad request in the handler was a Server
/// "internal server error"; it is a Client/Sender fault quoting the error.
#[tokio::test]
async fn bad_input_in_a_handler_is_a_client_fault() {
    let addr = calculator_server(SoapServerLayer::new()).await;
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let mut client =
            SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).version(version).layer(http_client());
        let bad = SoapRequest::new("<c:Add xmlns:c=\"urn:calc\"><c:a>twelve</c:a><c:b>2</c:b></c:Add>");
        let err = client.ready().await.unwrap().call(bad).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_client(), "{version}: {fault}");
        assert!(fault.reason().contains("deserializing"), "{fault}");
        let status = if version == SoapVersion::V11 { 500 } else { 400 };
        assert_eq!(fault.http_status(), Some(StatusCode::from_u16(status).unwrap()));
        use tower_mesh::classify::Classify;
        assert!(!Classify::<SoapResponse, SoapError>::classify(&SoapClassifier::new(), Err(&err)).is_failure());
    }
    // Real handler failures stay server faults; and the old answer on request.
    let strict = calculator_server(SoapServerLayer::new().input_errors_as_client_faults(false)).await;
    let mut client = SoapEnvelopeLayer::new(format!("http://{strict}/").parse().unwrap()).layer(http_client());
    let bad = SoapRequest::new("<c:Add xmlns:c=\"urn:calc\"><c:a>twelve</c:a><c:b>2</c:b></c:Add>");
    let fault = client.ready().await.unwrap().call(bad).await.unwrap_err().fault().cloned().unwrap();
    assert!(fault.is_server() && fault.reason() == "internal server error", "{fault}");
    let crash = SoapRequest::new("<c:Crash xmlns:c=\"urn:calc\"/>");
    let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).layer(http_client());
    let fault = client.ready().await.unwrap().call(crash).await.unwrap_err().fault().cloned().unwrap();
    assert!(fault.is_server(), "{fault}");
}

// ---------------------------------------------------------------- server: WS-Security

const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn at(secs: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// A `wsse:Security` block as the client writes it, for a given time and nonce.
fn security(token: &UsernameToken, version: SoapVersion, created: u64, nonce: &[u8]) -> Bytes {
    let mut out = Vec::new();
    token.write_with(version, at(created), nonce, &mut out);
    Bytes::from(out)
}

/// Answers with the authenticated user.
async fn whoami(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, BoxError> {
    let user = req.extensions().get::<AuthenticatedUser>().expect("an authenticated user").username().to_owned();
    Ok(Response::new(Full::new(Bytes::from(format!("<w:Me xmlns:w=\"urn:w\">{user}</w:Me>")))))
}

/// A server with a validator whose clock stands at T0: every check is
/// against fixed times, never the wall clock.
async fn secured_server(validator: UsernameTokenValidator) -> SocketAddr {
    let layer = SoapServerLayer::new().username_token(validator.clock(|| at(T0)));
    serve(ServiceBuilder::new().layer(layer).service_fn(whoami)).await
}

fn alice(user: &str) -> Option<String> {
    (user == "alice").then(|| "s3cret".to_owned())
}

/// The handler behind a server that declared `wsse:Security` understood
/// used to see any token; with `username_token` the layer checks it.
#[tokio::test]
async fn username_tokens_are_validated_by_the_server() {
    use tower_mesh::classify::Classify;
    let addr = secured_server(UsernameTokenValidator::new(alice)).await;
    let text_off = secured_server(UsernameTokenValidator::new(alice).password_text(false)).await;
    for version in [SoapVersion::V11, SoapVersion::V12] {
        let client =
            SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).version(version).layer(http_client());
        let call = |block: Bytes| {
            let req = SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>").header(block);
            client.clone().oneshot(req)
        };
        let digest = UsernameToken::digest("alice", "s3cret");
        let n = if version == SoapVersion::V11 { 0u8 } else { 100 };
        // A good digest, then the same token again (a replay).
        let good = security(&digest, version, T0, &[n; 16]);
        let res = call(good.clone()).await.unwrap();
        assert!(res.body_str().contains(">alice<"), "{}", res.body_str());
        let expect = |err: SoapError, code: WsseFault| {
            let fault = err.fault().cloned().unwrap_or_else(|| panic!("{version}: a fault, got {err:?}"));
            assert!(fault.is_client() && fault.is_security(), "{version}: {fault}");
            assert_eq!(fault.reason(), code.reason());
            match version {
                SoapVersion::V11 => assert_eq!(fault.code_name(), &code.name()),
                SoapVersion::V12 => {
                    assert_eq!(fault.subcodes(), &[code.name()]);
                    assert_eq!(fault.http_status(), Some(StatusCode::BAD_REQUEST));
                }
            }
            let as_error = SoapError::from(fault);
            assert!(!Classify::<SoapResponse, SoapError>::classify(&SoapClassifier::new(), Err(&as_error)).is_failure());
        };
        expect(call(good).await.unwrap_err(), WsseFault::InvalidSecurity);
        // Wrong password, unknown user: the same answer.
        let wrong = security(&UsernameToken::digest("alice", "guess"), version, T0, &[n + 1; 16]);
        expect(call(wrong).await.unwrap_err(), WsseFault::FailedAuthentication);
        let nobody = security(&UsernameToken::digest("mallory", "s3cret"), version, T0, &[n + 2; 16]);
        expect(call(nobody).await.unwrap_err(), WsseFault::FailedAuthentication);
        // Created within ±5 minutes passes; outside, either way, does not.
        assert!(call(security(&digest, version, T0 - 299, &[n + 3; 16])).await.is_ok());
        assert!(call(security(&digest, version, T0 + 299, &[n + 4; 16])).await.is_ok());
        expect(call(security(&digest, version, T0 - 301, &[n + 5; 16])).await.unwrap_err(), WsseFault::InvalidSecurity);
        expect(call(security(&digest, version, T0 + 301, &[n + 6; 16])).await.unwrap_err(), WsseFault::InvalidSecurity);
        // PasswordText: accepted unless refused; wrong text refused.
        assert!(call(security(&UsernameToken::text("alice", "s3cret"), version, T0, &[n + 7; 16])).await.is_ok());
        let wrong_text = security(&UsernameToken::text("alice", "s3cre"), version, T0, &[n + 8; 16]);
        expect(call(wrong_text).await.unwrap_err(), WsseFault::FailedAuthentication);
        // A digest without its nonce; no Security header at all.
        let no_nonce = String::from_utf8(security(&digest, version, T0, &[n + 9; 16]).to_vec()).unwrap();
        let start = no_nonce.find("<wsse:Nonce").unwrap();
        let end = no_nonce.find("</wsse:Nonce>").unwrap() + "</wsse:Nonce>".len();
        let no_nonce = format!("{}{}", &no_nonce[..start], &no_nonce[end..]);
        expect(call(Bytes::from(no_nonce)).await.unwrap_err(), WsseFault::InvalidSecurity);
        let req = SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>");
        expect(client.clone().oneshot(req).await.unwrap_err(), WsseFault::InvalidSecurity);

        let mut strict = SoapEnvelopeLayer::new(format!("http://{text_off}/").parse().unwrap())
            .version(version)
            .layer(http_client());
        let text = security(&UsernameToken::text("alice", "s3cret"), version, T0, &[n + 10; 16]);
        let req = SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>").header(text);
        expect(strict.ready().await.unwrap().call(req).await.unwrap_err(), WsseFault::InvalidSecurity);
        let req =
            SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>").header(security(&digest, version, T0, &[n + 11; 16]));
        assert!(strict.ready().await.unwrap().call(req).await.is_ok());
    }
}

/// A nonce store shared by two servers (as Redis would be): a token
/// accepted by one is a replay at the other.
#[tokio::test]
async fn a_shared_nonce_store_refuses_a_replay_across_servers() {
    let store = Arc::new(MemoryNonceStore::new(16));
    let a = secured_server(UsernameTokenValidator::new(alice).nonce_store(store.clone())).await;
    let b = secured_server(UsernameTokenValidator::new(alice).nonce_store(store.clone())).await;
    let block = security(&UsernameToken::digest("alice", "s3cret"), SoapVersion::V11, T0, b"0123456789abcdef");
    let req = SoapRequest::new("<w:WhoAmI xmlns:w=\"urn:w\"/>").header(block);
    let mut to_a = SoapEnvelopeLayer::new(format!("http://{a}/").parse().unwrap()).layer(http_client());
    let mut to_b = SoapEnvelopeLayer::new(format!("http://{b}/").parse().unwrap()).layer(http_client());
    assert!(to_a.ready().await.unwrap().call(req.clone()).await.is_ok());
    let err = to_b.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.fault().unwrap().code_name(), &WsseFault::InvalidSecurity.name());
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------- WS-Addressing

/// An HTTP "client" that records the envelope sent and answers an empty Body.
fn recording_client(
    sent: Arc<std::sync::Mutex<Vec<(http::HeaderMap, Bytes)>>>,
) -> impl Service<Request<EnvelopeBody>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |req: Request<EnvelopeBody>| {
        let sent = sent.clone();
        async move {
            let (parts, body) = req.into_parts();
            sent.lock().unwrap().push((parts.headers, body.to_bytes()));
            let ok = EnvelopeBody::new(SoapVersion::V11, &[], Bytes::new()).to_bytes();
            Ok::<_, Infallible>(Response::new(Full::new(ok)))
        }
    })
}

fn message_id(envelope: &Bytes) -> String {
    let env = Envelope::parse(envelope.clone(), &SoapLimits::default()).unwrap();
    let block = env.headers().iter().find(|h| h.name().is(WSA_NS, "MessageID")).expect("a MessageID");
    let raw = std::str::from_utf8(block.raw()).unwrap();
    let start = raw.find('>').unwrap() + 1;
    raw[start..raw.rfind("</").unwrap()].to_owned()
}

#[tokio::test]
async fn ws_addressing_headers() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut client = SoapEnvelopeLayer::new("http://billing.internal/soap".parse().unwrap())
        .addressing(WsAddressing::new().reply_to("http://www.w3.org/2005/08/addressing/anonymous"))
        .layer(recording_client(sent.clone()));
    for _ in 0..2 {
        client.ready().await.unwrap().call(add(1, 2)).await.unwrap();
    }
    let sent = sent.lock().unwrap();
    let (headers, body) = &sent[0];
    assert_eq!(headers["soapaction"], "\"urn:calc#Add\"");
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.contains(
            "<wsa:To xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">http://billing.internal/soap</wsa:To>"
        ),
        "{text}"
    );
    assert!(text.contains(">urn:calc#Add</wsa:Action>"));
    assert!(text.contains("<wsa:ReplyTo"));
    let (a, b) = (message_id(&sent[0].1), message_id(&sent[1].1));
    assert!(a.starts_with("urn:uuid:") && a.len() == 45, "{a}");
    assert_ne!(a, b, "a fresh MessageID per request");
    assert_eq!(header_text(&sent[0].1, CORRELATION_NS, "CorrelationId"), None, "no correlation id in scope");
}

/// The text of the first header block named `{ns}local`, if any.
fn header_text(envelope: &Bytes, ns: &str, local: &str) -> Option<String> {
    let env = Envelope::parse(envelope.clone(), &SoapLimits::default()).unwrap();
    let block = env.headers().iter().find(|h| h.name().is(ns, local))?;
    let raw = std::str::from_utf8(block.raw()).unwrap();
    let start = raw.find('>').unwrap() + 1;
    Some(raw[start..raw.rfind("</").unwrap()].to_owned())
}

/// Two calls made while handling one request (one correlation id in scope)
/// carry two different `MessageID`s — receivers drop a duplicate — and the
/// correlation id in its own header block.
#[cfg(feature = "correlation-id")]
#[tokio::test]
async fn message_ids_are_unique_and_the_correlation_id_has_its_own_header() {
    use tower_mesh::correlation::{CorrelationId, RequestContext};

    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut client = SoapEnvelopeLayer::new("http://billing.internal/soap".parse().unwrap())
        .addressing(WsAddressing::new())
        .layer(recording_client(sent.clone()));
    let uuid = "0b8f2f8e-6a4f-4d5c-9a53-0d0c1e2f3a4b";
    for id in [uuid, uuid, "order-42", "a<b&c"] {
        let ctx = RequestContext::new(CorrelationId::parse(id).unwrap());
        // As in a handler run by the server-side correlation layer: the call is made in scope.
        ctx.scope(async { client.ready().await.unwrap().call(add(1, 2)).await }).await.unwrap();
    }
    // Outside any scope: no correlation header.
    client.ready().await.unwrap().call(add(1, 2)).await.unwrap();
    let sent = sent.lock().unwrap();
    let ids: Vec<String> = sent.iter().map(|(_, body)| message_id(body)).collect();
    for id in &ids {
        assert!(id.starts_with("urn:uuid:") && id.len() == 45, "{id}");
    }
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every message has its own MessageID: {ids:?}");
    assert!(!ids.contains(&format!("urn:uuid:{uuid}")), "the correlation id is not reused as a MessageID");
    let cids: Vec<Option<String>> =
        sent.iter().map(|(_, body)| header_text(body, CORRELATION_NS, "CorrelationId")).collect();
    assert_eq!(cids[0].as_deref(), Some(uuid));
    assert_eq!(cids[1].as_deref(), Some(uuid));
    assert_eq!(cids[2].as_deref(), Some("order-42"));
    assert_eq!(cids[3].as_deref(), Some("a&lt;b&amp;c"), "escaped, never raw XML");
    assert_eq!(cids[4], None);
}

/// `Debug` of what the client sends and of what the server parses never
/// shows a WS-Security password (PasswordText) or digest.
#[tokio::test]
async fn debug_output_redacts_the_security_header() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut client = SoapEnvelopeLayer::new("http://billing.internal/soap".parse().unwrap())
        .username_token(UsernameToken::text("alice", "s3cret-pw"))
        .layer(tower::service_fn({
            let sent = sent.clone();
            move |req: Request<EnvelopeBody>| {
                let sent = sent.clone();
                async move {
                    sent.lock().unwrap().push(format!("{req:?}"));
                    let bytes = req.into_body().to_bytes();
                    sent.lock().unwrap().push(String::from_utf8(bytes.to_vec()).unwrap());
                    let ok = EnvelopeBody::new(SoapVersion::V11, &[], Bytes::new()).to_bytes();
                    Ok::<_, Infallible>(Response::new(Full::new(ok)))
                }
            }
        }));
    client.ready().await.unwrap().call(add(1, 2)).await.unwrap();
    let sent = sent.lock().unwrap();
    assert!(sent[1].contains("s3cret-pw"), "the wire carries the password");
    assert!(!sent[0].contains("s3cret-pw"), "{}", sent[0]);
    assert!(sent[0].contains("Security") && sent[0].contains("redacted"), "{}", sent[0]);
    assert!(sent[0].contains("urn:calc"), "the rest is shown: {}", sent[0]);

    // The server side: the Envelope (also in the request's extensions) and its header blocks.
    let env = Envelope::parse(Bytes::from(sent[1].clone()), &SoapLimits::default()).unwrap();
    for shown in [format!("{env:?}"), format!("{:?}", env.headers()), format!("{:#?}", env)] {
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("alice") && shown.contains("redacted"), "{shown}");
    }
    let request = SoapRequest::new("<m:X xmlns:m=\"urn:m\"/>")
        .header("<wsse:Security xmlns:wsse=\"urn:s\"><wsse:Password>hunter2</wsse:Password></wsse:Security>");
    let shown = format!("{request:?}");
    assert!(!shown.contains("hunter2") && shown.contains("urn:m"), "{shown}");
}

// ---------------------------------------------------------------- axum

#[tokio::test]
async fn around_an_axum_router() {
    use axum::extract::Extension;
    use axum::response::{IntoResponse, Response as AxumResponse};

    async fn handler(Extension(op): Extension<SoapOperation>, Extension(env): Extension<Envelope>) -> AxumResponse {
        match op.name() {
            Some("Add") => {
                #[derive(serde::Deserialize)]
                struct Add {
                    a: i64,
                    b: i64,
                }
                match env.deserialize::<Add>() {
                    Ok(Add { a, b }) => {
                        format!("<c:AddResponse xmlns:c=\"urn:calc\"><c:sum>{}</c:sum></c:AddResponse>", a + b)
                            .into_response()
                    }
                    Err(e) => SoapFault::client(e.to_string()).into_response(),
                }
            }
            _ => SoapFault::client("unknown operation").into_response(),
        }
    }
    let app = axum::Router::new().route("/calc", axum::routing::post(handler)).layer(SoapServerLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    for version in [SoapVersion::V11, SoapVersion::V12] {
        let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/calc").parse().unwrap())
            .version(version)
            .layer(http_client());
        let res = client.ready().await.unwrap().call(add(40, 2)).await.unwrap();
        #[derive(serde::Deserialize)]
        struct Sum {
            sum: i64,
        }
        assert_eq!(res.deserialize::<Sum>().unwrap().sum, 42);
        assert_eq!(res.envelope().version(), version);
        let err =
            client.ready().await.unwrap().call(SoapRequest::new("<c:Nope xmlns:c=\"urn:calc\"/>")).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_client() && fault.version() == version, "{fault}");
        assert_eq!(fault.reason(), "unknown operation");
    }
}

// ------------------------------------------- byte order marks, UTF-16, standalone fragments

async fn post_bytes(addr: SocketAddr, content_type: &str, body: Bytes) -> (StatusCode, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req =
        Request::post(format!("http://{addr}/")).header("content-type", content_type).body(Full::new(body)).unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

/// A server answering every request with `body` as `content_type`.
async fn answering(content_type: &'static str, body: Bytes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else { return };
            let body = body.clone();
            let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut res = Response::new(Full::new(body.clone()));
                res.headers_mut().insert("content-type", http::HeaderValue::from_static(content_type));
                async move { Ok::<_, Infallible>(res) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    addr
}

fn utf16le_with_bom(text: &str) -> Bytes {
    let mut out = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    Bytes::from(out)
}

const ADD_REQUEST: &str = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><c:Add xmlns:c=\"urn:calc\"><c:a>2</c:a><c:b>40</c:b></c:Add></soap:Body></soap:Envelope>";

#[tokio::test]
async fn server_reads_requests_with_a_byte_order_mark_and_in_utf16() {
    let addr = calculator_server(SoapServerLayer::new()).await;
    let bom = Bytes::from(format!("\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>{ADD_REQUEST}"));
    let utf16 = utf16le_with_bom(&format!("<?xml version=\"1.0\" encoding=\"utf-16\"?>{ADD_REQUEST}"));
    for (request, content_type) in [(bom, "text/xml; charset=utf-8"), (utf16, "text/xml; charset=utf-16")] {
        let (status, body) = post_bytes(addr, content_type, request).await;
        let env = Envelope::parse(body, &SoapLimits::default()).unwrap();
        assert_eq!(status, StatusCode::OK, "{:?}", env.fault());
        // The handler got the exact Body (it checks `env.body()` against what it was handed).
        assert!(env.body_str().contains("<c:sum>42</c:sum>"), "{}", env.body_str());
    }
}

#[tokio::test]
async fn client_reads_responses_with_a_byte_order_mark_and_in_utf16() {
    let response = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:c=\"urn:calc\"><soap:Body><c:AddResponse><c:sum>42</c:sum></c:AddResponse></soap:Body></soap:Envelope>";
    let standalone = "<c:AddResponse xmlns:c=\"urn:calc\"><c:sum>42</c:sum></c:AddResponse>";
    let fault = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:tns=\"urn:calc\"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>bad</faultstring><detail><tns:BadInput><tns:field>b</tns:field></tns:BadInput></detail></soap:Fault></soap:Body></soap:Envelope>";
    for (wire, content_type) in [
        (Bytes::from(format!("\u{FEFF}{response}")), "text/xml; charset=utf-8"),
        (utf16le_with_bom(response), "text/xml; charset=utf-16"),
    ] {
        let addr = answering(content_type, wire).await;
        let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).layer(http_client());
        let res = client.ready().await.unwrap().call(add(40, 2)).await.unwrap();
        // Exact, and standalone: the Envelope's `c` declaration is carried onto the Body's element.
        assert_eq!(res.body_str(), standalone);
        assert_eq!(&res.body()[..], standalone.as_bytes());
        assert_eq!(res.envelope().standalone_body(), &res.body());
        assert_eq!(res.envelope().body_str(), "<c:AddResponse><c:sum>42</c:sum></c:AddResponse>");
        let mut reader = quick_xml::NsReader::from_str(res.body_str());
        let (ns, _) = reader.read_resolved_event().unwrap();
        assert_eq!(ns, quick_xml::name::ResolveResult::Bound(quick_xml::name::Namespace("urn:calc")));
    }
    for wire in [Bytes::from(format!("\u{FEFF}{fault}")), utf16le_with_bom(fault)] {
        let addr = answering("text/xml", wire).await;
        let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).layer(http_client());
        let err = client.ready().await.unwrap().call(add(1, 0)).await.unwrap_err();
        let detail = err.fault().unwrap().detail().unwrap();
        assert_eq!(&detail[..], b"<tns:BadInput xmlns:tns=\"urn:calc\"><tns:field>b</tns:field></tns:BadInput>");
    }
}

/// The issue's hostile message: ~100k namespace declarations and ~100k empty
/// header blocks, about 3 MB (under the 4 MiB limit).
fn namespace_flood() -> Bytes {
    let decls: String = (0..100_000).map(|i| format!(" xmlns:p{i}=\"urn:p{i}\"")).collect();
    let blocks: String = (0..100_000).map(|i| format!("<p{}:H/>", i % 1000)).collect();
    Bytes::from(format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11_ENV_NS}\"{decls}><soap:Header>{blocks}</soap:Header><soap:Body/></soap:Envelope>"
    ))
}

#[tokio::test]
async fn a_namespace_flood_is_refused_on_both_sides() {
    // As a request: a Client fault naming the limit (the handler is not called).
    let addr = calculator_server(SoapServerLayer::new()).await;
    let (status, body) = post_bytes(addr, "text/xml", namespace_flood()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let fault = Envelope::parse(body, &SoapLimits::default()).unwrap().fault().cloned().unwrap();
    assert!(fault.is_client());
    assert!(fault.reason().contains("more than 128 namespace declarations"), "{}", fault.reason());
    // As a response: a typed error.
    let addr = answering("text/xml", namespace_flood()).await;
    let mut client = SoapEnvelopeLayer::new(format!("http://{addr}/").parse().unwrap()).layer(http_client());
    let err = client.ready().await.unwrap().call(add(1, 1)).await.unwrap_err();
    assert!(matches!(err, SoapError::TooManyNamespaces { limit: DEFAULT_MAX_NAMESPACES }), "{err:?}");
}
