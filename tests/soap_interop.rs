#![cfg(feature = "soap")]
//! Interop with SOAP from another ecosystem, Python's spyne: our client
//! against a spyne server started by the test on 127.0.0.1
//! (tests/soap_interop/spyne_server.py), and a spyne client sending a
//! UsernameToken digest to our server (tests/soap_interop/spyne_client.py).
//!
//! Needs `python3` with `spyne` and `lxml` (`pip install spyne lxml`). When
//! they are missing the test prints `skipped: …` and passes, unless
//! `TOWER_MESH_REQUIRE_SERVICES=1`, where it fails. `PYTHON` overrides the
//! interpreter.

#[path = "support/services.rs"]
mod services;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};
use tower_mesh::soap::*;

/// The spyne server process, killed on drop.
struct Spyne {
    child: Child,
    ports: (u16, u16),
}

impl Drop for Spyne {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    services::env_or("PYTHON", "python3")
}

fn skip_or_fail(why: &str) -> Option<Spyne> {
    if services::services_required() {
        panic!("spyne is required ({}=1) but {why}", services::REQUIRE_ENV);
    }
    println!("skipped: {why} (pip install spyne lxml)");
    eprintln!("skipped: {why} (pip install spyne lxml)");
    None
}

/// Whether spyne can run (else it says why, and fails if it is required).
fn spyne_available() -> bool {
    let py = python();
    let probe =
        Command::new(&py).args(["-c", "import spyne, lxml"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match probe {
        Ok(s) if s.success() => true,
        Ok(_) => skip_or_fail(&format!("Python module spyne or lxml is not importable by {py}")).is_some(),
        Err(_) => skip_or_fail(&format!("no Python interpreter `{py}`")).is_some(),
    }
}

fn start_spyne() -> Option<Spyne> {
    let py = python();
    if !spyne_available() {
        return None;
    }
    let script = format!("{}/tests/soap_interop/spyne_server.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the spyne server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the ports");
    let mut ports = line.split_whitespace().map(|p| p.parse::<u16>().expect("a port"));
    let ports = (ports.next().expect("SOAP 1.1 port"), ports.next().expect("SOAP 1.2 port"));
    Some(Spyne { child, ports })
}

const TNS: &str = "urn:tower-mesh:calculator";

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddResponse {
    add_result: i64,
}

#[derive(Debug, serde::Deserialize)]
struct SayHelloResponse {
    #[serde(rename = "say_helloResult")]
    say_hello_result: Strings,
}

#[derive(Debug, serde::Deserialize)]
struct Strings {
    #[serde(default)]
    string: Vec<String>,
}

/// The detail `<ns:problem xmlns:ns="urn:tower-mesh:errors">` with its
/// `field` and `message`, resolved by namespace.
fn assert_namespaced_problem(detail: &str) {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;
    let mut reader = quick_xml::NsReader::from_str(detail);
    let mut names = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_resolved_event().unwrap() {
            (ResolveResult::Bound(ns), Event::Start(e)) => {
                names.push(format!("{{{}}}{}", ns.0, e.local_name().into_inner()));
            }
            (_, Event::Text(t)) => text.push_str(&t.xml10_content()),
            (_, Event::Eof) => break,
            _ => {}
        }
    }
    let e = "urn:tower-mesh:errors";
    assert_eq!(names, [format!("{{{e}}}problem"), format!("{{{e}}}field"), format!("{{{e}}}message")], "{detail}");
    assert_eq!(text, "valuemust not be empty");
}

#[tokio::test]
async fn spyne_calls_and_faults_both_versions() {
    let Some(spyne) = start_spyne() else { return };
    for (port, version) in [(spyne.ports.0, SoapVersion::V11), (spyne.ports.1, SoapVersion::V12)] {
        // Operation discovery from spyne's WSDL.
        let wsdl_url = WsdlUrl::parse(&format!("http://127.0.0.1:{port}/?wsdl")).unwrap();
        let fetcher: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let wsdl = Wsdl::fetch(fetcher, &wsdl_url, &SoapLimits::default()).await.unwrap();
        let mut names: Vec<_> = wsdl.operations().into_iter().map(|o| o.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names, ["add", "crash", "divide", "say_hello", "validate"]);
        let add_op = wsdl.operations().into_iter().find(|o| o.name == "add").unwrap();
        assert_eq!(add_op.version, Some(version), "spyne's binding version");
        assert_eq!(add_op.input.as_deref(), Some("add"));
        let address: http::Uri = add_op.address.clone().expect("an address").parse().unwrap();
        assert_eq!(address.port_u16(), Some(port));

        let http = Client::builder(TokioExecutor::new()).build_http::<EnvelopeBody>();
        let mut client = SoapEnvelopeLayer::new(address).version(version).layer(http);

        // A call with its typed result.
        let req = SoapRequest::new(format!("<c:add xmlns:c=\"{TNS}\"><c:a>20</c:a><c:b>22</c:b></c:add>"))
            .action(add_op.soap_action.clone().unwrap_or_else(|| "add".into()));
        let res = client.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.envelope().version(), version);
        assert_eq!(res.envelope().body_element(), Some(&QualifiedName::new(TNS, "addResponse")));
        let sum: AddResponse = res.deserialize().unwrap();
        assert_eq!(sum.add_result, 42, "{version}");

        // An array result.
        let req = SoapRequest::new(format!(
            "<c:say_hello xmlns:c=\"{TNS}\"><c:name>Ada &amp; Grace</c:name><c:times>3</c:times></c:say_hello>"
        ));
        let res = client.ready().await.unwrap().call(req).await.unwrap();
        let hello: SayHelloResponse = res.deserialize().unwrap();
        assert_eq!(hello.say_hello_result.string, vec!["Hello, Ada & Grace"; 3]);

        // A client fault, typed.
        let req = SoapRequest::new(format!("<c:divide xmlns:c=\"{TNS}\"><c:a>1</c:a><c:b>0</c:b></c:divide>"));
        let err = client.ready().await.unwrap().call(req).await.unwrap_err();
        let fault = err.fault().unwrap_or_else(|| panic!("{version}: expected a fault, got {err:?}"));
        assert!(fault.is_client(), "{fault}");
        assert_eq!(fault.reason(), "division by zero");
        assert_eq!(fault.version(), version);
        assert!(fault.http_status().is_some_and(|s| s.is_client_error() || s.is_server_error()));
        if version == SoapVersion::V11 {
            assert_eq!(fault.subcodes()[0].local, "DivideByZero");
        }

        // A server fault, typed, which the classifier counts as a failure.
        let req = SoapRequest::new(format!("<c:crash xmlns:c=\"{TNS}\"/>"));
        let err = client.ready().await.unwrap().call(req).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_server(), "{fault}");
        assert_eq!(fault.reason(), "backend unavailable");
        use tower_mesh::classify::Classify;
        assert!(Classify::<SoapResponse, SoapError>::classify(&SoapClassifier::new(), Err(&err)).is_failure());

        // A client fault whose detail is an element in its own namespace.
        let req = SoapRequest::new(format!("<c:validate xmlns:c=\"{TNS}\"><c:value>x</c:value></c:validate>"));
        let err = client.ready().await.unwrap().call(req).await.unwrap_err();
        let fault = err.fault().expect("a fault");
        assert!(fault.is_client() && fault.version() == version, "{fault}");
        assert_eq!(fault.reason(), "invalid input");
        assert_eq!(fault.subcodes()[0].local, "Validation");
        let detail = std::str::from_utf8(fault.detail().expect("a detail")).unwrap();
        assert_namespaced_problem(detail);

        // Spyne refuses a request of the other SOAP version.
        let other = if version == SoapVersion::V11 { SoapVersion::V12 } else { SoapVersion::V11 };
        let http = Client::builder(TokioExecutor::new()).build_http::<EnvelopeBody>();
        let mut wrong =
            SoapEnvelopeLayer::new(format!("http://127.0.0.1:{port}/").parse().unwrap()).version(other).layer(http);
        let req = SoapRequest::new(format!("<c:add xmlns:c=\"{TNS}\"><c:a>1</c:a><c:b>1</c:b></c:add>"));
        let err = wrong.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(!matches!(err, SoapError::Transport(_)), "{err:?}");
    }
    drop(spyne);
}

