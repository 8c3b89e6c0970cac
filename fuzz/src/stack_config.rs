//! The stack configuration loader from arbitrary bytes: `MeshConfig` from a
//! TOML document or from environment variables, then every client and the
//! server built into stacks that serve one call.
//!
//! Input: one flag byte. Flag bit 0 clear: the rest is a TOML document for
//! `MeshConfig::from_toml_str`; set: its lines are `NAME=value` variables for
//! `MeshConfig::from_vars` (`TOWER_MESH__` is put before a name that lacks
//! it). Flag bit 1: the service behind the stacks answers `503` to the first
//! few calls (so retries, backoff, the breaker and pushback run), `200`
//! after. The runtime's clock is paused: waits take no real time.
//!
//! Properties:
//! - nothing panics: not loading, not building, not serving a call;
//! - a refusal is a `StackError` with a message, and so is each error of its
//!   `source` chain;
//! - of a loaded configuration, every client section is valid as
//!   `MeshConfig::client` returns it, named after its key, and so is the
//!   preset's stack of a service without a section; the server's layers
//!   build;
//! - a client section written back as TOML loads to the same configuration;
//! - a stack that builds serves calls (whatever the result).

use std::convert::Infallible;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use http::{header, Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_mesh::stack::{ClientConfig, MeshConfig, StackError};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("a runtime")
});

/// How many calls the service fails before it answers `200`.
const FAILURES: usize = 6;

fn check_error(e: &StackError) {
    assert!(!e.to_string().is_empty());
    let mut source = e.source();
    while let Some(s) = source {
        assert!(!s.to_string().is_empty(), "a cause without a message in {e:?}");
        source = s.source();
    }
}

/// A service that answers `503` (with a `Retry-After`) to its first `fail` calls, then `200`.
fn service(
    fail: usize,
) -> impl tower::Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    let calls = Arc::new(AtomicUsize::new(0));
    service_fn(move |_req: Request<String>| {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut res = Response::new(String::from("ok"));
            if n < fail {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("18446744073709551615"));
            }
            Ok::<_, Infallible>(res)
        }
    })
}

fn serve_client(client: &ClientConfig, fail: usize) {
    match client.http_stack() {
        Ok(stack) => {
            let svc = stack.layer(service(fail));
            for _ in 0..=fail {
                let req = Request::get("http://service.test/").body(String::new()).expect("a request");
                let _ = RT.block_on(svc.clone().oneshot(req));
            }
        }
        Err(e) => check_error(&e),
    }
    if let Err(e) = client.grpc_stack() {
        check_error(&e);
    }
}

/// The client section written back as TOML, loaded again.
fn reload(cfg: &MeshConfig, client: &ClientConfig) {
    let section = toml::Table::try_from(client).expect("a client section serializes");
    let mut clients = toml::Table::new();
    clients.insert(client.name.clone(), toml::Value::Table(section));
    let mut doc = toml::Table::new();
    doc.insert("preset".into(), toml::Value::String(cfg.preset.to_string()));
    doc.insert("client".into(), toml::Value::Table(clients));
    let text = toml::to_string(&doc).expect("a document");
    let again = MeshConfig::from_toml_str(&text).unwrap_or_else(|e| panic!("written back, refused: {e:?}\n{text}"));
    assert_eq!(again.clients.get(&client.name), Some(client), "written back as\n{text}");
}

fn check(loaded: Result<MeshConfig, StackError>, fail: usize) {
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => return check_error(&e),
    };
    let _guard = RT.enter();
    for (name, listed) in &cfg.clients {
        assert_eq!(&listed.name, name, "a client is named after its key");
        let client = cfg.client(name).unwrap_or_else(|e| panic!("a loaded client is valid: {e:?}"));
        assert_eq!(&client, listed);
        reload(&cfg, &client);
        serve_client(&client, fail);
    }
    let unlisted = "service-without-a-section";
    if !cfg.clients.contains_key(unlisted) {
        let client = cfg.client(unlisted).unwrap_or_else(|e| panic!("the preset's client is valid: {e:?}"));
        assert_eq!(client.name, unlisted);
        serve_client(&client, fail);
    }
    let server = cfg.server.stack().unwrap_or_else(|e| panic!("a loaded server builds: {e:?}"));
    let svc = server.layer(service(fail));
    for _ in 0..=fail {
        let _ = RT.block_on(svc.clone().oneshot(Request::new(String::new())));
    }
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let fail = if flags & 2 != 0 { FAILURES } else { 0 };
    if flags & 1 == 0 {
        check(MeshConfig::from_toml_str(text), fail);
    } else {
        let vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| {
            let k = if k.starts_with(tower_mesh::stack::ENV_PREFIX) {
                k.to_owned()
            } else {
                format!("{}{k}", tower_mesh::stack::ENV_PREFIX)
            };
            (k, v.to_owned())
        });
        check(MeshConfig::from_vars(vars), fail);
    }
}
