//! Drop events from userspace (`calico-loader events`): registering as the one listener, reading
//! the records the programs write into the drop event ring buffer, and saying them in Calico's
//! words (the endpoint, the reason, the tier, policy and rule that denied).
//!
//! The programs build an event only while a listener holds the lease in the control map
//! (`cali_drop_ctl`). A [`Listener`] takes it, renews it while it runs and clears it when it
//! goes; a listener that is killed leaves a lease that runs out on its own within [`LEASE`].
//! Only one listener can read at a time (a ring buffer has one consumer position): the pin
//! directory is locked while one runs.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::MapError;
use calico_ebpf_common::{
    DropEvent, DropEventControl, DropEventStats, DropReason, direction, map_names, maps as spec,
};
use serde::Serialize;

use crate::{
    dataplane::{
        bpffs::PinLayout,
        conntrack::{key_addr, monotonic_ns},
        handles::{Handle, HandleError, MapSource as _},
    },
    dump::protocol_name,
    trace::{RuleReport, describe_rule, rule_report},
};

/// How long a listener's registration lasts without renewal: the programs stop building events
/// this long after a listener was killed.
pub const LEASE: Duration = Duration::from_secs(5);

/// How often a running listener renews its lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("cannot open the pin directory {path}: {source}")]
    PinDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another listener{} is reading the drop events of {path}; only one can at a time",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy { path: PathBuf, pid: Option<u32> },
    #[error("{0}")]
    Invalid(String),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> EventsError {
    move |source| EventsError::Map { name, source }
}

/// Which drops become events: one in `sample`, then at most `rate` a second on each CPU, after
/// a burst of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub rate: u32,
    pub burst: u32,
    pub sample: u32,
}

impl Selection {
    pub const DEFAULT_RATE: u32 = 100;
    pub const MAX_RATE: u32 = 1_000_000;

    /// Checks the numbers; the error names the flag.
    pub fn new(rate: u32, burst: Option<u32>, sample: u32) -> Result<Self, EventsError> {
        if rate == 0 || rate > Self::MAX_RATE {
            return Err(EventsError::Invalid(format!(
                "--rate {rate}: events a second on each CPU, from 1 to {}",
                Self::MAX_RATE
            )));
        }
        let burst = burst.unwrap_or(rate);
        if burst == 0 || burst > Self::MAX_RATE {
            return Err(EventsError::Invalid(format!(
                "--burst {burst}: from 1 to {}",
                Self::MAX_RATE
            )));
        }
        if sample == 0 {
            return Err(EventsError::Invalid(
                "--sample 0: one drop in N, N at least 1".into(),
            ));
        }
        Ok(Self {
            rate,
            burst,
            sample,
        })
    }

    /// The control value that registers a listener with this selection until `lease_until_ns`.
    pub fn control(&self, lease_until_ns: u64, pid: u32) -> DropEventControl {
        let interval_ns = 1_000_000_000 / u64::from(self.rate);
        DropEventControl {
            lease_until_ns,
            interval_ns,
            burst_ns: interval_ns * u64::from(self.burst),
            sample: self.sample,
            listener_pid: pid,
        }
    }
}

/// The registered listener: holds the lock on the pin directory and the lease, renews it on
/// [`Listener::renew`], and clears it when dropped.
pub struct Listener {
    control: Handle<spec::DropControl>,
    stats: Handle<spec::DropStats>,
    selection: Selection,
    baseline: DropEventStats,
    /// The pin directory, locked (flock) while this listener lives.
    _lock: File,
}

impl Listener {
    /// Registers as the listener of the dataplane pinned under `layout`, and returns the ring
    /// buffer to read.
    ///
    /// # Errors
    ///
    /// The maps missing (no agent ran with these pins, or one without drop events), or another
    /// listener running.
    pub fn register(
        layout: &PinLayout,
        selection: Selection,
    ) -> Result<(Self, Handle<spec::DropEvents>), EventsError> {
        let mut pins = layout;
        let mut control = pins.open::<spec::DropControl>()?;
        let stats = pins.open::<spec::DropStats>()?;
        let ring = pins.open::<spec::DropEvents>()?;
        let lock = lock_directory(layout.root()).map_err(|e| match e {
            EventsError::Busy { path, .. } => EventsError::Busy {
                path,
                pid: control
                    .get(&0, 0)
                    .ok()
                    .filter(|c| c.listening(monotonic_ns()))
                    .map(|c| c.listener_pid),
            },
            other => other,
        })?;
        // Whatever is queued was written for a listener before this one.
        let mut ring = ring;
        while ring.next().is_some() {}
        let baseline = sum_stats(&stats)?;
        control
            .set(0, selection.control(lease_until(), std::process::id()), 0)
            .map_err(map_err(map_names::DROP_CONTROL))?;
        Ok((
            Self {
                control,
                stats,
                selection,
                baseline,
                _lock: lock,
            },
            ring,
        ))
    }

