//! The DNS endpoint source against an in-process DNS server (hickory-server,
//! an in-memory zone `example.` on a free UDP port of 127.0.0.1) serving SRV
//! and A records with a TTL of 1 s that the test changes, stops and starts
//! again.

#![cfg(feature = "discovery-dns")]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::UdpSocket;
use tower_mesh::discovery::{DnsSource, Registry};

/// TTL of every record the server serves.
const TTL: u32 = 1;

fn name(s: &str) -> Name {
    Name::from_utf8(s).unwrap()
}

fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

fn srv(priority: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(priority, 0, port, name(target)))
}

/// An authoritative DNS server for `example.` whose records the test sets.
struct Dns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Option<Server<Catalog>>,
}

impl Dns {
    async fn start() -> Dns {
        let origin = name("example.");
        let mut zone: InMemoryZoneHandler<TokioRuntimeProvider> =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        // The SOA's minimum (1 s) is the TTL of "no such name" answers.
        let soa = SOA::new(name("ns.example."), name("admin.example."), 1, 60, 60, 60, TTL);
        assert!(zone.upsert_mut(Record::from_rdata(origin, TTL, RData::SOA(soa)), 1));
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut dns = Dns { addr, zone: Arc::new(zone), server: None };
        dns.serve(socket);
        dns
    }

    fn serve(&mut self, socket: UdpSocket) {
        let mut catalog = Catalog::new();
        let zone: Arc<dyn ZoneHandler> = self.zone.clone();
        catalog.upsert(LowerName::new(&name("example.")), vec![zone]);
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        self.server = Some(server);
    }

