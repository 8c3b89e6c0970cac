//! Server-side WS-Security: [`UsernameTokenValidator`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::Reader;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::envelope::{resolve_ref, Envelope};
use super::fault::{SoapFault, WsseFault};
use super::security::WSSE_NS;
use crate::BoxError;

/// A boxed, sendable future, as the pluggable stores return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a [`UsernameTokenValidator`] finds a user's password (the clear
/// password: PasswordDigest needs it to recompute the digest).
///
/// Implemented for closures `Fn(&str) -> Option<String>`; implement it for
/// an asynchronous store (a database, a secrets service). An `Err` is
/// answered with a `Receiver`/`Server` fault (the store failed, not the
/// caller) and logged.
pub trait PasswordLookup: Send + Sync + 'static {
    /// The password of `username`, or `None` for an unknown user.
    fn password(&self, username: &str) -> BoxFuture<Result<Option<String>, BoxError>>;
}

impl<F> PasswordLookup for F
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    fn password(&self, username: &str) -> BoxFuture<Result<Option<String>, BoxError>> {
        let found = self(username);
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// The nonces a [`UsernameTokenValidator`] has accepted, to refuse a replay.
///
/// [`MemoryNonceStore`] keeps them in this process. Servers behind a load
/// balancer share one store so a token replayed to another instance is
/// refused too — e.g. Redis: `SET <prefix><hex key> 1 NX PX <ttl ms>`
/// answers `OK` for a new nonce and nil for a replay.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tower_mesh::soap::{BoxFuture, NonceStore};
///
/// /// A store shared by the instances (here a set; in production Redis).
/// #[derive(Default)]
/// struct Shared(Arc<Mutex<HashSet<[u8; 20]>>>);
///
/// impl NonceStore for Shared {
///     fn insert(&self, key: [u8; 20], _ttl: Duration) -> BoxFuture<Result<bool, tower_mesh::BoxError>> {
///         let new = self.0.lock().unwrap().insert(key);
///         Box::pin(async move { Ok(new) })
///     }
/// }
/// ```
pub trait NonceStore: Send + Sync + 'static {
    /// Remember `key` (a digest of the user name and the nonce) for `ttl`:
    /// `Ok(true)` if it was not known, `Ok(false)` if it was (a replay). An
    /// `Err` (a full or unreachable store) refuses the request with a
    /// `Receiver`/`Server` fault.
    fn insert(&self, key: [u8; 20], ttl: Duration) -> BoxFuture<Result<bool, BoxError>>;
}

/// The nonce store of one process: at most `capacity` nonces, each kept
/// until its token's `Created` time leaves the window (after that the
/// `Created` check refuses a replay on its own), measured on tokio's clock.
///
/// When it is full of unexpired nonces it refuses new ones (an `Err`, so the
/// request gets a `Receiver` fault) rather than forget one that could then be
/// replayed. Only authenticated requests add nonces.
pub struct MemoryNonceStore {
    capacity: usize,
    state: Mutex<MemoryState>,
}

struct MemoryState {
    seen: HashMap<[u8; 20], Instant>,
    /// The earliest expiry in `seen`: nothing to purge before then.
    earliest: Option<Instant>,
}

impl fmt::Debug for MemoryNonceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.state.lock().map(|s| s.seen.len()).unwrap_or_default();
        f.debug_struct("MemoryNonceStore").field("capacity", &self.capacity).field("len", &len).finish()
    }
}

/// The default capacity of a [`MemoryNonceStore`].
pub const DEFAULT_NONCE_CAPACITY: usize = 100_000;

impl Default for MemoryNonceStore {
    fn default() -> Self {
        Self::new(DEFAULT_NONCE_CAPACITY)
    }
}

impl MemoryNonceStore {
    /// A store for at most `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        MemoryNonceStore { capacity, state: Mutex::new(MemoryState { seen: HashMap::new(), earliest: None }) }
    }

    /// The number of nonces held.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.seen.len()).unwrap_or_default()
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert_now(&self, key: [u8; 20], ttl: Duration) -> Result<bool, BoxError> {
        let now = Instant::now();
        let expires = now + ttl;
        let mut state = self.state.lock().map_err(|_| "nonce store poisoned")?;
        if let Some(at) = state.seen.get(&key) {
            if *at > now {
                return Ok(false);
            }
        }
        if state.seen.len() >= self.capacity && !state.seen.contains_key(&key) {
            if state.earliest.is_some_and(|e| e <= now) {
                state.seen.retain(|_, at| *at > now);
                state.earliest = state.seen.values().min().copied();
            }
            if state.seen.len() >= self.capacity {
                return Err("nonce store full".into());
            }
        }
        state.seen.insert(key, expires);
        state.earliest = Some(state.earliest.map_or(expires, |e| e.min(expires)));
        Ok(true)
    }
}

