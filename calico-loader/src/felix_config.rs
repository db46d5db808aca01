//! Felix's configuration from its sources, layered in Felix's order (later wins):
//!
//! 1. defaults;
//! 2. the `FelixConfiguration` named `default`;
//! 3. the `FelixConfiguration` named `node.<nodename>`;
//! 4. the file `/etc/calico/felix.cfg` (INI, section `[global]`);
//! 5. `FELIX_<NAME>` environment variables;
//! 6. the agent's command-line flags.
//!
//! Each source becomes a [`Layer`] here ([`Layer::from_resource`], [`Layer::from_file`],
//! [`Layer::from_env`], the flags); [`LocalSources`] holds the node's own ones and layers the
//! datastore's resources under them. The settings themselves, their parsers and the layering
//! are in [`crate::felix_settings`]. At run time [`Watch`] checks the datastore's
//! `FelixConfiguration`s against the running configuration and applies the log level.

use std::path::Path;

use crate::{
    datastore::{Snapshot, resources::FelixConfiguration},
    felix_settings::{
        ConfigError, Entry, FelixConfig, Layer, LogSeverity, Source, resolve, resource_value_text,
    },
};

/// Where Felix's configuration file is, unless told otherwise.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/calico/felix.cfg";
/// The prefix of Felix's environment variables.
const ENV_PREFIX: &str = "FELIX_";

impl Layer {
    /// A `FelixConfiguration`'s fields.
    pub fn from_resource(resource: &FelixConfiguration) -> Self {
        let source = Source::Resource(resource.metadata.name.clone());
        Self(
            resource
                .spec
                .fields
                .iter()
                .filter_map(|(name, value)| {
                    // A value that does not convert is refused when the layer is resolved.
                    let value = resource_value_text(value).transpose()?;
                    Some(Entry {
                        name: name.clone(),
                        value,
                        source: source.clone(),
                    })
                })
                .collect(),
        )
    }

    /// The `FELIX_*` variables of `vars` (names matched case-insensitively).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut entries: Vec<Entry> = vars
            .into_iter()
            .filter_map(|(var, value)| {
                let name = var
                    .get(..ENV_PREFIX.len())
                    .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                    .and_then(|_| var.get(ENV_PREFIX.len()..))?
                    .to_string();
                Some(Entry {
                    name,
                    value: Ok(value),
                    source: Source::Env(var),
                })
            })
            .collect();
        entries.sort_by_key(|a| a.source.to_string());
        Self(entries)
    }

    /// Felix's configuration file: `Name = value` lines of the `[global]` section (other
    /// sections are Felix's too, and ignored); `#` and `;` start comments. A missing file is
    /// no layer.
    ///
    /// # Errors
    ///
    /// The file unreadable, or a line that is not INI.
    pub fn from_file(path: &Path) -> Result<Option<Self>, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        Self::parse_file(path, &text).map(Some)
    }

    fn parse_file(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut section: Option<String> = None;
        let source = Source::File(path.to_path_buf());
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim().to_ascii_lowercase());
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: format!("line {}: not `Name = value`", number + 1),
                });
            };
            match section.as_deref() {
                Some("global") => entries.push(Entry {
                    name: name.trim().to_string(),
                    value: Ok(value.trim().to_string()),
                    source: source.clone(),
                }),
                Some(_) => {}
                None => {
                    return Err(ConfigError::File {
                        path: path.to_path_buf(),
                        reason: format!("line {}: a setting outside [global]", number + 1),
                    });
                }
            }
        }
        Ok(Self(entries))
    }
}

/// The sources of this node other than the datastore, read once at start: the file, the
/// environment and the flags. [`LocalSources::resolve`] layers the datastore's resources under
/// them.
#[derive(Clone, Debug)]
pub struct LocalSources {
    pub file: Option<Layer>,
    pub env: Layer,
    pub flags: Layer,
}

