//! The CloudEvents 1.0 envelope every publisher sends.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::error::InvalidEvent;

mod builder;

pub use self::builder::EventBuilder;

/// The CloudEvents specification version this crate writes.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a structured-mode (JSON envelope) message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Longest accepted attribute value (ids, keys, trace headers), in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// How an event is laid out in a broker message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// The message body is the whole event as a CloudEvents JSON envelope
    /// (`application/cloudevents+json`). The default.
    #[default]
    Structured,
    /// The message body is the event's `data` as it is, with its
    /// `datacontenttype` as the message content type; every other attribute
    /// travels as a header.
    Binary,
}

/// A CloudEvents 1.0 event: the request type of every publisher.
///
/// Required attributes are `id` (a UUID v4 unless set), `source`, `type` and
/// `specversion` (`"1.0"`); `time` is set when the event is built. Optional
/// ones: `datacontenttype`, `subject`, `data`, and the extension attributes
/// `version` (schema version of the payload), `correlationid`,
/// `traceparent` / `tracestate` (W3C trace context, CloudEvents distributed
/// tracing extension) and `partitionkey` (CloudEvents partitioning
/// extension: per-key order and the broker's partition / routing key).
///
/// With the `correlation-id` feature, the correlation id and trace context
/// of the request in scope
/// ([`RequestContext::current`](crate::correlation::RequestContext::current))
/// are copied in by [`EventBuilder::build`] unless set explicitly.
///
/// An `Event` is immutable and cheap to clone (one reference count), so the
/// retry and dead-letter layers copy it without allocating.
///
/// ```
/// use tower_mesh::publish::Event;
///
/// let event = Event::builder("/orders", "com.example.order.created")
///     .subject("order-42")
///     .partition_key("customer-7")
///     .json(&serde_json::json!({ "order": 42, "total": "19.90" }))
///     .unwrap()
///     .build()
///     .unwrap();
/// assert_eq!(event.specversion(), "1.0");
/// assert_eq!(event.partition_key(), Some("customer-7"));
/// let body = event.to_structured_json();
/// let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(parsed["data"]["order"], 42);
/// assert_eq!(parsed["id"], event.id());
/// ```
#[derive(Clone)]
pub struct Event {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    id: String,
    source: String,
    ty: String,
    time: Option<SystemTime>,
    datacontenttype: Option<String>,
    subject: Option<String>,
    data: Option<Bytes>,
    version: Option<String>,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    partition_key: Option<String>,
    extensions: Vec<(String, String)>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("Event")
            .field("id", &i.id)
            .field("source", &i.source)
            .field("type", &i.ty)
            .field("subject", &i.subject)
            .field("partition_key", &i.partition_key)
            .field("correlation_id", &i.correlation_id)
            .field("data_len", &i.data.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.inner, &*other.inner);
        Arc::ptr_eq(&self.inner, &other.inner)
            || (a.id == b.id
                && a.source == b.source
                && a.ty == b.ty
                && a.time == b.time
                && a.datacontenttype == b.datacontenttype
                && a.subject == b.subject
                && a.data == b.data
                && a.version == b.version
                && a.correlation_id == b.correlation_id
                && a.traceparent == b.traceparent
                && a.tracestate == b.tracestate
                && a.partition_key == b.partition_key
                && a.extensions == b.extensions)
    }
}

impl crate::deadline::DeadlineCarrier for Event {}

impl Event {
    /// Start an event with its two required, user-chosen attributes.
    pub fn builder(source: impl Into<String>, ty: impl Into<String>) -> EventBuilder {
        EventBuilder {
            inner: Inner {
                id: String::new(),
                source: source.into(),
                ty: ty.into(),
                time: None,
                datacontenttype: None,
                subject: None,
                data: None,
                version: None,
                correlation_id: None,
                traceparent: None,
                tracestate: None,
                partition_key: None,
                extensions: Vec::new(),
            },
            time_set: false,
            context_set: false,
        }
    }

    /// A builder starting from this event's attributes (same id), to derive
    /// an event such as a dead letter.
    pub fn to_builder(&self) -> EventBuilder {
        EventBuilder { inner: (*self.inner).clone(), time_set: true, context_set: true }
    }

