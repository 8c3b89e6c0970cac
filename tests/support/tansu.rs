//! A private tansu (a Kafka-protocol broker written in Rust,
//! `cargo install tansu --locked --features dynostore`) for one test: on a
//! free loopback port, with in-memory storage, stopped on drop.
//!
//! The binary is `$TOWER_MESH_TANSU_BIN`, else `tansu` in cargo's bin
//! directory, else `tansu` on the `PATH`. Without it a test prints
//! `skipped: ...` and passes, unless `TOWER_MESH_REQUIRE_SERVICES=1`.

use std::net::SocketAddr;
use std::path::PathBuf;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::process::{free_port, require_binary, ServerProcess};

/// Where the tansu binary is named, to override the default.
pub const BIN_ENV: &str = "TOWER_MESH_TANSU_BIN";

/// How to get the binary (what `scripts/test.sh` does).
pub const INSTALL: &str = "cargo install tansu --locked --features dynostore";

/// A running tansu broker.
pub struct Tansu {
    process: ServerProcess,
    bootstrap: String,
}

/// `tansu` in cargo's bin directory (`$CARGO_HOME/bin`, default
/// `~/.cargo/bin`) when it is there, else `tansu` (looked up in `PATH`).
fn default_binary() -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    cargo_home
        .map(|home| home.join("bin").join("tansu"))
        .filter(|bin| bin.is_file())
        .map_or_else(|| "tansu".to_owned(), |bin| bin.display().to_string())
}

impl Tansu {
    /// Start a broker on a free loopback port and wait until it accepts
    /// connections; `None` (skipped) without the binary.
    pub async fn start() -> Option<Tansu> {
        let port = free_port();
        Tansu::start_advertising(port, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Start a broker listening on 127.0.0.1:`port` whose metadata names
    /// `advertised` as its address (a proxy in front of it: every client
    /// connection after the bootstrap goes there).
    pub async fn start_advertising(port: u16, advertised: SocketAddr) -> Option<Tansu> {
        let bin = require_binary("tansu", BIN_ENV, &default_binary(), INSTALL)?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://{advertised}");
        let mut process = ServerProcess::start("tansu", &bin, |_dir| {
            [
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &advertised_url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(str::to_owned)
        });
        process.wait_accepting(SocketAddr::from(([127, 0, 0, 1], port))).await;
        Some(Tansu { process, bootstrap: format!("127.0.0.1:{port}") })
    }

    /// The `bootstrap.servers` of the broker (its own listener).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Create `topic` with `partitions` partitions (tansu creates no topic
    /// on first use). Goes through the advertised address.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().unwrap();
        let options = AdminOptions::new().request_timeout(Some(super::PATIENCE));
        let created = admin
            .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
            .await
            .unwrap_or_else(|e| panic!("tansu: create topic {topic}: {e}; its output:\n{}", self.process.log()));
        for result in created {
            result.unwrap_or_else(|(t, e)| panic!("tansu: create topic {t}: {e}"));
        }
    }
}
