//! Statistics over rounds, the terminal tables (Markdown, ready to paste):
//! the setups, our setups' policy, the goal checks, the control plane and the
//! microbenchmark; the JSON file, and what the machine and its tools are.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;
use testbed::{Cmd, output};

use super::{
    Plan, RoundResult, Setup, bgp::BgpFigures, control::ControlPlane, control::mib,
    markdown::render_table, measure::PpsResult,
};
use crate::{paths, topology::AttachMode};

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

pub struct Timestamp {
    /// `20250102T030405Z`, for file names.
    pub compact: String,
    /// `2025-01-02T03:04:05Z`.
    pub iso: String,
}

/// UTC date and time of `time` (no time-zone database needed).
pub fn timestamp(time: SystemTime) -> Timestamp {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Timestamp {
        compact: format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z"),
        iso: format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
    }
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct MachineInfo {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    /// `nf_tables` or `legacy`: what Debian's `iptables` is here.
    pub iptables_backend: String,
    /// The workspace's revision (`git describe --always --dirty`).
    pub revision: String,
    pub tools: BTreeMap<String, String>,
}

impl MachineInfo {
    pub fn one_line(&self) -> String {
        format!(
            "{}, {} CPUs, {:.0} GiB, Linux {}",
            self.cpu_model, self.cpus, self.memory_gib, self.kernel
        )
    }
}

/// The first non-empty line a command prints (stdout, else stderr).
fn first_line(cmd: &Cmd) -> String {
    match cmd.capture() {
        Ok(out) => [&out.stdout, &out.stderr]
            .iter()
            .flat_map(|s| {
                String::from_utf8_lossy(s)
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .map(|l| l.trim().to_owned())
            .find(|l| !l.is_empty())
            .unwrap_or_else(|| "?".into()),
        Err(err) => format!("unavailable: {}", output::with_causes(&err)),
    }
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
}

pub fn machine_info(loader: &Path) -> Result<MachineInfo> {
    output::step("Machine and tools");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read the kernel release")?
        .trim()
        .to_owned();
    let memory_kib: f64 = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let mut tools = BTreeMap::new();
    let mut tool = |name: &str, cmd: Cmd| {
        tools.insert(name.to_owned(), first_line(&cmd));
    };
    tool("trafgen", Cmd::new("trafgen").arg("--version"));
    tool("iperf3", Cmd::new("iperf3").arg("--version"));
    tool(
        "iptables",
        Cmd::new("iptables").arg("--version").privileged(),
    );
    tool("nft", Cmd::new("nft").arg("--version").privileged());
    tool("bpftool", Cmd::new("bpftool").arg("version").privileged());
    tool("iproute2", Cmd::new("ip").arg("-V"));
    tool("ethtool", Cmd::new("ethtool").arg("--version"));
    tool("calico-loader", Cmd::new(loader).arg("--version"));
    let iptables = tools.get("iptables").cloned().unwrap_or_default();
    let iptables_backend = if iptables.contains("nf_tables") {
        "nf_tables"
    } else if iptables.contains("legacy") {
        "legacy"
    } else {
        "unknown"
    }
    .to_owned();
    let revision = first_line(
        &Cmd::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(paths::workspace_root()),
    );
    let info = MachineInfo {
        kernel,
        cpu_model: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into()),
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        iptables_backend,
        revision,
        tools,
    };
    output::info(info.one_line());
    output::info(format!("iptables is {iptables}"));
    Ok(info)
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Median and range over rounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// None without finite values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(spread: Option<Self>, decimals: usize) -> String {
        match spread {
            None => "-".into(),
            Some(s) if s.min == s.max => format!("{:.decimals$}", s.median),
            Some(s) => format!(
                "{:.decimals$} ({:.decimals$}–{:.decimals$})",
                s.median, s.min, s.max
            ),
        }
    }
}

/// `value / base`, NaN when there is no base.
pub fn ratio(value: f64, base: f64) -> f64 {
    if base > 0.0 { value / base } else { f64::NAN }
}

/// Ratios of one round's figures to Linux forwarding on the same topology (`linux`, or
/// `x-linux` for the cross-host setups) in the same round.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ratios {
    pub pps: f64,
    pub live_pps: f64,
    pub tcp: f64,
    pub rr_p50: f64,
}

fn ratios(result: &RoundResult, results: &[RoundResult]) -> Ratios {
    let baseline = result.setup.baseline();
    let base = results
        .iter()
        .find(|r| r.round == result.round && r.setup == baseline);
    let rr = |r: &RoundResult| {
        if r.rr.error.is_some() {
            f64::NAN
        } else {
            r.rr.p50_us
        }
    };
    match base {
        Some(base) => Ratios {
            pps: ratio(result.pps.delivered_pps, base.pps.delivered_pps),
            live_pps: ratio(result.live.delivered_pps, base.live.delivered_pps),
            tcp: ratio(result.tcp.gbps(), base.tcp.gbps()),
            rr_p50: ratio(rr(result), rr(base)),
        },
        None => Ratios {
            pps: f64::NAN,
            live_pps: f64::NAN,
            tcp: f64::NAN,
            rr_p50: f64::NAN,
        },
    }
}

