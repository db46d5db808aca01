//! The measurements: 64-byte UDP packets per second (trafgen), TCP
//! throughput (iperf3), TCP request/response latency (a ping-pong between two
//! threads that entered the workloads' namespaces), and around the packet
//! rate the counters that explain it: offered vs delivered, CPU time per CPU,
//! softnet drops, and our programs' bpf_stats and forwarding counters.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use testbed::{ChildGuard, Cmd, output, privileges, signals};

use super::{
    Ctx,
    active::{Active, Program},
    frames::udp_frame,
    loader::{dump_cmd, dump_json},
    topology::IPERF_PORT,
};
use crate::{sockets, topology::NetnsPair};

/// The request/response server's port in the sink.
const RR_PORT: u16 = 7101;
/// Bytes each way per request/response exchange.
const RR_MESSAGE: usize = 64;
/// Exchanges before the timed ones (connection warm-up).
const RR_WARMUP: usize = 200;

// ---------------------------------------------------------------------------
// Packet rate
// ---------------------------------------------------------------------------

/// CPU time of one CPU over an interval.
#[derive(Debug, Serialize)]
pub struct CpuUsage {
    pub cpu: usize,
    pub busy_pct: f64,
    pub softirq_pct: f64,
    pub system_pct: f64,
    pub user_pct: f64,
}

/// Run count and run time of one of our programs over the interval.
#[derive(Debug, Serialize)]
pub struct ProgramCost {
    pub id: u64,
    pub name: String,
    pub hooks: Vec<String>,
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: Option<f64>,
}

/// Our forwarding counters for the generator's endpoint over the interval (and, on two
/// hosts, the sink's on its host).
#[derive(Debug, Serialize)]
pub struct DataplaneCounters {
    /// Forwarded by gen's from-workload program: to a local workload on one host
    /// (`forwarded_packets`), to another host on two (`forwarded_remote_packets`).
    pub forwarded_packets: u64,
    pub to_host_packets: u64,
    pub dropped_packets: u64,
    /// Two hosts: delivered into the sink by host B's data-interface program
    /// (`from_data_interface_packets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_data_packets: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PpsResult {
    pub generator: Generator,
    /// Seconds between the two readings of the sink's counter.
    pub interval_s: f64,
    /// `Ip: InReceives` in the sink namespace.
    pub delivered_packets: u64,
    pub delivered_pps: f64,
    /// gen's eth0 transmitted + transmit-dropped packets.
    pub offered_packets: u64,
    pub offered_pps: f64,
    pub gen_tx_dropped: u64,
    /// /proc/net/softnet_stat, all CPUs: backlog drops and time squeezes.
    pub softnet_dropped: u64,
    pub softnet_time_squeeze: u64,
    pub cpus: Vec<CpuUsage>,
    /// `Ip: ForwDatagrams` of each host namespace (gen's host first): what the kernels
    /// forwarded.
    pub kernel_forwarded: Vec<u64>,
    /// Our programs (agent setups only).
    pub programs: Vec<ProgramCost>,
    pub dataplane_counters: Option<DataplaneCounters>,
    /// 2 when the first attempt failed (the generator gave up) and this is the second.
    pub attempts: u32,
}

impl PpsResult {
    /// ns per run of the from-workload program (TC ingress or XDP) that ran most (gen's).
    pub fn bpf_ns_per_packet(&self) -> Option<f64> {
        self.busiest_program(&["/tc_ingress", "/xdp"])
    }

    /// Two hosts: ns per run of the data-interface program that ran most (host B's).
    pub fn data_bpf_ns_per_packet(&self) -> Option<f64> {
        self.busiest_program(&["/data_tc_ingress", "/data_xdp"])
    }

    fn busiest_program(&self, hook_suffixes: &[&str]) -> Option<f64> {
        self.programs
            .iter()
            .filter(|p| {
                p.hooks
                    .iter()
                    .any(|h| hook_suffixes.iter().any(|s| h.ends_with(s)))
            })
            .max_by_key(|p| p.runs)
            .and_then(|p| p.ns_per_run)
    }

