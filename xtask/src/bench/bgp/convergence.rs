//! Convergence across hosts: the time from a datastore write to what another host sees.
//!
//! Host A (`host-1`) runs workload `a`; host B (`host-2`) runs `b0` in its first block, which
//! A routes via B once B's BIRD announces it. Then, `repetitions` times each:
//!
//! 1. **A new workload in B's existing block.** Its address is assigned from B's block
//!    (`ipam assign`, before the clock starts, as the CNI plugin does before it writes the
//!    endpoint), its veth wired; `a` sends it an echo request every [`PROBE_INTERVAL`], each from a new ICMP socket (a
//!    new flow); the clock starts just
//!    before `calico-loader apply` of its WorkloadEndpoint; the figure is the time of the first
//!    reply. Until B's agent programs the endpoint, B's kernel drops
//!    the requests on the block's blackhole route.
//! 2. **A new block.** The same, but the clock starts before `ipam assign --ip` of an address
//!    in a block no one holds (B claims it: the affinity and the block are written), followed
//!    by the WorkloadEndpoint. A has no route to that block until B's BIRD announces it.
//! 3. **A host withdrawn.** The clock starts before `calico-loader delete node host-2`, as an
//!    operator removes a node; the figure is when A's kernel no longer routes B's block via B
//!    (`ip route show exact BLOCK`, polled in a loop). Then B's Node is put back and the bench
//!    waits until A routes to B again.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use testbed::{Cmd, output, signals};

use super::cluster::{Cluster, PATIENCE};
use crate::bench::control::median;

/// How often `a` pings the new workload.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// How long the prober runs before the write (so the clock never waits for it to start).
const PROBE_LEAD: Duration = Duration::from_millis(300);
/// The longest a probe waits for its first reply.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// Where the new-block figure looks for blocks no one holds (a /26 per repetition).
const NEW_BLOCKS_FROM: Ipv4Addr = Ipv4Addr::new(198, 18, 32, 0);

/// Host A, where the probes run, and host B, where the changes happen.
const A: u8 = 1;
const B: u8 = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct Convergence {
    pub repetitions: u32,
    pub probe_interval_ms: f64,
    pub new_workload: Figure,
    pub new_block: Figure,
    pub host_withdrawn: Figure,
}

/// One figure over its repetitions.
#[derive(Debug, Serialize, Deserialize)]
pub struct Figure {
    pub from: String,
    pub until: String,
    /// Each repetition, in order.
    pub ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// How long the write itself took (the CLI runs, from start to exit), per repetition.
    pub write_ms: Vec<f64>,
    /// Host withdrawn: how long one poll of A's routes took (median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_ms: Option<f64>,
}

impl Figure {
    fn new(
        from: &str,
        until: &str,
        ms: Vec<f64>,
        write_ms: Vec<f64>,
        poll_ms: Option<f64>,
    ) -> Self {
        Self {
            from: from.to_owned(),
            until: until.to_owned(),
            median_ms: median(&ms),
            min_ms: ms.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: ms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ms,
            write_ms,
            poll_ms,
        }
    }
}

/// The /26 holding `ip`.
fn block_of(ip: Ipv4Addr) -> String {
    format!("{}/26", Ipv4Addr::from(u32::from(ip) & !0x3f))
}

/// The IPv4 and IPv6 address of an `ipam assign`.
fn pair(addresses: &[IpAddr]) -> Result<(Ipv4Addr, std::net::Ipv6Addr)> {
    let v4 = addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = addresses.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok((v4, v6)),
        _ => bail!("ipam assign gave no IPv4 and IPv6 address: {addresses:?}"),
    }
}

/// An ICMP echo prober inside a workload's namespace: every interval it opens a new ICMP
/// datagram socket (so each request is a new flow, with its own identifier), sends one echo
/// request and waits up to the interval for the reply. `ping` is no use here: it backs off
/// while it gets ICMP errors (a host without a route yet answers "net unreachable"), and one
/// long flow could carry state from before the change.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Option<SystemTime>>>>,
    target: Ipv4Addr,
}

