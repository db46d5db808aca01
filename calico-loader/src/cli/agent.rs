//! `calico-loader run`, the agent, and `calico-loader cleanup`, which removes what an agent left
//! (an agent keeps its programs attached and its maps pinned when it exits, as Calico does).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::resources::DatastoreArgs;
use crate::{
    agent::AgentConfig,
    dataplane::{
        self,
        attach::AttachMode,
        bpffs::{DEFAULT_PIN_PATH, PinLayout},
    },
};

// The arguments of `run` (its help text is the subcommand's).
#[derive(Args)]
pub struct RunArgs {
    /// The datastore to follow live: a local directory (default) or etcd v3.
    #[command(flatten)]
    pub datastore: DatastoreArgs,
    /// This node's name: the agent serves the endpoints whose spec.node matches.
    /// Defaults to the hostname.
    #[arg(long, env = "NODENAME")]
    pub node: Option<String>,
    /// Where maps and links are pinned (on a BPF filesystem).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Hook for packets from workloads: tc (default, measured faster on veth) or xdp.
    #[arg(long, default_value = "tc")]
    pub attach_mode: AttachMode,
    /// Detach programs and remove pins on exit. By default they stay, as in Calico, so
    /// traffic keeps flowing while the agent restarts.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Seconds between full resyncs (changes are applied as they happen regardless).
    #[arg(long, default_value_t = 10)]
    pub resync_interval: u64,
    /// Entries of the conntrack table (Calico's default is 512k). When it is full, the
    /// least recently used entry makes room, so active flows keep working.
    #[arg(long, env = "FELIX_BPFMAPSIZECONNTRACK", default_value_t = <calico_ebpf_common::maps::Conntrack as calico_ebpf_common::maps::MapSpec>::DEF.max_entries)]
    pub conntrack_size: u32,
}

// The arguments of `cleanup`.
#[derive(Args)]
pub struct CleanupArgs {
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

/// `run`: the agent, until SIGINT or SIGTERM.
///
/// # Errors
///
/// No host name for a default node name, or the agent failing (see [`crate::agent::run`]).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let node = node_name(args.node)?;
    crate::agent::run(AgentConfig {
        datastore: args.datastore.config(),
        node,
        layout: PinLayout::new(args.pin_path),
        mode: args.attach_mode,
        detach_on_exit: args.detach_on_exit,
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        conntrack_entries: args.conntrack_size.max(1),
    })
    .await
}

/// `cleanup`: deletes the kernel routes the agent made, detaches every program and removes the
/// pins under `--pin-path`.
///
/// # Errors
///
/// Netlink or the BPF filesystem failing.
pub async fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let layout = PinLayout::new(&args.pin_path);
    let netlink = dataplane::netlink::Netlink::connect()?;
    for route in netlink.our_routes().await? {
        netlink.del_route(route).await?;
    }
    dataplane::remove_pins(&layout)?;
    eprintln!(
        "detached all programs and removed {}",
        args.pin_path.display()
    );
    Ok(())
}

/// The node name: `explicit` (`--node` or `NODENAME`), else the host name.
///
/// # Errors
///
/// No name given and `gethostname` failing.
pub fn node_name(explicit: Option<String>) -> anyhow::Result<String> {
    match explicit {
        Some(node) if !node.is_empty() => Ok(node),
        _ => hostname(),
    }
}

/// This machine's host name, the default node name.
fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(
        rc == 0,
        "gethostname failed: {}",
        std::io::Error::last_os_error()
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}
