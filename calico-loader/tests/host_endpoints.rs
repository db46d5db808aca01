//! Host endpoints: the real programs on crafted packets (BPF_PROG_TEST_RUN), then real traffic
//! through a host namespace whose data interface a HostEndpoint covers, with the agent.
//!
//! These need root (CAP_BPF, CAP_NET_ADMIN, namespaces); without it they fail, never skip.

mod support;

/// Every test here needs root: `cargo test -- privileged::` selects them.
mod privileged {
    mod programs {
        use std::net::Ipv4Addr;

        use aya::{
            Ebpf,
            programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
        };
        use calico_ebpf_common::{
            DropReason, EndpointCounters, HostEndpointCounters, program_names,
        };
        use calico_loader::{
            dataplane::{
                host_endpoints::HostSettings,
                netlink::LinkDetails,
                private::{PrivateDataplane, PrivateHost},
            },
            datastore::Snapshot,
            felix_settings,
            packets::{tcp_flags::*, *},
            trace::{self, TraceReport, TraceRequest, TraceTarget},
        };

        use crate::support::programs::{load_kernel_object, load_programs, workload_endpoint};

        const TC_ACT_OK: u32 = 0;
        const TC_ACT_SHOT: u32 = 2;
        const TC_ACT_REDIRECT: u32 = 7;

        /// BPF_PROG_TEST_RUN runs on the loopback: the host endpoint's interface (and the
        /// sending workload's) is ifindex 1.
        const LO: u32 = 1;
        const RECEIVER_IFINDEX: u32 = 4242;
        const RECEIVER_MAC: [u8; 6] = [0xca, 0xfe, 0, 0, 0, 0x02];
        const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
        const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
        const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
        const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
        const BAD_NET_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 7);
        /// The loopback's MAC: a frame to it is `PACKET_HOST`.
        const TO_US: [u8; 6] = [0; 6];

        /// Two workloads (the sender on the loopback, a receiver) with an allow-all profile, and a
        /// host endpoint `edge` labelled `role: edge`, then `policies`.
        fn resources(policies: &str) -> String {
            format!(
                "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: allow-all}}\n\
                 spec: {{ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n---\n\
                 apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {{name: sender, namespace: test}}\n\
                 spec: {{node: n, interfaceName: lo, ipNetworks: [198.18.0.1/32], profiles: [allow-all]}}\n---\n\
                 apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {{name: receiver, namespace: test}}\n\
                 spec: {{node: n, interfaceName: cali-receiver, ipNetworks: [198.18.0.2/32], profiles: [allow-all]}}\n---\n\
                 apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
                 metadata: {{name: edge, labels: {{role: edge}}}}\n\
                 spec: {{node: n, interfaceName: lo, expectedIPs: [198.18.9.1]}}\n{policies}"
            )
        }

        fn gnp(name: &str, spec: &str) -> String {
            format!(
                "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
                 metadata: {{name: {name}}}\nspec: {spec}\n"
            )
        }

        struct Fixture {
            ebpf: Ebpf,
            dataplane: PrivateDataplane,
        }

        impl Fixture {
            /// Loads the object and the programs, and programs the workloads and the host endpoint
            /// with `policies`, Felix's default failsafe ports and `DefaultEndpointToHostAction`
            /// `to_host_drop`.
            fn new(policies: &str, to_host_drop: bool) -> Self {
                let mut ebpf = load_kernel_object();
                let mut dataplane =
                    PrivateDataplane::from_ebpf(&mut ebpf).expect("maps in the object");
                load_programs(
                    &mut ebpf,
                    &[
                        program_names::TC_HOST_ENDPOINT_INGRESS,
                        program_names::TC_HOST_ENDPOINT_EGRESS,
                        program_names::TC_FROM_WORKLOAD,
                        program_names::XDP_HOST_ENDPOINT,
                    ],
                );
                let link = |ifindex, name: &str| LinkDetails {
                    ifindex,
                    name: name.into(),
                    mac: HOST_MAC,
                    tap: false,
                };
                let endpoints = vec![
                    (
                        workload_endpoint(
                            "test/sender",
                            "lo",
                            [0xca, 0xfe, 0, 0, 0, 1],
                            &["198.18.0.1/32"],
                        ),
                        link(LO, "lo"),
                    ),
                    (
                        workload_endpoint(
                            "test/receiver",
                            "cali-receiver",
                            RECEIVER_MAC,
                            &["198.18.0.2/32"],
                        ),
                        link(RECEIVER_IFINDEX, "cali-receiver"),
                    ),
                ];
                let defaults = felix_settings::resolve(&[]).expect("Felix's defaults");
                let settings = HostSettings {
                    to_host_drop,
                    ..HostSettings::from(&defaults)
                };
                let snapshot = Snapshot::from_yaml("test.yaml", &resources(policies))
                    .expect("valid test resources");
                dataplane
                    .program_with_host(
                        &snapshot,
                        &endpoints,
                        &PrivateHost {
                            endpoints: vec![("edge".into(), link(LO, "lo"))],
                            addresses: vec![HOST_V4.into()],
                            settings,
                        },
                    )
                    .expect("programming the dataplane");
                Self { ebpf, dataplane }
            }

            fn run(&mut self, name: &str, packet: &[u8]) -> u32 {
                let program: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(name)
                    .expect("program")
                    .try_into()
                    .expect("classifier");
                let mut out = vec![0u8; packet.len() + 256];
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(packet);
                opts.data_out = Some(&mut out);
                program
                    .test_run(opts)
                    .expect("BPF_PROG_TEST_RUN")
                    .return_value
            }

            /// Runs the host endpoint's ingress program (a packet arriving).
            fn arriving(&mut self, packet: &[u8]) -> u32 {
                self.run(program_names::TC_HOST_ENDPOINT_INGRESS, packet)
            }

