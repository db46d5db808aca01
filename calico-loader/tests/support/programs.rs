//! The kernel object loaded without pins or attachments, for running its programs on crafted
//! packets (`BPF_PROG_TEST_RUN`), and the workload endpoints those tests program.

use aya::{Ebpf, EbpfLoader, programs::Program};
use calico_loader::{dataplane::KERNEL_OBJECT, model::LocalEndpoint};
use ipnet::IpNet;

use super::topology::require_root;

/// The kernel object, loaded unpinned; its maps are private to the test. Fails the test
/// without root (CAP_BPF, CAP_NET_ADMIN).
pub fn load_kernel_object() -> Ebpf {
    require_root();
    EbpfLoader::new().load(KERNEL_OBJECT).unwrap_or_else(|e| {
        panic!(
            "cannot load the kernel object ({e}); program tests need root (CAP_BPF, CAP_NET_ADMIN)"
        )
    })
}

/// Loads (verifies) the programs `names` of `ebpf`, TC classifiers and XDP programs alike.
pub fn load_programs(ebpf: &mut Ebpf, names: &[&str]) {
    for &name in names {
        let loaded = match ebpf.program_mut(name) {
            Some(Program::SchedClassifier(program)) => program.load(),
            Some(Program::Xdp(program)) => program.load(),
            Some(_) => panic!("{name} is neither a TC classifier nor an XDP program"),
            None => panic!("the kernel object has no program {name}"),
        };
        loaded.unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
    }
}

/// A workload endpoint on `interface` with `mac` and the addresses `nets`, nothing else set.
pub fn workload_endpoint(key: &str, interface: &str, mac: [u8; 6], nets: &[&str]) -> LocalEndpoint {
    LocalEndpoint {
        key: key.to_owned(),
        interface: interface.to_owned(),
        mac: Some(mac),
        networks: nets
            .iter()
            .map(|n| n.parse::<IpNet>().expect("test CIDR"))
            .collect(),
        allowed_spoof: Vec::new(),
        ipv4_gateway: None,
        ip_nats: Vec::new(),
    }
}