    /// What the kernels forwarded, over all host namespaces.
    pub fn kernel_forwarded_packets(&self) -> u64 {
        self.kernel_forwarded.iter().sum()
    }

    pub fn describe(&self) -> String {
        let mut text = format!(
            "delivered {:.3} Mpps, offered {:.3} Mpps ({} gen tx drops, {} backlog drops)",
            self.delivered_pps / 1e6,
            self.offered_pps / 1e6,
            self.gen_tx_dropped,
            self.softnet_dropped
        );
        for cpu in &self.cpus {
            let _ = write!(
                text,
                "; CPU{} {:.0}% busy ({:.0}% softirq)",
                cpu.cpu, cpu.busy_pct, cpu.softirq_pct
            );
        }
        for p in &self.programs {
            if let Some(ns) = p.ns_per_run {
                let _ = write!(text, "; {} {ns:.0} ns/run x {}", p.name, p.runs);
            }
        }
        if let Some(c) = &self.dataplane_counters {
            let _ = write!(
                text,
                "; BPF forwarded {}, passed to the kernel {}, dropped {}",
                c.forwarded_packets, c.to_host_packets, c.dropped_packets
            );
            if let Some(from_data) = c.from_data_packets {
                let _ = write!(text, ", delivered from the fabric {from_data}");
            }
        }
        let _ = write!(
            text,
            "; kernel forwarded {:?} (ForwDatagrams per host)",
            self.kernel_forwarded
        );
        text
    }
}

/// Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq
/// steal …
#[derive(Clone, Debug, Default, PartialEq)]
struct CpuTimes {
    cpu: usize,
    fields: Vec<u64>,
}

fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let cpu = words.next()?.strip_prefix("cpu")?.parse().ok()?;
            let fields = words.map_while(|w| w.parse().ok()).collect();
            Some(CpuTimes { cpu, fields })
        })
        .collect()
}

fn read_proc_stat() -> Result<Vec<CpuTimes>> {
    Ok(parse_proc_stat(
        &std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?,
    ))
}

/// User time above this share of a CPU means something else ran: trafgen,
/// iperf3, the ping-pong and the forwarding spend their time in the kernel.
const FOREIGN_USER_PCT: f64 = 10.0;

/// Warns when another program competed for the CPUs during a measurement.
fn warn_if_disturbed(cpus: &[CpuUsage], what: &str) {
    for cpu in cpus.iter().filter(|c| c.user_pct > FOREIGN_USER_PCT) {
        output::warn(format!(
            "CPU{} spent {:.0}% in user space during the {what}: another program was running \
             on this machine, so this figure is disturbed",
            cpu.cpu, cpu.user_pct
        ));
    }
}

fn cpu_usage(before: &[CpuTimes], after: &[CpuTimes]) -> Vec<CpuUsage> {
    let field = |t: &CpuTimes, i: usize| t.fields.get(i).copied().unwrap_or(0);
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.cpu == a.cpu)?;
            // guest time is already counted in user time.
            let total = |t: &CpuTimes| (0..8).map(|i| field(t, i)).sum::<u64>();
            let delta = |i: usize| field(a, i).saturating_sub(field(b, i)) as f64;
            let all = total(a).saturating_sub(total(b)) as f64;
            if all == 0.0 {
                return None;
            }
            let pct = |x: f64| 100.0 * x / all;
            Some(CpuUsage {
                cpu: a.cpu,
                busy_pct: pct(all - delta(3) - delta(4)),
                softirq_pct: pct(delta(6)),
                system_pct: pct(delta(2)),
                user_pct: pct(delta(0) + delta(1)),
            })
        })
        .collect()
}

/// Sums of the "dropped" and "time_squeeze" columns of
/// /proc/net/softnet_stat (hexadecimal, one line per CPU).
fn parse_softnet(text: &str) -> (u64, u64) {
    text.lines().fold((0, 0), |(dropped, squeezed), line| {
        let cols: Vec<u64> = line
            .split_whitespace()
            .map_while(|c| u64::from_str_radix(c, 16).ok())
            .collect();
        (
            dropped + cols.get(1).copied().unwrap_or(0),
            squeezed + cols.get(2).copied().unwrap_or(0),
        )
    })
}

