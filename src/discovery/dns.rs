//! DNS: the A/AAAA records of a host (with a fixed port) or the SRV records of
//! a service, re-resolved when their TTL runs out.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use http::uri::Authority;
use tokio::task::JoinSet;

use super::registry::Registry;
use super::source::{failed, RetryDelay, SourceTask};
use crate::BoxError;

/// Default shortest time between two resolutions.
const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Default longest time between two resolutions.
const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60);
/// A `min_refresh` below this counts as this (a TTL of 0 must not spin).
const MIN_REFRESH_FLOOR: Duration = Duration::from_millis(100);

/// Endpoints from DNS: the addresses of a host with a fixed port
/// ([`host`](Self::host), A and AAAA records), or the targets of a service's
/// SRV records ([`srv`](Self::srv), e.g. `_http._tcp.orders.example.`), each
/// target resolved to its addresses and paired with the record's port.
///
/// The records are resolved again when their TTL (the smallest one of the
/// answer, SRV and address records alike) runs out, but never sooner than
/// [`min_refresh`](Self::min_refresh) (default 1 s) nor later than
/// [`max_refresh`](Self::max_refresh) (default 60 s). Every resolution asks
/// the nameserver: the resolver's cache is cleared first.
///
/// Of the SRV records, those of the lowest priority whose targets have an
/// address are used (a higher priority value is a backup); weights are left
/// to the balancer, which routes by measured load. A target `.` (service not
/// offered) is skipped, and so is a target without an address. A name that
/// does not exist, or has no such records, is an authoritative answer: the
/// endpoint set becomes empty (requests fail fast with
/// [`NoEndpoints`](super::DiscoveryError::NoEndpoints)) until the name comes
/// back. A failed lookup (timeout, SERVFAIL, unreachable nameserver) keeps
/// the last known endpoints, marked stale, and is retried with backoff
/// (stale-while-error).
///
/// The resolver follows the system's configuration (`/etc/resolv.conf`)
/// unless [`nameserver`](Self::nameserver) names one.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_mesh::discovery::{DnsSource, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// let registry = Registry::new();
/// // `orders`: the targets of the SRV records, asked of a given nameserver.
/// let _orders = DnsSource::srv("_http._tcp.orders.example.")
///     .nameserver("127.0.0.1:5353".parse()?)
///     .min_refresh(Duration::from_secs(5))
///     .spawn(registry.clone(), "orders");
/// // `billing`: the addresses of a host, port 8080, through the system's resolver configuration.
/// let _billing = DnsSource::host("billing.internal.example.", 8080).spawn(registry.clone(), "billing");
/// # Ok(())
/// # }
/// ```
///
/// One resolution, without a task ([`resolve`](Self::resolve)):
///
/// ```
/// use tower_mesh::discovery::DnsSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// // An IP address needs no query.
/// let endpoints = DnsSource::host("::1", 8080).resolve().await?;
/// assert_eq!(endpoints[0].as_str(), "[::1]:8080");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DnsSource {
    query: Query,
    nameserver: Option<SocketAddr>,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Option<Duration>,
    attempts: Option<usize>,
}

/// What a [`DnsSource`] resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Query {
    /// A/AAAA records of `name`, all on `port`.
    Host { name: String, port: u16 },
    /// SRV records of `name`.
    Srv { name: String },
}

/// Why a [`DnsSource`] could not resolve its records. While it cannot, the
/// registry keeps the last known endpoints (marked stale).
#[derive(Debug)]
#[non_exhaustive]
pub enum DnsSourceError {
    /// The name is not a valid DNS name.
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The resolver could not be set up (e.g. the system's resolver
    /// configuration cannot be read and no nameserver was given).
    Setup {
        /// The cause.
        source: BoxError,
    },
    /// A lookup failed: timeout, unreachable nameserver, an error answer
    /// (SERVFAIL, REFUSED, …). "No such name" and "no such records" are
    /// answers, not errors: they make the endpoint set empty.
    Lookup {
        /// The name looked up.
        name: String,
        /// What was looked up: `"SRV"` or `"A/AAAA"`.
        record_type: &'static str,
        /// The resolver's error.
        source: BoxError,
    },
}

impl fmt::Display for DnsSourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsSourceError::InvalidName { name, reason } => write!(f, "invalid DNS name `{name}`: {reason}"),
            DnsSourceError::Setup { source } => write!(f, "cannot set up the DNS resolver: {source}"),
            DnsSourceError::Lookup { name, record_type, source } => {
                write!(f, "DNS {record_type} lookup of `{name}` failed: {source}")
            }
        }
    }
}

