//! Verification of a compact JWS with `jsonwebtoken::decode`.
//!
//! The header is read first, for what choosing the key needs (`alg`, `kid`);
//! then `jsonwebtoken::decode` checks the signature and the registered
//! claims, with the key's [`DecodingKey`] and [`Validation`] prepared once
//! (see [`VerifyKey`](super::key::VerifyKey)). Beside it stay the checks it
//! does not make: a header with `crit` (extensions that must be understood:
//! none are) and a registered claim of a type RFC 7519 does not give it
//! (refused, whether or not that claim is checked).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use jwt_base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_base64::Engine;
use serde::de::{DeserializeOwned, Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;

use super::error::JwtError;

/// A compact JWS split into its parts, with its header read.
pub(crate) struct Jws<'t> {
    token: &'t [u8],
    /// The claims part, base64url.
    claims: &'t [u8],
    /// The algorithm the header names.
    pub(crate) alg: Algorithm,
    /// The key id the header names.
    pub(crate) kid: Option<String>,
}

/// The header fields read here.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl<'t> Jws<'t> {
    /// Split `token` into its three parts and read its header.
    ///
    /// A token whose header is JSON naming an algorithm that does not exist
    /// here (`none`) is [`JwtError::AlgorithmMismatch`]; anything else that
    /// is not three base64url parts with a UTF-8 JSON header without `crit`
    /// is [`JwtError::Malformed`].
    pub(crate) fn parse(token: &'t [u8]) -> Result<Self, JwtError> {
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(claims), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
        // UTF-8 JSON (RFC 7515), the fields not read here included.
        let json = std::str::from_utf8(&json).map_err(|_| JwtError::Malformed)?;
        let h: Header = serde_json::from_str(json).map_err(|_| JwtError::Malformed)?;
        if h.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let alg = h.alg.parse().map_err(|_| JwtError::AlgorithmMismatch)?;
        Ok(Jws { token, claims, alg, kid: h.kid })
    }
}

/// Verify `jws` with `key` for `alg` (the key's) and `validation` (made by
/// [`ClaimRules::for_alg`] for `alg`), and deserialize its claims as `C`.
pub(crate) fn verify<C: DeserializeOwned>(
    jws: &Jws<'_>,
    key: &DecodingKey,
    alg: Algorithm,
    validation: &Validation,
) -> Result<C, JwtError> {
    if jws.alg != alg {
        return Err(JwtError::AlgorithmMismatch);
    }
    let e = match jsonwebtoken::decode::<C>(jws.token, key, validation) {
        Ok(data) => return registered_types(jws.claims).map(|()| data.claims),
        Err(e) => e,
    };
    Err(match e.kind() {
        // A header field `jsonwebtoken` reads with another type (`typ: 5`).
        ErrorKind::Json(_) if jsonwebtoken::decode_header(jws.token).is_err() => JwtError::Malformed,
        // Claims that are not a JSON object, or with a registered claim twice.
        ErrorKind::Json(_) => JwtError::InvalidClaims,
        // The signature verified: a claim of the wrong type comes first.
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::ExpiredSignature
        | ErrorKind::ImmatureSignature
        | ErrorKind::InvalidSubject
        | ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience => registered_types(jws.claims).err().unwrap_or_else(|| JwtError::from_decode(&e)),
        _ => JwtError::from_decode(&e),
    })
}

/// The claim rules of a layer, shared by its keys: a `jsonwebtoken`
/// [`Validation`] made once, given each key's algorithm by [`for_alg`](Self::for_alg).
#[derive(Clone, Debug)]
pub(crate) struct ClaimRules(Validation);

