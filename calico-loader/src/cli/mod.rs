//! The `calico-loader` command line: its clap tree, and one function per command group that
//! does the work. The commands are library functions so that every binary stays a thin
//! `main` (parse, init logging, [`run`]).
//!
//! - [`agent`]: `run` (the agent), `cleanup` (what an agent left) and `config show` (Felix's
//!   effective settings).
//! - [`resources`]: the calicoctl-style `apply|create|replace|delete|get`.
//! - [`ipam`]: `ipam show|assign|release|check`, Calico's IPAM.
//! - [`cni`]: `cni install`, the CNI plugin and its conflist.
//! - [`node`]: `node status`, this node's BGP sessions.
//! - [`dump`]: `dump routes|endpoints|counters|conntrack|rules`, the pinned maps.
//! - [`trace`]: `trace`, why a packet is allowed or dropped.
//! - [`events`]: `events`, dropped packets as they happen.
//! - [`microbench`]: `microbench`, the programs' cost through BPF_PROG_TEST_RUN.
//! - [`bird_bench`]: `bird-bench`, building and rendering BIRD's configuration for N nodes.
//! - [`output`]: the table-or-JSON choice of `dump`, `trace` and `events`.

pub mod agent;
pub mod bird_bench;
pub mod cni;
pub mod dump;
pub mod events;
pub mod ipam;
pub mod microbench;
pub mod node;
pub mod output;
pub mod resources;
pub mod trace;

use clap::{Parser, Subcommand};

/// `calico-loader`'s arguments.
#[derive(Parser)]
#[command(
    name = "calico-loader",
    version,
    about = "calico-ebpf agent: Calico's L3 workload networking on eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: load the dataplane and keep it in line with the datastore.
    Run(Box<agent::RunArgs>),
    /// Create or replace resources from a file (`-` for stdin): all of them, or none.
    Apply(resources::FileArgs),
    /// Create resources from a file; fails, storing nothing, if any exists.
    Create(resources::FileArgs),
    /// Replace resources from a file; fails, storing nothing, if any does not exist or its
    /// metadata.resourceVersion is stale.
    Replace(resources::FileArgs),
    /// Delete the resources of a file, or KIND NAME.
    Delete(resources::DeleteArgs),
    /// Show resources of a kind, or one by name.
    Get(resources::GetArgs),
    /// Calico IPAM: show the pools' use, assign and release addresses, check for leaks.
    Ipam(ipam::IpamArgs),
    /// The CNI plugin: `cni install` puts it (as `calico` and `calico-ipam`) and a conflist
    /// where container runtimes find them.
    Cni(cni::CniArgs),
    /// This node: `node status` shows its BGP sessions, as calicoctl does.
    Node(node::NodeArgs),
    /// Print what the pinned maps hold.
    Dump(dump::DumpArgs),
    /// Per-packet cost of the programs through BPF_PROG_TEST_RUN, for each route count (JSON
    /// lines on stdout). Used by `cargo xtask bench`.
    #[command(hide = true)]
    Microbench(microbench::MicrobenchArgs),
    /// Time to build one node's BGP model and render its BIRD configuration in a cluster of N
    /// nodes, with the mesh and with route reflectors, and BIRD's parse of it (JSON lines on
    /// stdout). Used by `cargo xtask bench`.
    #[command(hide = true)]
    BirdBench(bird_bench::BirdBenchArgs),
    /// Why a packet is allowed or dropped: runs the kernel's policy code on a packet built from
    /// the arguments (BPF_PROG_TEST_RUN), changing nothing. Against the running agent's maps,
    /// or, with --datastore, a "what if" for a directory of resources.
    Trace(trace::TraceArgs),
    /// Dropped packets as they happen: the endpoint, direction, packet, reason and, for policy,
    /// the tier, policy and rule that denied. Sampled and rate-limited in the kernel, which
    /// builds events only while this command runs.
    Events(events::EventsArgs),
    /// Felix's configuration: `config show` prints the effective settings and their sources.
    Config(agent::ConfigArgs),
    /// Detach every program, remove the pinned maps and links and the kernel routes the agent
    /// made, and stop BIRD (removing the routes it installed).
    Cleanup(agent::CleanupArgs),
}

/// Runs the command `cli` names.
///
/// # Errors
///
/// Whatever the command fails with; `main` prints it and exits with 1.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    use crate::datastore::WriteMode;
    match cli.command {
        Command::Run(args) => agent::run(*args).await,
        Command::Apply(args) => args.write(WriteMode::Apply).await,
        Command::Create(args) => args.write(WriteMode::Create).await,
        Command::Replace(args) => args.write(WriteMode::Replace).await,
        Command::Delete(args) => args.run().await,
        Command::Get(args) => args.run().await,
        Command::Ipam(args) => ipam::run(args).await,
        Command::Cni(args) => cni::run(&args),
        Command::Node(args) => node::run(&args),
        Command::Dump(args) => dump::run(&args),
        Command::Microbench(args) => microbench::run(&args),
        Command::BirdBench(args) => bird_bench::run(&args),
        Command::Trace(args) => trace::run(args),
        Command::Events(args) => events::run(args).await,
        Command::Config(args) => agent::config(args).await,
        Command::Cleanup(args) => agent::cleanup(&args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
