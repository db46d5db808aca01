//! The control plane, measured after the rounds on one running agent (TC mode, started with
//! gen and sink and no policy):
//!
//! 1. Policy: the file of `Plan::control_plane_rules` rules (the `ours-*-N` policies) is renamed
//!    into the datastore, and `calico-loader trace` polled every 20 ms until trafgen's packet at
//!    the sink is decided by the last rule. The wall time is reported as measured (it includes
//!    up to one trace run, whose duration is reported too), next to the agent's own figures
//!    from its log: "policy compiled … elapsed_ms" and the time of its "policy map entries" line
//!    (the end of its apply) after the rename.
//! 2. A new endpoint: a third workload, `new` (198.18.0.3), is wired like the others while its
//!    WorkloadEndpoint is not in the datastore; it sends a UDP datagram to an echo server in gen
//!    every 5 ms (two threads of xtask in the two namespaces; without root, `ping`, which sends
//!    unanswered requests every 10 ms at best). Its requests reach gen through the kernel (no
//!    program on its interface yet), but the replies find no route to 198.18.0.3 until the
//!    agent programs the endpoint. Then its WorkloadEndpoint is renamed into the datastore, and
//!    the time until the first reply arrives is reported, with when the request it answers was
//!    sent. gen is the target because the sink's ingress policy now only allows gen, as in
//!    `ours-*-N`. With the rules loaded, the agent recompiles every endpoint's policy for the
//!    new one, so this includes compiling the sink's rules.
//! 3. Memory, with the rules loaded and the three endpoints: the agent's peak RSS (`VmHWM`) and
//!    the `bytes_memlock` of every BPF map it holds (map ids from /proc/<pid>/fdinfo, sizes from
//!    `bpftool -j map show`), before and after the rules.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use testbed::{Cmd, output, privileges, signals};

use super::{
    Ctx, Setup,
    active::Active,
    loader::{endpoint_key, endpoint_yaml},
    policy::{
        Decider, POLICY_FILE, Staged, TRAFGEN_PORT, TraceOutcome, policy_count, policy_yaml,
        run_trace, trace_cmd,
    },
    topology::{Agent, create_workload, log_field, log_time, millis_between},
};
use crate::{sockets, topology::AttachMode};

/// The datastore file of the new endpoint.
const NEW_ENDPOINT_FILE: &str = "workloadendpoint-new.yaml";
/// The new workload's index: 198.18.0.3, ca:fe:00:00:00:03, `calibenchnew`.
const NEW_INDEX: u8 = 3;
/// How often the policy's verdict is polled.
const TRACE_POLL: Duration = Duration::from_millis(20);
/// How often the new workload sends to gen.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// The UDP echo server's port in gen.
const ECHO_PORT: u16 = 7102;
/// How long the new workload tries before the endpoint is published, and after.
const BEFORE_PUBLISH: Duration = Duration::from_millis(300);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long either change may take before the phase fails.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub hook: &'static str,
    /// `release` (a full run) or `debug` (`--quick` reuses the tests' build).
    pub agent_build: &'static str,
    pub rules: u32,
    pub policies: u32,
    pub policy_apply: PolicyApply,
    pub new_endpoint: NewEndpoint,
    pub memory: Memory,
}