            /// Runs the host endpoint's egress program (a packet leaving).
            fn leaving(&mut self, packet: &[u8]) -> u32 {
                self.run(program_names::TC_HOST_ENDPOINT_EGRESS, packet)
            }

            /// Runs the host endpoint's XDP program (untracked ingress policy) on a frame
            /// arriving on the loopback.
            fn arriving_xdp(&mut self, packet: &[u8]) -> u32 {
                let program: &mut Xdp = self
                    .ebpf
                    .program_mut(program_names::XDP_HOST_ENDPOINT)
                    .expect("program")
                    .try_into()
                    .expect("xdp");
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex.
                let mut context = [0u8; 24];
                context[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                context[12..16].copy_from_slice(&LO.to_ne_bytes());
                let mut out = vec![0u8; packet.len() + 256];
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(packet);
                opts.data_out = Some(&mut out);
                opts.ctx_in = Some(&context);
                program
                    .test_run(opts)
                    .expect("BPF_PROG_TEST_RUN")
                    .return_value
            }

            /// `calico-loader trace`'s answer for a TCP SYN or UDP packet (`proto` 6 or 17)
            /// from `src:sport` to `dst:dport` through the host endpoint's interface (the
            /// loopback), arriving (`ingress`) or leaving, on the fixture's maps.
            fn trace_hep(
                &mut self,
                ingress: bool,
                proto: u8,
                (src, sport): (Ipv4Addr, u16),
                (dst, dport): (Ipv4Addr, u16),
            ) -> TraceReport {
                let request = TraceRequest {
                    endpoint: "lo".into(),
                    target: TraceTarget::HostEndpoint,
                    ingress,
                    protocol: proto,
                    src: src.into(),
                    sport,
                    dst: dst.into(),
                    dport,
                    icmp_type: 0,
                    icmp_code: 0,
                };
                let registry = &self.dataplane.registry;
                trace::evaluate(&mut self.ebpf, LO, &request, |id| registry.info(id))
                    .expect("trace")
            }

            fn hep_counters(&self) -> HostEndpointCounters {
                self.dataplane
                    .maps
                    .host_endpoint_counters()
                    .expect("counters")
                    .get(&LO)
                    .copied()
                    .expect("the host endpoint has counters")
            }

            fn counters(&self, ifindex: u32) -> EndpointCounters {
                self.dataplane
                    .maps
                    .counters()
                    .expect("counters")
                    .get(&ifindex)
                    .copied()
                    .unwrap_or_default()
            }
        }

        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;

        /// Checks that trace gives `verdict`, decided by `decided_by`, and that its last stage
        /// (the deciding one) is `stage`, with `detail` in its words.
        fn assert_trace(
            report: &TraceReport,
            verdict: &str,
            decided_by: &str,
            stage: &str,
            detail: &str,
        ) {
            let text = trace::text(report);
            assert_eq!(report.verdict, verdict, "{text}");
            assert_eq!(report.decided_by, decided_by, "{text}");
            let last = report.stages.last().expect("a deciding stage");
            assert_eq!(last.stage, stage, "{text}");
            assert_eq!(last.outcome, verdict, "{text}");
            assert!(
                last.detail.contains(detail),
                "{detail:?} not in the deciding stage:\n{text}"
            );
        }

        fn syn_to_host(port: u16) -> Vec<u8> {
            tcp_v4_frame(TO_US, REMOTE_V4, HOST_V4, 40000, port, SYN)
        }

        #[test]
        fn a_deny_all_host_policy_leaves_the_failsafe_ports_open() {
            let deny_all = gnp(
                "deny-all",
                "{selector: role == 'edge', types: [Ingress, Egress], ingress: [{action: Deny}], \
                 egress: [{action: Deny}]}",
            );
            let mut f = Fixture::new(&deny_all, false);

            // Inbound: SSH (tcp:22, failsafe) opens; another port does not.
            assert_eq!(
                f.arriving(&syn_to_host(22)),
                TC_ACT_OK,
                "tcp:22 is failsafe"
            );
            assert_eq!(
                f.arriving(&syn_to_host(8080)),
                TC_ACT_SHOT,
                "tcp:8080 is denied"
            );
            // The host's reply on the failsafe flow passes on its conntrack entry, whatever the
            // egress policy says.
            let syn_ack = tcp_v4_frame(TO_US, HOST_V4, REMOTE_V4, 22, 40000, SYN | ACK);
            assert_eq!(f.leaving(&syn_ack), TC_ACT_OK, "the reply leaves");
            let ack = tcp_v4_frame(TO_US, REMOTE_V4, HOST_V4, 40000, 22, ACK);
            assert_eq!(f.arriving(&ack), TC_ACT_OK, "the flow goes on");

            // Outbound: the host's own connections meet its egress policy, except to the
            // outbound failsafe ports (udp:53 among them).
            let out = tcp_v4_frame(TO_US, HOST_V4, REMOTE_V4, 41000, 443, SYN);
            assert_eq!(
                f.leaving(&out),
                TC_ACT_SHOT,
                "tcp:443 from the host is denied"
            );
            let dns = udp_v4_ports_frame(TO_US, HOST_V4, REMOTE_V4, 41000, 53);
            assert_eq!(
                f.leaving(&dns),
                TC_ACT_OK,
                "udp:53 from the host is failsafe"
            );
            let dns_reply = udp_v4_ports_frame(TO_US, REMOTE_V4, HOST_V4, 53, 41000);
            assert_eq!(f.arriving(&dns_reply), TC_ACT_OK, "its reply comes back");
            // An unsolicited packet from the DNS server's port is no failsafe flow.
            let stray = udp_v4_ports_frame(TO_US, REMOTE_V4, HOST_V4, 53, 41001);
            assert_eq!(f.arriving(&stray), TC_ACT_SHOT);

            let c = f.hep_counters();
            assert_eq!((c.failsafe_in, c.failsafe_out), (1, 1));
            assert_eq!(c.drops[DropReason::PolicyDenied as usize], 3);
            assert_eq!((c.in_packets, c.out_packets), (5, 3));
            assert_eq!((c.to_host_packets, c.from_host_packets), (3, 2));
        }

