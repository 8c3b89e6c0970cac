//! Finding the local services (brokers, databases) the integration tests use.
//!
//! Include it with `#[path = "support/services.rs"] mod services;`.
//!
//! A service's address comes from an environment variable (a `host:port` or a
//! URL such as `amqp://guest:guest@127.0.0.1:5672/%2f`) or the default. When
//! nothing answers there the test prints `skipped: no <name> at <addr>` and
//! passes — unless `TOWER_MESH_REQUIRE_SERVICES=1`, where it fails.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Set to `1` (CI) to make a missing service a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "TOWER_MESH_REQUIRE_SERVICES";

/// `true` when [`REQUIRE_ENV`] is `1` or `true`.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The value of `env_var`, or `default` when unset or empty.
pub fn env_or(env_var: &str, default: &str) -> String {
    match std::env::var(env_var) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// The `host:port` part of a URL or address (`scheme://user:pass@host:port/path?q`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, hp)| hp)
}

/// The address of service `name`: from `env_var` (address or URL) or
/// `default_addr`, if something accepts TCP connections there.
///
/// Otherwise prints `skipped: no <name> at <addr>` and returns `None` — or
/// panics (fails the test) when [`REQUIRE_ENV`] is set.
pub fn require_service(name: &str, env_var: &str, default_addr: &str) -> Option<SocketAddr> {
    let configured = env_or(env_var, default_addr);
    let hp = host_port(&configured).to_owned();
    let found = hp
        .to_socket_addrs()
        .ok()
        .and_then(|addrs| addrs.into_iter().find(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok()));
    match found {
        Some(addr) => Some(addr),
        None if services_required() => {
            panic!("{name} is required ({REQUIRE_ENV}=1) but nothing answers at {hp} (set {env_var})")
        }
        None => {
            println!("skipped: no {name} at {hp}");
            eprintln!("skipped: no {name} at {hp} (set {env_var} to its address)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("amqp://guest:guest@127.0.0.1:5672/%2f"), "127.0.0.1:5672");
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(host_port("redis://:secret@localhost:6379/0?x=1"), "localhost:6379");
    }
}
