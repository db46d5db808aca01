//! A real VM on a tap endpoint: qemu (TCG) boots Debian's kernel with a busybox initramfs
//! (`cargo xtask vm-image`, cached) on a tap that qemu creates in host A's namespace, as Nova
//! does. The endpoint is written as networking-calico writes it (namespace `openstack`, no
//! profiles, a security group's policy). The VM takes its address by DHCP from the agent, in both
//! lease shapes, reaches a container workload beside it and a workload on host B (two hosts,
//! `support::two_hosts`), and a policy denies it; with a floating IP (`ipNATs`), a namespace that
//! stands for the outside reaches it, and it reaches the outside.
//!
//! Everything happens inside namespaces the test creates; qemu runs in host A's namespace.

mod support;

mod privileged {
    use std::time::Duration;

    use testbed::vm::{Vm, VmImage, VmNetwork};

    use crate::support::{topology::*, two_hosts::*};

    /// The Neutron port and VM ids; the tap is `tap` + the port id's first 11 characters.
    const PORT_ID: &str = "5d1f4c3e-8a9b-4c2d-9e0f-1a2b3c4d5e6f";
    const VM_ID: &str = "0c7e2f9a-1b3d-4e5f-8a6b-7c8d9e0f1a2b";
    const SG_ID: &str = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const VM_MAC: &str = "fa:16:3e:00:00:30";
    const VM_IP: &str = "198.18.0.40";
    /// The subnet's gateway, as networking-calico writes it (`ipv4Gateway`).
    const SUBNET_GATEWAY: &str = "198.18.0.1";
    /// How long the guest may take to boot under TCG.
    const BOOT: Duration = Duration::from_secs(120);
    const COMMAND: Duration = Duration::from_secs(30);

    fn tap_name() -> String {
        format!("tap{}", &PORT_ID[..11])
    }

    /// The floating IP: outside the pools, on no link.
    const FLOATING_IP: &str = "198.19.255.40";
    /// Host A's and the outside's addresses on the link between them.
    const HOST_OUTSIDE_V4: &str = "198.19.1.1";
    const OUTSIDE_V4: &str = "198.19.1.2";