/// A value from /proc/net/snmp: `Ip: ... InReceives ...` header, then values.
pub fn snmp_value(text: &str, group: &str, name: &str) -> Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(header), Some(values)) = (lines.next(), lines.next()) {
        let index = header.split_whitespace().position(|w| w == name);
        if let Some(index) = index {
            return values
                .split_whitespace()
                .nth(index)
                .with_context(|| format!("no value for {group}: {name}"))?
                .parse()
                .with_context(|| format!("invalid value for {group}: {name}"));
        }
    }
    bail!("no {group}: {name} in /proc/net/snmp")
}

/// Transmitted and transmit-dropped packets from `ip -s -j link show`.
pub fn link_tx(json: &str) -> Result<(u64, u64)> {
    let value: Value = serde_json::from_str(json).context("`ip -j link` printed invalid JSON")?;
    let tx = &value[0]["stats64"]["tx"];
    let packets = tx["packets"]
        .as_u64()
        .context("no stats64.tx.packets in `ip -s -j link`")?;
    Ok((packets, tx["dropped"].as_u64().unwrap_or(0)))
}

/// Program id -> (name, run_time_ns, run_cnt) from `bpftool prog show -j`.
fn program_stats(json: &str) -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let value: Value =
        serde_json::from_str(json).context("`bpftool prog show -j` printed invalid JSON")?;
    let Value::Array(progs) = value else {
        bail!("`bpftool prog show -j` did not print an array");
    };
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            let name = p["name"].as_str().unwrap_or("?").to_owned();
            // Absent until the program has run with stats enabled.
            let time = p["run_time_ns"].as_u64().unwrap_or(0);
            let count = p["run_cnt"].as_u64().unwrap_or(0);
            Some((id, (name, time, count)))
        })
        .collect())
}

/// The counters row of `iface` in `dump counters -o json`.
fn counters_row<'v>(value: &'v Value, iface: &str) -> Option<&'v Value> {
    value
        .as_array()?
        .iter()
        .find(|r| r["interface"].as_str() == Some(iface))
}

/// (forwarded, to host, dropped) packets counted for `iface`; forwarded is
/// `forwarded_field` (`forwarded_packets`, or `forwarded_remote_packets` on two hosts).
pub fn endpoint_counters(
    value: &Value,
    iface: &str,
    forwarded_field: &str,
) -> Option<(u64, u64, u64)> {
    let row = counters_row(value, iface)?;
    let drops = row["drops"]
        .as_object()
        .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
    Some((
        row[forwarded_field].as_u64()?,
        row["to_host_packets"].as_u64().unwrap_or(0),
        drops,
    ))
}

/// Everything read at the start and at the end of the counted interval.
struct Snapshot {
    sink_in_receives: u64,
    sink_at: Instant,
    gen_tx: (u64, u64),
    gen_at: Instant,
    cpus: Vec<CpuTimes>,
    softnet: (u64, u64),
    kernel_forwarded: Vec<u64>,
    counters: Option<(u64, u64, u64)>,
    /// Two hosts: the sink's `from_data_interface_packets` on its host.
    from_data: Option<u64>,
}

