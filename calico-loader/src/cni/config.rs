//! The network configuration the runtime passes on stdin, and the `CNI_*` environment.
//!
//! The configuration is Calico's: `type`, `nodename`, `nodename_file`, `datastore_type`,
//! `etcd_endpoints` and the etcd TLS files, `mtu`, `log_level`, `log_file_path`, `policy` and
//! `ipam {type, assign_ipv4, assign_ipv6, ipv4_pools, ipv6_pools}`, plus `datastore_dir` for
//! the local-directory datastore. Fields this plugin does not know are ignored, as Calico's
//! plugin (and the spec, for runtime-added fields) has it. Text that is not JSON is a decode
//! error (code 6); JSON that is not a valid configuration is code 7, naming the field.

use std::{collections::BTreeSet, path::PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::{CniError, code};
use crate::{
    agent::DEFAULT_DATASTORE_DIR,
    datastore::{DatastoreConfig, EtcdConfig},
};

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version errors are reported in when the configuration names none usable.
pub const LATEST_VERSION: &str = "1.1.0";

/// Calico's node name file, read when `nodename` is not given.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";

/// The MTU of both ends of the veth when `mtu` is not given (Calico's default).
pub const DEFAULT_MTU: u32 = 1500;

/// The network configuration, as this plugin uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name: the profile, and the first part of the IPAM handle.
    pub name: String,
    pub plugin_type: String,
    pub nodename: Option<String>,
    pub nodename_file: PathBuf,
    pub datastore: DatastoreConfig,
    pub mtu: u32,
    pub log_level: Option<String>,
    pub log_file_path: Option<PathBuf>,
    pub ipam: IpamConf,
    /// `policy.type`: when set (`k8s`), the network's profile is not created.
    pub policy_type: Option<String>,
    /// `prepare_for_xdp` (ours): GRO on and transmit checksum offload off on the container
    /// side, which the agent's XDP mode needs.
    pub prepare_for_xdp: bool,
    /// The previous plugin's result (CHECK, chained ADD).
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The configuration as received, for a delegated IPAM plugin.
    pub raw: Vec<u8>,
}

/// `ipam`: which addresses to assign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConf {
    pub ipam_type: String,
    pub assign_ipv4: bool,
    pub assign_ipv6: bool,
    /// Pools by CIDR or name; empty: every enabled pool that selects the node.
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
}

/// One attachment the runtime still holds (GC).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Deserialize)]
struct RawNetConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    nodename: Option<String>,
    nodename_file: Option<PathBuf>,
    datastore_type: Option<String>,
    datastore_dir: Option<PathBuf>,
    etcd_endpoints: Option<String>,
    etcd_key_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    etcd_ca_cert_file: Option<PathBuf>,
    mtu: Option<u32>,
    log_level: Option<String>,
    log_file_path: Option<PathBuf>,
    ipam: Option<RawIpam>,
    policy: Option<RawPolicy>,
    #[serde(default, deserialize_with = "flag")]
    prepare_for_xdp: Option<bool>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    assign_ipv4: Option<bool>,
    #[serde(default, deserialize_with = "flag")]
    assign_ipv6: Option<bool>,
    #[serde(default)]
    ipv4_pools: Vec<String>,
    #[serde(default)]
    ipv6_pools: Vec<String>,
}

#[derive(Deserialize)]
struct RawPolicy {
    #[serde(rename = "type", default)]
    policy_type: String,
}

/// Calico writes `"assign_ipv4": "true"`; a JSON boolean is accepted too.
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Option::<Flag>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Flag::Bool(b)) => Ok(Some(b)),
        Some(Flag::Text(t)) => match t.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{t:?} is not \"true\" or \"false\""
            ))),
        },
    }
}

/// Where to find settings the configuration leaves out: calicoctl's environment variables.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// The `cniVersion` of `stdin`, if it is JSON with one: errors are reported in it.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