impl Probe {
    /// Starts probing `target` from the namespace `netns` (a `/run/netns/...` path) every
    /// `interval`, for `deadline` at most.
    pub fn start(
        netns: &Path,
        target: Ipv4Addr,
        interval: Duration,
        deadline: Duration,
    ) -> Result<Self> {
        let name = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // ICMP datagram sockets are open to the groups in this range (none by default).
        Cmd::new("ip")
            .args(["netns", "exec", &name, "sysctl", "-q", "-w"])
            .arg("net.ipv4.ping_group_range=0 2147483647")
            .quiet()
            .run()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let path = netns.to_owned();
        let thread = thread::spawn(move || -> Result<Option<SystemTime>> {
            testbed::netns::enter_thread(&path)?;
            let end = Instant::now() + deadline;
            let mut sequence: u16 = 0;
            while Instant::now() < end && !stopped.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if let Some(at) = echo(target, sequence, interval)? {
                    return Ok(Some(at));
                }
                sequence = sequence.wrapping_add(1);
                if let Some(rest) = interval.checked_sub(sent.elapsed()) {
                    thread::sleep(rest);
                }
            }
            Ok(None)
        });
        Ok(Self {
            stop,
            thread: Some(thread),
            target,
        })
    }

    /// Waits for the first reply (or the deadline); when it arrived.
    pub fn first_reply(mut self) -> Result<SystemTime> {
        let reply = self
            .thread
            .take()
            .context("the probe ran already")?
            .join()
            .map_err(|_| anyhow::anyhow!("the prober thread panicked"))??;
        reply.with_context(|| format!("no echo reply from {} before the deadline", self.target))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One echo request to `target` from a new ICMP datagram socket; the time its reply arrived,
/// if within `wait`. ICMP errors (no route yet) count as no reply.
fn echo(target: Ipv4Addr, sequence: u16, wait: Duration) -> Result<Option<SystemTime>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open an ICMP datagram socket");
    }
    // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(target).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a sockaddr_in we own and its size.
    let connected = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if connected != 0 {
        return Ok(None);
    }
    // Type 8 (echo request), code 0; the kernel fills in the identifier and the checksum.
    let [hi, lo] = sequence.to_be_bytes();
    let request = [
        8u8, 0, 0, 0, 0, 0, hi, lo, b'c', b'a', b'l', b'i', b'c', b'o', 0, 0,
    ];
    // SAFETY: send(2) of a buffer we own.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Ok(None); // e.g. no route from the workload yet
    }
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: poll(2) on one pollfd we own.
        if unsafe { libc::poll(&raw mut poll, 1, timeout) } <= 0 {
            return Ok(None);
        }
        let mut buf = [0u8; 128];
        // SAFETY: recv(2) into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 8 && buf[0] == 0 && buf[6..8] == [hi, lo] {
            return Ok(Some(SystemTime::now()));
        }
        if n < 0 || Instant::now() >= deadline {
            return Ok(None); // an ICMP error (connection refused, unreachable)
        }
    }
}

/// Milliseconds from `from` to `to` (negative if `to` is earlier).
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// Brings up A and B with a workload each, B's block routed on A, and `a` reaching `b0`.
pub fn prepare(cluster: &mut Cluster) -> Result<()> {
    output::info("convergence: agents on host-1 (A) and host-2 (B), a workload on each");
    cluster.start_agent(A)?;
    cluster.start_agent(B)?;
    cluster.wait("both Nodes", PATIENCE, Duration::from_millis(200), |c| {
        Ok(["host-1", "host-2"]
            .iter()
            .all(|n| c.loader(&["get", "node", n], None).is_ok()))
    })?;
    for (i, name) in [(A, "a"), (B, "b0")] {
        let node = cluster.host(i).name.clone();
        let (v4, v6) = pair(&cluster.assign(&node, &format!("bench-{name}"), &[])?)?;
        let yaml = cluster
            .host_mut(i)
            .add_workload(name, v4, v6)?
            .endpoint_yaml(&node, "bench", name);
        cluster.apply(&yaml)?;
    }
    let b0 = cluster.host(B).workload("b0")?.ipv4;
    let block = block_of(b0);
    let via = format!("via {}", cluster.host(B).v4);
    cluster.wait(
        &format!("host-1 to route {block} {via}"),
        PATIENCE,
        Duration::from_millis(100),
        |c| Ok(c.host(A).routes_to(&block)?.contains(&via)),
    )?;
    let ping = cluster.host(A).workload("a")?.netns.command("ping");
    cluster.wait(
        "a on host-1 to reach b0 on host-2",
        PATIENCE,
        Duration::from_millis(100),
        |_| {
            Ok(ping
                .clone()
                .args(["-c", "1", "-W", "1", "-n"])
                .arg(b0.to_string())
                .quiet()
                .capture()?
                .status
                .success())
        },
    )?;
    output::info(format!(
        "host-1 routes host-2's block {block} {via}; a reaches b0 ({b0})"
    ));
    Ok(())
}

