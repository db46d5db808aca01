//! Program tests: the real kernel programs, loaded into the kernel and run through
//! BPF_PROG_TEST_RUN on crafted packets. Each test checks the verdict, the bytes the program
//! wrote (MACs, TTL or hop limit, checksums) and the counters.
//!
//! These need root (CAP_BPF + CAP_NET_ADMIN); without it they fail, they never skip.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use aya::{
        Ebpf,
        programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    };
    use calico_ebpf_common::{DropReason, EndpointCounters, RouteKind, RouteValue, program_names};
    use calico_loader::packets::*;
    use calico_loader::{
        dataplane::{netlink::LinkDetails, private::PrivateDataplane},
        datastore::Snapshot,
    };

    use crate::support::{
        programs::{load_kernel_object, load_programs, workload_endpoint},
        topology::{Netns, netns, require_root},
    };

    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    const XDP_REDIRECT: u32 = 4;

    /// BPF_PROG_TEST_RUN runs skb and XDP programs on the loopback device: the sending workload's
    /// interface is therefore ifindex 1.
    const SENDER_IFINDEX: u32 = 1;
    const RECEIVER_IFINDEX: u32 = 4242;
    const SENDER_MAC: [u8; 6] = [0xca, 0xfe, 0, 0, 0, 0x01];
    const RECEIVER_MAC: [u8; 6] = [0xca, 0xfe, 0, 0, 0, 0x02];
    const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const RECEIVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const NOT_OURS_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
    const BLACKHOLE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 1);

    /// Checks the IPv4 header checksum of a frame and the UDP checksum of its payload.
    fn assert_ipv4_checksums_valid(frame: &[u8]) {
        let ip = &frame[14..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        assert_eq!(
            ones_complement_sum(&ip[..header_len], 0),
            0xffff,
            "IPv4 header checksum is wrong: {:02x?}",
            &ip[..header_len]
        );
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let l4 = &ip[header_len..total];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, ip[9]]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(l4);
        assert_eq!(
            ones_complement_sum(&pseudo, 0),
            0xffff,
            "UDP checksum is wrong"
        );
    }

    fn assert_ipv6_udp_checksum_valid(frame: &[u8]) {
        let ip = &frame[14..];
        let l4 = &ip[40..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ip[6]]);
        pseudo.extend_from_slice(l4);
        assert_eq!(
            ones_complement_sum(&pseudo, 0),
            0xffff,
            "UDP/IPv6 checksum is wrong"
        );
    }

    struct Fixture {
        ebpf: Ebpf,
        dataplane: PrivateDataplane,
    }

    /// The two test workloads as WorkloadEndpoints, with an allow-all profile (policy is tested in
    /// `policy.rs`); `spoof` is the sender's `allowSpoofedSourcePrefixes`.
    fn resources(spoof: &[&str]) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: allow-all}}\n\
         spec: {{ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: sender, namespace: test}}\n\
         spec: {{node: n, interfaceName: lo, ipNetworks: [198.18.0.1/32, \"2001:db8::1/128\"], profiles: [allow-all], \
         allowSpoofedSourcePrefixes: [{}]}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: receiver, namespace: test}}\n\
         spec: {{node: n, interfaceName: cali-receiver, ipNetworks: [198.18.0.2/32, \"2001:db8::2/128\"], profiles: [allow-all]}}\n",
            spoof.join(", ")
        )
    }

    impl Fixture {
        /// Loads the object (unpinned), loads the programs and programs two endpoints: the sender
        /// on ifindex 1 and a receiver.
        fn new() -> Self {
            let mut ebpf = load_kernel_object();
            let dataplane = PrivateDataplane::from_ebpf(&mut ebpf).expect("maps in the object");
            load_programs(
                &mut ebpf,
                &[
                    program_names::TC_FROM_WORKLOAD,
                    program_names::TC_TO_WORKLOAD,
                    program_names::TC_FROM_DATA,
                    program_names::XDP_FROM_WORKLOAD,
                    program_names::XDP_FROM_DATA,
                ],
            );
            let mut fixture = Self { ebpf, dataplane };
            fixture.program(true, &[]);
            fixture
        }

        /// Programs the two endpoints (or only the receiver), with the sender allowed to send from
        /// `spoof` too, and a blackhole route.
        fn program(&mut self, with_sender: bool, spoof: &[&str]) {
            self.program_with(with_sender, spoof, false);
        }

        /// Like `program`, with the sender's interface a tap (a VM's) when `sender_tap`.
        fn program_with(&mut self, with_sender: bool, spoof: &[&str], sender_tap: bool) {
            self.program_endpoints(with_sender, spoof, sender_tap, Vec::new());
        }

        /// Like `program_with`, with the sender's floating IPs (`ipNATs`).
        fn program_endpoints(
            &mut self,
            with_sender: bool,
            spoof: &[&str],
            sender_tap: bool,
            sender_nats: Vec<(std::net::IpAddr, std::net::IpAddr)>,
        ) {
            let mut sender = workload_endpoint(
                "test/sender",
                "lo",
                SENDER_MAC,
                &["198.18.0.1/32", "2001:db8::1/128"],
            );
            sender.allowed_spoof = spoof
                .iter()
                .map(|n| n.parse().expect("test CIDR"))
                .collect();
            sender.ip_nats = sender_nats;
            let receiver = workload_endpoint(
                "test/receiver",
                "cali-receiver",
                RECEIVER_MAC,
                &["198.18.0.2/32", "2001:db8::2/128"],
            );
            let sender_link = LinkDetails {
                ifindex: SENDER_IFINDEX,
                name: "lo".into(),
                mac: HOST_MAC,
                tap: sender_tap,
            };
            let receiver_link = LinkDetails {
                ifindex: RECEIVER_IFINDEX,
                name: "cali-receiver".into(),
                mac: HOST_MAC,
                tap: false,
            };
            let mut pairs = vec![(receiver, receiver_link)];
            if with_sender {
                pairs.push((sender, sender_link));
            }
            let snapshot =
                Snapshot::from_yaml("test.yaml", &resources(spoof)).expect("valid test resources");
            let mut contents = self
                .dataplane
                .program(&snapshot, &pairs)
                .expect("programming the dataplane");
            contents.routes_v4.insert(
                (24, [198, 19, 100, 0]),
                RouteValue {
                    kind: RouteKind::Blackhole as u32,
                    ..Default::default()
                },
            );
            self.dataplane
                .maps
                .reconcile(&contents)
                .expect("programming the maps");
        }

        fn run_tc(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
            self.try_run_tc(packet).expect("BPF_PROG_TEST_RUN")
        }

        /// Like `run_tc`, but returns the kernel's refusal: BPF_PROG_TEST_RUN will not build an
        /// skb from some truncated frames (EINVAL), although a real one can carry them.
        fn try_run_tc(
            &mut self,
            packet: &[u8],
        ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
            self.try_run_classifier(program_names::TC_FROM_WORKLOAD, packet)
        }

        /// Runs the TC program of a data interface.
        fn run_tc_data(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
            self.try_run_classifier(program_names::TC_FROM_DATA, packet)
                .expect("BPF_PROG_TEST_RUN")
        }

        fn try_run_classifier(
            &mut self,
            name: &str,
            packet: &[u8],
        ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
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
            let result = program.test_run(opts)?;
            out.truncate(result.data_size_out as usize);
            Ok((result.return_value, out))
        }

        fn run_xdp(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
            self.run_xdp_program(program_names::XDP_FROM_WORKLOAD, packet)
        }

        /// Runs the XDP program of a data interface.
        fn run_xdp_data(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
            self.run_xdp_program(program_names::XDP_FROM_DATA, packet)
        }

        fn run_xdp_program(&mut self, name: &str, packet: &[u8]) -> (u32, Vec<u8>) {
            let program: &mut Xdp = self
                .ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("xdp");
            let mut out = vec![0u8; packet.len() + 256];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(packet);
            opts.data_out = Some(&mut out);
            let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
            out.truncate(result.data_size_out as usize);
            (result.return_value, out)
        }

        /// Adds route map entries to what is programmed.
        fn add_routes(
            &mut self,
            v4: &[((u32, [u8; 4]), RouteValue)],
            v6: &[((u32, [u8; 16]), RouteValue)],
        ) {
            let mut contents = self.dataplane.maps.read().expect("read the maps");
            contents.routes_v4.extend(v4.iter().copied());
            contents.routes_v6.extend(v6.iter().copied());
            self.dataplane
                .maps
                .reconcile(&contents)
                .expect("programming the maps");
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

    /// The bytes of `original` and `rewritten` differ only where forwarding must change them.
    fn assert_forwarded_v4(original: &[u8], rewritten: &[u8]) {
        assert_eq!(rewritten.len(), original.len(), "length changed");
        assert_eq!(
            &rewritten[0..6],
            &RECEIVER_MAC,
            "destination MAC is the receiving workload's"
        );
        assert_eq!(
            &rewritten[6..12],
            &HOST_MAC,
            "source MAC is the host side's"
        );
        assert_eq!(
            rewritten[14 + 8],
            original[14 + 8] - 1,
            "TTL decremented by one"
        );
        assert_ipv4_checksums_valid(rewritten);
        // Nothing else in the IP header or the payload changed.
        let header_len = usize::from(original[14] & 0x0f) * 4;
        for i in 14..original.len() {
            if i != 14 + 8 && i != 14 + 10 && i != 14 + 11 {
                assert_eq!(
                    rewritten[i], original[i],
                    "byte {i} changed (IP header is {header_len} bytes)"
                );
            }
        }
    }

    #[test]
    fn tc_forwards_ipv4_between_local_workloads() {
        let mut f = Fixture::new();
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 64, &[]);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "redirected to the receiving workload"
        );
        assert_forwarded_v4(&packet, &out);
        let sender = f.counters(SENDER_IFINDEX);
        assert_eq!((sender.from_wl_packets, sender.fwd_packets), (1, 1));
        assert_eq!(sender.fwd_bytes, packet.len() as u64);
        assert_eq!(f.counters(RECEIVER_IFINDEX).to_wl_packets, 1);
    }

    #[test]
    fn tc_honours_ipv4_options() {
        let mut f = Fixture::new();
        // Eight bytes of options (IHL 7): NOPs and an end-of-list.
        let options = [1, 1, 1, 1, 1, 1, 1, 0];
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 17, &options);
        assert_eq!(packet[14] & 0x0f, 7);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_forwarded_v4(&packet, &out);
        assert_eq!(out[14 + 8], 16);
    }

    #[test]
    fn tc_checksum_update_carries_around() {
        // Pick TTLs so that the incremental update has to fold a carry; the full recomputation in
        // the assertion must still agree.
        let mut f = Fixture::new();
        for ttl in [2u8, 64, 128, 255] {
            let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, ttl, &[]);
            let (verdict, out) = f.run_tc(&packet);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_forwarded_v4(&packet, &out);
        }
    }

    #[test]
    fn tc_forwards_ipv6_between_local_workloads() {
        let mut f = Fixture::new();
        let packet = udp_v6_frame(SENDER_MAC, SENDER_V6, RECEIVER_V6, 64);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[0..6], &RECEIVER_MAC);
        assert_eq!(&out[6..12], &HOST_MAC);
        assert_eq!(out[14 + 7], 63, "hop limit decremented");
        assert_eq!(
            &out[14 + 8..],
            &packet[14 + 8..],
            "addresses and payload untouched"
        );
        assert_ipv6_udp_checksum_valid(&out);
        assert_eq!(f.counters(RECEIVER_IFINDEX).to_wl_packets, 1);
    }

    #[test]
    fn tc_answers_arp_for_the_gateway() {
        let mut f = Fixture::new();
        let packet = arp_request(SENDER_MAC, SENDER_V4, Ipv4Addr::new(169, 254, 1, 1));
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "the reply goes back out of the same interface"
        );
        assert_eq!(&out[0..6], &SENDER_MAC, "reply addressed to the asker");
        assert_eq!(&out[6..12], &HOST_MAC);
        assert_eq!(&out[12..14], &[0x08, 0x06]);
        let arp = &out[14..];
        assert_eq!(&arp[6..8], &[0, 2], "ARP reply");
        assert_eq!(&arp[8..14], &HOST_MAC, "the gateway is the host side's MAC");
        assert_eq!(&arp[14..18], &[169, 254, 1, 1]);
        assert_eq!(&arp[18..24], &SENDER_MAC);
        assert_eq!(&arp[24..28], &SENDER_V4.octets());
        assert_eq!(f.counters(SENDER_IFINDEX).neighbour_replies, 1);
    }

    #[test]
    fn gratuitous_arp_is_left_to_the_kernel() {
        let mut f = Fixture::new();
        let packet = arp_request(SENDER_MAC, SENDER_V4, SENDER_V4);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet);
    }

    #[test]
    fn address_conflict_probes_are_left_to_the_kernel() {
        let mut f = Fixture::new();
        // RFC 5227: sender 0.0.0.0, asking who has the address a DHCP client was offered.
        let packet = arp_request(SENDER_MAC, Ipv4Addr::UNSPECIFIED, SENDER_V4);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet);
        assert_eq!(f.counters(SENDER_IFINDEX).neighbour_replies, 0);
    }

    /// A DHCP request frame (UDP 68 to `dport`) from `src` to `dst`.
    fn dhcp_request(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let udp = udp_v4(src, dst, 68, dport, &[1u8; 300]);
        ethernet(
            [0xff; 6],
            SENDER_MAC,
            0x0800,
            &ipv4(src, dst, 64, 17, &[], &udp),
        )
    }

    #[test]
    fn a_vms_dhcp_requests_pass_whatever_the_source_rules_and_nothing_else_from_zero() {
        let mut f = Fixture::new();
        let gateway = Ipv4Addr::new(169, 254, 1, 1);
        let discover = dhcp_request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 67);
        // A container (not a tap) is not served DHCP: from 0.0.0.0 is spoofed.
        assert_eq!(f.run_tc(&discover).0, TC_ACT_SHOT);

        f.program_with(true, &[], true);
        let (verdict, out) = f.run_tc(&discover);
        assert_eq!(
            verdict, TC_ACT_OK,
            "a DISCOVER from a VM goes to the kernel"
        );
        assert_eq!(out, discover);
        assert_eq!(f.run_xdp(&discover).0, XDP_PASS);
        // A renewal unicast to the server becomes a broadcast, with valid checksums.
        let renew = dhcp_request(SENDER_V4, gateway, 67);
        for (verdict, out) in [f.run_tc(&renew), f.run_xdp(&renew)] {
            assert!(verdict == TC_ACT_OK || verdict == XDP_PASS);
            assert_eq!(
                &out[30..34],
                &[255; 4],
                "destination is the broadcast address"
            );
            assert_ipv4_checksums_valid(&out);
            // Only the destination and the two checksums changed.
            assert_eq!(out[..24], renew[..24]);
            assert_eq!(out[26..30], renew[26..30]);
            assert_eq!(out[34..40], renew[34..40]);
            assert_eq!(out[42..], renew[42..]);
        }
        let spoofed = f.counters(SENDER_IFINDEX).drops[DropReason::SpoofedSource as usize];
        for packet in [
            // From 0.0.0.0 to another server, to another port, and not DHCP at all.
            dhcp_request(Ipv4Addr::UNSPECIFIED, RECEIVER_V4, 67),
            dhcp_request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68),
            udp_v4_frame(SENDER_MAC, Ipv4Addr::UNSPECIFIED, RECEIVER_V4, 64, &[]),
            // A renewal from a foreign address.
            dhcp_request(RECEIVER_V4, gateway, 67),
        ] {
            assert_eq!(f.run_tc(&packet).0, TC_ACT_SHOT);
        }
        assert_eq!(
            f.counters(SENDER_IFINDEX).drops[DropReason::SpoofedSource as usize],
            spoofed + 4
        );
    }

    #[test]
    fn spoofed_sources_are_dropped_and_counted() {
        let mut f = Fixture::new();
        // The receiver's address, sent from the sender's interface.
        let v4 = udp_v4_frame(SENDER_MAC, RECEIVER_V4, SENDER_V4, 64, &[]);
        assert_eq!(f.run_tc(&v4).0, TC_ACT_SHOT);
        let v6 = udp_v6_frame(SENDER_MAC, RECEIVER_V6, SENDER_V6, 64);
        assert_eq!(f.run_tc(&v6).0, TC_ACT_SHOT);
        assert_eq!(f.run_xdp(&v4).0, XDP_DROP);
        let c = f.counters(SENDER_IFINDEX);
        assert_eq!(c.drops[DropReason::SpoofedSource as usize], 3);
        assert_eq!(c.fwd_packets, 0);
    }

    /// The drop event maps of a fixture's object, taken out of it: the listener's control slot,
    /// the per-CPU statistics and the ring buffer.
    struct DropEventMaps {
        control: aya::maps::Array<aya::maps::MapData, calico_ebpf_common::DropEventControl>,
        stats: aya::maps::PerCpuArray<aya::maps::MapData, calico_ebpf_common::DropEventStats>,
        ring: aya::maps::RingBuf<aya::maps::MapData>,
    }

    impl DropEventMaps {
        fn take(f: &mut Fixture) -> Self {
            let mut take = |name: &str| f.ebpf.take_map(name).expect(name);
            Self {
                control: take("cali_drop_ctl").try_into().expect("array"),
                stats: take("cali_drop_stats").try_into().expect("per-CPU array"),
                ring: take("cali_drop_evts").try_into().expect("ring buffer"),
            }
        }

        /// Registers a listener with this selection, its lease running out `lease_ns` from now
        /// (negative: already out).
        fn listen(&mut self, rate: u32, burst: u32, sample: u32, lease_ns: i64) {
            let now = calico_loader::dataplane::conntrack::monotonic_ns();
            let selection = calico_loader::events::Selection::new(rate, Some(burst), sample)
                .expect("valid selection");
            let until = now.saturating_add_signed(lease_ns);
            self.control
                .set(0, selection.control(until, std::process::id()), 0)
                .expect("write the control slot");
        }

        fn stop(&mut self) {
            self.control
                .set(0, calico_ebpf_common::DropEventControl::default(), 0)
                .expect("clear the control slot");
        }

        fn drain(&mut self) -> Vec<calico_ebpf_common::DropEvent> {
            let mut events = Vec::new();
            while let Some(item) = self.ring.next() {
                events.push(calico_loader::events::decode(&item).expect("a whole record"));
            }
            events
        }

        fn stats(&self) -> calico_ebpf_common::DropEventStats {
            let mut total = calico_ebpf_common::DropEventStats::default();
            for cpu in self.stats.get(&0, 0).expect("statistics").iter() {
                total.accumulate(cpu);
            }
            total
        }
    }

    #[test]
    fn drop_events_are_built_only_while_a_listener_holds_the_lease() {
        use calico_ebpf_common::direction;

        let mut f = Fixture::new();
        let mut events = DropEventMaps::take(&mut f);
        let spoofed = udp_v4_frame(SENDER_MAC, RECEIVER_V4, SENDER_V4, 64, &[]);
        let spoofed_v6 = udp_v6_frame(SENDER_MAC, RECEIVER_V6, SENDER_V6, 64);

        // Nobody listens: dropped and counted, nothing built.
        for _ in 0..3 {
            assert_eq!(f.run_tc(&spoofed).0, TC_ACT_SHOT);
        }
        assert_eq!(
            f.counters(SENDER_IFINDEX).drops[DropReason::SpoofedSource as usize],
            3
        );
        assert_eq!(events.stats().seen, 0, "drops seen without a listener");
        assert!(events.drain().is_empty(), "events without a listener");

        // A listener: every drop becomes an event describing the packet.
        events.listen(1000, 1000, 1, 5_000_000_000);
        assert_eq!(f.run_tc(&spoofed).0, TC_ACT_SHOT);
        assert_eq!(f.run_tc(&spoofed_v6).0, TC_ACT_SHOT);
        assert_eq!(f.run_xdp(&spoofed).0, XDP_DROP);
        // (BPF_PROG_TEST_RUN builds no skb from it: XDP.)
        let truncated = spoofed[..14 + 12].to_vec();
        assert_eq!(f.run_xdp(&truncated).0, XDP_DROP);
        let got = events.drain();
        assert_eq!(got.len(), 4, "{got:?}");
        for event in &got[..3] {
            assert_eq!(event.reason, DropReason::SpoofedSource as u8);
            assert_eq!(event.direction, direction::EGRESS);
            assert_eq!(event.ifindex, SENDER_IFINDEX);
            assert_eq!((event.proto, event.sport, event.dport), (17, 40000, 5201));
            assert_eq!(event.rule, 0);
            assert!(event.timestamp_ns > 0);
        }
        assert_eq!(got[0].family, 4);
        assert_eq!(got[0].src[..4], RECEIVER_V4.octets());
        assert_eq!(got[0].dst[..4], SENDER_V4.octets());
        assert_eq!(got[0].len as usize, spoofed.len());
        assert_eq!(got[1].family, 6);
        assert_eq!(got[1].src, RECEIVER_V6.octets());
        assert_eq!(
            got[2].src[..4],
            RECEIVER_V4.octets(),
            "XDP reports the same"
        );
        // A packet whose headers were not read: the reason, no addresses.
        assert_eq!(got[3].reason, DropReason::Malformed as u8);
        assert_eq!((got[3].family, got[3].src), (0, [0; 16]));
        let stats = events.stats();
        assert_eq!((stats.seen, stats.submitted), (4, 4));

        // A lease that ran out (a listener that was killed) and a cleared one: nothing more.
        events.listen(1000, 1000, 1, -1);
        assert_eq!(f.run_tc(&spoofed).0, TC_ACT_SHOT);
        events.stop();
        assert_eq!(f.run_tc(&spoofed).0, TC_ACT_SHOT);
        assert!(events.drain().is_empty());
        assert_eq!(events.stats().seen, 4);
        assert_eq!(
            f.counters(SENDER_IFINDEX).drops[DropReason::SpoofedSource as usize],
            3 + 3 + 2,
            "every drop is counted, listened to or not"
        );
    }

    #[test]
    fn drop_events_are_sampled_then_rate_limited_on_each_cpu() {
        let mut f = Fixture::new();
        let mut events = DropEventMaps::take(&mut f);
        let spoofed = udp_v4_frame(SENDER_MAC, RECEIVER_V4, SENDER_V4, 64, &[]);
        // One in 4 drops, then 10 at once and one a second: BPF_PROG_TEST_RUN repeats the
        // program on one CPU, well within a second.
        events.listen(1, 10, 4, 5_000_000_000);
        let program: &mut SchedClassifier = f
            .ebpf
            .program_mut(program_names::TC_FROM_WORKLOAD)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; spoofed.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&spoofed);
        opts.data_out = Some(&mut out);
        opts.repeat = 1000;
        let started = std::time::Instant::now();
        assert_eq!(
            program.test_run(opts).expect("test run").return_value,
            TC_ACT_SHOT
        );
        // The run takes milliseconds, but a loaded machine may preempt it for longer: each whole
        // second it lasted may add the one event a second the rate allows.
        let seconds = started.elapsed().as_secs();
        let stats = events.stats();
        assert_eq!(stats.seen, 1000);
        assert_eq!(stats.sampled_out, 750);
        assert!(
            (10..=10 + seconds).contains(&stats.submitted),
            "the burst of 10, plus at most one a second of the {seconds} s run: {stats:?}"
        );
        assert_eq!(stats.rate_limited, 250 - stats.submitted);
        assert_eq!(stats.ring_full, 0);
        assert_eq!(events.drain().len() as u64, stats.submitted);
    }

    #[test]
    fn allowed_spoof_prefixes_are_accepted() {
        let mut f = Fixture::new();
        f.program(true, &["198.18.7.0/24"]);
        let packet = udp_v4_frame(
            SENDER_MAC,
            Ipv4Addr::new(198, 18, 7, 9),
            RECEIVER_V4,
            64,
            &[],
        );
        assert_eq!(f.run_tc(&packet).0, TC_ACT_REDIRECT);
        let outside = udp_v4_frame(
            SENDER_MAC,
            Ipv4Addr::new(198, 18, 8, 9),
            RECEIVER_V4,
            64,
            &[],
        );
        assert_eq!(f.run_tc(&outside).0, TC_ACT_SHOT);
    }

    #[test]
    fn destinations_that_are_not_ours_go_to_the_kernel() {
        let mut f = Fixture::new();
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, NOT_OURS_V4, 64, &[]);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet, "a packet for the kernel is not rewritten");
        assert_eq!(f.run_xdp(&packet).0, XDP_PASS);
        assert_eq!(f.counters(SENDER_IFINDEX).to_host_packets, 2);
    }

    #[test]
    fn blackhole_routes_drop() {
        let mut f = Fixture::new();
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, BLACKHOLE_V4, 64, &[]);
        assert_eq!(f.run_tc(&packet).0, TC_ACT_SHOT);
        assert_eq!(
            f.counters(SENDER_IFINDEX).drops[DropReason::Blackhole as usize],
            1
        );
    }

    #[test]
    fn expiring_ttl_is_left_to_the_kernel() {
        // The kernel sends the ICMP time-exceeded error.
        let mut f = Fixture::new();
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 1, &[]);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet);
        let v6 = udp_v6_frame(SENDER_MAC, SENDER_V6, RECEIVER_V6, 1);
        assert_eq!(f.run_tc(&v6).0, TC_ACT_OK);
    }

    #[test]
    fn malformed_packets_are_dropped_and_counted() {
        let mut f = Fixture::new();
        let good = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 64, &[]);

        // Truncated inside the IPv4 header.
        let truncated = good[..14 + 12].to_vec();
        // IHL below the minimum.
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        // IHL claims 60 bytes of header, the frame has fewer.
        let mut long_ihl = good[..14 + 40].to_vec();
        long_ihl[14] = 0x4f;
        long_ihl[14 + 2..14 + 4].copy_from_slice(&40u16.to_be_bytes());
        // Total length longer than the frame.
        let mut long_total = good.clone();
        long_total[14 + 2..14 + 4].copy_from_slice(&1400u16.to_be_bytes());
        // Total length shorter than the header.
        let mut short_total = good.clone();
        short_total[14 + 2..14 + 4].copy_from_slice(&10u16.to_be_bytes());
        // Version 5 in an IPv4 frame.
        let mut bad_version = good.clone();
        bad_version[14] = 0x55;
        // IPv6 cut short.
        let v6 = udp_v6_frame(SENDER_MAC, SENDER_V6, RECEIVER_V6, 64);
        let v6_truncated = v6[..14 + 30].to_vec();
        // ARP cut short.
        let arp_truncated =
            arp_request(SENDER_MAC, SENDER_V4, Ipv4Addr::new(169, 254, 1, 1))[..14 + 20].to_vec();

        let cases = [
            ("truncated", truncated),
            ("IHL 4", short_ihl),
            ("IHL beyond the frame", long_ihl),
            ("total length beyond the frame", long_total),
            ("total length inside the header", short_total),
            ("version 5", bad_version),
            ("IPv6 truncated", v6_truncated),
            ("ARP truncated", arp_truncated),
        ];
        let mut runs = 0;
        for (name, packet) in &cases {
            match f.try_run_tc(packet) {
                Ok((verdict, _)) => {
                    assert_eq!(verdict, TC_ACT_SHOT, "TC: {name}");
                    runs += 1;
                }
                Err(e) => eprintln!("BPF_PROG_TEST_RUN refuses {name} for TC ({e}); XDP covers it"),
            }
            assert_eq!(f.run_xdp(packet).0, XDP_DROP, "XDP: {name}");
            runs += 1;
        }
        assert!(
            runs > cases.len() + cases.len() / 2,
            "most cases ran on both hooks ({runs} runs)"
        );
        let c = f.counters(SENDER_IFINDEX);
        assert_eq!(c.drops[DropReason::Malformed as usize], runs as u64);
        assert_eq!(c.fwd_packets, 0);
    }

    #[test]
    fn unknown_interfaces_never_forward() {
        let mut f = Fixture::new();
        f.program(false, &[]);
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 64, &[]);
        assert_eq!(f.run_tc(&packet).0, TC_ACT_SHOT);
        assert_eq!(f.run_xdp(&packet).0, XDP_DROP);
        assert_eq!(f.counters(RECEIVER_IFINDEX).to_wl_packets, 0);
    }

    #[test]
    fn xdp_forwards_and_answers_arp() {
        let mut f = Fixture::new();
        let packet = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 64, &[4, 4, 0, 0]);
        let (verdict, out) = f.run_xdp(&packet);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_forwarded_v4(&packet, &out);

        let v6 = udp_v6_frame(SENDER_MAC, SENDER_V6, RECEIVER_V6, 2);
        let (verdict, out) = f.run_xdp(&v6);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[14 + 7], 1);
        assert_ipv6_udp_checksum_valid(&out);

        let arp = arp_request(SENDER_MAC, SENDER_V4, Ipv4Addr::new(169, 254, 1, 1));
        let (verdict, out) = f.run_xdp(&arp);
        assert_eq!(verdict, XDP_REDIRECT, "sent back out of the same interface");
        assert_eq!(&out[14 + 6..14 + 8], &[0, 2]);
    }

    /// A neighbour solicitation for `target` from `src`, with a source link-layer address option
    /// when `with_option`.
    fn neighbour_solicitation(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        with_option: bool,
    ) -> Vec<u8> {
        let mut icmp = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        if with_option {
            icmp.extend_from_slice(&[1, 1]);
            icmp.extend_from_slice(&SENDER_MAC);
        }
        let checksum = icmpv6_checksum(src, dst, &icmp);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        ethernet(
            [0x33, 0x33, 0xff, 0xee, 0xee, 0xee],
            SENDER_MAC,
            0x86dd,
            &ipv6(src, dst, 255, 58, &icmp),
        )
    }

    fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        checksum(&pseudo)
    }

    const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";

    #[test]
    fn tc_and_xdp_answer_neighbour_solicitations_for_the_gateway() {
        let mut f = Fixture::new();
        let gateway: Ipv6Addr = GATEWAY_V6.parse().expect("address");
        let solicited_node: Ipv6Addr = "ff02::1:ffee:eeee".parse().expect("address");
        for (with_option, src) in [
            (true, SENDER_V6),
            (true, "fe80::c8fe:ff:fe00:1".parse().expect("address")),
            (false, SENDER_V6),
        ] {
            let dst = if with_option { solicited_node } else { gateway };
            let packet = neighbour_solicitation(src, dst, gateway, with_option);
            let (tc_verdict, out) = f.run_tc(&packet);
            assert_eq!(
                tc_verdict, TC_ACT_REDIRECT,
                "answered back out of the same interface"
            );
            let (xdp_verdict, xdp_out) = f.run_xdp(&packet);
            assert_eq!(xdp_verdict, XDP_REDIRECT);
            assert_eq!(out, xdp_out, "both hooks answer alike");

            assert_eq!(&out[0..6], &SENDER_MAC, "to the solicitor");
            assert_eq!(&out[6..12], &HOST_MAC);
            let ip = &out[14..];
            assert_eq!(ip[7], 255, "hop limit");
            assert_eq!(&ip[8..24], &gateway.octets(), "from the target address");
            assert_eq!(&ip[24..40], &src.octets(), "to the solicitor's address");
            let icmp = &ip[40..];
            assert_eq!(icmp[0], 136, "neighbour advertisement");
            assert_eq!(icmp[4], 0xe0, "router, solicited and override flags");
            assert_eq!(&icmp[8..24], &gateway.octets());
            if with_option {
                assert_eq!(icmp.len(), 32);
                assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
                assert_eq!(&icmp[26..32], &HOST_MAC);
            } else {
                assert_eq!(icmp.len(), 24);
            }
            let mut zeroed = icmp.to_vec();
            zeroed[2] = 0;
            zeroed[3] = 0;
            let expected = icmpv6_checksum(gateway, src, &zeroed);
            assert_eq!(
                u16::from_be_bytes([icmp[2], icmp[3]]),
                expected,
                "ICMPv6 checksum"
            );
        }
        assert_eq!(f.counters(SENDER_IFINDEX).neighbour_replies, 6);
    }

    #[test]
    fn duplicate_address_detection_is_left_to_the_kernel() {
        let mut f = Fixture::new();
        let solicited_node: Ipv6Addr = "ff02::1:ff00:1".parse().expect("address");
        // DAD: unspecified source, no option.
        let packet =
            neighbour_solicitation(Ipv6Addr::UNSPECIFIED, solicited_node, SENDER_V6, false);
        let (verdict, out) = f.run_tc(&packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet);
        assert_eq!(f.counters(SENDER_IFINDEX).neighbour_replies, 0);
    }

    /// What the verifier walked for each program, printed (`--nocapture`) so that a change to
    /// the kernel code shows its cost; each must stay under a budget well inside the kernel's
    /// limit of one million.
    #[test]
    fn verifier_instruction_counts_stay_within_budget() {
        const BUDGET: u32 = 500_000;
        let mut ebpf = load_kernel_object();
        let mut counts = Vec::new();
        for name in [
            program_names::TC_FROM_WORKLOAD,
            program_names::TC_TO_WORKLOAD,
            program_names::TC_FROM_DATA,
            program_names::TC_HOST_ENDPOINT_INGRESS,
            program_names::TC_HOST_ENDPOINT_EGRESS,
            program_names::TRACE,
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect(name)
                .try_into()
                .expect("classifier");
            program
                .load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
            let info = program.info().expect("program info");
            counts.push((
                name,
                info.verified_instruction_count(),
                info.size_translated(),
            ));
        }
        for name in [
            program_names::XDP_FROM_WORKLOAD,
            program_names::XDP_FROM_DATA,
            program_names::XDP_HOST_ENDPOINT,
        ] {
            let program: &mut Xdp = ebpf.program_mut(name).expect(name).try_into().expect("xdp");
            program
                .load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
            let info = program.info().expect("program info");
            counts.push((
                name,
                info.verified_instruction_count(),
                info.size_translated(),
            ));
        }
        for (name, verified, translated) in &counts {
            eprintln!(
                "{name:<20} verified instructions: {:>7}  translated bytes: {:>6}",
                verified.map_or("?".into(), |v| v.to_string()),
                translated.map_or("?".into(), |v| v.to_string())
            );
            let verified = verified.expect("the kernel reports verified instruction counts");
            assert!(
                verified < BUDGET,
                "{name}: {verified} verified instructions"
            );
        }
    }

    #[test]
    fn the_microbenchmark_forwards_and_measures() {
        require_root();
        // The packet the microbenchmark times must take the forwarding path on both hooks (it
        // errors otherwise), with a route map of realistic size.
        // Both measured packets (a tracked UDP flow, and a TCP segment that meets 100 rules of
        // policy on every run) must be forwarded.
        let setup = calico_loader::microbench::MicrobenchSetup {
            routes: 1000,
            rules: 100,
            conntrack_entries: 10_000,
        };
        let result = calico_loader::microbench::run(setup, 400).expect("microbenchmark");
        assert_eq!(
            (result.routes, result.rules, result.conntrack_entries),
            (1000, 100, 10_000)
        );
        assert!(result.packets >= 400);
        assert!(
            result.tc_ns_per_packet > 0.0
                && result.xdp_ns_per_packet > 0.0
                && result.tc_policy_ns_per_packet > 0.0,
            "{result:?}"
        );
    }

    #[test]
    fn expired_conntrack_entries_are_removed_and_live_ones_kept() {
        use calico_ebpf_common::{ConntrackKey, ConntrackValue, conntrack_flags};
        use calico_loader::dataplane::conntrack::{Conntrack, monotonic_ns};

        let mut ebpf = load_kernel_object();
        let now = monotonic_ns();
        let second = 1_000_000_000u64;
        let key = |proto: u8, port: u16| ConntrackKey {
            proto,
            family: 4,
            port_a: port,
            port_b: 53,
            ..Default::default()
        };
        let entry = |idle: u64, flags: u16| ConntrackValue {
            created_ns: now - idle,
            last_seen_ns: now - idle,
            flags,
            ..Default::default()
        };
        // UDP: 60 s; TCP established: 1 h; TCP closing (both FINs): 30 s; ICMP: 5 s.
        let closing =
            conntrack_flags::ESTABLISHED | conntrack_flags::FIN_FWD | conntrack_flags::FIN_REV;
        let cases = [
            (key(17, 1), entry(61 * second, 0), false),
            (key(17, 2), entry(10 * second, 0), true),
            (
                key(6, 3),
                entry(600 * second, conntrack_flags::ESTABLISHED),
                true,
            ),
            (key(6, 4), entry(31 * second, closing), false),
            (key(1, 5), entry(6 * second, 0), false),
        ];
        // Filled through the map, which then goes back to the object.
        {
            let mut map: aya::maps::HashMap<_, ConntrackKey, ConntrackValue> =
                aya::maps::HashMap::try_from(ebpf.map_mut("cali_conntrack").expect("map"))
                    .expect("hash");
            for (k, v, _) in &cases {
                map.insert(k, v, 0).expect("insert");
            }
        }
        let mut table = Conntrack::from_ebpf(&mut ebpf).expect("conntrack map");
        assert_eq!(table.expire().expect("expire"), 3);
        let left: Vec<u16> = table.entries().iter().map(|(k, _)| k.port_a).collect();
        for (k, _, kept) in &cases {
            assert_eq!(left.contains(&k.port_a), *kept, "entry {k:?}");
        }
    }

    /// A workload of another host, and another whose host's MAC nobody knows (see
    /// [`fib_namespace`]).
    const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);
    const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 5);
    const COLD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 5);
    /// The data interface of the FIB namespace, and the next hop's MAC.
    const DATA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// The remote-workload routes of the blocks of `REMOTE_*` and `COLD_V4`.
    fn remote_routes(f: &mut Fixture) {
        let remote = RouteValue {
            kind: RouteKind::RemoteWorkload as u32,
            node: 7,
            ..Default::default()
        };
        f.add_routes(
            &[
                ((26, [198, 18, 1, 0]), remote),
                ((26, [198, 18, 2, 0]), remote),
            ],
            &[(
                (122, Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0).octets()),
                remote,
            )],
        );
    }

    /// A namespace whose FIB knows where the remote workloads live: a data interface `d0` (a
    /// veth whose peer stays in the namespace) on 198.19.0.0/24 and 2001:db8:ff::/64; 198.18.1.0/26 and 2001:db8:0:1::/122 via
    /// host B (.2, ::2), whose MAC is known (a permanent neighbour entry); 198.18.2.0/26 via .3,
    /// whose MAC is not. Forwarding is on for its loopback, the interface BPF_PROG_TEST_RUN
    /// runs programs on inside it.
    fn fib_namespace() -> Netns {
        let ns = netns("cfib");
        ns.exec(&[
            "ip",
            "link",
            "add",
            "d0",
            "address",
            "02:00:00:00:00:0a",
            "type",
            "veth",
            "peer",
            "name",
            "d1",
        ]);
        ns.exec(&["ip", "link", "set", "d1", "up"]);
        ns.exec(&["ip", "link", "set", "d0", "up"]);
        ns.exec(&["ip", "addr", "add", "198.19.0.1/24", "dev", "d0"]);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:ff::1/64",
            "dev",
            "d0",
            "nodad",
        ]);
        for (addr, ip) in [("198.19.0.2", "ip"), ("2001:db8:ff::2", "ip")] {
            ns.exec(&[
                ip,
                "neigh",
                "replace",
                addr,
                "lladdr",
                "02:00:00:00:00:0b",
                "dev",
                "d0",
                "nud",
                "permanent",
            ]);
        }
        ns.exec(&["ip", "route", "add", "198.18.1.0/26", "via", "198.19.0.2"]);
        ns.exec(&["ip", "route", "add", "198.18.2.0/26", "via", "198.19.0.3"]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:0:1::/122",
            "via",
            "2001:db8:ff::2",
        ]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.lo.forwarding=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.lo.forwarding=1"]);
        ns
    }

    /// Runs `run` on a thread inside `ns`: BPF_PROG_TEST_RUN runs programs on the loopback of
    /// the caller's namespace, and their FIB lookups use that namespace's tables.
    fn inside<T: Send>(ns: &Netns, run: impl FnOnce() -> T + Send) -> T {
        let path = ns.path();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    testbed::netns::enter_thread(&path).expect("enter the FIB namespace");
                    run()
                })
                .join()
                .expect("the test thread")
        })
    }

    #[test]
    fn workloads_forward_to_remote_workloads_through_the_fib() {
        let mut f = Fixture::new();
        remote_routes(&mut f);
        let ns = fib_namespace();
        let v4 = udp_v4_frame(SENDER_MAC, SENDER_V4, REMOTE_V4, 64, &[]);
        let v6 = udp_v6_frame(SENDER_MAC, SENDER_V6, REMOTE_V6, 64);
        let (tc, tc6, xdp, xdp6) = inside(&ns, || {
            (f.run_tc(&v4), f.run_tc(&v6), f.run_xdp(&v4), f.run_xdp(&v6))
        });

        // TC: bpf_redirect_neigh fills in the MACs after the program; the program made the
        // packet one hop older.
        assert_eq!(tc.0, TC_ACT_REDIRECT, "forwarded by the program");
        assert_eq!(
            &tc.1[..12],
            &v4[..12],
            "MACs are left to bpf_redirect_neigh"
        );
        assert_eq!(tc.1[14 + 8], 63, "TTL decremented");
        assert_ipv4_checksums_valid(&tc.1);
        assert_eq!(tc6.0, TC_ACT_REDIRECT);
        assert_eq!(tc6.1[14 + 7], 63, "hop limit decremented");
        assert_ipv6_udp_checksum_valid(&tc6.1);

        // XDP: the MACs come from the FIB lookup (the data interface's, the next hop's).
        assert_eq!(xdp.0, XDP_REDIRECT);
        assert_eq!(&xdp.1[0..6], &NEXT_HOP_MAC, "to host B's MAC");
        assert_eq!(&xdp.1[6..12], &DATA_MAC, "from the data interface's MAC");
        assert_eq!(xdp.1[14 + 8], 63);
        assert_ipv4_checksums_valid(&xdp.1);
        assert_eq!(xdp6.0, XDP_REDIRECT);
        assert_eq!(
            (&xdp6.1[0..6], &xdp6.1[6..12]),
            (&NEXT_HOP_MAC[..], &DATA_MAC[..])
        );
        assert_eq!(xdp6.1[14 + 7], 63);

        let c = f.counters(SENDER_IFINDEX);
        assert_eq!(
            (c.fwd_remote_packets, c.fwd_packets, c.to_host_packets),
            (4, 0, 0)
        );
        assert_eq!(c.fwd_remote_bytes, 2 * (v4.len() + v6.len()) as u64);
    }

    #[test]
    fn what_the_fib_cannot_decide_goes_to_the_kernel() {
        let mut f = Fixture::new();
        remote_routes(&mut f);
        let ns = fib_namespace();
        // No neighbour entry for the next hop yet; an expiring TTL.
        let cold = udp_v4_frame(SENDER_MAC, SENDER_V4, COLD_V4, 64, &[]);
        let expiring = udp_v4_frame(SENDER_MAC, SENDER_V4, REMOTE_V4, 1, &[]);
        let v6_expiring = udp_v6_frame(SENDER_MAC, SENDER_V6, REMOTE_V6, 1);
        let results = inside(&ns, || {
            [&cold, &expiring, &v6_expiring].map(|packet| (f.run_tc(packet), f.run_xdp(packet)))
        });
        for ((tc, xdp), packet) in results.iter().zip([&cold, &expiring, &v6_expiring]) {
            assert_eq!(tc.0, TC_ACT_OK);
            assert_eq!(&tc.1, packet, "a packet for the kernel is not rewritten");
            assert_eq!(xdp.0, XDP_PASS);
            assert_eq!(&xdp.1, packet);
        }
        // Outside that namespace nothing routes there (and forwarding is off on its loopback):
        // the kernel gets the packet too.
        let remote = udp_v4_frame(SENDER_MAC, SENDER_V4, REMOTE_V4, 64, &[]);
        let no_fib = netns("cnofib");
        let (tc, _) = inside(&no_fib, || f.run_tc(&remote));
        assert_eq!(tc, TC_ACT_OK);
        let c = f.counters(SENDER_IFINDEX);
        assert_eq!((c.to_host_packets, c.fwd_remote_packets), (7, 0));
    }

    /// A frame from another host to `dst`, addressed to the loopback BPF_PROG_TEST_RUN runs on
    /// (its MAC is all zeroes), so that TC sees it as addressed to this host.
    fn from_other_host_v4(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
        let mut frame = udp_v4_frame(NEXT_HOP_MAC, REMOTE_V4, dst, ttl, &[]);
        frame[0..6].copy_from_slice(&[0; 6]);
        frame
    }

    #[test]
    fn data_interfaces_deliver_into_local_workloads() {
        let mut f = Fixture::new();
        let v4 = from_other_host_v4(RECEIVER_V4, 63);
        let mut v6 = udp_v6_frame(NEXT_HOP_MAC, REMOTE_V6, RECEIVER_V6, 63);
        v6[0..6].copy_from_slice(&[0; 6]);

        let (verdict, out) = f.run_tc_data(&v4);
        assert_eq!(verdict, TC_ACT_REDIRECT, "into the workload");
        assert_eq!(&out[0..6], &RECEIVER_MAC, "to the workload's MAC");
        assert_eq!(&out[6..12], &HOST_MAC, "from its host side's");
        assert_eq!(out[14 + 8], 62, "TTL decremented");
        assert_ipv4_checksums_valid(&out);
        let (verdict, out) = f.run_xdp_data(&v4);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!((&out[0..6], out[14 + 8]), (&RECEIVER_MAC[..], 62));
        let (verdict, out) = f.run_tc_data(&v6);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out[14 + 7], 62, "hop limit decremented");
        assert_ipv6_udp_checksum_valid(&out);

        let receiver = f.counters(RECEIVER_IFINDEX);
        assert_eq!((receiver.from_data_packets, receiver.to_wl_packets), (3, 3));
        assert_eq!(
            receiver.from_data_bytes,
            2 * v4.len() as u64 + v6.len() as u64
        );
    }

    #[test]
    fn data_interfaces_pass_everything_else_untouched() {
        let mut f = Fixture::new();
        let mut for_another_mac = from_other_host_v4(RECEIVER_V4, 64);
        for_another_mac[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        let mut multicast = from_other_host_v4(RECEIVER_V4, 64);
        multicast[0..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        let cases = [
            ("not a workload", from_other_host_v4(NOT_OURS_V4, 64), true),
            (
                "a blackhole prefix",
                from_other_host_v4(BLACKHOLE_V4, 64),
                true,
            ),
            ("expiring TTL", from_other_host_v4(RECEIVER_V4, 1), true),
            (
                "ARP",
                arp_request(NEXT_HOP_MAC, REMOTE_V4, RECEIVER_V4),
                true,
            ),
            ("a multicast frame", multicast, true),
            // XDP does not know the interface's own MAC: a unicast frame for another MAC
            // reaches it only when the interface is promiscuous.
            ("a frame for another MAC", for_another_mac, false),
        ];
        for (name, packet, xdp_passes) in &cases {
            let (verdict, out) = f.run_tc_data(packet);
            assert_eq!(verdict, TC_ACT_OK, "TC: {name}");
            assert_eq!(&out, packet, "TC: {name} is not rewritten");
            if *xdp_passes {
                let (verdict, out) = f.run_xdp_data(packet);
                assert_eq!(verdict, XDP_PASS, "XDP: {name}");
                assert_eq!(&out, packet, "XDP: {name} is not rewritten");
            }
        }
        assert_eq!(f.counters(RECEIVER_IFINDEX).to_wl_packets, 0);
    }

    /// The sender's floating IP (outside the pools, which the fixture does not program).
    const FLOATING_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 9);

    #[test]
    fn floating_ips_are_translated_both_ways_with_valid_checksums() {
        let mut f = Fixture::new();
        f.program_endpoints(
            true,
            &[],
            false,
            vec![(SENDER_V4.into(), FLOATING_V4.into())],
        );

        // From another host to the floating IP: to the internal address, into the workload.
        let to_floating = from_other_host_v4(FLOATING_V4, 64);
        let (verdict, out) = f.run_tc_data(&to_floating);
        assert_eq!(verdict, TC_ACT_REDIRECT, "TC: into the workload");
        assert_eq!(
            &out[14 + 16..14 + 20],
            &SENDER_V4.octets(),
            "TC: destination"
        );
        assert_eq!(
            &out[14 + 12..14 + 16],
            &REMOTE_V4.octets(),
            "TC: source kept"
        );
        assert_eq!(&out[0..6], &SENDER_MAC, "TC: to the workload's MAC");
        assert_ipv4_checksums_valid(&out);
        let (verdict, out) = f.run_xdp_data(&to_floating);
        assert_eq!(verdict, XDP_REDIRECT, "XDP: into the workload");
        assert_eq!(
            &out[14 + 16..14 + 20],
            &SENDER_V4.octets(),
            "XDP: destination"
        );
        assert_ipv4_checksums_valid(&out);

        // From the workload to outside the pools (no route): from the floating IP, to the
        // kernel.
        let outward = udp_v4_frame(SENDER_MAC, SENDER_V4, NOT_OURS_V4, 64, &[]);
        let (verdict, out) = f.run_tc(&outward);
        assert_eq!(verdict, TC_ACT_OK, "TC: to the kernel");
        assert_eq!(&out[14 + 12..14 + 16], &FLOATING_V4.octets(), "TC: source");
        assert_ipv4_checksums_valid(&out);
        let (verdict, out) = f.run_xdp(&outward);
        assert_eq!(verdict, XDP_PASS, "XDP: to the kernel");
        assert_eq!(&out[14 + 12..14 + 16], &FLOATING_V4.octets(), "XDP: source");
        assert_ipv4_checksums_valid(&out);

        // To a local workload (inside the pools), a new flow keeps the internal address.
        let inward = udp_v4_frame(SENDER_MAC, SENDER_V4, RECEIVER_V4, 64, &[]);
        let (verdict, out) = f.run_tc(&inward);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            &out[14 + 12..14 + 16],
            &SENDER_V4.octets(),
            "no translation in the pools"
        );
        assert_ipv4_checksums_valid(&out);

        // Without the mapping nothing is translated.
        f.program(true, &[]);
        let (verdict, out) = f.run_tc(&outward);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            &out[14 + 12..14 + 16],
            &SENDER_V4.octets(),
            "no floating IP any more"
        );
        let (verdict, out) = f.run_tc_data(&to_floating);
        assert_eq!(
            (verdict, &out),
            (TC_ACT_OK, &to_floating),
            "passed untouched"
        );
    }
}
