//! Integration tests of tap endpoints (VMs): a stand-in VM is this test process holding a tap
//! (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`) in the host namespace and reading and writing whole
//! Ethernet frames; a container workload on a veth sits beside it. The agent runs in the host
//! namespace as in production.

mod support;

/// Every test here needs root (BPF, network namespaces, /dev/net/tun).
mod privileged {
    use std::{
        net::{Ipv4Addr, SocketAddr, UdpSocket},
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        sync::atomic::{AtomicU32, Ordering},
        time::{Duration, Instant},
    };

    use calico_loader::packets::{arp_request, ethernet, ipv4, udp_v4};

    use crate::support::topology::*;

    const NODE: &str = "test-node";
    /// The MAC Nova gives a VM's tap on the host.
    const TAP_MAC: [u8; 6] = [0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe];
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A stand-in VM: the tap's file descriptor, as QEMU holds it.
    struct Vm {
        fd: OwnedFd,
        tap: String,
        mac: [u8; 6],
        ip: Ipv4Addr,
    }

    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;

    impl Vm {
        /// Creates the tap `tap` + the first 11 characters of the Neutron port `port_id` in
        /// `host`, attaches to it (non-blocking, as QEMU does, which also lets native XDP see
        /// the frames) and brings it up with Nova's host-side MAC.
        fn create(host: &Netns, i: u8, ip: Ipv4Addr, port_id: &str) -> Self {
            let tap = format!("tap{}", &port_id[..11]);
            let name = tap.clone();
            let fd = host.enter(move || {
                // SAFETY: plain open; the fd is owned right after.
                let raw = unsafe {
                    libc::open(
                        c"/dev/net/tun".as_ptr(),
                        libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                    )
                };
                assert!(
                    raw >= 0,
                    "open /dev/net/tun: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: `raw` is ours.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let mut ifr = [0u8; 40];
                ifr[..name.len()].copy_from_slice(name.as_bytes());
                ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
                // SAFETY: `ifr` is a live struct ifreq-sized buffer.
                let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
                assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
                fd
            });
            let mac = mac_string(&TAP_MAC);
            host.exec(&["ip", "link", "set", "dev", &tap, "address", &mac, "up"]);
            Self {
                fd,
                tap,
                mac: [0xfa, 0x16, 0x3e, 0, 0, i],
                ip,
            }
        }

        fn send(&self, frame: &[u8]) {
            // SAFETY: `frame` is live and sized as passed.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            assert_eq!(
                n,
                frame.len() as isize,
                "write to the tap: {}",
                std::io::Error::last_os_error()
            );
        }

        /// The first frame within `timeout` that `wanted` accepts (others are skipped).
        fn receive(&self, timeout: Duration, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
            let deadline = Instant::now() + timeout;
            let mut buf = vec![0u8; 2048];
            while Instant::now() < deadline {
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                // SAFETY: `buf` is live and sized as passed.
                let n =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 && wanted(&buf[..n as usize]) {
                    return Some(buf[..n as usize].to_vec());
                }
            }
            None
        }

        /// A UDP frame from the VM (to the tap's MAC).
        fn udp(
            &self,
            src: Ipv4Addr,
            dst: Ipv4Addr,
            sport: u16,
            dport: u16,
            payload: &[u8],
        ) -> Vec<u8> {
            let udp = udp_v4(src, dst, sport, dport, payload);
            ethernet(
                TAP_MAC,
                self.mac,
                0x0800,
                &ipv4(src, dst, 64, 17, &[], &udp),
            )
        }