/// The three figures, `repetitions` times each.
pub fn measure(cluster: &mut Cluster, repetitions: u32) -> Result<Convergence> {
    let new_workload = new_workload(cluster, repetitions).context("a new workload")?;
    let new_block = new_block(cluster, repetitions).context("a new block")?;
    let host_withdrawn = host_withdrawn(cluster, repetitions).context("a host withdrawn")?;
    Ok(Convergence {
        repetitions,
        probe_interval_ms: PROBE_INTERVAL.as_secs_f64() * 1e3,
        new_workload,
        new_block,
        host_withdrawn,
    })
}

/// Wires workload `name` on B with `v4` and `v6`, starts `a`'s probe to it, then runs
/// `write` with the clock started: the time to the first reply, and how long `write` took.
fn probe_after_write(
    cluster: &mut Cluster,
    name: &str,
    v4: Ipv4Addr,
    v6: std::net::Ipv6Addr,
    write: impl FnOnce(&Cluster, &str) -> Result<()>,
) -> Result<(f64, f64)> {
    let node = cluster.host(B).name.clone();
    let yaml = cluster
        .host_mut(B)
        .add_workload(name, v4, v6)?
        .endpoint_yaml(&node, "bench", name);
    let prober = cluster.host(A).workload("a")?.netns.path();
    let probe = Probe::start(&prober, v4, PROBE_INTERVAL, PROBE_DEADLINE)?;
    signals::sleep(PROBE_LEAD)?;
    let t0 = SystemTime::now();
    let started = Instant::now();
    write(cluster, &yaml)?;
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    let reply = probe.first_reply().map_err(|e| {
        let routes = |i: u8| cluster.host(i).ip(&["-4", "route"]).unwrap_or_default();
        anyhow::anyhow!(
            "{e}\n--- host-1's routes:\n{}--- host-2's routes:\n{}{}",
            routes(A),
            routes(B),
            cluster.logs()
        )
    })?;
    let ms = ms_between(t0, reply);
    if ms < 0.0 {
        bail!("{v4} answered {:.0} ms before the write", -ms);
    }
    Ok((ms, write_ms))
}

fn new_workload(cluster: &mut Cluster, repetitions: u32) -> Result<Figure> {
    let block = block_of(cluster.host(B).workload("b0")?.ipv4);
    let (mut all, mut writes) = (Vec::new(), Vec::new());
    for k in 1..=repetitions {
        let name = format!("new{k}");
        let node = cluster.host(B).name.clone();
        let (v4, v6) = pair(&cluster.assign(&node, &format!("bench-{name}"), &[])?)?;
        if block_of(v4) != block {
            bail!("{v4} is not in host-2's block {block}");
        }
        let (ms, write_ms) = probe_after_write(cluster, &name, v4, v6, |c, yaml| c.apply(yaml))?;
        output::info(format!(
            "[{k}/{repetitions}] new workload {v4} in host-2's block {block}: first reply on \
             host-1 {ms:.0} ms after the write (the apply took {write_ms:.0} ms)"
        ));
        all.push(ms);
        writes.push(write_ms);
    }
    Ok(Figure::new(
        "calico-loader apply of the WorkloadEndpoint (its address assigned and veth wired before)",
        "first echo reply on host-1",
        all,
        writes,
        None,
    ))
}