impl std::error::Error for DnsSourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DnsSourceError::InvalidName { .. } => None,
            DnsSourceError::Setup { source } | DnsSourceError::Lookup { source, .. } => Some(&**source),
        }
    }
}

/// The endpoints of one resolution and how long they may be used.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    endpoints: Vec<Authority>,
    /// `None`: no TTL to go by (an IP address, or a negative answer without SOA).
    ttl: Option<Duration>,
}

/// The addresses of one name.
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
}

impl DnsSource {
    /// The A/AAAA records of `name`, each address with `port` (an IP address
    /// as `name` is used as it is).
    pub fn host(name: impl Into<String>, port: u16) -> Self {
        DnsSource::with(Query::Host { name: name.into(), port })
    }

    /// The SRV records of `name` (e.g. `_http._tcp.orders.example.`): each
    /// target's addresses with the record's port.
    pub fn srv(name: impl Into<String>) -> Self {
        DnsSource::with(Query::Srv { name: name.into() })
    }

    fn with(query: Query) -> Self {
        DnsSource {
            query,
            nameserver: None,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            timeout: None,
            attempts: None,
        }
    }

    /// Ask this nameserver (UDP, TCP for a truncated answer) instead of the
    /// ones of the system's configuration.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// Shortest time between two resolutions, whatever the TTL (default 1 s;
    /// less than 100 ms counts as 100 ms).
    pub fn min_refresh(mut self, min: Duration) -> Self {
        self.min_refresh = min;
        self
    }

    /// Longest time between two resolutions, whatever the TTL (default 60 s;
    /// never less than [`min_refresh`](Self::min_refresh)).
    pub fn max_refresh(mut self, max: Duration) -> Self {
        self.max_refresh = max;
        self
    }

    /// How long to wait for each answer (default: the system's
    /// configuration, else 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How often to ask before a lookup fails (default: the system's
    /// configuration, else 2; at least 1).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// Resolve once: the endpoints the source would publish now.
    pub async fn resolve(&self) -> Result<Vec<Authority>, DnsSourceError> {
        if let Query::Host { name, port } = &self.query {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(endpoints([SocketAddr::new(ip, *port)]));
            }
        }
        let resolver = self.resolver()?;
        Ok(self.lookup(&resolver).await?.endpoints)
    }

    /// Start resolving, publishing into `registry` under `service`.
    pub fn spawn(self, registry: Registry, service: &str) -> SourceTask {
        registry.register(service);
        let service = service.to_owned();
        SourceTask::spawn(async move {
            let mut delay = RetryDelay::new();
            let mut resolver: Option<TokioResolver> = None;
            loop {
                let r = match resolver.take() {
                    Some(r) => r,
                    None => match self.resolver() {
                        Ok(r) => r,
                        Err(e) => {
                            failed(&registry, &service, "dns", e.into(), &mut delay).await;
                            continue;
                        }
                    },
                };
                let result = self.lookup(&r).await;
                resolver = Some(r);
                match result {
                    Ok(answer) => {
                        delay.reset();
                        let wait = self.next_refresh(answer.ttl);
                        tracing::debug!(
                            service = %service,
                            source = "dns",
                            endpoints = answer.endpoints.len(),
                            ttl = ?answer.ttl,
                            next_refresh = ?wait,
                            "dns records resolved"
                        );
                        registry.set(&service, answer.endpoints);
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => failed(&registry, &service, "dns", e.into(), &mut delay).await,
                }
            }
        })
    }

    /// When to resolve again after records valid for `ttl`.
    fn next_refresh(&self, ttl: Option<Duration>) -> Duration {
        let min = self.min_refresh.max(MIN_REFRESH_FLOOR);
        let max = self.max_refresh.max(min);
        ttl.unwrap_or(min).clamp(min, max)
    }

    fn resolver(&self) -> Result<TokioResolver, DnsSourceError> {
        let setup = |e: NetError| DnsSourceError::Setup { source: Box::new(e) };
        let mut builder = match self.nameserver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![ns]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(setup)?,
        };
        let opts = builder.options_mut();
        if let Some(t) = self.timeout {
            opts.timeout = t;
        }
        if let Some(n) = self.attempts {
            opts.attempts = n;
        }
        builder.build().map_err(setup)
    }

    async fn lookup(&self, resolver: &TokioResolver) -> Result<Answer, DnsSourceError> {
        // Each resolution asks the nameserver, so a change shows as soon as
        // our own schedule says (not only when the cache's copy expires).
        resolver.clear_cache();
        match &self.query {
            Query::Host { name, port } => {
                if let Ok(ip) = name.parse::<IpAddr>() {
                    return Ok(Answer { endpoints: endpoints([SocketAddr::new(ip, *port)]), ttl: None });
                }
                let found = addresses(resolver.clone(), parse_name(name)?).await?;
                let addrs = found.ips.into_iter().map(|ip| SocketAddr::new(ip, *port));
                Ok(Answer { endpoints: endpoints(addrs), ttl: found.ttl })
            }
            Query::Srv { name } => lookup_srv(resolver, name).await,
        }
    }
}

