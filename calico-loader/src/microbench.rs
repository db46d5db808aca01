//! Per-packet cost of the real kernel programs, through BPF_PROG_TEST_RUN with repeat: the
//! whole from-workload pipeline on a packet between two local workloads, with a given number
//! of routes in the route map and of rules in the receiver's ingress policy. `cargo xtask bench`
//! runs it.
//!
//! Two packets are measured. A UDP datagram: its flow is tracked by the first run, so every
//! later run is the established path (conntrack hit, forwarding). A TCP segment without SYN:
//! no entry is ever made for it, so every run meets policy in full (the three policy lookups
//! of a new flow) before being forwarded.

use std::{fmt::Write as _, net::Ipv4Addr};

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use calico_ebpf_common::{RouteKind, RouteValue, program_names};
use serde::Serialize;

use crate::{
    dataplane::{
        KERNEL_OBJECT,
        attach::{AttachError, program},
        netlink::LinkDetails,
        private::{PrivateDataplane, PrivateDataplaneError},
    },
    datastore::Snapshot,
    model::LocalEndpoint,
    packets::{HOST_MAC, ethernet, ipv4, udp_v4_frame},
};

/// BPF_PROG_TEST_RUN runs on the loopback device, so the sender is ifindex 1.
const SENDER_IFINDEX: u32 = 1;
const RECEIVER_IFINDEX: u32 = 4242;
const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The port the policy's last rule allows, and the TCP packet goes to.
const SERVICE_PORT: u16 = 8080;
/// Runs per BPF_PROG_TEST_RUN call: the program rewrites the same packet on every repeat, so a
/// call must end before the TTL (255) runs out and the packet takes another path.
const REPEAT_PER_CALL: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum MicrobenchError {
    #[error("loading the kernel object (this needs root): {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Dataplane(#[from] PrivateDataplaneError),
    #[error(transparent)]
    Maps(#[from] crate::dataplane::maps::MapsError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error(transparent)]
    Lookup(#[from] AttachError),
    #[error(
        "the {hook} program returned {got} instead of a redirect: the benchmark packet was not forwarded"
    )]
    NotForwarded { hook: &'static str, got: u32 },
    #[error("the kernel object has no conntrack map")]
    NoConntrack,
    #[error("filling the conntrack table: {0}")]
    Conntrack(aya::maps::MapError),
}

/// Nanoseconds per packet of each hook's program.
#[derive(Clone, Debug, Serialize)]
pub struct MicrobenchResult {
    pub routes: u32,
    pub rules: u32,
    /// Other flows in the conntrack table while measuring.
    pub conntrack_entries: u32,
    pub packets: u64,
    /// A tracked UDP flow (conntrack hit), TC and XDP.
    pub tc_ns_per_packet: f64,
    pub xdp_ns_per_packet: f64,
    /// Policy evaluated on every packet (an untracked TCP segment), TC.
    pub tc_policy_ns_per_packet: f64,
}

/// The address of the `i`-th extra route: /32s in 198.18.0.0/15 after the two workloads'.
fn extra_route(i: u32) -> [u8; 4] {
    let n = 16 + i;
    [198, 18 + ((n >> 16) & 1) as u8, (n >> 8) as u8, n as u8]
}

/// The two workloads, an allow-all profile, and `rules` rules on the receiver's ingress (in
/// policies of 1,000): the first allows UDP (the tracked flow), the others each allow TCP from
/// their own /32 of 198.19.0.0/16 to a port; the last one allows the sender to
/// [`SERVICE_PORT`].
fn resources(rules: u32) -> String {
    let mut yaml = String::from(
        "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: allow-all}\n\
         spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: sender, namespace: bench, labels: {role: sender}}\n\
         spec: {node: n, interfaceName: lo, ipNetworks: [198.18.0.1/32], profiles: [allow-all]}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: receiver, namespace: bench, labels: {role: receiver}}\n\
         spec: {node: n, interfaceName: receiver, ipNetworks: [198.18.0.2/32], profiles: [allow-all]}\n",
    );
    for n in 0..rules {
        if n % 1000 == 0 {
            let _ = write!(
                yaml,
                "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: bench-{:03}}}\n\
                 spec:\n  order: {}\n  selector: role == 'receiver'\n  types: [Ingress]\n  ingress:\n",
                n / 1000,
                n / 1000
            );
        }
        if n == 0 {
            yaml.push_str("  - {action: Allow, protocol: UDP}\n");
            continue;
        }
        let (source, port) = if n + 1 == rules {
            (format!("{SENDER}/32"), SERVICE_PORT)
        } else {
            (
                format!("198.19.{}.{}/32", n / 250, n % 250 + 1),
                10_000 + (n % 5000) as u16,
            )
        };
        let _ = writeln!(
            yaml,
            "  - {{action: Allow, protocol: TCP, source: {{nets: [\"{source}\"]}}, destination: {{ports: [{port}]}}}}"
        );
    }
    yaml
}

/// A TCP segment (ACK only) from the sender to the receiver's service port.
fn tcp_ack_frame(sender_mac: [u8; 6]) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&SERVICE_PORT.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    ethernet(
        HOST_MAC,
        sender_mac,
        0x0800,
        &ipv4(SENDER, RECEIVER, 255, 6, &[], &tcp),
    )
}