impl Snapshot {
    fn take(ctx: &Ctx<'_>, agent: bool) -> Result<Self> {
        let topo = ctx.topo;
        // The sink's counter first and on its own, for a precise interval.
        let snmp = topo
            .sink
            .netns
            .command("cat")
            .arg("/proc/net/snmp")
            .output()?;
        let sink_at = Instant::now();
        let sink_in_receives = snmp_value(&snmp, "Ip", "InReceives")?;
        let gen_link = topo
            .gen_wl
            .netns
            .ip(["-s", "-j", "link", "show", "dev", "eth0"])
            .output()?;
        let gen_at = Instant::now();
        let cpus = read_proc_stat()?;
        let softnet = parse_softnet(
            &std::fs::read_to_string("/proc/net/softnet_stat")
                .context("cannot read /proc/net/softnet_stat")?,
        );
        let kernel_forwarded = topo
            .hosts()
            .iter()
            .map(|host| {
                let snmp = host.command("cat").arg("/proc/net/snmp").output()?;
                snmp_value(&snmp, "Ip", "ForwDatagrams")
            })
            .collect::<Result<Vec<u64>>>()?;
        let (counters, from_data) = match (agent, ctx.sink_pin_path) {
            (false, _) => (None, None),
            (true, None) => (
                endpoint_counters(
                    &dump_json(ctx, "counters")?,
                    &topo.gen_wl.host_if,
                    "forwarded_packets",
                ),
                None,
            ),
            (true, Some(sink_pins)) => {
                let sink_counters = dump_cmd(ctx.loader, sink_pins, "counters").output()?;
                let sink_counters: Value = serde_json::from_str(&sink_counters)
                    .context("`dump counters -o json` printed invalid JSON")?;
                (
                    endpoint_counters(
                        &dump_json(ctx, "counters")?,
                        &topo.gen_wl.host_if,
                        "forwarded_remote_packets",
                    ),
                    counters_row(&sink_counters, &topo.sink.host_if)
                        .and_then(|row| row["from_data_interface_packets"].as_u64()),
                )
            }
        };
        Ok(Self {
            sink_in_receives,
            sink_at,
            gen_tx: link_tx(&gen_link)?,
            gen_at,
            cpus,
            softnet,
            kernel_forwarded,
            counters,
            from_data,
        })
    }
}

/// What sends the 64-byte UDP frames from gen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// trafgen: socket buffers from a packet socket's transmit ring, like packets born in a
    /// workload's stack.
    Trafgen,
    /// BPF_PROG_TEST_RUN live frames (`bench-live-gen`): `xdp_frame`s sent by XDP_TX, like
    /// frames from a NIC or a VM's tap.
    LiveFrames,
}

impl Generator {
    pub const ALL: [Self; 2] = [Self::Trafgen, Self::LiveFrames];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trafgen => "trafgen",
            Self::LiveFrames => "live frames",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Trafgen => "[trafgen]",
            Self::LiveFrames => "[live frames]",
        }
    }

    fn spawn(self, ctx: &Ctx<'_>, run_for: Duration) -> Result<ChildGuard> {
        let plan = ctx.plan;
        let gen_ns = &ctx.topo.gen_wl.netns;
        let child = match self {
            Self::Trafgen => {
                let cpus = (plan.generator_cpu + 1).to_string();
                gen_ns
                    .command("timeout")
                    .args(["--preserve-status", "-s", "INT", "-k", "5"])
                    .arg(format!("{:.1}", run_for.as_secs_f64()))
                    .arg("trafgen")
                    // Leave the system's socket memory and IRQ affinities alone; fork a
                    // worker per CPU up to the generator's: only its cpu(N) sends.
                    .args(["--no-sock-mem", "--notouch-irq", "--cpus", &cpus])
                    .args(["--dev", "eth0", "--conf"])
                    .arg(ctx.trafgen_config)
                    .spawn_prefixed(self.prefix())?
            }
            Self::LiveFrames => {
                let topo = ctx.topo;
                let frame = udp_frame(&topo.gen_wl.mac, topo.gen_wl.ipv4, topo.sink.ipv4)?;
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                let exe = std::env::current_exe().context("cannot find the xtask binary")?;
                gen_ns
                    .command(exe)
                    .args(["bench-live-gen", "--ifname", "eth0"])
                    .args(["--cpu", &plan.generator_cpu.to_string()])
                    .args(["--seconds", &format!("{:.1}", run_for.as_secs_f64())])
                    .args(["--frame", &hex])
                    .spawn_prefixed(self.prefix())?
            }
        };
        Ok(ChildGuard::new(self.as_str(), child, true))
    }
}