impl NonceStore for MemoryNonceStore {
    fn insert(&self, key: [u8; 20], ttl: Duration) -> BoxFuture<Result<bool, BoxError>> {
        Box::pin(std::future::ready(self.insert_now(key, ttl)))
    }
}

impl<T: NonceStore + ?Sized> NonceStore for Arc<T> {
    fn insert(&self, key: [u8; 20], ttl: Duration) -> BoxFuture<Result<bool, BoxError>> {
        (**self).insert(key, ttl)
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The user a [`UsernameTokenValidator`] authenticated, put in the request's
/// extensions by [`SoapServerLayer`](super::SoapServerLayer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedUser {
    username: String,
}

impl AuthenticatedUser {
    /// The `wsse:Username`.
    pub fn username(&self) -> &str {
        &self.username
    }
}

/// The default window around the server's clock that a token's `Created`
/// time must fall in: ±5 minutes.
pub const DEFAULT_CREATED_WINDOW: Duration = Duration::from_secs(300);

/// Checks the WS-Security UsernameToken of a request (UsernameToken Profile
/// 1.0): give it to [`SoapServerLayer::username_token`](super::SoapServerLayer::username_token).
///
/// A request passes when its one `wsse:Security` header block for this node
/// holds a `wsse:UsernameToken` whose password matches the one
/// [`PasswordLookup`] gives for the user:
///
/// - **PasswordDigest**: `Base64(SHA-1(nonce + created + password))` over
///   the token's `wsse:Nonce` and `wsu:Created`, which are then required;
/// - **PasswordText** (unless refused with
///   [`password_text(false)`](Self::password_text)): the password itself.
///
/// Both are compared in constant time. A `Created` time outside the window
/// around the server's clock (default ±5 minutes) is refused, and so is a
/// nonce seen before for the same user within the window ([`NonceStore`];
/// by default a [`MemoryNonceStore`] of [`DEFAULT_NONCE_CAPACITY`]).
///
/// The answers are the WS-Security faults, as `Client`/`Sender` faults
/// (SOAP 1.1 `faultcode` `wsse:…`, 1.2 subcode `wsse:…`):
/// `wsse:FailedAuthentication` for an unknown user or a wrong password (the
/// same answer for both), `wsse:InvalidSecurity` for a missing, repeated or
/// malformed `Security` header or token, a `Created` time outside the
/// window and a replayed nonce. The reason never says more than the
/// specification's text; the cause is logged at debug level. Counted in
/// `tower_mesh_soap_username_token_total{service, outcome}`.
///
/// ```
/// use tower_mesh::soap::{MemoryNonceStore, UsernameTokenValidator};
///
/// let validator = UsernameTokenValidator::new(|user: &str| (user == "alice").then(|| "s3cret".to_owned()))
///     .nonce_store(MemoryNonceStore::new(10_000))
///     .password_text(false);
/// # let _ = validator;
/// ```
#[derive(Clone)]
pub struct UsernameTokenValidator {
    passwords: Arc<dyn PasswordLookup>,
    nonces: Arc<dyn NonceStore>,
    window: Duration,
    allow_text: bool,
    clock: Clock,
}

impl fmt::Debug for UsernameTokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsernameTokenValidator")
            .field("window", &self.window)
            .field("password_text", &self.allow_text)
            .finish_non_exhaustive()
    }
}

/// Largest user name, password and nonce (base64) accepted, in bytes.
const MAX_FIELD: usize = 1024;

/// The fields of a UsernameToken.
#[derive(Default)]
struct Token {
    username: Option<String>,
    password: Option<String>,
    digest: bool,
    nonce: Option<String>,
    created: Option<String>,
}

/// Why a request was refused: the fault, and what is logged.
struct Refusal {
    fault: WsseFault,
    outcome: &'static str,
    why: &'static str,
}

fn refuse(fault: WsseFault, outcome: &'static str, why: &'static str) -> Refusal {
    Refusal { fault, outcome, why }
}

