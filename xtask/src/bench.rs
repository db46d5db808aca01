//! `cargo xtask bench`: the dataplane against Linux forwarding, iptables and
//! nftables.
//!
//! One topology (a host namespace and two workloads, `gen` and `sink`) is
//! built once; then, round after round, each setup is activated alone, in
//! turn, and measured: 64-byte UDP packets per second (trafgen), TCP
//! throughput (iperf3), TCP request/response latency, and for our programs
//! their cost per packet from `kernel.bpf_stats_enabled`. Our setups run
//! with 0 to 10,000 policy rules (`ours-<hook>-N`). After the rounds, the
//! control plane is measured on a running agent: the time to put 10,000
//! rules in force, the time from a new endpoint to its first packet, and
//! the agent's memory and its maps'. Last, the programs alone
//! (`calico-loader microbench`). The cross-host setups (`x-*`) run in the same
//! rounds on a second topology: gen on one host, the sink on another, through
//! the fabric between them.
//!
//! Network safety: everything happens in network namespaces created here
//! (`cbench-*-<pid>`), with benchmarking and documentation addresses only
//! (`198.18.0.0/15`, `2001:db8::/32`). The veth pairs are created inside those
//! namespaces and iptables and nftables rules only go into the host
//! namespace's own tables. Every namespace, pin, rule, sysctl and file is removed or restored
//! at the end, on failure and on Ctrl-C (RAII guards).
//!
//! - `loader`: the endpoints' names and resources, `calico-loader dump`.
//! - `topology`: namespaces, routes, iptables and nftables rules, the agent,
//!   pins, sysctls.
//! - `policy`: our setups' policies, their check with `calico-loader trace`,
//!   the deciding rule's hits.
//! - `measure`: trafgen, iperf3, the ping-pong, counters and bpf_stats.
//! - `control`: the control-plane figures.
//! - `cross_host`: the cross-host setups' topology (two hosts, a workload on each, the
//!   fabric) and their two agents.
//! - `bgp`: routing between hosts on a cluster of two (convergence, a top-of-rack router's
//!   prefixes at scale) and BIRD's configuration for a large cluster.
//! - `report`: statistics, the tables, the goal checks, the JSON file,
//!   machine information.
//! - `hosting`: the VM and container phases, each on its own host namespace and agent
//!   (`phase_agent`): tap to tap (`taps`), container start with podman (`containers`), attach
//!   latency and memory at scale (`attach`).

mod active;
mod attach;
mod bgp;
mod containers;
mod control;
mod cross_host;
mod frames;
mod hosting;
mod livegen;
mod loader;
mod many_endpoints;
mod markdown;
mod measure;
mod phase_agent;
mod policy;
mod report;
mod restart;
mod taps;
mod topology;
mod under_traffic;
mod upgrade;

use std::{
    fmt::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use testbed::{Cmd, TempDir, output, signals};

use crate::{
    paths, root, setup,
    topology::{self as shared, AttachMode, NetnsPair, PinGuard},
};

use self::{
    active::Active,
    control::ControlPlane,
    measure::{Generator, PpsResult, RrResult, TcpResult},
    policy::PolicyCheck,
    topology::{IperfServer, Topology, UdpSink},
};

/// iptables rule counts measured by a full run, and by `--quick`.
const IPTABLES_RULES: &[u32] = &[0, 100, 1_000, 10_000];
const IPTABLES_RULES_QUICK: &[u32] = &[0, 1_000];
/// nftables rule (or set element) counts: the same as iptables in a full
/// run; `--quick` only measures 1,000, as a list and as a set.
const NFT_RULES: &[u32] = IPTABLES_RULES;
const NFT_RULES_QUICK: &[u32] = &[1_000];
/// Policy rule counts of our setups, in each attach mode.
const OURS_RULES: &[u32] = IPTABLES_RULES;
const OURS_RULES_QUICK: &[u32] = &[0, 1_000];
/// Rules the control-plane phase writes into the running agent's datastore.
const CONTROL_PLANE_RULES: u32 = 10_000;
const CONTROL_PLANE_RULES_QUICK: u32 = 1_000;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// One round with short durations (under 2 minutes), for CI. Fails if any
    /// setup moved no traffic, or if in our setups the expected policy rule did
    /// not decide; asserts nothing about speed.
    #[arg(long)]
    pub quick: bool,

    /// Rounds; each round measures every setup once, in turn [default: 3, or 1
    /// with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,

    /// Seconds of each packet-rate and TCP measurement [default: 5, or 1 with
    /// --quick].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration: Option<u64>,

    /// Where to write every figure as JSON [default:
    /// target/bench/bench-<timestamp>.json].
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Only these setups, by name, comma-separated (e.g. `linux,ours-tc-0`),
    /// in the usual order; goal checks that miss a setup are not evaluated.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub setups: Vec<String>,

    /// Only the BGP phase (convergence, scale, BIRD's configuration): no dataplane setups, no
    /// control-plane phase, no microbenchmark.
    #[arg(long)]
    pub bgp_only: bool,
    /// Only the VM and container phases (tap to tap, container start, attach at scale, many
    /// endpoints at once).
    #[arg(long)]
    pub hosting_only: bool,
    /// Only the many-endpoints phase of the hosting phases (all endpoints at once, then the
    /// agent's CPU with nothing changing).
    #[arg(long)]
    pub many_endpoints_only: bool,
    /// Endpoints of the many-endpoints phase [default: 5000, or 50 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub many_endpoints: Option<u32>,
    /// Only the restart phase: packets lost across agent SIGKILLs and restarts (UDP, ping,
    /// TCP) and the restart time.
    #[arg(long)]
    pub restart_only: bool,
    /// Only the upgrade phase: packets lost when the agent of an earlier commit (built once,
    /// in target/upgrade-from/) is stopped and this one started on its pins, migrating the
    /// maps whose layout changed.
    #[arg(long)]
    pub upgrade_only: bool,
    /// The commit the upgrade phase upgrades from.
    #[arg(long, value_name = "COMMIT", default_value = upgrade::DEFAULT_FROM)]
    pub upgrade_from: String,
}

