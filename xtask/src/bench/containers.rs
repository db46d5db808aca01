//! Container start: podman 4 (CNI backend) in a host namespace `cbench-ctr-<pid>`, beside an
//! agent (TC mode) on a local datastore, with two networks in its private configuration:
//!
//! - `calico`: our plugin, installed by `calico-loader cni install` into a private bin and
//!   conf directory (pool 198.18.4.0/24);
//! - `benchbridge`: what `podman network create` writes for its own bridge networks (the
//!   containernetworking `bridge` plugin with `host-local` IPAM, then `portmap`, `firewall`
//!   and `tuning`), on 198.18.8.0/24, its IPAM state in the private directory.
//!
//! On each network a target container is started first (`sleep`). Then, alternating between
//! the networks, `podman run --rm --network NET IMAGE sh -c PING_UNTIL_REPLY sh TARGET` is timed from
//! its start until the first "bytes from" line, the first reply (ping sends every 10 ms until
//! one is answered). So the figure covers podman's whole start (storage, runc, the CNI ADD)
//! plus, on ours, the agent attaching its programs to the new veth. One unmeasured run on each
//! network first warms podman's caches.
//!
//! Podman's storage, run root, temporary files and CNI state are under the phase's temporary
//! directory: `podman rm --all --force` and `podman system reset --force` on drop, then the
//! directory goes.

use std::{
    io::{BufRead as _, BufReader},
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testbed::{Cmd, Netns, output, privileges, signals};

use super::{loader::NODE, phase_agent::PhaseAgent};
use crate::topology::AttachMode;

const IMAGE: &str = "localhost/calico-ebpf-bench-busybox";
const OURS: &str = "calico";
const BRIDGE: &str = "benchbridge";
/// The container's command (`sh -c`, the target as `$1`): busybox's ping sends every 10 ms
/// for up to 10 s (`-c 1` would send a single request, and wait 10 s when it is lost); the
/// first reply line is passed on and ends the loop, and with it ping (SIGPIPE) and the
/// container.
const PING_UNTIL_REPLY: &str = "ping -i 0.01 -w 10 \"$1\" | while read l; do case \"$l\" in \
                                *'bytes from'*) echo \"$l\"; exit 0;; esac; done";
/// How much slower than the bridge ours may be and still meet the goal: one ping interval
/// (the resolution of the measure) plus the agent's datastore settle time.
pub const TOLERANCE_MS: f64 = 10.0;

const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bench-containers}\n\
                    spec: {cidr: 198.18.4.0/24, blockSize: 26}\n";

#[derive(Debug, Serialize)]
pub struct ContainerStart {
    pub runs_per_network: u32,
    /// From `podman run` to the first answered ping, each run in order.
    pub ours_ms: Vec<f64>,
    pub bridge_ms: Vec<f64>,
    pub ours_median_ms: f64,
    pub bridge_median_ms: f64,
    pub podman_version: String,
}

impl ContainerStart {
    pub fn describe(&self) -> String {
        format!(
            "container start (podman run until the first answered ping, median of {}): ours {:.0} ms, \
             podman's bridge {:.0} ms (x{:.2})",
            self.runs_per_network,
            self.ours_median_ms,
            self.bridge_median_ms,
            self.ours_median_ms / self.bridge_median_ms,
        )
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn measure(loader: &Path, scratch: &Path, pid: u32, runs: u32) -> Result<ContainerStart> {
    output::step(format!(
        "Container start: podman run on ours vs podman's bridge, {runs} runs each"
    ));
    for (program, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ] {
        if privileges::which(program).is_none() {
            bail!("{program} is missing: install {package} (cargo xtask setup does)");
        }
    }
    for plugin in [
        "bridge",
        "host-local",
        "portmap",
        "firewall",
        "tuning",
        "loopback",
    ] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            bail!("/usr/lib/cni/{plugin} is missing: install containernetworking-plugins");
        }
    }
    let host = Netns::create(format!("cbench-ctr-{pid}"))?;
    host.command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .run()?;
    add_uplink(&host)?;
    let datastore = scratch.join("ctr-datastore");
    std::fs::create_dir_all(&datastore)
        .with_context(|| format!("cannot create {}", datastore.display()))?;
    let pin_path = crate::topology::pin_path("bench-ctr", pid);
    let agent = PhaseAgent::start(
        loader,
        &host,
        &datastore,
        &pin_path,
        AttachMode::Tc,
        &scratch.join("agent-ctr.log"),
        |_| ControlFlow::Break("the agent is up".to_owned()),
    )?;
    let podman = Podman::install(loader, &host, &scratch.join("podman"), &datastore)?;
    let result = podman.measure(runs);
    drop(podman);
    agent.stop();
    drop(host);
    result
}

