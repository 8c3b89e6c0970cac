//! The CloudEvents 1.0 envelope every publisher sends.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::error::InvalidEvent;

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

/// Builder of an [`Event`]; [`build`](EventBuilder::build) validates it.
#[derive(Clone)]
pub struct EventBuilder {
    inner: Inner,
    time_set: bool,
    context_set: bool,
}

impl fmt::Debug for EventBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBuilder").field("source", &self.inner.source).field("type", &self.inner.ty).finish()
    }
}

impl EventBuilder {
    /// Set the `id` (default: a new UUID v4, its random bits from a
    /// thread-local ChaCha generator seeded by the operating system: no
    /// system call per event).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.inner.id = id.into();
        self
    }
    /// Set `time` (default: now). `None` leaves it out.
    pub fn time(mut self, time: Option<SystemTime>) -> Self {
        self.inner.time = time;
        self.time_set = true;
        self
    }
    /// Set `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.inner.subject = Some(subject.into());
        self
    }
    /// Set `data` and its `datacontenttype`.
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.inner.datacontenttype = Some(content_type.into());
        self.inner.data = Some(data.into());
        self
    }
    /// Set `data` to `value` serialised as JSON (`datacontenttype:
    /// application/json`).
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, InvalidEvent> {
        let data = serde_json::to_vec(value).map_err(|e| InvalidEvent::Data(e.to_string()))?;
        Ok(self.data("application/json", data))
    }
    /// Set the `version` extension (the payload's schema version).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.inner.version = Some(version.into());
        self
    }
    /// Set the correlation id (otherwise taken from the request in scope).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.inner.correlation_id = Some(id.into());
        self
    }
    /// Set the W3C `traceparent` (otherwise taken from the request in scope).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.inner.traceparent = Some(traceparent.into());
        self
    }
    /// Set the W3C `tracestate`.
    pub fn tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.inner.tracestate = Some(tracestate.into());
        self
    }
    /// Do not copy the correlation id and trace context of the request in
    /// scope.
    pub fn without_context(mut self) -> Self {
        self.context_set = true;
        self
    }
    /// Set the partition key: events with the same key are delivered in order
    /// and land in the same partition (Kafka) or routing-key slot.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.inner.partition_key = Some(key.into());
        self
    }
    /// Add (or replace) an extension attribute. Names must be 1–20 lowercase
    /// ASCII letters or digits, as CloudEvents requires.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        match self.inner.extensions.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.inner.extensions.push((name, value)),
        }
        self
    }

    /// Validate and build the event.
    ///
    /// Fails with [`InvalidEvent`] when a required attribute is empty, an
    /// attribute value is longer than [`MAX_ATTRIBUTE_LEN`] or holds control
    /// characters (every attribute may end up in a broker header), an
    /// extension name is not CloudEvents-conformant, or `traceparent` is not
    /// a W3C `traceparent`.
    pub fn build(mut self) -> Result<Event, InvalidEvent> {
        if self.inner.id.is_empty() {
            self.inner.id = correlation_uuid::Uuid::new_v4().to_string();
        }
        if !self.time_set {
            self.inner.time = Some(SystemTime::now());
        }
        if !self.context_set {
            self.copy_context();
        }
        let i = &self.inner;
        for (name, value) in [("id", &i.id), ("source", &i.source), ("type", &i.ty)] {
            if value.is_empty() {
                return Err(InvalidEvent::Missing(name));
            }
            check_value(name, value)?;
        }
        for (name, value) in [
            ("datacontenttype", &i.datacontenttype),
            ("subject", &i.subject),
            ("version", &i.version),
            ("correlationid", &i.correlation_id),
            ("traceparent", &i.traceparent),
            ("tracestate", &i.tracestate),
            ("partitionkey", &i.partition_key),
        ] {
            if let Some(v) = value {
                check_value(name, v)?;
            }
        }
        if let Some(tp) = &i.traceparent {
            if !is_traceparent(tp) {
                return Err(InvalidEvent::Invalid { attribute: "traceparent", reason: "not a W3C traceparent" });
            }
        }
        for (k, v) in &i.extensions {
            let reserved = matches!(
                k.as_str(),
                "id" | "source"
                    | "type"
                    | "specversion"
                    | "time"
                    | "datacontenttype"
                    | "dataschema"
                    | "subject"
                    | "data"
                    | "data_base64"
                    | "version"
                    | "correlationid"
                    | "traceparent"
                    | "tracestate"
                    | "partitionkey"
            );
            if k.is_empty()
                || k.len() > 20
                || reserved
                || !k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(InvalidEvent::Invalid {
                    attribute: "extension",
                    reason: "names are 1-20 lowercase ASCII letters or digits, not a standard attribute",
                });
            }
            check_value("extension", v)?;
        }
        Ok(Event { inner: Arc::new(self.inner) })
    }

    /// Copy the correlation id and trace context of the request in scope
    /// (each only when not set explicitly). The `traceparent` is the
    /// outbound one: same trace, a new parent id for this publish.
    fn copy_context(&mut self) {
        let Some(ctx) = crate::correlation::RequestContext::current() else { return };
        let i = &mut self.inner;
        if i.correlation_id.is_none() {
            i.correlation_id = Some(ctx.correlation_id.as_str().to_owned());
        }
        if i.traceparent.is_none() {
            if let Some(tp) = ctx.traceparent.as_ref().map(crate::correlation::TraceParent::child) {
                i.traceparent = Some(tp.to_string());
                if i.tracestate.is_none() {
                    i.tracestate = ctx.tracestate.as_ref().map(|t| t.as_str().to_owned()).filter(|t| !t.is_empty());
                }
            }
        }
    }
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
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ev() -> Event {
        Event::builder("/test", "t.created")
            .subject("s")
            .version("2")
            .correlation_id("corr-1")
            .traceparent(TP)
            .tracestate("a=b")
            .partition_key("k1")
            .extension("tenant", "acme")
            .json(&serde_json::json!({"n": 1, "s": "é\"x"}))
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn defaults_id_and_time() {
        let e = Event::builder("/s", "t").build().unwrap();
        assert_eq!(e.id().len(), 36);
        assert!(e.time().is_some());
        assert_ne!(e.id(), Event::builder("/s", "t").build().unwrap().id());
    }

    #[test]
    fn structured_round_trip() {
        let e = ev();
        let body = e.to_structured_json();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["data"]["s"], "é\"x");
        assert_eq!(v["correlationid"], "corr-1");
        assert_eq!(v["tenant"], "acme");
        let back = Event::from_structured_json(&body).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.traceparent(), Some(TP));
        assert_eq!(back.partition_key(), Some("k1"));
        assert_eq!(back.extension("tenant"), Some("acme"));
        assert_eq!(back.time_rfc3339(), e.time_rfc3339());
        let data: serde_json::Value = serde_json::from_slice(back.data().unwrap()).unwrap();
        assert_eq!(data["n"], 1);
    }

    #[test]
    fn binary_data_is_base64() {
        let e = Event::builder("/s", "t").data("application/octet-stream", vec![0u8, 255, 1, 2]).build().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.to_structured_json()).unwrap();
        assert_eq!(v["data_base64"], "AP8BAg==");
        let back = Event::from_structured_json(&e.to_structured_json()).unwrap();
        assert_eq!(&back.data().unwrap()[..], &[0u8, 255, 1, 2]);
        // JSON content type with bytes that are not JSON: still base64, never invalid JSON.
        let e = Event::builder("/s", "t").data("application/json", "{oops").build().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.to_structured_json()).unwrap();
        assert!(v.get("data_base64").is_some());
    }

    #[test]
    fn header_pairs_and_binary_body() {
        let e = ev();
        let pairs: Vec<(String, String)> = e.header_pairs().map(|(k, v)| (k.to_owned(), v.into_owned())).collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("id"), Some(e.id()));
        assert_eq!(get("type"), Some("t.created"));
        assert_eq!(get("correlationid"), Some("corr-1"));
        assert_eq!(get("traceparent"), Some(TP));
        assert_eq!(get("tenant"), Some("acme"));
        assert_eq!(get("datacontenttype"), None);
        let (body, ct) = e.body(ContentMode::Binary);
        assert_eq!(ct.as_deref(), Some("application/json"));
        assert_eq!(&body, e.data().unwrap());
        let (_, ct) = e.body(ContentMode::Structured);
        assert_eq!(ct.as_deref(), Some(STRUCTURED_CONTENT_TYPE));
    }

    #[test]
    fn invalid_input_is_a_typed_error() {
        assert_eq!(Event::builder("", "t").build().unwrap_err(), InvalidEvent::Missing("source"));
        assert!(matches!(
            Event::builder("/s", "t").correlation_id("a\r\nb").build(),
            Err(InvalidEvent::Invalid { attribute: "correlationid", .. })
        ));
        assert!(Event::builder("/s", "t").traceparent("00-zz").build().is_err());
        assert!(Event::builder("/s", "t").extension("Bad-Name", "x").build().is_err());
        assert!(Event::builder("/s", "t").extension("id", "x").build().is_err());
        assert!(Event::builder("/s", "t").partition_key("x".repeat(2000)).build().is_err());
        assert!(Event::from_structured_json(b"[1]").is_err());
        assert!(Event::from_structured_json(br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#).is_err());
    }

    #[test]
    fn traceparent_grammar() {
        assert!(is_traceparent(TP));
        assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
        assert!(is_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"));
    }

    #[test]
    fn request_context_is_copied_in() {
        use crate::correlation::{CorrelationId, RequestContext, TraceParent};
        let tp = TraceParent::parse(TP).unwrap();
        let ctx = RequestContext::new(CorrelationId::parse("order-42").unwrap()).with_traceparent(tp);
        let e = ctx.clone().sync_scope(|| Event::builder("/s", "t").build().unwrap());
        assert_eq!(e.correlation_id(), Some("order-42"));
        let got = e.traceparent().unwrap();
        // Same trace, a new parent id for the publish.
        assert_eq!(&got[..35], &TP[..35]);
        assert_ne!(got, TP);
        // Explicit values win; `without_context` copies nothing.
        let e = ctx.clone().sync_scope(|| Event::builder("/s", "t").correlation_id("mine").build().unwrap());
        assert_eq!(e.correlation_id(), Some("mine"));
        let e = ctx.sync_scope(|| Event::builder("/s", "t").without_context().build().unwrap());
        assert_eq!(e.correlation_id(), None);
        assert_eq!(Event::builder("/s", "t").build().unwrap().traceparent(), None);
    }

    proptest::proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            base64_encode(&data, &mut out);
            proptest::prop_assert_eq!(base64_decode(std::str::from_utf8(&out).unwrap()).unwrap(), data);
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = Event::from_structured_json(&body);
        }
    }
}
