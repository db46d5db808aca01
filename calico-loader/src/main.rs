//! `calico-loader`: the calico-ebpf agent and its command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use calico_loader::{
    agent::AgentConfig,
    cli::{self, DatastoreArgs, GetOutput},
    dataplane::{
        self,
        attach::AttachMode,
        bpffs::{DEFAULT_PIN_PATH, PinLayout},
    },
    datastore::WriteMode,
    inspect, trace,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "calico-loader",
    version,
    about = "calico-ebpf agent: Calico's L3 workload networking on eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the dataplane and keep it in line with the datastore.
    Run {
        /// The datastore to follow live: a local directory (default) or etcd v3.
        #[command(flatten)]
        datastore: DatastoreArgs,
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
        /// Entries of the conntrack table (Calico's default is 512k). When it is full, the
        /// least recently used entry makes room, so active flows keep working.
        #[arg(long, env = "FELIX_BPFMAPSIZECONNTRACK", default_value_t = <calico_ebpf_common::maps::Conntrack as calico_ebpf_common::maps::MapSpec>::DEF.max_entries)]
        conntrack_size: u32,
    },
    /// Create or replace resources from a file (`-` for stdin): all of them, or none.
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Create resources from a file; fails, storing nothing, if any exists.
    Create {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Replace resources from a file; fails, storing nothing, if any does not exist or its
    /// metadata.resourceVersion is stale.
    Replace {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Delete the resources of a file, or KIND NAME.
    Delete {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-", conflicts_with_all = ["kind", "name"])]
        file: Option<String>,
        /// Kind (like globalnetworkpolicy, gnp, workloadendpoints).
        #[arg(required_unless_present = "file")]
        kind: Option<String>,
        #[arg(required_unless_present = "file")]
        name: Option<String>,
        /// Namespace, for namespaced kinds (default: default).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
    /// Show resources of a kind, or one by name.
    Get {
        /// Kind (like globalnetworkpolicy, gnp, workloadendpoints).
        kind: String,
        name: Option<String>,
        /// Namespace, for namespaced kinds (default: default).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long = "output", default_value = "ps")]
        output: GetOutput,
        #[command(flatten)]
        datastore: DatastoreArgs,
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
        /// Route counts to measure with (with 10 rules).
        #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
        routes: Vec<u32>,
        /// Rule counts to measure with (with 1,000 routes).
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        rules: Vec<u32>,
        /// Numbers of other flows in the conntrack table to measure with (with 1,000 routes
        /// and 10 rules); the other runs have an empty table.
        #[arg(long, value_delimiter = ',')]
        conntrack: Vec<u32>,
        /// Packets per measurement.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
    },
    /// Why a packet is allowed or dropped: runs the kernel's policy code on a packet built from
    /// the arguments (BPF_PROG_TEST_RUN), changing nothing. Against the running agent's maps,
    /// or, with --datastore, a "what if" for a directory of resources.
    Trace {
        /// Directory of resources to compile instead of the running agent's maps.
        #[arg(long)]
        datastore: Option<PathBuf>,
        /// The WorkloadEndpoint whose policy to check.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        endpoint: String,
        #[arg(long)]
        direction: TraceDirection,
        /// tcp, udp, icmp, icmpv6, sctp, udplite or a number.
        #[arg(long)]
        protocol: String,
        /// Source address, with a port for TCP, UDP and SCTP.
        #[arg(long, value_name = "IP[:PORT]")]
        src: String,
        /// Destination address, with a port for TCP, UDP and SCTP.
        #[arg(long, value_name = "IP[:PORT]")]
        dst: String,
        #[arg(long, default_value_t = 8)]
        icmp_type: u8,
        #[arg(long, default_value_t = 0)]
        icmp_code: u8,
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
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
    /// Tracked connections.
    Conntrack,
    /// Rule ids in use, what they stand for, and their hits.
    Rules,
}

#[derive(Clone, Copy, ValueEnum)]
enum TraceDirection {
    Ingress,
    Egress,
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
    anyhow::ensure!(
        rc == 0,
        "gethostname failed: {}",
        std::io::Error::last_os_error()
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn print<T: serde::Serialize>(
    output: Output,
    rows: &[T],
    table: impl Fn(&[T]) -> String,
) -> anyhow::Result<()> {
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
            }),
        )
        .init();

    match Cli::parse().command {
        Command::Run {
            datastore,
            node,
            pin_path,
            attach_mode,
            detach_on_exit,
            resync_interval,
            conntrack_size,
        } => {
            let node = match node {
                Some(node) => node,
                None => hostname()?,
            };
            calico_loader::agent::run(AgentConfig {
                datastore: datastore.config(),
                node,
                layout: PinLayout::new(pin_path),
                mode: attach_mode,
                detach_on_exit,
                resync_interval: Duration::from_secs(resync_interval.max(1)),
                conntrack_entries: conntrack_size.max(1),
            })
            .await
        }
        Command::Apply { file, datastore } => {
            cli::write(&datastore.config(), WriteMode::Apply, &file).await
        }
        Command::Create { file, datastore } => {
            cli::write(&datastore.config(), WriteMode::Create, &file).await
        }
        Command::Replace { file, datastore } => {
            cli::write(&datastore.config(), WriteMode::Replace, &file).await
        }
        Command::Delete {
            file,
            kind,
            name,
            namespace,
            datastore,
        } => match (file, kind, name) {
            (Some(file), _, _) => cli::delete_file(&datastore.config(), &file).await,
            (None, Some(kind), Some(name)) => {
                cli::delete(&datastore.config(), &kind, &name, namespace.as_deref()).await
            }
            _ => anyhow::bail!("delete needs -f FILE, or KIND and NAME"),
        },
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
            datastore,
        } => {
            cli::get(
                &datastore.config(),
                &kind,
                name.as_deref(),
                namespace.as_deref(),
                all_namespaces,
                output,
            )
            .await
        }
        Command::Dump {
            what,
            pin_path,
            output,
        } => {
            let layout = PinLayout::new(&pin_path);
            let context = || {
                format!(
                    "reading the maps pinned under {} (is the agent running?)",
                    pin_path.display()
                )
            };
            match what {
                DumpWhat::Routes => print(
                    output,
                    &inspect::routes(&layout).with_context(context)?,
                    inspect::routes_table,
                ),
                DumpWhat::Endpoints => print(
                    output,
                    &inspect::endpoints(&layout).with_context(context)?,
                    inspect::endpoints_table,
                ),
                DumpWhat::Counters => print(
                    output,
                    &inspect::counters(&layout).with_context(context)?,
                    inspect::counters_table,
                ),
                DumpWhat::Conntrack => print(
                    output,
                    &inspect::conntrack(&layout).with_context(context)?,
                    inspect::conntrack_table,
                ),
                DumpWhat::Rules => print(
                    output,
                    &inspect::rules(&layout).with_context(context)?,
                    inspect::rules_table,
                ),
            }
        }
        Command::Microbench {
            routes,
            rules,
            conntrack,
            packets,
        } => {
            use calico_loader::microbench::{MicrobenchSetup, run};
            let setup = |routes, rules, conntrack_entries| MicrobenchSetup {
                routes,
                rules,
                conntrack_entries,
            };
            let runs = routes
                .iter()
                .map(|&r| setup(r, 10, 0))
                .chain(rules.iter().map(|&n| setup(1000, n, 0)))
                .chain(conntrack.iter().map(|&c| setup(1000, 10, c)));
            for setup in runs {
                let result = run(setup, packets)
                    .with_context(|| format!("microbenchmark with {setup:?}"))?;
                println!("{}", serde_json::to_string(&result)?);
            }
            Ok(())
        }
        Command::Trace {
            datastore,
            endpoint,
            direction,
            protocol,
            src,
            dst,
            icmp_type,
            icmp_code,
            pin_path,
            output,
        } => {
            let (src, sport) = trace::parse_address(&src).context("--src")?;
            let (dst, dport) = trace::parse_address(&dst).context("--dst")?;
            let request = trace::TraceRequest {
                endpoint,
                ingress: matches!(direction, TraceDirection::Ingress),
                protocol: trace::parse_protocol(&protocol)?,
                src,
                sport,
                dst,
                dport,
                icmp_type,
                icmp_code,
            };
            let report = match datastore {
                Some(dir) => trace::offline(&dir, &request)?,
                None => trace::live(&PinLayout::new(&pin_path), &request)?,
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", trace::text(&report)),
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