    /// The VM's endpoint as networking-calico writes it, with `gateway` as `ipv4Gateway`, and
    /// the floating IP when `floating`.
    fn endpoint_json(gateway: Option<&str>, floating: bool) -> String {
        let gateway = gateway.map_or(String::new(), |g| format!(r#""ipv4Gateway": "{g}","#));
        let nats = if floating {
            format!(r#""ipNATs": [{{"internalIP": "{VM_IP}", "externalIP": "{FLOATING_IP}"}}],"#)
        } else {
            String::new()
        };
        // `<host>-openstack-<VM id>-<port id>`, each `-` inside a segment doubled.
        let name = [HOST_A, "openstack", VM_ID, PORT_ID]
            .map(|segment| segment.replace('-', "--"))
            .join("-");
        format!(
            r#"{{"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
 "metadata": {{"name": "{name}", "namespace": "openstack",
  "labels": {{"sg.projectcalico.org/openstack-{SG_ID}": "default",
   "projectcalico.org/namespace": "openstack", "projectcalico.org/orchestrator": "openstack",
   "projectcalico.org/openstack-project-id": "c1a2b3", "projectcalico.org/openstack-project-name": "demo"}},
  "annotations": {{"openstack.projectcalico.org/network-id": "8d4d1b1e-0000-4000-8000-000000000001"}}}},
 "spec": {{"orchestrator": "openstack", "workload": "{VM_ID}", "node": "{HOST_A}", "endpoint": "{PORT_ID}",
  "interfaceName": "{tap}", "mac": "{VM_MAC}", "ipNetworks": ["{VM_IP}/32"], {gateway} {nats}
  "profiles": []}}}}
"#,
            tap = tap_name(),
        )
    }

    /// The security group's policy as networking-calico writes it: ingress from the test's
    /// addresses, any egress.
    fn security_group_policy() -> String {
        format!(
            r#"{{"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
 "metadata": {{"name": "ossg.default.{SG_ID}", "namespace": "openstack"}},
 "spec": {{"selector": "has(sg.projectcalico.org/openstack-{SG_ID})", "order": 10,
  "ingress": [{{"action": "Allow", "source": {{"nets": ["198.18.0.0/15"]}}}}],
  "egress": [{{"action": "Allow"}}]}}}}
"#
        )
    }

    /// The pool that holds the VM's address and its subnet's gateway: with `ipv4Gateway`, the
    /// lease carries the pool's mask.
    const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: vm-net}\n\
        spec: {cidr: 198.18.0.0/24}\n";

    /// A policy that denies the VM's egress, before the security group's.
    fn deny_vm() -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: deny-vm}}\n\
             spec: {{order: 1, selector: \"has(sg.projectcalico.org/openstack-{SG_ID})\", \
             types: [Egress], egress: [{{action: Deny}}]}}\n"
        )
    }

    fn guest(vm: &mut Vm, command: &str) -> String {
        let out = vm.run(command, COMMAND).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.status, 0,
            "`{command}` in the VM failed:\n{}",
            out.output
        );
        out.output
    }

    fn guest_fails(vm: &mut Vm, command: &str) -> String {
        let out = vm.run(command, COMMAND).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            out.status, 0,
            "`{command}` in the VM should fail:\n{}",
            out.output
        );
        out.output
    }

    #[test]
    fn a_vm_takes_its_address_by_dhcp_and_reaches_workloads_on_both_hosts() {
        require_root();
        let image = VmImage::ensure(&VmImage::default_cache_dir())
            .unwrap_or_else(|e| panic!("the VM image (cargo xtask vm-image builds it): {e}"));
        let hosts = Hosts::new(1, 1);
        hosts.datastore.write("pool.yaml", POOL);
        hosts.datastore.write("sg.json", &security_group_policy());
        hosts
            .datastore
            .write("vm.json", &endpoint_json(None, false));
        let agents = hosts.start(&[]);
        let container = &hosts.a.workloads[0];
        let remote = &hosts.b.workloads[0];

        let mut vm = Vm::boot(
            "vm1",
            &image,
            &VmNetwork {
                netns: hosts.a.host.path(),
                tap: tap_name(),
                mac: VM_MAC.to_owned(),
            },
            BOOT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // qemu creates the tap down; Nova (libvirt) brings it up.
        hosts.a.host.exec(&["ip", "link", "set", &tap_name(), "up"]);
        agents.0.wait_attached(&[tap_name().as_str()]);

        // --- DHCP, without ipv4Gateway: a /32 with 169.254.1.1 as its router.
        let lease = vm
            .run("udhcpc -i eth0 -n -q -t 5 -T 2", COMMAND)
            .unwrap_or_else(|e| panic!("{e}"))
            .output;
        assert!(
            lease.contains(&format!("lease: {VM_IP}/32 router 169.254.1.1")),
            "{lease}\nagent A:\n{}",
            agents.0.log()
        );
        let routes = guest(&mut vm, "ip route");
        assert!(routes.contains("default via 169.254.1.1"), "{routes}");

        // --- The VM reaches the container beside it and the workload on host B, and both
        // reach it.
        for dst in [container.v4.to_string(), remote.v4.to_string()] {
            guest(&mut vm, &format!("ping -c 3 -W 2 {dst}"));
        }
        for workload in [container, remote] {
            assert!(
                workload.ping(VM_IP.parse().expect("address")),
                "{} -> the VM; agent A:\n{}",
                workload.v4,
                agents.0.log()
            );
        }
        // TCP from the VM to a listener in the container.
        let container_ns = container.ns.path();
        let listening = std::thread::spawn(move || {
            testbed::netns::enter_thread(&container_ns).expect("enter the container");
            let listener = std::net::TcpListener::bind("0.0.0.0:7000").expect("listen");
            let (mut stream, _) = listener.accept().expect("accept");
            std::io::Write::write_all(&mut stream, b"from-the-container\n").expect("write");
        });
        std::thread::sleep(Duration::from_millis(300));
        let got = guest(&mut vm, &format!("echo hi | nc -w 3 {} 7000", container.v4));
        assert!(got.contains("from-the-container"), "{got}");
        listening.join().expect("the listener");

        // --- A policy denies the VM's traffic; DHCP still works under it (a VM must boot).
        hosts.datastore.write("deny-vm.yaml", &deny_vm());
        wait_for("the deny policy to apply", Duration::from_secs(20), || {
            !container.ping(VM_IP.parse().expect("address"))
                || vm
                    .run(&format!("ping -c 1 -W 1 {}", container.v4), COMMAND)
                    .is_ok_and(|o| o.status != 0)
        });
        guest_fails(&mut vm, &format!("ping -c 2 -W 1 {}", remote.v4));
        let lease = guest(&mut vm, "udhcpc -i eth0 -n -q -t 5 -T 2");
        assert!(lease.contains("lease: "), "{lease}");
        hosts.datastore.remove("deny-vm.yaml");
        wait_for("the deny policy to go", Duration::from_secs(20), || {
            vm.run(&format!("ping -c 1 -W 1 {}", remote.v4), COMMAND)
                .is_ok_and(|o| o.status == 0)
        });

        // --- With the subnet's gateway (ipv4Gateway): the pool's mask, the gateway as router.
        hosts
            .datastore
            .write("vm.json", &endpoint_json(Some(SUBNET_GATEWAY), false));
        wait_for("the new lease", Duration::from_secs(30), || {
            vm.run("udhcpc -i eth0 -n -q -t 3 -T 2", COMMAND)
                .is_ok_and(|o| {
                    o.output
                        .contains(&format!("lease: {VM_IP}/24 router {SUBNET_GATEWAY}"))
                })
        });
        let routes = guest(&mut vm, "ip route");
        assert!(
            routes.contains(&format!("default via {SUBNET_GATEWAY}")),
            "{routes}"
        );
        for dst in [container.v4.to_string(), remote.v4.to_string()] {
            guest(&mut vm, &format!("ping -c 3 -W 2 {dst}"));
        }

        // --- A floating IP: a namespace that stands for the outside, on host A's `eth1` (a
        // data interface), routes only the floating IP through host A, not the pool.
        let outside = netns("cout");
        hosts
            .a
            .host
            .add_veth(
                "eth1",
                "02:00:00:00:01:0a",
                &outside,
                "eth0",
                "02:00:00:00:01:0b",
            )
            .expect("the veth to the outside");
        hosts.a.host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_OUTSIDE_V4}/24"),
            "dev",
            "eth1",
        ]);
        outside.exec(&["ip", "link", "set", "eth0", "up"]);
        outside.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{OUTSIDE_V4}/24"),
            "dev",
            "eth0",
        ]);
        outside.exec(&[
            "ip",
            "route",
            "add",
            &format!("{FLOATING_IP}/32"),
            "via",
            HOST_OUTSIDE_V4,
        ]);
        hosts
            .datastore
            .write("vm.json", &endpoint_json(Some(SUBNET_GATEWAY), true));
        wait_for(
            "the outside's data interface",
            Duration::from_secs(20),
            || agents.0.data_interface_attached("eth1"),
        );
        wait_for(
            "the outside to reach the VM at its floating IP",
            Duration::from_secs(30),
            || outside.try_exec(&["ping", "-c", "1", "-W", "1", FLOATING_IP]),
        );
        // The VM reaches the outside, which has no route to the pool: its packets leave from
        // the floating IP.
        guest(&mut vm, &format!("ping -c 3 -W 2 {OUTSIDE_V4}"));

        vm.power_off();
    }
}