#[derive(Debug, Serialize)]
pub struct SetupSummary {
    pub setup: String,
    pub rounds: usize,
    pub delivered_mpps: Option<Spread>,
    pub offered_mpps: Option<Spread>,
    pub pps_ratio_to_linux: Option<Spread>,
    /// The same from the live-frames generator.
    pub live_delivered_mpps: Option<Spread>,
    pub live_offered_mpps: Option<Spread>,
    pub live_pps_ratio_to_linux: Option<Spread>,
    pub tcp_gbps: Option<Spread>,
    pub tcp_ratio_to_linux: Option<Spread>,
    pub rr_p50_us: Option<Spread>,
    pub rr_p99_us: Option<Spread>,
    pub rr_p50_ratio_to_linux: Option<Spread>,
    /// ns per run of our from-workload program under the trafgen load.
    pub bpf_ns_per_packet: Option<Spread>,
    /// The same under the live-frames load.
    pub live_bpf_ns_per_packet: Option<Spread>,
    /// Two hosts: ns per run of host B's data-interface program, under each load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_bpf_ns_per_packet: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_data_bpf_ns_per_packet: Option<Spread>,
    /// Busy percentage of each CPU during the packet-rate interval.
    pub cpu_busy_pct: Vec<Option<Spread>>,
}