/// Runs the generator in gen for warm-up + duration, and reads the counters
/// after the warm-up and at the end.
pub fn packet_rate(
    ctx: &Ctx<'_>,
    active: &Active<'_>,
    programs: &[Program],
    generator: Generator,
) -> Result<PpsResult> {
    let plan = ctx.plan;
    let name = generator.as_str();
    let prefix = generator.prefix();
    // We stop the generator after the second snapshot; its own time limit is
    // a safety net.
    let run_for = plan.warmup + plan.duration + Duration::from_secs(10);
    let mut sender = generator.spawn(ctx, run_for)?;

    // Our programs' cost comes from the warm-up, with bpf_stats on; the rate
    // is counted with it off, as its clock reads (two per program run) would
    // slow our setups only.
    let agent = active.is_agent();
    let read_programs = || -> Result<BTreeMap<u64, (String, u64, u64)>> {
        if !agent {
            return Ok(BTreeMap::new());
        }
        let json = Cmd::new("bpftool")
            .args(["prog", "show", "-j"])
            .privileged()
            .output()?;
        program_stats(&json)
    };
    let warmup_start = read_programs()?;
    signals::sleep(plan.warmup)?;
    if let Some(status) = sender.try_wait()? {
        bail!("{name} exited during the warm-up ({status}); see its {prefix} lines");
    }
    let warmup_end = read_programs()?;
    let before = Snapshot::take(ctx, agent)?;
    if agent {
        ctx.bpf_stats.set_again("0")?;
    }
    signals::sleep(plan.duration.saturating_sub(before.sink_at.elapsed()))?;
    let after = Snapshot::take(ctx, agent)?;
    if agent {
        ctx.bpf_stats.set_again("1")?;
    }
    if sender.try_wait()?.is_some() {
        bail!("{name} stopped before the end of the interval; see its {prefix} lines");
    }

    // Stop it now rather than at its time limit (SIGTERM; `timeout` passes it
    // on to trafgen's processes); both print a summary.
    match sender.stop(Duration::from_secs(10)) {
        Some(status) if status.success() => {}
        Some(status) => bail!("{name} failed ({status}); see its {prefix} lines"),
        None => bail!("{name} did not stop"),
    }

    let interval = (after.sink_at - before.sink_at).as_secs_f64();
    let gen_interval = (after.gen_at - before.gen_at).as_secs_f64();
    let delivered = after
        .sink_in_receives
        .saturating_sub(before.sink_in_receives);
    let tx = after.gen_tx.0.saturating_sub(before.gen_tx.0);
    let tx_dropped = after.gen_tx.1.saturating_sub(before.gen_tx.1);
    let costs = programs
        .iter()
        .map(|p| {
            let (name, time_b, runs_b) = warmup_start.get(&p.id).cloned().unwrap_or_default();
            let (_, time_a, runs_a) = warmup_end.get(&p.id).cloned().unwrap_or_default();
            let runs = runs_a.saturating_sub(runs_b);
            let run_time_ns = time_a.saturating_sub(time_b);
            ProgramCost {
                id: p.id,
                name,
                hooks: p.hooks.clone(),
                runs,
                run_time_ns,
                ns_per_run: (runs > 0).then(|| run_time_ns as f64 / runs as f64),
            }
        })
        .collect();
    let dataplane_counters = match (before.counters, after.counters) {
        (Some(b), Some(a)) => Some(DataplaneCounters {
            forwarded_packets: a.0.saturating_sub(b.0),
            to_host_packets: a.1.saturating_sub(b.1),
            dropped_packets: a.2.saturating_sub(b.2),
            from_data_packets: before
                .from_data
                .zip(after.from_data)
                .map(|(b, a)| a.saturating_sub(b)),
        }),
        _ => None,
    };
    let kernel_forwarded = after
        .kernel_forwarded
        .iter()
        .zip(&before.kernel_forwarded)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let result = PpsResult {
        generator,
        interval_s: interval,
        delivered_packets: delivered,
        delivered_pps: delivered as f64 / interval,
        offered_packets: tx + tx_dropped,
        offered_pps: (tx + tx_dropped) as f64 / gen_interval,
        gen_tx_dropped: tx_dropped,
        softnet_dropped: after.softnet.0.saturating_sub(before.softnet.0),
        softnet_time_squeeze: after.softnet.1.saturating_sub(before.softnet.1),
        cpus: cpu_usage(&before.cpus, &after.cpus),
        kernel_forwarded,
        programs: costs,
        dataplane_counters,
        attempts: 1,
    };
    warn_if_disturbed(&result.cpus, "packet-rate measurement");
    if agent {
        check_fast_path(&result);
    }
    Ok(result)
}