    /// Extends the lease by [`LEASE`] from now.
    ///
    /// # Errors
    ///
    /// The control map cannot be written.
    pub fn renew(&mut self) -> Result<(), EventsError> {
        self.control
            .set(
                0,
                self.selection.control(lease_until(), std::process::id()),
                0,
            )
            .map_err(map_err(map_names::DROP_CONTROL))
    }

    /// What became of the drops seen since this listener registered, summed over CPUs.
    ///
    /// # Errors
    ///
    /// The statistics map cannot be read.
    pub fn stats(&self) -> Result<DropEventStats, EventsError> {
        let now = sum_stats(&self.stats)?;
        let base = &self.baseline;
        Ok(DropEventStats {
            seen: now.seen.saturating_sub(base.seen),
            sampled_out: now.sampled_out.saturating_sub(base.sampled_out),
            rate_limited: now.rate_limited.saturating_sub(base.rate_limited),
            ring_full: now.ring_full.saturating_sub(base.ring_full),
            submitted: now.submitted.saturating_sub(base.submitted),
            ..DropEventStats::default()
        })
    }
}

impl Drop for Listener {
    /// Clears the lease: the programs stop building events at once.
    fn drop(&mut self) {
        if let Err(e) = self.control.set(0, DropEventControl::default(), 0) {
            tracing::warn!(
                "clearing the drop event lease: {e}; it runs out within {} s",
                LEASE.as_secs()
            );
        }
    }
}

fn lease_until() -> u64 {
    monotonic_ns() + LEASE.as_nanos() as u64
}

/// Takes an exclusive lock on `dir` (flock), failing at once when someone holds it.
fn lock_directory(dir: &Path) -> Result<File, EventsError> {
    let file = File::open(dir).map_err(|source| EventsError::PinDirectory {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(EventsError::Busy {
                path: dir.to_owned(),
                pid: None,
            });
        }
        return Err(EventsError::PinDirectory {
            path: dir.to_owned(),
            source,
        });
    }
    Ok(file)
}

/// The drop event statistics of every CPU, summed.
fn sum_stats(stats: &Handle<spec::DropStats>) -> Result<DropEventStats, EventsError> {
    let per_cpu = stats.get(&0, 0).map_err(map_err(map_names::DROP_STATS))?;
    let mut total = DropEventStats::default();
    for cpu in per_cpu.iter() {
        total.accumulate(cpu);
    }
    Ok(total)
}

/// The drop event statistics from the pins, summed over CPUs (for the metrics).
///
/// # Errors
///
/// The map missing or unreadable.
pub fn pinned_stats(layout: &PinLayout) -> Result<DropEventStats, EventsError> {
    let stats = (&mut &*layout).open::<spec::DropStats>()?;
    sum_stats(&stats)
}

/// The listener's registration as the programs read it (a lease of 0: nobody listens).
///
/// # Errors
///
/// The map missing or unreadable.
pub fn pinned_registration(layout: &PinLayout) -> Result<DropEventControl, EventsError> {
    let control = (&mut &*layout).open::<spec::DropControl>()?;
    control.get(&0, 0).map_err(map_err(map_names::DROP_CONTROL))
}

/// Reads a record of the ring buffer.
pub fn decode(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < std::mem::size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: DropEvent is plain data of this size; the ring buffer's bytes are unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// A dropped packet, in words (one JSON object a line with `-o json`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DropRecord {
    /// Always `drop` (the other lines are `summary`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When, as RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The WorkloadEndpoint (`namespace/name`) the drop is counted against, or
    /// `HostEndpoint <name>` for a host endpoint's drop; none for an interface without an
    /// endpoint entry.
    pub endpoint: Option<String>,
    /// Its host-side interface.
    pub interface: Option<String>,
    pub ifindex: u32,
    /// `ingress` (to the endpoint) or `egress` (from it).
    pub direction: &'static str,
    /// As `dump counters` names it: `policy-denied`, `spoofed-source`, ...
    pub reason: String,
    /// `tcp`, `udp`, `icmp`, ... (none when the headers were not read).
    pub protocol: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// The packet's length in bytes (none when the headers were not read).
    pub length: Option<u32>,
    /// For a policy drop: the tier, the policy (`kind:namespace/name`, `Profile:name`) and
    /// the index of the rule that denied, as `trace` says them.
    pub tier: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<u32>,
    /// Everything about the rule id that denied.
    pub denied_by: Option<RuleReport>,
}

