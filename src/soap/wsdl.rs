//! WSDL 1.1: services, ports, endpoint addresses and operations.

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use tower_service::Service;

use super::envelope::{resolve_ref, utf8_text, SoapLimits};
use super::error::SoapError;
use super::version::SoapVersion;
use crate::BoxError;

mod location;

pub(crate) use self::location::basic_auth_value;
pub use self::location::WsdlUrl;

/// Namespace of WSDL 1.1.
pub const WSDL_NS: &str = "http://schemas.xmlsoap.org/wsdl/";
/// Namespace of the WSDL 1.1 SOAP 1.1 binding.
pub const WSDL_SOAP11_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
/// Namespace of the WSDL 1.1 SOAP 1.2 binding.
pub const WSDL_SOAP12_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";

/// A parsed WSDL 1.1 document (with SOAP 1.1 and SOAP 1.2 bindings).
///
/// ```
/// use tower_mesh::soap::{SoapLimits, SoapVersion, Wsdl};
///
/// let wsdl = Wsdl::parse(br#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/"
///     xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:tns="urn:calc" targetNamespace="urn:calc">
///   <message name="AddIn"/><message name="AddOut"/>
///   <portType name="Calc"><operation name="Add"><input message="tns:AddIn"/><output message="tns:AddOut"/></operation></portType>
///   <binding name="CalcSoap" type="tns:Calc">
///     <soap:binding transport="http://schemas.xmlsoap.org/soap/http" style="document"/>
///     <operation name="Add"><soap:operation soapAction="urn:calc#Add"/></operation>
///   </binding>
///   <service name="Calculator"><port name="CalcSoap" binding="tns:CalcSoap">
///     <soap:address location="http://127.0.0.1:8080/calc"/></port></service>
/// </definitions>"#, &SoapLimits::default()).unwrap();
///
/// let op = wsdl.operation("Add").unwrap();
/// assert_eq!(op.soap_action.as_deref(), Some("urn:calc#Add"));
/// assert_eq!(op.address.as_deref(), Some("http://127.0.0.1:8080/calc"));
/// assert_eq!(op.version, Some(SoapVersion::V11));
/// assert_eq!(op.input.as_deref(), Some("AddIn"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wsdl {
    /// `targetNamespace` of the definitions.
    pub target_namespace: Option<String>,
    /// The `message` names.
    pub messages: Vec<String>,
    /// The port types (abstract operations).
    pub port_types: Vec<WsdlPortType>,
    /// The bindings.
    pub bindings: Vec<WsdlBinding>,
    /// The services.
    pub services: Vec<WsdlService>,
    /// The `wsdl:import`s of the document. [`Wsdl::parse`] lists them;
    /// [`Wsdl::fetch`] follows them and merges what they define.
    pub imports: Vec<WsdlImport>,
}

/// A `wsdl:import`: another WSDL document whose definitions this one uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlImport {
    /// Its `namespace`.
    pub namespace: Option<String>,
    /// Its `location` (absolute, or relative to the importing document).
    pub location: Option<String>,
}

/// How deep [`Wsdl::fetch`] follows `wsdl:import`s (the fetched document is
/// depth 0).
pub const WSDL_MAX_IMPORT_DEPTH: usize = 8;
/// How many documents [`Wsdl::fetch`] reads at most, the first included.
pub const WSDL_MAX_DOCUMENTS: usize = 32;

/// A `portType`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlPortType {
    /// Its name.
    pub name: String,
    /// Its operations.
    pub operations: Vec<WsdlAbstractOperation>,
}

/// An operation of a `portType`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlAbstractOperation {
    /// Its name.
    pub name: String,
    /// The input message (local name).
    pub input: Option<String>,
    /// The output message (local name).
    pub output: Option<String>,
    /// The fault messages (local names).
    pub faults: Vec<String>,
}