impl BenchArgs {
    /// `cargo xtask bench --quick`.
    pub fn quick() -> Self {
        Self {
            quick: true,
            rounds: None,
            duration: None,
            json: None,
            setups: Vec::new(),
            bgp_only: false,
            hosting_only: false,
            many_endpoints_only: false,
            many_endpoints: None,
            restart_only: false,
            upgrade_only: false,
            upgrade_from: upgrade::DEFAULT_FROM.to_owned(),
        }
    }
}

/// Internal: the request/response measurement, run through sudo when not
/// root (entering a namespace needs root).
#[derive(clap::Args, Debug)]
pub struct RrArgs {
    #[command(flatten)]
    pub pair: NetnsPair,
    #[arg(long)]
    pub millis: u64,
    #[arg(long)]
    pub cpu: usize,
}

/// Prints the request/response result as JSON on stdout.
pub fn rr(args: &RrArgs) -> Result<()> {
    let result = measure::ping_pong(&args.pair, Duration::from_millis(args.millis), args.cpu)?;
    println!("{}", serde_json::to_string(&result.to_json())?);
    Ok(())
}

pub use self::bgp::BgpClusterArgs;

/// Internal: the BGP phase's cluster, run as root.
pub fn bgp_cluster(args: &BgpClusterArgs) -> Result<()> {
    bgp::cluster_phase(args)
}

/// Internal: the sink workload's UDP socket, run inside its namespace.
#[derive(clap::Args, Debug)]
pub struct UdpSinkArgs {
    #[arg(long)]
    pub port: u16,
}

/// Binds `0.0.0.0:PORT` with the smallest receive buffer and never reads: the
/// generated packets reach a listening socket (and are dropped there once its
/// buffer is full), as at a workload that listens, instead of each one making
/// the stack attempt an ICMP port unreachable. Runs until killed.
pub fn udp_sink(args: &UdpSinkArgs) -> Result<()> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, args.port))
        .with_context(|| format!("cannot bind UDP port {}", args.port))?;
    let size: libc::c_int = 0; // the kernel's minimum
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set SO_RCVBUF");
    }
    println!("listening on UDP port {}, not reading", args.port);
    loop {
        signals::sleep(Duration::from_secs(1))?;
    }
}

/// Internal: the live-frames generator, run inside gen's namespace.
#[derive(clap::Args, Debug)]
pub struct LiveGenArgs {
    /// The interface the frames leave by.
    #[arg(long)]
    pub ifname: String,
    /// The CPU to run on.
    #[arg(long)]
    pub cpu: usize,
    /// Stop after this long (or on SIGTERM/SIGINT).
    #[arg(long)]
    pub seconds: f64,
    /// The frame, in hex.
    #[arg(long)]
    pub frame: String,
}

