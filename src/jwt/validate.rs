//! Token checks: find the key, verify, check the claims.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde::de::DeserializeOwned;

use super::error::JwtError;
use super::jwks::{JwksCache, KeyWait, Lookup};
use super::jws::{ClaimRules, Jws};
use super::key::VerifyKey;
use super::token::BearerToken;

/// The outcome of checking a request's token.
pub(crate) enum Check<C> {
    Valid(C, BearerToken),
    Invalid(JwtError),
    /// The token names a key being fetched: check again when this completes.
    Wait(KeyWait),
}

/// The keys and rules of a layer.
#[derive(Debug)]
pub(crate) struct Validator {
    /// Static keys, in the order given.
    keys: Vec<Arc<VerifyKey>>,
    jwks: Option<Arc<JwksCache>>,
    max_len: usize,
}

impl Validator {
    pub(crate) fn new(keys: Vec<Arc<VerifyKey>>, jwks: Option<Arc<JwksCache>>, max_len: usize) -> Self {
        Validator { keys, jwks, max_len }
    }

    /// Check the bearer token of a request with these headers. `cached_only`:
    /// never start a JWKS fetch (after having waited for one).
    #[inline]
    pub(crate) fn check<C: DeserializeOwned>(&self, headers: &HeaderMap, cached_only: bool) -> Check<C> {
        let token = match self.extract(headers) {
            Ok(t) => t,
            Err(e) => return Check::Invalid(e),
        };
        // Its characters are checked by the verification: the three parts
        // are decoded as unpadded base64url, so a token that verifies is a
        // `b64token`, and one that does not is dropped here.
        let text = token.as_bytes();
        let jws = match Jws::parse(text) {
            Ok(j) => j,
            Err(e) => return Check::Invalid(e),
        };
        let key = match self.select(&jws, cached_only) {
            Ok(k) => k,
            Err(Selected::Invalid(e)) => return Check::Invalid(e),
            Err(Selected::Wait(w)) => return Check::Wait(w),
        };
        match key.verify::<C>(&jws) {
            Ok(claims) => {
                debug_assert!(super::token::check_token68(text).is_ok(), "a verified token is a b64token");
                Check::Valid(claims, token)
            }
            Err(e) => Check::Invalid(e),
        }
    }

    /// The request's one `Authorization: Bearer` token, within the size cap.
    fn extract(&self, headers: &HeaderMap) -> Result<BearerToken, JwtError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(JwtError::Missing)?;
        if values.next().is_some() {
            return Err(JwtError::Malformed);
        }
        if value.len() > self.max_len {
            return Err(JwtError::TooLarge { len: value.len(), max: self.max_len });
        }
        BearerToken::from_authorization_unchecked(value)
    }

    /// The key to check `jws` with.
    fn select(&self, jws: &Jws<'_>, cached_only: bool) -> Result<KeyRef<'_>, Selected> {
        // One static key: whatever the `kid`, it is the key (its algorithm
        // is checked against the token's by the verification).
        if self.jwks.is_none() {
            if let [only] = self.keys.as_slice() {
                return Ok(KeyRef::Static(only));
            }
        }
        let kid = jws.kid.as_deref();
        if let Some(k) = self.static_key(kid, jws.alg) {
            return Ok(KeyRef::Static(k));
        }
        if let Some(jwks) = &self.jwks {
            let found = if cached_only { jwks.lookup_cached(kid, jws.alg) } else { jwks.lookup(kid, jws.alg) };
            return match found {
                Lookup::Found(k) => Ok(KeyRef::Fetched(k)),
                Lookup::Wait(w) => Err(Selected::Wait(w)),
                Lookup::Unknown => Err(Selected::Invalid(JwtError::UnknownKey)),
                Lookup::Unavailable(e) => Err(Selected::Invalid(JwtError::KeysUnavailable(e))),
            };
        }
        // Without a JWKS, a token whose algorithm no key has is refused as such
        // (an `HS256` token sent to a server with RSA keys).
        if self.keys.iter().all(|k| k.alg != jws.alg) {
            return Err(Selected::Invalid(JwtError::AlgorithmMismatch));
        }
        Err(Selected::Invalid(JwtError::UnknownKey))
    }

    /// A static key for `kid`; without a `kid`, the first key of `alg`.
    fn static_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => self.keys.iter().find(|k| k.alg == alg),
        }
    }
}

/// The key chosen for a token: a static key is borrowed (no reference count
/// touched per request), a JWKS key is shared with the cache, which may
/// replace it meanwhile.
enum KeyRef<'a> {
    Static(&'a VerifyKey),
    Fetched(Arc<VerifyKey>),
}

impl std::ops::Deref for KeyRef<'_> {
    type Target = VerifyKey;

    #[inline]
    fn deref(&self) -> &VerifyKey {
        match self {
            KeyRef::Static(k) => k,
            KeyRef::Fetched(k) => k,
        }
    }
}

enum Selected {
    Invalid(JwtError),
    Wait(KeyWait),
}

/// The claim rules common to every key of a layer.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    pub(crate) subject: Option<String>,
    pub(crate) leeway: u64,
    pub(crate) required: Vec<String>,
    pub(crate) validate_nbf: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            issuers: Vec::new(),
            audiences: Vec::new(),
            any_audience: false,
            subject: None,
            leeway: 60,
            required: vec!["exp".into()],
            validate_nbf: true,
        }
    }
}

impl Rules {
    /// The rules as the keys check them.
    pub(crate) fn claim_rules(&self) -> ClaimRules {
        let audiences = (!self.any_audience).then_some(self.audiences.as_slice());
        ClaimRules::new(
            &self.issuers,
            audiences,
            self.subject.as_deref(),
            self.leeway,
            self.validate_nbf,
            &self.required,
        )
    }
}