impl LocalSources {
    /// Reads the file at `file` (if it exists) and the process's environment; `flags` are the
    /// settings given on the command line, as (Felix name, value, flag).
    ///
    /// # Errors
    ///
    /// The file unreadable or not INI.
    pub fn read(file: &Path, flags: &[(&str, String, &'static str)]) -> Result<Self, ConfigError> {
        Ok(Self {
            file: Layer::from_file(file)?,
            env: Layer::from_env(std::env::vars()),
            flags: flags_layer(flags),
        })
    }

    /// The effective configuration with the `default` and `node.<nodename>` resources (when
    /// present) under the local sources.
    ///
    /// # Errors
    ///
    /// The first unknown setting or invalid value, with its source.
    pub fn resolve(
        &self,
        default: Option<&FelixConfiguration>,
        node: Option<&FelixConfiguration>,
    ) -> Result<FelixConfig, ConfigError> {
        let mut layers: Vec<Layer> = Vec::new();
        layers.extend(default.map(Layer::from_resource));
        layers.extend(node.map(Layer::from_resource));
        layers.extend(self.file.clone());
        layers.push(self.env.clone());
        layers.push(self.flags.clone());
        resolve(&layers)
    }
}

fn flags_layer(flags: &[(&str, String, &'static str)]) -> Layer {
    Layer(
        flags
            .iter()
            .map(|(name, value, flag)| Entry {
                name: (*name).to_string(),
                value: Ok(value.clone()),
                source: Source::Flag(flag),
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// At run time

/// The agent's view of its configuration while it runs: the configuration in force, and the
/// last problem or pending change it logged (each is logged once).
#[derive(Debug)]
pub struct Watch {
    sources: LocalSources,
    node_resource: String,
    running: FelixConfig,
    last_logged: Option<String>,
}

impl Watch {
    /// Starts from the configuration the agent started with, and applies what it sets
    /// directly: the log level. Logs the settings accepted and not used, once.
    pub fn start(sources: LocalSources, node: &str, running: FelixConfig) -> Self {
        apply_log_severity(running.log_severity_screen.value);
        for (name, source) in &running.unused {
            tracing::info!(%source, "Felix setting {name} is accepted and not used by this dataplane");
        }
        Self {
            sources,
            node_resource: format!("node.{node}"),
            running,
            last_logged: None,
        }
    }

    /// The configuration in force.
    pub fn running(&self) -> &FelixConfig {
        &self.running
    }

    /// Checks the `FelixConfiguration`s of `snapshot` against the running configuration. An
    /// invalid one is refused, and a change the agent cannot apply while it runs (a map size,
    /// the data interfaces, the endpoints' addresses) is refused with what to do: in both cases
    /// the running configuration stays, whole. The log level is applied at once.
    pub fn check(&mut self, snapshot: &Snapshot) {
        let default = snapshot.find::<FelixConfiguration>(None, "default");
        let node = snapshot.find::<FelixConfiguration>(None, &self.node_resource);
        let message = match self.sources.resolve(default, node) {
            Err(e) => Some(format!(
                "Felix configuration refused, the running configuration stays: {e}"
            )),
            Ok(new) => {
                let mut changed = self.running.changed(&new);
                if changed.contains(&"LogSeverityScreen") {
                    apply_log_severity(new.log_severity_screen.value);
                    self.running.log_severity_screen = new.log_severity_screen.clone();
                    changed.retain(|name| *name != "LogSeverityScreen");
                }
                (!changed.is_empty()).then(|| {
                    let mut resize = String::new();
                    if changed.contains(&"BPFMapSizeConntrack") {
                        resize.push_str(
                            " (BPFMapSizeConntrack: restart the agent to resize the conntrack \
                             table; the new table takes over the tracked flows)",
                        );
                    }
                    if changed.contains(&"BPFMapSizeIfState") {
                        resize.push_str(
                            " (BPFMapSizeIfState: restart the agent to resize the endpoint map; \
                             the new map is filled before the programs move to it)",
                        );
                    }
                    format!(
                        "Felix configuration change not applied, the running configuration \
                         stays: {} cannot change while the agent runs; restart the agent to \
                         apply{resize}",
                        changed.join(", ")
                    )
                })
            }
        };
        if message != self.last_logged {
            if let Some(message) = &message {
                tracing::warn!("{message}");
            } else if self.last_logged.is_some() {
                tracing::info!("Felix configuration back in line with the running one");
            }
            self.last_logged = message;
        }
    }
}

fn apply_log_severity(severity: LogSeverity) {
    if crate::logging::set_log_filter(severity.filter()) {
        tracing::debug!(%severity, "log level set from LogSeverityScreen");
    }
}
#[cfg(test)]
mod tests;
