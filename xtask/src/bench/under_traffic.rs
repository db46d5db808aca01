//! What the phases that replace the agent under traffic share (agent restarts in
//! [`super::restart`], upgrades in [`super::upgrade`]): a host namespace with two workloads,
//! three flows from one to the other while the agent is replaced (numbered UDP datagrams, a TCP
//! stream and pings, from `testbed::flows`), what each run lost and what a mode's runs lost in
//! all, the agent's readiness, and the phase's place in the bench's JSON.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    ops::ControlFlow,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use testbed::{
    Netns,
    flows::{Pace, PingFlow, PingReport, TcpFlow, TcpReport, UdpFlow, UdpReport},
    netns, signals,
};

use crate::topology::{AttachMode, Workload};

pub const UDP_RATE: u64 = 10_000;
pub const TCP_RATE: u64 = 4 << 20;
pub const PING_INTERVAL: Duration = Duration::from_millis(10);
const UDP_PORT: u16 = 6000;
pub const TCP_PORT: u16 = 6001;
/// The flows run this long before the agent is replaced.
pub const KILL_AFTER: Duration = Duration::from_millis(1500);
const HEALTH: &str = "127.0.0.1:9099";
/// The agent's flags for health on [`HEALTH`] of its namespace.
pub const HEALTH_FLAGS: [&str; 5] = [
    "--health-enabled",
    "--health-host",
    "127.0.0.1",
    "--health-port",
    "9099",
];
/// How long a new agent may take to be ready before the phase fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The attach modes a phase runs in, for its heading: `tc, xdp`.
pub fn modes(hooks: &[AttachMode]) -> String {
    hooks
        .iter()
        .map(|h| h.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A host namespace `cbench-<tag>-<pid>` with two workloads wired to it, `<tag>1` at
/// 198.18.`net`.1 sending and `<tag>2` at 198.18.`net`.2 receiving, set up for `hook`. The flows
/// are IPv4; the workloads' IPv6 is off, as its chatter would only add noise.
pub fn host_with_two_workloads(
    tag: &str,
    net: u8,
    pid: u32,
    hook: AttachMode,
) -> Result<(Netns, Workload, Workload)> {
    let host = Netns::create(format!("cbench-{tag}-{pid}"))?;
    host.ip(["link", "set", "lo", "up"]).run()?;
    let workload = |i: u8| -> Result<Workload> {
        Ok(Workload {
            name: format!("{tag}{i}"),
            netns: Netns::create(format!("cbench-{tag}{i}-{pid}"))?,
            host_if: format!("cali{tag}{i}"),
            mac: format!("ca:fe:00:00:{net:02x}:{i:02x}"),
            ipv4: Ipv4Addr::new(198, 18, net, i),
            ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(net), 0, 0, 0, u16::from(i)),
        })
    };
    let (from, to) = (workload(1)?, workload(2)?);
    for wl in [&from, &to] {
        wl.wire(&host)?;
        if hook == AttachMode::Xdp {
            wl.ethtool_for_xdp().run()?;
        }
        wl.netns
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
            .run()?;
    }
    Ok((host, from, to))
}

/// Whether the agent's endpoint dump shows both workloads attached.
pub fn both_attached(endpoints: &[Value]) -> ControlFlow<String, String> {
    let attached = endpoints
        .iter()
        .filter(|e| e["attached"].as_bool() == Some(true))
        .count();
    if attached == 2 {
        ControlFlow::Break("both workloads attached".to_owned())
    } else {
        ControlFlow::Continue(format!("{attached} of 2 attached"))
    }
}

/// The three flows from `from` to `to`, running.
pub struct Flows {
    udp: UdpFlow,
    tcp: TcpFlow,
    ping: PingFlow,
}

impl Flows {
    /// Starts UDP at [`UDP_RATE`], TCP at [`TCP_RATE`] and a ping every [`PING_INTERVAL`], each
    /// for `duration`.
    pub fn start(from: &Workload, to: &Workload, duration: Duration) -> Result<Self> {
        let (src, dst) = (from.netns.path(), to.netns.path());
        let pace = |rate| Pace { duration, rate };
        Ok(Self {
            udp: UdpFlow::start(
                &src,
                &dst,
                SocketAddr::new(to.ipv4.into(), UDP_PORT),
                pace(UDP_RATE),
            )?,
            tcp: TcpFlow::start(
                &src,
                &dst,
                SocketAddr::new(to.ipv4.into(), TCP_PORT),
                pace(TCP_RATE),
            )?,
            ping: PingFlow::start(
                &src,
                to.ipv4.into(),
                PING_INTERVAL,
                (duration.as_millis() / PING_INTERVAL.as_millis()) as u64,
            )?,
        })
    }

    /// Waits for the flows to end (and the last datagrams up to a second) and counts what
    /// they lost.
    pub fn finish(self) -> Result<FlowFigures> {
        let ping = self.ping.finish()?;
        let tcp = self.tcp.finish()?;
        let udp = self.udp.finish(Duration::from_secs(1))?;
        Ok(FlowFigures {
            udp: (&udp).into(),
            ping: (&ping).into(),
            tcp: (&tcp).into(),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct UdpFigures {
    pub sent: u64,
    /// Dropped by the sender's own interface (the host side had not drained the veth in time),
    /// although `send` said they were sent: they never left the sender.
    pub refused_by_sender_interface: u64,
    pub received: u64,
    /// Left the sender and never arrived.
    pub lost: u64,
    pub rate_per_s: f64,
    pub longest_gap_ms: f64,
}

impl From<&UdpReport> for UdpFigures {
    fn from(r: &UdpReport) -> Self {
        Self {
            sent: r.sent,
            refused_by_sender_interface: r.refused_by_sender_interface,
            received: r.received,
            lost: r.lost(),
            rate_per_s: r.achieved_rate(),
            longest_gap_ms: millis(r.longest_gap),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PingFigures {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

impl From<&PingReport> for PingFigures {
    fn from(r: &PingReport) -> Self {
        Self {
            sent: r.transmitted,
            received: r.received,
            lost: r.lost(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TcpFigures {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// A reset or a stall, if the stream broke.
    pub error: Option<String>,
    pub retransmits: u32,
    /// Retransmissions the receiver reported as duplicates: nothing was lost.
    pub duplicate_retransmits: u32,
    pub lost_segments: u32,
    pub longest_gap_ms: f64,
}

impl From<&TcpReport> for TcpFigures {
    fn from(r: &TcpReport) -> Self {
        Self {
            sent_bytes: r.sent,
            received_bytes: r.received,
            error: r.error.clone(),
            retransmits: r.retransmits,
            duplicate_retransmits: r.duplicate_retransmits,
            lost_segments: r.lost_segments(),
            longest_gap_ms: millis(r.longest_gap),
        }
    }
}

/// What the three flows of one run carried and lost (`udp`, `ping` and `tcp` in a run's JSON).
#[derive(Debug, Serialize)]
pub struct FlowFigures {
    pub udp: UdpFigures,
    pub ping: PingFigures,
    pub tcp: TcpFigures,
}

impl FlowFigures {
    /// The longest time either receiver heard nothing.
    pub fn longest_gap_ms(&self) -> f64 {
        self.udp.longest_gap_ms.max(self.tcp.longest_gap_ms)
    }

    /// One run's losses, for its report line.
    pub fn describe(&self) -> String {
        format!(
            "UDP {} sent ({:.0}/s), {} lost, {} refused by the sender's interface; ping {} sent, \
             {} lost; TCP {} lost segment(s) ({} retransmissions, {} duplicates){}",
            self.udp.sent,
            self.udp.rate_per_s,
            self.udp.lost,
            self.udp.refused_by_sender_interface,
            self.ping.sent,
            self.ping.lost,
            self.tcp.lost_segments,
            self.tcp.retransmits,
            self.tcp.duplicate_retransmits,
            self.tcp
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(", the stream broke: {e}")),
        )
    }
}

/// What a mode's runs lost in all (beside the other figures of its summary in the JSON).
#[derive(Debug, Default, Serialize)]
pub struct FlowLosses {
    pub udp_sent: u64,
    pub udp_lost: u64,
    pub udp_refused_by_sender_interface: u64,
    pub ping_sent: u64,
    pub ping_lost: u64,
    pub tcp_lost_segments: u64,
    pub tcp_errors: usize,
    pub longest_gap_ms: f64,
}

impl FlowLosses {
    pub fn total<'a>(runs: impl IntoIterator<Item = &'a FlowFigures>) -> Self {
        runs.into_iter().fold(Self::default(), |mut all, run| {
            all.udp_sent += run.udp.sent;
            all.udp_lost += run.udp.lost;
            all.udp_refused_by_sender_interface += run.udp.refused_by_sender_interface;
            all.ping_sent += run.ping.sent;
            all.ping_lost += run.ping.lost;
            all.tcp_lost_segments += u64::from(run.tcp.lost_segments);
            all.tcp_errors += usize::from(run.tcp.error.is_some());
            all.longest_gap_ms = all.longest_gap_ms.max(run.longest_gap_ms());
            all
        })
    }

    /// What was lost, for a mode's summary line.
    pub fn describe(&self) -> String {
        format!(
            "lost: UDP {} of {}, ping {} of {}, TCP {} segment(s){}; {} datagram(s) refused by \
             the sender's interface",
            self.udp_lost,
            self.udp_sent,
            self.ping_lost,
            self.ping_sent,
            self.tcp_lost_segments,
            if self.tcp_errors > 0 {
                format!(", {} stream(s) broke", self.tcp_errors)
            } else {
                String::new()
            },
            self.udp_refused_by_sender_interface,
        )
    }
}

/// Waits until the agent in `host` answers `/readiness` with 200, polling every 10 ms.
pub fn wait_ready(host: &Netns, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let path = host.path();
    loop {
        let path = path.clone();
        let ready = std::thread::spawn(move || -> bool {
            netns::enter_thread(&path).is_ok() && readiness_ok()
        })
        .join()
        .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the agent was not ready within {}s (see its log lines above)",
                timeout.as_secs()
            );
        }
        signals::sleep(Duration::from_millis(10))?;
    }
}

/// `GET /readiness` on [`HEALTH`] of the calling thread's namespace answers 200.
fn readiness_ok() -> bool {
    let Ok(address) = HEALTH.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readiness HTTP/1.1\r\nHost: {HEALTH}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200")
}

/// Adds a phase's figures to the bench's JSON file, as `key`.
pub fn add_to_json(json: &Path, key: &str, figures: &impl Serialize) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let mut document: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    document[key] = serde_json::to_value(figures)?;
    std::fs::write(json, serde_json::to_string_pretty(&document)?)
        .with_context(|| format!("cannot write {}", json.display()))
}
