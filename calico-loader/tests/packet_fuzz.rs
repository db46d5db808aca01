//! Random and mutated packets through the real kernel programs (BPF_PROG_TEST_RUN), each
//! compared with the userspace reference: the mirror of the programs' parse
//! (`calico_loader::model::frame`), the reference policy evaluator
//! (`calico_loader::model::compile::evaluate`) and the from-workload pipeline's steps. Every
//! packet goes through `calico_tc_from_wl`, `calico_xdp_from_wl`, `calico_tc_to_wl` and, for
//! each endpoint whose own address the packet carries, `calico_trace`; no verdict may differ
//! and nothing may fail.
//!
//! The packets: IPv4 (options, fragments, TTLs), IPv6 (chains of extension headers, first and
//! non-first fragments), TCP, UDP, UDP-Lite, SCTP, ICMP and ICMPv6 (echo, errors quoting a
//! packet, neighbour discovery), other protocols; some mutated (bytes changed, lengths
//! changed, cut short); and a sweep of representative packets cut at every length, with and
//! without their length fields matching the cut.
//!
//! The committed corpus (`tests/fuzz_seeds/packets.txt`: frames found earlier and hand-made
//! ones) runs first. The RNG is seeded: `PACKET_FUZZ_SEED` picks the seed (default fixed, so CI is
//! reproducible), `PACKET_FUZZ_COUNT` the number of random packets (default 3000). A failure
//! prints the seed, the packet's index and bytes. docs/fuzzing.md has the longer run.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN); without it the test fails, it never skips.

#[path = "packet_fuzz/generate.rs"]
mod generate;
mod support;

mod privileged {
    use std::net::IpAddr;

    use aya::{
        Ebpf,
        maps::{HashMap, MapData, PerCpuArray},
        programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    };
    use calico_ebpf_common::{
        ConntrackKey, ConntrackValue, TraceResult, direction, map_names, program_names,
        trace_decided_by, verdict_action,
    };
    use calico_loader::{
        dataplane::{netlink::LinkDetails, private::PrivateDataplane},
        datastore::{Snapshot, WorkloadEndpoint},
        model::{
            compile::{PacketTuple, PolicyContext, evaluate},
            frame::{self, FlowKind, Frame},
            rules::Direction,
        },
        packets::{HOST_MAC, ethernet},
    };

    use crate::{
        generate::*,
        support::programs::{load_kernel_object, load_programs, workload_endpoint},
    };

    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    const XDP_REDIRECT: u32 = 4;

    /// BPF_PROG_TEST_RUN runs programs on the loopback device: the sender is ifindex 1.
    const SENDER_IFINDEX: u32 = 1;
    const RECEIVER_IFINDEX: u32 = 4242;

    const DEFAULT_SEED: u64 = 0x5eed_ca11_c0ff_ee01;
    const DEFAULT_COUNT: usize = 3000;

    /// Policy whose verdicts depend on every field the parse reads: protocols, both ports,
    /// ICMP types and codes, addresses.
    const RESOURCES: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: sender, namespace: test, labels: {role: sender}}