/// Parse a name, with a typed error.
fn parse_name(name: &str) -> Result<Name, DnsSourceError> {
    Name::from_utf8(name)
        .map_err(|e| DnsSourceError::InvalidName { name: name.chars().take(256).collect(), reason: e.to_string() })
}

/// The negative TTL of a "no records" answer (from its SOA), if any.
fn negative_ttl(e: &NetError) -> Option<Duration> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => nr.negative_ttl.map(|t| Duration::from_secs(t.into())),
        _ => None,
    }
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The A/AAAA addresses of `name` (none for a "no such name / records" answer).
async fn addresses(resolver: TokioResolver, name: Name) -> Result<Addresses, DnsSourceError> {
    match resolver.lookup_ip(name.clone()).await {
        Ok(lookup) => {
            let ttl = lookup
                .as_lookup()
                .answers()
                .iter()
                .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                .map(|r| Duration::from_secs(r.ttl.into()))
                .min();
            Ok(Addresses { ips: lookup.iter().collect(), ttl })
        }
        Err(e) if e.is_no_records_found() => Ok(Addresses { ips: Vec::new(), ttl: negative_ttl(&e) }),
        Err(e) => Err(DnsSourceError::Lookup { name: name.to_string(), record_type: "A/AAAA", source: Box::new(e) }),
    }
}

/// SRV records, grouped by priority (lowest first): each group's distinct
/// `(target, port)` pairs, without the `.` target.
fn srv_groups<'a>(records: impl IntoIterator<Item = (u16, &'a Name, u16)>) -> Vec<Vec<(Name, u16)>> {
    let mut groups: BTreeMap<u16, Vec<(Name, u16)>> = BTreeMap::new();
    for (priority, target, port) in records {
        if target.is_root() {
            continue;
        }
        let group = groups.entry(priority).or_default();
        let entry = (target.clone(), port);
        if !group.contains(&entry) {
            group.push(entry);
        }
    }
    groups.into_values().collect()
}

