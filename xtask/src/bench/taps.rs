//! VM to VM on one host, tap to tap. A host namespace `cbench-tap-<pid>` holds two taps,
//! `tapbencha` and `tapbenchb`, each held by this process as a VM's virtio backend holds
//! one (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`, non-blocking, as QEMU opens it). A generator
//! thread writes the same 64-byte UDP frame into tap A, one `write` per frame, as fast as it
//! can (VM A → VM B); a sink thread reads tap B and counts the frames. Packets/s are counted
//! at the sink.
//!
//! Setups, alternated within each round:
//! - `tap-linux`: the kernel forwards between the taps (`ip_forward=1`, a route
//!   `<ip>/32 dev tapX scope link` and a permanent neighbour entry per VM, as the classic
//!   Calico host writes them);
//! - `tap-ours-tc` and `tap-ours-xdp`: the agent with the two taps as WorkloadEndpoints (with
//!   `mac`, as networking-calico writes them), `--attach-mode tc` or `xdp`.
//!
//! Each measurement checks who carried the traffic: in `tap-linux` the namespace's
//! `Ip: ForwDatagrams` must grow by at least 90 % of the frames the sink read; in ours, the
//! programs' `forwarded_packets` for tap A must, and `ForwDatagrams` by less than 1 % (the
//! kernel did not forward).

use std::{
    net::Ipv4Addr,
    ops::ControlFlow,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use testbed::{Netns, netns, output, signals};

use super::{
    frames::udp_frame,
    loader::{NAMESPACE, NODE, dump_cmd},
    measure::{endpoint_counters, link_tx, pin_current_thread, snmp_value},
    phase_agent::PhaseAgent,
};
use crate::topology::{ALLOW_ALL_PROFILE, AttachMode, HOST_SIDE_MAC, allow_all_profile_yaml};

const TAP_A: &str = "tapbencha";
const TAP_B: &str = "tapbenchb";
const VM_A_MAC: &str = "fa:16:3e:00:00:01";
const VM_B_MAC: &str = "fa:16:3e:00:00:02";
const VM_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const VM_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);

/// Serialised as named in the report: `tap-linux`, `tap-ours-tc`, `tap-ours-xdp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapSetup {
    Linux,
    OursTc,
    OursXdp,
}

impl Serialize for TapSetup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl TapSetup {
    pub const ALL: [Self; 3] = [Self::Linux, Self::OursTc, Self::OursXdp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "tap-linux",
            Self::OursTc => "tap-ours-tc",
            Self::OursXdp => "tap-ours-xdp",
        }
    }
}

/// One measurement.
#[derive(Debug, Serialize)]
pub struct TapRate {
    pub round: u32,
    pub setup: TapSetup,
    /// Frames our forwarding put into tap B's queue per second: read by the sink, or dropped
    /// there because its queue was full (tap B's transmit packets + transmit drops). This is
    /// the dataplane's figure; the goal check uses it.
    pub reached_tap_b_pps: f64,
    /// Frames the sink read from tap B per second (its reads, one per frame, on another CPU).
    pub delivered_pps: f64,
    /// Frames written into tap A per second.
    pub offered_pps: f64,
    /// Frames written per second of the generator thread's own CPU time
    /// (`CLOCK_THREAD_CPUTIME_ID`). A write to a tap runs the whole receive path (forwarding
    /// or the XDP program, and the enqueue into tap B) in the writer's context, so this is
    /// the rate one CPU sustains through the path, whatever share of the CPU the thread got
    /// on a shared machine.
    pub per_generator_cpu_second: f64,
    /// Frames tap B dropped (its queue full: the sink did not read fast enough) per second.
    pub tap_b_dropped_pps: f64,
    /// `Ip: ForwDatagrams` of the host namespace over the interval.
    pub kernel_forwarded: u64,
    /// Our programs' `forwarded_packets` for tap A over the interval (ours only).
    pub programs_forwarded: Option<u64>,
    /// Frames read from tap B over the interval.
    pub delivered_frames: u64,
}

#[derive(Debug, Serialize)]
pub struct TapToTap {
    /// `release` (a full run) or `debug` (`--quick`).
    pub agent_build: &'static str,
    pub rates: Vec<TapRate>,
    /// Median `reached_tap_b_pps` per setup.
    pub median_pps: Vec<(TapSetup, f64)>,
    /// tap-ours-xdp / tap-linux, from the medians; the goal is at least 2.
    pub xdp_vs_linux: Option<f64>,
    pub tc_vs_linux: Option<f64>,
    /// Median `per_generator_cpu_second` per setup, and the same ratios from it.
    pub median_per_generator_cpu_second: Vec<(TapSetup, f64)>,
    pub xdp_vs_linux_per_cpu: Option<f64>,
    pub tc_vs_linux_per_cpu: Option<f64>,
}