        fn endpoint_json(
            &self,
            vm_id: &str,
            port_id: &str,
            sg: &str,
            gateway: Option<Ipv4Addr>,
        ) -> String {
            let gateway = gateway.map_or(String::new(), |g| format!(r#", "ipv4Gateway": "{g}""#));
            // As networking-calico writes it: namespace openstack, no profiles, the security
            // group as a label.
            format!(
                r#"{{"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
 "metadata": {{"name": "{node}-openstack-{vm}-{port}", "namespace": "openstack",
  "labels": {{"sg.projectcalico.org/openstack-{sg}": "default",
   "projectcalico.org/namespace": "openstack", "projectcalico.org/orchestrator": "openstack",
   "projectcalico.org/openstack-project-id": "c1a2b3", "projectcalico.org/openstack-project-name": "demo",
   "projectcalico.org/openstack-project-parent-id": ""}},
  "annotations": {{"openstack.projectcalico.org/network-id": "8d4d1b1e-0000-4000-8000-000000000001"}}}},
 "spec": {{"orchestrator": "openstack", "workload": "{vm_id}", "node": "{NODE}", "endpoint": "{port_id}",
  "interfaceName": "{tap}", "mac": "{mac}", "ipNetworks": ["{ip}/32"]{gateway},
  "ipNATs": [{{"internalIP": "{ip}", "externalIP": "198.19.0.{last}"}}]}}}}"#,
                last = self.ip.octets()[3],
                node = NODE.replace('-', "--"),
                vm = vm_id.replace('-', "--"),
                port = port_id.replace('-', "--"),
                tap = self.tap,
                mac = mac_string(&self.mac),
                ip = self.ip,
            )
        }
    }

    /// A Neutron port id of this test run.
    fn port_id(i: u8) -> String {
        format!(
            "{:04x}{:04x}-{i:02}00-4000-8000-000000000000",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        )
    }

