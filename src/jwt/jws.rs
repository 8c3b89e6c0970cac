//! One pass over a compact JWS: split it, read its header once, verify the
//! signature with a key prepared in advance, check the registered claims and
//! deserialize the claims type.
//!
//! `jsonwebtoken::decode` does the same work with more of it per call: it
//! reads the header twice (in full: `jwk`, `x5c` …), prepares the key (for
//! HMAC, two hash blocks of key schedule) and boxes a verifier for every
//! token, and deserializes the claims twice. Here the key is prepared once
//! per [`VerifyKey`](super::key::VerifyKey), the header is read once into
//! just what is used, and the parts are decoded into stack buffers. The
//! signature check itself is `aws-lc-rs`'s (HMAC, constant time) or
//! `jsonwebtoken::crypto::verify` (RSA, ECDSA, EdDSA); the claim checks are
//! those of `jsonwebtoken`'s `Validation`, written out (it keeps them
//! private), and a property test holds the two to the same answers.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use jwt_base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_base64::DecodeSliceError;
use jwt_base64::Engine;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::JwtError;

/// A JWS header decodes into this many bytes on the stack; a longer one goes
/// to the heap.
const HEADER_STACK: usize = 256;
/// The same for the claims.
const CLAIMS_STACK: usize = 1024;
/// The longest signature of the supported algorithms: RSA with an 8192-bit
/// modulus.
const SIGNATURE_MAX: usize = 1024;

/// Decode one base64url (unpadded) part into `stack`, or into `heap` when it
/// does not fit.
fn b64<'b>(part: &[u8], stack: &'b mut [u8], heap: &'b mut Vec<u8>) -> Result<&'b [u8], JwtError> {
    match URL_SAFE_NO_PAD.decode_slice(part, stack) {
        Ok(n) => Ok(&stack[..n]),
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            URL_SAFE_NO_PAD.decode_vec(part, heap).map_err(|_| JwtError::Malformed)?;
            Ok(heap)
        }
        Err(DecodeSliceError::DecodeError(_)) => Err(JwtError::Malformed),
    }
}

/// A compact JWS split into its parts, with its header read.
pub(crate) struct Jws<'t, 'h> {
    /// `header.claims`, what the signature covers.
    message: &'t [u8],
    claims: &'t [u8],
    signature: &'t [u8],
    /// The algorithm the header names.
    pub(crate) alg: Algorithm,
    /// The key id the header names.
    pub(crate) kid: Option<Cow<'h, str>>,
}

/// The header fields used here. Other fields are not read; a header naming
/// extensions that must be understood (`crit`) is refused, as none are.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Space for a header read by [`Jws::parse`].
pub(crate) struct HeaderBuf {
    stack: [u8; HEADER_STACK],
    heap: Vec<u8>,
}

impl HeaderBuf {
    pub(crate) fn new() -> Self {
        HeaderBuf { stack: [0; HEADER_STACK], heap: Vec::new() }
    }
}

impl<'t, 'h> Jws<'t, 'h> {
    /// Split `token` into its three parts and read its header.
    ///
    /// A token whose header is JSON naming an algorithm that does not exist
    /// here (`none`) is [`JwtError::AlgorithmMismatch`]; anything else that
    /// is not three base64url parts with a JSON header is
    /// [`JwtError::Malformed`].
    pub(crate) fn parse(token: &'t [u8], buf: &'h mut HeaderBuf) -> Result<Self, JwtError> {
        let mut parts = token.splitn(3, |&b| b == b'.');
        let (Some(header), Some(claims), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        if signature.contains(&b'.') {
            return Err(JwtError::Malformed);
        }
        let message = &token[..header.len() + 1 + claims.len()];
        let json = b64(header, &mut buf.stack, &mut buf.heap)?;
        // UTF-8 JSON (RFC 7515), the fields this does not read included.
        let json = std::str::from_utf8(json).map_err(|_| JwtError::Malformed)?;
        let h: Header<'h> = serde_json::from_str(json).map_err(|_| JwtError::Malformed)?;
        if h.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let alg = Algorithm::from_str(&h.alg).map_err(|_| JwtError::AlgorithmMismatch)?;
        Ok(Jws { message, claims, signature, alg, kid: h.kid })
    }
}

/// A key's signature check, prepared once.
#[derive(Clone)]
pub(crate) enum SignatureCheck {
    /// An HMAC key with its key schedule done.
    Hmac(Box<aws_lc_rs::hmac::Key>),
    /// A public key, checked by `jsonwebtoken::crypto::verify`.
    Public(jsonwebtoken::DecodingKey),
}

impl SignatureCheck {
    pub(crate) fn new(key: jsonwebtoken::DecodingKey, alg: Algorithm) -> Self {
        use aws_lc_rs::hmac;
        let hmac_alg = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return SignatureCheck::Public(key),
        };
        match key.try_get_as_bytes() {
            Ok(secret) => SignatureCheck::Hmac(Box::new(hmac::Key::new(hmac_alg, secret))),
            // Not reached: `JwtKey` checks that an HMAC algorithm has an HMAC
            // key; the public path refuses it the same way at verification.
            Err(_) => SignatureCheck::Public(key),
        }
    }

