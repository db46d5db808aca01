//! `calico-loader node status`: this node's BGP sessions, as `calicoctl node status` prints
//! them: whether the agent runs, then a table of IPv4 peers and one of IPv6 peers (peer
//! address, peer type, BIRD's state, since when, and the BGP state with its details), read
//! from BIRD through the control socket of the run directory.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};

use crate::{
    agent::{AGENT_PID_FILE, routing::DEFAULT_RUN_DIR},
    bgp::{ProtocolStatus, protocols_at, socket_path},
};

/// `node`'s subcommands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// This node's BGP sessions, as `calicoctl node status` prints them.
    Status(StatusArgs),
}

/// `node`'s arguments.
#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The agent's run directory (where BIRD's control socket is).
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// Runs a `node` subcommand.
///
/// # Errors
///
/// `status`: the agent is not running.
pub fn run(args: &NodeArgs) -> anyhow::Result<()> {
    match &args.command {
        NodeCommand::Status(args) => {
            print!("{}", status(&args.run_dir)?);
            Ok(())
        }
    }
}

/// Whether the agent whose run directory is `run_dir` runs: its pid file names a live
/// `calico-loader` process.
fn agent_running(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(run_dir.join(AGENT_PID_FILE)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "calico-loader")
}

/// The text `node status` prints.
///
/// # Errors
///
/// The agent is not running (`Calico process is not running.`, as calicoctl says it).
pub fn status(run_dir: &Path) -> anyhow::Result<String> {
    if !agent_running(run_dir) {
        anyhow::bail!("Calico process is not running.");
    }
    let mut out = String::from("Calico process is running.\n");
    match protocols_at(&socket_path(run_dir)) {
        Ok(protocols) => out.push_str(&peer_tables(&protocols)),
        Err(_) => out.push_str("\nThe BGP backend process (BIRD) is not running.\n"),
    }
    out.push('\n');
    Ok(out)
}

/// One row of a peer table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PeerRow {
    address: IpAddr,
    port: Option<u16>,
    peer_type: &'static str,
    state: String,
    since: String,
    info: String,
}

impl PeerRow {
    fn address_text(&self) -> String {
        match (self.address, self.port) {
            (address, None) => address.to_string(),
            (IpAddr::V4(a), Some(port)) => format!("{a}:{port}"),
            (IpAddr::V6(a), Some(port)) => format!("[{a}]:{port}"),
        }
    }
}

/// The peer of one of our BGP protocols, from its name (`Mesh_198_18_0_2`,
/// `Global_2001_db8__fe`, `Node_198_18_0_254_port_1790`).
fn peer_of(protocol: &ProtocolStatus) -> Option<PeerRow> {
    let kind = protocol.kind?;
    let rest = protocol
        .name
        .strip_prefix(kind.prefix())?
        .strip_prefix('_')?;
    let (address, port) = match rest.split_once("_port_") {
        Some((address, port)) => (address, Some(port.parse::<u16>().ok()?)),
        None => (rest, None),
    };
    let address = address
        .replace('_', ".")
        .parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| {
            address
                .replace('_', ":")
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
        })
        .ok()?;
    Some(PeerRow {
        address,
        port,
        peer_type: kind.description(),
        state: protocol.state.clone(),
        since: protocol.since.clone(),
        info: protocol.info.clone(),
    })
}

/// The IPv4 and IPv6 sections of `node status`.
fn peer_tables(protocols: &[ProtocolStatus]) -> String {
    let peers: Vec<PeerRow> = protocols.iter().filter_map(peer_of).collect();
    let mut out = String::new();
    for (version, is_family) in [
        (4, IpAddr::is_ipv4 as fn(&IpAddr) -> bool),
        (6, IpAddr::is_ipv6),
    ] {
        let rows: Vec<&PeerRow> = peers.iter().filter(|p| is_family(&p.address)).collect();
        let _ = writeln!(out, "\nIPv{version} BGP status");
        if rows.is_empty() {
            let _ = writeln!(out, "No IPv{version} peers found.");
            continue;
        }
        out.push_str(&table(
            ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            rows.iter().map(|p| {
                [
                    p.address_text(),
                    p.peer_type.to_owned(),
                    p.state.clone(),
                    p.since.clone(),
                    p.info.clone(),
                ]
            }),
        ));
    }
    out
}

/// A table in calicoctl's style: `+---+` rules, `| cell |` rows, the header between rules.
fn table<const N: usize>(header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule = {
        let mut line = String::from("+");
        for width in widths {
            line.push_str(&"-".repeat(width + 2));
            line.push('+');
        }
        line.push('\n');
        line
    };
    let line = |cells: &[String]| {
        let mut line = String::from("|");
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(line, " {cell:<width$} |");
        }
        line.push('\n');
        line
    };
    let mut out = rule.clone();
    out.push_str(&line(&header.map(str::to_owned)));
    out.push_str(&rule);
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::SessionKind;

    fn protocol(name: &str, state: &str, since: &str, info: &str) -> ProtocolStatus {
        ProtocolStatus {
            name: name.to_owned(),
            kind: SessionKind::of_protocol(name),
            state: state.to_owned(),
            since: since.to_owned(),
            info: info.to_owned(),
        }
    }

    #[test]
    fn peers_by_family_in_calicoctls_tables() {
        let protocols = [
            protocol("device1", "up", "03:00:00.000", ""),
            protocol("kernel4", "up", "03:00:00.000", ""),
            protocol("Mesh_198_19_0_2", "up", "03:00:01.000", "Established"),
            protocol(
                "Global_198_19_0_200_port_1790",
                "start",
                "03:00:01.000",
                "Active Socket: Connection refused",
            ),
            protocol("Node_2001_db8_0_ff__3", "up", "03:00:02.000", "Established"),
        ];
        let text = peer_tables(&protocols);
        let expected = "
IPv4 BGP status
+-------------------+-------------------+-------+--------------+-----------------------------------+
| PEER ADDRESS      | PEER TYPE         | STATE | SINCE        | INFO                              |
+-------------------+-------------------+-------+--------------+-----------------------------------+
| 198.19.0.2        | node-to-node mesh | up    | 03:00:01.000 | Established                       |
| 198.19.0.200:1790 | global            | start | 03:00:01.000 | Active Socket: Connection refused |
+-------------------+-------------------+-------+--------------+-----------------------------------+

IPv6 BGP status
+------------------+---------------+-------+--------------+-------------+
| PEER ADDRESS     | PEER TYPE     | STATE | SINCE        | INFO        |
+------------------+---------------+-------+--------------+-------------+
| 2001:db8:0:ff::3 | node specific | up    | 03:00:02.000 | Established |
+------------------+---------------+-------+--------------+-------------+
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn no_peers_of_a_family() {
        let text = peer_tables(&[protocol("Mesh_198_19_0_2", "up", "x", "Established")]);
        assert!(
            text.ends_with("\nIPv6 BGP status\nNo IPv6 peers found.\n"),
            "{text}"
        );
    }

    #[test]
    fn without_an_agent_calico_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let e = status(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "Calico process is not running.");
    }
}
