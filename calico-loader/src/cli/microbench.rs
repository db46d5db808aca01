//! `calico-loader microbench` (hidden; `cargo xtask bench` runs it): one
//! [`crate::microbench::run`] per route count, rule count and conntrack fill, each result a JSON
//! line on stdout.

use anyhow::Context as _;
use clap::Args;

use crate::microbench::{self, MicrobenchSetup};

// The arguments of `microbench`.
#[derive(Args)]
pub struct MicrobenchArgs {
    /// Route counts to measure with (with 10 rules).
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    pub routes: Vec<u32>,
    /// Rule counts to measure with (with 1,000 routes).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    pub rules: Vec<u32>,
    /// Numbers of other flows in the conntrack table to measure with (with 1,000 routes
    /// and 10 rules); the other runs have an empty table.
    #[arg(long, value_delimiter = ',')]
    pub conntrack: Vec<u32>,
    /// Packets per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub packets: u64,
}

/// `microbench`: every measurement in turn.
///
/// # Errors
///
/// The first measurement that fails (loading the programs needs root).
pub fn run(args: &MicrobenchArgs) -> anyhow::Result<()> {
    let setup = |routes, rules, conntrack_entries| MicrobenchSetup {
        routes,
        rules,
        conntrack_entries,
    };
    let runs = args
        .routes
        .iter()
        .map(|&r| setup(r, 10, 0))
        .chain(args.rules.iter().map(|&n| setup(1000, n, 0)))
        .chain(args.conntrack.iter().map(|&c| setup(1000, 10, c)));
    for setup in runs {
        let result = microbench::run(setup, args.packets)
            .with_context(|| format!("microbenchmark with {setup:?}"))?;
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(())
}