    /// Whether `jws` is signed by this key, with `alg` (the key's).
    fn verify(&self, jws: &Jws<'_, '_>, alg: Algorithm) -> Result<(), JwtError> {
        match self {
            SignatureCheck::Hmac(key) => {
                let mut buf = [0u8; SIGNATURE_MAX];
                let n = match URL_SAFE_NO_PAD.decode_slice(jws.signature, &mut buf) {
                    Ok(n) => n,
                    // Longer than any HMAC: it cannot match.
                    Err(DecodeSliceError::OutputSliceTooSmall) => return Err(JwtError::BadSignature),
                    Err(DecodeSliceError::DecodeError(_)) => return Err(JwtError::Malformed),
                };
                aws_lc_rs::hmac::verify(key, jws.message, &buf[..n]).map_err(|_| JwtError::BadSignature)
            }
            SignatureCheck::Public(key) => {
                let sig = std::str::from_utf8(jws.signature).map_err(|_| JwtError::Malformed)?;
                match jsonwebtoken::crypto::verify(sig, jws.message, key, alg) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(JwtError::BadSignature),
                    Err(e) => Err(JwtError::from_decode(&e)),
                }
            }
        }
    }
}

impl fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureCheck::Hmac(_) => "Hmac",
            SignatureCheck::Public(_) => "Public",
        })
    }
}

/// Registered claims that must be present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Required(u8);