        #[test]
        fn host_endpoint_drops_are_reported_as_drop_events() {
            use calico_ebpf_common::{DropEvent, DropEventControl, direction};

            let deny_all = gnp(
                "deny-all",
                "{selector: role == 'edge', types: [Ingress, Egress], ingress: [{action: Deny}], \
                 egress: [{action: Deny}]}",
            );
            let mut f = Fixture::new(&deny_all, false);
            let mut control: aya::maps::Array<_, DropEventControl> = f
                .ebpf
                .take_map("cali_drop_ctl")
                .expect("control map")
                .try_into()
                .expect("array");
            let mut ring: aya::maps::RingBuf<_> = f
                .ebpf
                .take_map("cali_drop_evts")
                .expect("ring buffer")
                .try_into()
                .expect("ring buffer");
            let now = calico_loader::dataplane::conntrack::monotonic_ns();
            let selection =
                calico_loader::events::Selection::new(1000, Some(1000), 1).expect("selection");
            control
                .set(
                    0,
                    selection.control(now + 5_000_000_000, std::process::id()),
                    0,
                )
                .expect("register a listener");

            assert_eq!(f.arriving(&syn_to_host(8080)), TC_ACT_SHOT);
            let out = tcp_v4_frame(TO_US, HOST_V4, REMOTE_V4, 41000, 443, SYN);
            assert_eq!(f.leaving(&out), TC_ACT_SHOT);
            // A failsafe flow is no drop.
            assert_eq!(f.arriving(&syn_to_host(22)), TC_ACT_OK);

            let mut got: Vec<DropEvent> = Vec::new();
            while let Some(item) = ring.next() {
                got.push(calico_loader::events::decode(&item).expect("a whole record"));
            }
            assert_eq!(got.len(), 2, "{got:?}");
            for event in &got {
                assert_eq!(event.reason, DropReason::PolicyDenied as u8);
                assert_eq!(event.ifindex, LO, "the host endpoint's interface");
                assert_eq!((event.family, event.proto), (4, 6));
                assert_ne!(event.rule, 0, "the rule that denied");
            }
            assert_eq!(got[0].direction, direction::INGRESS);
            assert_eq!((got[0].sport, got[0].dport), (40000, 8080));
            assert_eq!(got[1].direction, direction::EGRESS);
            assert_eq!((got[1].sport, got[1].dport), (41000, 443));
            assert_eq!(
                f.hep_counters().drops[DropReason::PolicyDenied as usize],
                2,
                "counted as well"
            );
        }

        #[test]
        fn without_policy_the_host_is_closed_but_forwarded_traffic_passes() {
            let mut f = Fixture::new("", false);
            assert_eq!(f.arriving(&syn_to_host(8080)), TC_ACT_SHOT);
            assert_eq!(f.arriving(&syn_to_host(22)), TC_ACT_OK);
            // Forwarded to a local workload: no apply-on-forward policy, so it is delivered.
            let to_workload = udp_v4_ports_frame(TO_US, REMOTE_V4, RECEIVER_V4, 40000, 80);
            assert_eq!(f.arriving(&to_workload), TC_ACT_REDIRECT);
            assert_eq!(f.counters(RECEIVER_IFINDEX).from_data_packets, 1);
            // Forwarded out (from a workload's address): untouched.
            let from_workload = udp_v4_ports_frame(TO_US, RECEIVER_V4, REMOTE_V4, 80, 40000);
            assert_eq!(f.leaving(&from_workload), TC_ACT_OK);
            let c = f.hep_counters();
            assert_eq!((c.forward_in_packets, c.forward_out_packets), (1, 1));
        }

        #[test]
        fn apply_on_forward_policy_covers_forwarded_traffic_and_plain_policy_does_not() {
            let policies = gnp(
                "no-80-host-only",
                "{order: 1, selector: role == 'edge', ingress: [{action: Deny, protocol: UDP, \
                 destination: {ports: [80]}}, {action: Allow}]}",
            ) + &gnp(
                "no-81-forwarded",
                "{order: 2, selector: role == 'edge', applyOnForward: true, ingress: [{action: Deny, \
                 protocol: UDP, destination: {ports: [81]}}, {action: Pass}]}",
            );
            let mut f = Fixture::new(&policies, false);
            let to_workload = |port| udp_v4_ports_frame(TO_US, REMOTE_V4, RECEIVER_V4, 40000, port);
            assert_eq!(
                f.arriving(&to_workload(80)),
                TC_ACT_REDIRECT,
                "a policy without applyOnForward leaves forwarded traffic alone"
            );
            assert_eq!(
                f.arriving(&to_workload(81)),
                TC_ACT_SHOT,
                "an applyOnForward policy denies forwarded traffic"
            );
            assert_eq!(
                f.arriving(&to_workload(82)),
                TC_ACT_REDIRECT,
                "what apply-on-forward policy passes is allowed"
            );
            let to_host = |port| udp_v4_ports_frame(TO_US, REMOTE_V4, HOST_V4, 40000, port);
            assert_eq!(f.arriving(&to_host(80)), TC_ACT_SHOT, "host policy denies");
            assert_eq!(f.arriving(&to_host(81)), TC_ACT_OK, "host policy allows");
        }

