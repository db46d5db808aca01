//! `calico-loader`: the calico-ebpf agent and its command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use calico_loader::{
    agent::{self, AgentConfig},
    dataplane::{self, attach::AttachMode, bpffs::{DEFAULT_PIN_PATH, PinLayout}},
    inspect,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "calico-loader", version, about = "calico-ebpf agent: Calico's L3 workload networking on eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the dataplane and keep it in line with the datastore.
    Run {
        /// Directory of projectcalico.org/v3 resources (YAML), followed live.
        #[arg(long, env = "CALICO_DATASTORE_DIR", default_value = agent::DEFAULT_DATASTORE_DIR)]
        datastore: PathBuf,
        /// This node's name: the agent serves the endpoints whose spec.node matches.
        /// Defaults to the hostname.
        #[arg(long, env = "NODENAME")]
        node: Option<String>,
        /// Where maps and links are pinned (on a BPF filesystem).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Hook for packets from workloads: tc (default, measured faster on veth) or xdp.
        #[arg(long, default_value = "tc")]
        attach_mode: AttachMode,
        /// Detach programs and remove pins on exit. By default they stay, as in Calico, so
        /// traffic keeps flowing while the agent restarts.
        #[arg(long)]
        detach_on_exit: bool,
        /// Seconds between full resyncs (changes are applied as they happen regardless).
        #[arg(long, default_value_t = 10)]
        resync_interval: u64,
    },
    /// Print what the pinned maps hold.
    Dump {
        what: DumpWhat,
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
    },
    /// Per-packet cost of the programs through BPF_PROG_TEST_RUN, for each route count (JSON
    /// lines on stdout). Used by `cargo xtask bench`.
    #[command(hide = true)]
    Microbench {
        /// Route counts to measure with.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
        routes: Vec<u32>,
        /// Packets per measurement.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
    },
    /// Detach every program, and remove the pinned maps and links and the kernel routes the
    /// agent made.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpWhat {
    Routes,
    Endpoints,
    Counters,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(rc == 0, "gethostname failed: {}", std::io::Error::last_os_error());
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn print<T: serde::Serialize>(output: Output, rows: &[T], table: impl Fn(&[T]) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => print!("{}", table(rows)),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")),
        )
        .init();

    match Cli::parse().command {
        Command::Run { datastore, node, pin_path, attach_mode, detach_on_exit, resync_interval } => {
            let node = match node {
                Some(node) => node,
                None => hostname()?,
            };
            agent::run(AgentConfig {
                datastore,
                node,
                layout: PinLayout::new(pin_path),
                mode: attach_mode,
                detach_on_exit,
                resync_interval: Duration::from_secs(resync_interval.max(1)),
            })
            .await
        }
        Command::Dump { what, pin_path, output } => {
            let layout = PinLayout::new(&pin_path);
            let context = || format!("reading the maps pinned under {} (is the agent running?)", pin_path.display());
            match what {
                DumpWhat::Routes => print(output, &inspect::routes(&layout).with_context(context)?, inspect::routes_table),
                DumpWhat::Endpoints => print(output, &inspect::endpoints(&layout).with_context(context)?, inspect::endpoints_table),
                DumpWhat::Counters => print(output, &inspect::counters(&layout).with_context(context)?, inspect::counters_table),
            }
        }
        Command::Microbench { routes, packets } => {
            for count in routes {
                let result = calico_loader::microbench::run(count, packets)
                    .with_context(|| format!("microbenchmark with {count} routes"))?;
                println!("{}", serde_json::to_string(&result)?);
            }
            Ok(())
        }
        Command::Cleanup { pin_path } => {
            let layout = PinLayout::new(&pin_path);
            let netlink = dataplane::netlink::Netlink::connect()?;
            for route in netlink.our_routes().await? {
                netlink.del_route(route).await?;
            }
            dataplane::remove_pins(&layout)?;
            eprintln!("detached all programs and removed {}", pin_path.display());
            Ok(())
        }
    }
}