impl Required {
    const NAMES: [&'static str; 5] = ["exp", "nbf", "sub", "iss", "aud"];

    /// Add `name` if it is one of the registered claims checked here.
    pub(crate) fn add(&mut self, name: &str) {
        if let Some(i) = Self::NAMES.iter().position(|n| *n == name) {
            self.0 |= 1 << i;
        }
    }

    /// Whether the claim `NAMES[i]` is required.
    fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    #[cfg(test)]
    fn has(self, name: &str) -> bool {
        Self::NAMES.iter().position(|n| *n == name).is_some_and(|i| self.contains(i))
    }
}

/// The claim rules of a layer, shared by its keys.
#[derive(Clone, Debug)]
pub(crate) struct ClaimRules {
    /// Accepted issuers; empty: `iss` not checked.
    pub(crate) issuers: Vec<String>,
    /// Accepted audiences; `None`: `aud` not checked.
    pub(crate) audiences: Option<Vec<String>>,
    pub(crate) subject: Option<String>,
    pub(crate) leeway: u64,
    pub(crate) validate_nbf: bool,
    pub(crate) required: Required,
}

impl ClaimRules {
    /// Check the registered claims of `c` at `now` (seconds since the epoch),
    /// as `jsonwebtoken`'s `Validation` does with `validate_exp` on, except
    /// that a registered claim of the wrong type is always refused.
    fn check(&self, c: &Registered<'_>, now: u64) -> Result<(), JwtError> {
        // RFC 7519 gives each registered claim a type: a token with one of
        // another type is refused, whether or not that claim is checked.
        let states = c.states();
        if states.iter().any(|s| matches!(s, State::Invalid)) {
            return Err(JwtError::InvalidClaims);
        }
        for (i, state) in states.iter().enumerate() {
            if self.required.contains(i) && matches!(state, State::Absent) {
                return Err(JwtError::MissingClaim(Required::NAMES[i].into()));
            }
        }
        if let Field::Parsed(exp) = c.exp {
            if exp < now.saturating_sub(self.leeway) {
                return Err(JwtError::Expired);
            }
        }
        if let Field::Parsed(nbf) = c.nbf {
            if self.validate_nbf && nbf > now.saturating_add(self.leeway) {
                return Err(JwtError::NotYetValid);
            }
        }
        if let (Field::Parsed(sub), Some(want)) = (&c.sub, &self.subject) {
            if sub != want {
                return Err(JwtError::WrongSubject);
            }
        }
        if let Field::Parsed(iss) = &c.iss {
            if !self.issuers.is_empty() && !iss.any_in(&self.issuers) {
                return Err(JwtError::WrongIssuer);
            }
        }
        if let (Field::Parsed(aud), Some(accepted)) = (&c.aud, &self.audiences) {
            if !aud.any_in(accepted) {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }
}

/// Verify `jws` with `check` (for `alg`, the key's), check its registered
/// claims with `rules` and deserialize its claims as `C`.
pub(crate) fn verify<C: DeserializeOwned>(
    jws: &Jws<'_, '_>,
    check: &SignatureCheck,
    alg: Algorithm,
    rules: &ClaimRules,
) -> Result<C, JwtError> {
    if jws.alg != alg {
        return Err(JwtError::AlgorithmMismatch);
    }
    check.verify(jws, alg)?;
    let mut stack = [0u8; CLAIMS_STACK];
    let mut heap = Vec::new();
    let json = b64(jws.claims, &mut stack, &mut heap)?;
    // UTF-8 JSON (RFC 7519), the claims no one reads included.
    let json = std::str::from_utf8(json).map_err(|_| JwtError::InvalidClaims)?;
    let registered: Registered<'_> = serde_json::from_str(json).map_err(|_| JwtError::InvalidClaims)?;
    rules.check(&registered, jsonwebtoken::get_current_timestamp())?;
    serde_json::from_str(json).map_err(|_| JwtError::InvalidClaims)
}

/// A registered claim: absent (or `null`, for the strings), of the wrong
/// type, or read.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    Invalid,
    Parsed(T),
}

/// `iss` or `aud`: one string or a list of them.
#[derive(Debug)]
enum Names<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Names<'_> {
    /// Whether any of these names is in `accepted`.
    fn any_in(&self, accepted: &[String]) -> bool {
        match self {
            Names::One(n) => accepted.iter().any(|a| a == n),
            Names::Many(ns) => ns.iter().any(|n| accepted.iter().any(|a| a == n)),
        }
    }
}

/// The registered claims, read without failing on a claim of the wrong type
/// (that is [`Field::Invalid`]); only claims that are not a JSON object fail.
#[derive(Debug, Default)]
struct Registered<'a> {
    exp: Field<u64>,
    nbf: Field<u64>,
    sub: Field<Cow<'a, str>>,
    iss: Field<Names<'a>>,
    aud: Field<Names<'a>>,
}

#[derive(Clone, Copy)]
enum State {
    Absent,
    Invalid,
    Parsed,
}

impl<T> Field<T> {
    fn state(&self) -> State {
        match self {
            Field::Absent => State::Absent,
            Field::Invalid => State::Invalid,
            Field::Parsed(_) => State::Parsed,
        }
    }
}