        #[test]
        fn pre_dnat_policy_applies_first() {
            let policies = gnp(
                "block-bad-net",
                "{order: 1, selector: role == 'edge', preDNAT: true, applyOnForward: true, \
                 ingress: [{action: Deny, source: {nets: [198.19.250.0/24]}}]}",
            ) + &gnp(
                "open-host",
                "{order: 2, selector: role == 'edge', ingress: [{action: Allow}]}",
            );
            let mut f = Fixture::new(&policies, false);
            let from = |src, dst, port| udp_v4_ports_frame(TO_US, src, dst, 40000, port);
            assert_eq!(f.arriving(&from(BAD_NET_V4, HOST_V4, 8080)), TC_ACT_SHOT);
            assert_eq!(f.arriving(&from(BAD_NET_V4, RECEIVER_V4, 80)), TC_ACT_SHOT);
            assert_eq!(f.arriving(&from(REMOTE_V4, HOST_V4, 8080)), TC_ACT_OK);
            assert_eq!(
                f.arriving(&from(REMOTE_V4, RECEIVER_V4, 80)),
                TC_ACT_REDIRECT
            );
            // The failsafe ports come before pre-DNAT policy.
            let ssh = tcp_v4_frame(TO_US, BAD_NET_V4, HOST_V4, 40000, 22, SYN);
            assert_eq!(f.arriving(&ssh), TC_ACT_OK);
        }

        #[test]
        fn default_endpoint_to_host_action_decides_workload_to_host_traffic() {
            // The sender's own frames, on its interface (the loopback).
            let to_host = udp_v4_ports_frame(HOST_MAC, SENDER_V4, HOST_V4, 40000, 8080);
            let to_workload = udp_v4_ports_frame(HOST_MAC, SENDER_V4, RECEIVER_V4, 40000, 8081);
            let mut drop = Fixture::new("", true);
            assert_eq!(
                drop.run(program_names::TC_FROM_WORKLOAD, &to_host),
                TC_ACT_SHOT
            );
            assert_eq!(
                drop.counters(LO).drops[DropReason::EndpointToHost as usize],
                1
            );
            assert_eq!(
                drop.run(program_names::TC_FROM_WORKLOAD, &to_workload),
                TC_ACT_REDIRECT,
                "only traffic to the host is concerned"
            );
            let mut accept = Fixture::new("", false);
            assert_eq!(
                accept.run(program_names::TC_FROM_WORKLOAD, &to_host),
                TC_ACT_OK
            );
            assert_eq!(accept.counters(LO).to_host_packets, 1);
        }