/// Warns when the packets did not go through our from-workload program.
fn check_fast_path(result: &PpsResult) {
    let forwarded = result
        .dataplane_counters
        .as_ref()
        .map_or(0, |c| c.forwarded_packets);
    if result.delivered_packets > 0 && forwarded < result.delivered_packets / 2 {
        output::warn(format!(
            "only {forwarded} of {} delivered packets were forwarded by our programs",
            result.delivered_packets
        ));
    }
}

// ---------------------------------------------------------------------------
// TCP throughput
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
pub struct TcpResult {
    /// What the receiver got, bits/s.
    pub received_bps: f64,
    pub sent_bps: f64,
    pub retransmits: Option<u64>,
    /// iperf3's own CPU utilisation of the sender and the receiver (percent
    /// of one CPU).
    pub sender_cpu_pct: Option<f64>,
    pub receiver_cpu_pct: Option<f64>,
    /// CPU time of each CPU during the iperf3 run.
    pub cpus: Vec<CpuUsage>,
    pub error: Option<String>,
}

impl TcpResult {
    pub fn gbps(&self) -> f64 {
        self.received_bps / 1e9
    }

    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }

    pub fn describe(&self) -> String {
        match &self.error {
            Some(err) => format!("TCP failed: {err}"),
            None => format!(
                "{:.2} Gbit/s received ({} retransmits; CPU sender {:.0}%, receiver {:.0}%)",
                self.gbps(),
                self.retransmits.map_or("?".into(), |r| r.to_string()),
                self.sender_cpu_pct.unwrap_or(f64::NAN),
                self.receiver_cpu_pct.unwrap_or(f64::NAN),
            ),
        }
    }
}