async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Result<Answer, DnsSourceError> {
    let srv_name = parse_name(name)?;
    let lookup = match resolver.srv_lookup(srv_name.clone()).await {
        Ok(lookup) => lookup,
        Err(e) if e.is_no_records_found() => return Ok(Answer { endpoints: Vec::new(), ttl: negative_ttl(&e) }),
        Err(e) => {
            return Err(DnsSourceError::Lookup { name: name.to_owned(), record_type: "SRV", source: Box::new(e) })
        }
    };
    let mut ttl = None;
    let mut records = Vec::new();
    for r in lookup.answers() {
        if let RData::SRV(srv) = &r.data {
            ttl = min_ttl(ttl, Some(Duration::from_secs(r.ttl.into())));
            records.push((srv.priority, &srv.target, srv.port));
        }
    }
    // The first priority group with an address wins; the others are backups.
    for group in srv_groups(records) {
        let mut targets: Vec<Name> = Vec::new();
        for (t, _) in &group {
            if !targets.contains(t) {
                targets.push(t.clone());
            }
        }
        let mut lookups = JoinSet::new();
        for target in targets {
            let resolver = resolver.clone();
            lookups.spawn(async move { (target.clone(), addresses(resolver, target).await) });
        }
        let mut found: Vec<(Name, Addresses)> = Vec::new();
        while let Some(joined) = lookups.join_next().await {
            let (target, result) = joined.map_err(|e| DnsSourceError::Lookup {
                name: name.to_owned(),
                record_type: "A/AAAA",
                source: Box::new(e),
            })?;
            found.push((target, result?));
        }
        let mut addrs = Vec::new();
        for (target, port) in &group {
            for (t, a) in &found {
                if t == target {
                    if a.ips.is_empty() {
                        tracing::debug!(srv = %name, target = %target, "SRV target has no address; skipped");
                    }
                    ttl = min_ttl(ttl, a.ttl);
                    addrs.extend(a.ips.iter().map(|ip| SocketAddr::new(*ip, *port)));
                }
            }
        }
        if !addrs.is_empty() {
            return Ok(Answer { endpoints: endpoints(addrs), ttl });
        }
    }
    Ok(Answer { endpoints: Vec::new(), ttl })
}