#[derive(Debug, Serialize)]
pub struct PolicyApply {
    /// From the rename of the policy file into the datastore until a trace showed the new
    /// verdict; nothing subtracted.
    pub wall_ms: f64,
    pub file_bytes: usize,
    /// Traces run until then (one every `poll_ms` after the previous one ended).
    pub polls: u32,
    pub poll_ms: u64,
    /// How long one `calico-loader trace` took: the resolution of `wall_ms`.
    pub trace_ms_median: f64,
    pub trace_ms_max: f64,
    pub before: TraceOutcome,
    pub after: TraceOutcome,
    /// The agent's "policy compiled … elapsed_ms" after the rename.
    pub agent_compile_ms: Option<u64>,
    /// From the rename to the agent's "datastore file loaded" line for the file (its datastore
    /// watch lets changes settle first).
    pub agent_loaded_ms: Option<f64>,
    /// From the rename to the agent's "policy map entries" log line (its apply done).
    pub agent_programmed_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct NewEndpoint {
    /// `udp-echo` (xtask's threads) or `ping` (without root).
    pub probe: &'static str,
    /// Between requests (for ping, measured: its total time over the requests sent).
    pub interval_ms: f64,
    /// From the rename of the WorkloadEndpoint into the datastore until the first reply came
    /// back to new; nothing subtracted.
    pub first_reply_ms: f64,
    /// When the request it answers was sent, from the rename (udp-echo only): the endpoint was
    /// ready between one interval before that and then.
    pub answered_request_sent_ms: Option<f64>,
    /// Its sequence number, from 1: the requests before it went unanswered.
    pub first_reply_seq: u64,
    /// The agent's "datastore file loaded" line for the file, from the rename.
    pub agent_loaded_ms: Option<f64>,
    /// The agent's "policy compiled … elapsed_ms" after the rename (every endpoint's policy).
    pub agent_compile_ms: Option<u64>,
    /// From the rename to the agent's "attached" log line for the new endpoint (logged once
    /// its whole apply is done).
    pub agent_attached_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapMemory {
    pub id: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub max_entries: u64,
    pub bytes_memlock: u64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub pid: u32,
    /// Peak resident set (`VmHWM`) at the end of the phase.
    pub vm_hwm_kib: Option<u64>,
    pub vm_rss_kib: Option<u64>,
    pub vm_rss_kib_before_rules: Option<u64>,
    /// Every map the agent holds, biggest first, at the end of the phase.
    pub maps: Vec<MapMemory>,
    pub maps_bytes: u64,
    /// The same before the rules were written.
    pub maps_bytes_before_rules: u64,
    /// The maps named `cali_*` among them.
    pub cali_maps_bytes: u64,
}

/// Runs the three parts on a fresh agent, then stops it and puts the datastore back.
pub fn measure(ctx: &Ctx<'_>) -> Result<ControlPlane> {
    let rules = ctx.plan.control_plane_rules;
    output::step(format!(
        "Control plane: {rules} rules into a running agent, a new endpoint, memory"
    ));
    output::explain(format!(
        "One agent (tc) with gen and sink and no policy. (1) The {rules} rules of the ours-*-N\n\
         setups are renamed into its datastore; `calico-loader trace` runs every {} ms until the\n\
         last rule decides trafgen's packet. (2) A third workload, new, sends to gen every {} ms\n\
         while its WorkloadEndpoint is absent (no route back to it), then the endpoint is renamed\n\
         into the datastore: time to the first reply. (3) The agent's peak RSS and its maps' memory.",
        TRACE_POLL.as_millis(),
        PROBE_INTERVAL.as_millis()
    ));
    let active = Active::activate(ctx, Setup::Ours(AttachMode::Tc, 0))?;
    let outcome = match active.agent() {
        Some(agent) => phases(ctx, agent, rules),
        None => Err(anyhow::anyhow!("no agent in an ours setup")),
    };
    let stopped = active.deactivate(ctx);
    let restored = restore_datastore(ctx);
    let result = outcome?;
    stopped?;
    restored?;
    Ok(result)
}

fn phases(ctx: &Ctx<'_>, agent: &Agent, rules: u32) -> Result<ControlPlane> {
    let pid = agent
        .pid
        .context("the agent's process id is unknown (see the warning above)")?;
    let maps_before = agent_maps(pid)?;
    let vm_rss_kib_before_rules = proc_status_kib(pid, "VmRSS");

    let policy_apply = apply_policy(ctx, agent, rules)?;
    let new_endpoint = new_endpoint(ctx, agent)?;

    let maps = agent_maps(pid)?;
    let memory = Memory {
        pid,
        vm_hwm_kib: proc_status_kib(pid, "VmHWM"),
        vm_rss_kib: proc_status_kib(pid, "VmRSS"),
        vm_rss_kib_before_rules,
        maps_bytes: maps.iter().map(|m| m.bytes_memlock).sum(),
        maps_bytes_before_rules: maps_before.iter().map(|m| m.bytes_memlock).sum(),
        cali_maps_bytes: maps
            .iter()
            .filter(|m| m.name.starts_with("cali_"))
            .map(|m| m.bytes_memlock)
            .sum(),
        maps,
    };
    output::info(format!(
        "agent (pid {pid}): VmHWM {} KiB, VmRSS {} KiB ({} KiB before the rules); {} BPF maps, \
         {:.1} MiB ({:.1} MiB before the rules)",
        memory.vm_hwm_kib.map_or("?".into(), |k| k.to_string()),
        memory.vm_rss_kib.map_or("?".into(), |k| k.to_string()),
        memory
            .vm_rss_kib_before_rules
            .map_or("?".into(), |k| k.to_string()),
        memory.maps.len(),
        mib(memory.maps_bytes),
        mib(memory.maps_bytes_before_rules),
    ));
    Ok(ControlPlane {
        hook: AttachMode::Tc.as_str(),
        agent_build: if ctx.plan.quick { "debug" } else { "release" },
        rules,
        policies: policy_count(rules),
        policy_apply,
        new_endpoint,
        memory,
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Part 1: the rules into the running agent.
fn apply_policy(ctx: &Ctx<'_>, agent: &Agent, rules: u32) -> Result<PolicyApply> {
    let topo = ctx.topo;
    let udp = |ip: Ipv4Addr| SocketAddr::new(ip.into(), TRAFGEN_PORT);
    let cmd = trace_cmd(
        ctx,
        &endpoint_key(&topo.sink),
        "udp",
        udp(topo.gen_wl.ipv4),
        udp(topo.sink.ipv4),
    );
    let before = run_trace(&cmd)?;
    let expected = Decider::expected(rules);
    if before.is("allow", &expected) {
        bail!("the rules are in force before they were written");
    }
    let yaml = policy_yaml(rules, topo.gen_wl.ipv4);
    let staged = Staged::write(ctx.datastore, POLICY_FILE, &yaml)?;
    output::info(format!(
        "before: trafgen's packet {}; renaming {rules} rules ({} policies, {} bytes) into {} and \
         polling the trace every {} ms until {} rule {} decides",
        before.describe(),
        policy_count(rules),
        yaml.len(),
        ctx.datastore.join(POLICY_FILE).display(),
        TRACE_POLL.as_millis(),
        expected.policy,
        expected.rule
    ));
    let quiet = cmd.quiet();
    let offset = agent.log.len();
    let start = Instant::now();
    let published = staged.publish()?;
    let mut trace_ms = Vec::new();
    let after = loop {
        let run = Instant::now();
        let outcome = run_trace(&quiet);
        trace_ms.push(run.elapsed().as_secs_f64() * 1e3);
        let last = match outcome {
            Ok(outcome) if outcome.is("allow", &expected) => break outcome,
            Ok(outcome) => outcome.describe(),
            Err(err) => format!("{err:#}"),
        };
        if start.elapsed() > TIMEOUT {
            bail!(
                "the {rules} rules are not in force {}s after the rename (last trace: {last})",
                TIMEOUT.as_secs()
            );
        }
        signals::sleep(TRACE_POLL)?;
    };
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let compiled = agent
        .log
        .wait_for(offset, "policy compiled", Duration::from_secs(2))?;
    let programmed = agent
        .log
        .wait_for(offset, "policy map entries", Duration::from_secs(2))?;
    let loaded = agent.log.wait_for(
        offset,
        &format!("datastore file loaded file={POLICY_FILE}"),
        Duration::from_secs(2),
    )?;
    let apply = PolicyApply {
        wall_ms,
        file_bytes: yaml.len(),
        polls: u32::try_from(trace_ms.len()).unwrap_or(u32::MAX),
        poll_ms: u64::try_from(TRACE_POLL.as_millis()).unwrap_or(0),
        trace_ms_median: median(&trace_ms),
        trace_ms_max: trace_ms.iter().copied().fold(0.0, f64::max),
        before,
        after,
        agent_compile_ms: compiled
            .as_deref()
            .and_then(|l| log_field(l, "elapsed_ms"))
            .and_then(|v| v.parse().ok()),
        agent_loaded_ms: loaded
            .as_deref()
            .and_then(log_time)
            .map(|t| millis_between(published, t)),
        agent_programmed_ms: programmed
            .as_deref()
            .and_then(log_time)
            .map(|t| millis_between(published, t)),
    };
    output::info(format!(
        "{rules} rules in force after {:.0} ms ({} traces of {:.0} ms each); the agent's log: \
         file loaded {} ms after the rename, compiled in {} ms, programmed {} ms after the rename",
        apply.wall_ms,
        apply.polls,
        apply.trace_ms_median,
        apply
            .agent_loaded_ms
            .map_or("?".into(), |v| format!("{v:.0}")),
        apply.agent_compile_ms.map_or("?".into(), |v| v.to_string()),
        apply
            .agent_programmed_ms
            .map_or("?".into(), |v| format!("{v:.0}")),
    ));
    Ok(apply)
}

/// Part 2: a new endpoint, from its WorkloadEndpoint to its first reply.
fn new_endpoint(ctx: &Ctx<'_>, agent: &Agent) -> Result<NewEndpoint> {
    let topo = ctx.topo;
    let new = create_workload(&topo.host, topo.pid, "new", 0, NEW_INDEX)?;
    let mut probe = if privileges::is_root() {
        Probe::udp_echo(ctx, &new)?
    } else {
        Probe::ping(ctx, &new)
    };
    signals::sleep(BEFORE_PUBLISH)?;
    if probe.is_finished() {
        match probe.finish() {
            Ok(reply) => bail!(
                "new got a reply from gen (request {}) before its WorkloadEndpoint existed: \
                 there is nothing to measure",
                reply.seq
            ),
            Err(err) => {
                return Err(
                    err.context("new's probe ended before its WorkloadEndpoint was written")
                );
            }
        }
    }
    let staged = Staged::write(ctx.datastore, NEW_ENDPOINT_FILE, &endpoint_yaml(&new))?;
    output::info(format!(
        "no reply in {} ms; renaming new's WorkloadEndpoint into {}",
        BEFORE_PUBLISH.as_millis(),
        ctx.datastore.join(NEW_ENDPOINT_FILE).display()
    ));
    let offset = agent.log.len();
    let published = staged.publish()?;
    let reply = probe
        .finish()
        .context("no reply to new from gen after its endpoint appeared")?;
    let at_log = |what: &str| -> Result<Option<f64>> {
        Ok(agent
            .log
            .wait_for(offset, what, Duration::from_secs(2))?
            .as_deref()
            .and_then(log_time)
            .map(|t| millis_between(published, t)))
    };
    let compiled = agent
        .log
        .wait_for(offset, "policy compiled", Duration::from_secs(2))?;
    let result = NewEndpoint {
        probe: probe.name,
        interval_ms: reply.interval_ms,
        first_reply_ms: millis_between(published, reply.at),
        answered_request_sent_ms: reply.sent.map(|t| millis_between(published, t)),
        first_reply_seq: reply.seq,
        agent_loaded_ms: at_log(&format!("datastore file loaded file={NEW_ENDPOINT_FILE}"))?,
        agent_compile_ms: compiled
            .as_deref()
            .and_then(|l| log_field(l, "elapsed_ms"))
            .and_then(|v| v.parse().ok()),
        agent_attached_ms: at_log(&format!("attached endpoint={}", endpoint_key(&new)))?,
    };
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
    output::info(format!(
        "first reply {:.0} ms after the rename (request {} of {}, sent {} ms after the rename, \
         every {:.1} ms); the agent's log: file loaded {} ms after the rename, compiled in {} ms, \
         attached logged {} ms after the rename",
        result.first_reply_ms,
        reply.seq,
        result.probe,
        ms(result.answered_request_sent_ms),
        result.interval_ms,
        ms(result.agent_loaded_ms),
        result
            .agent_compile_ms
            .map_or("?".into(), |v| v.to_string()),
        ms(result.agent_attached_ms),
    ));
    // `new` is deleted here (its namespace, and the veth pair with it).
    Ok(result)
}

/// The first reply new got.
#[derive(Debug)]
struct Reply {
    at: SystemTime,
    seq: u64,
    /// When its request was sent (udp-echo).
    sent: Option<SystemTime>,
    interval_ms: f64,
}

/// new's requests to gen, from the moment it is created until the first reply (or
/// [`PROBE_TIMEOUT`] after `finish` is called).
struct Probe {
    name: &'static str,
    sender: Option<JoinHandle<Result<Option<Reply>>>>,
    echo: Option<JoinHandle<Result<()>>>,
    stop: Arc<AtomicBool>,
    /// When `finish` was called (the sender gives up PROBE_TIMEOUT after).
    deadline: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Probe {
    /// A UDP echo server in gen and a sender in new, each a thread of ours in the namespace.
    fn udp_echo(ctx: &Ctx<'_>, new: &crate::topology::Workload) -> Result<Self> {
        let server = SocketAddr::new(ctx.topo.gen_wl.ipv4.into(), ECHO_PORT);
        let local = SocketAddr::new(new.ipv4.into(), 0);
        output::info(format!(
            "new ({}) sends a datagram to a UDP echo server in gen ({server}) every {} ms until \
             the first reply (threads of xtask in cbench-new and cbench-gen)",
            new.ipv4,
            PROBE_INTERVAL.as_millis()
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let echo_stop = Arc::clone(&stop);
        let echo = sockets::spawn_in_netns(ctx.topo.gen_wl.netns.name(), move || {
            let socket = UdpSocket::bind(server)
                .with_context(|| format!("echo server: cannot bind {server}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            while !echo_stop.load(Ordering::Relaxed) && !signals::interrupted() {
                match socket.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let _ = socket.send_to(&buf[..n], peer);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e).context("echo server: receiving"),
                }
            }
            Ok(())
        });
        if ready_rx.recv_timeout(Duration::from_secs(3)).is_err() {
            stop.store(true, Ordering::Relaxed);
            sockets::join(echo, "echo server")?;
            bail!("the UDP echo server in gen did not start");
        }
        let deadline: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let sender_deadline = Arc::clone(&deadline);
        let sender_stop = Arc::clone(&stop);
        let sender = sockets::spawn_in_netns(new.netns.name(), move || {
            let socket =
                UdpSocket::bind(local).with_context(|| format!("prober: cannot bind {local}"))?;
            let start = Instant::now();
            let mut sent: Vec<SystemTime> = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                if sender_stop.load(Ordering::Relaxed) || signals::interrupted() {
                    return Ok(None);
                }
                let given_up = sender_deadline
                    .lock()
                    .ok()
                    .and_then(|d| *d)
                    .is_some_and(|d| Instant::now() >= d);
                if given_up {
                    return Ok(None);
                }
                // Request n (from 1) leaves at start + (n - 1) intervals.
                let seq = sent.len() as u64 + 1;
                sent.push(SystemTime::now());
                // Errors (no route yet, ICMP errors reported on the socket) count as no reply.
                let _ = socket.send_to(&seq.to_be_bytes(), server);
                let next = start + PROBE_INTERVAL * u32::try_from(seq).unwrap_or(u32::MAX);
                while let Some(left) = next.checked_duration_since(Instant::now()) {
                    if left.is_zero() {
                        break;
                    }
                    socket.set_read_timeout(Some(left))?;
                    match socket.recv_from(&mut buf) {
                        Ok((8, peer)) if peer == server => {
                            let at = SystemTime::now();
                            let mut bytes = [0u8; 8];
                            bytes.copy_from_slice(&buf[..8]);
                            let seq = u64::from_be_bytes(bytes);
                            let index = usize::try_from(seq).unwrap_or(usize::MAX);
                            return Ok(Some(Reply {
                                at,
                                seq,
                                sent: index.checked_sub(1).and_then(|i| sent.get(i)).copied(),
                                interval_ms: PROBE_INTERVAL.as_secs_f64() * 1e3,
                            }));
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break;
                        }
                        // An ICMP error for an earlier datagram: keep going.
                        Err(_) => {}
                    }
                }
            }
        });
        Ok(Self {
            name: "udp-echo",
            sender: Some(sender),
            echo: Some(echo),
            stop,
            deadline,
        })
    }

    /// Without root (no entering namespaces from our threads): `ping` in new, which sends
    /// unanswered requests every 10 ms at best whatever `-i` says.
    fn ping(ctx: &Ctx<'_>, new: &crate::topology::Workload) -> Self {
        let target = ctx.topo.gen_wl.ipv4.to_string();
        let interval = format!("{:.3}", PROBE_INTERVAL.as_secs_f64());
        let ping = new.netns.command("ping").args([
            "-D", "-n", "-i", &interval, // Until one reply, for a while at most.
            "-c", "1", "-w", "15", &target,
        ]);
        output::info(format!(
            "new pings gen until the first reply (not root: no UDP probe from our threads): `{}`",
            ping.display()
        ));
        let sender = std::thread::spawn(move || -> Result<Option<Reply>> {
            let output = ping.quiet().capture()?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            Ok(first_ping_reply(&stdout).map(|(at, seq)| Reply {
                at,
                seq,
                sent: None,
                interval_ms: ping_interval_ms(&stdout).unwrap_or(f64::NAN),
            }))
        });
        Self {
            name: "ping",
            sender: Some(sender),
            echo: None,
            stop: Arc::default(),
            deadline: Arc::default(),
        }
    }

    fn is_finished(&self) -> bool {
        self.sender.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the first reply (for [`PROBE_TIMEOUT`] at most), then stops both threads.
    fn finish(&mut self) -> Result<Reply> {
        if let Ok(mut deadline) = self.deadline.lock() {
            *deadline = Some(Instant::now() + PROBE_TIMEOUT);
        }
        let reply = match self.sender.take() {
            Some(sender) => sockets::join(sender, "prober"),
            None => Ok(None),
        };
        self.stop.store(true, Ordering::Relaxed);
        if let Some(echo) = self.echo.take() {
            sockets::join(echo, "echo server")?;
        }
        reply?.with_context(|| format!("no reply within {}s", PROBE_TIMEOUT.as_secs()))
    }
}

impl Drop for Probe {
    /// Stops the threads (on an error path; `ping` ends by itself).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
    }
}

/// The time and icmp_seq of the first reply in `ping -D` output:
/// `[1732400000.123456] 64 bytes from 198.18.0.1: icmp_seq=57 ttl=63 time=0.101 ms`.
fn first_ping_reply(stdout: &str) -> Option<(SystemTime, u64)> {
    stdout.lines().find_map(|line| {
        if !line.contains("bytes from") {
            return None;
        }
        let stamp = line.strip_prefix('[')?.split(']').next()?;
        let secs: f64 = stamp.parse().ok()?;
        let seq = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))?
            .parse()
            .ok()?;
        Some((UNIX_EPOCH + Duration::from_secs_f64(secs), seq))
    })
}

/// ping's time per request: `N packets transmitted, 1 received, …, time Tms`.
fn ping_interval_ms(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let sent: f64 = line.split_whitespace().next()?.parse().ok()?;
    let time: f64 = line
        .rsplit("time ")
        .next()?
        .trim()
        .strip_suffix("ms")?
        .parse()
        .ok()?;
    (sent > 1.0).then(|| time / (sent - 1.0))
}

/// Removes what this phase added to the datastore, so it is as the rounds left it.
fn restore_datastore(ctx: &Ctx<'_>) -> Result<()> {
    for name in [POLICY_FILE, NEW_ENDPOINT_FILE] {
        let path = ctx.datastore.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// A `kB` field of /proc/<pid>/status.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().trim_end_matches("kB").trim().parse().ok())?
    })
}

/// The maps the agent holds a file descriptor for, biggest first.
pub fn agent_maps(pid: u32) -> Result<Vec<MapMemory>> {
    let fdinfo = Cmd::new("sh")
        .args(["-c", &format!("cat /proc/{pid}/fdinfo/* 2>/dev/null")])
        .privileged()
        .capture()?;
    let ids = map_ids(&String::from_utf8_lossy(&fdinfo.stdout));
    if ids.is_empty() {
        bail!("found no BPF map among the agent's (pid {pid}) file descriptors");
    }
    let json = Cmd::new("bpftool")
        .args(["-j", "map", "show"])
        .privileged()
        .output()?;
    let mut maps = parse_maps(&json, &ids)?;
    maps.sort_by(|a, b| b.bytes_memlock.cmp(&a.bytes_memlock).then(a.id.cmp(&b.id)));
    Ok(maps)
}

/// The `map_id:` values of /proc/<pid>/fdinfo/* contents.
fn map_ids(fdinfo: &str) -> BTreeSet<u64> {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok())
        .collect()
}

fn parse_maps(json: &str, ids: &BTreeSet<u64>) -> Result<Vec<MapMemory>> {
    let value: Value =
        serde_json::from_str(json).context("`bpftool -j map show` printed invalid JSON")?;
    let Value::Array(maps) = value else {
        bail!("`bpftool -j map show` did not print an array");
    };
    Ok(maps
        .iter()
        .filter_map(|m| {
            let id = m["id"].as_u64()?;
            ids.contains(&id).then(|| MapMemory {
                id,
                name: m["name"].as_str().unwrap_or("").to_owned(),
                map_type: m["type"].as_str().unwrap_or("?").to_owned(),
                max_entries: m["max_entries"].as_u64().unwrap_or(0),
                bytes_memlock: m["bytes_memlock"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_replies_are_found() {
        let out = "PING 198.18.0.1 (198.18.0.1) 56(84) bytes of data.\n\
                   [1795474773.250000] 64 bytes from 198.18.0.1: icmp_seq=57 ttl=63 time=0.101 ms\n\
                   \n--- 198.18.0.1 ping statistics ---\n";
        let (at, seq) = first_ping_reply(out).expect("a reply");
        assert_eq!(seq, 57);
        let secs = at
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!((secs - 1_795_474_773.25).abs() < 1e-6);
        assert_eq!(first_ping_reply("PING x\n--- statistics ---\n"), None);
        let summary = "101 packets transmitted, 1 received, 99% packet loss, time 1000ms\n";
        assert_eq!(ping_interval_ms(summary), Some(10.0));
        assert_eq!(ping_interval_ms("nothing"), None);
    }

    #[test]
    fn status_and_fdinfo_are_read() {
        let status = "Name:\tcalico-loader\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(51_234));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(40_000));
        assert_eq!(parse_status_kib(status, "VmPeak"), None);
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmap_id:\t9041\n\
                      pos:\t0\nprog_type:\t3\nprog_id:\t12\n\
                      map_id:\t9042\nmap_id:\t9041\n";
        assert_eq!(
            map_ids(fdinfo).into_iter().collect::<Vec<_>>(),
            [9041, 9042]
        );
        let json = r#"[{"id": 9041, "type": "hash", "name": "cali_paddr_v6", "max_entries": 1048576,
                        "bytes_memlock": 16778112},
                       {"id": 9042, "type": "hash", "name": "cali_endpoints", "max_entries": 16384,
                        "bytes_memlock": 2000},
                       {"id": 7, "type": "array", "name": "other", "bytes_memlock": 5}]"#;
        let maps = parse_maps(json, &map_ids(fdinfo)).expect("valid");
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].name, "cali_paddr_v6");
        assert_eq!(maps[1].bytes_memlock, 2000);
        assert!(median(&[3.0, 1.0, 2.0]) == 2.0);
        assert!(median(&[]).is_nan());
    }
}