/// Sends the frame until told to stop, then prints `{"frames":N,"seconds":S}`.
pub fn live_gen(args: &LiveGenArgs) -> Result<()> {
    signals::catch_signals(&[libc::SIGTERM]);
    let frame = (0..args.frame.len())
        .step_by(2)
        .map(|i| {
            args.frame
                .get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .context("--frame must be hex bytes")
        })
        .collect::<Result<Vec<u8>>>()?;
    let name = std::ffi::CString::new(args.ifname.as_str()).context("interface name")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {} in this namespace", args.ifname);
    }
    measure::pin_current_thread(args.cpu)?;
    println!(
        "sending from {} (ifindex {ifindex}) on CPU {}",
        args.ifname, args.cpu
    );
    let (frames, took) = livegen::generate(&frame, ifindex, Duration::from_secs_f64(args.seconds))?;
    println!(
        "{}",
        serde_json::json!({"frames": frames, "seconds": took.as_secs_f64()})
    );
    Ok(())
}

/// One way of forwarding between the workloads; exactly one is active at a
/// time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// (a) Linux forwarding, no BPF, no rules.
    Linux,
    /// (b) Linux forwarding through a per-endpoint chain of this many
    /// non-matching rules, then ACCEPT.
    Iptables(u32),
    /// (c) Linux forwarding through a per-endpoint nftables chain of this
    /// many non-matching rules, then accept.
    NftList(u32),
    /// (c) Linux forwarding through a per-endpoint nftables chain whose one
    /// rule matches a set of this many addresses (none the traffic's), then
    /// accept.
    NftSet(u32),
    /// (d) Our agent, programs on this hook, with this many ingress rules for
    /// the sink (the last one allowing the generator; none: the allow-all
    /// profile decides).
    Ours(AttachMode, u32),
    /// Across two hosts: Linux forwarding on both.
    CrossLinux,
    /// Across two hosts: our agent on each, programs on this hook (workload and data
    /// interfaces), no policy.
    CrossOurs(AttachMode),
}

impl Setup {
    /// Whether the setup runs on the two-host topology.
    pub fn is_cross_host(self) -> bool {
        matches!(self, Self::CrossLinux | Self::CrossOurs(_))
    }

    /// The setup its `× linux` ratios divide by: Linux forwarding on the same topology.
    pub fn baseline(self) -> Self {
        if self.is_cross_host() {
            Self::CrossLinux
        } else {
            Self::Linux
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linux => f.write_str("linux"),
            Self::Iptables(rules) => write!(f, "iptables-{rules}"),
            Self::NftList(rules) => write!(f, "nft-list-{rules}"),
            Self::NftSet(rules) => write!(f, "nft-set-{rules}"),
            Self::Ours(hook, rules) => write!(f, "ours-{}-{rules}", hook.as_str()),
            Self::CrossLinux => f.write_str("x-linux"),
            Self::CrossOurs(hook) => write!(f, "x-ours-{}", hook.as_str()),
        }
    }
}

impl serde::Serialize for Setup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The veths' offloads, as the output states them.
pub const OFFLOADS: &str = "GRO is on for the workloads' eth0 in every setup, and on the host \
     side of gen's veth while the live-frames generator runs (otherwise the veth default, off): \
     frames sent by XDP (the live-frames generator, our XDP redirects) are only received by a \
     veth with NAPI. Transmit offloads (checksum, TSO) keep the veth default, on, except in \
     ours-xdp-N, which sets `tx off` on both workloads: an XDP-redirected frame loses the skb's \
     pending checksum, so XDP mode needs workloads that compute their own checksums.";

/// What a run does, resolved from the arguments.
pub struct Plan {
    pub quick: bool,
    pub rounds: u32,
    /// Each packet-rate (after the warm-up) and TCP measurement.
    pub duration: Duration,
    /// trafgen runs this long before the packet-rate interval starts.
    pub warmup: Duration,
    /// The request/response measurement.
    pub latency: Duration,
    pub setups: Vec<Setup>,
    /// Rules of the control-plane phase.
    pub control_plane_rules: u32,
    pub json: PathBuf,
    pub cpus: usize,
    /// The CPU trafgen is pinned to.
    pub generator_cpu: usize,
    /// The CPU both ends of the request/response ping-pong are pinned to.
    pub latency_cpu: usize,
    pub started: SystemTime,
    pub command: String,
    /// Only the BGP phase.
    pub bgp_only: bool,
    pub bgp: bgp::BgpPlan,
    /// The commit the upgrade phase upgrades from.
    pub upgrade_from: String,
    /// Endpoints of the many-endpoints phase.
    pub many_endpoints: u32,
}