fn invalid(why: &'static str) -> Refusal {
    refuse(WsseFault::InvalidSecurity, "invalid_security", why)
}

impl UsernameTokenValidator {
    /// A validator looking passwords up in `passwords`, with the defaults:
    /// a ±5 minute window, a [`MemoryNonceStore`], PasswordText allowed.
    pub fn new(passwords: impl PasswordLookup) -> Self {
        UsernameTokenValidator {
            passwords: Arc::new(passwords),
            nonces: Arc::new(MemoryNonceStore::default()),
            window: DEFAULT_CREATED_WINDOW,
            allow_text: true,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// How far a token's `Created` time may be from the server's clock, in
    /// either direction (default 5 minutes). Nonces are remembered that long.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The store of nonces seen (default: a [`MemoryNonceStore`] of this process).
    pub fn nonce_store(mut self, store: impl NonceStore) -> Self {
        self.nonces = Arc::new(store);
        self
    }

    /// Whether PasswordText tokens are accepted (default `true`); with
    /// `false` only PasswordDigest is.
    pub fn password_text(mut self, allowed: bool) -> Self {
        self.allow_text = allowed;
        self
    }

    /// The clock `Created` times are checked against (default
    /// `SystemTime::now`; for tests).
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Check the UsernameToken of `envelope`: the authenticated user, or the
    /// WS-Security fault to answer with (see the [type docs](Self)).
    pub fn validate(&self, envelope: &Envelope) -> BoxFuture<Result<AuthenticatedUser, SoapFault>> {
        self.validate_as(envelope, Arc::from("soap"))
    }

    pub(crate) fn validate_as(
        &self,
        envelope: &Envelope,
        service: Arc<str>,
    ) -> BoxFuture<Result<AuthenticatedUser, SoapFault>> {
        let this = self.clone();
        let token = this.token(envelope);
        Box::pin(async move {
            let result = match token {
                Ok(token) => this.check(token).await,
                Err(refusal) => Err(refusal),
            };
            match result {
                Ok(user) => {
                    metrics::counter!("tower_mesh_soap_username_token_total", "service" => service.to_string(), "outcome" => "authenticated").increment(1);
                    tracing::debug!(service = &*service, username = user.username(), "UsernameToken authenticated");
                    Ok(user)
                }
                Err(Refusal { fault, outcome, why }) => {
                    metrics::counter!("tower_mesh_soap_username_token_total", "service" => service.to_string(), "outcome" => outcome).increment(1);
                    if outcome == "store_error" {
                        tracing::warn!(service = &*service, reason = why, "UsernameToken not checked");
                        return Err(SoapFault::server("authentication unavailable"));
                    }
                    tracing::debug!(service = &*service, outcome, reason = why, "UsernameToken refused");
                    Err(SoapFault::wsse(fault))
                }
            }
        })
    }

    /// The token of the one `Security` block for this node.
    fn token(&self, envelope: &Envelope) -> Result<Token, Refusal> {
        let mut blocks =
            envelope.headers().iter().filter(|h| h.name().is(WSSE_NS, "Security") && h.targets_ultimate_receiver());
        let block = blocks.next().ok_or(invalid("no wsse:Security header"))?;
        if blocks.next().is_some() {
            return Err(invalid("more than one wsse:Security header for this node"));
        }
        let raw = std::str::from_utf8(block.raw()).map_err(|_| invalid("Security header not UTF-8"))?;
        parse_token(raw)
    }

    async fn check(&self, token: Token) -> Result<AuthenticatedUser, Refusal> {
        let username = token.username.ok_or(invalid("no wsse:Username"))?;
        let given = token.password.ok_or(invalid("no wsse:Password"))?;
        if !token.digest && !self.allow_text {
            return Err(refuse(WsseFault::InvalidSecurity, "invalid_security", "PasswordText refused"));
        }
        let now = (self.clock)();
        let created = match &token.created {
            Some(text) => {
                let at = parse_datetime(text).ok_or(invalid("wsu:Created is not a dateTime"))?;
                let early = now.checked_sub(self.window).unwrap_or(UNIX_EPOCH);
                if at < early || at > now + self.window {
                    return Err(refuse(WsseFault::InvalidSecurity, "expired", "wsu:Created outside the window"));
                }
                Some(at)
            }
            None if token.digest => return Err(invalid("PasswordDigest without wsu:Created")),
            None => None,
        };
        let nonce = match &token.nonce {
            Some(text) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| invalid("wsse:Nonce is not base64"))?,
            ),
            None if token.digest => return Err(invalid("PasswordDigest without wsse:Nonce")),
            None => None,
        };
        let stored = match self.passwords.password(&username).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "password lookup failed");
                return Err(refuse(WsseFault::FailedAuthentication, "store_error", "password lookup failed"));
            }
        };
        let failed = || refuse(WsseFault::FailedAuthentication, "failed_authentication", "wrong user or password");
        // An unknown user costs the same digest as a known one.
        let known = stored.is_some();
        let password = stored.unwrap_or_default();
        let ok = if token.digest {
            let expected = Sha1::new()
                .chain_update(nonce.as_deref().unwrap_or_default())
                .chain_update(token.created.as_deref().unwrap_or_default().as_bytes())
                .chain_update(password.as_bytes())
                .finalize();
            let given = base64::engine::general_purpose::STANDARD.decode(given.trim()).unwrap_or_default();
            bool::from(expected.as_slice().ct_eq(given.as_slice()))
        } else {
            let expected = Sha1::digest(password.as_bytes());
            let given = Sha1::digest(given.as_bytes());
            bool::from(expected.as_slice().ct_eq(given.as_slice()))
        };
        if !(ok && known) {
            return Err(failed());
        }
        if let Some(nonce) = nonce {
            let key: [u8; 20] =
                Sha1::new().chain_update(username.as_bytes()).chain_update([0]).chain_update(&nonce).finalize().into();
            // Kept until the Created check refuses the token on its own.
            let expires = created.unwrap_or(now) + self.window;
            let ttl = expires.duration_since(now).unwrap_or_default().max(Duration::from_secs(1));
            match self.nonces.insert(key, ttl).await {
                Ok(true) => {}
                Ok(false) => return Err(refuse(WsseFault::InvalidSecurity, "replay", "nonce replayed")),
                Err(e) => {
                    tracing::warn!(error = %e, "nonce store failed");
                    return Err(refuse(WsseFault::InvalidSecurity, "store_error", "nonce store failed"));
                }
            }
        }
        Ok(AuthenticatedUser { username })
    }
}