    /// `id`: unique per source; brokers use it for de-duplication.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// `source`: a URI-reference naming the producer context.
    pub fn source(&self) -> &str {
        &self.inner.source
    }
    /// `type`: the kind of event, e.g. `com.example.order.created`.
    pub fn ty(&self) -> &str {
        &self.inner.ty
    }
    /// `specversion`: always `"1.0"`.
    pub fn specversion(&self) -> &'static str {
        SPEC_VERSION
    }
    /// `time`: when the occurrence happened.
    pub fn time(&self) -> Option<SystemTime> {
        self.inner.time
    }
    /// `time` as an RFC 3339 timestamp (UTC, microseconds).
    pub fn time_rfc3339(&self) -> Option<String> {
        self.inner.time.map(|t| humantime::format_rfc3339_micros(t).to_string())
    }
    /// `datacontenttype` of `data`.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.inner.datacontenttype.as_deref()
    }
    /// `subject`: the subject of the event in the context of the source.
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }
    /// `data`: the payload, as bytes.
    pub fn data(&self) -> Option<&Bytes> {
        self.inner.data.as_ref()
    }
    /// `version` extension: the payload's schema version.
    pub fn version(&self) -> Option<&str> {
        self.inner.version.as_deref()
    }
    /// `correlationid` extension.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.correlation_id.as_deref()
    }
    /// `traceparent` (W3C trace context).
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.as_deref()
    }
    /// `tracestate` (W3C trace context).
    pub fn tracestate(&self) -> Option<&str> {
        self.inner.tracestate.as_deref()
    }
    /// `partitionkey` extension: events with the same key keep their order.
    pub fn partition_key(&self) -> Option<&str> {
        self.inner.partition_key.as_deref()
    }
    /// Further extension attributes, in the order they were added.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner.extensions.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// The value of a further extension attribute.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.inner.extensions.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `true` when `datacontenttype` is JSON (`application/json`, `text/json`,
    /// `…+json`) or absent (CloudEvents' JSON format then assumes JSON).
    pub fn data_is_json(&self) -> bool {
        match self.datacontenttype() {
            None => true,
            Some(ct) => {
                let essence = ct.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
                    || essence.eq_ignore_ascii_case("text/json")
                    || essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
            }
        }
    }

    /// The attributes as `(name, value)` pairs for binary-mode headers: every
    /// context attribute except `data` and `datacontenttype` (which is the
    /// message's content type), named as in CloudEvents (`id`, `source`,
    /// `type`, `specversion`, `time`, `subject`, `version`, `correlationid`,
    /// `traceparent`, `tracestate`, `partitionkey`, then further extensions).
    ///
    /// Each broker prefixes the names as its CloudEvents binding says, except
    /// `traceparent` / `tracestate`, which travel unprefixed so tracing tools
    /// find them: AMQP `cloudEvents:`, Kafka `ce_`, NATS and HTTP `ce-`, MQTT 5
    /// user properties none. [`Event::is_trace_header`] tells which are
    /// unprefixed.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
        let i = &*self.inner;
        let fixed: [(&str, Option<Cow<'_, str>>); 11] = [
            ("id", Some(Cow::Borrowed(i.id.as_str()))),
            ("source", Some(Cow::Borrowed(i.source.as_str()))),
            ("type", Some(Cow::Borrowed(i.ty.as_str()))),
            ("specversion", Some(Cow::Borrowed(SPEC_VERSION))),
            ("time", self.time_rfc3339().map(Cow::Owned)),
            ("subject", i.subject.as_deref().map(Cow::Borrowed)),
            ("version", i.version.as_deref().map(Cow::Borrowed)),
            ("correlationid", i.correlation_id.as_deref().map(Cow::Borrowed)),
            ("traceparent", i.traceparent.as_deref().map(Cow::Borrowed)),
            ("tracestate", i.tracestate.as_deref().map(Cow::Borrowed)),
            ("partitionkey", i.partition_key.as_deref().map(Cow::Borrowed)),
        ];
        fixed
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .chain(i.extensions.iter().map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str()))))
    }

    /// `true` for the attributes that travel as unprefixed headers
    /// (`traceparent`, `tracestate`).
    pub fn is_trace_header(name: &str) -> bool {
        name == "traceparent" || name == "tracestate"
    }

    /// The message body and content type for `mode`: the JSON envelope and
    /// `application/cloudevents+json`, or the data and its `datacontenttype`
    /// (`application/octet-stream` when unset and there is data).
    pub fn body(&self, mode: ContentMode) -> (Bytes, Option<Cow<'_, str>>) {
        match mode {
            ContentMode::Structured => {
                (Bytes::from(self.to_structured_json()), Some(Cow::Borrowed(STRUCTURED_CONTENT_TYPE)))
            }
            ContentMode::Binary => {
                let data = self.inner.data.clone().unwrap_or_default();
                let ct = match (&self.inner.datacontenttype, self.inner.data.is_some()) {
                    (Some(ct), _) => Some(Cow::Borrowed(ct.as_str())),
                    (None, true) => Some(Cow::Borrowed("application/json")),
                    (None, false) => None,
                };
                (data, ct)
            }
        }
    }

    /// The event in the CloudEvents JSON format (structured mode). JSON data
    /// is embedded as JSON (`data`), anything else base64-encoded
    /// (`data_base64`).
    pub fn to_structured_json(&self) -> Vec<u8> {
        let i = &*self.inner;
        let mut out = Vec::with_capacity(192 + i.data.as_ref().map_or(0, |d| d.len() + d.len() / 3));
        out.push(b'{');
        push_field(&mut out, "specversion", SPEC_VERSION, true);
        for (k, v) in self.header_pairs().filter(|(k, _)| *k != "specversion") {
            push_field(&mut out, k, &v, false);
        }
        if let Some(ct) = &i.datacontenttype {
            push_field(&mut out, "datacontenttype", ct, false);
        }
        if let Some(data) = &i.data {
            if self.data_is_json() && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(data);
            } else {
                out.extend_from_slice(b",\"data_base64\":\"");
                base64_encode(data, &mut out);
                out.push(b'"');
            }
        }
        out.push(b'}');
        out
    }

    /// Parse an event from the CloudEvents JSON format (as written by
    /// [`Event::to_structured_json`]); for consumers and tests.
    pub fn from_structured_json(body: &[u8]) -> Result<Event, InvalidEvent> {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|_| InvalidEvent::Malformed("not a JSON object"))?;
        let get = |k: &str| value.get(k).and_then(|v| v.as_str());
        if get("specversion") != Some(SPEC_VERSION) {
            return Err(InvalidEvent::Malformed("specversion is not 1.0"));
        }
        let mut b = Event::builder(
            get("source").ok_or(InvalidEvent::Missing("source"))?,
            get("type").ok_or(InvalidEvent::Missing("type"))?,
        );
        b = b.id(get("id").ok_or(InvalidEvent::Missing("id"))?);
        b.context_set = true;
        b.time_set = true;
        if let Some(t) = get("time") {
            b.inner.time = Some(humantime::parse_rfc3339_weak(t).map_err(|_| InvalidEvent::Malformed("time"))?);
        }
        for (k, v) in &value {
            match (k.as_str(), v) {
                ("specversion" | "id" | "source" | "type" | "time" | "data" | "data_base64", _) => {}
                ("datacontenttype", serde_json::Value::String(s)) => b.inner.datacontenttype = Some(s.clone()),
                ("subject", serde_json::Value::String(s)) => b.inner.subject = Some(s.clone()),
                ("version", serde_json::Value::String(s)) => b.inner.version = Some(s.clone()),
                ("correlationid", serde_json::Value::String(s)) => b.inner.correlation_id = Some(s.clone()),
                ("traceparent", serde_json::Value::String(s)) => b.inner.traceparent = Some(s.clone()),
                ("tracestate", serde_json::Value::String(s)) => b.inner.tracestate = Some(s.clone()),
                ("partitionkey", serde_json::Value::String(s)) => b.inner.partition_key = Some(s.clone()),
                (k, serde_json::Value::String(s)) => b.inner.extensions.push((k.to_owned(), s.clone())),
                (k, other) => b.inner.extensions.push((k.to_owned(), other.to_string())),
            }
        }
        if let Some(data) = value.get("data") {
            b.inner.data = Some(Bytes::from(data.to_string()));
        } else if let Some(serde_json::Value::String(b64)) = value.get("data_base64") {
            b.inner.data = Some(Bytes::from(base64_decode(b64).ok_or(InvalidEvent::Malformed("data_base64"))?));
        }
        b.build()
    }
}

fn push_field(out: &mut Vec<u8>, key: &str, value: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 { B64[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if chunk.len() > 2 { B64[n as usize & 63] } else { b'=' });
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn check_value(attribute: &'static str, value: &str) -> Result<(), InvalidEvent> {
    if value.len() > MAX_ATTRIBUTE_LEN {
        return Err(InvalidEvent::Invalid { attribute, reason: "longer than 1024 bytes" });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidEvent::Invalid { attribute, reason: "contains control characters" });
    }
    Ok(())
}

/// `version-traceid-parentid-flags`, lowercase hex, non-zero ids, version not `ff`.
pub(crate) fn is_traceparent(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: &[u8]| r.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let zero = |r: &[u8]| r.iter().all(|&c| c == b'0');
    b.len() >= 55
        && (b.len() == 55 || b[55] == b'-' && b[..2] != *b"00")
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[..2])
        && &b[..2] != b"ff"
        && hex(&b[3..35])
        && !zero(&b[3..35])
        && hex(&b[36..52])
        && !zero(&b[36..52])
        && hex(&b[53..55])
}

#[cfg(test)]
mod tests;
