//! `calico-loader`: the calico-ebpf agent and its command line. The commands live in the
//! library ([`calico_loader::cli`]); this only parses the arguments, starts logging and runs the
//! command; started as `calico` or `calico-ipam`, it is the CNI plugin ([`calico_loader::cni`]).

use calico_loader::{
    cli::{self, Cli},
    cni, logging,
};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Started as `calico` or `calico-ipam` (by a container runtime): a CNI plugin call.
    if let Some(plugin) = std::env::args_os()
        .next()
        .and_then(|argv0| cni::Plugin::from_program_name(&argv0.to_string_lossy()))
    {
        std::process::exit(cni::run(plugin).await);
    }
    logging::init_tracing();
    cli::run(Cli::parse()).await
}