/// A tap held by this process, as a VM's backend holds it.
struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Creates `name` in `host` (a thread enters it to open /dev/net/tun), non-blocking, and
    /// brings it up with the host-side MAC.
    fn create(host: &Netns, name: &'static str) -> Result<Self> {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const IFF_TAP: libc::c_short = 0x0002;
        const IFF_NO_PI: libc::c_short = 0x1000;
        let path = host.path();
        let fd = std::thread::spawn(move || -> Result<OwnedFd> {
            netns::enter_thread(&path)?;
            // SAFETY: plain open; the fd is owned right after.
            let raw = unsafe {
                libc::open(
                    c"/dev/net/tun".as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("cannot open /dev/net/tun");
            }
            // SAFETY: `raw` is ours.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name.as_bytes());
            ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
            // SAFETY: `ifr` is a live struct ifreq-sized buffer.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("TUNSETIFF {name}"));
            }
            Ok(fd)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread creating {name} panicked"))??;
        host.ip(["link", "set", "dev", name, "address", HOST_SIDE_MAC, "up"])
            .run()?;
        Ok(Self { fd })
    }
}

fn endpoint_yaml(vm: &str, tap: &str, mac: &str, ip: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  \
         name: {NODE}-openstack-{vm}-eth0\n  namespace: {NAMESPACE}\n  labels: {{app: {vm}}}\n\
         spec:\n  node: {NODE}\n  orchestrator: openstack\n  workload: {vm}\n  \
         endpoint: eth0\n  interfaceName: {tap}\n  mac: \"{mac}\"\n  \
         ipNetworks: [\"{ip}/32\"]\n  profiles: [{ALLOW_ALL_PROFILE}]\n"
    )
}

pub struct TapPlan {
    pub rounds: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub generator_cpu: usize,
    pub sink_cpu: usize,
    pub release: bool,
}

pub fn measure(loader: &Path, scratch: &Path, pid: u32, plan: &TapPlan) -> Result<TapToTap> {
    output::step("VM to VM on one host: tap -> tap, 64-byte UDP");
    output::explain(format!(
        "Two taps in cbench-tap-{pid}, held by this process as a VM's virtio backend holds them\n\
         (non-blocking /dev/net/tun). A thread on CPU {} writes 64-byte UDP frames into {TAP_A},\n\
         one write per frame; a thread on CPU {} reads {TAP_B} and counts. Setups: {}.",
        plan.generator_cpu,
        plan.sink_cpu,
        TapSetup::ALL.map(TapSetup::as_str).join(", ")
    ));
    let host = Netns::create(format!("cbench-tap-{pid}"))?;
    host.command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .run()?;
    let tap_a = Tap::create(&host, TAP_A)?;
    let tap_b = Tap::create(&host, TAP_B)?;
    let datastore = scratch.join("tap-datastore");
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    let mut yaml = allow_all_profile_yaml();
    yaml.push_str(&endpoint_yaml("vma", TAP_A, VM_A_MAC, VM_A_IP));
    yaml.push_str(&endpoint_yaml("vmb", TAP_B, VM_B_MAC, VM_B_IP));
    std::fs::write(datastore.join("endpoints.yaml"), yaml).context("cannot write the datastore")?;
    let frame = udp_frame(VM_A_MAC, VM_A_IP, VM_B_IP)?;
    let env = Env {
        loader,
        scratch,
        pid,
        host: &host,
        datastore: &datastore,
        tap_a: &tap_a,
        tap_b: &tap_b,
        frame,
        plan,
    };
    let mut rates = Vec::new();
    for round in 1..=plan.rounds {
        for setup in TapSetup::ALL {
            output::info(format!("round {round}/{}: {}", plan.rounds, setup.as_str()));
            let rate = env
                .measure_setup(setup, round)
                .with_context(|| format!("round {round}, {}", setup.as_str()))?;
            output::info(format!(
                "{}: {:.0} packets/s into {TAP_B} ({:.0} read by the sink, {:.0} written into \
                 {TAP_A}, {:.0}/s dropped at {TAP_B}'s full queue; {:.0} per second of the \
                 generator's CPU time); kernel forwarded {}, our programs forwarded {}",
                setup.as_str(),
                rate.reached_tap_b_pps,
                rate.delivered_pps,
                rate.offered_pps,
                rate.tap_b_dropped_pps,
                rate.per_generator_cpu_second,
                rate.kernel_forwarded,
                rate.programs_forwarded
                    .map_or("-".to_owned(), |v| v.to_string())
            ));
            rates.push(rate);
        }
    }
    drop(tap_a);
    drop(tap_b);
    drop(host);
    let median_pps = medians(&rates, |r| r.reached_tap_b_pps);
    let median_per_cpu = medians(&rates, |r| r.per_generator_cpu_second);
    Ok(TapToTap {
        agent_build: if plan.release { "release" } else { "debug" },
        xdp_vs_linux: ratio(&median_pps, TapSetup::OursXdp),
        tc_vs_linux: ratio(&median_pps, TapSetup::OursTc),
        xdp_vs_linux_per_cpu: ratio(&median_per_cpu, TapSetup::OursXdp),
        tc_vs_linux_per_cpu: ratio(&median_per_cpu, TapSetup::OursTc),
        median_pps,
        median_per_generator_cpu_second: median_per_cpu,
        rates,
    })
}