impl ClaimRules {
    /// `required` names the claims that must be present (those other than
    /// the registered `exp`, `nbf`, `sub`, `iss` and `aud` are not checked);
    /// an accepted issuer, audience or subject makes its claim required.
    /// `audiences`: `None` for any audience.
    pub(crate) fn new(
        issuers: &[String],
        audiences: Option<&[String]>,
        subject: Option<&str>,
        leeway: u64,
        validate_nbf: bool,
        required: &[String],
    ) -> Self {
        let mut v = Validation { leeway, validate_nbf, ..Validation::default() };
        let mut required: Vec<&str> = required.iter().map(String::as_str).collect();
        if !issuers.is_empty() {
            v.set_issuer(issuers);
            required.push("iss");
        }
        match audiences {
            Some(a) => {
                v.set_audience(a);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(sub) = subject {
            v.sub = Some(sub.to_owned());
            required.push("sub");
        }
        required.retain(|c| REGISTERED.contains(c));
        v.set_required_spec_claims(&required);
        ClaimRules(v)
    }

    /// The validation of a key for `alg`, the one algorithm it accepts.
    pub(crate) fn for_alg(&self, alg: Algorithm) -> Validation {
        let mut v = self.0.clone();
        v.algorithms = vec![alg];
        v
    }
}

/// The registered claims `jsonwebtoken` can require.
const REGISTERED: [&str; 5] = ["exp", "nbf", "sub", "iss", "aud"];

/// The registered claims whose type is checked, as they are in the token
/// (`null` included).
#[derive(Deserialize)]
struct Registered {
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Whether the claims (base64url) are a UTF-8 JSON object whose registered
/// claims have RFC 7519's types: `exp` and `nbf` a NumericDate (a
/// non-negative number), `sub` a string, `iss` and `aud` a string or a list
/// of strings (`null` is absent for these three); if not,
/// [`JwtError::InvalidClaims`].
fn registered_types(claims: &[u8]) -> Result<(), JwtError> {
    let json = URL_SAFE_NO_PAD.decode(claims).map_err(|_| JwtError::Malformed)?;
    // UTF-8 JSON (RFC 7519), the claims no one reads included.
    let json = std::str::from_utf8(&json).map_err(|_| JwtError::InvalidClaims)?;
    if !json.trim_start().starts_with('{') {
        return Err(JwtError::InvalidClaims);
    }
    let r: Registered = serde_json::from_str(json).map_err(|_| JwtError::InvalidClaims)?;
    let valid = |claim: &Option<Value>, check: fn(&Value) -> bool| claim.as_ref().is_none_or(check);
    if valid(&r.exp, date) && valid(&r.nbf, date) && valid(&r.sub, text) && valid(&r.iss, names) && valid(&r.aud, names)
    {
        Ok(())
    } else {
        Err(JwtError::InvalidClaims)
    }
}

/// A NumericDate: a non-negative number.
fn date(v: &Value) -> bool {
    v.as_u64().is_some() || v.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0 && f < u64::MAX as f64)
}

/// A string, or `null` (absent).
fn text(v: &Value) -> bool {
    v.is_string() || v.is_null()
}

/// A string or a list of strings, or `null` (absent).
fn names(v: &Value) -> bool {
    text(v) || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
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
        let jws = Jws::parse(token.as_bytes())?;
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
            if let Ok(jws) = Jws::parse(&bytes) {
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
        // A long header, and long claims.
        let long_header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "k".repeat(512));
        let long_claims = json!({"exp": jsonwebtoken::get_current_timestamp() + 60, "pad": "p".repeat(2048)});
        let long = token(&long_header, &long_claims.to_string(), Algorithm::HS256, &enc);
        assert_eq!(ours(&long, key(), &rules).unwrap()["pad"].as_str().unwrap().len(), 2048);
        // Not UTF-8, in a header field or a claim that nothing reads.
        let bad_header = format!("{}.{}", b64(b"{\"alg\":\"HS256\",\"jku\":\"\xea>\"}"), b64(exp.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(bad_header.as_bytes(), &enc, Algorithm::HS256).unwrap();
        assert!(matches!(ours(&format!("{bad_header}.{sig}"), key(), &rules), Err(JwtError::Malformed)));
        let now = jsonwebtoken::get_current_timestamp() + 60;
        let bad_claims = [format!("{{\"exp\":{now},\"x\":\"").into_bytes(), vec![0xea, b'"', b'}']].concat();
        let message = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(&bad_claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &enc, Algorithm::HS256).unwrap();
        assert!(matches!(ours(&format!("{message}.{sig}"), key(), &rules), Err(JwtError::InvalidClaims)));
        // A signature longer than any HMAC (and than an RSA-8192 one).
        let (message, _) = good.rsplit_once('.').unwrap();
        let huge = format!("{message}.{}", b64(&[0u8; 1027]));
        assert!(matches!(ours(&huge, key(), &rules), Err(JwtError::BadSignature)));
    }

    #[test]
    fn required_claims_name_only_registered_ones() {
        let rules = Rules {
            any_audience: true,
            required: ["exp", "aud", "scope", ""].map(String::from).to_vec(),
            ..Rules::default()
        };
        let v = rules.claim_rules().for_alg(Algorithm::HS256);
        assert_eq!(v.required_spec_claims, HashSet::from(["exp".to_string(), "aud".to_string()]));
        assert_eq!(v.algorithms, [Algorithm::HS256]);
    }
}
