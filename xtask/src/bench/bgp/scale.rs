//! Scale: a top-of-rack router (GoBGP, `testbed::gobgp`) on the fabric, peered with every host
//! over eBGP through a global `BGPPeer`, announces N IPv4 /32s; the figures are host-1's.
//!
//! - The prefixes are /32s from 198.18.64.0 up, skipping the fabric's 198.19.0.0/24: outside
//!   the pools, inside 198.18.0.0/15. They are written as an MRT TABLE_DUMP_V2 file and
//!   injected into GoBGP's global RIB with `gobgp mrt inject global` (one streamed API call),
//!   next hop the ToR.
//! - **In the kernel:** the clock starts before the injection; `ip -4 route show proto bird`
//!   on host-1 is counted in a loop (routes via the ToR) until all N are there.
//! - **Usable:** workload `a` on host-1 sends an echo request to the last prefix every
//!   [`USABLE_PROBE_INTERVAL`] from before the injection; the ToR answers for every prefix
//!   (local routes in its main table, below its fabric subnet). Our programs hand packets to
//!   destinations that are no workload to the kernel, which forwards them by BIRD's route; the
//!   reply comes back through the data-interface program. The figure is the first reply.
//! - **Memory:** VmRSS of host-1's agent and BIRD (and BIRD's VmHWM) before and after.
//! - **Withdrawn:** `gobgp global rib -a ipv4 del all`, then the time until host-1's kernel has
//!   none of them left; each size starts from none.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use testbed::{Netns, TempDir, fabric, gobgp, output, signals};

use super::{
    cluster::{Cluster, POOL_V4, namespace},
    convergence::Probe,
};
use crate::bench::control::{median, proc_status_kib};

/// The ToR's member number on the fabric (198.19.0.200), its AS, and the cluster's (the
/// default).
const TOR_INDEX: u8 = 200;
const TOR_AS: u32 = 65001;
const CLUSTER_AS: u32 = 64512;
/// The first prefix announced.
const FIRST_PREFIX: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 0);
/// What the ToR answers for (local routes in its main table): every prefix announced.
const TOR_ANSWERS: [&str; 3] = ["198.18.64.0/18", "198.18.128.0/17", "198.19.0.0/16"];
/// How often the last prefix is pinged.
pub const USABLE_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How long `size` prefixes may take to arrive or leave: a minute, and 3 ms per prefix.
fn scale_timeout(size: u32) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(3) * size
}
/// Copies of the last prefix at the end of the MRT file (a fifth of the prefixes, at least
/// 2,048): `gobgp mrt inject` loses the last records it sends.
fn mrt_padding(size: u32) -> usize {
    (size as usize / 5).max(2048)
}
/// The host measured.
const MEASURED: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub prefixes: u32,
    pub first_prefix: String,
    pub last_prefix: String,
    /// From the start of the first `gobgp mrt inject global` until GoBGP's RIB held them all.
    pub inject_ms: f64,
    /// How many `gobgp mrt inject` runs that took (see `Tor::inject`).
    pub injections: u32,
    /// From the start of the injection until host-1's kernel holds all of them.
    pub in_kernel_ms: f64,
    /// One count of host-1's routes (median): the resolution of `in_kernel_ms`.
    pub count_ms: f64,
    /// From the start of the injection until the first reply from the last prefix.
    pub usable_ms: f64,
    /// From `gobgp global rib del all` until host-1's kernel holds none of them.
    pub withdrawn_ms: f64,
    pub agent_rss_kib_before: Option<u64>,
    pub agent_rss_kib_after: Option<u64>,
    pub bird_rss_kib_before: Option<u64>,
    pub bird_rss_kib_after: Option<u64>,
    pub bird_hwm_kib: Option<u64>,
    pub gobgpd_rss_kib_after: Option<u64>,
}

/// The ToR: gobgpd in its namespace on the fabric.
pub struct Tor {
    // Dropped first: gobgpd, then its namespace, then its files.
    daemon: gobgp::Gobgpd,
    _ns: Netns,
    _dir: TempDir,
    v4: Ipv4Addr,
}

