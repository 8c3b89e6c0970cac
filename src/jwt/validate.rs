//! Token checks: find the key, verify, check the claims.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, Validation};
use jwt_base64::Engine;
use serde::de::DeserializeOwned;

use super::error::JwtError;
use super::jwks::{JwksCache, KeyWait, Lookup};
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
        // Its characters are checked by the verification: `jsonwebtoken`
        // decodes the three parts as unpadded base64url, so a token that
        // verifies is a `b64token`, and one that does not is dropped here.
        let text = token.as_bytes();
        let key = match self.select(text, cached_only) {
            Ok(k) => k,
            Err(Selected::Invalid(e)) => return Check::Invalid(e),
            Err(Selected::Wait(w)) => return Check::Wait(w),
        };
        match key.decode::<C>(text) {
            Ok(claims) => {
                debug_assert!(super::token::check_token68(text).is_ok(), "a verified token is a b64token");
                Check::Valid(claims, token)
            }
            Err(JwtError::Malformed) => Check::Invalid(refine_malformed(text)),
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

    /// The key to check `token` with.
    fn select(&self, token: &[u8], cached_only: bool) -> Result<KeyRef<'_>, Selected> {
        // One static key: `decode` itself refuses a token of another algorithm,
        // so there is no need to read the header twice.
        if self.jwks.is_none() {
            if let [only] = self.keys.as_slice() {
                return Ok(KeyRef::Static(only));
            }
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Err(Selected::Invalid(refine_malformed(token))),
        };
        let kid = header.kid.as_deref();
        if let Some(k) = self.static_key(kid, header.alg) {
            return Ok(KeyRef::Static(k));
        }
        if let Some(jwks) = &self.jwks {
            let found = if cached_only { jwks.lookup_cached(kid, header.alg) } else { jwks.lookup(kid, header.alg) };
            return match found {
                Lookup::Found(k) => Ok(KeyRef::Fetched(k)),
                Lookup::Wait(w) => Err(Selected::Wait(w)),
                Lookup::Unknown => Err(Selected::Invalid(JwtError::UnknownKey)),
                Lookup::Unavailable(e) => Err(Selected::Invalid(JwtError::KeysUnavailable(e))),
            };
        }
        // Without a JWKS, a token whose algorithm no key has is refused as such
        // (an `HS256` token sent to a server with RSA keys).
        if self.keys.iter().all(|k| k.alg != header.alg) {
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

/// A token `jsonwebtoken` could not read: say [`JwtError::AlgorithmMismatch`]
/// when its header is JSON naming an algorithm it does not support (`none`),
/// [`JwtError::Malformed`] otherwise.
#[cold]
fn refine_malformed(token: &[u8]) -> JwtError {
    #[derive(serde::Deserialize)]
    struct AlgOnly<'a> {
        #[serde(borrow)]
        alg: Option<std::borrow::Cow<'a, str>>,
    }
    let Some(header) = token.split(|&b| b == b'.').next() else { return JwtError::Malformed };
    let Ok(json) = jwt_base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return JwtError::Malformed;
    };
    match serde_json::from_slice::<AlgOnly<'_>>(&json) {
        Ok(AlgOnly { alg: Some(alg) }) if alg.parse::<Algorithm>().is_err() => JwtError::AlgorithmMismatch,
        _ => JwtError::Malformed,
    }
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
    /// The `jsonwebtoken` validation (its algorithm list is set per key).
    pub(crate) fn validation(&self) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms.clear();
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = self.validate_nbf;
        let mut required: HashSet<String> = self.required.iter().cloned().collect();
        if !self.issuers.is_empty() {
            v.set_issuer(&self.issuers);
            required.insert("iss".into());
        }
        if self.any_audience {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.insert("aud".into());
        }
        if let Some(sub) = &self.subject {
            v.sub = Some(sub.clone());
            required.insert("sub".into());
        }
        v.required_spec_claims = required;
        v
    }
}
