//! `calico-loader dump routes|endpoints|counters|conntrack|rules|floating-ips`: the rows [`crate::dump`]
//! reads from the pins, printed as a table or JSON.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::output::{Output, print};
use crate::{
    dataplane::bpffs::{DEFAULT_PIN_PATH, PinLayout},
    dump,
};

// The arguments of `dump`.
#[derive(Args)]
pub struct DumpArgs {
    pub what: DumpWhat,
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: Output,
}

/// What `dump` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DumpWhat {
    Routes,
    Endpoints,
    Counters,
    /// Tracked connections.
    Conntrack,
    /// Rule ids in use, what they stand for, and their hits.
    Rules,
    /// Floating IPs (`ipNATs`) and the packets translated.
    FloatingIps,
}

/// `dump WHAT`, on stdout.
///
/// # Errors
///
/// The pins missing (no agent ran with this `--pin-path`) or unreadable.
pub fn run(args: &DumpArgs) -> anyhow::Result<()> {
    let layout = PinLayout::new(&args.pin_path);
    let context = || {
        format!(
            "reading the maps pinned under {} (is the agent running?)",
            args.pin_path.display()
        )
    };
    let output = args.output;
    match args.what {
        DumpWhat::Routes => print(
            output,
            &dump::routes(&layout).with_context(context)?,
            dump::routes_table,
        ),
        DumpWhat::Endpoints => print(
            output,
            &dump::endpoints(&layout).with_context(context)?,
            dump::endpoints_table,
        ),
        DumpWhat::Counters => print(
            output,
            &dump::counters(&layout).with_context(context)?,
            dump::counters_table,
        ),
        DumpWhat::Conntrack => print(
            output,
            &dump::conntrack(&layout).with_context(context)?,
            dump::conntrack_table,
        ),
        DumpWhat::Rules => print(
            output,
            &dump::rules(&layout).with_context(context)?,
            dump::rules_table,
        ),
        DumpWhat::FloatingIps => {
            let floating = dump::floating_ips(&layout).with_context(context)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&floating)?),
                Output::Table => print!("{}", dump::floating_ips_table(&floating)),
            }
            Ok(())
        }
    }
}