/// What became of the drops seen while this listener ran (a `summary` line).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Always `summary`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Drops the programs saw while this listener was registered.
    pub seen: u64,
    /// Events written to the ring buffer.
    pub submitted: u64,
    /// Events this listener printed.
    pub shown: u64,
    /// Drops left out by the 1-in-N sample.
    pub sampled_out: u64,
    /// Drops over the rate limit.
    pub rate_limited: u64,
    /// Events lost to a full ring buffer.
    pub ring_full: u64,
}

impl Summary {
    pub fn new(stats: &DropEventStats, shown: u64) -> Self {
        Self {
            kind: "summary",
            seen: stats.seen,
            submitted: stats.submitted,
            shown,
            sampled_out: stats.sampled_out,
            rate_limited: stats.rate_limited,
            ring_full: stats.ring_full,
        }
    }

    /// Drops that did not become events.
    pub fn suppressed(&self) -> u64 {
        self.sampled_out + self.rate_limited + self.ring_full
    }

    /// The summary as a line for a terminal.
    pub fn line(&self) -> String {
        format!(
            "-- {} drops seen, {} shown; suppressed: {} by the sample, {} by the rate limit, {} \
             lost (ring buffer full)",
            self.seen, self.shown, self.sampled_out, self.rate_limited, self.ring_full
        )
    }
}

/// Turns records into [`DropRecord`]s: endpoint and rule names from the pinned maps (looked up
/// for each event, so they follow the agent's changes), times from the monotonic clock.
pub struct Resolver {
    endpoints: Handle<spec::Endpoints>,
    host_endpoints: Handle<spec::HostEndpoints>,
    rules: Handle<spec::Rules>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    realtime_offset_ns: i128,
}

impl Resolver {
    /// Opens the endpoint, host endpoint and rule maps pinned under `layout`.
    ///
    /// # Errors
    ///
    /// The maps missing.
    pub fn open(layout: &PinLayout) -> Result<Self, EventsError> {
        let mut pins = layout;
        let mut resolver = Self {
            endpoints: pins.open::<spec::Endpoints>()?,
            host_endpoints: pins.open::<spec::HostEndpoints>()?,
            rules: pins.open::<spec::Rules>()?,
            realtime_offset_ns: 0,
        };
        resolver.sync_clock();
        Ok(resolver)
    }

    /// Measures the offset between the wall clock and the programs' clock again (the wall
    /// clock may have been set).
    pub fn sync_clock(&mut self) {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        self.realtime_offset_ns = i128::from(realtime) - i128::from(monotonic);
    }

    /// The event in words.
    pub fn describe(&self, event: &DropEvent) -> DropRecord {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        // A workload's interface, or a data interface that a HostEndpoint covers.
        let (endpoint, interface) = match self.endpoints.get(&event.ifindex, 0) {
            Ok(e) => (Some(text(e.name_bytes())), Some(text(e.ifname_bytes()))),
            Err(_) => match self.host_endpoints.get(&event.ifindex, 0) {
                Ok(h) => (
                    Some(format!("HostEndpoint {}", text(h.name_bytes()))),
                    Some(text(h.ifname_bytes())),
                ),
                Err(_) => (None, None),
            },
        };
        let wall_ns = i128::from(event.timestamp_ns) + self.realtime_offset_ns;
        let reason = DropReason::ALL
            .iter()
            .find(|r| **r as u8 == event.reason)
            .map_or_else(|| format!("reason-{}", event.reason), |r| r.as_str().into());
        let denied_by = if event.rule != 0 {
            rule_report(event.rule, self.rules.get(&event.rule, 0).ok())
        } else {
            None
        };
        let parsed = event.family != 0;
        let icmp = parsed && (event.proto == 1 || event.proto == 58);
        let ported = parsed && !icmp;
        DropRecord {
            kind: "drop",
            time: rfc3339_ms(wall_ns),
            endpoint,
            interface,
            ifindex: event.ifindex,
            direction: if event.direction == direction::INGRESS {
                "ingress"
            } else {
                "egress"
            },
            reason,
            protocol: parsed.then(|| protocol_name(event.proto)),
            src: parsed.then(|| key_addr(event.family, &event.src).to_string()),
            dst: parsed.then(|| key_addr(event.family, &event.dst).to_string()),
            sport: ported.then_some(event.sport),
            dport: ported.then_some(event.dport),
            icmp_type: icmp.then_some((event.dport >> 8) as u8),
            icmp_code: icmp.then_some((event.dport & 0xff) as u8),
            length: parsed.then_some(event.len),
            tier: denied_by.as_ref().and_then(|r| r.tier.clone()),
            policy: denied_by.as_ref().and_then(|r| r.policy.clone()),
            rule: denied_by.as_ref().and_then(|r| r.rule),
            denied_by,
        }
    }
}