pub fn summarise(plan: &Plan, results: &[RoundResult]) -> Vec<SetupSummary> {
    plan.setups
        .iter()
        .map(|&setup| {
            let rounds: Vec<&RoundResult> = results.iter().filter(|r| r.setup == setup).collect();
            let ratios: Vec<Ratios> = rounds.iter().map(|r| ratios(r, results)).collect();
            let ok_rr = || rounds.iter().filter(|r| r.rr.error.is_none());
            let ok_tcp = || rounds.iter().filter(|r| r.tcp.error.is_none());
            SetupSummary {
                setup: setup.to_string(),
                rounds: rounds.len(),
                delivered_mpps: Spread::of(rounds.iter().map(|r| r.pps.delivered_pps / 1e6)),
                offered_mpps: Spread::of(rounds.iter().map(|r| r.pps.offered_pps / 1e6)),
                pps_ratio_to_linux: Spread::of(ratios.iter().map(|r| r.pps)),
                live_delivered_mpps: Spread::of(rounds.iter().map(|r| r.live.delivered_pps / 1e6)),
                live_offered_mpps: Spread::of(rounds.iter().map(|r| r.live.offered_pps / 1e6)),
                live_pps_ratio_to_linux: Spread::of(ratios.iter().map(|r| r.live_pps)),
                tcp_gbps: Spread::of(ok_tcp().map(|r| r.tcp.gbps())),
                tcp_ratio_to_linux: Spread::of(ratios.iter().map(|r| r.tcp)),
                rr_p50_us: Spread::of(ok_rr().map(|r| r.rr.p50_us)),
                rr_p99_us: Spread::of(ok_rr().map(|r| r.rr.p99_us)),
                rr_p50_ratio_to_linux: Spread::of(ratios.iter().map(|r| r.rr_p50)),
                bpf_ns_per_packet: Spread::of(
                    rounds.iter().filter_map(|r| r.pps.bpf_ns_per_packet()),
                ),
                live_bpf_ns_per_packet: Spread::of(
                    rounds.iter().filter_map(|r| r.live.bpf_ns_per_packet()),
                ),
                data_bpf_ns_per_packet: Spread::of(
                    rounds.iter().filter_map(|r| r.pps.data_bpf_ns_per_packet()),
                ),
                live_data_bpf_ns_per_packet: Spread::of(
                    rounds
                        .iter()
                        .filter_map(|r| r.live.data_bpf_ns_per_packet()),
                ),
                cpu_busy_pct: (0..plan.cpus)
                    .map(|cpu| {
                        Spread::of(rounds.iter().filter_map(|r| {
                            r.pps.cpus.iter().find(|c| c.cpu == cpu).map(|c| c.busy_pct)
                        }))
                    })
                    .collect(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// The results as a Markdown table (readable on a terminal, pasteable).
pub fn markdown_table(summary: &[SetupSummary]) -> String {
    let cpus = summary.first().map_or(0, |s| s.cpu_busy_pct.len());
    let mut header = vec![
        "setup".to_owned(),
        "trafgen Mpps".into(),
        "× linux".into(),
        "live Mpps".into(),
        "× linux".into(),
        "TCP Gbit/s".into(),
        "× linux".into(),
        "RR p50 µs".into(),
        "RR p99 µs".into(),
        "BPF ns/pkt trafgen".into(),
        "BPF ns/pkt live".into(),
    ];
    header.extend((0..cpus).map(|c| format!("CPU{c} % (trafgen)")));
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|s| {
            let mut row = vec![
                format!("`{}`", s.setup),
                Spread::show(s.delivered_mpps, 3),
                Spread::show(s.pps_ratio_to_linux, 2),
                Spread::show(s.live_delivered_mpps, 3),
                Spread::show(s.live_pps_ratio_to_linux, 2),
                Spread::show(s.tcp_gbps, 2),
                Spread::show(s.tcp_ratio_to_linux, 2),
                Spread::show(s.rr_p50_us, 1),
                Spread::show(s.rr_p99_us, 1),
                Spread::show(s.bpf_ns_per_packet, 0),
                Spread::show(s.live_bpf_ns_per_packet, 0),
            ];
            row.extend(s.cpu_busy_pct.iter().map(|c| Spread::show(*c, 0)));
            row
        })
        .collect();
    // The setup's name left-aligned, every figure right-aligned.
    let right: Vec<bool> = (0..header.len()).map(|i| i > 0).collect();
    render_table(&header, &rows, &right)
}

pub fn print_table(plan: &Plan, machine: &MachineInfo, summary: &[SetupSummary]) {
    output::step("Results");
    let spread = if plan.rounds > 1 {
        format!("median (min–max) over {} rounds", plan.rounds)
    } else {
        "1 round".to_owned()
    };
    println!();
    println!(
        "{} · `{}` · {}",
        timestamp(plan.started).iso,
        plan.command,
        machine.one_line()
    );
    println!(
        "{spread}; {}s per packet-rate and TCP measurement, {}s of request/response; \
         × linux = ratio to linux in the same round; iptables is {}; nft-* use their own \
         table inet calico_bench.",
        plan.duration.as_secs(),
        plan.latency.as_secs(),
        machine.iptables_backend
    );
    println!();
    print!("{}", markdown_table(summary));
    println!();
    println!("- {}", plan.cpu_split());
    println!("- {}", crate::bench::OFFLOADS);
    println!(
        "- trafgen: socket buffers from a packet socket (like a container's stack); live: \
         BPF_PROG_TEST_RUN live frames sent by XDP_TX from gen's eth0 (xdp_frames, like a NIC \
         or a VM's tap). The sink has a bound UDP socket that never reads."
    );
    println!(
        "- CPU% (trafgen): how busy each CPU was while trafgen's rate was counted. The \
         generator's CPU is at 100%; time on the other one is another program (the bench warns \
         when it sees user-space time, which none of the measured paths spends)."
    );
    println!(
        "- BPF ns/pkt: our from-workload program's run_time_ns/run_cnt over the warm-up, with \
         kernel.bpf_stats_enabled=1; it is 0 while rates are counted (its clock reads would \
         slow our setups only)."
    );
    if summary.iter().any(|s| s.setup.starts_with("x-")) {
        println!(
            "- x-*: across two hosts (gen on host A, the sink on host B, a veth pair between \
             their data interfaces, static routes); their × linux is the ratio to x-linux. BPF \
             ns/pkt is gen's from-workload program on host A; host B's data-interface program is \
             in the cross-host table below."
        );
    }
    println!();
}

/// The cross-host setups: who forwarded the packets (our programs' counters against the
/// kernels' ForwDatagrams) and what each of our programs cost, per generator (medians over
/// rounds).
pub fn print_cross_host(results: &[RoundResult], summary: &[SetupSummary]) {
    let cross: Vec<&SetupSummary> = summary
        .iter()
        .filter(|s| s.setup.starts_with("x-"))
        .collect();
    if cross.is_empty() {
        return;
    }
    println!(
        "Cross-host: who forwarded the packets of the counted interval (per delivered packet: \
         host A's fwd_remote, host B's from_data, the kernels' ForwDatagrams on A + B), and our \
         programs' cost (bpf_stats over the warm-up)."
    );
    println!();
    let header = [
        "setup",
        "generator",
        "delivered Mpps",
        "BPF A fwd_remote / pkt",
        "BPF B from_data / pkt",
        "kernel ForwDatagrams / pkt",
        "from_wl ns (A)",
        "data ns (B)",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut rows = Vec::new();
    for s in cross {
        for live in [false, true] {
            let rates: Vec<&PpsResult> = results
                .iter()
                .filter(|r| r.setup.to_string() == s.setup)
                .map(|r| if live { &r.live } else { &r.pps })
                .collect();
            let per_packet = |f: &dyn Fn(&PpsResult) -> Option<u64>| {
                Spread::of(rates.iter().filter_map(|p| {
                    let n = f(p)?;
                    (p.delivered_packets > 0).then(|| n as f64 / p.delivered_packets as f64)
                }))
            };
            rows.push(vec![
                format!("`{}`", s.setup),
                if live { "live frames" } else { "trafgen" }.to_owned(),
                Spread::show(
                    if live {
                        s.live_delivered_mpps
                    } else {
                        s.delivered_mpps
                    },
                    3,
                ),
                Spread::show(
                    per_packet(&|p| p.dataplane_counters.as_ref().map(|c| c.forwarded_packets)),
                    2,
                ),
                Spread::show(
                    per_packet(&|p| {
                        p.dataplane_counters
                            .as_ref()
                            .and_then(|c| c.from_data_packets)
                    }),
                    2,
                ),
                Spread::show(per_packet(&|p| Some(p.kernel_forwarded_packets())), 2),
                Spread::show(
                    if live {
                        s.live_bpf_ns_per_packet
                    } else {
                        s.bpf_ns_per_packet
                    },
                    0,
                ),
                Spread::show(
                    if live {
                        s.live_data_bpf_ns_per_packet
                    } else {
                        s.data_bpf_ns_per_packet
                    },
                    0,
                ),
            ]);
        }
    }
    print!(
        "{}",
        render_table(
            &header,
            &rows,
            &[false, false, true, true, true, true, true, true]
        )
    );
    println!();
}

/// Everything the JSON file holds besides the plan and the machine.
pub struct Figures<'a> {
    pub results: &'a [RoundResult],
    pub summary: &'a [SetupSummary],
    pub goals: &'a [GoalCheck],
    /// Absent with `--bgp-only`.
    pub control_plane: Option<&'a ControlPlane>,
    pub microbench: &'a [serde_json::Value],
    /// The BGP phase (absent if it failed).
    pub bgp: Option<&'a BgpFigures>,
}

pub fn write_json(
    plan: &Plan,
    machine: &MachineInfo,
    figures: &Figures<'_>,
    elapsed: Duration,
) -> Result<()> {
    let results = figures.results;
    let rounds: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let mut value = serde_json::to_value(r).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert(
                    "ratios_to_linux".into(),
                    serde_json::to_value(ratios(r, results)).unwrap_or_default(),
                );
            }
            value
        })
        .collect();
    let document = json!({
        "tool": "cargo xtask bench",
        // 2: `ours-<hook>-N` setups (were `ours-<hook>`), `policy` per round, `goal_checks`,
        // `control_plane`.
        // 3: `live` per round (the live-frames generator), live_* in the summary, goal checks
        // per generator, bpf_stats from the warm-up.
        // 4: the cross-host setups (x-*), kernel_forwarded per packet rate,
        // from_data_packets in dataplane_counters, data_bpf_ns_per_packet in the summary;
        // `bgp` (the BGP phase), `bgp_only`; `control_plane` null with --bgp-only.
        "schema_version": 4,
        "bgp_only": plan.bgp_only,
        "command": plan.command,
        "started": timestamp(plan.started).iso,
        "elapsed_s": elapsed.as_secs_f64(),
        "quick": plan.quick,
        "rounds": plan.rounds,
        "duration_s": plan.duration.as_secs(),
        "warmup_s": plan.warmup.as_secs_f64(),
        "latency_duration_s": plan.latency.as_secs(),
        "machine": machine,
        "config": {
            "setups": plan.setups.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "order": "every round runs every setup once, in this order; linux first",
            "generator_cpu": plan.generator_cpu,
            "cpu_split": plan.cpu_split(),
            "offloads": crate::bench::OFFLOADS,
            "host_side": "ethtool -K <host side> gro on (NAPI, which frames sent by XDP need), both workloads, all setups",
            "udp_frame": "60 bytes + FCS: Ethernet/IPv4/UDP gen -> sink, port 9, IP checksum by csumip()",
            "generators": {
                "trafgen": "trafgen --cpus GEN+1 with cpu(GEN) in its configuration: socket buffers from a packet socket's TX ring",
                "live_frames": "xtask bench-live-gen pinned to GEN: BPF_PROG_TEST_RUN, BPF_F_TEST_XDP_LIVE_FRAMES, an XDP program on gen's eth0 that writes the frame and returns XDP_TX; frames reach the host side as xdp_frames",
            },
            "sink_socket": "a UDP socket bound to port 9 in the sink (SO_RCVBUF minimum), never read: no ICMP port unreachable",
            "delivered": "Ip: InReceives in the sink namespace",
            "offered": "tx packets + tx dropped of gen's eth0",
            "iptables": "FORWARD -i <gen host side> -j cali-fw-<gen host side>; N x `-s 198.19.x.y/32 -j DROP`, then ACCEPT",
            "nft_list": "table inet calico_bench, loaded with nft -f: forward chain `iifname <gen host side> jump cali-fw-<gen host side>`; N x `ip saddr 198.19.x.y/32 drop`, then accept",
            "nft_set": "table inet calico_bench, loaded with nft -f: forward chain `iifname <gen host side> jump cali-fw-<gen host side>`; `ip saddr @cali-fw-<gen host side>-src drop` (a `flags interval` set of the same N 198.19.x.y/32), then accept",
            "ours": "our agent (calico-loader run) with --attach-mode tc|xdp; N = 0: no policy, the endpoints' allow-all profile decides; N > 0: GlobalNetworkPolicies (at most 1,000 rules each, increasing order) selecting app == 'sink' with N ingress rules: N-1 x `{action: Deny, source: {nets: [198.19.x.y/32]}}` (iptables-N's addresses), then `{action: Allow, source: {nets: [198.18.0.1/32]}}`; checked with `calico-loader trace` before measuring; policy is evaluated once per new flow, later packets pass on conntrack (trafgen sends one flow)",
            "control_plane": "after the rounds, one agent (tc): time until `calico-loader trace` (polled every 20 ms) shows the verdict of control_plane.rules rules renamed into its datastore; time from a new endpoint's WorkloadEndpoint to its first echo reply (ping every 5 ms); VmHWM; bytes_memlock of the maps it holds (bpftool)",
            "cross_host": "x-* setups, in the same rounds: gen (198.18.1.1) in cbench-xgen on host A (cbench-xa), the sink (198.18.2.1) in cbench-xsink on host B (cbench-xb); a veth pair between the hosts' eth0 (198.19.254.1/.2, permanent neighbours), static routes to each other's /26 standing in for BIRD. x-linux: kernel forwarding on both; x-ours-<hook>: an agent on each host (nodes bench-a, bench-b, own pins), programs on the workload and fabric interfaces. Ratios to x-linux. kernel_forwarded: ForwDatagrams of A and B; dataplane_counters: host A's forwarded_remote_packets for gen, host B's from_data_interface_packets for the sink",
            "tcp": "iperf3 -c sink -t DURATION -J (client in gen, server in sink)",
            "request_response": "one TCP connection, 64 bytes each way, back to back, TCP_NODELAY",
            "bpf_stats": "kernel.bpf_stats_enabled=1 during each warm-up (deltas of run_time_ns and run_cnt over it), 0 while packet rates are counted",
            "bgp": plan.bgp,
        },
        "results": rounds,
        "summary": figures.summary,
        "goal_checks": figures.goals,
        "control_plane": figures.control_plane,
        "microbench": figures.microbench,
        "bgp": figures.bgp,
    });
    if let Some(dir) = plan.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&document)?;
    std::fs::write(&plan.json, text + "\n")
        .with_context(|| format!("cannot write {}", plan.json.display()))?;
    Ok(())
}