/// Checks `version` is one this plugin speaks (code 1 if not).
///
/// # Errors
///
/// An unsupported version.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported: this plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// Whether version `a` is at least `b` (both `x.y.z`).
pub fn version_at_least(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) >= parse(b)
}

impl NetConf {
    /// Parses the configuration on stdin; settings it leaves out come from `env`.
    ///
    /// # Errors
    ///
    /// Not JSON (6), an unsupported `cniVersion` (1), or an invalid field (7, naming it).
    pub fn parse(stdin: &[u8], env: &dyn Environment) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration on stdin must be a JSON object",
            ));
        }
        let raw: RawNetConf = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            CniError::config(format!(
                "invalid network configuration: {}: {}",
                if path == "." { "(top level)" } else { &path },
                e.inner()
            ))
        })?;
        let cni_version = raw.cni_version.ok_or_else(|| {
            CniError::config("invalid network configuration: cniVersion is missing")
        })?;
        check_version(&cni_version)?;
        let name = raw
            .name
            .ok_or_else(|| CniError::config("invalid network configuration: name is missing"))?;
        check_network_name(&name)?;
        let plugin_type = raw.plugin_type.unwrap_or_default();
        let datastore = datastore_config(
            raw.datastore_type.as_deref(),
            raw.datastore_dir,
            raw.etcd_endpoints.as_deref(),
            [raw.etcd_ca_cert_file, raw.etcd_cert_file, raw.etcd_key_file],
            env,
        )?;
        if raw.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(CniError::config(
                "invalid network configuration: mtu: must be between 68 and 65535",
            ));
        }
        let ipam = match raw.ipam {
            Some(ipam) => IpamConf {
                ipam_type: ipam.ipam_type.unwrap_or_default(),
                assign_ipv4: ipam.assign_ipv4.unwrap_or(true),
                assign_ipv6: ipam.assign_ipv6.unwrap_or(false),
                ipv4_pools: ipam.ipv4_pools,
                ipv6_pools: ipam.ipv6_pools,
            },
            None => IpamConf {
                ipam_type: String::new(),
                assign_ipv4: true,
                assign_ipv6: false,
                ipv4_pools: Vec::new(),
                ipv6_pools: Vec::new(),
            },
        };
        if !ipam.assign_ipv4 && !ipam.assign_ipv6 {
            return Err(CniError::config(
                "invalid network configuration: ipam: assign_ipv4 and assign_ipv6 are both false",
            ));
        }
        Ok(Self {
            cni_version,
            name,
            plugin_type,
            nodename: raw.nodename.filter(|n| !n.is_empty()),
            nodename_file: raw
                .nodename_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NODENAME_FILE)),
            datastore,
            mtu: raw.mtu.unwrap_or(DEFAULT_MTU),
            log_level: raw.log_level.filter(|l| !l.is_empty()),
            log_file_path: raw.log_file_path.filter(|p| !p.as_os_str().is_empty()),
            ipam,
            policy_type: raw.policy.map(|p| p.policy_type).filter(|t| !t.is_empty()),
            prepare_for_xdp: raw.prepare_for_xdp.unwrap_or(false),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
            raw: stdin.to_vec(),
        })
    }

    /// The node name: `nodename`, else the first line of `nodename_file` (a missing file is
    /// fine), else the host name.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read, or the host name cannot be had.
    pub fn node_name(&self) -> Result<String, CniError> {
        if let Some(name) = &self.nodename {
            return Ok(name.clone());
        }
        match std::fs::read_to_string(&self.nodename_file) {
            Ok(text) => {
                let name = text.lines().next().unwrap_or("").trim();
                if !name.is_empty() {
                    return Ok(name.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CniError::new(
                    code::IO,
                    format!(
                        "reading the node name from {} (nodename_file): {e}",
                        self.nodename_file.display()
                    ),
                ));
            }
        }
        crate::agent::node::node_name(None)
            .map_err(|e| CniError::internal(format!("the host name (gethostname): {e}")))
    }

    /// The IPAM handle of a container's addresses on this network (Calico's).
    pub fn handle(&self, container_id: &str) -> String {
        format!("{}.{container_id}", self.name)
    }
}