const INTEROP_TNS: &str = "urn:tower-mesh:interop";

/// Our server, checking UsernameTokens, as spyne's client calls it.
async fn secured_server() -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let validator = UsernameTokenValidator::new(|user: &str| (user == "alice").then(|| "s3cret".to_owned()));
    let handler = tower::service_fn(|req: http::Request<Full<Bytes>>| async move {
        let op = req.extensions().get::<SoapOperation>().cloned().expect("an operation");
        let user = req.extensions().get::<AuthenticatedUser>().expect("authenticated").username().to_owned();
        match op.name() {
            Some("whoami") => Ok(http::Response::new(Full::new(Bytes::from(format!(
                "<tns:whoamiResponse xmlns:tns=\"{INTEROP_TNS}\"><tns:whoamiResult>{user}</tns:whoamiResult></tns:whoamiResponse>"
            ))))),
            _ => Err(tower::BoxError::from(
                SoapFault::client("invalid input")
                    .with_subcode(QualifiedName::new("urn:tower-mesh:errors", "Validation"))
                    .with_detail(
                        "<e:problem xmlns:e=\"urn:tower-mesh:errors\"><e:field>value</e:field><e:message>must not be empty</e:message></e:problem>",
                    ),
            )),
        }
    });
    let service = SoapServerLayer::new().username_token(validator).layer(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(service.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
        }
    });
    addr
}