spec: {node: n, interfaceName: lo, ipNetworks: [198.18.0.1/32, "2001:db8::1/128"]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: receiver, namespace: test, labels: {role: receiver}}
spec: {node: n, interfaceName: cali-receiver, ipNetworks: [198.18.0.2/32, "2001:db8::2/128"]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sender-out, namespace: test}
spec:
  selector: role == 'sender'
  types: [Egress]
  egress:
  - {action: Deny, protocol: TCP, destination: {ports: [22]}}
  - {action: Allow, protocol: TCP, destination: {ports: [80, 443, "8000:8099"]}}
  - {action: Allow, protocol: UDP, source: {ports: ["40000:40999"]}, destination: {ports: [53]}}
  - {action: Allow, protocol: UDPLite, destination: {nets: [198.18.0.2/32]}}
  - {action: Allow, protocol: SCTP, source: {ports: [9]}}
  - {action: Allow, protocol: ICMP, icmp: {type: 8}}
  - {action: Allow, protocol: ICMP, icmp: {type: 3, code: 4}}
  - {action: Allow, protocol: ICMPv6, icmp: {type: 128, code: 0}}
  - {action: Allow, protocol: 47}
  - {action: Allow, protocol: UDP, destination: {nets: [198.19.200.0/24], notPorts: [7]}}
  - {action: Allow, protocol: UDP, destination: {nets: ["2001:db8:ff::/48"], notPorts: [7]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sender-in, namespace: test}
spec:
  selector: role == 'sender'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: UDP, destination: {ports: ["50:60"]}}
  - {action: Allow, protocol: ICMPv6, icmp: {type: 129}}
  - {action: Allow, protocol: TCP, source: {nets: [198.18.0.0/24]}, destination: {ports: [8080, 80]}}
  - {action: Deny, protocol: ICMP}
  - {action: Allow, source: {selector: role == 'receiver'}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: receiver-in, namespace: test}
spec:
  selector: role == 'receiver'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, source: {ports: ["1:1023"]}}
  - {action: Deny, protocol: ICMPv6, icmp: {type: 128, code: 1}}
  - {action: Allow}
