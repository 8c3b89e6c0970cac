//! [`EventBuilder`]: sets an [`Event`]'s attributes and validates them.

use super::*;

/// Builder of an [`Event`]; [`build`](EventBuilder::build) validates it.
#[derive(Clone)]
pub struct EventBuilder {
    pub(super) inner: Inner,
    pub(super) time_set: bool,
    pub(super) context_set: bool,
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