/// spyne as the client of our server: a UsernameToken PasswordDigest that
/// spyne's side computes (hashlib, no code of ours) is accepted by
/// `UsernameTokenValidator`, the same token replayed and a wrong password are
/// refused with the WS-Security faults spyne decodes, and a SOAP 1.2 (and
/// 1.1) fault with a namespaced detail reaches spyne with its namespace.
#[tokio::test]
async fn spyne_client_username_token_and_fault_detail() {
    if !spyne_available() {
        return;
    }
    let addr = secured_server().await;
    let script = format!("{}/tests/soap_interop/spyne_client.py", env!("CARGO_MANIFEST_DIR"));
    for version in ["12", "11"] {
        let out = tokio::process::Command::new(python())
            .args([script.as_str(), &format!("http://{addr}/"), version, "alice", "s3cret"])
            .stderr(Stdio::inherit())
            .output()
            .await
            .expect("run the spyne client");
        assert!(out.status.success(), "spyne client failed: {}", String::from_utf8_lossy(&out.stdout));
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let case = |name: &str| lines.iter().find(|l| l["case"] == name).unwrap_or_else(|| panic!("{name}: {lines:?}"));
        let ok = case("digest");
        assert_eq!(ok["status"], 200, "{ok}");
        assert_eq!(ok["result"], "alice", "{ok}");

        let replay = case("replay");
        let wrong = case("wrong_password");
        let code = |v: &serde_json::Value| v["faultcode"].as_str().unwrap_or_default().to_owned();
        // SOAP 1.1: the faultcode is the wsse code itself; spyne joins a SOAP
        // 1.2 Code/Value and its Subcode values with dots.
        let prefix = if version == "12" { "soap:Sender." } else { "" };
        assert_eq!(code(replay), format!("{prefix}sc:InvalidSecurity"), "{replay}");
        assert_eq!(code(wrong), format!("{prefix}sc:FailedAuthentication"), "{wrong}");
        assert_eq!(wrong["faultstring"], WsseFault::FailedAuthentication.reason());

        let detail = case("fault_detail");
        assert_eq!(detail["faultstring"], "invalid input", "{detail}");
        assert_eq!(detail["detail"]["tag"], "{urn:tower-mesh:errors}problem", "{detail}");
        assert_eq!(detail["detail"]["children"]["{urn:tower-mesh:errors}message"], "must not be empty", "{detail}");
    }
}