/// iperf3 client in gen against the server in sink.
pub fn tcp_throughput(ctx: &Ctx<'_>) -> Result<TcpResult> {
    let secs = ctx.plan.duration.as_secs();
    let before = read_proc_stat()?;
    let output = ctx
        .topo
        .gen_wl
        .netns
        .command("timeout")
        .arg((secs + 20).to_string())
        .arg("iperf3")
        .args([
            "-c",
            &ctx.topo.sink.ipv4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .capture()?;
    signals::check_interrupted()?;
    let cpus = cpu_usage(&before, &read_proc_stat()?);
    warn_if_disturbed(&cpus, "TCP measurement");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = parse_iperf3(&stdout).unwrap_or_else(|err| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        TcpResult::failed(format!("{err:#} ({}) {}", output.status, stderr.trim()))
    });
    Ok(TcpResult { cpus, ..result })
}

fn parse_iperf3(json: &str) -> Result<TcpResult> {
    let value: Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(error) = value["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let end = &value["end"];
    Ok(TcpResult {
        received_bps: end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second in iperf3's JSON")?,
        sent_bps: end["sum_sent"]["bits_per_second"].as_f64().unwrap_or(0.0),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        sender_cpu_pct: end["cpu_utilization_percent"]["host_total"].as_f64(),
        receiver_cpu_pct: end["cpu_utilization_percent"]["remote_total"].as_f64(),
        cpus: Vec::new(),
        error: None,
    })
}

// ---------------------------------------------------------------------------
// Request/response latency
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RrResult {
    pub exchanges: usize,
    pub message_bytes: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub error: Option<String>,
}

impl RrResult {
    fn from_samples(mut nanos: Vec<u64>) -> Result<Self> {
        if nanos.is_empty() {
            bail!("no request/response exchange completed");
        }
        nanos.sort_unstable();
        let us = |ns: u64| ns as f64 / 1e3;
        Ok(Self {
            exchanges: nanos.len(),
            message_bytes: RR_MESSAGE,
            p50_us: us(percentile(&nanos, 50.0)),
            p90_us: us(percentile(&nanos, 90.0)),
            p99_us: us(percentile(&nanos, 99.0)),
            mean_us: us(nanos.iter().sum::<u64>() / nanos.len() as u64),
            min_us: us(nanos[0]),
            max_us: us(nanos[nanos.len() - 1]),
            error: None,
        })
    }

    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn describe(&self) -> String {
        match &self.error {
            Some(err) => format!("request/response failed: {err}"),
            None => format!(
                "p50 {:.1} us, p99 {:.1} us over {} exchanges of {} bytes",
                self.p50_us, self.p99_us, self.exchanges, self.message_bytes
            ),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The ping-pong between gen and sink, in this process when root, else
/// through `sudo xtask bench-rr` (entering a namespace needs root).
pub fn request_response(ctx: &Ctx<'_>) -> Result<RrResult> {
    let pair = NetnsPair {
        server_netns: ctx.topo.sink.netns.name().to_owned(),
        client_netns: ctx.topo.gen_wl.netns.name().to_owned(),
        addr: SocketAddr::new(ctx.topo.sink.ipv4.into(), RR_PORT),
    };
    let cpu = ctx.plan.latency_cpu;
    let result = if privileges::is_root() {
        ping_pong(&pair, ctx.plan.latency, cpu)
    } else {
        pair.xtask_as_root("bench-rr")
            .and_then(|cmd| {
                cmd.args(["--millis", &ctx.plan.latency.as_millis().to_string()])
                    .args(["--cpu", &cpu.to_string()])
                    .output()
                    .map_err(anyhow::Error::from)
            })
            .and_then(|out| serde_json::from_str(&out).context("bench-rr printed invalid JSON"))
    };
    signals::check_interrupted()?;
    Ok(result.unwrap_or_else(|err| RrResult::failed(format!("{err:#}"))))
}

/// Runs `f` on a new thread that has entered network namespace `netns` and
/// is pinned to `cpu`: sockets it creates live in that namespace.
fn spawn_in_netns<T, F>(netns: &str, cpu: usize, f: F) -> thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    sockets::spawn_in_netns(netns, move || {
        pin_current_thread(cpu)?;
        f()
    })
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data, all zeroes is the empty set; CPU_SET
    // is bounds-checked by the caller below; sched_setaffinity(0, ...) only
    // affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("CPU {cpu} is out of range");
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot pin a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

/// One TCP connection gen -> sink; `RR_MESSAGE` bytes each way per exchange,
/// back to back, for `duration` after a warm-up, both ends pinned to `cpu`.
/// Returns the round-trip times' distribution.
pub fn ping_pong(pair: &NetnsPair, duration: Duration, cpu: usize) -> Result<RrResult> {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let addr = pair.addr;
    let (ready_tx, ready_rx) = mpsc::channel();

    let server = spawn_in_netns(&pair.server_netns, cpu, move || -> Result<()> {
        let (mut stream, _) =
            sockets::accept_one(addr, &ready_tx, TIMEOUT, Duration::from_millis(10))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; RR_MESSAGE];
        loop {
            match stream.read_exact(&mut buf) {
                Ok(()) => stream.write_all(&buf).context("server: replying")?,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e).context("server: reading a request"),
            }
        }
    });
    if ready_rx.recv_timeout(TIMEOUT).is_err() {
        sockets::join(server, "server")?;
        bail!("the request/response server did not start");
    }

    let client = spawn_in_netns(&pair.client_netns, cpu, move || -> Result<Vec<u64>> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("client: cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let request = [0x5a_u8; RR_MESSAGE];
        let mut reply = [0u8; RR_MESSAGE];
        let mut exchange = |stream: &mut TcpStream| -> Result<()> {
            stream.write_all(&request).context("client: sending")?;
            stream
                .read_exact(&mut reply)
                .context("client: reading the reply")
        };
        for _ in 0..RR_WARMUP {
            exchange(&mut stream)?;
        }
        let mut nanos = Vec::with_capacity(1 << 16);
        let end = Instant::now() + duration;
        while Instant::now() < end {
            signals::check_interrupted()?;
            let start = Instant::now();
            exchange(&mut stream)?;
            nanos.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        Ok(nanos)
    });
    let client = sockets::join(client, "client");
    let server = sockets::join(server, "server");
    let nanos = client?;
    server?;
    RrResult::from_samples(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_values_are_found_by_name() {
        let text = "Ip: Forwarding DefaultTTL InReceives InHdrErrors\n\
                    Ip: 1 64 12345 0\n\
                    Icmp: InMsgs InReceives\n\
                    Icmp: 7 8\n";
        assert_eq!(snmp_value(text, "Ip", "InReceives").expect("found"), 12345);
        assert_eq!(snmp_value(text, "Icmp", "InReceives").expect("found"), 8);
        assert!(snmp_value(text, "Ip", "OutRequests").is_err());
        assert!(snmp_value("", "Ip", "InReceives").is_err());
    }

    #[test]
    fn cpu_usage_splits_busy_softirq_and_idle() {
        let before = parse_proc_stat(
            "cpu  1 0 1 10 0 0 0 0 0 0\n\
             cpu0 100 0 50 1000 0 0 10 0 0 0\n\
             cpu1 100 0 50 1000 0 0 10 0 0 0\n\
             intr 5\n",
        );
        let after = parse_proc_stat(
            "cpu0 100 0 50 1100 0 0 10 0 0 0\n\
             cpu1 110 0 80 1100 0 0 70 0 0 0\n",
        );
        assert_eq!(before.len(), 2, "the aggregate line is skipped");
        let usage = cpu_usage(&before, &after);
        assert_eq!(usage[0].cpu, 0);
        assert!(usage[0].busy_pct.abs() < 1e-9);
        assert!((usage[1].busy_pct - 50.0).abs() < 1e-9);
        assert!((usage[1].softirq_pct - 30.0).abs() < 1e-9);
        assert!((usage[1].system_pct - 15.0).abs() < 1e-9);
    }

    #[test]
    fn softnet_columns_are_hexadecimal() {
        let text = "3ec092e2 00000010 0000002a 00000000\n00ef8432 00000001 00000000 00000000\n";
        assert_eq!(parse_softnet(text), (0x11, 0x2a));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        let rr = RrResult::from_samples(vec![3000, 1000, 2000]).expect("samples");
        assert!((rr.p50_us - 2.0).abs() < 1e-9);
        assert!((rr.min_us - 1.0).abs() < 1e-9);
        assert!(RrResult::from_samples(Vec::new()).is_err());
    }

    #[test]
    fn iperf3_json_and_errors_are_parsed() {
        let ok = r#"{"end": {"sum_sent": {"bits_per_second": 2e9, "retransmits": 3},
                     "sum_received": {"bits_per_second": 1.5e9},
                     "cpu_utilization_percent": {"host_total": 50.0, "remote_total": 20.0}}}"#;
        let tcp = parse_iperf3(ok).expect("valid");
        assert!((tcp.gbps() - 1.5).abs() < 1e-9);
        assert_eq!(tcp.retransmits, Some(3));
        let err = parse_iperf3(r#"{"start": {}, "error": "unable to connect"}"#);
        assert!(
            err.expect_err("error")
                .to_string()
                .contains("unable to connect")
        );
        assert!(parse_iperf3("").is_err());
    }

    #[test]
    fn bpftool_and_counters_json_are_read() {
        let progs = r#"[{"id": 7, "name": "calico_tc_from_wl", "run_time_ns": 100, "run_cnt": 4},
                        {"id": 8, "name": "other"}]"#;
        let stats = program_stats(progs).expect("valid");
        assert_eq!(stats[&7], ("calico_tc_from_wl".to_owned(), 100, 4));
        assert_eq!(stats[&8], ("other".to_owned(), 0, 0));
        let counters: Value = serde_json::from_str(
            r#"[{"interface": "calibenchgen", "forwarded_packets": 5, "to_host_packets": 1,
                 "drops": {"malformed": 2, "blackhole": 1}}]"#,
        )
        .expect("json");
        assert_eq!(
            endpoint_counters(&counters, "calibenchgen", "forwarded_packets"),
            Some((5, 1, 3))
        );
        assert_eq!(
            endpoint_counters(&counters, "calibenchsink", "forwarded_packets"),
            None
        );
        assert_eq!(
            endpoint_counters(&counters, "calibenchgen", "forwarded_remote_packets"),
            None,
            "a missing counter is not read as 0"
        );
        let link = r#"[{"stats64": {"tx": {"packets": 10, "dropped": 2}}}]"#;
        assert_eq!(link_tx(link).expect("valid"), (10, 2));
    }
}