/// Socket addresses as authorities, sorted and without duplicates (DNS
/// answers come in any order; the set only changes when its content does).
fn endpoints(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<Authority> {
    let mut addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    addrs.sort_unstable();
    addrs.dedup();
    // A socket address always formats as a valid authority (`[v6]:port` for IPv6).
    addrs.into_iter().filter_map(|a| a.to_string().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn names(a: &[Authority]) -> Vec<&str> {
        a.iter().map(Authority::as_str).collect()
    }

    #[test]
    fn refresh_follows_the_ttl_within_the_bounds() {
        let s = DnsSource::srv("_http._tcp.orders.example.")
            .min_refresh(Duration::from_secs(2))
            .max_refresh(Duration::from_secs(30));
        assert_eq!(s.next_refresh(Some(Duration::from_secs(10))), Duration::from_secs(10));
        assert_eq!(s.next_refresh(Some(Duration::from_secs(1))), Duration::from_secs(2));
        assert_eq!(s.next_refresh(Some(Duration::ZERO)), Duration::from_secs(2));
        assert_eq!(s.next_refresh(Some(Duration::from_secs(3600))), Duration::from_secs(30));
        // No TTL to go by: as soon as allowed.
        assert_eq!(s.next_refresh(None), Duration::from_secs(2));
    }

    #[test]
    fn refresh_bounds_that_make_no_sense_are_corrected() {
        // A maximum below the minimum is the minimum.
        let s =
            DnsSource::host("a.example.", 80).min_refresh(Duration::from_secs(5)).max_refresh(Duration::from_secs(1));
        assert_eq!(s.next_refresh(Some(Duration::from_secs(60))), Duration::from_secs(5));
        // A TTL of 0 with no minimum does not spin.
        let s = DnsSource::host("a.example.", 80).min_refresh(Duration::ZERO);
        assert_eq!(s.next_refresh(Some(Duration::ZERO)), MIN_REFRESH_FLOOR);
        // Defaults: 1 s to 60 s.
        let s = DnsSource::host("a.example.", 80);
        assert_eq!(s.next_refresh(Some(Duration::ZERO)), Duration::from_secs(1));
        assert_eq!(s.next_refresh(Some(Duration::from_secs(86_400))), Duration::from_secs(60));
    }

    #[test]
    fn srv_records_are_grouped_by_priority_without_root_targets_or_duplicates() {
        let a = Name::from_utf8("a.orders.example.").unwrap();
        let b = Name::from_utf8("b.orders.example.").unwrap();
        let c = Name::from_utf8("c.orders.example.").unwrap();
        let root = Name::root();
        let groups = srv_groups([(20, &c, 80), (10, &a, 8080), (10, &root, 0), (10, &b, 8081), (10, &a, 8080)]);
        assert_eq!(groups, vec![vec![(a.clone(), 8080), (b, 8081)], vec![(c, 80)]]);
        // Only `.`: the service is not offered.
        assert!(srv_groups([(0, &root, 0)]).is_empty());
        // Same target on two ports: two endpoints per address.
        assert_eq!(srv_groups([(0, &a, 1), (0, &a, 2)]), vec![vec![(a.clone(), 1), (a, 2)]]);
    }

    #[test]
    fn endpoints_are_sorted_unique_authorities_with_bracketed_ipv6() {
        let addrs: Vec<SocketAddr> =
            ["127.0.0.2:80", "[::1]:8080", "127.0.0.1:80", "127.0.0.2:80"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(names(&endpoints(addrs)), ["127.0.0.1:80", "127.0.0.2:80", "[::1]:8080"]);
    }

    #[tokio::test]
    async fn an_ip_address_resolves_without_a_query() {
        // The nameserver is never asked (nothing listens on the discard port).
        let ns: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let v4 = DnsSource::host("127.0.0.1", 8080).nameserver(ns).resolve().await.unwrap();
        assert_eq!(names(&v4), ["127.0.0.1:8080"]);
        let v6 = DnsSource::host("::1", 443).nameserver(ns).resolve().await.unwrap();
        assert_eq!(names(&v6), ["[::1]:443"]);
    }

    #[tokio::test]
    async fn an_invalid_name_is_a_typed_error() {
        let ns: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = DnsSource::srv("bad..name.").nameserver(ns).resolve().await.unwrap_err();
        assert!(matches!(&err, DnsSourceError::InvalidName { name, .. } if name == "bad..name."), "{err:?}");
        assert!(err.to_string().starts_with("invalid DNS name `bad..name.`"), "{err}");
        let err = DnsSource::host("a..b", 80).nameserver(ns).resolve().await.unwrap_err();
        assert!(matches!(err, DnsSourceError::InvalidName { .. }), "{err:?}");
    }

    /// A UDP socket on loopback that never answers.
    fn silent_nameserver() -> (std::net::UdpSocket, SocketAddr) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        (sock, addr)
    }

    #[tokio::test]
    async fn an_unanswered_lookup_is_a_typed_error_with_its_cause() {
        let (_sock, ns) = silent_nameserver();
        let src =
            DnsSource::srv("_http._tcp.orders.example.").nameserver(ns).timeout(Duration::from_millis(100)).attempts(1);
        let err = src.resolve().await.unwrap_err();
        match &err {
            DnsSourceError::Lookup { name, record_type, .. } => {
                assert_eq!(name, "_http._tcp.orders.example.");
                assert_eq!(*record_type, "SRV");
            }
            other => panic!("expected a lookup error, got {other:?}"),
        }
        assert!(err.source().is_some());
        assert!(err.to_string().starts_with("DNS SRV lookup of `_http._tcp.orders.example.` failed: "), "{err}");

        let err = DnsSource::host("orders.example.", 80)
            .nameserver(ns)
            .timeout(Duration::from_millis(100))
            .attempts(1)
            .resolve()
            .await
            .unwrap_err();
        assert!(matches!(err, DnsSourceError::Lookup { record_type: "A/AAAA", .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_failing_source_keeps_the_last_endpoints_marked_stale() {
        let (_sock, ns) = silent_nameserver();
        let registry = Registry::new();
        registry.set_static("orders", ["127.0.0.1:8080", "127.0.0.2:8080"]).unwrap();
        let task = DnsSource::srv("_http._tcp.orders.example.")
            .nameserver(ns)
            .timeout(Duration::from_millis(50))
            .attempts(1)
            .spawn(registry.clone(), "orders");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !registry.resolution("orders").unwrap().is_stale() {
            assert!(tokio::time::Instant::now() < deadline, "never marked stale");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(names(registry.resolution("orders").unwrap().endpoints()), ["127.0.0.1:8080", "127.0.0.2:8080"]);
        assert!(!task.is_finished());
        task.abort();
    }

    #[test]
    fn errors_display_their_cause() {
        let err = DnsSourceError::Setup { source: "no /etc/resolv.conf".into() };
        assert_eq!(err.to_string(), "cannot set up the DNS resolver: no /etc/resolv.conf");
        assert_eq!(err.source().unwrap().to_string(), "no /etc/resolv.conf");
        let err = DnsSourceError::InvalidName { name: "x".into(), reason: "r".into() };
        assert!(err.source().is_none());
    }
}
