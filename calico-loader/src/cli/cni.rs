//! `calico-loader cni install`: puts the CNI plugin where runtimes look for it (the
//! executable, as `calico` and `calico-ipam`) and writes a conflist for the network, carrying
//! the datastore settings this command runs with (its flags and environment).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::resources::DatastoreArgs;
use crate::{cni::Plugin, datastore::DatastoreConfig};

/// `cni`'s subcommands.
#[derive(Subcommand)]
pub enum CniCommand {
    /// Install the plugin (`calico`, `calico-ipam`) and write the network's conflist.
    Install(InstallArgs),
}

/// `cni`'s arguments.
#[derive(Args)]
pub struct CniArgs {
    #[command(subcommand)]
    pub command: CniCommand,
}

#[derive(Args)]
pub struct InstallArgs {
    /// Where CNI runtimes look for plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where CNI runtimes look for network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The network's name (its profile, and its conflist `10-<name>.conflist`).
    #[arg(long, default_value = "calico")]
    pub network: String,
    /// The node name to write into the conflist (`nodename`); without it the plugin reads
    /// /var/lib/calico/nodename, else uses the host name.
    #[arg(long, env = "NODENAME")]
    pub node: Option<String>,
    /// The veth's MTU.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Give containers an IPv6 address too (needs an enabled IPv6 pool).
    #[arg(long)]
    pub ipv6: bool,
    /// Prepare the container side for the agent's XDP mode (`--attach-mode xdp`): GRO on,
    /// transmit checksum offload off.
    #[arg(long)]
    pub xdp: bool,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

/// Runs a `cni` subcommand.
///
/// # Errors
///
/// See each.
pub fn run(args: &CniArgs) -> anyhow::Result<()> {
    match &args.command {
        CniCommand::Install(install_args) => install(install_args),
    }
}

/// The conflist for `args`' network.
///
/// # Errors
///
/// The local datastore's directory cannot be made absolute, or etcd has no endpoints.
pub fn conflist(args: &InstallArgs) -> anyhow::Result<Value> {
    let mut plugin = json!({
        "type": Plugin::Calico.name(),
        "log_level": "warning",
        "mtu": args.mtu,
        "ipam": {
            "type": Plugin::CalicoIpam.name(),
            "assign_ipv4": "true",
            "assign_ipv6": if args.ipv6 { "true" } else { "false" },
        },
    });
    if args.xdp {
        plugin["prepare_for_xdp"] = json!(true);
    }
    if let Some(node) = args.node.as_deref().filter(|n| !n.is_empty()) {
        plugin["nodename"] = json!(node);
    }
    match args.datastore.config() {
        DatastoreConfig::Local(dir) => {
            let dir = std::path::absolute(&dir)
                .with_context(|| format!("making {} absolute", dir.display()))?;
            plugin["datastore_type"] = json!("local");
            plugin["datastore_dir"] = json!(dir);
        }
        DatastoreConfig::Etcd(etcd) => {
            if etcd.endpoints.is_empty() {
                bail!("--datastore-type etcdv3 needs --etcd-endpoints (or ETCD_ENDPOINTS)");
            }
            plugin["datastore_type"] = json!("etcdv3");
            plugin["etcd_endpoints"] = json!(etcd.endpoints.join(","));
            for (field, path) in [
                ("etcd_ca_cert_file", &etcd.ca_cert_file),
                ("etcd_cert_file", &etcd.cert_file),
                ("etcd_key_file", &etcd.key_file),
            ] {
                if let Some(path) = path {
                    plugin[field] = json!(std::path::absolute(path)?);
                }
            }
        }
    }
    Ok(json!({
        "cniVersion": "1.0.0",
        "name": args.network,
        "plugins": [plugin],
    }))
}

/// `cni install`.
///
/// # Errors
///
/// The network name is not one the plugin accepts, or a file cannot be written.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let conflist = conflist(args)?;
    // The plugin's own check, so a name it would refuse is refused now.
    let entry = json!({
        "cniVersion": conflist["cniVersion"],
        "name": args.network,
        "type": Plugin::Calico.name(),
    });
    crate::cni::config::NetConf::parse(
        entry.to_string().as_bytes(),
        &crate::cni::config::ProcessEnv,
    )
    .map_err(|e| anyhow::anyhow!("--network: {}", e.msg))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    std::fs::create_dir_all(&args.bin_dir)
        .with_context(|| format!("creating {}", args.bin_dir.display()))?;
    // One copy, named twice: the name it is started under picks the plugin.
    let calico = args.bin_dir.join(Plugin::Calico.name());
    copy_atomically(&exe, &calico)?;
    println!("installed {}", calico.display());
    let ipam = args.bin_dir.join(Plugin::CalicoIpam.name());
    link_atomically(&calico, &ipam)?;
    println!("installed {}", ipam.display());
    std::fs::create_dir_all(&args.conf_dir)
        .with_context(|| format!("creating {}", args.conf_dir.display()))?;
    let path = args.conf_dir.join(format!("10-{}.conflist", args.network));
    let text = serde_json::to_string_pretty(&conflist)? + "\n";
    write_atomically(&path, text.as_bytes(), 0o644)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Copies `from` to `to` through a temporary file and a rename, so a runtime never runs a
/// half-written plugin (and a running one is not overwritten in place).
fn copy_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_atomically(to, &bytes, 0o755)
}

