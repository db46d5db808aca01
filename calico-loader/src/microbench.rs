//! Per-packet cost of the real kernel programs, through BPF_PROG_TEST_RUN with repeat: the
//! whole from-workload pipeline on a packet forwarded between two local workloads, with a
//! given number of routes in the route map. `cargo xtask bench` runs it.

use std::net::Ipv4Addr;

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
        map_contents,
        maps::Maps,
        netlink::LinkDetails,
    },
    model::LocalEndpoint,
    packets::{HOST_MAC, udp_v4_frame},
};

/// BPF_PROG_TEST_RUN runs on the loopback device, so the sender is ifindex 1.
const SENDER_IFINDEX: u32 = 1;
const RECEIVER_IFINDEX: u32 = 4242;
const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Runs per BPF_PROG_TEST_RUN call: the program rewrites the same packet on every repeat, so a
/// call must end before the TTL (255) runs out and the packet takes another path.
const REPEAT_PER_CALL: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum MicrobenchError {
    #[error("loading the kernel object (this needs root): {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Maps(#[from] crate::dataplane::maps::MapsError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error(transparent)]
    Lookup(#[from] AttachError),
    #[error("the {hook} program returned {got} instead of a redirect: the benchmark packet was not forwarded")]
    NotForwarded { hook: &'static str, got: u32 },
}

/// Nanoseconds per packet of each hook's program.
#[derive(Clone, Debug, Serialize)]
pub struct MicrobenchResult {
    pub routes: u32,
    pub packets: u64,
    pub tc_ns_per_packet: f64,
    pub xdp_ns_per_packet: f64,
}

/// The address of the `i`-th extra route: /32s in 198.18.0.0/15 after the two workloads'.
fn extra_route(i: u32) -> [u8; 4] {
    let n = 16 + i;
    [198, 18 + ((n >> 16) & 1) as u8, (n >> 8) as u8, n as u8]
}

/// Loads the programs (unpinned), programs two workloads and `routes` routes in all (at most
/// 131,000), and runs `packets` forwarded packets through each hook.
pub fn run(routes: u32, packets: u64) -> Result<MicrobenchResult, MicrobenchError> {
    let mut ebpf = EbpfLoader::new().load(KERNEL_OBJECT)?;
    let mut maps = Maps::from_ebpf(&mut ebpf)?;
    let name = program_names::TC_FROM_WORKLOAD;
    let classifier: &mut SchedClassifier = program(&mut ebpf, name)?;
    classifier.load().map_err(|source| MicrobenchError::Program { name, source })?;
    let name = program_names::XDP_FROM_WORKLOAD;
    let xdp: &mut Xdp = program(&mut ebpf, name)?;
    xdp.load().map_err(|source| MicrobenchError::Program { name, source })?;

    let endpoint = |key: &str, ip: Ipv4Addr, mac: [u8; 6]| LocalEndpoint {
        key: key.to_owned(),
        interface: key.to_owned(),
        mac: Some(mac),
        networks: vec![ipnet::IpNet::new(ip.into(), 32).expect("a /32 is valid")],
        allowed_spoof: Vec::new(),
    };
    let sender_mac = [0xca, 0xfe, 0, 0, 0, 1];
    let sender = endpoint("bench/sender", SENDER, sender_mac);
    let receiver = endpoint("bench/receiver", RECEIVER, [0xca, 0xfe, 0, 0, 0, 2]);
    let link = |ifindex, name: &str| LinkDetails { ifindex, name: name.to_owned(), mac: HOST_MAC };
    let (sender_link, receiver_link) = (link(SENDER_IFINDEX, "lo"), link(RECEIVER_IFINDEX, "receiver"));
    let mut contents = map_contents([(&sender, &sender_link), (&receiver, &receiver_link)]);
    let route = contents.routes_v4[&(32, RECEIVER.octets())];
    for i in 0..routes.saturating_sub(2).min(131_000) {
        contents.routes_v4.insert((32, extra_route(i)), RouteValue { kind: RouteKind::LocalWorkload as u32, ..route });
    }
    maps.reconcile(&contents)?;

    let packet = udp_v4_frame(sender_mac, SENDER, RECEIVER, 255, &[]);
    let calls = packets.div_ceil(u64::from(REPEAT_PER_CALL)).max(1);
    let measure = |ebpf: &mut Ebpf, hook: &'static str| -> Result<f64, MicrobenchError> {
        let mut total_ns = 0.0;
        for _ in 0..calls {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&packet);
            opts.repeat = REPEAT_PER_CALL;
            let (result, redirect) = if hook == "tc" {
                let p: &mut SchedClassifier = program(ebpf, program_names::TC_FROM_WORKLOAD)?;
                (p.test_run(opts), 7)
            } else {
                let p: &mut Xdp = program(ebpf, program_names::XDP_FROM_WORKLOAD)?;
                (p.test_run(opts), 4)
            };
            let result = result.map_err(|source| MicrobenchError::Program { name: hook, source })?;
            if result.return_value != redirect {
                return Err(MicrobenchError::NotForwarded { hook, got: result.return_value });
            }
            total_ns += result.duration.as_nanos() as f64;
        }
        Ok(total_ns / calls as f64)
    };
    let tc_ns_per_packet = measure(&mut ebpf, "tc")?;
    let xdp_ns_per_packet = measure(&mut ebpf, "xdp")?;
    Ok(MicrobenchResult {
        routes: contents.routes_v4.len() as u32,
        packets: calls * u64::from(REPEAT_PER_CALL),
        tc_ns_per_packet,
        xdp_ns_per_packet,
    })
}