/// The network name becomes a profile's name and a label key: Calico's resource-name rules.
fn check_network_name(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "invalid network configuration: name: {name:?} cannot name a Calico profile: use lower-case letters, digits, '-' and '.'"
        )))
    }
}

/// The datastore the configuration names, falling back on calicoctl's environment variables
/// (`DATASTORE_TYPE`, `ETCD_ENDPOINTS`, `CALICO_DATASTORE_DIR`, `ETCD_*_FILE`), then on the
/// local directory.
fn datastore_config(
    datastore_type: Option<&str>,
    datastore_dir: Option<PathBuf>,
    etcd_endpoints: Option<&str>,
    [ca, cert, key]: [Option<PathBuf>; 3],
    env: &dyn Environment,
) -> Result<DatastoreConfig, CniError> {
    let endpoints_text = etcd_endpoints
        .map(str::to_owned)
        .filter(|e| !e.is_empty())
        .or_else(|| env.var("ETCD_ENDPOINTS"));
    let env_type = env.var("DATASTORE_TYPE");
    let kind = match datastore_type.filter(|t| !t.is_empty()) {
        Some(t) => t.to_owned(),
        None if etcd_endpoints.is_some_and(|e| !e.is_empty()) => "etcdv3".to_owned(),
        None => env_type.unwrap_or_else(|| {
            if endpoints_text.is_some() {
                "etcdv3".to_owned()
            } else {
                "local".to_owned()
            }
        }),
    };
    match kind.as_str() {
        "etcdv3" => {
            let endpoints: Vec<String> = endpoints_text
                .unwrap_or_default()
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect();
            if endpoints.is_empty() {
                return Err(CniError::config(
                    "invalid network configuration: etcd_endpoints: datastore_type etcdv3 needs etcd_endpoints (like \"http://127.0.0.1:2379\")",
                ));
            }
            let file = |given: Option<PathBuf>, var: &str| {
                given
                    .filter(|p| !p.as_os_str().is_empty())
                    .or_else(|| env.var(var).map(PathBuf::from))
            };
            Ok(DatastoreConfig::Etcd(EtcdConfig {
                endpoints,
                ca_cert_file: file(ca, "ETCD_CA_CERT_FILE"),
                cert_file: file(cert, "ETCD_CERT_FILE"),
                key_file: file(key, "ETCD_KEY_FILE"),
            }))
        }
        "local" => Ok(DatastoreConfig::Local(
            datastore_dir
                .filter(|p| !p.as_os_str().is_empty())
                .or_else(|| env.var("CALICO_DATASTORE_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATASTORE_DIR)),
        )),
        "kubernetes" => Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "datastore_type: the kubernetes datastore is not supported; use etcdv3 or local",
        )),
        other => Err(CniError::config(format!(
            "invalid network configuration: datastore_type: {other:?} is not etcdv3 or local"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The environment

/// A CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// The `CNI_*` variables of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub verb: Verb,
    /// ADD, DEL, CHECK.
    pub container_id: String,
    pub ifname: String,
    /// ADD, CHECK; DEL when the runtime still has it.
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`, parsed.
    pub args: Vec<(String, String)>,
}

/// The verb of `CNI_COMMAND`.
///
/// # Errors
///
/// Missing or unknown (code 4).
pub fn verb(env: &dyn Environment) -> Result<Verb, CniError> {
    let Some(command) = env.var("CNI_COMMAND") else {
        return Err(CniError::env(
            "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime with CNI_COMMAND=ADD|DEL|CHECK|VERSION|GC|STATUS and the network configuration on stdin (for the command line, run calico-loader)",
        ));
    };
    Ok(match command.as_str() {
        "ADD" => Verb::Add,
        "DEL" => Verb::Del,
        "CHECK" => Verb::Check,
        "VERSION" => Verb::Version,
        "GC" => Verb::Gc,
        "STATUS" => Verb::Status,
        other => {
            return Err(CniError::env(format!(
                "CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, GC or STATUS"
            )));
        }
    })
}

impl CniEnv {
    /// The variables ADD, DEL and CHECK need, checked.
    ///
    /// # Errors
    ///
    /// A missing or invalid variable (code 4), naming it.
    pub fn read(verb: Verb, env: &dyn Environment) -> Result<Self, CniError> {
        let container_id = env
            .var("CNI_CONTAINERID")
            .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
        check_container_id(&container_id)?;
        let ifname = env
            .var("CNI_IFNAME")
            .ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
        check_ifname(&ifname)?;
        let netns = env.var("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(verb, Verb::Add | Verb::Check) {
            return Err(CniError::env(
                "CNI_NETNS is not set: ADD and CHECK need the path of the container's network namespace (like /run/netns/NAME)",
            ));
        }
        let args = parse_cni_args(env.var("CNI_ARGS").as_deref().unwrap_or(""))?;
        Ok(Self {
            verb,
            container_id,
            ifname,
            netns,
            args,
        })
    }
}

/// The spec: letters, digits, `_`, `.` and `-`, starting with a letter or digit.
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?}: must be letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// The spec: at most 15 bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_IFNAME {name:?}: must be 1-15 characters, without '/', ':' or white space"
        )))
    }
}

/// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`.
fn parse_cni_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CniError::env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))
        })
        .collect()
}

