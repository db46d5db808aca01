//! `calico-loader`: the calico-ebpf agent and its command line. The commands live in the
//! library ([`calico_loader::cli`]); this only parses the arguments, starts logging and runs the
//! command.

use calico_loader::cli::{self, Cli};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    cli::run(Cli::parse()).await
}