/// Whether a forwarding count over the interval covers at least 90 % of the frames the sink
/// read: the frames in tap B's queue when the interval started (up to its 1,000) were forwarded
/// before it, and the counters are not read at the same instant as the sink's count.
fn carried_most(forwarded: u64, read: u64) -> bool {
    forwarded.saturating_mul(10) >= read.saturating_mul(9)
}

/// The median of `figure` per setup.
fn medians(rates: &[TapRate], figure: impl Fn(&TapRate) -> f64) -> Vec<(TapSetup, f64)> {
    TapSetup::ALL
        .iter()
        .map(|&s| {
            let mut v: Vec<f64> = rates.iter().filter(|r| r.setup == s).map(&figure).collect();
            v.sort_by(f64::total_cmp);
            (s, v.get(v.len() / 2).copied().unwrap_or(0.0))
        })
        .collect()
}

/// `setup`'s median over tap-linux's.
fn ratio(medians: &[(TapSetup, f64)], setup: TapSetup) -> Option<f64> {
    let of = |s: TapSetup| medians.iter().find(|(k, _)| *k == s).map(|(_, v)| *v);
    match (of(setup), of(TapSetup::Linux)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

struct Env<'a> {
    loader: &'a Path,
    scratch: &'a Path,
    pid: u32,
    host: &'a Netns,
    datastore: &'a Path,
    tap_a: &'a Tap,
    tap_b: &'a Tap,
    frame: [u8; 60],
    plan: &'a TapPlan,
}

impl Env<'_> {
    fn measure_setup(&self, setup: TapSetup, round: u32) -> Result<TapRate> {
        let mode = match setup {
            TapSetup::Linux => None,
            TapSetup::OursTc => Some(AttachMode::Tc),
            TapSetup::OursXdp => Some(AttachMode::Xdp),
        };
        let Some(mode) = mode else {
            let routes = KernelRoutes::add(self.host)?;
            let rate = self.count(setup, round, None);
            drop(routes);
            let rate = rate?;
            if !carried_most(rate.kernel_forwarded, rate.delivered_frames) {
                bail!(
                    "the kernel forwarded {} datagrams but the sink read {}: something else \
                     carried them",
                    rate.kernel_forwarded,
                    rate.delivered_frames
                );
            }
            return Ok(rate);
        };
        let pin_path = crate::topology::pin_path("bench-tap", self.pid);
        let agent = PhaseAgent::start(
            self.loader,
            self.host,
            self.datastore,
            &pin_path,
            mode,
            &self
                .scratch
                .join(format!("agent-tap-{}-{round}.log", mode.as_str())),
            |endpoints| {
                let attached = endpoints
                    .iter()
                    .filter(|e| e["attached"].as_bool() == Some(true))
                    .count();
                if attached == 2 {
                    ControlFlow::Break("both taps attached".to_owned())
                } else {
                    ControlFlow::Continue(format!("{attached} of 2 attached"))
                }
            },
        )?;
        let rate = self.count(setup, round, Some(&pin_path));
        agent.stop();
        let rate = rate?;
        let programs = rate.programs_forwarded.unwrap_or(0);
        if !carried_most(programs, rate.delivered_frames) {
            bail!(
                "our programs forwarded {programs} packets from {TAP_A} but the sink read {}",
                rate.delivered_frames
            );
        }
        if rate.kernel_forwarded > rate.delivered_frames / 100 {
            bail!(
                "the kernel forwarded {} datagrams while our programs were attached (sink: {})",
                rate.kernel_forwarded,
                rate.delivered_frames
            );
        }
        Ok(rate)
    }

    /// Runs the generator and the sink for warm-up + duration; counts over the duration.
    fn count(&self, setup: TapSetup, round: u32, pins: Option<&Path>) -> Result<TapRate> {
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let generator_cpu_ns = Arc::new(AtomicU64::new(0));
        let sink = spawn_sink(self.tap_b, self.plan.sink_cpu, &stop, &read)?;
        let generator = spawn_generator(
            self.tap_a,
            self.frame,
            self.plan.generator_cpu,
            &stop,
            &written,
            &generator_cpu_ns,
        )?;
        let outcome = (|| -> Result<TapRate> {
            signals::sleep(self.plan.warmup)?;
            let before = self.snapshot(pins, &read, &written, &generator_cpu_ns)?;
            signals::sleep(self.plan.duration)?;
            let after = self.snapshot(pins, &read, &written, &generator_cpu_ns)?;
            let cpu_secs = after
                .generator_cpu_ns
                .saturating_sub(before.generator_cpu_ns) as f64
                / 1e9;
            let secs = after.at.duration_since(before.at).as_secs_f64();
            Ok(TapRate {
                round,
                setup,
                delivered_pps: (after.read - before.read) as f64 / secs,
                delivered_frames: after.read - before.read,
                reached_tap_b_pps: (after.tap_b.0 + after.tap_b.1)
                    .saturating_sub(before.tap_b.0 + before.tap_b.1)
                    as f64
                    / secs,
                offered_pps: (after.written - before.written) as f64 / secs,
                per_generator_cpu_second: if cpu_secs > 0.0 {
                    (after.written - before.written) as f64 / cpu_secs
                } else {
                    0.0
                },
                tap_b_dropped_pps: after.tap_b.1.saturating_sub(before.tap_b.1) as f64 / secs,
                kernel_forwarded: after.forwarded.saturating_sub(before.forwarded),
                programs_forwarded: match (before.programs, after.programs) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                    _ => None,
                },
            })
        })();
        stop.store(true, Ordering::Relaxed);
        let sink_result = sink.join();
        let generator_result = generator.join();
        let rate = outcome?;
        match (sink_result, generator_result) {
            (Ok(Ok(())), Ok(Ok(()))) => {}
            (Ok(Err(e)), _) | (_, Ok(Err(e))) => return Err(e),
            _ => bail!("the generator or the sink thread panicked"),
        }
        if rate.delivered_pps <= 0.0 {
            bail!("{}: the sink read no frame from {TAP_B}", setup.as_str());
        }
        Ok(rate)
    }

    fn snapshot(
        &self,
        pins: Option<&Path>,
        read: &AtomicU64,
        written: &AtomicU64,
        generator_cpu_ns: &AtomicU64,
    ) -> Result<Snapshot> {
        let at = Instant::now();
        let generator_cpu_ns = generator_cpu_ns.load(Ordering::Relaxed);
        let read = read.load(Ordering::Relaxed);
        let written = written.load(Ordering::Relaxed);
        let snmp = self
            .host
            .command("cat")
            .arg("/proc/net/snmp")
            .quiet()
            .output()?;
        let forwarded = snmp_value(&snmp, "Ip", "ForwDatagrams")?;
        let link = self
            .host
            .ip(["-s", "-j", "link", "show", TAP_B])
            .quiet()
            .output()?;
        let tap_b = link_tx(&link)?;
        let programs = match pins {
            Some(pins) => {
                let out = dump_cmd(self.loader, pins, "counters").quiet().output()?;
                let value: Value = serde_json::from_str(&out)
                    .context("`dump counters -o json` printed invalid JSON")?;
                Some(
                    endpoint_counters(&value, TAP_A, "forwarded_packets")
                        .map(|(forwarded, _, _)| forwarded)
                        .with_context(|| format!("no counters for {TAP_A} in `dump counters`"))?,
                )
            }
            None => None,
        };
        Ok(Snapshot {
            at,
            read,
            written,
            forwarded,
            tap_b,
            programs,
            generator_cpu_ns,
        })
    }
}