impl Plan {
    fn new(args: &BenchArgs, started: SystemTime) -> Result<Self> {
        let quick = args.quick;
        let (iptables_rules, nft_rules, ours_rules) = if quick {
            (IPTABLES_RULES_QUICK, NFT_RULES_QUICK, OURS_RULES_QUICK)
        } else {
            (IPTABLES_RULES, NFT_RULES, OURS_RULES)
        };
        let mut setups = vec![Setup::Linux];
        setups.extend(iptables_rules.iter().map(|&n| Setup::Iptables(n)));
        setups.extend(nft_rules.iter().map(|&n| Setup::NftList(n)));
        setups.extend(nft_rules.iter().map(|&n| Setup::NftSet(n)));
        for hook in [AttachMode::Tc, AttachMode::Xdp] {
            setups.extend(ours_rules.iter().map(|&n| Setup::Ours(hook, n)));
        }
        setups.extend(if quick {
            &cross_host::SETUPS_QUICK[..]
        } else {
            &cross_host::SETUPS[..]
        });
        if !args.setups.is_empty() {
            for name in &args.setups {
                if !setups.iter().any(|setup| setup.to_string() == *name) {
                    let known: Vec<String> = setups.iter().map(ToString::to_string).collect();
                    bail!(
                        "--setups: no setup named {name:?} in this run; known: {}",
                        known.join(", ")
                    );
                }
            }
            setups.retain(|setup| args.setups.contains(&setup.to_string()));
        }

        let cpus = std::thread::available_parallelism()
            .context("cannot count the CPUs")?
            .get();
        let json = match &args.json {
            Some(path) => path.clone(),
            None => paths::target_dir()
                .join("bench")
                .join(format!("bench-{}.json", report::timestamp(started).compact)),
        };
        let mut command = String::from("cargo xtask bench");
        if quick {
            command.push_str(" --quick");
        }
        if let Some(rounds) = args.rounds {
            let _ = write!(command, " --rounds {rounds}");
        }
        if let Some(duration) = args.duration {
            let _ = write!(command, " --duration {duration}");
        }
        if !args.setups.is_empty() {
            let _ = write!(command, " --setups {}", args.setups.join(","));
        }
        if args.bgp_only {
            command.push_str(" --bgp-only");
        }
        if args.upgrade_from != upgrade::DEFAULT_FROM {
            let _ = write!(command, " --upgrade-from {}", args.upgrade_from);
        }
        if let Some(count) = args.many_endpoints {
            let _ = write!(command, " --many-endpoints {count}");
        }
        if let Some(json) = &args.json {
            let _ = write!(
                command,
                " --json {}",
                testbed::cmd::shell_quote(&json.to_string_lossy())
            );
        }
        Ok(Self {
            quick,
            rounds: args.rounds.unwrap_or(if quick { 1 } else { 3 }),
            duration: Duration::from_secs(args.duration.unwrap_or(if quick { 1 } else { 5 })),
            warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
            latency: Duration::from_secs(if quick { 1 } else { 2 }),
            setups,
            control_plane_rules: if quick {
                CONTROL_PLANE_RULES_QUICK
            } else {
                CONTROL_PLANE_RULES
            },
            json,
            cpus,
            // trafgen pins its worker itself; CPU 1 when there is one.
            generator_cpu: usize::from(cpus > 1),
            latency_cpu: 0,
            started,
            command,
            bgp_only: args.bgp_only,
            bgp: bgp::BgpPlan::new(quick),
            upgrade_from: args.upgrade_from.clone(),
            many_endpoints: args.many_endpoints.unwrap_or(if quick {
                hosting::MANY_ENDPOINTS_QUICK
            } else {
                hosting::MANY_ENDPOINTS
            }),
        })
    }

    /// How the CPUs are shared, for the output.
    pub fn cpu_split(&self) -> String {
        let g = self.generator_cpu;
        format!(
            "{} CPUs: the generator pinned to CPU {g} (trafgen by its own `cpu({g})` \
             configuration, the live-frames generator by sched_setaffinity), everything else \
             (iperf3, the agent, softirqs) unpinned. The veth receive path runs in the softirq \
             of the sending CPU (trafgen's send, or the end of each live-frames batch), so \
             forwarding and delivery of the generated flow share CPU {g} with the generator. \
             Both ends of the request/response ping-pong are pinned to CPU {}, so its latency \
             is the path through the stacks, not cross-CPU wake-ups.",
            self.cpus, self.latency_cpu
        )
    }
}

/// The figures of one setup in one round.
#[derive(serde::Serialize)]
pub struct RoundResult {
    pub round: u32,
    pub setup: Setup,
    /// 64-byte UDP from trafgen.
    pub pps: PpsResult,
    /// 64-byte UDP from the live-frames generator.
    pub live: PpsResult,
    pub tcp: TcpResult,
    pub rr: RrResult,
    /// Our setups: the policy in force (trace) and the deciding rule's hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyCheck>,
}