/// Fails when a setup moved no traffic in some round.
pub fn check_traffic(results: &[RoundResult]) -> Result<()> {
    let mut problems = Vec::new();
    for r in results {
        let at = format!("{} (round {})", r.setup, r.round);
        for pps in [&r.pps, &r.live] {
            if pps.delivered_packets == 0 {
                problems.push(format!(
                    "{at}: no UDP packet from {} reached the sink ({} offered)",
                    pps.generator.as_str(),
                    pps.offered_packets
                ));
            }
        }
        match &r.tcp.error {
            Some(err) => problems.push(format!("{at}: TCP failed: {err}")),
            None if r.tcp.received_bps <= 0.0 => problems.push(format!("{at}: TCP moved nothing")),
            None => {}
        }
        if let Some(err) = &r.rr.error {
            problems.push(format!("{at}: request/response failed: {err}"));
        }
        if matches!(r.setup, Setup::CrossOurs(_)) {
            for pps in [&r.pps, &r.live] {
                if let Some(problem) = cross_host_bypass(pps) {
                    problems.push(format!("{at}, {}: {problem}", pps.generator.as_str()));
                }
            }
        }
        if let Some(policy) = &r.policy {
            match policy.deciding_rule_hits {
                Some(0) | None => problems.push(format!(
                    "{at}: the deciding rule ({} rule {}) counted no packet: policy decided no flow",
                    policy.expected.policy, policy.expected.rule
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        output::info(
            "every setup moved traffic in every round (and in ours, the expected rule decided)",
        );
        Ok(())
    } else {
        bail!(
            "some setups moved no traffic, or not through the expected rule:\n  - {}",
            problems.join("\n  - ")
        )
    }
}

/// Across two hosts with our agents: what says the delivered packets did not go through our
/// programs on both hosts, or went through a kernel's forwarding. The kernels' `ForwDatagrams`
/// must stay below 1% of them: packets cross the hosts either in our programs or in the
/// kernels. Host A's `fwd_remote` and host B's `from_data` must each count at least half of
/// them: the agents' counters are read after the sink's, by `calico-loader dump` (a process
/// each), so on a busy machine their interval is off by up to a fifth.
fn cross_host_bypass(pps: &PpsResult) -> Option<String> {
    let delivered = pps.delivered_packets;
    if delivered == 0 {
        return None; // reported as moving no traffic
    }
    let Some(counters) = &pps.dataplane_counters else {
        return Some("our counters could not be read".to_owned());
    };
    let enough = delivered / 2;
    let from_data = counters.from_data_packets.unwrap_or(0);
    let kernel = pps.kernel_forwarded_packets();
    if counters.forwarded_packets < enough {
        Some(format!(
            "host A's program forwarded {} of the {delivered} delivered packets to host B",
            counters.forwarded_packets
        ))
    } else if from_data < enough {
        Some(format!(
            "host B's data-interface program delivered {from_data} of the {delivered} packets"
        ))
    } else if kernel > delivered / 100 {
        Some(format!(
            "the hosts' kernels forwarded {kernel} packets (ForwDatagrams {:?}) against \
             {delivered} delivered",
            pps.kernel_forwarded
        ))
    } else {
        None
    }
}

/// Prints the BPF_PROG_TEST_RUN figures: ns per forwarded packet for each route count.
pub fn print_microbench(rows: &[serde_json::Value]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "Programs alone (BPF_PROG_TEST_RUN, packet forwarded between two workloads; ns per packet):"
    );
    println!(
        "  rules: in the receiver's ingress policy (policies of 1,000, the last rule allows the packet)."
    );
    println!(
        "  tracked: a UDP flow on its conntrack entry (what trafgen's packets get after the first);"
    );
    println!(
        "  policy: a TCP segment that meets the receiver's whole ingress policy on every packet."
    );
    println!("  conntrack: other flows in the conntrack table while measuring.");
    println!(
        "{:>8}  {:>7}  {:>10}  {:>10}  {:>14}  {:>14}  {:>14}",
        "routes",
        "rules",
        "conntrack",
        "packets",
        "TC tracked ns",
        "XDP tracked ns",
        "TC policy ns"
    );
    for row in rows {
        println!(
            "{:>8}  {:>7}  {:>10}  {:>10}  {:>14.1}  {:>14.1}  {:>14.1}",
            row["routes"].as_u64().unwrap_or(0),
            row["rules"].as_u64().unwrap_or(0),
            row["conntrack_entries"].as_u64().unwrap_or(0),
            row["packets"].as_u64().unwrap_or(0),
            row["tc_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            row["xdp_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            row["tc_policy_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
        );
    }
}

// ---------------------------------------------------------------------------
// Our setups' policy
// ---------------------------------------------------------------------------

/// Our setups' policy: what decided trafgen's packet (trace, before measuring) and how many
/// packets the deciding rule counted (after), per setup over rounds.
pub fn print_policy(results: &[RoundResult]) {
    let mut setups: Vec<Setup> = Vec::new();
    for r in results.iter().filter(|r| r.policy.is_some()) {
        if !setups.contains(&r.setup) {
            setups.push(r.setup);
        }
    }
    if setups.is_empty() {
        return;
    }
    println!(
        "Policy in our setups: `calico-loader trace` of trafgen's packet at the sink's ingress before \
         measuring, `dump rules` after (medians over rounds; hits: each round)."
    );
    println!();
    let header = [
        "setup",
        "rules programmed",
        "trafgen's packet (trace)",
        "from 198.19.0.0 (trace)",
        "agent ready ms",
        "compile ms",
        "deciding rule hits",
    ]
    .map(str::to_owned)
    .to_vec();
    let rows: Vec<Vec<String>> = setups
        .iter()
        .map(|&setup| {
            let checks: Vec<_> = results
                .iter()
                .filter(|r| r.setup == setup)
                .filter_map(|r| r.policy.as_ref())
                .collect();
            let last = checks[checks.len() - 1];
            let trace = |t: &super::policy::TraceOutcome| {
                format!(
                    "{}: {} rule {}",
                    t.verdict,
                    t.policy.as_deref().unwrap_or("-"),
                    t.rule.map_or("-".into(), |r| r.to_string())
                )
            };
            vec![
                format!("`{setup}`"),
                match (last.rules, last.rules_programmed) {
                    (0, _) => "- (profile)".into(),
                    (rules, Some(n)) => format!(
                        "{} of {}",
                        thousands(u32::try_from(n).unwrap_or(u32::MAX)),
                        thousands(rules)
                    ),
                    (_, None) => "?".into(),
                },
                trace(&last.trace),
                last.miss_trace.as_ref().map_or("-".into(), trace),
                Spread::show(Spread::of(checks.iter().map(|c| c.agent_ready_ms)), 0),
                Spread::show(
                    Spread::of(
                        checks
                            .iter()
                            .filter_map(|c| c.agent_compile_ms.map(|v| v as f64)),
                    ),
                    0,
                ),
                checks
                    .iter()
                    .map(|c| c.deciding_rule_hits.map_or("?".into(), |h| h.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &header,
            &rows,
            &[false, true, false, false, true, true, true]
        )
    );
    println!();
    println!(
        "- Policy is evaluated once per new flow; later packets pass on the conntrack entry. \
         trafgen sends one UDP flow (port 9 to 9), so the rules decide its first packet only: \
         `ours-*-N` packets/s is the established path with N rules loaded. The hits are the \
         flows the deciding rule allowed (trafgen's, iperf3's two connections, the ping-pong's). \
         The iptables and nftables setups have no conntrack rule: every packet walks their chain."
    );
    println!(
        "- ours-*-N: N ingress rules on the sink (N-1 `Deny from 198.19.x.y/32`, the iptables-N \
         addresses, then `Allow from 198.18.0.1/32`); iptables-N: N `-s 198.19.x.y/32 -j DROP` \
         then ACCEPT, on gen's side. Agent ready: from starting it until the trace showed the \
         expected rule; compile: its own `policy compiled … elapsed_ms` at startup."
    );
    println!();
}

// ---------------------------------------------------------------------------
// Goal checks
// ---------------------------------------------------------------------------

/// One of the goals, measured.
#[derive(Debug, Serialize)]
pub struct GoalCheck {
    pub goal: String,
    /// `a / b` of setups, same round.
    pub compared: String,
    pub metric: &'static str,
    /// Median (min–max) of the per-round ratios.
    pub ratio: Option<Spread>,
    pub target: f64,
    /// `PASS`, `MISS`, or `n/a` (not measured).
    pub outcome: &'static str,
    pub note: Option<String>,
}

fn pps(r: &RoundResult) -> f64 {
    r.pps.delivered_pps
}

fn live_pps(r: &RoundResult) -> f64 {
    r.live.delivered_pps
}

/// The packet rates the rate goals are checked on: one per generator.
type Metric = fn(&RoundResult) -> f64;

const RATES: [(&str, Metric); 2] = [
    ("packets/s (trafgen)", pps),
    ("packets/s (live frames)", live_pps),
];

fn tcp(r: &RoundResult) -> f64 {
    if r.tcp.error.is_some() {
        f64::NAN
    } else {
        r.tcp.gbps()
    }
}

/// Per-round ratios `metric(a) / metric(b)`.
fn round_ratios(
    results: &[RoundResult],
    a: Setup,
    b: Setup,
    metric: fn(&RoundResult) -> f64,
) -> Option<Spread> {
    Spread::of(results.iter().filter(|r| r.setup == a).filter_map(|ra| {
        let rb = results
            .iter()
            .find(|r| r.setup == b && r.round == ra.round)?;
        Some(ratio(metric(ra), metric(rb)))
    }))
}

/// The goals: ours at 10,000 rules ≥ 0.9× ours at 0; ours (0 rules) ≥ 1.5× linux in
/// packets/s; ours ≥ 20× iptables at 10,000 rules; our TCP ≥ 1× linux. For each hook. Where
/// 10,000 rules were not measured (--quick), the largest count measured stands in, and says so.
pub fn goal_checks(plan: &Plan, results: &[RoundResult]) -> Vec<GoalCheck> {
    const GOAL_RULES: u32 = 10_000;
    let has = |s: Setup| plan.setups.contains(&s);
    let mut checks = Vec::new();
    for hook in [AttachMode::Tc, AttachMode::Xdp] {
        let ours = |n| Setup::Ours(hook, n);
        let largest = |other: &dyn Fn(u32) -> bool| {
            plan.setups
                .iter()
                .filter_map(|s| match *s {
                    Setup::Ours(h, n) if h == hook && n > 0 && other(n) => Some(n),
                    _ => None,
                })
                .max()
        };
        let stand_in = |n: u32| {
            (n != GOAL_RULES).then(|| {
                format!(
                    "goal at {}; measured at {}",
                    thousands(GOAL_RULES),
                    thousands(n)
                )
            })
        };
        let mut check = |goal: String, a: Setup, b: Setup, metric_name, metric, target, note| {
            let spread = if has(a) && has(b) {
                round_ratios(results, a, b, metric)
            } else {
                None
            };
            checks.push(GoalCheck {
                goal,
                compared: format!("{a} / {b}"),
                metric: metric_name,
                ratio: spread,
                target,
                outcome: match spread {
                    None => "n/a",
                    Some(s) if s.median >= target => "PASS",
                    Some(_) => "MISS",
                },
                note,
            });
        };
        let n = largest(&|_| true).unwrap_or(GOAL_RULES);
        let m = largest(&|n| has(Setup::Iptables(n))).unwrap_or(GOAL_RULES);
        for (metric_name, metric) in RATES {
            check(
                format!("{}: rules vs none", hook.as_str()),
                ours(n),
                ours(0),
                metric_name,
                metric,
                0.9,
                stand_in(n),
            );
        }
        for (metric_name, metric) in RATES {
            check(
                format!("{}: no rules vs Linux forwarding", hook.as_str()),
                ours(0),
                Setup::Linux,
                metric_name,
                metric,
                1.5,
                None,
            );
        }
        for (metric_name, metric) in RATES {
            check(
                format!("{}: vs iptables, same rule count", hook.as_str()),
                ours(m),
                Setup::Iptables(m),
                metric_name,
                metric,
                20.0,
                stand_in(m),
            );
        }
        check(
            format!("{}: TCP vs Linux forwarding", hook.as_str()),
            ours(0),
            Setup::Linux,
            "TCP Gbit/s",
            tcp,
            1.0,
            None,
        );
        // Across two hosts: ours on both against Linux forwarding on both.
        let across = format!("{} across hosts: vs Linux forwarding", hook.as_str());
        for (metric_name, metric) in RATES {
            check(
                across.clone(),
                Setup::CrossOurs(hook),
                Setup::CrossLinux,
                metric_name,
                metric,
                1.5,
                None,
            );
        }
        check(
            format!("{} across hosts: TCP vs Linux forwarding", hook.as_str()),
            Setup::CrossOurs(hook),
            Setup::CrossLinux,
            "TCP Gbit/s",
            tcp,
            1.0,
            None,
        );
    }
    checks
}

pub fn print_goal_checks(checks: &[GoalCheck]) {
    if checks.is_empty() {
        return;
    }
    println!("Goal checks (the issue's targets; a MISS does not fail the run):");
    println!();
    let header = ["goal", "compared", "metric", "ratio", "target", "result"]
        .map(str::to_owned)
        .to_vec();
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let mut goal = c.goal.clone();
            if let Some(note) = &c.note {
                let _ = write!(goal, " ({note})");
            }
            vec![
                goal,
                format!("`{}`", c.compared),
                c.metric.to_owned(),
                Spread::show(c.ratio, 2),
                format!("≥ {}", c.target),
                c.outcome.to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(&header, &rows, &[false, false, false, true, true, false])
    );
    println!();
}

// ---------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------

pub fn print_control_plane(cp: &ControlPlane) {
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0} ms"));
    let int_ms = |v: Option<u64>| v.map_or("?".into(), |v| format!("{v} ms"));
    let kib = |v: Option<u64>| v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let apply = &cp.policy_apply;
    let new = &cp.new_endpoint;
    let memory = &cp.memory;
    println!(
        "Control plane: one agent ({} build, {}), {} rules in {} GlobalNetworkPolic{}, renamed \
         into its datastore while it runs:",
        cp.agent_build,
        cp.hook,
        thousands(cp.rules),
        cp.policies,
        if cp.policies == 1 { "y" } else { "ies" }
    );
    println!();
    let biggest: Vec<String> = memory
        .maps
        .iter()
        .take(5)
        .map(|m| format!("{} {:.1}", m.name, mib(m.bytes_memlock)))
        .collect();
    let rows = vec![
        vec![
            format!(
                "{} rules: rename → `trace` shows the new verdict",
                thousands(cp.rules)
            ),
            format!(
                "{:.0} ms ({} traces of {:.0} ms (max {:.0}), {} ms apart)",
                apply.wall_ms,
                apply.polls,
                apply.trace_ms_median,
                apply.trace_ms_max,
                apply.poll_ms
            ),
        ],
        vec![
            "… the agent's log: rename → `datastore file loaded`".into(),
            ms(apply.agent_loaded_ms),
        ],
        vec![
            "… the agent's log: `policy compiled` elapsed_ms".into(),
            int_ms(apply.agent_compile_ms),
        ],
        vec![
            "… the agent's log: rename → `policy map entries` (apply done)".into(),
            ms(apply.agent_programmed_ms),
        ],
        vec![
            format!(
                "new endpoint: rename of its WorkloadEndpoint → first reply from gen ({}, every {:.0} ms)",
                new.probe, new.interval_ms
            ),
            match new.answered_request_sent_ms {
                Some(sent) => format!(
                    "{:.0} ms (request {}, sent at {sent:.0} ms)",
                    new.first_reply_ms, new.first_reply_seq
                ),
                None => format!(
                    "{:.0} ms (request {})",
                    new.first_reply_ms, new.first_reply_seq
                ),
            },
        ],
        vec![
            "… the agent's log: rename → `datastore file loaded`".into(),
            ms(new.agent_loaded_ms),
        ],
        vec![
            "… the agent's log: `policy compiled` elapsed_ms (every endpoint, rules loaded)".into(),
            int_ms(new.agent_compile_ms),
        ],
        vec![
            "… the agent's log: rename → `attached` (logged when its apply is done)".into(),
            ms(new.agent_attached_ms),
        ],
        vec![
            "agent peak RSS (VmHWM), rules loaded".into(),
            kib(memory.vm_hwm_kib),
        ],
        vec![
            "agent RSS before / after the rules".into(),
            format!(
                "{} / {}",
                kib(memory.vm_rss_kib_before_rules),
                kib(memory.vm_rss_kib)
            ),
        ],
        vec![
            format!(
                "BPF maps the agent holds ({}), bytes_memlock",
                memory.maps.len()
            ),
            format!(
                "{:.1} MiB ({:.1} MiB before the rules; cali_*: {:.1} MiB)",
                mib(memory.maps_bytes),
                mib(memory.maps_bytes_before_rules),
                mib(memory.cali_maps_bytes)
            ),
        ],
        vec!["biggest maps (MiB)".into(), biggest.join(", ")],
    ];
    let header = vec!["figure".to_owned(), "value".to_owned()];
    print!("{}", render_table(&header, &rows, &[false, true]));
    println!();
    println!(
        "- The wall times are as measured, including how the bench observes them: one \
         `calico-loader trace` run (it loads the programs over the pinned maps) for the rules, \
         up to one request interval for the endpoint. They also include the agent's datastore \
         watch letting changes settle before it reads the directory (see `datastore file \
         loaded`). Log times are the agent's own clock (the same as ours). A debug agent \
         (--quick) compiles much slower than a release one."
    );
    println!();
}

/// `10000` as `10,000`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A phase run alone (`cargo xtask bench --<flag>`): writes its own JSON file with the tool,
/// the command, the time, the machine and `figures` (an object whose fields are added), and
/// says where it is.
pub fn write_alone(
    plan: &Plan,
    machine: &MachineInfo,
    flag: &str,
    figures: serde_json::Value,
    clock: Instant,
) -> Result<()> {
    let mut document = json!({
        "tool": format!("cargo xtask bench {flag}"),
        "command": format!("{} {flag}", plan.command),
        "started": timestamp(plan.started).iso,
        "elapsed_s": clock.elapsed().as_secs_f64(),
        "quick": plan.quick,
        "machine": machine,
    });
    if let (Some(document), serde_json::Value::Object(figures)) =
        (document.as_object_mut(), figures)
    {
        document.extend(figures);
    }
    if let Some(dir) = plan.json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&plan.json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", plan.json.display()))?;
    output::info(format!(
        "it took {:.0}s; every figure is in {}",
        clock.elapsed().as_secs_f64(),
        plan.json.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let t = timestamp(UNIX_EPOCH);
        assert_eq!(t.compact, "19700101T000000Z");
        assert_eq!(t.iso, "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day.
        let t = timestamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096));
        assert_eq!(t.iso, "2024-02-29T12:34:56Z");
        let t = timestamp(UNIX_EPOCH + Duration::from_secs(1_767_225_599));
        assert_eq!(t.iso, "2025-12-31T23:59:59Z");
    }

    #[test]
    fn spreads_have_a_median_and_a_range() {
        let s = Spread::of([3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::show(None, 1), "-");
        assert_eq!(Spread::show(Spread::of([1.0]), 2), "1.00");
        assert_eq!(
            Spread::show(Spread::of([1.0, 2.0, 4.0]), 1),
            "2.0 (1.0–4.0)"
        );
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(ratio(1.0, 4.0), 0.25);
    }

    #[test]
    fn the_table_is_aligned_markdown() {
        let summary = SetupSummary {
            setup: "linux".into(),
            rounds: 1,
            delivered_mpps: Spread::of([0.5]),
            offered_mpps: Spread::of([0.5]),
            pps_ratio_to_linux: Spread::of([1.0]),
            live_delivered_mpps: Spread::of([1.5]),
            live_offered_mpps: Spread::of([1.5]),
            live_pps_ratio_to_linux: Spread::of([1.0]),
            tcp_gbps: Spread::of([10.0]),
            tcp_ratio_to_linux: Spread::of([1.0]),
            rr_p50_us: Spread::of([20.0]),
            rr_p99_us: Spread::of([40.0]),
            rr_p50_ratio_to_linux: Spread::of([1.0]),
            bpf_ns_per_packet: None,
            live_bpf_ns_per_packet: None,
            data_bpf_ns_per_packet: None,
            live_data_bpf_ns_per_packet: None,
            cpu_busy_pct: vec![Spread::of([1.0]), Spread::of([100.0])],
        };
        let table = markdown_table(&[summary]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("| setup "));
        assert!(lines[0].ends_with("| CPU1 % (trafgen) |"));
        assert!(lines[0].contains("| live Mpps |"));
        assert!(lines[1].starts_with("| ---"));
        assert!(lines[1].ends_with(": |"));
        assert!(lines[2].starts_with("| `linux` "));
        let width = |l: &str| l.chars().count();
        assert_eq!(width(lines[0]), width(lines[1]));
        assert_eq!(width(lines[0]), width(lines[2]));
    }

    /// A packet rate of 1,000 delivered packets with these counters.
    fn rate(counters: Option<(u64, Option<u64>)>, kernel: [u64; 2]) -> PpsResult {
        PpsResult {
            generator: super::super::measure::Generator::Trafgen,
            interval_s: 1.0,
            delivered_packets: 1000,
            delivered_pps: 1000.0,
            offered_packets: 1000,
            offered_pps: 1000.0,
            gen_tx_dropped: 0,
            softnet_dropped: 0,
            softnet_time_squeeze: 0,
            cpus: Vec::new(),
            kernel_forwarded: kernel.to_vec(),
            programs: Vec::new(),
            dataplane_counters: counters.map(|(forwarded, from_data)| {
                super::super::measure::DataplaneCounters {
                    forwarded_packets: forwarded,
                    to_host_packets: 0,
                    dropped_packets: 0,
                    from_data_packets: from_data,
                }
            }),
            attempts: 1,
        }
    }

    #[test]
    fn cross_host_traffic_must_go_through_both_programs_and_no_kernel() {
        assert_eq!(
            cross_host_bypass(&rate(Some((1000, Some(1000))), [0, 0])),
            None
        );
        assert_eq!(
            cross_host_bypass(&rate(Some((950, Some(990))), [3, 0])),
            None
        );
        let host_a = cross_host_bypass(&rate(Some((490, Some(1000))), [0, 0]));
        assert!(host_a.is_some_and(|p| p.contains("host A")));
        let host_b = cross_host_bypass(&rate(Some((1000, None)), [0, 0]));
        assert!(host_b.is_some_and(|p| p.contains("host B")));
        let kernel = cross_host_bypass(&rate(Some((1000, Some(1000))), [0, 1000]));
        assert!(kernel.is_some_and(|p| p.contains("ForwDatagrams [0, 1000]")));
        assert!(cross_host_bypass(&rate(None, [0, 0])).is_some());
    }
}