/// The valid attachments of a GC call, as a set.
pub fn attachment_set(attachments: &[Attachment]) -> BTreeSet<(String, String)> {
    attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect()
}

/// The pools of `ipv4_pools`/`ipv6_pools`, by CIDR: names are looked up among `pools`
/// (name, CIDR).
///
/// # Errors
///
/// A name or CIDR of no pool (code 7).
pub fn resolve_pools(
    given: &[String],
    field: &str,
    pools: &[(String, ipnet::IpNet)],
) -> Result<Vec<ipnet::IpNet>, CniError> {
    given
        .iter()
        .map(|p| {
            if let Ok(cidr) = p.parse::<ipnet::IpNet>() {
                return Ok(cidr);
            }
            pools
                .iter()
                .find(|(name, _)| name == p)
                .map(|(_, cidr)| *cidr)
                .ok_or_else(|| {
                    CniError::config(format!(
                        "invalid network configuration: ipam.{field}: {p:?} is neither a CIDR nor the name of an IPPool"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct FakeEnv(BTreeMap<&'static str, &'static str>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn no_env() -> FakeEnv {
        FakeEnv(BTreeMap::new())
    }

    #[test]
    fn calicos_own_conflist_entry_parses() {
        let text = r#"{
            "cniVersion": "0.3.1", "name": "calico", "type": "calico",
            "log_level": "info", "log_file_path": "/var/log/calico/cni/cni.log",
            "datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:2379",
            "etcd_ca_cert_file": "/etc/calico/ca.pem", "mtu": 1440,
            "nodename_file_optional": false, "container_settings": {"allow_ip_forwarding": false},
            "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true",
                     "ipv4_pools": ["198.18.0.0/16", "default-ipv4-ippool"]},
            "policy": {"type": "k8s"},
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
        }"#;
        let conf = NetConf::parse(text.as_bytes(), &no_env()).expect("parses");
        assert_eq!(conf.name, "calico");
        assert_eq!(conf.mtu, 1440);
        assert!(conf.ipam.assign_ipv4 && conf.ipam.assign_ipv6);
        assert_eq!(conf.ipam.ipv4_pools.len(), 2);
        assert_eq!(conf.policy_type.as_deref(), Some("k8s"));
        assert_eq!(
            conf.datastore,
            DatastoreConfig::Etcd(EtcdConfig {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                ca_cert_file: Some("/etc/calico/ca.pem".into()),
                cert_file: None,
                key_file: None,
            })
        );
        assert_eq!(conf.handle("abc"), "calico.abc");
    }

    #[test]
    fn defaults_are_calicos() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"net1","type":"calico","ipam":{"type":"calico-ipam"}}"#,
            &no_env(),
        )
        .expect("parses");
        assert!(conf.ipam.assign_ipv4);
        assert!(!conf.ipam.assign_ipv6);
        assert_eq!(conf.mtu, DEFAULT_MTU);
        assert_eq!(conf.nodename_file, PathBuf::from(DEFAULT_NODENAME_FILE));
        assert_eq!(
            conf.datastore,
            DatastoreConfig::Local(PathBuf::from(DEFAULT_DATASTORE_DIR))
        );
    }

    #[test]
    fn the_environment_fills_in_the_datastore() {
        let env = FakeEnv(BTreeMap::from([
            ("DATASTORE_TYPE", "local"),
            ("CALICO_DATASTORE_DIR", "/srv/calico"),
        ]));
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"calico"}"#,
            &env,
        )
        .expect("parses");
        assert_eq!(conf.datastore, DatastoreConfig::Local("/srv/calico".into()));
        let given = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"calico","datastore_type":"local","datastore_dir":"/d"}"#,
            &env,
        )
        .expect("parses");
        assert_eq!(given.datastore, DatastoreConfig::Local("/d".into()));
    }

    #[test]
    fn bad_input_gets_the_specs_codes() {
        let code_of = |text: &str| {
            NetConf::parse(text.as_bytes(), &no_env())
                .expect_err("refused")
                .code
        };
        assert_eq!(code_of("not json"), code::DECODE);
        assert_eq!(code_of("[1,2]"), code::DECODE);
        assert_eq!(
            code_of(r#"{"cniVersion":"9.9.9","name":"n"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(code_of(r#"{"name":"n"}"#), code::INVALID_CONFIG);
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0"}"#), code::INVALID_CONFIG);
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"Bad_Name"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","datastore_type":"kubernetes"}"#),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","datastore_type":"etcdv3"}"#),
            code::INVALID_CONFIG
        );
        let wrong = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"assign_ipv6":"maybe"}}"#,
            &no_env(),
        )
        .expect_err("refused");
        assert_eq!(wrong.code, code::INVALID_CONFIG);
        assert!(wrong.msg.contains("ipam.assign_ipv6"), "{}", wrong.msg);
        let mtu = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#,
            &no_env(),
        )
        .expect_err("refused");
        assert!(mtu.msg.contains("mtu"), "{}", mtu.msg);
    }

    #[test]
    fn node_name_comes_from_the_config_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("nodename");
        let mut conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#, &no_env()).expect("parses");
        conf.nodename_file = file.clone();
        conf.nodename = Some("given".into());
        assert_eq!(conf.node_name().expect("name"), "given");
        conf.nodename = None;
        std::fs::write(&file, "from-file\n").expect("write");
        assert_eq!(conf.node_name().expect("name"), "from-file");
        std::fs::remove_file(&file).expect("rm");
        assert!(!conf.node_name().expect("host name").is_empty());
    }

    #[test]
    fn environment_is_checked() {
        let env = FakeEnv(BTreeMap::from([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ]));
        assert_eq!(verb(&env).expect("verb"), Verb::Add);
        let e = CniEnv::read(Verb::Add, &env).expect_err("no netns");
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_NETNS"));
        let del = CniEnv::read(Verb::Del, &env).expect("DEL needs no netns");
        assert_eq!(del.args[1], ("K8S_POD_NAME".into(), "web".into()));
        assert!(check_container_id("../etc").is_err());
        assert!(check_ifname("a-very-long-interface").is_err());
        assert!(check_ifname("eth0").is_ok());
        assert_eq!(
            verb(&no_env()).expect_err("unset").code,
            code::INVALID_ENVIRONMENT
        );
    }
}