impl Tor {
    /// Plugs the ToR into the fabric, starts gobgpd peering with every host's IPv4 address,
    /// makes it answer for the prefixes and route back to the pool via host-1, and peers the
    /// hosts with it (a global BGPPeer); waits until every session is established.
    pub fn start(cluster: &mut Cluster) -> Result<Self> {
        let ns = namespace("tor")?;
        fabric::plug(&cluster.fabric, &ns, TOR_INDEX)?;
        let v4 = fabric::fabric_v4(TOR_INDEX);
        for prefix in TOR_ANSWERS {
            ns.ip([
                "route", "add", "local", prefix, "dev", "lo", "table", "main",
            ])
            .run()?;
        }
        let back = cluster.host(MEASURED).v4.to_string();
        ns.ip(["route", "add", POOL_V4, "via", &back]).run()?;
        let dir = TempDir::create(cluster.dir.path().join("tor"))?;
        let neighbors: Vec<IpAddr> = cluster.hosts.iter().map(|h| IpAddr::V4(h.v4)).collect();
        output::info(format!(
            "ToR: gobgpd (AS {TOR_AS}) in {} at {v4}, eBGP with {neighbors:?} (AS {CLUSTER_AS})",
            ns.name()
        ));
        let daemon = gobgp::Gobgpd::start(
            &ns.path(),
            dir.path(),
            &gobgp::config_toml(TOR_AS, v4, &neighbors, CLUSTER_AS),
        )?;
        let tor = Self {
            daemon,
            _ns: ns,
            _dir: dir,
            v4,
        };
        cluster.apply(&format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor-v4}}\n\
             spec: {{peerIP: {v4}, asNumber: {TOR_AS}}}\n"
        ))?;
        let hosts = cluster.hosts.len();
        cluster.wait(
            "every host's session with the ToR",
            Duration::from_secs(60),
            Duration::from_millis(200),
            |_| Ok(tor.gobgp(&["neighbor"])?.matches("Establ").count() == hosts),
        )?;
        Ok(tor)
    }

    /// How many IPv4 prefixes GoBGP's global RIB holds.
    fn rib_count(&self) -> Result<usize> {
        let summary = self.gobgp(&["global", "rib", "-a", "ipv4", "summary"])?;
        summary
            .split("Destination:")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("gobgp's RIB summary: {summary:?}"))
    }

    /// `gobgp mrt inject global` of `file` (`size` prefixes, then [`mrt_padding`] copies of
    /// the last) until GoBGP holds them all: the client (GoBGP 3.10) exits without waiting for
    /// the end of its stream, and the records still in flight are lost, always a tail of the
    /// file (the padding is there to be lost). So the count is read (once it stops moving) and
    /// the rest injected again (`COUNT SKIP`). Returns how many runs it took.
    fn inject(&self, file: &Path, size: u32) -> Result<u32> {
        let file = file.to_string_lossy().into_owned();
        let next_hop = self.v4.to_string();
        // What GoBGP held before: the hosts' blocks, learned from them.
        let learned = self.rib_count()?;
        let mut held = 0;
        for run in 1..=200 {
            let records = size as usize + mrt_padding(size);
            let (count, skip) = ((records - held).to_string(), held.to_string());
            self.gobgp(&[
                "mrt",
                "inject",
                "global",
                "--no-ipv6",
                "--nexthop",
                &next_hop,
                &file,
                &count,
                &skip,
            ])?;
            let mut last = self.rib_count()?;
            loop {
                signals::sleep(Duration::from_millis(100))?;
                let now = self.rib_count()?;
                if now == last {
                    break;
                }
                last = now;
            }
            held = last.saturating_sub(learned);
            if held >= size as usize {
                return Ok(run);
            }
        }
        bail!("GoBGP holds {held} of {size} prefixes after 200 injections")
    }

    /// `gobgp ARGS`; its output, or an error with gobgpd's log.
    fn gobgp(&self, args: &[&str]) -> Result<String> {
        let out = self.daemon.gobgp(args)?;
        if !out.status.success() {
            bail!(
                "gobgp {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.daemon.log(), 20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `count` /32s from [`FIRST_PREFIX`] up, skipping the fabric's 198.19.0.0/24.
fn prefixes(count: u32) -> Result<Vec<Ipv4Addr>> {
    let fabric = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    let end = u32::from(Ipv4Addr::new(198, 19, 255, 255));
    let all: Vec<Ipv4Addr> = (u32::from(FIRST_PREFIX)..=end)
        .filter(|a| a & !0xff != fabric)
        .take(count as usize)
        .map(Ipv4Addr::from)
        .collect();
    if all.len() != count as usize {
        bail!("at most {} prefixes fit in 198.18.0.0/15 here", all.len());
    }
    Ok(all)
}

/// An MRT file (RFC 6396) of TABLE_DUMP_V2 records: the peer index table (one peer, `peer`
/// in AS `peer_as`), then one RIB_IPV4_UNICAST record per /32 with one entry: ORIGIN IGP, an
/// empty AS_PATH, NEXT_HOP `peer`.
fn mrt_table_dump(prefixes: &[Ipv4Addr], peer: Ipv4Addr, peer_as: u32, time: u32) -> Vec<u8> {
    const TABLE_DUMP_V2: u16 = 13;
    const PEER_INDEX_TABLE: u16 = 1;
    const RIB_IPV4_UNICAST: u16 = 2;
    let mut out = Vec::with_capacity(prefixes.len() * 40 + 64);
    let mut record = |subtype: u16, body: &[u8]| {
        out.extend(time.to_be_bytes());
        out.extend(TABLE_DUMP_V2.to_be_bytes());
        out.extend(subtype.to_be_bytes());
        out.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
    };
    let mut peers = Vec::new();
    peers.extend(peer.octets()); // collector BGP id
    peers.extend(0u16.to_be_bytes()); // no view name
    peers.extend(1u16.to_be_bytes()); // one peer
    peers.push(0x02); // IPv4 address, 4-byte AS
    peers.extend(peer.octets()); // its BGP id
    peers.extend(peer.octets()); // its address
    peers.extend(peer_as.to_be_bytes());
    record(PEER_INDEX_TABLE, &peers);
    let mut attributes = vec![0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4];
    attributes.extend(peer.octets());
    for (sequence, prefix) in (0u32..).zip(prefixes) {
        let mut rib = Vec::with_capacity(40);
        rib.extend(sequence.to_be_bytes());
        rib.push(32);
        rib.extend(prefix.octets());
        rib.extend(1u16.to_be_bytes()); // one entry
        rib.extend(0u16.to_be_bytes()); // peer index
        rib.extend(time.to_be_bytes()); // originated
        rib.extend(u16::try_from(attributes.len()).unwrap_or(0).to_be_bytes());
        rib.extend_from_slice(&attributes);
        record(RIB_IPV4_UNICAST, &rib);
    }
    out
}

/// How many routes via the ToR host-1's kernel holds (BIRD's), and how long counting took.
fn count_routes(cluster: &Cluster, via: &str) -> Result<(usize, f64)> {
    let start = Instant::now();
    let routes = cluster
        .host(MEASURED)
        .ip(&["-4", "route", "show", "proto", "bird"])?;
    let count = routes.lines().filter(|l| l.contains(via)).count();
    Ok((count, start.elapsed().as_secs_f64() * 1e3))
}

/// Polls the count until `done` holds: milliseconds since `t0`, and the counts' median time.
fn wait_count(
    cluster: &Cluster,
    via: &str,
    (t0, timeout): (Instant, Duration),
    what: &str,
    done: impl Fn(usize) -> bool,
) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    loop {
        let (count, took) = count_routes(cluster, via)?;
        times.push(took);
        if done(count) {
            return Ok((t0.elapsed().as_secs_f64() * 1e3, median(&times)));
        }
        if t0.elapsed() > timeout {
            bail!(
                "{what}: host-1 holds {count} routes via the ToR after {}s",
                timeout.as_secs()
            );
        }
        signals::sleep(Duration::from_millis(50))?;
    }
}

/// Each size in turn: inject, wait for the kernel and a reply, read memory, withdraw.
pub fn measure(cluster: &Cluster, tor: &Tor, sizes: &[u32]) -> Result<Vec<ScaleResult>> {
    let via = format!("via {} ", tor.v4);
    let mut results = Vec::new();
    for &size in sizes {
        let prefixes = prefixes(size)?;
        let (Some(first), Some(last)) = (prefixes.first(), prefixes.last()) else {
            bail!("no prefixes");
        };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(0));
        let file = cluster.dir.path().join(format!("tor-{size}.mrt"));
        let mut records = prefixes.clone();
        records.extend(std::iter::repeat_n(*last, mrt_padding(size)));
        std::fs::write(&file, mrt_table_dump(&records, tor.v4, TOR_AS, time))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let host = cluster.host(MEASURED);
        let agent_pid = host.agent.as_ref().map(super::cluster::Agent::pid);
        let bird_pid = host.bird_pid().context("host-1's BIRD does not run")?;
        let rss = |pid: Option<u32>| pid.and_then(|p| proc_status_kib(p, "VmRSS"));
        let (agent_before, bird_before) = (rss(agent_pid), rss(Some(bird_pid)));
        let (count, _) = count_routes(cluster, &via)?;
        if count != 0 {
            bail!("host-1 holds {count} routes via the ToR before the injection");
        }

        output::info(format!(
            "scale: {size} /32s ({first} … {last}) into GoBGP (gobgp mrt inject global {}); \
             a on host-1 sends {last} an echo request every {} ms",
            file.display(),
            USABLE_PROBE_INTERVAL.as_millis()
        ));
        let probe = Probe::start(
            &host.workload("a")?.netns.path(),
            *last,
            USABLE_PROBE_INTERVAL,
            scale_timeout(size),
        )?;
        signals::sleep(Duration::from_millis(300))?;
        let t0_wall = SystemTime::now();
        let t0 = Instant::now();
        // GoBGP is fed in one thread while host-1's kernel is counted in this one.
        let failed = std::sync::atomic::AtomicBool::new(false);
        let (injected, counted) = std::thread::scope(|scope| {
            let injecting = scope.spawn(|| -> Result<(u32, f64)> {
                let runs = tor.inject(&file, size).inspect_err(|_| {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                })?;
                Ok((runs, t0.elapsed().as_secs_f64() * 1e3))
            });
            let counted = wait_count(cluster, &via, (t0, scale_timeout(size)), "injection", |n| {
                n >= size as usize || failed.load(std::sync::atomic::Ordering::Relaxed)
            });
            let injected = injecting
                .join()
                .map_err(|_| anyhow::anyhow!("the injecting thread panicked"));
            (injected, counted)
        });
        let (injections, inject_ms) = injected??;
        let (in_kernel_ms, count_ms) = counted?;
        let reply = probe.first_reply()?;
        let usable_ms = reply
            .duration_since(t0_wall)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let agent_after = rss(agent_pid);
        let bird_after = rss(Some(bird_pid));
        let bird_hwm = proc_status_kib(bird_pid, "VmHWM");
        let gobgpd_after = rss(tor.daemon.pid());
        output::info(format!(
            "{size} prefixes: all in GoBGP's RIB after {inject_ms:.0} ms ({injections} \
             injection(s)), all in host-1's kernel after \
             {in_kernel_ms:.0} ms (one count {count_ms:.0} ms), first reply from {last} after \
             {usable_ms:.0} ms; RSS agent {} → {} KiB, BIRD {} → {} KiB",
            agent_before.unwrap_or(0),
            agent_after.unwrap_or(0),
            bird_before.unwrap_or(0),
            bird_after.unwrap_or(0)
        ));

        let t1 = Instant::now();
        tor.gobgp(&["global", "rib", "-a", "ipv4", "del", "all"])?;
        let (withdrawn_ms, _) = wait_count(
            cluster,
            &via,
            (t1, scale_timeout(size)),
            "withdrawal",
            |n| n == 0,
        )?;
        output::info(format!(
            "{size} prefixes withdrawn (gobgp global rib del all): none left in host-1's kernel \
             after {withdrawn_ms:.0} ms"
        ));
        results.push(ScaleResult {
            prefixes: size,
            first_prefix: format!("{first}/32"),
            last_prefix: format!("{last}/32"),
            inject_ms,
            injections,
            in_kernel_ms,
            count_ms,
            usable_ms,
            withdrawn_ms,
            agent_rss_kib_before: agent_before,
            agent_rss_kib_after: agent_after,
            bird_rss_kib_before: bird_before,
            bird_rss_kib_after: bird_after,
            bird_hwm_kib: bird_hwm,
            gobgpd_rss_kib_after: gobgpd_after,
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_skip_the_fabric_and_stay_in_the_benchmark_range() {
        let all = prefixes(100_000).expect("fits");
        assert_eq!(all[0], Ipv4Addr::new(198, 18, 64, 0));
        assert!(all.iter().all(|a| a.octets()[..3] != [198, 19, 0]));
        assert!(
            all.iter()
                .all(|a| a.octets()[0] == 198 && a.octets()[1] & 0xfe == 18)
        );
        assert!(prefixes(200_000).is_err());
    }

    #[test]
    fn mrt_records_have_their_lengths() {
        let peer = Ipv4Addr::new(198, 19, 0, 200);
        let file = mrt_table_dump(&[Ipv4Addr::new(198, 18, 64, 0)], peer, 65001, 7);
        // Peer index table: 12-byte header + 4 + 2 + 2 + 1 + 4 + 4 + 4 = 33 bytes.
        assert_eq!(&file[4..8], &[0, 13, 0, 1]);
        assert_eq!(
            u32::from_be_bytes([file[8], file[9], file[10], file[11]]),
            21
        );
        let rib = &file[33..];
        assert_eq!(&rib[4..8], &[0, 13, 0, 2]);
        // 4 (sequence) + 1 + 4 (prefix) + 2 (count) + 2 + 4 + 2 + 14 (attributes).
        assert_eq!(u32::from_be_bytes([rib[8], rib[9], rib[10], rib[11]]), 33);
        assert_eq!(rib.len(), 12 + 33);
        assert_eq!(&rib[12 + 4..12 + 9], &[32, 198, 18, 64, 0]);
        assert_eq!(&rib[rib.len() - 4..], &peer.octets());
    }
}