"#;

    /// What the pipeline does with a packet from the sender.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fate {
        Drop,
        /// To the kernel.
        Pass,
        /// Into the receiving workload.
        Redirect,
        /// Neighbour discovery: to the kernel, or answered by the program; never dropped.
        Housekeeping,
    }

    struct Fixture {
        ebpf: Ebpf,
        dataplane: PrivateDataplane,
        conntrack: HashMap<MapData, ConntrackKey, ConntrackValue>,
    }

    impl Fixture {
        fn new(snapshot: &Snapshot) -> Self {
            let mut ebpf = load_kernel_object();
            let mut dataplane = PrivateDataplane::from_ebpf(&mut ebpf).expect("maps");
            load_programs(
                &mut ebpf,
                &[
                    program_names::TC_FROM_WORKLOAD,
                    program_names::TC_TO_WORKLOAD,
                    program_names::TRACE,
                    program_names::XDP_FROM_WORKLOAD,
                ],
            );
            let conntrack = HashMap::try_from(
                ebpf.take_map(map_names::CONNTRACK)
                    .expect("the conntrack map"),
            )
            .expect("a hash map");

            let sender = workload_endpoint(
                "test/sender",
                "lo",
                SENDER_MAC,
                &["198.18.0.1/32", "2001:db8::1/128"],
            );
            let receiver = workload_endpoint(
                "test/receiver",
                "cali-receiver",
                RECEIVER_MAC,
                &["198.18.0.2/32", "2001:db8::2/128"],
            );
            let link = |ifindex, name: &str| LinkDetails {
                ifindex,
                name: name.into(),
                mac: HOST_MAC,
                tap: false,
            };
            let pairs = [
                (sender, link(SENDER_IFINDEX, "lo")),
                (receiver, link(RECEIVER_IFINDEX, "cali-receiver")),
            ];
            let mut contents = dataplane
                .program(snapshot, &pairs)
                .expect("programming the dataplane");
            contents.routes_v4.insert(
                (24, [198, 19, 100, 0]),
                calico_ebpf_common::RouteValue {
                    kind: calico_ebpf_common::RouteKind::Blackhole as u32,
                    ..Default::default()
                },
            );
            dataplane.maps.reconcile(&contents).expect("the maps");
            Self {
                ebpf,
                dataplane,
                conntrack,
            }
        }

        /// Runs a classifier; `Err` when BPF_PROG_TEST_RUN refuses the frame.
        fn run_tc(&mut self, name: &str, frame: &[u8], ctx: Option<&[u8]>) -> Result<u32, String> {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            let mut out = vec![0u8; frame.len() + 512];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            opts.ctx_in = ctx;
            program
                .test_run(opts)
                .map(|r| r.return_value)
                .map_err(|e| e.to_string())
        }

        fn run_xdp(&mut self, frame: &[u8]) -> Result<u32, String> {
            let program: &mut Xdp = self
                .ebpf
                .program_mut(program_names::XDP_FROM_WORKLOAD)
                .expect("program")
                .try_into()
                .expect("xdp");
            let mut out = vec![0u8; frame.len() + 512];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            program
                .test_run(opts)
                .map(|r| r.return_value)
                .map_err(|e| e.to_string())
        }

        /// What the trace program finds for `frame` at the endpoint behind `ifindex`.
        fn trace(&mut self, frame: &[u8], ifindex: u32, ingress: bool) -> TraceResult {
            let mut context = [0u8; 68];
            context[48..52].copy_from_slice(&ifindex.to_ne_bytes());
            let dir = if ingress {
                direction::INGRESS
            } else {
                direction::EGRESS
            };
            context[52..56].copy_from_slice(&u32::from(dir).to_ne_bytes());
            let before = self.trace_results();
            self.run_tc(program_names::TRACE, frame, Some(&context))
                .expect("BPF_PROG_TEST_RUN of the trace program");
            let after = self.trace_results();
            after
                .into_iter()
                .zip(before)
                .find(|(a, b)| a.sequence != b.sequence)
                .map(|(a, _)| a)
                .expect("the trace program wrote a result")
        }

        fn trace_results(&self) -> Vec<TraceResult> {
            let results: PerCpuArray<_, TraceResult> =
                PerCpuArray::try_from(self.ebpf.map(map_names::TRACE).expect("trace map"))
                    .expect("per-CPU array");
            results
                .get(&0, 0)
                .expect("trace slot")
                .iter()
                .copied()
                .collect()
        }

        /// Empties the conntrack table, so that each packet meets policy alone.
        fn forget_flows(&mut self) {
            let keys: Vec<ConntrackKey> = self.conntrack.keys().filter_map(Result::ok).collect();
            for key in keys {
                let _ = self.conntrack.remove(&key);
            }
        }

        /// The rule id the registry gave `rule`.
        fn rule_id(&self, rule: &calico_loader::model::rules::RuleRef) -> Option<u32> {
            self.dataplane
                .registry
                .iter()
                .find(|(_, entry)| &entry.rule == rule)
                .map(|(id, _)| id)
        }
    }

    /// The reference: the policy side of each endpoint, and the pipeline's steps.
    struct Reference<'s> {
        ctx: PolicyContext<'s>,
        sender: &'s WorkloadEndpoint,
        receiver: &'s WorkloadEndpoint,
    }

    impl Reference<'_> {
        fn verdict(
            &self,
            wep: &WorkloadEndpoint,
            direction: Direction,
            tuple: &PacketTuple,
        ) -> bool {
            evaluate(&self.ctx, wep, direction, tuple)
                .expect("the reference evaluates the test policy")
                .allow
        }

        /// What the from-workload pipeline does with `frame` from the sender.
        fn fate(&self, frame: &[u8]) -> Option<Fate> {
            let flow = match frame::parse(frame) {
                Frame::Malformed => return Some(Fate::Drop),
                Frame::Other => return Some(Fate::Pass),
                // Not generated on purpose; ARP has its own tests.
                Frame::Arp => return None,
                Frame::Ip(flow) => flow,
            };
            let tuple = flow.tuple;
            if let IpAddr::V6(dst) = tuple.dst {
                // Link-local and multicast destinations stay on the link: to the host, after
                // egress policy (which has no entry for a source not the sender's own).
                let on_link = dst.is_multicast() || dst.segments()[0] & 0xffc0 == 0xfe80;
                if on_link {
                    if flow.kind == FlowKind::NeighbourDiscovery {
                        return Some(Fate::Housekeeping);
                    }
                    let allowed = is_sender(tuple.src)
                        && self.verdict(self.sender, Direction::Egress, &tuple);
                    return Some(if allowed { Fate::Pass } else { Fate::Drop });
                }
                if flow.kind == FlowKind::NeighbourDiscovery {
                    return Some(Fate::Housekeeping);
                }
            }
            if !is_sender(tuple.src) {
                return Some(Fate::Drop);
            }
            if tuple.dst == IpAddr::V4(BLACKHOLE_V4)
                || matches!(tuple.dst, IpAddr::V4(a) if a.octets()[..3] == [198, 19, 100])
            {
                return Some(Fate::Drop);
            }
            if !self.verdict(self.sender, Direction::Egress, &tuple) {
                return Some(Fate::Drop);
            }
            let target = if is_receiver(tuple.dst) {
                self.receiver
            } else if is_sender(tuple.dst) {
                self.sender
            } else {
                return Some(Fate::Pass);
            };
            if !self.verdict(target, Direction::Ingress, &tuple) {
                return Some(Fate::Drop);
            }
            Some(if flow.hop_limit <= 1 {
                Fate::Pass
            } else {
                Fate::Redirect
            })
        }
    }

    impl Reference<'_> {
        /// What `calico_tc_to_wl` does with `frame` the kernel sends to the sender (the
        /// loopback's endpoint): its ingress policy, for which the kernel's tables hold the
        /// sender's own destination addresses only.
        fn to_workload_fate(&self, frame: &[u8]) -> Option<Fate> {
            Some(match frame::parse(frame) {
                Frame::Malformed => Fate::Drop,
                Frame::Other | Frame::Arp => Fate::Pass,
                Frame::Ip(flow) if flow.kind == FlowKind::NeighbourDiscovery => Fate::Pass,
                Frame::Ip(flow) => {
                    let allowed = is_sender(flow.tuple.dst)
                        && self.verdict(self.sender, Direction::Ingress, &flow.tuple);
                    if allowed { Fate::Pass } else { Fate::Drop }
                }
            })
        }
    }

    /// The shortest frame BPF_PROG_TEST_RUN runs a program of `hook` on.
    fn test_run_minimum(hook: &str, frame: &[u8]) -> usize {
        match (hook, frame.get(12..14)) {
            ("tc", Some([0x08, 0x00])) => 14 + 20,
            ("tc", Some([0x86, 0xdd])) => 14 + 40,
            _ => 14,
        }
    }

    /// Checks one frame through both hooks and the trace program.
    fn check(f: &mut Fixture, reference: &Reference<'_>, frame: &[u8]) -> Result<(), String> {
        let parsed = frame::parse(frame);
        let fate = reference.fate(frame);
        for hook in ["tc", "xdp"] {
            f.forget_flows();
            let result = if hook == "tc" {
                f.run_tc(program_names::TC_FROM_WORKLOAD, frame, None)
            } else {
                f.run_xdp(frame)
            };
            let verdict = match result {
                Ok(verdict) => verdict,
                // The kernel builds no test packet shorter than an Ethernet header, nor (for
                // TC) an IPv4 or IPv6 skb shorter than its IP header; XDP covers those.
                Err(_) if frame.len() < test_run_minimum(hook, frame) => continue,
                Err(e) => return Err(format!("{hook}: BPF_PROG_TEST_RUN failed: {e}")),
            };
            let (drop, pass, redirect) = if hook == "tc" {
                (TC_ACT_SHOT, TC_ACT_OK, TC_ACT_REDIRECT)
            } else {
                (XDP_DROP, XDP_PASS, XDP_REDIRECT)
            };
            let agrees = match fate {
                None => true,
                Some(Fate::Drop) => verdict == drop,
                Some(Fate::Pass) => verdict == pass,
                Some(Fate::Redirect) => verdict == redirect,
                Some(Fate::Housekeeping) => verdict == pass || verdict == redirect,
            };
            if !agrees {
                return Err(format!(
                    "{hook}: verdict {verdict}, the reference says {fate:?} ({parsed:?})"
                ));
            }
        }
        if frame.len() >= test_run_minimum("tc", frame) {
            f.forget_flows();
            let verdict = f
                .run_tc(program_names::TC_TO_WORKLOAD, frame, None)
                .map_err(|e| format!("to-workload: BPF_PROG_TEST_RUN failed: {e}"))?;
            let expected = match reference.to_workload_fate(frame) {
                Some(Fate::Drop) => TC_ACT_SHOT,
                _ => TC_ACT_OK,
            };
            if verdict != expected {
                return Err(format!(
                    "to-workload: verdict {verdict}, expected {expected} ({parsed:?})"
                ));
            }
        }
        // The policy verdict and the deciding rule, at each endpoint whose own address the
        // packet carries (the kernel's tables hold entries for those only).
        let sides = match parsed {
            Frame::Ip(flow) => [
                (is_sender(flow.tuple.src), SENDER_IFINDEX, false),
                (is_receiver(flow.tuple.dst), RECEIVER_IFINDEX, true),
                (is_sender(flow.tuple.dst), SENDER_IFINDEX, true),
            ],
            _ => [
                (true, SENDER_IFINDEX, false),
                (false, 0, false),
                (false, 0, false),
            ],
        };
        for (applies, ifindex, ingress) in sides {
            if !applies || frame.len() < test_run_minimum("tc", frame) {
                continue;
            }
            f.forget_flows();
            let found = f.trace(frame, ifindex, ingress);
            let expected = match parsed {
                Frame::Ip(flow) if flow.kind == FlowKind::NeighbourDiscovery => {
                    (trace_decided_by::CONNTRACK, verdict_action::ALLOW, None)
                }
                Frame::Ip(flow) => {
                    let (wep, direction) = if ingress && ifindex == RECEIVER_IFINDEX {
                        (reference.receiver, Direction::Ingress)
                    } else if ingress {
                        (reference.sender, Direction::Ingress)
                    } else {
                        (reference.sender, Direction::Egress)
                    };
                    let outcome = evaluate(&reference.ctx, wep, direction, &flow.tuple)
                        .expect("the reference evaluates the test policy");
                    let action = if outcome.allow {
                        verdict_action::ALLOW
                    } else {
                        verdict_action::DENY
                    };
                    (trace_decided_by::POLICY, action, f.rule_id(&outcome.rule))
                }
                _ => (trace_decided_by::MALFORMED, verdict_action::DENY, None),
            };
            let got = (
                found.decided_by,
                found.action,
                (found.decided_by == trace_decided_by::POLICY).then_some(found.rule),
            );
            if got != expected {
                return Err(format!(
                    "trace at ifindex {ifindex}: (decided by, action, rule) {got:?}, \
                     the reference says {expected:?} ({parsed:?})"
                ));
            }
        }
        Ok(())
    }

    fn env_number(name: &str) -> Option<u64> {
        let text = std::env::var(name).ok()?;
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
    }

    /// Found by the fuzzer: an IPv4 packet of protocol 58 (ICMPv6) whose first byte is a
    /// neighbour discovery type (130 to 137) was taken for link housekeeping and let through
    /// without policy, to the receiving workload too. It meets policy now (which denies it).
    #[test]
    fn icmpv6_carried_by_ipv4_meets_policy() {
        let snapshot = Snapshot::from_yaml("fuzz.yaml", RESOURCES).expect("test resources");
        let mut f = Fixture::new(&snapshot);
        for icmp_type in [135u8, 136, 130, 1] {
            let mut icmp = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&[0; 24]);
            let ip = calico_loader::packets::ipv4(SENDER_V4, RECEIVER_V4, 64, 58, &[], &icmp);
            let frame = ethernet(HOST_MAC, SENDER_MAC, 0x0800, &ip);
            f.forget_flows();
            assert_eq!(
                f.run_tc(program_names::TC_FROM_WORKLOAD, &frame, None),
                Ok(TC_ACT_SHOT),
                "TC, type {icmp_type}"
            );
            assert_eq!(f.run_xdp(&frame), Ok(XDP_DROP), "XDP, type {icmp_type}");
            let trace = f.trace(&frame, SENDER_IFINDEX, false);
            assert_eq!(
                (trace.decided_by, trace.action),
                (trace_decided_by::POLICY, verdict_action::DENY),
                "trace, type {icmp_type}"
            );
        }
    }

    #[test]
    fn random_and_mutated_packets_meet_the_reference() {
        let snapshot = Snapshot::from_yaml("fuzz.yaml", RESOURCES).expect("test resources");
        let mut f = Fixture::new(&snapshot);
        let reference = Reference {
            ctx: PolicyContext::new(&snapshot),
            sender: snapshot
                .workload_endpoint("test", "sender")
                .expect("sender"),
            receiver: snapshot
                .workload_endpoint("test", "receiver")
                .expect("receiver"),
        };
        let seed = env_number("PACKET_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
        let count = env_number("PACKET_FUZZ_COUNT").map_or(DEFAULT_COUNT, |n| n as usize);
        eprintln!("packet fuzz: seed {seed:#x}, {count} random packets");
        let fail = |what: &str, frame: &[u8], error: String| -> ! {
            panic!(
                "{what} (PACKET_FUZZ_SEED={seed:#x}): {error}\nframe ({} bytes): {}",
                frame.len(),
                frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };

        // The committed corpus: frames found earlier, and hand-made ones.
        let corpus = include_str!("fuzz_seeds/packets.txt");
        let mut what = "";
        for line in corpus.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                what = comment;
                continue;
            }
            let frame: Vec<u8> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex frame"))
                .collect();
            if let Err(e) = check(&mut f, &reference, &frame) {
                fail(&format!("corpus frame {what:?}"), &frame, e);
            }
        }

        // Every length of representative packets, with and without lengths that match.
        let mut swept = 0;
        for (n, frame) in sweep_frames().iter().enumerate() {
            for len in 0..=frame.len() {
                for fix in [false, true] {
                    let mut cut_frame = frame.clone();
                    cut(&mut cut_frame, len, fix);
                    if let Err(e) = check(&mut f, &reference, &cut_frame) {
                        fail(&format!("sweep frame {n} cut to {len}"), &cut_frame, e);
                    }
                    swept += 1;
                }
            }
        }

        let mut rng = Rng(seed.max(1));
        let mut fates = std::collections::BTreeMap::<String, usize>::new();
        for index in 0..count {
            let frame = random_frame(&mut rng);
            if let Err(e) = check(&mut f, &reference, &frame) {
                fail(&format!("random packet {index}"), &frame, e);
            }
            *fates
                .entry(format!("{:?}", reference.fate(&frame)))
                .or_default() += 1;
            *fates
                .entry(format!(
                    "to-workload {:?}",
                    reference.to_workload_fate(&frame)
                ))
                .or_default() += 1;
        }
        eprintln!("packet fuzz: {swept} cut packets, {count} random ones: {fates:?}");
        // The generator reaches every outcome.
        let outcomes = [
            format!("{:?}", Some(Fate::Drop)),
            format!("{:?}", Some(Fate::Pass)),
            format!("{:?}", Some(Fate::Redirect)),
            format!("to-workload {:?}", Some(Fate::Drop)),
            format!("to-workload {:?}", Some(Fate::Pass)),
        ];
        for outcome in outcomes {
            let met = fates.get(&outcome).copied().unwrap_or(0);
            assert!(met > count / 50, "few packets met {outcome}: {fates:?}");
        }
    }
}