/// What one measurement runs with.
#[derive(Clone, Copy, Debug)]
pub struct MicrobenchSetup {
    /// Routes in all (at most 131,000).
    pub routes: u32,
    /// Rules in the receiver's ingress policy.
    pub rules: u32,
    /// Entries of other flows put into the conntrack table first (the table is sized to hold
    /// them and the measured flows).
    pub conntrack_entries: u32,
}

/// Fills the conntrack table with `count` established TCP flows between addresses of
/// 198.19.0.0/16 (none the measured packets use).
fn fill_conntrack(ebpf: &mut Ebpf, count: u32) -> Result<(), MicrobenchError> {
    use calico_ebpf_common::{ConntrackKey, ConntrackValue, conntrack_flags, map_names};
    let map = ebpf
        .map_mut(map_names::CONNTRACK)
        .ok_or(MicrobenchError::NoConntrack)?;
    let mut table: aya::maps::HashMap<_, ConntrackKey, ConntrackValue> =
        aya::maps::HashMap::try_from(map).map_err(MicrobenchError::Conntrack)?;
    let now = crate::dataplane::conntrack::monotonic_ns();
    let value = ConntrackValue {
        created_ns: now,
        last_seen_ns: now,
        flags: conntrack_flags::SYN_FWD | conntrack_flags::SYN_REV | conntrack_flags::ESTABLISHED,
        ..ConntrackValue::default()
    };
    for i in 0..count {
        let mut key = ConntrackKey {
            proto: 6,
            family: 4,
            port_a: 40_000 + (i % 20_000) as u16,
            port_b: 443,
            ..ConntrackKey::default()
        };
        key.addr_a[..4].copy_from_slice(&[198, 19, (i / 20_000 % 256) as u8, 1]);
        key.addr_b[..4].copy_from_slice(&[198, 19, 255, (i / 5_120_000 % 256) as u8]);
        table
            .insert(key, value, 0)
            .map_err(MicrobenchError::Conntrack)?;
    }
    Ok(())
}