/// What every measurement needs to know.
pub struct Ctx<'a> {
    pub plan: &'a Plan,
    pub topo: &'a Topology,
    pub loader: &'a Path,
    /// The pins of the agent on gen's host (the only agent on one host).
    pub pin_path: &'a Path,
    /// The pins of the agent on the sink's host, when it is another one.
    pub sink_pin_path: Option<&'a Path>,
    pub datastore: &'a Path,
    pub scratch: &'a Path,
    pub trafgen_config: &'a Path,
    /// `kernel.bpf_stats_enabled`: on, except while packet rates are counted.
    pub bpf_stats: &'a topology::Sysctl,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    // SIGINT is already caught (see main); also clean up when told to stop.
    signals::catch_signals(&[libc::SIGTERM, libc::SIGHUP]);
    let clock = Instant::now();
    let plan = Plan::new(args, SystemTime::now())?;

    output::step(format!(
        "calico-ebpf bench{}",
        if plan.quick { " (quick)" } else { "" }
    ));
    output::explain(format!(
        "Setups, alternated within each of {} round(s): {}.\n\
         Measures per setup and round: 64-byte UDP packets/s at the sink (trafgen, {}s),\n\
         TCP throughput (iperf3, {}s), TCP request/response latency ({}s), and for our\n\
         programs their cost per packet (kernel.bpf_stats_enabled).\n\
         Then the control plane ({} rules) and the programs alone (microbench).",
        plan.rounds,
        plan.setups
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        plan.duration.as_secs(),
        plan.duration.as_secs(),
        plan.latency.as_secs(),
        plan.control_plane_rules,
    ));
    root::ensure_can_become_root("the bench (namespaces, eBPF, iptables, nftables)")?;

    // The kernel programs are always built optimised (aya-build uses --release); only the
    // agent's own build differs. A full run measures an optimised agent; --quick, which only
    // checks that every setup moves traffic, reuses the debug build the tests just made.
    let release = !plan.quick;
    output::step(if release {
        "Setup and release build"
    } else {
        "Setup and build"
    });
    setup::setup()?;
    let mut build = Cmd::new("cargo").args(["build", "-p", "calico-loader"]);
    if release {
        build = build.arg("--release");
    }
    build.current_dir(paths::workspace_root()).run()?;
    let loader = paths::built_binary("calico-loader", release);
    if !loader.is_file() {
        bail!("{} is missing after the build", loader.display());
    }
    let machine = report::machine_info(&loader)?;

    if plan.bgp_only {
        let bgp = bgp::measure(&plan.bgp, &loader, release)?;
        output::step("Results");
        bgp::print(&bgp);
        report::write_json(
            &plan,
            &machine,
            &report::Figures {
                results: &[],
                summary: &[],
                goals: &[],
                control_plane: None,
                microbench: &[],
                bgp: Some(&bgp),
            },
            clock.elapsed(),
        )?;
        output::info(format!(
            "the bench took {:.0}s; every figure is in {}",
            clock.elapsed().as_secs_f64(),
            plan.json.display()
        ));
        return Ok(());
    }

    let pid = std::process::id();
    if args.hosting_only {
        return hosting::run_alone(&plan, &machine, &loader, pid, release, clock);
    }
    if args.many_endpoints_only {
        return hosting::run_many_endpoints_alone(&plan, &machine, &loader, pid, release, clock);
    }
    if args.restart_only {
        return restart::run_alone(&plan, &machine, &loader, pid, release, clock);
    }
    if args.upgrade_only {
        return upgrade::run_alone(&plan, &machine, &loader, pid, release, clock);
    }
    let outcome = run(&plan, &loader, pid);
    // VMs and containers, each on its own host namespace and agent.
    let hosting = outcome
        .as_ref()
        .ok()
        .map(|_| hosting::measure(&plan, &loader, pid, release));
    // Agent restarts under traffic, on their own host namespace and agent.
    let restarts = outcome
        .as_ref()
        .ok()
        .map(|_| restart::measure(plan.quick, &loader, pid, release));
    // Upgrades from an earlier commit, on their own host namespace; not in --quick (CI): the
    // earlier agent's first build takes minutes.
    let upgrades = outcome
        .as_ref()
        .ok()
        .filter(|_| !plan.quick)
        .map(|_| upgrade::measure(&plan.upgrade_from, &loader, pid, release));
    let pins = shared::pin_path("bench", pid);
    shared::check_nothing_left("cbench-", pid, Some(&pins));
    for pins in cross_host::pin_paths(pid) {
        shared::check_nothing_left("cbench-", pid, Some(&pins));
    }
    let (results, control_plane) = outcome?;
    let hosting = hosting.context("no VM and container phases")??;
    let restarts = restarts.context("no restart phase")??;
    let upgrades = upgrades.transpose()?;

    let microbench = microbench(&plan, &loader)?;
    // A failure here still leaves the figures above printed and written.
    let bgp = bgp::measure(&plan.bgp, &loader, release);

    let summary = report::summarise(&plan, &results);
    let goals = report::goal_checks(&plan, &results);
    report::print_table(&plan, &machine, &summary);
    report::print_policy(&results);
    report::print_cross_host(&results, &summary);
    report::print_goal_checks(&goals);
    report::print_control_plane(&control_plane);
    report::print_microbench(&microbench);
    if let Ok(bgp) = &bgp {
        bgp::print(bgp);
    }
    hosting::print(&hosting);
    restart::print(&restarts);
    if let Some(upgrades) = &upgrades {
        upgrade::print(upgrades);
    }
    report::write_json(
        &plan,
        &machine,
        &report::Figures {
            results: &results,
            summary: &summary,
            goals: &goals,
            control_plane: Some(&control_plane),
            microbench: &microbench,
            bgp: bgp.as_ref().ok(),
        },
        clock.elapsed(),
    )?;
    hosting::add_to_json(&plan.json, &hosting)?;
    restart::add_to_json(&plan.json, &restarts)?;
    if let Some(upgrades) = &upgrades {
        upgrade::add_to_json(&plan.json, upgrades)?;
    }
    output::info(format!(
        "the bench took {:.0}s; every figure of every round is in {}",
        clock.elapsed().as_secs_f64(),
        plan.json.display()
    ));
    report::check_traffic(&results)?;
    bgp.map(drop).context("the BGP phase")
}