struct Snapshot {
    at: Instant,
    read: u64,
    written: u64,
    forwarded: u64,
    /// Tap B's transmit packets (read by the sink) and transmit drops (its queue full).
    tap_b: (u64, u64),
    programs: Option<u64>,
    /// The generator thread's CPU time, as of its last batch.
    generator_cpu_ns: u64,
}

/// Kernel forwarding between the taps, as the classic Calico host writes it; removed on drop.
struct KernelRoutes<'a> {
    host: &'a Netns,
}

impl<'a> KernelRoutes<'a> {
    fn add(host: &'a Netns) -> Result<Self> {
        let routes = Self { host };
        for (ip, tap, mac) in [(VM_A_IP, TAP_A, VM_A_MAC), (VM_B_IP, TAP_B, VM_B_MAC)] {
            let ip = ip.to_string();
            host.ip([
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                tap,
                "scope",
                "link",
            ])
            .run()?;
            host.ip([
                "neigh",
                "replace",
                &ip,
                "lladdr",
                mac,
                "dev",
                tap,
                "nud",
                "permanent",
            ])
            .run()?;
        }
        Ok(routes)
    }
}

impl Drop for KernelRoutes<'_> {
    fn drop(&mut self) {
        for (ip, tap) in [(VM_A_IP, TAP_A), (VM_B_IP, TAP_B)] {
            let ip = ip.to_string();
            let _ = self
                .host
                .ip(["route", "del", &format!("{ip}/32"), "dev", tap])
                .cleanup()
                .run();
            let _ = self
                .host
                .ip(["neigh", "del", &ip, "dev", tap])
                .cleanup()
                .run();
        }
    }
}