/// A `binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlBinding {
    /// Its name.
    pub name: String,
    /// The port type it binds (local name).
    pub port_type: String,
    /// The SOAP version of a `soap:binding` / `soap12:binding`; `None` for other bindings (HTTP GET/POST).
    pub version: Option<SoapVersion>,
    /// `style` of the SOAP binding (`document` or `rpc`).
    pub style: Option<String>,
    /// `transport` of the SOAP binding.
    pub transport: Option<String>,
    /// The bound operations.
    pub operations: Vec<WsdlBindingOperation>,
}

/// An operation of a `binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlBindingOperation {
    /// Its name.
    pub name: String,
    /// `soapAction` of its `soap:operation`.
    pub soap_action: Option<String>,
    /// `style` of its `soap:operation`, if set.
    pub style: Option<String>,
}

/// A `service`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlService {
    /// Its name.
    pub name: String,
    /// Its ports.
    pub ports: Vec<WsdlPort>,
}

/// A `port` of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlPort {
    /// Its name.
    pub name: String,
    /// The binding (local name).
    pub binding: String,
    /// The endpoint address (`soap:address`, `soap12:address` or `http:address` location).
    pub address: Option<String>,
    /// The SOAP version of the address element; `None` for non-SOAP ports.
    pub version: Option<SoapVersion>,
}

/// An operation as a client calls it: where, with which action and messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsdlOperation {
    /// The service name.
    pub service: String,
    /// The port name.
    pub port: String,
    /// The endpoint address.
    pub address: Option<String>,
    /// The SOAP version of the binding.
    pub version: Option<SoapVersion>,
    /// The operation name.
    pub name: String,
    /// Its `soapAction`.
    pub soap_action: Option<String>,
    /// The binding style (operation's, else binding's).
    pub style: Option<String>,
    /// The input message (local name).
    pub input: Option<String>,
    /// The output message (local name).
    pub output: Option<String>,
}

fn local_of(qname: &str) -> String {
    qname.rsplit(':').next().unwrap_or(qname).to_owned()
}