/// The programs' own per-packet cost through BPF_PROG_TEST_RUN (`calico-loader microbench`),
/// with 1k and 100k routes (10 rules each), and with 1k and 10k rules (1k routes); --quick only
/// checks that it runs, with few packets, with 1k routes and 10 then 1k rules. (Each
/// `--routes` count runs with 10 rules and each `--rules` count with 1k routes, so `--rules 10`
/// would repeat the first row.) The conntrack-size row has 1M other flows in the table (the
/// first row has none); --quick fills 10k.
fn microbench(plan: &Plan, loader: &Path) -> Result<Vec<serde_json::Value>> {
    output::step("Microbenchmark: the programs through BPF_PROG_TEST_RUN");
    let (routes, rules, conntrack, packets) = if plan.quick {
        ("1000", "1000", "10000", "2000")
    } else {
        ("1000,100000", "1000,10000", "1000000", "1000000")
    };
    let output = Cmd::new(loader)
        .args([
            "microbench",
            "--routes",
            routes,
            "--rules",
            rules,
            "--conntrack",
            conntrack,
            "--packets",
            packets,
        ])
        .privileged()
        .output()?;
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("microbench output {line:?}"))
        })
        .collect()
}

/// Builds everything, runs the rounds and the control-plane phase, tears
/// everything down (guards, in reverse order of creation).
fn run(plan: &Plan, loader: &Path, pid: u32) -> Result<(Vec<RoundResult>, ControlPlane)> {
    output::step("Preparing");
    root::mount_bpffs()?;
    let scratch = TempDir::create(std::env::temp_dir().join(format!("calico-bench-{pid}")))?;
    let bpf_stats = topology::Sysctl::set(
        "kernel.bpf_stats_enabled",
        "1",
        "run_time_ns and run_cnt per program; off while packet rates are counted",
    )?;
    let topo = Topology::create(pid)?;
    let datastore = scratch.path().join("datastore");
    topology::write_datastore(&topo, &datastore)?;
    let trafgen_config = frames::write_trafgen_config(scratch.path(), &topo, plan.generator_cpu)?;
    let _iperf = IperfServer::start(&topo)?;
    let _udp_sink = UdpSink::start(&topo)?;
    let pin_path = shared::pin_path("bench", pid);
    let _pins = PinGuard::new(loader, &topo.host.path(), &pin_path);

    let ctx = Ctx {
        plan,
        topo: &topo,
        loader,
        pin_path: &pin_path,
        sink_pin_path: None,
        datastore: &datastore,
        scratch: scratch.path(),
        trafgen_config: &trafgen_config,
        bpf_stats: &bpf_stats,
    };
    // The two-host topology, when one of its setups runs.
    let cross = if plan.setups.iter().any(|s| s.is_cross_host()) {
        Some(cross_host::CrossHost::prepare(
            plan,
            loader,
            scratch.path(),
            pid,
        )?)
    } else {
        None
    };
    let cross_ctx = cross.as_ref().map(|x| Ctx {
        plan,
        topo: &x.topo,
        loader,
        pin_path: &x.pins_a,
        sink_pin_path: Some(&x.pins_b),
        datastore: &x.datastore,
        scratch: scratch.path(),
        trafgen_config: &x.trafgen_config,
        bpf_stats: &bpf_stats,
    });
    output::explain(plan.cpu_split());
    output::explain(OFFLOADS);

    let mut results: Vec<RoundResult> = Vec::new();
    for round in 1..=plan.rounds {
        for (index, &setup) in plan.setups.iter().enumerate() {
            output::step(format!(
                "Round {round}/{}, setup {}/{}: {setup}",
                plan.rounds,
                index + 1,
                plan.setups.len()
            ));
            let setup_ctx = if setup.is_cross_host() {
                cross_ctx
                    .as_ref()
                    .context("the cross-host topology was not built")?
            } else {
                &ctx
            };
            let result = measure_setup(setup_ctx, setup, round)
                .with_context(|| format!("round {round}, setup {setup}"))?;
            let base_setup = setup.baseline();
            let baseline = results
                .iter()
                .find(|r| r.round == round && r.setup == base_setup);
            if let Some(base) = baseline {
                output::info(format!(
                    "{setup} vs {base_setup} in this round: packets/s x{:.2} (trafgen), x{:.2} \
                     (live frames), TCP x{:.2}",
                    report::ratio(result.pps.delivered_pps, base.pps.delivered_pps),
                    report::ratio(result.live.delivered_pps, base.live.delivered_pps),
                    report::ratio(result.tcp.gbps(), base.tcp.gbps()),
                ));
            }
            results.push(result);
        }
    }
    let control_plane = control::measure(&ctx).context("the control-plane phase")?;
    Ok((results, control_plane))
}