/// Loads the programs (unpinned), programs two workloads, the routes, rules and conntrack
/// entries of `setup`, and runs `packets` packets through each measurement.
pub fn run(setup: MicrobenchSetup, packets: u64) -> Result<MicrobenchResult, MicrobenchError> {
    let MicrobenchSetup {
        routes,
        rules,
        conntrack_entries,
    } = setup;
    let mut loader = EbpfLoader::new();
    let table_size = conntrack_entries.saturating_add(conntrack_entries / 4).max(
        <calico_ebpf_common::maps::Conntrack as calico_ebpf_common::maps::MapSpec>::DEF.max_entries,
    );
    loader.map_max_entries(calico_ebpf_common::map_names::CONNTRACK, table_size);
    let mut ebpf = loader.load(KERNEL_OBJECT)?;
    let mut dataplane = PrivateDataplane::from_ebpf(&mut ebpf)?;
    let name = program_names::TC_FROM_WORKLOAD;
    let classifier: &mut SchedClassifier = program(&mut ebpf, name)?;
    classifier
        .load()
        .map_err(|source| MicrobenchError::Program { name, source })?;
    let name = program_names::XDP_FROM_WORKLOAD;
    let xdp: &mut Xdp = program(&mut ebpf, name)?;
    xdp.load()
        .map_err(|source| MicrobenchError::Program { name, source })?;

    let endpoint = |key: &str, ip: Ipv4Addr, mac: [u8; 6]| LocalEndpoint {
        key: key.to_owned(),
        interface: key.to_owned(),
        mac: Some(mac),
        networks: vec![ipnet::IpNet::new(ip.into(), 32).expect("a /32 is valid")],
        allowed_spoof: Vec::new(),
        ipv4_gateway: None,
        ip_nats: Vec::new(),
    };
    let sender_mac = [0xca, 0xfe, 0, 0, 0, 1];
    let link = |ifindex, name: &str| LinkDetails {
        ifindex,
        name: name.to_owned(),
        mac: HOST_MAC,
        tap: false,
    };
    let endpoints = [
        (
            endpoint("bench/sender", SENDER, sender_mac),
            link(SENDER_IFINDEX, "lo"),
        ),
        (
            endpoint("bench/receiver", RECEIVER, [0xca, 0xfe, 0, 0, 0, 2]),
            link(RECEIVER_IFINDEX, "receiver"),
        ),
    ];
    let snapshot = Snapshot::from_yaml("microbench.yaml", &resources(rules))
        .map_err(|e| PrivateDataplaneError::Program(format!("{e:?}")))?;
    let mut contents = dataplane.program(&snapshot, &endpoints)?;
    let route = contents.routes_v4[&(32, RECEIVER.octets())];
    for i in 0..routes.saturating_sub(2).min(131_000) {
        contents.routes_v4.insert(
            (32, extra_route(i)),
            RouteValue {
                kind: RouteKind::LocalWorkload as u32,
                ..route
            },
        );
    }
    dataplane.maps.reconcile(&contents)?;
    fill_conntrack(&mut ebpf, conntrack_entries)?;

    let udp = udp_v4_frame(sender_mac, SENDER, RECEIVER, 255, &[]);
    let tcp = tcp_ack_frame(sender_mac);
    let calls = packets.div_ceil(u64::from(REPEAT_PER_CALL)).max(1);
    let measure =
        |ebpf: &mut Ebpf, hook: &'static str, packet: &[u8]| -> Result<f64, MicrobenchError> {
            let mut total_ns = 0.0;
            for _ in 0..calls {
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(packet);
                opts.repeat = REPEAT_PER_CALL;
                let (result, redirect) = if hook == "tc" {
                    let p: &mut SchedClassifier = program(ebpf, program_names::TC_FROM_WORKLOAD)?;
                    (p.test_run(opts), 7)
                } else {
                    let p: &mut Xdp = program(ebpf, program_names::XDP_FROM_WORKLOAD)?;
                    (p.test_run(opts), 4)
                };
                let result =
                    result.map_err(|source| MicrobenchError::Program { name: hook, source })?;
                if result.return_value != redirect {
                    return Err(MicrobenchError::NotForwarded {
                        hook,
                        got: result.return_value,
                    });
                }
                total_ns += result.duration.as_nanos() as f64;
            }
            Ok(total_ns / calls as f64)
        };
    let tc_ns_per_packet = measure(&mut ebpf, "tc", &udp)?;
    let xdp_ns_per_packet = measure(&mut ebpf, "xdp", &udp)?;
    let tc_policy_ns_per_packet = measure(&mut ebpf, "tc", &tcp)?;
    Ok(MicrobenchResult {
        routes: contents.routes_v4.len() as u32,
        rules,
        conntrack_entries,
        packets: calls * u64::from(REPEAT_PER_CALL),
        tc_ns_per_packet,
        xdp_ns_per_packet,
        tc_policy_ns_per_packet,
    })
}