    fn mac_string(mac: &[u8; 6]) -> String {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn ethertype(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[12], frame[13]])
    }

    /// The UDP ports and payload of an IPv4/UDP frame.
    fn udp_of(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
        if frame.len() < 42 || ethertype(frame) != 0x0800 || frame[23] != 17 {
            return None;
        }
        let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
        let sport = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
        let dport = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
        Some((sport, dport, frame.get(l4 + 8..)?))
    }

    /// A DHCP request (DISCOVER, or REQUEST for `requested` from `server`) from the VM, from
    /// `ciaddr` (0.0.0.0 before it has an address) to `dst`.
    fn dhcp_frame(
        vm: &Vm,
        message: u8,
        ciaddr: Ipv4Addr,
        dst: Ipv4Addr,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Vec<u8> {
        let mut bootp = vec![0u8; 236];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[0x5e, 0xed, 0, message]);
        bootp[10] = 0x80; // broadcast replies
        bootp[12..16].copy_from_slice(&ciaddr.octets());
        bootp[28..34].copy_from_slice(&vm.mac);
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, message]);
        if let Some((address, server)) = requested {
            bootp.extend_from_slice(&[50, 4]);
            bootp.extend_from_slice(&address.octets());
            bootp.extend_from_slice(&[54, 4]);
            bootp.extend_from_slice(&server.octets());
        }
        bootp.push(255);
        let udp = udp_v4(ciaddr, dst, 68, 67, &bootp);
        let dst_mac = if dst == Ipv4Addr::BROADCAST {
            [0xff; 6]
        } else {
            TAP_MAC
        };
        ethernet(
            dst_mac,
            vm.mac,
            0x0800,
            &ipv4(ciaddr, dst, 64, 17, &[], &udp),
        )
    }

    /// What a DHCP reply gave: message type, your address, mask, router, server, option 121.
    #[derive(Debug, PartialEq)]
    struct Offer {
        message: u8,
        address: Ipv4Addr,
        mask: Option<Ipv4Addr>,
        router: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
        classless_routes: Option<Vec<u8>>,
    }

    fn parse_reply(bootp: &[u8]) -> Option<Offer> {
        if bootp.len() < 240 || bootp[0] != 2 || bootp[236..240] != [99, 130, 83, 99] {
            return None;
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mut offer = Offer {
            message: 0,
            address: ip(&bootp[16..20]),
            mask: None,
            router: None,
            server: None,
            classless_routes: None,
        };
        let mut options = &bootp[240..];
        while let [code, len, rest @ ..] = options {
            if *code == 255 {
                break;
            }
            let value = rest.get(..usize::from(*len))?;
            match code {
                53 => offer.message = value[0],
                1 => offer.mask = Some(ip(value)),
                3 => offer.router = Some(ip(value)),
                54 => offer.server = Some(ip(value)),
                121 => offer.classless_routes = Some(value.to_vec()),
                _ => {}
            }
            options = &rest[usize::from(*len)..];
        }
        Some(offer)
    }

    /// Sends a DHCP request from the VM and returns the reply it got (with the frame's MACs).
    fn dhcp(vm: &Vm, frame: &[u8]) -> Option<(Offer, [u8; 6], [u8; 6])> {
        for _ in 0..3 {
            vm.send(frame);
            if let Some(reply) = vm.receive(Duration::from_secs(1), |f| {
                udp_of(f).is_some_and(|(s, d, _)| s == 67 && d == 68)
            }) {
                let (_, _, bootp) = udp_of(&reply)?;
                let dst: [u8; 6] = reply[0..6].try_into().ok()?;
                let src: [u8; 6] = reply[6..12].try_into().ok()?;
                return Some((parse_reply(bootp)?, dst, src));
            }
        }
        None
    }

    fn drops(agent: &Agent, ifname: &str, reason: &str) -> u64 {
        agent.counters(ifname)["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    /// A UDP socket in the workload's namespace, bound to `port`.
    fn workload_socket(w: &Workload, port: u16) -> UdpSocket {
        let socket =
            w.ns.enter(move || UdpSocket::bind(("0.0.0.0", port)).expect("bind in the workload"));
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        socket
    }

    /// UDP both ways between the VM and the workload: the VM's datagram reaches the workload,
    /// and the workload's reaches the VM with the VM's MAC as destination and the tap's as
    /// source. Returns (VM -> workload arrived, workload -> VM arrived).
    fn udp_both_ways(vm: &Vm, w: &Workload, port: u16) -> (bool, bool) {
        let socket = workload_socket(w, port);
        let mut to_workload = false;
        for _ in 0..3 {
            vm.send(&vm.udp(vm.ip, w.v4, 40000, port, b"from the vm"));
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                to_workload = &buf[..n] == b"from the vm" && from.ip() == vm.ip;
                break;
            }
        }
        let mut to_vm = false;
        for _ in 0..3 {
            socket
                .send_to(b"from the workload", SocketAddr::from((vm.ip, 40000)))
                .expect("send from the workload");
            let got = vm.receive(Duration::from_millis(500), |f| {
                udp_of(f)
                    .is_some_and(|(s, d, p)| s == port && d == 40000 && p == b"from the workload")
            });
            if let Some(frame) = got {
                assert_eq!(frame[0..6], vm.mac, "destination MAC is the VM's");
                assert_eq!(frame[6..12], TAP_MAC, "source MAC is the tap's");
                to_vm = true;
                break;
            }
        }
        (to_workload, to_vm)
    }

    /// Pings `dst` from the VM; whether the echo reply came back to the VM's MAC from the
    /// tap's.
    fn vm_pings(vm: &Vm, dst: Ipv4Addr) -> bool {
        let mut icmp = vec![8, 0, 0, 0, 0x7a, 0x9e, 0, 1];
        icmp.extend_from_slice(b"ping from the stand-in vm");
        let check = calico_loader::packets::checksum(&icmp);
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        let frame = ethernet(
            TAP_MAC,
            vm.mac,
            0x0800,
            &ipv4(vm.ip, dst, 64, 1, &[], &icmp),
        );
        (0..3).any(|_| {
            vm.send(&frame);
            vm.receive(Duration::from_secs(1), |f| {
                ethertype(f) == 0x0800 && f[23] == 1 && f[34] == 0 && f[38..40] == [0x7a, 0x9e]
            })
            .is_some_and(|reply| reply[0..6] == vm.mac && reply[6..12] == TAP_MAC)
        })
    }

    fn arp_answered(vm: &Vm, target: Ipv4Addr) -> bool {
        vm.send(&arp_request(vm.mac, vm.ip, target));
        vm.receive(Duration::from_secs(2), |f| {
            ethertype(f) == 0x0806 && f[21] == 2 && f[28..32] == target.octets()
        })
        .is_some_and(|reply| {
            reply[0..6] == vm.mac && reply[6..12] == TAP_MAC && reply[22..28] == TAP_MAC
        })
    }

    const DENY_VM1: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
        metadata: {name: deny-vm1}\n\
        spec: {selector: \"app == 'vm1'\", order: 1, ingress: [{action: Deny}], egress: [{action: Deny}]}\n";

    #[test]
    fn a_vm_on_a_tap_is_attached_answered_served_and_policed() {
        let topology = Topology::new(1);
        let wl = topology.workload(1);
        let vm1 = Vm::create(
            &topology.host,
            1,
            Ipv4Addr::new(198, 18, 0, 21),
            &port_id(1),
        );
        let vm2_port = port_id(2);
        let vm2 = Vm::create(&topology.host, 2, Ipv4Addr::new(198, 18, 0, 22), &vm2_port);
        let datastore = Datastore::new();
        datastore.write("wl.yaml", &wl.endpoint_yaml(NODE));
        // vm1: an endpoint as the CNI tests write them, without a gateway.
        datastore.write(
            "vm1.yaml",
            &format!(
                "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {{name: {NODE}-openstack-vm1-port1, namespace: test, labels: {{app: vm1}}}}\n\
                 spec: {{node: {NODE}, orchestrator: openstack, workload: vm1, endpoint: port1, \
                 interfaceName: {}, mac: \"{}\", ipNetworks: [\"{}/32\"], profiles: [{ALLOW_ALL_PROFILE}]}}\n",
                vm1.tap,
                mac_string(&vm1.mac),
                vm1.ip
            ),
        );
        // vm2: as networking-calico writes it, with its subnet's gateway, and its security
        // group's policy; the subnet is an IP pool.
        let sg = "5d1f0e2c-4a4b-4c6d-9e8f-0123456789ab";
        let subnet_gateway = Ipv4Addr::new(198, 18, 0, 1);
        datastore.write(
            "vm2.json",
            &vm2.endpoint_json(
                "0c1d2e3f-aaaa-4bbb-8ccc-000000000002",
                &vm2_port,
                sg,
                Some(subnet_gateway),
            ),
        );
        datastore.write(
            "pool.yaml",
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: subnet}\n\
             spec: {cidr: 198.18.0.0/24}\n",
        );
        // The security group: SSH-like TCP from its own members and UDP port 7000 from
        // anywhere in; everything out.
        datastore.write(
            "sg.json",
            &format!(
                r#"{{"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
 "metadata": {{"name": "ossg.default.{sg}", "namespace": "openstack"}},
 "spec": {{"selector": "has(sg.projectcalico.org/openstack-{sg})",
  "ingress": [{{"action": "Allow", "ipVersion": 4, "protocol": "TCP",
                "source": {{"selector": "has(sg.projectcalico.org/openstack-{sg})"}},
                "destination": {{"ports": ["22:22"]}}}},
              {{"action": "Allow", "ipVersion": 4, "protocol": "UDP",
                "source": {{"nets": ["0.0.0.0/0"]}}, "destination": {{"ports": [7000]}}}}],
  "egress": [{{"action": "Allow", "ipVersion": 4, "destination": {{"nets": ["0.0.0.0/0"]}}}}]}}}}"#
            ),
        );
        let agent = Agent::start(&topology, &datastore, NODE, &[]);
        agent.wait_attached(&[&wl.host_ifname, &vm1.tap, &vm2.tap]);
        let endpoints = agent.dump("endpoints");
        let row = |ifname: &str| {
            endpoints
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["interface"] == ifname).cloned())
                .unwrap_or_default()
        };
        assert_eq!(row(&vm1.tap)["tap"], true, "{endpoints}");
        assert_eq!(row(&vm1.tap)["dhcp_server"], "169.254.1.1");
        assert_eq!(row(&vm2.tap)["dhcp_server"], subnet_gateway.to_string());
        assert_eq!(row(&wl.host_ifname)["tap"], false);
        assert_eq!(row(&wl.host_ifname)["dhcp_server"], serde_json::Value::Null);

        // ARP: the gateway, the subnet's gateway, anything; answered with the tap's MAC.
        assert!(
            arp_answered(&vm1, GATEWAY),
            "ARP for 169.254.1.1; log:\n{}",
            agent.log()
        );
        assert!(
            arp_answered(&vm2, subnet_gateway),
            "ARP for the ipv4Gateway"
        );
        assert!(arp_answered(&vm1, wl.v4), "ARP for another address");

        // Ping and UDP both ways between the VM and the container, delivered by the programs.
        assert!(
            vm_pings(&vm1, wl.v4),
            "ping from the VM; log:\n{}",
            agent.log()
        );
        let before = agent.counters(&wl.host_ifname)["forwarded_packets"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            udp_both_ways(&vm1, wl, 6001),
            (true, true),
            "log:\n{}",
            agent.log()
        );
        let after = agent.counters(&wl.host_ifname)["forwarded_packets"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            after > before,
            "the workload's replies to the VM were forwarded in BPF"
        );

        // DHCP, /32 shape: 169.254.1.1 as router, and the routes to reach it.
        let discover = dhcp_frame(&vm1, 1, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, None);
        let (offer, dst, src) =
            dhcp(&vm1, &discover).unwrap_or_else(|| panic!("no OFFER; log:\n{}", agent.log()));
        assert_eq!(offer.message, 2);
        assert_eq!(offer.address, vm1.ip);
        assert_eq!(offer.mask, Some(Ipv4Addr::BROADCAST));
        assert_eq!(offer.router, Some(GATEWAY));
        assert_eq!(offer.server, Some(GATEWAY));
        assert_eq!(
            offer.classless_routes.as_deref(),
            Some(&[32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1][..])
        );
        assert_eq!((dst, src), ([0xff; 6], TAP_MAC));
        let request = dhcp_frame(
            &vm1,
            3,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Some((vm1.ip, GATEWAY)),
        );
        let (ack, _, _) = dhcp(&vm1, &request).expect("an ACK");
        assert_eq!((ack.message, ack.address), (5, vm1.ip));
        // A renewal, unicast from the leased address to the server.
        let renew = dhcp_frame(&vm1, 3, vm1.ip, GATEWAY, None);
        let (ack, _, _) = dhcp(&vm1, &renew).expect("an ACK to a renewal");
        assert_eq!((ack.message, ack.address), (5, vm1.ip));

        // DHCP, subnet shape: the pool's mask and the subnet's gateway.
        let discover = dhcp_frame(&vm2, 1, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, None);
        let (offer, _, _) = dhcp(&vm2, &discover).expect("an OFFER for vm2");
        assert_eq!(offer.address, vm2.ip);
        assert_eq!(offer.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(offer.router, Some(subnet_gateway));
        assert_eq!(offer.server, Some(subnet_gateway));
        assert_eq!(offer.classless_routes, None);

        // Anti-spoofing: from 0.0.0.0 only DHCP passes; a foreign source never.
        let spoofed = drops(&agent, &vm1.tap, "spoofed-source");
        let socket = workload_socket(wl, 6002);
        for src in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(198, 18, 0, 99)] {
            vm1.send(&vm1.udp(src, wl.v4, 40000, 6002, b"spoofed"));
            let mut buf = [0u8; 64];
            assert!(
                socket.recv_from(&mut buf).is_err(),
                "a datagram from {src} arrived"
            );
        }
        wait_for(
            "both spoofed datagrams counted",
            Duration::from_secs(10),
            || drops(&agent, &vm1.tap, "spoofed-source") == spoofed + 2,
        );
        // DHCP from 0.0.0.0 to another server is no exception either.
        vm1.send(&dhcp_frame(&vm1, 1, Ipv4Addr::UNSPECIFIED, wl.v4, None));
        wait_for(
            "the DHCP request to a foreign server dropped",
            Duration::from_secs(10),
            || drops(&agent, &vm1.tap, "spoofed-source") == spoofed + 3,
        );

        // The security group as networking-calico writes it: UDP 7000 in, other ports not.
        let (_, to_vm) = udp_both_ways(&vm2, wl, 7000);
        assert!(to_vm, "UDP to port 7000 is allowed by the security group");
        let socket = workload_socket(wl, 7001);
        socket
            .send_to(b"not allowed", SocketAddr::from((vm2.ip, 7001)))
            .expect("send");
        assert!(
            vm2.receive(Duration::from_secs(1), |f| udp_of(f)
                .is_some_and(|(_, d, _)| d == 7001))
                .is_none(),
            "UDP to port 7001 is not allowed by the security group"
        );
        assert!(drops(&agent, &vm2.tap, "policy-denied") > 0);

        // vm2's floating IP, from the container (inside the pool): the VM gets the datagram
        // for its internal address from the container's, and its reply reaches the container
        // from the floating IP (a reply to a flow that addressed it).
        let floating = Ipv4Addr::new(198, 19, 0, vm2.ip.octets()[3]);
        let socket = workload_socket(wl, 7000);
        let mut delivered = None;
        for _ in 0..3 {
            socket
                .send_to(b"to the floating ip", SocketAddr::from((floating, 7000)))
                .expect("send to the floating IP");
            delivered = vm2.receive(Duration::from_millis(500), |f| {
                udp_of(f).is_some_and(|(_, d, p)| d == 7000 && p == b"to the floating ip")
            });
            if delivered.is_some() {
                break;
            }
        }
        let frame = delivered.unwrap_or_else(|| {
            panic!(
                "nothing reached vm2 at its floating IP; log:\n{}",
                agent.log()
            )
        });
        assert_eq!(
            frame[14 + 16..14 + 20],
            vm2.ip.octets(),
            "to the internal address"
        );
        assert_eq!(
            frame[14 + 12..14 + 16],
            wl.v4.octets(),
            "from the container"
        );
        assert_eq!(frame[0..6], vm2.mac, "to the VM's MAC");
        let (sport, _, _) = udp_of(&frame).expect("UDP");
        vm2.send(&vm2.udp(vm2.ip, wl.v4, 7000, sport, b"reply from the vm"));
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).expect("the VM's reply");
        assert_eq!(&buf[..n], b"reply from the vm");
        assert_eq!(
            from,
            SocketAddr::from((floating, 7000)),
            "from the floating IP"
        );

        // A policy denying vm1 both ways; DHCP still answers.
        datastore.write("deny.yaml", DENY_VM1);
        wait_for("the deny policy to apply", Duration::from_secs(10), || {
            udp_both_ways(&vm1, wl, 6003) == (false, false)
        });
        let denied = drops(&agent, &vm1.tap, "policy-denied");
        assert_eq!(udp_both_ways(&vm1, wl, 6004), (false, false));
        assert!(drops(&agent, &vm1.tap, "policy-denied") >= denied + 2);
        let (offer, _, _) = dhcp(&vm1, &discover_for(&vm1)).expect("an OFFER under deny-all");
        assert_eq!(offer.address, vm1.ip);
    }

    fn discover_for(vm: &Vm) -> Vec<u8> {
        dhcp_frame(vm, 1, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, None)
    }

    #[test]
    fn tap_to_tap_in_xdp_mode() {
        let topology = Topology::new(0);
        let vm1 = Vm::create(
            &topology.host,
            1,
            Ipv4Addr::new(198, 18, 0, 31),
            &port_id(1),
        );
        let vm2 = Vm::create(
            &topology.host,
            2,
            Ipv4Addr::new(198, 18, 0, 32),
            &port_id(2),
        );
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for (i, vm) in [(1, &vm1), (2, &vm2)] {
            yaml.push_str(&format!(
                "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {{name: {NODE}-openstack-vm{i}-port{i}, namespace: test, labels: {{app: vm{i}}}}}\n\
                 spec: {{node: {NODE}, orchestrator: openstack, workload: vm{i}, endpoint: port{i}, \
                 interfaceName: {}, mac: \"{}\", ipNetworks: [\"{}/32\"], profiles: [{ALLOW_ALL_PROFILE}]}}\n",
                vm.tap,
                mac_string(&vm.mac),
                vm.ip
            ));
        }
        datastore.write("vms.yaml", &yaml);
        let agent = Agent::start(&topology, &datastore, NODE, &["--attach-mode", "xdp"]);
        agent.wait_attached(&[&vm1.tap, &vm2.tap]);
        let kernel_before = topology.kernel_forwarded();
        let mut arrived = None;
        for _ in 0..3 {
            vm1.send(&vm1.udp(vm1.ip, vm2.ip, 40000, 7100, b"tap to tap"));
            arrived = vm2.receive(Duration::from_secs(1), |f| {
                udp_of(f).is_some_and(|(_, d, p)| d == 7100 && p == b"tap to tap")
            });
            if arrived.is_some() {
                break;
            }
        }
        let frame = arrived.unwrap_or_else(|| panic!("nothing reached vm2; log:\n{}", agent.log()));
        assert_eq!(frame[0..6], vm2.mac, "destination MAC is vm2's");
        assert_eq!(frame[6..12], TAP_MAC, "source MAC is vm2's tap's");
        assert!(
            agent.counters(&vm1.tap)["forwarded_packets"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        );
        assert_eq!(
            topology.kernel_forwarded(),
            kernel_before,
            "the kernel forwarded nothing"
        );
        // ARP is answered in XDP too.
        assert!(
            arp_answered(&vm1, GATEWAY),
            "ARP for 169.254.1.1 in XDP mode"
        );
    }
}