/// Activates one setup, measures it, deactivates it.
fn measure_setup(ctx: &Ctx<'_>, setup: Setup, round: u32) -> Result<RoundResult> {
    let mut active = Active::activate(ctx, setup)?;
    let programs = active.programs(ctx)?;

    let mut rates = Vec::new();
    for (step, generator) in (1..).zip(Generator::ALL) {
        output::info(format!(
            "[{step}/4] 64-byte UDP gen -> sink: {} on CPU {}, {:.1}s warm-up, then {}s counted",
            generator.as_str(),
            ctx.plan.generator_cpu,
            ctx.plan.warmup.as_secs_f64(),
            ctx.plan.duration.as_secs()
        ));
        let live = generator == Generator::LiveFrames;
        if live {
            topology::set_gen_host_gro(ctx.topo, true)?;
        }
        let mut pps = measure::packet_rate(ctx, &active, &programs, generator);
        if let Err(err) = &pps {
            // trafgen gives up when its packet socket's send buffer is full at a flush
            // (EAGAIN), which a busy machine can cause in the setups that hold the skbs
            // longest (XDP on the host side): measure again, once.
            signals::check_interrupted()?;
            output::warn(format!("{}: {err:#}; measuring again", generator.as_str()));
            pps = measure::packet_rate(ctx, &active, &programs, generator).map(|mut p| {
                p.attempts = 2;
                p
            });
        }
        if live {
            topology::set_gen_host_gro(ctx.topo, false)?;
        }
        let pps = pps?;
        output::info(pps.describe());
        rates.push(pps);
    }
    let [pps, live] = <[PpsResult; 2]>::try_from(rates)
        .map_err(|_| anyhow::anyhow!("one packet rate per generator"))?;

    output::info(format!(
        "[3/4] TCP gen -> sink: iperf3 for {}s",
        ctx.plan.duration.as_secs()
    ));
    let tcp = measure::tcp_throughput(ctx)?;
    output::info(tcp.describe());

    output::info(format!(
        "[4/4] TCP request/response gen <-> sink: 64-byte ping-pong for {}s",
        ctx.plan.latency.as_secs()
    ));
    let rr = measure::request_response(ctx)?;
    output::info(rr.describe());

    let policy = active.policy_check(ctx)?;
    active.deactivate(ctx)?;
    Ok(RoundResult {
        round,
        setup,
        pps,
        live,
        tcp,
        rr,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setups_are_named_as_in_the_docs() {
        assert_eq!(Setup::Linux.to_string(), "linux");
        assert_eq!(Setup::Iptables(1000).to_string(), "iptables-1000");
        assert_eq!(Setup::NftList(1000).to_string(), "nft-list-1000");
        assert_eq!(Setup::NftSet(10_000).to_string(), "nft-set-10000");
        assert_eq!(Setup::Ours(AttachMode::Tc, 0).to_string(), "ours-tc-0");
        assert_eq!(
            Setup::Ours(AttachMode::Xdp, 10_000).to_string(),
            "ours-xdp-10000"
        );
        assert_eq!(Setup::CrossLinux.to_string(), "x-linux");
        assert_eq!(Setup::CrossOurs(AttachMode::Tc).to_string(), "x-ours-tc");
        assert_eq!(Setup::CrossOurs(AttachMode::Xdp).to_string(), "x-ours-xdp");
    }

    #[test]
    fn cross_host_setups_compare_with_linux_on_two_hosts() {
        for setup in cross_host::SETUPS {
            assert!(setup.is_cross_host());
            assert_eq!(setup.baseline(), Setup::CrossLinux);
        }
        assert!(!Setup::Ours(AttachMode::Tc, 0).is_cross_host());
        assert_eq!(Setup::Ours(AttachMode::Tc, 0).baseline(), Setup::Linux);
        // Filtering by name selects them alone, in the usual order.
        let args = BenchArgs {
            setups: vec!["x-ours-xdp".into(), "x-linux".into()],
            quick: false,
            ..BenchArgs::quick()
        };
        let plan = Plan::new(&args, SystemTime::UNIX_EPOCH).expect("plan");
        assert_eq!(
            plan.setups,
            [Setup::CrossLinux, Setup::CrossOurs(AttachMode::Xdp)]
        );
    }

    #[test]
    fn quick_plan_is_short_and_linux_comes_first() {
        let plan = Plan::new(&BenchArgs::quick(), SystemTime::UNIX_EPOCH).expect("plan");
        assert_eq!(plan.rounds, 1);
        assert_eq!(plan.setups.first(), Some(&Setup::Linux));
        assert_eq!(
            plan.setups,
            [
                Setup::Linux,
                Setup::Iptables(0),
                Setup::Iptables(1000),
                Setup::NftList(1000),
                Setup::NftSet(1000),
                Setup::Ours(AttachMode::Tc, 0),
                Setup::Ours(AttachMode::Tc, 1000),
                Setup::Ours(AttachMode::Xdp, 0),
                Setup::Ours(AttachMode::Xdp, 1000),
                Setup::CrossOurs(AttachMode::Tc),
                Setup::CrossOurs(AttachMode::Xdp),
            ]
        );
        assert_eq!(plan.control_plane_rules, 1000);
        assert!(plan.duration <= Duration::from_secs(2));
        assert_eq!(plan.bgp.prefixes, [1_000]);
        assert_eq!(plan.bgp.repetitions, 1);
        assert!(plan.json.ends_with("bench/bench-19700101T000000Z.json"));
    }

    #[test]
    fn full_plan_has_every_rule_count_and_three_rounds() {
        let args = BenchArgs {
            quick: false,
            rounds: None,
            duration: None,
            json: Some(PathBuf::from("/tmp/x.json")),
            setups: Vec::new(),
            bgp_only: false,
            hosting_only: false,
            many_endpoints_only: false,
            many_endpoints: None,
            restart_only: false,
            upgrade_only: false,
            upgrade_from: upgrade::DEFAULT_FROM.to_owned(),
        };
        let plan = Plan::new(&args, SystemTime::UNIX_EPOCH).expect("plan");
        assert_eq!(plan.rounds, 3);
        assert_eq!(
            plan.setups.len(),
            1 + IPTABLES_RULES.len()
                + 2 * NFT_RULES.len()
                + 2 * OURS_RULES.len()
                + cross_host::SETUPS.len()
        );
        for n in IPTABLES_RULES {
            assert!(plan.setups.contains(&Setup::Iptables(*n)));
            assert!(plan.setups.contains(&Setup::NftList(*n)));
            assert!(plan.setups.contains(&Setup::NftSet(*n)));
            assert!(plan.setups.contains(&Setup::Ours(AttachMode::Tc, *n)));
            assert!(plan.setups.contains(&Setup::Ours(AttachMode::Xdp, *n)));
        }
        assert_eq!(plan.control_plane_rules, 10_000);
        assert_eq!(plan.bgp.prefixes, [10_000, 100_000]);
        assert_eq!(plan.bgp.render_nodes, 1_000);
        assert_eq!(plan.json, PathBuf::from("/tmp/x.json"));
        assert_eq!(plan.command, "cargo xtask bench --json /tmp/x.json");

        let only = BenchArgs {
            setups: vec!["ours-tc-0".into(), "linux".into()],
            ..args
        };
        let plan = Plan::new(&only, SystemTime::UNIX_EPOCH).expect("plan");
        assert_eq!(plan.setups, [Setup::Linux, Setup::Ours(AttachMode::Tc, 0)]);
        assert!(plan.command.contains("--setups ours-tc-0,linux"));
        let unknown = BenchArgs {
            setups: vec!["ours-tc-7".into()],
            ..only
        };
        let err = Plan::new(&unknown, SystemTime::UNIX_EPOCH)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("\"ours-tc-7\""), "{err}");
    }
}