fn ns_of<'r>(r: &'r ResolveResult<'r>) -> Option<&'r str> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.0),
        _ => None,
    }
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, SoapError> {
    for a in e.attributes() {
        let a = a.map_err(|err| SoapError::xml(0, err.into()))?;
        if a.key.0 == name {
            let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|err| SoapError::xml(0, err))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    Wsdl,
    Soap11,
    Soap12,
    Http,
    Other,
}

impl Wsdl {
    /// Parse a WSDL 1.1 document (refusing DOCTYPEs and undefined entities,
    /// within `limits`).
    pub fn parse(document: &[u8], limits: &SoapLimits) -> Result<Wsdl, SoapError> {
        if document.len() > limits.body_limit() {
            return Err(SoapError::WsdlTooLarge { limit: limits.body_limit() });
        }
        let text = utf8_text(document)?;
        let mut reader = NsReader::from_str(&text);
        let mut wsdl = Wsdl::default();
        // Local names (in the WSDL namespace, else "") of the open elements.
        let mut path: Vec<(Ns, String)> = Vec::new();
        let mut saw_root = false;
        loop {
            let event = reader.read_event().map_err(|e| SoapError::xml(reader.error_position(), e))?;
            let (e, empty) = match event {
                Event::DocType(_) => return Err(SoapError::DocType),
                Event::GeneralRef(r) => {
                    resolve_ref(&r)?;
                    continue;
                }
                Event::Start(e) => (e, false),
                Event::Empty(e) => (e, true),
                Event::End(_) => {
                    path.pop();
                    continue;
                }
                Event::Eof => break,
                _ => continue,
            };
            if path.len() + 1 > limits.depth_limit() {
                return Err(SoapError::TooDeep { limit: limits.depth_limit() });
            }
            let (rns, local) = reader.resolver().resolve_element(e.name());
            let ns = match ns_of(&rns) {
                Some(WSDL_NS) => Ns::Wsdl,
                Some(WSDL_SOAP11_NS) => Ns::Soap11,
                Some(WSDL_SOAP12_NS) => Ns::Soap12,
                Some("http://schemas.xmlsoap.org/wsdl/http/") => Ns::Http,
                _ => Ns::Other,
            };
            let local = local.into_inner();
            if !saw_root {
                saw_root = true;
                if ns != Ns::Wsdl || local != "definitions" {
                    return Err(SoapError::NotWsdl);
                }
                wsdl.target_namespace = attr(&e, "targetNamespace")?;
            }
            let parent: Vec<(Ns, &str)> = path.iter().map(|(n, s)| (*n, s.as_str())).collect();
            wsdl.element(&parent, ns, local, &e)?;
            if !empty {
                path.push((ns, local.to_owned()));
            }
        }
        if !saw_root {
            return Err(SoapError::NotWsdl);
        }
        if !path.is_empty() {
            return Err(SoapError::Structure("unclosed element in WSDL"));
        }
        Ok(wsdl)
    }

    /// Note the element `e` (`ns`, `local`) found inside the elements `parent`.
    fn element(&mut self, parent: &[(Ns, &str)], ns: Ns, local: &str, e: &BytesStart<'_>) -> Result<(), SoapError> {
        let wsdl = self;
        let name = || attr(e, "name").map(Option::unwrap_or_default);
        let version = match ns {
            Ns::Soap11 => Some(SoapVersion::V11),
            Ns::Soap12 => Some(SoapVersion::V12),
            _ => None,
        };
        match (parent, ns, local) {
            ([(Ns::Wsdl, "definitions")], Ns::Wsdl, "import") => {
                wsdl.imports.push(WsdlImport { namespace: attr(e, "namespace")?, location: attr(e, "location")? })
            }
            ([(Ns::Wsdl, "definitions")], Ns::Wsdl, "message") => wsdl.messages.push(name()?),
            ([(Ns::Wsdl, "definitions")], Ns::Wsdl, "portType") => {
                wsdl.port_types.push(WsdlPortType { name: name()?, operations: Vec::new() })
            }
            ([_, (Ns::Wsdl, "portType")], Ns::Wsdl, "operation") => {
                if let Some(pt) = wsdl.port_types.last_mut() {
                    pt.operations.push(WsdlAbstractOperation { name: name()?, ..Default::default() });
                }
            }
            ([_, (Ns::Wsdl, "portType"), (Ns::Wsdl, "operation")], Ns::Wsdl, kind @ ("input" | "output" | "fault")) => {
                let message = attr(e, "message")?.map(|m| local_of(&m));
                if let Some(op) = wsdl.port_types.last_mut().and_then(|pt| pt.operations.last_mut()) {
                    match kind {
                        "input" => op.input = message,
                        "output" => op.output = message,
                        _ => op.faults.extend(message),
                    }
                }
            }
            ([(Ns::Wsdl, "definitions")], Ns::Wsdl, "binding") => wsdl.bindings.push(WsdlBinding {
                name: name()?,
                port_type: attr(e, "type")?.map(|t| local_of(&t)).unwrap_or_default(),
                ..Default::default()
            }),
            ([_, (Ns::Wsdl, "binding")], Ns::Soap11 | Ns::Soap12, "binding") => {
                if let Some(b) = wsdl.bindings.last_mut() {
                    b.version = version;
                    b.style = attr(e, "style")?;
                    b.transport = attr(e, "transport")?;
                }
            }
            ([_, (Ns::Wsdl, "binding")], Ns::Wsdl, "operation") => {
                if let Some(b) = wsdl.bindings.last_mut() {
                    b.operations.push(WsdlBindingOperation { name: name()?, ..Default::default() });
                }
            }
            ([_, (Ns::Wsdl, "binding"), (Ns::Wsdl, "operation")], Ns::Soap11 | Ns::Soap12, "operation") => {
                let action = attr(e, "soapAction")?;
                let style = attr(e, "style")?;
                if let Some(op) = wsdl.bindings.last_mut().and_then(|b| b.operations.last_mut()) {
                    op.soap_action = action;
                    op.style = style;
                }
            }
            ([(Ns::Wsdl, "definitions")], Ns::Wsdl, "service") => {
                wsdl.services.push(WsdlService { name: name()?, ports: Vec::new() })
            }
            ([_, (Ns::Wsdl, "service")], Ns::Wsdl, "port") => {
                let binding = attr(e, "binding")?.map(|b| local_of(&b)).unwrap_or_default();
                if let Some(s) = wsdl.services.last_mut() {
                    s.ports.push(WsdlPort { name: name()?, binding, ..Default::default() });
                }
            }
            ([_, (Ns::Wsdl, "service"), (Ns::Wsdl, "port")], Ns::Soap11 | Ns::Soap12 | Ns::Http, "address") => {
                let location = attr(e, "location")?;
                if let Some(p) = wsdl.services.last_mut().and_then(|s| s.ports.last_mut()) {
                    p.address = location;
                    p.version = version;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every SOAP operation of every port: service, port, address, version,
    /// soapAction and messages. Ports with non-SOAP bindings are left out.
    pub fn operations(&self) -> Vec<WsdlOperation> {
        let mut out = Vec::new();
        for service in &self.services {
            for port in &service.ports {
                let Some(binding) = self.bindings.iter().find(|b| b.name == port.binding) else { continue };
                let Some(version) = binding.version.or(port.version) else { continue };
                let port_type = self.port_types.iter().find(|pt| pt.name == binding.port_type);
                for op in &binding.operations {
                    let abstract_op = port_type.and_then(|pt| pt.operations.iter().find(|o| o.name == op.name));
                    out.push(WsdlOperation {
                        service: service.name.clone(),
                        port: port.name.clone(),
                        address: port.address.clone(),
                        version: Some(version),
                        name: op.name.clone(),
                        soap_action: op.soap_action.clone(),
                        style: op.style.clone().or_else(|| binding.style.clone()),
                        input: abstract_op.and_then(|o| o.input.clone()),
                        output: abstract_op.and_then(|o| o.output.clone()),
                    });
                }
            }
        }
        out
    }

    /// The first SOAP operation named `name` (SOAP 1.1 ports first, then 1.2).
    pub fn operation(&self, name: &str) -> Option<WsdlOperation> {
        let ops = self.operations();
        let pick = |v| ops.iter().find(|o| o.name == name && o.version == Some(v)).cloned();
        pick(SoapVersion::V11).or_else(|| pick(SoapVersion::V12))
    }

    /// Fetch and parse the WSDL at `url` with `client` (basic auth when the URL
    /// carries credentials), following its `wsdl:import`s.
    ///
    /// `client` is any HTTP client service — the one the SOAP layer wraps
    /// (hyper-util's `Client<_, EnvelopeBody>`) serves, as does one for
    /// `Empty<Bytes>`: the GET requests have a default (empty) body.
    ///
    /// Each `wsdl:import` `location` is resolved against the importing
    /// document's URL (relative or absolute, `http`/`https` only) and fetched
    /// with the same client — with the URL's credentials only on the same
    /// origin — and its messages, port types, bindings and services are
    /// merged into the result, so a binding defined in an imported document
    /// has its operations listed. A document imported twice is read once
    /// (cycles end there). Bounds: imports nested at most
    /// [`WSDL_MAX_IMPORT_DEPTH`] deep, at most [`WSDL_MAX_DOCUMENTS`]
    /// documents, and all of them together within the size limit of
    /// `limits` ([`SoapError::WsdlTooLarge`]). An import that cannot be
    /// fetched or read fails the whole fetch with [`SoapError::WsdlImport`],
    /// which names it. `xsd:import`/`xsd:include` in `wsdl:types` are not
    /// followed: they define types, and [`Wsdl`] lists no types.
    pub async fn fetch<S, ReqB, B>(client: S, url: &WsdlUrl, limits: &SoapLimits) -> Result<Wsdl, SoapError>
    where
        S: Service<Request<ReqB>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        ReqB: Default,
        B: Body,
        B::Error: Into<BoxError>,
    {
        let mut client = client;
        let limit = limits.body_limit();
        tracing::debug!(url = %url, "fetching WSDL");
        let base = url::Url::parse(&url.uri().to_string()).map_err(|_| SoapError::InvalidUrl("not a valid URI"))?;
        let auth = url.authorization();
        let bytes = get(&mut client, url.uri().clone(), auth.clone(), limit).await?;
        let mut used = bytes.len();
        let mut wsdl = Wsdl::parse(&bytes, limits)?;
        let mut seen = vec![without_fragment(&base)];
        let mut queue: Vec<(url::Url, usize)> = Vec::new();
        enqueue(&mut queue, &base, &wsdl.imports, 1)?;
        let mut next = 0;
        while next < queue.len() {
            let (location, depth) = queue[next].clone();
            next += 1;
            let key = without_fragment(&location);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let shown = shown_location(&location);
            let failed = |e: SoapError| SoapError::WsdlImport { location: shown.clone(), source: Box::new(e) };
            if depth > WSDL_MAX_IMPORT_DEPTH {
                return Err(failed(SoapError::Structure("WSDL imports nested too deep")));
            }
            if seen.len() > WSDL_MAX_DOCUMENTS {
                return Err(failed(SoapError::Structure("too many WSDL imports")));
            }
            let uri: Uri = location.as_str().parse().map_err(|_| failed(SoapError::InvalidUrl("not a valid URI")))?;
            let same_origin = location.origin() == base.origin();
            tracing::debug!(location = %shown, depth, "fetching WSDL import");
            let doc =
                get(&mut client, uri, auth.clone().filter(|_| same_origin), limit - used).await.map_err(
                    |e| match e {
                        SoapError::WsdlTooLarge { .. } => SoapError::WsdlTooLarge { limit },
                        e => failed(e),
                    },
                )?;
            used += doc.len();
            let imported = Wsdl::parse(&doc, limits).map_err(failed)?;
            enqueue(&mut queue, &location, &imported.imports, depth + 1).map_err(failed)?;
            wsdl.messages.extend(imported.messages);
            wsdl.port_types.extend(imported.port_types);
            wsdl.bindings.extend(imported.bindings);
            wsdl.services.extend(imported.services);
            wsdl.imports.extend(imported.imports);
        }
        Ok(wsdl)
    }
}

/// GET `uri`, at most `limit` bytes.
async fn get<S, ReqB, B>(client: &mut S, uri: Uri, auth: Option<HeaderValue>, limit: usize) -> Result<Bytes, SoapError>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    ReqB: Default,
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut req = Request::new(ReqB::default());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    if let Some(auth) = auth {
        req.headers_mut().insert(AUTHORIZATION, auth);
    }
    std::future::poll_fn(|cx| client.poll_ready(cx)).await.map_err(|e| SoapError::Transport(e.into()))?;
    let res = client.call(req).await.map_err(|e| SoapError::Transport(e.into()))?;
    let (parts, body) = res.into_parts();
    if !parts.status.is_success() {
        return Err(SoapError::Status(parts.status));
    }
    if body.size_hint().lower() > limit as u64 {
        return Err(SoapError::WsdlTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(match super::client::body_error(e, limit) {
            SoapError::TooLarge { limit } => SoapError::WsdlTooLarge { limit },
            e => e,
        }),
    }
}

/// Queue the imports of the document at `base`.
fn enqueue(
    queue: &mut Vec<(url::Url, usize)>,
    base: &url::Url,
    imports: &[WsdlImport],
    depth: usize,
) -> Result<(), SoapError> {
    for import in imports {
        let Some(location) = import.location.as_deref().map(str::trim).filter(|l| !l.is_empty()) else {
            // A namespace-only import names definitions the document
            // expects from elsewhere: nothing to fetch.
            continue;
        };
        let resolved = base.join(location).map_err(|_| SoapError::WsdlImport {
            location: location.chars().take(256).collect(),
            source: Box::new(SoapError::InvalidUrl("not a valid URI")),
        })?;
        if resolved.scheme() != "http" && resolved.scheme() != "https" {
            return Err(SoapError::WsdlImport {
                location: shown_location(&resolved),
                source: Box::new(SoapError::InvalidUrl("scheme is not http or https")),
            });
        }
        queue.push((resolved, depth));
    }
    Ok(())
}

fn without_fragment(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_fragment(None);
    String::from(url)
}

/// The location as shown in errors and logs: no user-info.
fn shown_location(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    url.as_str().chars().take(256).collect()
}
