//! A SOAP client through the resilience stack, calling an embedded SOAP 1.2
//! service on loopback.
//!
//! The service (a `SoapServerLayer` around a handler, served by hyper on
//! 127.0.0.1) quotes stock prices: it answers the first two calls with a
//! `Receiver` (server) fault, as a backend warming up would, and an unknown
//! symbol with a `Sender` (client) fault.
//!
//! The client stack, outermost first: a total timeout, a retry layer and a
//! circuit breaker that both classify with `SoapClassifier` (server faults are
//! retried and counted, client faults are not), a per-attempt timeout, and the
//! SOAP layer (SOAP 1.2, WS-Security UsernameToken with a password digest,
//! WS-Addressing) over hyper's client.
//!
//! Run: `cargo run --example soap_client --features soap,retry,circuit-breaker,timeout`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::retry::{Backoff, Jitter, RetryLayer};
use tower_mesh::soap::*;
use tower_mesh::timeout::TimeoutLayer;

const NS: &str = "urn:example:quotes";

/// The embedded service's handler: routes on the operation.
async fn quotes(
    calls: Arc<AtomicUsize>,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Full<Bytes>>, BoxError> {
    let op = req.extensions().get::<SoapOperation>().cloned().ok_or("no SOAP operation")?;
    let env = req.extensions().get::<Envelope>().cloned().ok_or("no envelope")?;
    if op.name() != Some("GetQuote") {
        return Err(SoapFault::client(format!("unknown operation {:?}", op.name())).into());
    }
    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(SoapFault::server("quote backend warming up").into());
    }
    #[derive(serde::Deserialize)]
    struct GetQuote {
        symbol: String,
    }
    let GetQuote { symbol } = env.deserialize()?;
    let price = match symbol.as_str() {
        "ACME" => 42.17,
        "INIT" => 7.5,
        _ => {
            return Err(SoapFault::client(format!("unknown symbol {symbol}"))
                .with_subcode(QualifiedName::new(NS, "UnknownSymbol"))
                .into())
        }
    };
    let body = format!("<q:GetQuoteResponse xmlns:q=\"{NS}\"><q:symbol>{symbol}</q:symbol><q:price>{price}</q:price></q:GetQuoteResponse>");
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

/// Serve the SOAP service on 127.0.0.1 (an ephemeral port).
async fn serve() -> Result<std::net::SocketAddr, BoxError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(
            SoapServerLayer::new()
                .name("quotes")
                // The UsernameToken is checked before the handler runs (wrong
                // password, stale or replayed token: a wsse fault).
                .username_token(UsernameTokenValidator::new(|user: &str| {
                    (user == "trader").then(|| "s3cret".to_owned())
                }))
                // The handler accepts (is allowed to ignore) this mustUnderstand block.
                .understands(QualifiedName::new(WSA_NS, "Action")),
        )
        .service_fn(move |req| quotes(calls.clone(), req));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(service.clone());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = serve().await?;
    let endpoint: http::Uri = format!("http://{addr}/quotes").parse()?;
    println!("SOAP service on {endpoint}");

    let breaker =
        CircuitBreakerLayer::builder().name("quotes").classifier(SoapClassifier::new()).minimum_calls(10).build()?;
    let handle = breaker.handle();
    let mut client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .layer(
            RetryLayer::builder()
                .name("quotes")
                .max_retries(3)
                .backoff(
                    Backoff::exponential(Duration::from_millis(20), 2.0, Duration::from_millis(200))
                        .jitter(Jitter::Full),
                )
                .classifier(SoapClassifier::new())
                .build()?,
        )
        .layer(breaker)
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(1)))
        .layer(
            SoapEnvelopeLayer::new(endpoint)
                .name("quotes")
                .version(SoapVersion::V12)
                .username_token(UsernameToken::digest("trader", "s3cret"))
                .addressing(WsAddressing::new()),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<EnvelopeBody>());

    for symbol in ["ACME", "INIT", "NOPE"] {
        let call = SoapRequest::new(format!("<q:GetQuote xmlns:q=\"{NS}\"><q:symbol>{symbol}</q:symbol></q:GetQuote>"))
            .action(format!("{NS}#GetQuote"));
        match client.ready().await?.call(call).await {
            Ok(res) => {
                #[derive(serde::Deserialize, Debug)]
                struct Quote {
                    symbol: String,
                    price: f64,
                }
                let quote: Quote = res.deserialize()?;
                println!("{}: {:.2}", quote.symbol, quote.price);
            }
            Err(err) => match err.downcast_ref::<SoapError>().and_then(SoapError::fault) {
                Some(fault) if fault.is_client() => println!("{symbol}: refused, not retried ({fault})"),
                Some(fault) => println!("{symbol}: service failed ({fault})"),
                None => println!("{symbol}: {err}"),
            },
        }
    }
    let m = handle.metrics();
    println!("breaker: {:?}, {m:?}", handle.state());
    Ok(())
}