/// The record as a line for a terminal: time, direction, reason, endpoint, packet, and the rule
/// that denied.
pub fn line(record: &DropRecord) -> String {
    let who = match (&record.endpoint, &record.interface) {
        (Some(endpoint), Some(interface)) => format!("{endpoint} ({interface})"),
        _ => format!("ifindex {} (no endpoint)", record.ifindex),
    };
    let mut out = format!(
        "{} {:<7} {:<17} {}",
        record.time, record.direction, record.reason, who
    );
    if let (Some(protocol), Some(src), Some(dst)) = (&record.protocol, &record.src, &record.dst) {
        let at = |addr: &str, port: Option<u16>| match port {
            Some(port) if addr.contains(':') => format!("[{addr}]:{port}"),
            Some(port) => format!("{addr}:{port}"),
            None => addr.to_owned(),
        };
        out.push_str(&format!(
            "  {protocol} {} -> {}",
            at(src, record.sport),
            at(dst, record.dport)
        ));
        if let (Some(t), Some(c)) = (record.icmp_type, record.icmp_code) {
            out.push_str(&format!(" type {t} code {c}"));
        }
    }
    if let Some(rule) = &record.denied_by {
        out.push_str(&format!("  {}", describe_rule(rule)));
    }
    out
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339_ms(ns: i128) -> String {
    let ns = u64::try_from(ns).unwrap_or(0);
    let seconds = crate::datastore::rfc3339(ns / 1_000_000_000);
    let millis = ns % 1_000_000_000 / 1_000_000;
    match seconds.strip_suffix('Z') {
        Some(stem) => format!("{stem}.{millis:03}Z"),
        None => seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_turns_a_rate_into_an_interval_and_a_burst_window() {
        let selection = Selection::new(100, Some(5), 3).expect("valid");
        let control = selection.control(42, 7);
        assert_eq!(control.interval_ns, 10_000_000);
        assert_eq!(control.burst_ns, 50_000_000);
        assert_eq!((control.sample, control.lease_until_ns), (3, 42));
        assert_eq!(control.listener_pid, 7);
        assert_eq!(Selection::new(10, None, 1).expect("valid").burst, 10);
    }

    #[test]
    fn selection_refuses_nonsense_naming_the_flag() {
        for (rate, burst, sample, flag) in [
            (0, None, 1, "--rate"),
            (Selection::MAX_RATE + 1, None, 1, "--rate"),
            (10, Some(0), 1, "--burst"),
            (10, None, 0, "--sample"),
        ] {
            let error = Selection::new(rate, burst, sample).expect_err("invalid");
            assert!(error.to_string().starts_with(flag), "{error}");
        }
    }

    #[test]
    fn times_keep_milliseconds() {
        assert_eq!(rfc3339_ms(1_500_000_000), "1970-01-01T00:00:01.500Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_policy_drop_reads_as_a_line() {
        let record = DropRecord {
            kind: "drop",
            time: "2025-01-01T00:00:00.000Z".into(),
            endpoint: Some("test/wl1".into()),
            interface: Some("cali1".into()),
            ifindex: 5,
            direction: "ingress",
            reason: "policy-denied".into(),
            protocol: Some("tcp".into()),
            src: Some("198.18.0.11".into()),
            dst: Some("198.18.0.12".into()),
            sport: Some(40000),
            dport: Some(5402),
            icmp_type: None,
            icmp_code: None,
            length: Some(60),
            tier: Some("default".into()),
            policy: Some("NetworkPolicy:test/web".into()),
            rule: Some(0),
            denied_by: Some(RuleReport {
                id: 9,
                kind: "rule".into(),
                tier: Some("default".into()),
                policy: Some("NetworkPolicy:test/web".into()),
                rule: Some(0),
                action: "Deny".into(),
            }),
        };
        assert_eq!(
            line(&record),
            "2025-01-01T00:00:00.000Z ingress policy-denied     test/wl1 (cali1)  tcp \
             198.18.0.11:40000 -> 198.18.0.12:5402  tier default, NetworkPolicy:test/web, \
             rule 0 (Deny)"
        );
    }
}
