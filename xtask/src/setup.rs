//! `cargo xtask setup`: installs every prerequisite, idempotently.
//!
//! Each item is checked first and installed only when missing, so a second
//! run takes well under a second.

use std::{collections::HashSet, time::Instant};

use crate::root;
use anyhow::{Context, Result, bail};
use testbed::{Cmd, output, privileges, signals};

/// Debian packages the build, the agent, the tests and the demo rely on.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22 (and its Polly library).
    "llvm-22-dev",
    "libpolly-22-dev",
    // Inspecting and driving the dataplane.
    "bpftool",
    "iproute2",
    "iptables",
    "nftables",
    "ethtool",
    // Traffic generators and diagnostics for tests and benchmarks.
    "netsniff-ng",
    "iperf3",
    "iputils-ping",
    "tcpdump",
    // Datastore and routing companions.
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
    // A real scraper for the metrics test.
    "prometheus",
    // Certificates for the etcd TLS tests.
    "openssl",
    "bird2",
    // An independent BGP speaker, the top-of-rack router of the routing tests (its
    // systemd unit starts only with an /etc/gobgpd.conf, which nothing writes).
    "gobgpd",
    // Real containers on the CNI plugin (the podman test): podman 4 with its CNI backend, the
    // runtime it is run with, and the busybox-static its test image (and the test VMs'
    // initramfs) is made of.
    "podman",
    "containernetworking-plugins",
    "runc",
    // Test VMs: qemu (TCG).
    "qemu-system-x86",
    "busybox-static",
    "sudo",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

pub fn setup() -> Result<()> {
    let start = Instant::now();
    output::step("Setup: checking prerequisites");

    apt_packages().context("installing Debian packages")?;
    nightly_rust_src().context("installing rust-src for the nightly toolchain")?;
    bpf_linker().context("installing bpf-linker")?;

    output::info(format!(
        "setup finished in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Debian packages, via one `dpkg-query` for the check and, only when
/// something is missing, `apt-get update` + `apt-get install`.
fn apt_packages() -> Result<()> {
    if privileges::which("dpkg-query").is_none() || privileges::which("apt-get").is_none() {
        bail!(
            "dpkg-query/apt-get not found: this is not a Debian-like system; install these \
             packages (or their equivalents) by hand: {}",
            APT_PACKAGES.join(" ")
        );
    }
    // Unknown packages make dpkg-query exit 1 (complaining on stderr), but the
    // known ones are still listed on stdout.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(APT_PACKAGES)
        .capture()?;
    let installed: HashSet<&str> = std::str::from_utf8(&output.stdout)
        .context("dpkg-query printed invalid UTF-8")?
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(package, _)| package)
        .collect();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect();

    if missing.is_empty() {
        output::info(format!(
            "Debian packages: all {} installed",
            APT_PACKAGES.len()
        ));
        return Ok(());
    }
    output::info(format!("Debian packages missing: {}", missing.join(" ")));
    if !privileges::is_root() && privileges::which("sudo").is_none() {
        bail!(
            "sudo is not installed, so packages cannot be installed as this user: run \
             `cargo xtask setup` once as root"
        );
    }
    root::ensure_can_become_root("installing Debian packages")?;
    Cmd::new("apt-get").arg("update").privileged().run()?;
    Cmd::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .privileged()
        .run()?;
    Ok(())
}

/// `rust-src` for the nightly toolchain: aya-build compiles the eBPF
/// programs with `-Z build-std`, which needs the standard library's source.
fn nightly_rust_src() -> Result<()> {
    if privileges::which("rustup").is_none() {
        bail!("rustup not found: install it (https://rustup.rs) and re-run `cargo xtask setup`");
    }
    let list = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", NIGHTLY, "--installed"])
        .capture()?;
    if !list.status.success() {
        output::info(format!("toolchain `{NIGHTLY}` is not installed"));
        return Cmd::new("rustup")
            .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
            .args(["--component", "rust-src"])
            .run()
            .map_err(Into::into);
    }
    let has_rust_src = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-"));
    if has_rust_src {
        output::info(format!("rust-src for `{NIGHTLY}`: installed"));
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .run()?;
    Ok(())
}

/// bpf-linker, built against the system's LLVM 22.
fn bpf_linker() -> Result<()> {
    let wanted_minor = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(minor, _)| minor);
    if privileges::which("bpf-linker").is_some() {
        let version = Cmd::new("bpf-linker").arg("--version").capture()?;
        let version = String::from_utf8_lossy(&version.stdout);
        let version = version.split_whitespace().nth(1).unwrap_or("unknown");
        if version == wanted_minor || version.starts_with(&format!("{wanted_minor}.")) {
            output::info(format!("bpf-linker {version}: installed"));
            return Ok(());
        }
        output::info(format!(
            "bpf-linker {version} found, but {BPF_LINKER_VERSION} is wanted"
        ));
    }

    let install = |locked: bool| {
        let mut cmd = Cmd::new("cargo").args(["install", "bpf-linker", "--version"]);
        cmd = cmd.arg(BPF_LINKER_VERSION);
        if locked {
            cmd = cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features", "llvm-22", "--force"])
            // LLVM_PREFIX is what bpf-linker's build script reads to find
            // libLLVM (without it: "unable to find library -lLLVM");
            // LLVM_SYS_221_PREFIX is llvm-sys's own variable.
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .run()
    };
    output::info("building bpf-linker against LLVM 22 (takes a few minutes)");
    if let Err(err) = install(true) {
        signals::check_interrupted()?;
        output::warn(format!(
            "{}; retrying without --locked (newer compatible dependencies)",
            output::with_causes(&err)
        ));
        install(false)?;
    }
    Ok(())
}