impl Registered<'_> {
    /// Each claim's state, in the order of [`Required::NAMES`].
    fn states(&self) -> [State; 5] {
        [self.exp.state(), self.nbf.state(), self.sub.state(), self.iss.state(), self.aud.state()]
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Registered<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Registered<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Registered<'a>, M::Error> {
                let mut r = Registered::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let first = match &*key {
                        "exp" => set(&mut r.exp, map.next_value::<Numeric>()?.0),
                        "nbf" => set(&mut r.nbf, map.next_value::<Numeric>()?.0),
                        "sub" => set(&mut r.sub, map.next_value::<Text<'a>>()?.0),
                        "iss" => set(&mut r.iss, map.next_value::<NameList<'a>>()?.0),
                        "aud" => set(&mut r.aud, map.next_value::<NameList<'a>>()?.0),
                        _ => map.next_value::<IgnoredAny>().map(|_| true)?,
                    };
                    // A claim named twice: JSON parsers disagree on which one
                    // counts, so the token is refused.
                    if !first {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Fill `slot` with `value`; `false` if it was filled before (a duplicate).
fn set<T>(slot: &mut Field<T>, value: Field<T>) -> bool {
    let first = matches!(slot, Field::Absent);
    *slot = value;
    first
}

/// A NumericDate: an integer, or a finite non-negative number (rounded);
/// anything else, `null` included, is [`Field::Invalid`].
struct Numeric(Field<u64>);

impl<'de> Deserialize<'de> for Numeric {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Numeric(match d.deserialize_any(Any(std::marker::PhantomData))? {
            Value::U64(v) => Field::Parsed(v),
            Value::F64(v) if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 => Field::Parsed(v.round() as u64),
            _ => Field::Invalid,
        }))
    }
}

/// A string claim (`sub`): `null` is absent, any other type invalid.
struct Text<'a>(Field<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match d.deserialize_any(Any(std::marker::PhantomData))? {
            Value::Null => Field::Absent,
            Value::Str(s) => Field::Parsed(s),
            _ => Field::Invalid,
        }))
    }
}

/// `iss` / `aud`: a string or a list of strings; `null` is absent, anything
/// else (a list with a non-string in it included) invalid.
struct NameList<'a>(Field<Names<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for NameList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NameList(match d.deserialize_any(Any(std::marker::PhantomData))? {
            Value::Null => Field::Absent,
            Value::Str(s) => Field::Parsed(Names::One(s)),
            Value::Strs(v) => Field::Parsed(Names::Many(v)),
            _ => Field::Invalid,
        }))
    }
}

/// What a claim's value is, as far as the checks care; the whole value is
/// always consumed.
enum Value<'a> {
    Null,
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Strs(Vec<Cow<'a, str>>),
    Other,
}

