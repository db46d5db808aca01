//! `calico-loader trace`: its arguments, turned into a [`crate::trace::TraceRequest`], and the
//! report printed as text or JSON.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::output::Output;
use crate::{
    dataplane::bpffs::{DEFAULT_PIN_PATH, PinLayout},
    trace,
};

// The arguments of `trace`.
#[derive(Args)]
pub struct TraceArgs {
    /// Directory of resources to compile instead of the running agent's maps.
    #[arg(long)]
    pub datastore: Option<PathBuf>,
    /// The WorkloadEndpoint whose policy to check.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        required_unless_present = "interface"
    )]
    pub endpoint: Option<String>,
    /// A data interface a HostEndpoint covers: trace a packet arriving through it (ingress) or
    /// leaving through it (egress), through the host endpoint's stages.
    #[arg(long, value_name = "IFACE", conflicts_with = "endpoint")]
    pub interface: Option<String>,
    /// ingress: into the workload, or arriving through the interface; egress: out of the
    /// workload, or leaving through the interface.
    #[arg(long)]
    pub direction: TraceDirection,
    /// tcp, udp, icmp, icmpv6, sctp, udplite or a number.
    #[arg(long)]
    pub protocol: String,
    /// Source address, with a port for TCP, UDP and SCTP.
    #[arg(long, value_name = "IP[:PORT]")]
    pub src: String,
    /// Destination address, with a port for TCP, UDP and SCTP.
    #[arg(long, value_name = "IP[:PORT]")]
    pub dst: String,
    #[arg(long, default_value_t = 8)]
    pub icmp_type: u8,
    #[arg(long, default_value_t = 0)]
    pub icmp_code: u8,
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: Output,
}

/// Which of the endpoint's policies to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceDirection {
    Ingress,
    Egress,
}

/// `trace`, on stdout.
///
/// # Errors
///
/// Invalid addresses or protocol, no such endpoint, or loading or running the trace program
/// failing.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let (src, sport) = trace::parse_address(&args.src).context("--src")?;
    let (dst, dport) = trace::parse_address(&args.dst).context("--dst")?;
    let (endpoint, target) = match (args.endpoint, args.interface) {
        (_, Some(interface)) => (interface, trace::TraceTarget::HostEndpoint),
        (Some(endpoint), None) => (endpoint, trace::TraceTarget::Workload),
        (None, None) => anyhow::bail!("--endpoint or --interface is required"),
    };
    let request = trace::TraceRequest {
        endpoint,
        target,
        ingress: args.direction == TraceDirection::Ingress,
        protocol: trace::parse_protocol(&args.protocol)?,
        src,
        sport,
        dst,
        dport,
        icmp_type: args.icmp_type,
        icmp_code: args.icmp_code,
    };
    let report = match args.datastore {
        Some(dir) => trace::offline(&dir, &request)?,
        None => trace::live(&PinLayout::new(&args.pin_path), &request)?,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", trace::text(&report)),
    }
    Ok(())
}