        #[test]
        fn neighbour_discovery_reaches_the_host_whatever_the_endpoint_to_host_action() {
            // ICMPv6 from the sender's link-local address to a link-scope group, as a
            // workload's kernel sends them on its own: router solicitations (133) and the
            // neighbour discovery and MLDv1 types Felix accepts from workloads before policy
            // and DefaultEndpointToHostAction. An MLDv2 report (143) is not among them: it
            // meets egress policy (which has no entry for a link-local source) and the action,
            // as in Felix.
            let icmpv6 = |icmp_type: u8, dst: &str| {
                let src: std::net::Ipv6Addr = "fe80::1".parse().expect("address");
                let dst: std::net::Ipv6Addr = dst.parse().expect("address");
                let mut icmp = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
                let mut pseudo = [src.octets(), dst.octets()].concat();
                pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 58]);
                pseudo.extend_from_slice(&icmp);
                icmp[2..4].copy_from_slice(&checksum(&pseudo).to_be_bytes());
                ethernet(
                    [0x33, 0x33, 0, 0, 0, 2],
                    HOST_MAC,
                    0x86dd,
                    &ipv6(src, dst, 255, 58, &icmp),
                )
            };
            let mut drop = Fixture::new("", true);
            for (icmp_type, dst) in [(133, "ff02::2"), (135, "ff02::1:ff00:1"), (131, "ff02::16")] {
                assert_eq!(
                    drop.run(program_names::TC_FROM_WORKLOAD, &icmpv6(icmp_type, dst)),
                    TC_ACT_OK,
                    "ICMPv6 type {icmp_type} to {dst} is handed to the host"
                );
            }
            assert_eq!(
                drop.counters(LO).drops[DropReason::EndpointToHost as usize],
                0
            );
            assert_eq!(
                drop.run(program_names::TC_FROM_WORKLOAD, &icmpv6(143, "ff02::16")),
                TC_ACT_SHOT,
                "an MLDv2 report is not housekeeping"
            );
            assert_eq!(drop.counters(LO).drops.iter().sum::<u64>(), 1);
        }

        /// `trace --interface` against the real programs, on the same maps: the verdict it
        /// gives is the one the programs give, and it names the stage that decided.
        #[test]
        fn trace_explains_failsafe_ports_and_host_policy() {
            let deny_all = gnp(
                "deny-all",
                "{selector: role == 'edge', types: [Ingress, Egress], ingress: [{action: Deny}], \
                 egress: [{action: Deny}]}",
            );
            let mut f = Fixture::new(&deny_all, false);
            let tcp = 6;
            let (remote, host) = ((REMOTE_V4, 40000), (HOST_V4, 22));

            // SSH through a deny-all policy: the failsafe port decides.
            let report = f.trace_hep(true, tcp, remote, host);
            assert_eq!(f.arriving(&syn_to_host(22)), TC_ACT_OK);
            assert_trace(
                &report,
                "allow",
                "failsafe",
                "failsafe",
                "failsafe port tcp:22 (FailsafeInboundHostPorts)",
            );
            assert_eq!(report.path.as_deref(), Some("host"));

            // Another port: the host policy's Deny.
            let report = f.trace_hep(true, tcp, remote, (HOST_V4, 8080));
            assert_eq!(f.arriving(&syn_to_host(8080)), TC_ACT_SHOT);
            assert_trace(
                &report,
                "deny",
                "policy",
                "host-policy",
                "GlobalNetworkPolicy:deny-all, rule 0 (Deny)",
            );
            let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
            assert_eq!(names, ["failsafe", "conntrack", "host-policy"]);

            // Leaving: the outbound failsafe port udp:53 after conntrack; tcp:443 denied.
            let report = f.trace_hep(false, 17, (HOST_V4, 41000), (REMOTE_V4, 53));
            let dns = udp_v4_ports_frame(TO_US, HOST_V4, REMOTE_V4, 41000, 53);
            assert_eq!(f.leaving(&dns), TC_ACT_OK);
            assert_trace(
                &report,
                "allow",
                "failsafe",
                "failsafe",
                "udp:53 (FailsafeOutboundHostPorts)",
            );
            let report = f.trace_hep(false, tcp, (HOST_V4, 41000), (REMOTE_V4, 443));
            let out = tcp_v4_frame(TO_US, HOST_V4, REMOTE_V4, 41000, 443, SYN);
            assert_eq!(f.leaving(&out), TC_ACT_SHOT);
            assert_trace(&report, "deny", "policy", "host-policy", "deny-all");

            // The flow SSH opened: conntrack lets the host's reply out (trace changes nothing:
            // the entry is the program's).
            let report = f.trace_hep(false, tcp, (HOST_V4, 22), (REMOTE_V4, 40000));
            assert_eq!(report.verdict, "allow");
            assert_eq!(report.decided_by, "conntrack");
        }

        #[test]
        fn trace_explains_host_policy_and_its_default_deny() {
            let open_8081 = gnp(
                "open-8081",
                "{selector: role == 'edge', ingress: [{action: Allow, protocol: UDP, \
                 destination: {ports: [8081]}}]}",
            );
            let mut f = Fixture::new(&open_8081, false);
            let to_host = |port| udp_v4_ports_frame(TO_US, REMOTE_V4, HOST_V4, 40000, port);
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (HOST_V4, 8081));
            assert_eq!(f.arriving(&to_host(8081)), TC_ACT_OK);
            assert_trace(
                &report,
                "allow",
                "policy",
                "host-policy",
                "GlobalNetworkPolicy:open-8081, rule 0 (Allow)",
            );

            // No policy at all: the host is closed.
            let mut f = Fixture::new("", false);
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (HOST_V4, 8081));
            assert_eq!(f.arriving(&to_host(8081)), TC_ACT_SHOT);
            assert_trace(
                &report,
                "deny",
                "policy",
                "host-policy",
                "no policy or profile allowed it (default deny)",
            );
            // ...but forwarded traffic passes untouched.
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (RECEIVER_V4, 80));
            assert_eq!(
                f.arriving(&udp_v4_ports_frame(
                    TO_US,
                    REMOTE_V4,
                    RECEIVER_V4,
                    40000,
                    80
                )),
                TC_ACT_REDIRECT
            );
            assert_trace(
                &report,
                "allow",
                "forward-open",
                "forward-policy",
                "untouched",
            );
            assert_eq!(report.path.as_deref(), Some("forward"));
        }

        #[test]
        fn trace_explains_pre_dnat_policy() {
            let policies = gnp(
                "block-bad-net",
                "{order: 1, selector: role == 'edge', preDNAT: true, applyOnForward: true, \
                 ingress: [{action: Deny, source: {nets: [198.19.250.0/24]}}]}",
            ) + &gnp(
                "open-host",
                "{order: 2, selector: role == 'edge', ingress: [{action: Allow}]}",
            );
            let mut f = Fixture::new(&policies, false);
            let from = |src, dst, port| udp_v4_ports_frame(TO_US, src, dst, 40000, port);
            for dst in [HOST_V4, RECEIVER_V4] {
                let report = f.trace_hep(true, 17, (BAD_NET_V4, 40000), (dst, 80));
                assert_eq!(f.arriving(&from(BAD_NET_V4, dst, 80)), TC_ACT_SHOT);
                assert_trace(
                    &report,
                    "deny",
                    "policy",
                    "pre-dnat-policy",
                    "pre-DNAT policy tier default, GlobalNetworkPolicy:block-bad-net, rule 0 (Deny)",
                );
            }
            // What pre-DNAT policy leaves undecided meets the host policy.
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (HOST_V4, 8080));
            assert_eq!(f.arriving(&from(REMOTE_V4, HOST_V4, 8080)), TC_ACT_OK);
            assert_trace(&report, "allow", "policy", "host-policy", "open-host");
            // Forwarded: no apply-on-forward policy decides, so it is allowed.
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (RECEIVER_V4, 80));
            assert_eq!(
                f.arriving(&from(REMOTE_V4, RECEIVER_V4, 80)),
                TC_ACT_REDIRECT
            );
            assert_trace(
                &report,
                "allow",
                "policy",
                "forward-policy",
                "no apply-on-forward policy decided",
            );
        }

        #[test]
        fn trace_explains_untracked_policy() {
            let policies = gnp(
                "untracked-block",
                "{selector: role == 'edge', doNotTrack: true, applyOnForward: true, \
                 ingress: [{action: Deny, source: {nets: [198.19.250.0/24]}}]}",
            ) + &gnp(
                "open-host",
                "{selector: role == 'edge', ingress: [{action: Allow}]}",
            );
            let mut f = Fixture::new(&policies, false);
            let bad = udp_v4_ports_frame(TO_US, BAD_NET_V4, HOST_V4, 40000, 8080);
            let report = f.trace_hep(true, 17, (BAD_NET_V4, 40000), (HOST_V4, 8080));
            assert_eq!(f.arriving_xdp(&bad), XDP_DROP);
            assert_trace(
                &report,
                "deny",
                "untracked-policy",
                "untracked-policy",
                "GlobalNetworkPolicy:untracked-block, rule 0 (Deny): denied (dropped in XDP)",
            );
            // The failsafe ports come before untracked policy.
            let ssh = tcp_v4_frame(TO_US, BAD_NET_V4, HOST_V4, 40000, 22, SYN);
            let report = f.trace_hep(true, 6, (BAD_NET_V4, 40000), (HOST_V4, 22));
            assert_eq!(f.arriving_xdp(&ssh), XDP_PASS);
            assert_eq!(f.arriving(&ssh), TC_ACT_OK);
            assert_trace(&report, "allow", "failsafe", "failsafe", "tcp:22");
            // What no untracked policy decides goes on to the host policy.
            let good = udp_v4_ports_frame(TO_US, REMOTE_V4, HOST_V4, 40000, 8080);
            let report = f.trace_hep(true, 17, (REMOTE_V4, 40000), (HOST_V4, 8080));
            assert_eq!(f.arriving_xdp(&good), XDP_PASS);
            assert_eq!(f.arriving(&good), TC_ACT_OK);
            assert_trace(&report, "allow", "policy", "host-policy", "open-host");
            let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
            assert_eq!(
                names,
                ["failsafe", "untracked-policy", "conntrack", "host-policy"]
            );
        }

        #[test]
        fn trace_explains_default_endpoint_to_host_action() {
            let to_host = udp_v4_ports_frame(HOST_MAC, SENDER_V4, HOST_V4, 40000, 8080);
            let request = TraceRequest {
                endpoint: "test/sender".into(),
                target: TraceTarget::Workload,
                ingress: false,
                protocol: 17,
                src: SENDER_V4.into(),
                sport: 40000,
                dst: HOST_V4.into(),
                dport: 8080,
                icmp_type: 0,
                icmp_code: 0,
            };
            for (to_host_drop, program, verdict) in
                [(true, TC_ACT_SHOT, "deny"), (false, TC_ACT_OK, "allow")]
            {
                let mut f = Fixture::new("", to_host_drop);
                let registry = &f.dataplane.registry;
                let report = trace::evaluate(&mut f.ebpf, LO, &request, |id| registry.info(id))
                    .expect("trace");
                assert_eq!(f.run(program_names::TC_FROM_WORKLOAD, &to_host), program);
                let text = trace::text(&report);
                assert_eq!(report.verdict, verdict, "{text}");
                if to_host_drop {
                    assert_eq!(report.decided_by, "endpoint-to-host", "{text}");
                    let last = report.stages.last().expect("stages");
                    assert_eq!(last.stage, "endpoint-to-host", "{text}");
                    assert!(
                        text.contains("DefaultEndpointToHostAction (Drop)"),
                        "{text}"
                    );
                } else {
                    assert_eq!(report.decided_by, "policy", "{text}");
                }
            }
        }
    }

    /// Real traffic: a host namespace whose data interface `eth0` leads to an "outside"
    /// namespace, a workload behind the host, and the agent; a HostEndpoint covers `eth0`.
    mod traffic {
        use std::{
            net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
            time::Duration,
        };

        use crate::support::topology::{
            Agent, Datastore, Netns, Topology, netns, unique, wait_for,
        };

        const NODE: &str = "hep-node";
        const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
        const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);

        struct Setup {
            topology: Topology,
            outside: Netns,
            datastore: Datastore,
            /// Listening sockets: a connection completes as soon as the handshake does.
            _listeners: Vec<TcpListener>,
        }

        /// Listens on `port` in `ns` (every address).
        fn listen(ns: &Netns, port: u16) -> TcpListener {
            ns.enter(move || {
                TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("listen")
            })
        }

        /// Whether a TCP connection from `ns` to `dst:port` completes within a second.
        fn connects(ns: &Netns, dst: Ipv4Addr, port: u16) -> bool {
            ns.enter(move || {
                TcpStream::connect_timeout(
                    &SocketAddr::new(IpAddr::V4(dst), port),
                    Duration::from_secs(1),
                )
                .is_ok()
            })
        }

        fn hep_yaml(interface: &str) -> String {
            format!(
                "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
                 metadata: {{name: {NODE}-eth0, labels: {{role: edge}}}}\n\
                 spec: {{node: {NODE}, interfaceName: \"{interface}\", expectedIPs: [{HOST_V4}]}}\n"
            )
        }

        fn gnp(name: &str, spec: &str) -> String {
            format!(
                "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
                 metadata: {{name: {name}}}\nspec: {spec}\n"
            )
        }

        fn setup() -> Setup {
            let topology = Topology::new(1);
            let outside = netns("cehout");
            topology
                .host
                .add_veth(
                    "eth0",
                    "02:00:00:00:09:01",
                    &outside,
                    "eth0",
                    "02:00:00:00:09:02",
                )
                .expect("the data interface's veth pair");
            topology
                .host
                .exec(&["ip", "addr", "add", "198.18.9.1/24", "dev", "eth0"]);
            outside.exec(&["ip", "link", "set", "eth0", "up"]);
            outside.exec(&["ip", "addr", "add", "198.18.9.2/24", "dev", "eth0"]);
            outside.exec(&["ip", "route", "add", "198.18.0.0/24", "via", "198.18.9.1"]);
            let datastore = Datastore::new();
            datastore.write("endpoints.yaml", &topology.workload(1).endpoint_yaml(NODE));
            let listeners = vec![
                listen(&topology.host, 22),
                listen(&topology.host, 8080),
                listen(&outside, 443),
                listen(&outside, 8443),
                listen(&topology.workload(1).ns, 7000),
                listen(&topology.workload(1).ns, 8080),
            ];
            Setup {
                topology,
                outside,
                datastore,
                _listeners: listeners,
            }
        }

        fn start(setup: &Setup, env: &[(&str, &str)]) -> Agent {
            let agent = Agent::start_with_env(
                &setup.topology,
                &setup.datastore,
                NODE,
                std::path::PathBuf::from("/sys/fs/bpf").join(unique("calico-test-")),
                &["--networking-backend", "none"],
                env,
            );
            agent.wait_attached(&[&setup.topology.workload(1).host_ifname]);
            agent
        }

        /// The host endpoint row of `dump endpoints` for eth0, once its programs are attached.
        fn host_endpoint_row(agent: &Agent) -> Option<serde_json::Value> {
            agent.dump("endpoints").as_array().and_then(|rows| {
                rows.iter()
                    .find(|r| r["kind"] == "host-endpoint" && r["interface"] == "eth0")
                    .cloned()
            })
        }

        #[test]
        fn host_endpoint_policy_failsafes_forwarding_and_pre_dnat() {
            let s = setup();
            let agent = start(&s, &[]);
            let workload = s.topology.workload(1);
            let w = workload.v4;
            wait_for(
                "the data interface to be attached",
                Duration::from_secs(20),
                || agent.data_interface_attached("eth0"),
            );
            // Without a host endpoint: everything open.
            assert!(
                connects(&s.outside, HOST_V4, 8080),
                "to the host, no host endpoint"
            );
            assert!(connects(&s.outside, w, 7000), "to the workload");

            // A host endpoint without policy: the host is closed except its failsafe ports;
            // forwarded traffic is untouched.
            s.datastore.write("hep.yaml", &hep_yaml("eth0"));
            wait_for(
                "the host endpoint to close port 8080",
                Duration::from_secs(20),
                || !connects(&s.outside, HOST_V4, 8080),
            );
            let row = host_endpoint_row(&agent).expect("dump endpoints shows the host endpoint");
            assert_eq!(row["name"], format!("{NODE}-eth0"));
            assert_eq!(row["attached"], true, "{row}");
            assert!(
                connects(&s.outside, HOST_V4, 22),
                "SSH (tcp:22) is failsafe"
            );
            assert!(connects(&s.outside, w, 7000), "forwarded traffic passes");
            assert!(
                !connects(&s.topology.host, OUTSIDE_V4, 443),
                "the host cannot send out"
            );

            // Host policy: in to 8080, out to 443; a policy without applyOnForward does not
            // touch forwarded traffic.
            let host_policy = gnp(
                "edge-host",
                "{order: 10, selector: role == 'edge', types: [Ingress, Egress], \
                 ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080]}}, \
                 {action: Deny, protocol: TCP}], \
                 egress: [{action: Allow, protocol: TCP, destination: {ports: [443]}}]}",
            );
            s.datastore.write("policy.yaml", &host_policy);
            wait_for("host policy to allow 8080", Duration::from_secs(20), || {
                connects(&s.outside, HOST_V4, 8080)
            });
            assert!(
                connects(&s.topology.host, OUTSIDE_V4, 443),
                "egress to 443 allowed"
            );
            assert!(
                !connects(&s.topology.host, OUTSIDE_V4, 8443),
                "egress elsewhere denied"
            );
            assert!(
                connects(&s.outside, HOST_V4, 22),
                "still failsafe under a deny rule"
            );
            assert!(connects(&s.outside, w, 8080), "forwarded 8080 untouched");
            assert!(connects(&s.outside, w, 7000), "forwarded 7000 untouched");

            // The same rules with applyOnForward: forwarded traffic meets them too.
            s.datastore.write(
                "policy.yaml",
                &host_policy.replace("order: 10,", "order: 10, applyOnForward: true,"),
            );
            wait_for(
                "forwarded 7000 to be denied",
                Duration::from_secs(20),
                || !connects(&s.outside, w, 7000),
            );
            assert!(connects(&s.outside, w, 8080), "forwarded 8080 allowed");
            assert!(
                connects(&s.outside, HOST_V4, 8080),
                "host 8080 still allowed"
            );
            // Forwarded out: the workload's connections leaving through eth0 meet the egress
            // rules too, whether the kernel forwards them...
            let wns = &workload.ns;
            assert!(
                connects(wns, OUTSIDE_V4, 443),
                "forwarded out to 443 allowed"
            );
            assert!(
                !connects(wns, OUTSIDE_V4, 8443),
                "forwarded out elsewhere denied"
            );
            // ...or the workload's program sends them itself, through the FIB (the outside as
            // another node's workload).
            s.datastore.write(
                "remote.yaml",
                "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {name: elsewhere-cni-x-eth0, namespace: test}\n\
                 spec: {node: elsewhere, interfaceName: calix, ipNetworks: [198.18.9.2/32]}\n",
            );
            let forwarded_remote = || {
                agent.counters(&workload.host_ifname)["forwarded_remote_packets"]
                    .as_u64()
                    .unwrap_or(0)
            };
            let before = forwarded_remote();
            wait_for(
                "the program to forward to the outside",
                Duration::from_secs(20),
                || connects(wns, OUTSIDE_V4, 443) && forwarded_remote() > before,
            );
            assert!(
                !connects(wns, OUTSIDE_V4, 8443),
                "through the FIB, still denied"
            );
            s.datastore.remove("remote.yaml");

            // Pre-DNAT policy comes first: it denies the outside's traffic to 8080 both to the
            // host and forwarded, but not the failsafe port.
            let pre_dnat = gnp(
                "edge-pre-dnat",
                "{order: 1, selector: role == 'edge', preDNAT: true, applyOnForward: true, \
                 ingress: [{action: Deny, protocol: TCP, source: {nets: [198.18.9.2/32]}, \
                 destination: {ports: [8080]}}]}",
            );
            s.datastore.write("pre-dnat.yaml", &pre_dnat);
            wait_for(
                "pre-DNAT policy to deny 8080",
                Duration::from_secs(20),
                || !connects(&s.outside, HOST_V4, 8080),
            );
            assert!(
                !connects(&s.outside, w, 8080),
                "forwarded 8080 denied before DNAT"
            );
            assert!(
                connects(&s.outside, HOST_V4, 22),
                "failsafe before pre-DNAT policy"
            );

            // Counters: per interface, with the failsafe flows and the drops.
            let counters = agent
                .dump("counters")
                .as_array()
                .and_then(|rows| {
                    rows.iter()
                        .find(|r| r["kind"] == "host-endpoint" && r["interface"] == "eth0")
                        .cloned()
                })
                .expect("dump counters shows the host endpoint");
            assert!(counters["failsafe_in"].as_u64() >= Some(3), "{counters}");
            assert!(
                counters["drops"]["policy-denied"].as_u64() >= Some(3),
                "{counters}"
            );
            assert!(counters["to_host_packets"].as_u64() > Some(0), "{counters}");

            // A bad edit is refused with the field named; the host endpoint stays in force.
            s.datastore.write("hep.yaml", &hep_yaml("eth0*"));
            wait_for("the refusal in the log", Duration::from_secs(20), || {
                let log = agent.log();
                log.contains("hep.yaml") && log.contains("spec.interfaceName")
            });
            assert!(
                !connects(&s.outside, HOST_V4, 8080),
                "the last good state stays"
            );
            assert!(host_endpoint_row(&agent).is_some());

            // Untracked policy (tests/untracked.rs has its traffic): an untracked Allow from the
            // outside takes port 8080 past the tracked policy's deny, without a conntrack entry.
            s.datastore.write("hep.yaml", &hep_yaml("eth0"));
            s.datastore.write(
                "untracked.yaml",
                &gnp(
                    "edge-untracked",
                    "{selector: role == 'edge', doNotTrack: true, applyOnForward: true, \
                     types: [Ingress, Egress], \
                     ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080]}}], \
                     egress: [{action: Allow, protocol: TCP, source: {ports: [8080]}}]}",
                ),
            );
            wait_for(
                "untracked policy to open 8080",
                Duration::from_secs(20),
                || connects(&s.outside, HOST_V4, 8080),
            );
            // Earlier flows to 8080 have entries still: look for this connection's own.
            let local = s.outside.enter(|| {
                let stream = TcpStream::connect_timeout(
                    &SocketAddr::new(IpAddr::V4(HOST_V4), 8080),
                    Duration::from_secs(1),
                )
                .expect("untracked connection");
                stream.local_addr().expect("local address")
            });
            let entries = agent.dump("conntrack");
            let tracked = entries.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["opener"] == local.to_string().as_str())
            });
            assert!(
                !tracked,
                "the untracked flow has no conntrack entry: {entries}"
            );
            s.datastore.remove("untracked.yaml");
            wait_for(
                "the tracked policy's deny again",
                Duration::from_secs(20),
                || !connects(&s.outside, HOST_V4, 8080),
            );

            // Without the host endpoint, the interface is a plain data interface again.
            s.datastore.remove("hep.yaml");
            wait_for("the host endpoint to go", Duration::from_secs(20), || {
                connects(&s.outside, HOST_V4, 8080)
            });
            assert!(host_endpoint_row(&agent).is_none());
            wait_for(
                "the plain data program back",
                Duration::from_secs(20),
                || agent.data_interface_attached("eth0"),
            );
            assert!(connects(&s.outside, w, 8080));
        }

        #[test]
        fn default_endpoint_to_host_action_drop_and_accept() {
            let s = setup();
            let w = s.topology.workload(1);
            {
                let agent = start(&s, &[]);
                // The workload's path through the host works (its route is in place)...
                wait_for(
                    "the workload to reach the outside",
                    Duration::from_secs(20),
                    || connects(&w.ns, OUTSIDE_V4, 443),
                );
                // ...but not to the host itself.
                assert!(
                    !connects(&w.ns, HOST_V4, 8080),
                    "Felix's default (Drop): a workload cannot reach the host"
                );
                let drops = agent.counters(&w.host_ifname)["drops"]["endpoint-to-host"].as_u64();
                assert!(drops > Some(0), "counted: {:?}", drops);
                let src = format!("{}:40000", w.v4);
                let trace = agent.trace(&[
                    "--endpoint",
                    &format!("test/{NODE}-cni-wl1-eth0"),
                    "--direction",
                    "egress",
                    "--protocol",
                    "tcp",
                    "--src",
                    &src,
                    "--dst",
                    "198.18.9.1:8080",
                ]);
                assert_eq!(trace["verdict"], "deny", "{trace}");
                assert_eq!(trace["destination"]["route"], "host", "{trace}");
                assert!(
                    trace["then"]
                        .as_str()
                        .is_some_and(|t| t.contains("DefaultEndpointToHostAction")),
                    "{trace}"
                );
            }
            let agent = start(&s, &[("FELIX_DEFAULTENDPOINTTOHOSTACTION", "Accept")]);
            wait_for(
                "Accept: the workload reaches the host",
                Duration::from_secs(20),
                || connects(&w.ns, HOST_V4, 8080),
            );
            let drops = agent.counters(&w.host_ifname)["drops"]["endpoint-to-host"].as_u64();
            assert_eq!(drops, Some(0), "nothing dropped by the setting");
        }
    }
}
