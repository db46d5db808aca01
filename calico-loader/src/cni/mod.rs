//! The CNI plugin: the same executable acts as `calico` and `calico-ipam` when started under
//! those names, as Calico's does. It speaks CNI 0.1.0 to 1.1.0: ADD, DEL, CHECK, VERSION, GC
//! and STATUS, the network configuration on stdin and the `CNI_*` variables in the
//! environment, the result (or a `{cniVersion, code, msg, details}` error, with exit status
//! 1) on stdout.
//!
//! Modules follow one call's data:
//!
//! - [`config`]: the configuration (Calico's fields) and the environment, checked;
//! - [`addresses`]: addresses through the IPAM library (handle `<network>.<containerID>`);
//! - [`delegate`]: addresses from another IPAM plugin (`host-local`...), run from `CNI_PATH`;
//! - [`link`]: the veth and the container's addresses and routes, made with `ip`;
//! - [`endpoint`]: the WorkloadEndpoint and the network's Profile in the datastore;
//! - [`verbs`]: what each command does with them;
//! - [`result`]: the ADD result in the configuration's version;
//! - [`error`]: the spec's error codes.

pub mod addresses;
pub mod config;
pub mod delegate;
pub mod endpoint;
pub mod error;
pub mod link;
pub mod result;
pub mod verbs;

use std::{io::Read as _, path::Path};

use config::{CniEnv, Environment, LATEST_VERSION, NetConf, ProcessEnv, Verb};
use error::{CniError, code};

/// Which plugin the executable is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// `calico`: interfaces, endpoint and addresses.
    Calico,
    /// `calico-ipam`: addresses only.
    CalicoIpam,
}

impl Plugin {
    /// The plugin the program name (`argv[0]`) names, if any.
    pub fn from_program_name(argv0: &str) -> Option<Self> {
        match Path::new(argv0).file_name()?.to_str()? {
            "calico" => Some(Self::Calico),
            "calico-ipam" => Some(Self::CalicoIpam),
            _ => None,
        }
    }

    /// Its executable's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Calico => "calico",
            Self::CalicoIpam => "calico-ipam",
        }
    }
}

/// Runs one CNI call as `plugin`: reads stdin and the environment, prints the result or the
/// error on stdout, and returns the exit status.
pub async fn run(plugin: Plugin) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::peek_version(&stdin)
        .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    let outcome = match read {
        Ok(_) => call(plugin, &stdin, &ProcessEnv).await,
        Err(e) => Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
    };
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(plugin = plugin.name(), code = e.code, "{}", e.msg);
            println!("{}", e.to_json(&version));
            1
        }
    }
}

/// One call: the result to print, if the command has one.
///
/// # Errors
///
/// Whatever the command fails with.
pub async fn call(
    plugin: Plugin,
    stdin: &[u8],
    env: &dyn Environment,
) -> Result<Option<serde_json::Value>, CniError> {
    let verb = config::verb(env)?;
    if verb == Verb::Version {
        return Ok(Some(verbs::version(stdin)));
    }
    let conf = NetConf::parse(stdin, env)?;
    init_logging(&conf);
    tracing::debug!(
        plugin = plugin.name(),
        ?verb,
        network = conf.name,
        "CNI call"
    );
    match verb {
        Verb::Version => Ok(Some(verbs::version(stdin))),
        Verb::Status => verbs_status(&conf).await.map(|()| None),
        Verb::Gc => match plugin {
            Plugin::Calico => verbs::gc(&conf).await.map(|()| None),
            Plugin::CalicoIpam => verbs::ipam_gc(&conf).await.map(|()| None),
        },
        Verb::Add | Verb::Del | Verb::Check => {
            let cni_env = CniEnv::read(verb, env)?;
            match (plugin, verb) {
                (Plugin::Calico, Verb::Add) => verbs::add(&conf, &cni_env, env).await.map(Some),
                (Plugin::Calico, Verb::Del) => {
                    verbs::del(&conf, &cni_env, env).await.map(|()| None)
                }
                (Plugin::Calico, _) => verbs::check(&conf, &cni_env).await.map(|()| None),
                (Plugin::CalicoIpam, Verb::Add) => verbs::ipam_add(&conf, &cni_env).await.map(Some),
                (Plugin::CalicoIpam, Verb::Del) => {
                    verbs::ipam_del(&conf, &cni_env).await.map(|()| None)
                }
                (Plugin::CalicoIpam, _) => verbs::ipam_check(&conf, &cni_env).await.map(|()| None),
            }
        }
    }
}

async fn verbs_status(conf: &NetConf) -> Result<(), CniError> {
    addresses::status(conf).await
}

/// Logs go to `log_file_path` (appended) or stderr, at `log_level` (Calico's names; `warn`
/// when not given). Never to stdout, which carries the result.
fn init_logging(conf: &NetConf) {
    let level = match conf
        .log_level
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("debug") => "debug",
        Some("info") => "info",
        Some("error" | "fatal" | "panic") => "error",
        Some("none") => "off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::new(format!("{level},netlink_packet_route=error"));
    let file = conf.log_file_path.as_ref().and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_name_picks_the_plugin() {
        assert_eq!(
            Plugin::from_program_name("/opt/cni/bin/calico"),
            Some(Plugin::Calico)
        );
        assert_eq!(
            Plugin::from_program_name("calico-ipam"),
            Some(Plugin::CalicoIpam)
        );
        assert_eq!(Plugin::from_program_name("/usr/bin/calico-loader"), None);
    }
}
