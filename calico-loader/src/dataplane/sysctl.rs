//! The per-interface IP forwarding sysctls the agent turns on, as Calico's CNI plugin and Felix
//! do for workload interfaces:
//!
//! - **`net.ipv4.conf.<if>.forwarding`, `net.ipv6.conf.<if>.forwarding`** on a workload
//!   interface: `bpf_fib_lookup` refuses to route a packet (`BPF_FIB_LKUP_RET_FWD_DISABLED`)
//!   unless forwarding is on for the interface it arrived on, and the kernel's own forwarding of
//!   IPv4 (what the programs leave to it) checks the same flag.
//! - **`net.ipv4.conf.<if>.forwarding`** on a data interface: packets from other hosts that the
//!   program leaves to the kernel (an expiring TTL, a workload without a known MAC in xdp mode)
//!   are forwarded by the kernel only if forwarding is on for their ingress interface. IPv6
//!   forwarding is not turned on there: on a data interface it would make the host ignore router
//!   advertisements.
//! - **`net.ipv6.conf.<if>.force_forwarding`** on both (Linux 6.17 and later; skipped where the
//!   kernel does not have it): the kernel forwards IPv6 only when `net.ipv6.conf.all.forwarding`
//!   is on, or this flag on the ingress interface. Older kernels need the global setting for
//!   the IPv6 packets the programs leave to the kernel; the agent never changes global settings.
//!
//! The agent writes them in its own network namespace (the host's, in production), for each
//! interface it attaches to, before the programs are attached.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::attach::Role;

/// Where the network sysctls of the agent's namespace are.
pub const PROC_SYS_NET: &str = "/proc/sys/net";

/// A sysctl that could not be set.
#[derive(Debug, thiserror::Error)]
#[error("setting {path} to 1: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// One per-interface setting: its path under the root, with `{}` for the interface name.
struct Setting {
    path: &'static str,
    /// Skipped when the kernel does not have it.
    optional: bool,
}

const IPV4_FORWARDING: Setting = Setting {
    path: "ipv4/conf/{}/forwarding",
    optional: false,
};
const IPV6_FORWARDING: Setting = Setting {
    path: "ipv6/conf/{}/forwarding",
    optional: false,
};
const IPV6_FORCE_FORWARDING: Setting = Setting {
    path: "ipv6/conf/{}/force_forwarding",
    optional: true,
};

/// Turns on forwarding where the programs need it.
#[derive(Clone, Debug)]
pub struct Forwarding {
    root: PathBuf,
}

impl Forwarding {
    /// The settings of the agent's own network namespace.
    pub fn new() -> Self {
        Self::under(PROC_SYS_NET)
    }

    /// The settings under `root` (a directory laid out like `/proc/sys/net`).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Turns on the forwarding settings an interface of `role` needs. Where the kernel has no
    /// IPv6 for the interface, the IPv6 settings are skipped. Returns the paths it wrote (those
    /// that were already on are left alone).
    pub fn enable(&self, ifname: &str, role: Role) -> Result<Vec<PathBuf>, SysctlError> {
        let settings: &[Setting] = match role {
            Role::Workload => &[IPV4_FORWARDING, IPV6_FORWARDING, IPV6_FORCE_FORWARDING],
            Role::Data | Role::HostEndpoint => &[IPV4_FORWARDING, IPV6_FORCE_FORWARDING],
        };
        let ipv6 = self.root.join("ipv6/conf").join(ifname).is_dir();
        let mut written = Vec::new();
        for setting in settings {
            if setting.path.starts_with("ipv6/") && !ipv6 {
                continue;
            }
            let path = self.root.join(setting.path.replace("{}", ifname));
            if setting.optional && !path.exists() {
                continue;
            }
            if set_on(&path)? {
                written.push(path);
            }
        }
        Ok(written)
    }
}

impl Default for Forwarding {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes 1 to `path` unless it holds 1 already; whether it wrote.
fn set_on(path: &Path) -> Result<bool, SysctlError> {
    let error = |source| SysctlError {
        path: path.to_owned(),
        source,
    };
    if fs::read_to_string(path).map_err(error)?.trim() == "1" {
        return Ok(false);
    }
    fs::write(path, "1").map_err(error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like `/proc/sys/net`, with the files of one interface at 0.
    fn tree(ifname: &str, ipv6: bool, force_forwarding: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = vec![format!("ipv4/conf/{ifname}/forwarding")];
        if ipv6 {
            files.push(format!("ipv6/conf/{ifname}/forwarding"));
            if force_forwarding {
                files.push(format!("ipv6/conf/{ifname}/force_forwarding"));
            }
        }
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, "0\n").expect("write");
        }
        dir
    }

    fn value(root: &Path, file: &str) -> String {
        fs::read_to_string(root.join(file))
            .expect("read")
            .trim()
            .to_owned()
    }

    #[test]
    fn a_workload_interface_forwards_both_families() {
        let dir = tree("cali1", true, true);
        let forwarding = Forwarding::under(dir.path());
        let written = forwarding.enable("cali1", Role::Workload).expect("enable");
        assert_eq!(written.len(), 3);
        for file in [
            "ipv4/conf/cali1/forwarding",
            "ipv6/conf/cali1/forwarding",
            "ipv6/conf/cali1/force_forwarding",
        ] {
            assert_eq!(value(dir.path(), file), "1", "{file}");
        }
        assert!(
            forwarding
                .enable("cali1", Role::Workload)
                .expect("again")
                .is_empty(),
            "settings already on are not written again"
        );
    }

    #[test]
    fn a_data_interface_keeps_ipv6_router_advertisements() {
        let dir = tree("eth0", true, true);
        Forwarding::under(dir.path())
            .enable("eth0", Role::Data)
            .expect("enable");
        assert_eq!(value(dir.path(), "ipv4/conf/eth0/forwarding"), "1");
        assert_eq!(value(dir.path(), "ipv6/conf/eth0/force_forwarding"), "1");
        assert_eq!(
            value(dir.path(), "ipv6/conf/eth0/forwarding"),
            "0",
            "IPv6 forwarding on a data interface would stop router advertisements"
        );
    }

    #[test]
    fn missing_ipv6_or_force_forwarding_is_skipped() {
        let dir = tree("cali1", true, false);
        let written = Forwarding::under(dir.path())
            .enable("cali1", Role::Workload)
            .expect("an older kernel without force_forwarding");
        assert_eq!(written.len(), 2);
        let dir = tree("cali2", false, false);
        let written = Forwarding::under(dir.path())
            .enable("cali2", Role::Workload)
            .expect("an interface without IPv6");
        assert_eq!(written.len(), 1);
    }

    #[test]
    fn a_missing_interface_is_an_error_that_names_the_file() {
        let dir = tree("cali1", true, true);
        let error = Forwarding::under(dir.path())
            .enable("gone", Role::Workload)
            .expect_err("no such interface");
        assert!(
            error.to_string().contains("ipv4/conf/gone/forwarding"),
            "{error}"
        );
    }
}