struct Any<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for Any<'a> {
    type Value = Value<'a>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value<'a>, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value<'a>, E> {
        Ok(Value::Null)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'a>, E> {
        Ok(Value::U64(v))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value<'a>, E> {
        Ok(Value::F64(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value<'a>, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Value::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'a>, A::Error> {
        let mut names = Vec::new();
        let mut all_strings = true;
        while let Some(v) = seq.next_element_seed(AnySeed(std::marker::PhantomData))? {
            match v {
                Value::Str(s) if all_strings => names.push(s),
                _ => all_strings = false,
            }
        }
        Ok(if all_strings { Value::Strs(names) } else { Value::Other })
    }
}

struct AnySeed<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> de::DeserializeSeed<'de> for AnySeed<'a> {
    type Value = Value<'a>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'a>, D::Error> {
        d.deserialize_any(Any(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use jsonwebtoken::{EncodingKey, Validation};
    use proptest::prelude::*;
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::jwt::key::{JwtKey, VerifyKey};
    use crate::jwt::validate::Rules;

    const SECRET: &[u8] = b"jws unit-test secret of 32+ bytes";
    const RSA_PRIVATE: &str = include_str!("testdata/rsa1_private.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa1_public.pem");

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with this header and payload text, signed with `key` for `alg`.
    fn token(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{sig}")
    }

    /// The `jsonwebtoken` validation equivalent to `rules`.
    fn validation(rules: &Rules, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = rules.leeway;
        v.validate_nbf = rules.validate_nbf;
        let mut required: HashSet<String> = rules.required.iter().cloned().collect();
        if !rules.issuers.is_empty() {
            v.set_issuer(&rules.issuers);
            required.insert("iss".into());
        }
        if rules.any_audience {
            v.validate_aud = false;
        } else {
            v.set_audience(&rules.audiences);
            required.insert("aud".into());
        }
        if let Some(sub) = &rules.subject {
            v.sub = Some(sub.clone());
            required.insert("sub".into());
        }
        v.required_spec_claims = required;
        v
    }

    fn ours(token: &str, key: JwtKey, rules: &Rules) -> Result<Json, JwtError> {
        let key = VerifyKey::new(key, &Arc::new(rules.claim_rules()));
        let mut buf = HeaderBuf::new();
        let jws = Jws::parse(token.as_bytes(), &mut buf)?;
        key.verify::<Json>(&jws)
    }

    /// `jsonwebtoken::decode`'s answer, as the layer named it before it
    /// verified tokens itself.
    fn theirs(token: &str, key: &jsonwebtoken::DecodingKey, v: &Validation) -> Result<Json, JwtError> {
        match jsonwebtoken::decode::<Json>(token, key, v) {
            Ok(d) => Ok(d.claims),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::Json(_) if jsonwebtoken::decode_header(token).is_ok() => {
                    JwtError::InvalidClaims
                }
                // The layer read `none` and other unknown names as such.
                _ if unknown_alg(token) => JwtError::AlgorithmMismatch,
                _ => JwtError::from_decode(&e),
            }),
        }
    }

    fn unknown_alg(token: &str) -> bool {
        let Some(header) = token.split('.').next().and_then(|h| URL_SAFE_NO_PAD.decode(h).ok()) else { return false };
        let alg = serde_json::from_slice::<Json>(&header).ok().and_then(|h| h.get("alg")?.as_str().map(str::to_owned));
        alg.is_some_and(|a| a.parse::<Algorithm>().is_err())
    }

    /// Whether a registered claim of `payload` (a JSON object) has a type
    /// RFC 7519 does not give it.
    fn wrong_type(payload: &str) -> bool {
        let Ok(Json::Object(m)) = serde_json::from_str::<Json>(payload) else { return false };
        let time = |v: &Json| v.as_u64().is_some() || v.as_f64().is_some_and(|f| f >= 0.0);
        let names = |v: &Json| v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Json::is_string));
        m.iter().any(|(k, v)| match k.as_str() {
            "exp" | "nbf" => !time(v),
            "sub" => !(v.is_string() || v.is_null()),
            "iss" | "aud" => !(names(v) || v.is_null()),
            _ => false,
        })
    }

    fn rules(config: u8) -> Rules {
        let mut r = Rules::default();
        match config {
            0 => {
                r.issuers = vec!["https://auth".into()];
                r.audiences = vec!["orders".into(), "billing".into()];
            }
            1 => {
                r.any_audience = true;
                r.subject = Some("alice".into());
                r.validate_nbf = false;
                r.leeway = 0;
            }
            _ => {
                r.audiences = vec!["orders".into()];
                r.required.push("nbf".into());
                r.required.push("custom".into());
            }
        }
        r
    }

    fn time(now: u64) -> impl Strategy<Value = Option<Json>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec![-100_000i64, -65, -55, -5, 5, 55, 65, 100_000])
                .prop_map(move |d| Some(json!(now as i64 + d))),
            prop::sample::select(vec![-100_000.4f64, -65.6, 65.5, 100_000.7])
                .prop_map(move |d| Some(json!(now as f64 + d))),
            prop::sample::select(vec![json!(null), json!("soon"), json!(-1), json!(true), json!([1]), json!({})])
                .prop_map(Some),
        ]
    }

    fn names() -> impl Strategy<Value = Option<Json>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec![
                json!("https://auth"),
                json!("orders"),
                json!("billing"),
                json!("alice"),
                json!("other"),
                json!(["orders", "x"]),
                json!(["x", "y"]),
                json!([]),
                json!(["https://auth"]),
                json!(["orders", 1]),
                json!(null),
                json!(7),
                json!({"a": "orders"}),
                json!("ord\u{0065}rs"),
            ])
            .prop_map(Some),
        ]
    }

    prop_compose! {
        fn payload(now: u64)(
            exp in time(now), nbf in time(now), iss in names(), aud in names(), sub in names(),
            extra in prop::option::of("[a-z]{1,6}"),
        ) -> String {
            let mut m = serde_json::Map::new();
            for (k, v) in [("exp", exp), ("nbf", nbf), ("iss", iss), ("aud", aud), ("sub", sub)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if let Some(e) = extra {
                m.insert(e, json!({"nested": [1, "two"]}));
            }
            Json::Object(m).to_string()
        }
    }

    proptest! {
        /// For any claims, header and signature, the layer's verification
        /// accepts exactly what `jsonwebtoken::decode` accepts with the same
        /// rules, gives the same claims, and refuses for the same reason;
        /// except that a registered claim of the wrong type is always
        /// refused here.
        #[test]
        fn verification_agrees_with_jsonwebtoken_decode(
            config in 0u8..3,
            payload in payload(jsonwebtoken::get_current_timestamp()),
            header in prop::sample::select(vec![
                r#"{"alg":"HS256","typ":"JWT"}"#,
                r#"{"alg":"HS256","kid":"k1"}"#,
                r#"{"typ":"JWT","alg":"HS256","cty":"x"}"#,
                r#"{"alg":"HS384"}"#,
                r#"{"alg":"none"}"#,
                r#"{"alg":"RS256"}"#,
                r#"{"typ":"JWT"}"#,
                r#"{"alg":"HS256","alg":"HS256"}"#,
                r#"[]"#,
            ]),
            signer in 0u8..4,
            raw_payload in prop::option::of(prop::sample::select(vec!["[]", "1", "{", "\"x\"", r#"{"exp":1,"exp":2}"#])),
        ) {
            let rules = rules(config);
            let payload = raw_payload.map(str::to_owned).unwrap_or(payload);
            let right = EncodingKey::from_secret(SECRET);
            let token = match signer {
                0 | 1 => token(header, &payload, Algorithm::HS256, &right),
                2 => token(header, &payload, Algorithm::HS256, &EncodingKey::from_secret(b"another secret")),
                _ => {
                    let t = token(header, &payload, Algorithm::HS256, &right);
                    // The same signature with one character changed.
                    let last = if t.ends_with('A') { 'B' } else { 'A' };
                    format!("{}{last}", &t[..t.len() - 1])
                }
            };
            let key = JwtKey::hmac(SECRET, Algorithm::HS256).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_secret(SECRET);
            let a = ours(&token, key, &rules);
            let b = theirs(&token, &decoding, &validation(&rules, Algorithm::HS256));
            if wrong_type(&payload) {
                // Refused as such once the signature verified; `jsonwebtoken`
                // may ignore such a claim, or refuse all the claims as JSON.
                match &a {
                    Err(JwtError::InvalidClaims) => {}
                    Err(x) => prop_assert_eq!(Some(x.reason()), b.as_ref().err().map(JwtError::reason)),
                    Ok(_) => prop_assert!(false, "accepted {payload}"),
                }
                return Ok(());
            }
            match (&a, &b) {
                (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
                (Err(x), Err(y)) => prop_assert_eq!(x.reason(), y.reason(), "{:?} vs {:?}", x, y),
                _ => prop_assert!(false, "ours {a:?}, jsonwebtoken {b:?} for {token} ({payload})"),
            }
        }

        /// Any bytes: a verdict, never a panic, and nothing accepted.
        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let key = JwtKey::hmac(SECRET, Algorithm::HS256).unwrap();
            let verify = VerifyKey::new(key, &Arc::new(Rules::default().claim_rules()));
            let mut buf = HeaderBuf::new();
            if let Ok(jws) = Jws::parse(&bytes, &mut buf) {
                prop_assert!(verify.verify::<Json>(&jws).is_err());
            }
        }
    }

    #[test]
    fn an_rsa_token_verifies_once_and_not_when_altered() {
        let enc = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let key = || JwtKey::rsa_pem(RSA_PUBLIC, Algorithm::RS256).unwrap();
        let rules = Rules { any_audience: true, ..Rules::default() };
        let now = jsonwebtoken::get_current_timestamp();
        let t = token(r#"{"alg":"RS256"}"#, &json!({"exp": now + 60}).to_string(), Algorithm::RS256, &enc);
        assert_eq!(ours(&t, key(), &rules).unwrap()["exp"], now + 60);
        let altered = format!("{}x", &t[..t.len() - 1]);
        assert!(matches!(ours(&altered, key(), &rules), Err(JwtError::BadSignature | JwtError::Malformed)));
        // Not base64url in the signature.
        let bad = format!("{}*", &t[..t.len() - 1]);
        assert!(matches!(ours(&bad, key(), &rules), Err(JwtError::Malformed)));
        // An HS256 token made with the public key as the secret.
        let forged = token(
            r#"{"alg":"HS256"}"#,
            &json!({"exp": now + 60}).to_string(),
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        assert!(matches!(ours(&forged, key(), &rules), Err(JwtError::AlgorithmMismatch)));
    }

    #[test]
    fn each_hmac_algorithm_verifies_its_own_tokens_only() {
        let rules = Rules { any_audience: true, ..Rules::default() };
        let exp = json!({"exp": jsonwebtoken::get_current_timestamp() + 60}).to_string();
        let algs = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        for alg in algs {
            let header = format!(r#"{{"alg":"{alg:?}"}}"#);
            let t = token(&header, &exp, alg, &EncodingKey::from_secret(SECRET));
            for key_alg in algs {
                let res = ours(&t, JwtKey::hmac(SECRET, key_alg).unwrap(), &rules);
                if key_alg == alg {
                    assert!(res.is_ok(), "{alg:?}: {res:?}");
                } else {
                    assert!(matches!(res, Err(JwtError::AlgorithmMismatch)), "{alg:?} with a {key_alg:?} key");
                }
            }
            // Same algorithm, another secret.
            let other = JwtKey::hmac(b"another secret of 32 bytes or more", alg).unwrap();
            assert!(matches!(ours(&t, other, &rules), Err(JwtError::BadSignature)), "{alg:?}");
        }
    }

    #[test]
    fn structure_and_header_errors() {
        let rules = Rules { any_audience: true, ..Rules::default() };
        let key = || JwtKey::hmac(SECRET, Algorithm::HS256).unwrap();
        let enc = EncodingKey::from_secret(SECRET);
        let exp = json!({"exp": jsonwebtoken::get_current_timestamp() + 60}).to_string();
        let good = token(r#"{"alg":"HS256"}"#, &exp, Algorithm::HS256, &enc);
        assert!(ours(&good, key(), &rules).is_ok());
        for bad in ["", ".", "..", "a.b", "a.b.c.d", &format!("{good}."), &format!(".{good}")] {
            assert!(matches!(ours(bad, key(), &rules), Err(JwtError::Malformed)), "{bad:?}");
        }
        // Extensions that must be understood: none are.
        let crit = token(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#, &exp, Algorithm::HS256, &enc);
        assert!(matches!(ours(&crit, key(), &rules), Err(JwtError::Malformed)));
        // `none`, and an algorithm name of another case.
        for alg in ["none", "hs256", ""] {
            let t = format!("{}.{}.", b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()), b64(exp.as_bytes()));
            assert!(matches!(ours(&t, key(), &rules), Err(JwtError::AlgorithmMismatch)), "{alg}");
        }
        // A header longer than the stack buffer, and claims longer than theirs.
        let long_header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "k".repeat(2 * HEADER_STACK));
        let long_claims =
            json!({"exp": jsonwebtoken::get_current_timestamp() + 60, "pad": "p".repeat(2 * CLAIMS_STACK)});
        let long = token(&long_header, &long_claims.to_string(), Algorithm::HS256, &enc);
        assert_eq!(ours(&long, key(), &rules).unwrap()["pad"].as_str().unwrap().len(), 2 * CLAIMS_STACK);
        // Not UTF-8, in a header field or a claim that nothing reads.
        let bad_header = format!("{}.{}", b64(b"{\"alg\":\"HS256\",\"jku\":\"\xea>\"}"), b64(exp.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(bad_header.as_bytes(), &enc, Algorithm::HS256).unwrap();
        assert!(matches!(ours(&format!("{bad_header}.{sig}"), key(), &rules), Err(JwtError::Malformed)));
        let now = jsonwebtoken::get_current_timestamp() + 60;
        let bad_claims = [format!("{{\"exp\":{now},\"x\":\"").into_bytes(), vec![0xea, b'"', b'}']].concat();
        let message = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(&bad_claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &enc, Algorithm::HS256).unwrap();
        assert!(matches!(ours(&format!("{message}.{sig}"), key(), &rules), Err(JwtError::InvalidClaims)));
        // A signature longer than any HMAC.
        let (message, _) = good.rsplit_once('.').unwrap();
        let huge = format!("{message}.{}", b64(&[0u8; SIGNATURE_MAX + 3]));
        assert!(matches!(ours(&huge, key(), &rules), Err(JwtError::BadSignature)));
    }

    #[test]
    fn required_claims_name_only_registered_ones() {
        let mut r = Required::default();
        for n in ["exp", "aud", "scope", ""] {
            r.add(n);
        }
        assert!(r.has("exp") && r.has("aud"));
        assert!(!r.has("nbf") && !r.has("scope") && !r.has("iss"));
    }
}
