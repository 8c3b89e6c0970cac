//! The default claims type.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The claims of a validated token, as put in the request's extensions by
/// [`JwtPropagationLayer`](super::JwtPropagationLayer) (unless another
/// claims type was chosen with
/// [`claims`](super::JwtPropagationBuilder::claims)).
///
/// The registered claims are fields; every other claim is in
/// [`extra`](Claims::extra).
///
/// ```
/// use tower_mesh::jwt::Claims;
///
/// let c: Claims = serde_json::from_str(r#"{"sub":"alice","aud":"api","exp":10,"scope":"read"}"#).unwrap();
/// assert_eq!(c.sub.as_deref(), Some("alice"));
/// assert_eq!(c.aud, ["api"]);
/// assert_eq!(c.extra["scope"], "read");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// `iss`: who issued the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// `sub`: whom the token is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// `aud`: whom the token is for (a single string in the token becomes a
    /// one-element list).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        serialize_with = "ser_aud",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub aud: Vec<String>,
    /// `exp`: expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// `nbf`: not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// `iat`: issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// `jti`: the token's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Every other claim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

fn ser_aud<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}
