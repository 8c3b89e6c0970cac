//! WSDL documents and WSDL URLs from arbitrary bytes.
//!
//! Input: one flag byte. Flag bit 0 clear: the rest is a WSDL document for
//! `Wsdl::parse`. Set: the rest is a WSDL URL for `WsdlUrl::parse`, once as
//! it is and once with a marked password put in its user-info.
//!
//! Properties:
//! - nothing panics;
//! - a parsed WSDL is the same within looser limits, and every operation it
//!   lists comes from one of its bindings and ports and is found by name;
//! - a WSDL URL keeps a host, its `Authorization` is there exactly when a
//!   user name is and is marked sensitive, the request carries it, and its
//!   `Display` / `Debug` never show the password.

use base64::Engine as _;
use tower_mesh::soap::{SoapError, SoapLimits, Wsdl, WsdlUrl};

/// A password no other part of the URL can hold: its non-ASCII marker is
/// percent-encoded in the URL and only appears once decoded.
const MARK: &str = "\u{1F511}";

fn check_wsdl(doc: &[u8]) {
    let tight = SoapLimits::new().max_body(2048).max_depth(12);
    match Wsdl::parse(doc, &tight) {
        Ok(wsdl) => {
            let loose = Wsdl::parse(doc, &SoapLimits::default()).expect("parses within looser limits");
            assert_eq!(loose, wsdl);
            for op in wsdl.operations() {
                let service = wsdl.services.iter().find(|s| s.name == op.service).expect("the operation's service");
                let port = service.ports.iter().find(|p| p.name == op.port).expect("the operation's port");
                let binding = wsdl.bindings.iter().find(|b| b.name == port.binding).expect("the port's binding");
                assert!(binding.operations.iter().any(|o| o.name == op.name), "the binding has the operation");
                assert!(op.version.is_some(), "only SOAP operations are listed");
                assert_eq!(op.address, port.address);
                let found = wsdl.operation(&op.name).expect("found by name");
                assert_eq!(found.name, op.name);
            }
        }
        Err(SoapError::WsdlTooLarge { limit }) => assert!(doc.len() > limit),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The password in an `Authorization: Basic` value.
fn password_of(url: &WsdlUrl) -> Option<String> {
    let auth = url.authorization()?;
    assert!(auth.is_sensitive());
    let b64 = auth.to_str().expect("ASCII").strip_prefix("Basic ").expect("basic auth");
    let plain = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let plain = String::from_utf8(plain).expect("UTF-8 credentials");
    let user = url.username().expect("a user with the credentials");
    Some(plain.strip_prefix(user).and_then(|r| r.strip_prefix(':')).expect("user:password").to_owned())
}

fn check_url(s: &str, marked: bool) -> Option<WsdlUrl> {
    let url = WsdlUrl::parse(s).ok()?;
    assert!(url.uri().host().is_some());
    assert_eq!(url.authorization().is_some(), url.username().is_some());
    let req = url.request();
    assert_eq!(req.uri(), url.uri());
    assert_eq!(req.headers().get(http::header::AUTHORIZATION), url.authorization().as_ref());
    let shown = format!("{url} {url:?}");
    if let Some(pw) = password_of(&url) {
        assert!(url.has_password() || pw.is_empty());
        if marked && !url.username().unwrap_or_default().contains(MARK) {
            assert!(pw.contains(MARK));
            assert!(!shown.contains(MARK), "the password is shown: {shown}");
        }
    }
    Some(url)
}

fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    if flags & 1 == 0 {
        check_wsdl(rest);
        return;
    }
    let Ok(s) = std::str::from_utf8(rest) else { return };
    check_url(s, false);
    if s.contains(MARK) {
        // The marker must come from the password alone.
        return;
    }
    // The same URL with a marked password in its user-info (after any that
    // is there), to check it is never shown.
    let (scheme, tail) = s.split_once("://").unwrap_or(("https", s));
    let (user, tail) = match tail.split_once('@') {
        Some((u, t)) if !u.contains(['/', '?', '#']) => (u.split(':').next().unwrap_or_default(), t),
        _ => ("user", tail),
    };
    let secret: String = MARK.chars().chain(s.chars().take(8)).collect();
    let marked = format!("{scheme}://{user}:{}@{tail}", percent_encode(&secret));
    if let Some(url) = check_url(&marked, true) {
        assert!(url.has_password(), "{marked}");
    }
}