/// A real host has an uplink and a default route; without one, `proxy_arp` on the host side
/// of a container's veth (set by our plugin, as by Calico's) does not answer for 169.254.1.1:
/// the kernel only proxies for addresses it has a route to. So the namespace gets a veth pair
/// of its own (both ends in it) with 198.18.9.1/24 and a default route via 198.18.9.254, an
/// address nothing answers for: nothing leaves the namespace.
fn add_uplink(host: &Netns) -> Result<()> {
    host.ip([
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
    ])
    .run()?;
    for link in ["uplink0", "uplink1"] {
        host.ip(["link", "set", link, "up"]).run()?;
    }
    host.ip(["addr", "add", "198.18.9.1/24", "dev", "uplink0"])
        .run()?;
    host.ip([
        "route",
        "add",
        "default",
        "via",
        "198.18.9.254",
        "dev",
        "uplink0",
    ])
    .run()?;
    Ok(())
}

struct Podman {
    host: PathBuf,
    dir: PathBuf,
    loader: PathBuf,
    datastore: PathBuf,
}

impl Podman {
    fn install(loader: &Path, host: &Netns, dir: &Path, datastore: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let me = Self {
            host: host.path(),
            dir: dir.to_owned(),
            loader: loader.to_owned(),
            datastore: datastore.to_owned(),
        };
        let (bin, conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
        me.loader_cmd()
            .args(["cni", "install", "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&conf)
            .args(["--node", NODE])
            .run()?;
        let pool = dir.join("pool.yaml");
        std::fs::write(&pool, POOL).context("cannot write the pool")?;
        me.loader_cmd().args(["apply", "-f"]).arg(&pool).run()?;
        std::fs::write(
            conf.join("20-benchbridge.conflist"),
            bridge_conflist(&dir.join("cni-ipam")),
        )
        .context("cannot write the bridge conflist")?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n\n\
                 [network]\nnetwork_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n",
                bin.display(),
                conf.display()
            ),
        )
        .context("cannot write containers.conf")?;
        me.import_busybox()?;
        Ok(me)
    }

    fn loader_cmd(&self) -> Cmd {
        Cmd::new("nsenter")
            .arg(format!("--net={}", self.host.display()))
            .arg(&self.loader)
            .env("DATASTORE_TYPE", "local")
            .env("CALICO_DATASTORE_DIR", &self.datastore)
            .privileged()
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("--net={}", self.host.display()),
            "podman".into(),
            "--root".into(),
            self.dir.join("storage").display().to_string(),
            "--runroot".into(),
            self.dir.join("run").display().to_string(),
            "--tmpdir".into(),
            self.dir.join("tmp").display().to_string(),
        ]
    }

    fn podman(&self) -> Cmd {
        Cmd::new("nsenter")
            .args(self.args())
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .privileged()
    }

    fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).context("cannot create the rootfs")?;
        let busybox = privileges::which("busybox").context("busybox is missing")?;
        std::fs::copy(&busybox, rootfs.join("bin/busybox")).context("cannot copy busybox")?;
        for applet in ["sh", "sleep", "ping"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .context("cannot link a busybox applet")?;
        }
        let tar = self.dir.join("rootfs.tar");
        Cmd::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .run()?;
        self.podman()
            .args(["import", "--quiet"])
            .arg(&tar)
            .arg(IMAGE)
            .run()?;
        Ok(())
    }

    /// A target container on `network`; its address.
    fn target(&self, network: &str) -> Result<String> {
        let name = format!("target-{network}");
        self.podman()
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                network,
                IMAGE,
                "sleep",
                "3600",
            ])
            .run()?;
        let address = self
            .podman()
            .args([
                "inspect",
                &name,
                "--format",
                &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"),
            ])
            .output()?
            .trim()
            .to_owned();
        if address.is_empty() {
            bail!("podman gave {name} no address on {network}");
        }
        output::info(format!("{name}: {address}"));
        Ok(address)
    }

    /// `podman run --rm --network NET … ping TARGET`: milliseconds until the first reply line.
    fn timed_run(&self, network: &str, target: &str) -> Result<f64> {
        let mut command = Command::new("nsenter");
        command
            .args(self.args())
            .args(["run", "--rm", "--network", network, IMAGE])
            .args(["sh", "-c", PING_UNTIL_REPLY, "sh", target])
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().context("cannot run podman")?;
        let stdout = child.stdout.take().context("podman's stdout")?;
        let mut answered = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("podman's output")?;
            if answered.is_none() && line.contains("bytes from") {
                answered = Some(started.elapsed());
            }
        }
        let output = child.wait_with_output().context("podman run")?;
        match answered {
            Some(elapsed) => Ok(elapsed.as_secs_f64() * 1e3),
            None => bail!(
                "no reply from {target} to a container on {network} ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    fn measure(&self, runs: u32) -> Result<ContainerStart> {
        let ours_target = self.target(OURS)?;
        let bridge_target = self.target(BRIDGE)?;
        for (network, target) in [(OURS, &ours_target), (BRIDGE, &bridge_target)] {
            let ms = self.timed_run(network, target)?;
            output::info(format!("warm-up on {network}: {ms:.0} ms (not counted)"));
        }
        let (mut ours_ms, mut bridge_ms) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            signals::check_interrupted()?;
            // Alternate which network goes first.
            let order = if run % 2 == 1 {
                [(OURS, &ours_target), (BRIDGE, &bridge_target)]
            } else {
                [(BRIDGE, &bridge_target), (OURS, &ours_target)]
            };
            for (network, target) in order {
                let ms = self.timed_run(network, target)?;
                output::info(format!(
                    "run {run}/{runs} on {network}: first reply after {ms:.0} ms"
                ));
                if network == OURS {
                    ours_ms.push(ms);
                } else {
                    bridge_ms.push(ms);
                }
            }
        }
        let podman_version = self
            .podman()
            .arg("--version")
            .quiet()
            .output()?
            .trim()
            .to_owned();
        let result = ContainerStart {
            runs_per_network: runs,
            ours_median_ms: median(&ours_ms),
            bridge_median_ms: median(&bridge_ms),
            ours_ms,
            bridge_ms,
            podman_version,
        };
        output::info(result.describe());
        Ok(result)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .podman()
            .args(["rm", "--all", "--force", "--time", "0"])
            .cleanup()
            .run();
        let _ = self
            .podman()
            .args(["system", "reset", "--force"])
            .cleanup()
            .run();
    }
}

/// The conflist `podman network create` writes for a bridge network (podman 4, CNI backend),
/// with host-local's state in `ipam_dir` instead of /var/lib/cni.
fn bridge_conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": BRIDGE,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cbenchbr0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": "198.18.8.0/24", "gateway": "198.18.8.1"}]],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "backend": ""},
            {"type": "tuning"}
        ]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_conflist_is_podmans_chain_on_a_benchmarking_subnet_with_private_state() {
        let text = bridge_conflist(Path::new("/tmp/state"));
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["name"], BRIDGE);
        let types: Vec<&str> = value["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "firewall", "tuning"]);
        let ipam = &value["plugins"][0]["ipam"];
        assert_eq!(ipam["dataDir"], "/tmp/state");
        let subnet = ipam["ranges"][0][0]["subnet"].as_str().expect("subnet");
        assert!(subnet.starts_with("198.18."), "{subnet}");
    }
}