fn new_block(cluster: &mut Cluster, repetitions: u32) -> Result<Figure> {
    let (mut all, mut writes) = (Vec::new(), Vec::new());
    // The blocks IPAM gave A and B so far (they pick at random within the pool).
    let mut taken: Vec<String> = cluster
        .hosts
        .iter()
        .flat_map(|h| &h.workloads)
        .map(|w| block_of(w.ipv4))
        .collect();
    let mut candidates = (0u32..).map(|n| Ipv4Addr::from(u32::from(NEW_BLOCKS_FROM) + n * 64 + 10));
    for k in 1..=repetitions {
        let name = format!("blk{k}");
        let node = cluster.host(B).name.clone();
        let v4 = candidates
            .find(|a| !taken.contains(&block_of(*a)))
            .context("no free block left")?;
        let block = block_of(v4);
        taken.push(block.clone());
        if !cluster.host(A).routes_to(&block)?.trim().is_empty() {
            bail!("host-1 routes {block} before it is claimed");
        }
        // The IPv6 address from B's existing block: only the IPv4 block is new.
        let v6 = cluster
            .assign(&node, &format!("bench-{name}"), &["--ipv4", "0"])?
            .into_iter()
            .find_map(|a| match a {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
            .context("ipam assign gave no IPv6 address")?;
        let handle = format!("bench-{name}");
        let (ms, write_ms) = probe_after_write(cluster, &name, v4, v6, |c, yaml| {
            c.assign(&node, &handle, &["--ip", &v4.to_string()])?;
            c.apply(yaml)
        })?;
        output::info(format!(
            "[{k}/{repetitions}] new block {block} claimed by host-2 with a workload {v4}: first \
             reply on host-1 {ms:.0} ms after the write (assign and apply took {write_ms:.0} ms)"
        ));
        all.push(ms);
        writes.push(write_ms);
    }
    Ok(Figure::new(
        "calico-loader ipam assign --ip (host-2 claims a new block), then apply of the \
         WorkloadEndpoint",
        "first echo reply on host-1",
        all,
        writes,
        None,
    ))
}

fn host_withdrawn(cluster: &mut Cluster, repetitions: u32) -> Result<Figure> {
    let block = block_of(cluster.host(B).workload("b0")?.ipv4);
    let via = format!("via {}", cluster.host(B).v4);
    let (mut all, mut writes, mut polls) = (Vec::new(), Vec::new(), Vec::new());
    for k in 1..=repetitions {
        let t0 = Instant::now();
        cluster.loader(&["delete", "node", "host-2"], None)?;
        let write_ms = t0.elapsed().as_secs_f64() * 1e3;
        let deadline = t0 + PATIENCE;
        let ms = loop {
            let poll = Instant::now();
            let routes = cluster.host(A).routes_to(&block)?;
            polls.push(poll.elapsed().as_secs_f64() * 1e3);
            if !routes.contains(&via) {
                break t0.elapsed().as_secs_f64() * 1e3;
            }
            if Instant::now() >= deadline {
                bail!(
                    "host-1 still routes {block} {via} {}s after host-2's Node was deleted\n{}",
                    PATIENCE.as_secs(),
                    cluster.logs()
                );
            }
            signals::check_interrupted()?;
        };
        output::info(format!(
            "[{k}/{repetitions}] host-2's Node deleted: host-1 stopped routing {block} {via} \
             {ms:.0} ms after the write (the delete took {write_ms:.0} ms)"
        ));
        all.push(ms);
        writes.push(write_ms);
        // Put host-2 back: its Node as its agent wrote it; its agent turns BGP on again.
        cluster.apply(&cluster.node_yaml(B))?;
        cluster.wait(
            &format!("host-1 to route {block} {via} again"),
            PATIENCE,
            Duration::from_millis(100),
            |c| Ok(c.host(A).routes_to(&block)?.contains(&via)),
        )?;
    }
    Ok(Figure::new(
        "calico-loader delete node host-2",
        "host-1's kernel no longer routes host-2's block via host-2",
        all,
        writes,
        Some(median(&polls)),
    ))
}