/// Read the first `wsse:UsernameToken` of a `Security` block (element names
/// by local name: the block was identified by its namespace, and its
/// prefixes may be declared on the Envelope).
fn parse_token(raw: &str) -> Result<Token, Refusal> {
    let mut reader = Reader::from_str(raw);
    let mut token = Token::default();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut tokens = 0;
    loop {
        let event = reader.read_event().map_err(|_| invalid("malformed Security header"))?;
        match event {
            Event::Start(e) => {
                let qname = e.name();
                let local = qname.local_name().into_inner().to_owned();
                if local == "UsernameToken" && path.len() == 1 {
                    tokens += 1;
                }
                if local == "Password" && path.len() == 2 && tokens == 1 {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == "Type" {
                            let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).unwrap_or_default();
                            token.digest = v.ends_with("#PasswordDigest");
                            if !v.ends_with("#PasswordText") && !token.digest {
                                return Err(invalid("unknown password type"));
                            }
                        }
                    }
                }
                path.push(local);
                text.clear();
            }
            Event::Empty(_) => {}
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => text.push(resolve_ref(&r).map_err(|_| invalid("undefined entity"))?),
            Event::End(_) => {
                if text.len() > MAX_FIELD {
                    return Err(invalid("token field too long"));
                }
                let in_token = path.len() == 3 && path[1] == "UsernameToken" && tokens == 1;
                if in_token {
                    let value = Some(std::mem::take(&mut text));
                    match path[2].as_str() {
                        "Username" => token.username = value.map(|v| v.trim().to_owned()),
                        "Password" => token.password = value,
                        "Nonce" => token.nonce = value,
                        "Created" => token.created = value.map(|v| v.trim().to_owned()),
                        _ => {}
                    }
                }
                path.pop();
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match tokens {
        0 => Err(invalid("no wsse:UsernameToken")),
        1 => Ok(token),
        _ => Err(invalid("more than one wsse:UsernameToken")),
    }
}

/// An `xsd:dateTime` (`2024-01-31T23:59:59.123Z`, `…+02:00`, or no zone
/// taken as UTC) as a `SystemTime`.
pub(crate) fn parse_datetime(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match &b[i..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 14 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
