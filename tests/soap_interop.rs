#![cfg(feature = "soap")]
//! Interop with a SOAP server from another ecosystem: Python's spyne, started
//! by the test on 127.0.0.1 (tests/soap_interop/spyne_server.py).
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

fn start_spyne() -> Option<Spyne> {
    let py = python();
    let probe =
        Command::new(&py).args(["-c", "import spyne, lxml"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => return skip_or_fail(&format!("Python module spyne or lxml is not importable by {py}")),
        Err(_) => return skip_or_fail(&format!("no Python interpreter `{py}`")),
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
        assert_eq!(names, ["add", "crash", "divide", "say_hello"]);
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
