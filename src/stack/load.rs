//! Loading a [`MeshConfig`]: TOML text and files, environment variables,
//! presets merged with per-service sections.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{ClientConfig, MeshConfig, Preset, ServerConfig};
use super::error::StackError;

/// The environment variable naming a TOML file for [`MeshConfig::from_env`].
pub const CONFIG_FILE_ENV: &str = "TOWER_MESH_CONFIG";
/// The prefix of the environment variables that override single values in
/// [`MeshConfig::from_env`]: `TOWER_MESH__CLIENT__ORDERS__TIMEOUT__TOTAL=2s`.
pub const ENV_PREFIX: &str = "TOWER_MESH__";

impl MeshConfig {
    /// A configuration with only a preset: every client asked for gets the
    /// preset's stack.
    pub fn preset(preset: Preset) -> Self {
        MeshConfig { preset, clients: BTreeMap::new(), server: ServerConfig::preset(preset) }
    }

    /// Parse a TOML document (see [`MeshConfig`] for the shape).
    pub fn from_toml_str(toml: &str) -> Result<Self, StackError> {
        let value: toml::Table = toml::from_str(toml).map_err(|e| StackError::Parse(Box::new(e)))?;
        Self::from_table(value)
    }

    /// Read and parse a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, StackError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| StackError::Io { path: path.display().to_string(), source })?;
        Self::from_toml_str(&text)
    }

    /// Load from the environment: the TOML file named by
    /// `TOWER_MESH_CONFIG` if set, then every `TOWER_MESH__A__B__C=value`
    /// variable sets the value at path `a.b.c` (names are lower-cased;
    /// values are read as TOML — `2s` and other non-TOML text as a string).
    ///
    /// ```
    /// # use tower_mesh::stack::MeshConfig;
    /// let cfg = MeshConfig::from_vars([
    ///     ("TOWER_MESH__PRESET", "testing"),
    ///     ("TOWER_MESH__CLIENT__ORDERS__TIMEOUT__TOTAL", "2s"),
    ///     ("TOWER_MESH__CLIENT__ORDERS__BULKHEAD", "false"),
    /// ]).unwrap();
    /// let orders = cfg.client("orders").unwrap();
    /// assert_eq!(orders.timeout.total, Some(std::time::Duration::from_secs(2)));
    /// assert!(orders.bulkhead.is_none());
    /// assert_eq!(orders.circuit_breaker.unwrap().minimum_calls, 2); // the testing preset
    /// ```
    pub fn from_env() -> Result<Self, StackError> {
        let mut table = match std::env::var_os(CONFIG_FILE_ENV) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| StackError::Io { path: Path::new(&path).display().to_string(), source })?;
                toml::from_str(&text).map_err(|e| StackError::Parse(Box::new(e)))?
            }
            None => toml::Table::new(),
        };
        overlay_vars(&mut table, std::env::vars())?;
        Self::from_table(table)
    }

    /// Like [`from_env`](Self::from_env) without a file, from the given
    /// variables instead of the process environment (variables without the
    /// `TOWER_MESH__` prefix are ignored).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, StackError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table = toml::Table::new();
        overlay_vars(&mut table, vars)?;
        Self::from_table(table)
    }

    fn from_table(mut table: toml::Table) -> Result<Self, StackError> {
        let preset = match table.remove("preset") {
            None => Preset::default(),
            Some(toml::Value::String(s)) => s.parse()?,
            Some(other) => return Err(StackError::UnknownPreset(other.to_string())),
        };
        let mut clients = BTreeMap::new();
        if let Some(section) = table.remove("client") {
            let toml::Value::Table(section) = section else {
                return Err(StackError::NotATable("client".into()));
            };
            for (name, value) in section {
                let toml::Value::Table(over) = value else {
                    return Err(StackError::NotATable(format!("client.{name}")));
                };
                let cfg = merged_client(preset, &name, Some(over))?;
                clients.insert(name, cfg);
            }
        }
        let mut server = ServerConfig::preset(preset);
        if let Some(over) = table.remove("server") {
            let toml::Value::Table(over) = over else {
                return Err(StackError::NotATable("server".into()));
            };
            server = merge_into(&server, over, "server")?;
        }
        if let Some(key) = table.keys().next() {
            return Err(StackError::UnknownKey(key.clone()));
        }
        server.validate().map_err(|source| StackError::Invalid { service: "server".into(), source })?;
        #[cfg(feature = "chaos")]
        server
            .chaos_layer(preset)
            .map_err(|e| StackError::Section { service: "server".into(), source: Box::new(e) })?;
        Ok(MeshConfig { preset, clients, server })
    }

    /// The validated client configuration of `service`: its section merged
    /// over the preset, or the preset alone when the file has no section for
    /// it.
    pub fn client(&self, service: &str) -> Result<ClientConfig, StackError> {
        let cfg = match self.clients.get(service) {
            Some(c) => c.clone(),
            None => ClientConfig::preset(self.preset).named(service),
        };
        cfg.validate().map_err(|source| StackError::Invalid { service: service.to_owned(), source })?;
        Ok(cfg)
    }
}

fn merged_client(preset: Preset, name: &str, over: Option<toml::Table>) -> Result<ClientConfig, StackError> {
    let base = ClientConfig::preset(preset).named(name);
    let mut cfg = match over {
        Some(over) => merge_into(&base, over, name)?,
        None => base,
    };
    cfg.name = name.to_owned();
    cfg.sync_names();
    cfg.validate().map_err(|source| StackError::Invalid { service: name.to_owned(), source })?;
    Ok(cfg)
}

/// Deserialize `over` merged onto the serialized `base`.
fn merge_into<T: Serialize + for<'de> Deserialize<'de>>(
    base: &T,
    over: toml::Table,
    service: &str,
) -> Result<T, StackError> {
    let mut merged = toml::Table::try_from(base).map_err(|e| StackError::Parse(Box::new(e)))?;
    deep_merge(&mut merged, over);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| StackError::Section { service: service.to_owned(), source: Box::new(e) })
}

/// Tables merge key by key; anything else replaces. `false` switches a
/// section off, `true` keeps the base's values. A one-key table over another
/// one-key table with a different key is an enum changing variant
/// (`sliding_window = { time = "60s" }` over `{ count = 20 }`): it replaces.
fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if b.len() == 1 && o.len() == 1 && b.keys().next() != o.keys().next() =>
            {
                *b = o;
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (Some(toml::Value::Table(_)), toml::Value::Boolean(true)) => {}
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn overlay_vars<K, V>(table: &mut toml::Table, vars: impl IntoIterator<Item = (K, V)>) -> Result<(), StackError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    for (key, value) in vars {
        let Some(path) = key.as_ref().strip_prefix(ENV_PREFIX) else { continue };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            return Err(StackError::UnknownKey(key.as_ref().to_owned()));
        }
        let value = parse_env_value(value.as_ref());
        let mut cur = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cur.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            cur = entry.as_table_mut().expect("a table was just put here");
        }
        cur.insert(parts[parts.len() - 1].clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Probe {
        v: toml::Value,
    }
    toml::from_str::<Probe>(&format!("v = {raw}")).map(|p| p.v).unwrap_or_else(|_| toml::Value::String(raw.to_owned()))
}