/// Makes `to` a hard link of `from` (a copy where the file system cannot link), replacing
/// what `to` was in one rename.
fn link_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = to.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    if std::fs::hard_link(from, &temp).is_err() {
        return copy_atomically(from, to);
    }
    std::fs::rename(&temp, to).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("writing {}", temp.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", temp.display()))?;
    drop(file);
    std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        install: InstallArgs,
    }

    fn conflist_for(args: &[&str]) -> Value {
        let mut all = vec!["install"];
        all.extend_from_slice(args);
        let wrapper = Wrapper::try_parse_from(all).expect("arguments");
        conflist(&wrapper.install).expect("conflist")
    }

    #[test]
    fn the_conflist_carries_the_datastore_settings() {
        let etcd = conflist_for(&[
            "--network",
            "net1",
            "--node",
            "node-a",
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            "https://198.18.0.1:2379,https://198.18.0.2:2379",
            "--etcd-ca-cert-file",
            "/etc/calico/ca.pem",
            "--ipv6",
        ]);
        assert_eq!(etcd["name"], "net1");
        assert_eq!(etcd["cniVersion"], "1.0.0");
        let plugin = &etcd["plugins"][0];
        assert_eq!(plugin["type"], "calico");
        assert_eq!(plugin["nodename"], "node-a");
        assert_eq!(plugin["datastore_type"], "etcdv3");
        assert_eq!(
            plugin["etcd_endpoints"],
            "https://198.18.0.1:2379,https://198.18.0.2:2379"
        );
        assert_eq!(plugin["etcd_ca_cert_file"], "/etc/calico/ca.pem");
        assert!(plugin.get("etcd_key_file").is_none());
        assert_eq!(plugin["ipam"]["type"], "calico-ipam");
        assert_eq!(plugin["ipam"]["assign_ipv6"], "true");

        let local = conflist_for(&["--datastore-type", "local", "--datastore", "relative/dir"]);
        let plugin = &local["plugins"][0];
        assert_eq!(local["name"], "calico");
        assert_eq!(plugin["datastore_type"], "local");
        let dir = plugin["datastore_dir"].as_str().expect("a path");
        assert!(
            dir.starts_with('/') && dir.ends_with("relative/dir"),
            "{dir}"
        );
        // The plugin reads what install writes.
        let mut entry = plugin.clone();
        entry["name"] = local["name"].clone();
        entry["cniVersion"] = local["cniVersion"].clone();
        let conf = crate::cni::config::NetConf::parse(
            entry.to_string().as_bytes(),
            &crate::cni::config::ProcessEnv,
        )
        .expect("the plugin accepts it");
        assert_eq!(conf.datastore, DatastoreConfig::Local(PathBuf::from(dir)));
    }
}