fn dup(tap: &Tap) -> Result<OwnedFd> {
    tap.fd
        .try_clone()
        .context("cannot duplicate a tap's file descriptor")
}

/// Reads tap B until `stop`, counting frames; polls when its queue is empty.
fn spawn_sink(
    tap: &Tap,
    cpu: usize,
    stop: &Arc<AtomicBool>,
    read: &Arc<AtomicU64>,
) -> Result<JoinHandle<Result<()>>> {
    let fd = dup(tap)?;
    let (stop, read) = (Arc::clone(stop), Arc::clone(read));
    Ok(std::thread::spawn(move || -> Result<()> {
        pin_current_thread(cpu)?;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is live and sized as passed.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                read.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err).context("read from the sink's tap");
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
        }
        Ok(())
    }))
}

/// Writes `frame` into tap A, one write per frame, until `stop`.
fn spawn_generator(
    tap: &Tap,
    frame: [u8; 60],
    cpu: usize,
    stop: &Arc<AtomicBool>,
    written: &Arc<AtomicU64>,
    cpu_ns: &Arc<AtomicU64>,
) -> Result<JoinHandle<Result<()>>> {
    let fd = dup(tap)?;
    let (stop, written, cpu_ns) = (Arc::clone(stop), Arc::clone(written), Arc::clone(cpu_ns));
    Ok(std::thread::spawn(move || -> Result<()> {
        pin_current_thread(cpu)?;
        let mut batch = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                // SAFETY: `frame` is live and sized as passed.
                let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                if n == frame.len() as isize {
                    batch += 1;
                } else {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::WouldBlock {
                        return Err(err).context("write to the generator's tap");
                    }
                }
            }
            written.fetch_add(batch, Ordering::Relaxed);
            cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            batch = 0;
        }
        Ok(())
    }))
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(round: u32, setup: TapSetup, pps: f64) -> TapRate {
        TapRate {
            round,
            setup,
            reached_tap_b_pps: pps,
            delivered_pps: pps,
            offered_pps: pps,
            per_generator_cpu_second: pps * 2.0,
            tap_b_dropped_pps: 0.0,
            kernel_forwarded: 0,
            programs_forwarded: None,
            delivered_frames: 0,
        }
    }

    #[test]
    fn setups_are_named_as_in_the_docs_and_ratios_use_medians() {
        assert_eq!(
            serde_json::to_value(TapSetup::ALL).expect("json"),
            serde_json::json!(["tap-linux", "tap-ours-tc", "tap-ours-xdp"])
        );
        let rates = [
            rate(1, TapSetup::Linux, 100.0),
            rate(1, TapSetup::OursXdp, 150.0),
            rate(2, TapSetup::Linux, 300.0),
            rate(2, TapSetup::OursXdp, 1000.0),
            rate(3, TapSetup::Linux, 200.0),
            rate(3, TapSetup::OursXdp, 500.0),
        ];
        let medians = medians(&rates, |r| r.reached_tap_b_pps);
        assert_eq!(medians[0], (TapSetup::Linux, 200.0));
        assert_eq!(ratio(&medians, TapSetup::OursXdp), Some(2.5));
        // No tap-ours-tc measurement: its median is 0, not a made-up figure.
        assert_eq!(ratio(&medians, TapSetup::OursTc), Some(0.0));
    }
}