    /// Stop answering (the socket is closed).
    async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_gracefully().await.unwrap();
        }
    }

    /// Answer again on the same port.
    async fn restart(&mut self) {
        let socket = loop {
            match UdpSocket::bind(self.addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(socket);
    }

    /// Replace the records of type `rtype` at `owner` (none: remove them).
    async fn set(&self, owner: &str, rtype: RecordType, data: Vec<RData>) {
        let owner = name(owner);
        let key = RrKey::new(LowerName::new(&owner), rtype);
        let mut records = self.zone.records_mut().await;
        if data.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::new(owner.clone(), rtype, 1);
        for d in data {
            set.insert(Record::from_rdata(owner.clone(), TTL, d), 1);
        }
        records.insert(key, Arc::new(set));
    }
}

fn endpoints(registry: &Registry, service: &str) -> Vec<String> {
    let mut got: Vec<String> =
        registry.resolution(service).map(|r| r.endpoints().iter().map(|a| a.to_string()).collect()).unwrap_or_default();
    got.sort();
    got
}

/// Wait (up to `within`) until `service`'s endpoints, sorted, are `want`.
async fn wait_for(registry: &Registry, service: &str, want: &[&str], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = endpoints(registry, service);
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{service}: got {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to `within`) until `service`'s stale mark is `stale`.
async fn wait_stale(registry: &Registry, service: &str, stale: bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while registry.resolution(service).unwrap().is_stale() != stale {
        assert!(tokio::time::Instant::now() < deadline, "{service}: stale never became {stale}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A source on the test server that notices a failure fast.
fn source(dns: &Dns, source: DnsSource) -> DnsSource {
    source.nameserver(dns.addr).min_refresh(Duration::from_millis(200)).timeout(Duration::from_millis(300)).attempts(1)
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_follow_the_records_and_a_stopped_server_keeps_the_last_set() {
    let mut dns = Dns::start().await;
    let orders = "_http._tcp.orders.example.";
    dns.set(orders, RecordType::SRV, vec![srv(10, 8080, "a.orders.example."), srv(10, 8081, "b.orders.example.")])
        .await;
    dns.set("a.orders.example.", RecordType::A, vec![a([127, 0, 0, 11])]).await;
    dns.set("b.orders.example.", RecordType::A, vec![a([127, 0, 0, 12])]).await;
    dns.set("c.orders.example.", RecordType::A, vec![a([127, 0, 0, 13])]).await;

    let registry = Registry::new();
    let _task = source(&dns, DnsSource::srv(orders)).spawn(registry.clone(), "orders");
    wait_for(&registry, "orders", &["127.0.0.11:8080", "127.0.0.12:8081"], SOON).await;

    // A target added to the SRV records.
    dns.set(
        orders,
        RecordType::SRV,
        vec![
            srv(10, 8080, "a.orders.example."),
            srv(10, 8081, "b.orders.example."),
            srv(10, 8082, "c.orders.example."),
        ],
    )
    .await;
    wait_for(&registry, "orders", &["127.0.0.11:8080", "127.0.0.12:8081", "127.0.0.13:8082"], SOON).await;

    // A target removed.
    dns.set(orders, RecordType::SRV, vec![srv(10, 8080, "a.orders.example."), srv(10, 8082, "c.orders.example.")])
        .await;
    wait_for(&registry, "orders", &["127.0.0.11:8080", "127.0.0.13:8082"], SOON).await;

    // A target's address changes (its A record, not the SRV records).
    dns.set("a.orders.example.", RecordType::A, vec![a([127, 0, 0, 14]), a([127, 0, 0, 15])]).await;
    wait_for(&registry, "orders", &["127.0.0.13:8082", "127.0.0.14:8080", "127.0.0.15:8080"], SOON).await;
    assert!(!registry.resolution("orders").unwrap().is_stale());

    // The server stops: the last set stays, marked stale.
    dns.stop().await;
    wait_stale(&registry, "orders", true, SOON).await;
    assert_eq!(endpoints(&registry, "orders"), ["127.0.0.13:8082", "127.0.0.14:8080", "127.0.0.15:8080"]);

    // It answers again (with a change made meanwhile): fresh, and the change shows.
    dns.set(orders, RecordType::SRV, vec![srv(10, 8082, "c.orders.example.")]).await;
    dns.restart().await;
    wait_for(&registry, "orders", &["127.0.0.13:8082"], Duration::from_secs(15)).await;
    wait_stale(&registry, "orders", false, SOON).await;

    // The records are gone: an authoritative "no such records", so no endpoints (not stale).
    dns.set(orders, RecordType::SRV, vec![]).await;
    wait_for(&registry, "orders", &[], SOON).await;
    assert!(!registry.resolution("orders").unwrap().is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_priority_is_used_when_the_preferred_targets_have_no_address() {
    let dns = Dns::start().await;
    let grpc = "_grpc._tcp.orders.example.";
    dns.set(
        grpc,
        RecordType::SRV,
        vec![srv(10, 9000, "gone.orders.example."), srv(20, 9001, "backup.orders.example.")],
    )
    .await;
    dns.set("backup.orders.example.", RecordType::A, vec![a([127, 0, 0, 31])]).await;

    let registry = Registry::new();
    let _task = source(&dns, DnsSource::srv(grpc)).spawn(registry.clone(), "grpc");
    wait_for(&registry, "grpc", &["127.0.0.31:9001"], SOON).await;

    // The preferred target gets an address: it takes over, the backup is left.
    dns.set("gone.orders.example.", RecordType::A, vec![a([127, 0, 0, 30])]).await;
    wait_for(&registry, "grpc", &["127.0.0.30:9000"], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_resolves_to_its_addresses_on_the_fixed_port() {
    let dns = Dns::start().await;
    dns.set("web.example.", RecordType::A, vec![a([127, 0, 0, 21]), a([127, 0, 0, 22])]).await;

    // One-shot resolution.
    let once = source(&dns, DnsSource::host("web.example.", 8443)).resolve().await.unwrap();
    let once: Vec<&str> = once.iter().map(|a| a.as_str()).collect();
    assert_eq!(once, ["127.0.0.21:8443", "127.0.0.22:8443"]);

    let registry = Registry::new();
    let _task = source(&dns, DnsSource::host("web.example.", 8443)).spawn(registry.clone(), "web");
    wait_for(&registry, "web", &["127.0.0.21:8443", "127.0.0.22:8443"], SOON).await;

    dns.set("web.example.", RecordType::A, vec![a([127, 0, 0, 22]), a([127, 0, 0, 23])]).await;
    wait_for(&registry, "web", &["127.0.0.22:8443", "127.0.0.23:8443"], SOON).await;

    // The name disappears (NXDOMAIN): no endpoints, and requests fail fast.
    dns.set("web.example.", RecordType::A, vec![]).await;
    wait_for(&registry, "web", &[], SOON).await;
    assert!(!registry.resolution("web").unwrap().is_stale());
}
