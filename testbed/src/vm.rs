//! Real virtual machines for tests: a Debian kernel and a busybox initramfs, built once into a
//! cache, booted by qemu (TCG: no KVM needed) on a tap interface inside a test's network
//! namespace, and driven through the serial console.
//!
//! - [`VmImage::ensure`] builds the image if the cache has none: `apt-get download` of
//!   Debian's kernel package, `dpkg-deb -x`, and an initramfs holding the host's static busybox,
//!   the virtio-net modules, `/init` and a `udhcpc` event script. Nothing is installed.
//! - [`Vm::boot`] starts qemu under `nsenter --net=<namespace>`, so the tap it opens (creating it
//!   if missing) lives in that namespace, and waits for the guest's prompt.
//! - [`Vm::run`] runs one shell command line in the guest and returns its exit status and
//!   output.
//!
//! The guest's console protocol: `/init` prints `vm: ready`, then for each line it reads it runs
//! `sh -c LINE` and prints `vm: done <status>`.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    cmd::{Cmd, CmdError, shell_quote},
    cpio::CpioWriter,
    guards::ChildGuard,
    output::styled,
};

/// The kernel modules virtio-net needs, in load order (Debian's kernel has them as modules).
pub const VIRTIO_NET_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The Debian metapackage whose dependency is the kernel to use.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// The marker of a finished image in its cache directory.
const COMPLETE: &str = "complete";
/// The version of the initramfs's recipe: a cached image of another version is not used.
const RECIPE: &str = "r2";
/// What the guest prints when it is ready for commands, and after each one.
const READY: &str = "vm: ready";
const DONE: &str = "vm: done ";

/// Why a VM could not be built, booted or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("building the VM image: {0}")]
    Image(String),
    #[error("the VM {0}")]
    Guest(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// A kernel and an initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The kernel's release (`6.1.0-…-amd64`).
    pub release: String,
}

impl VmImage {
    /// Where images are cached: `$CALICO_EBPF_VM_CACHE`, else `$XDG_CACHE_HOME/calico-ebpf/vm`,
    /// else `~/.cache/calico-ebpf/vm`.
    pub fn default_cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("CALICO_EBPF_VM_CACHE") {
            return dir.into();
        }
        let base = std::env::var_os("XDG_CACHE_HOME").map_or_else(
            || {
                std::env::var_os("HOME")
                    .map_or_else(|| PathBuf::from("/var/cache"), PathBuf::from)
                    .join(".cache")
            },
            PathBuf::from,
        );
        base.join("calico-ebpf").join("vm")
    }

    /// The newest complete image in `cache`, if there is one.
    pub fn cached(cache: &Path) -> Option<Self> {
        let suffix = format!("+{RECIPE}");
        let mut dirs: Vec<String> = fs::read_dir(cache)
            .ok()?
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join(COMPLETE).exists())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.ends_with(&suffix))
            .collect();
        dirs.sort();
        let dir = dirs.pop()?;
        let release = dir.trim_end_matches(&suffix).to_owned();
        Some(Self::in_dir(&cache.join(&dir), release))
    }

    fn in_dir(dir: &Path, release: String) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio"),
            release,
        }
    }

    /// The cached image, or a new one built into `cache` (a minute or so, mostly the
    /// kernel package's download).
    ///
    /// # Errors
    ///
    /// The kernel package cannot be found or downloaded, a module or busybox is missing, or
    /// the files cannot be written.
    pub fn ensure(cache: &Path) -> Result<Self, VmError> {
        if let Some(image) = Self::cached(cache) {
            return Ok(image);
        }
        let busybox = static_busybox()?;
        let package = kernel_package()?;
        fs::create_dir_all(cache).map_err(io_error(format!("creating {}", cache.display())))?;
        let work = cache.join(format!(".build-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(io_error(format!("creating {}", work.display())))?;
        let result = build_image(cache, &work, &package, &busybox);
        let _ = fs::remove_dir_all(&work);
        result
    }
}

/// The host's busybox, which must be statically linked (Debian's `busybox-static`).
fn static_busybox() -> Result<Vec<u8>, VmError> {
    let path = Path::new("/bin/busybox");
    let bytes = fs::read(path).map_err(|e| {
        VmError::Image(format!(
            "cannot read {} ({e}): install busybox-static (cargo xtask setup does)",
            path.display()
        ))
    })?;
    let head = &bytes[..bytes.len().min(4096)];
    if head.windows(4).any(|w| w == b"/lib") {
        return Err(VmError::Image(format!(
            "{} is dynamically linked: install busybox-static instead of busybox",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The kernel package `linux-image-amd64` depends on (`linux-image-6.1.0-…-amd64`). Without
/// package lists (a fresh machine or container), they are fetched once (`apt-get update`).
fn kernel_package() -> Result<String, VmError> {
    let find = || -> Result<Option<String>, VmError> {
        let depends = Cmd::new("apt-cache")
            .args(["depends", KERNEL_METAPACKAGE])
            .quiet()
            .capture()?;
        Ok(String::from_utf8_lossy(&depends.stdout)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .map(str::to_owned))
    };
    if let Some(package) = find()? {
        return Ok(package);
    }
    Cmd::new("apt-get")
        .args(["update", "-q"])
        .privileged()
        .run()?;
    find()?.ok_or_else(|| {
        VmError::Image(format!(
            "apt-cache names no kernel that {KERNEL_METAPACKAGE} depends on, even after \
             apt-get update"
        ))
    })
}

fn build_image(
    cache: &Path,
    work: &Path,
    package: &str,
    busybox: &[u8],
) -> Result<VmImage, VmError> {
    Cmd::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work)
        .run()?;
    let deb = fs::read_dir(work)
        .map_err(io_error(format!("listing {}", work.display())))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| VmError::Image(format!("apt-get download {package} left no .deb")))?;
    let root = work.join("root");
    Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).run()?;
    let modules_dir = root.join("lib/modules");
    let release = fs::read_dir(&modules_dir)
        .map_err(io_error(format!("listing {}", modules_dir.display())))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .next()
        .ok_or_else(|| VmError::Image(format!("{package} has no lib/modules/<release>")))?;
    let kernel = root.join("boot").join(format!("vmlinuz-{release}"));
    let mut modules = Vec::new();
    for name in VIRTIO_NET_MODULES {
        let path =
            find_file(&modules_dir.join(&release), &format!("{name}.ko")).ok_or_else(|| {
                VmError::Image(format!(
                    "{package} has no {name}.ko (compressed modules are not supported)"
                ))
            })?;
        let bytes = fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
        modules.push((*name, bytes));
    }

    let dir = work.join("image");
    fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    fs::copy(&kernel, dir.join("vmlinuz"))
        .map_err(io_error(format!("copying {}", kernel.display())))?;
    let initramfs = initramfs(busybox, &modules).map_err(io_error("writing the initramfs"))?;
    fs::write(dir.join("initramfs.cpio"), initramfs).map_err(io_error("writing the initramfs"))?;
    fs::write(dir.join(COMPLETE), format!("{package}\n"))
        .map_err(io_error("marking the image complete"))?;
    let target = cache.join(format!("{release}+{RECIPE}"));
    let _ = fs::remove_dir_all(&target);
    fs::rename(&dir, &target).map_err(io_error(format!(
        "moving the image to {}",
        target.display()
    )))?;
    Ok(VmImage::in_dir(&target, release))
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// The guest's `/init`: mounts, modules, then the command loop on the console.
fn init_script() -> String {
    let modules: Vec<String> = VIRTIO_NET_MODULES
        .iter()
        .map(|m| format!("insmod /lib/modules/{m}.ko"))
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
{modules}
ip link set lo up
ip link set eth0 up
stty -echo -onlcr 2>/dev/null
echo "{READY}"
while IFS= read -r line; do
  sh -c "$line" 2>&1
  echo "{DONE}$?"
done
poweroff -f
"#,
        modules = modules.join("\n")
    )
}

/// `udhcpc`'s event script: the lease's address with its mask, classless static routes
/// (option 121), and the default route through the router, which gets a link route first so
/// that a /32 lease can reach it.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
  ip -4 addr flush dev "$interface"
  ip link set "$interface" up
  ;;
bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/${mask:-32}" dev "$interface"
  if [ -n "$staticroutes" ]; then
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then
        ip route replace "$1" dev "$interface"
      else
        ip route replace "$1" via "$2" dev "$interface" onlink
      fi
      shift 2
    done
  fi
  for r in $router; do
    ip route replace "$r" dev "$interface" scope link
    ip route replace default via "$r" dev "$interface"
    break
  done
  echo "lease: $ip/${mask:-32} router ${router:-none}"
  ;;
esac
"#;

fn initramfs(busybox: &[u8], modules: &[(&str, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut archive = CpioWriter::new(Vec::new());
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "etc/udhcpc",
        "lib",
        "lib/modules",
        "usr",
        "usr/share",
        "usr/share/udhcpc",
        "var",
        "var/run",
    ] {
        archive.dir(dir, 0o755)?;
    }
    archive.file("bin/busybox", 0o755, busybox)?;
    archive.symlink("bin/sh", "busybox")?;
    for (name, bytes) in modules {
        archive.file(&format!("lib/modules/{name}.ko"), 0o644, bytes)?;
    }
    archive.file("init", 0o755, init_script().as_bytes())?;
    // Debian's busybox looks in /etc/udhcpc, upstream's in /usr/share/udhcpc.
    archive.file("etc/udhcpc/default.script", 0o755, UDHCPC_SCRIPT.as_bytes())?;
    archive.symlink(
        "usr/share/udhcpc/default.script",
        "/etc/udhcpc/default.script",
    )?;
    archive.finish()
}

/// How a VM is attached: its tap (opened, or created, by qemu in `netns`) and its MAC.
#[derive(Clone, Debug)]
pub struct VmNetwork {
    /// The network namespace's file (`/run/netns/NAME`).
    pub netns: PathBuf,
    pub tap: String,
    pub mac: String,
}

/// What a command printed, and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestOutput {
    pub status: i32,
    pub output: String,
}

/// A running VM, powered off (killed) on drop.
pub struct Vm {
    name: String,
    stdin: ChildStdin,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
    qemu: ChildGuard,
}

impl Vm {
    /// Boots `image` on `network` and waits (up to `timeout`) for the guest's prompt.
    ///
    /// # Errors
    ///
    /// qemu cannot be started, or the guest does not come up in time.
    pub fn boot(
        name: &str,
        image: &VmImage,
        network: &VmNetwork,
        timeout: Duration,
    ) -> Result<Self, VmError> {
        let args: Vec<String> = vec![
            format!("--net={}", network.netns.display()),
            "qemu-system-x86_64".into(),
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            "256".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            image.initramfs.display().to_string(),
            "-append".into(),
            "console=ttyS0 quiet loglevel=1 panic=-1".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={},romfile=", network.mac),
        ];
        eprintln!(
            "{}",
            styled(
                "36",
                format_args!(
                    "$ nsenter {}   # {name}",
                    args.iter()
                        .map(|a| shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            )
        );
        let mut child = Command::new("nsenter")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error(
                "starting qemu-system-x86_64 (install qemu-system-x86)",
            ))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(VmError::Guest(format!("{name}: qemu's pipes are missing")));
        };
        let qemu = ChildGuard::new(format!("qemu ({name})"), child, true);
        let console = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn io::Read + Send>, ""),
            (Box::new(stderr), "qemu: "),
        ] {
            let sender = sender.clone();
            let console = Arc::clone(&console);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let line = format!("{prefix}{}", line.trim_end_matches('\r'));
                    if let Ok(mut console) = console.lock() {
                        console.push(line.clone());
                    }
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut vm = Self {
            name: name.to_owned(),
            stdin,
            lines,
            console,
            qemu,
        };
        vm.wait_for_line(timeout, |line| line.ends_with(READY))
            .map_err(|e| VmError::Guest(format!("{name} did not boot: {e}\n{}", vm.console())))?;
        Ok(vm)
    }

    fn wait_for_line(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("nothing within {timeout:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.qemu.try_wait().ok().flatten();
                    return Err(format!("qemu exited ({status:?})"));
                }
            }
        }
    }

    /// Runs `command` (one line of shell) in the guest and waits up to `timeout` for it.
    ///
    /// # Errors
    ///
    /// The command has a newline, or the guest does not answer in time.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<GuestOutput, VmError> {
        if command.contains('\n') {
            return Err(VmError::Guest(format!(
                "{}: a command must be one line: {command:?}",
                self.name
            )));
        }
        eprintln!(
            "{}",
            styled("36", format_args!("$ [{}] {command}", self.name))
        );
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(io_error(format!("writing to {}'s console", self.name)))?;
        let lines = self
            .wait_for_line(timeout, |line| line.starts_with(DONE))
            .map_err(|e| {
                VmError::Guest(format!(
                    "{} did not finish `{command}`: {e}\n{}",
                    self.name,
                    self.console()
                ))
            })?;
        let status = lines
            .last()
            .and_then(|last| last.strip_prefix(DONE))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        let output = lines[..lines.len().saturating_sub(1)].join("\n");
        for line in output.lines() {
            eprintln!("[{}] {line}", self.name);
        }
        Ok(GuestOutput { status, output })
    }

    /// Everything the guest and qemu printed so far.
    pub fn console(&self) -> String {
        self.console
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    /// Powers the guest off and waits for qemu to exit.
    pub fn power_off(mut self) {
        let _ = writeln!(self.stdin, "poweroff -f");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Dropping the guard kills qemu.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_holds_busybox_the_modules_and_init() {
        let modules: Vec<(&str, Vec<u8>)> = VIRTIO_NET_MODULES
            .iter()
            .map(|m| (*m, vec![0x7f]))
            .collect();
        let archive = initramfs(b"\x7fELF static", &modules).expect("archive");
        let text = String::from_utf8_lossy(&archive);
        for name in VIRTIO_NET_MODULES {
            assert!(text.contains(&format!("lib/modules/{name}.ko")), "{name}");
        }
        assert!(text.contains("bin/busybox\0"));
        assert!(text.contains("etc/udhcpc\0") && text.contains("etc/udhcpc/default.script\0"));
        let init = init_script();
        let insmods: Vec<&str> = init.lines().filter(|l| l.starts_with("insmod")).collect();
        assert_eq!(insmods.len(), VIRTIO_NET_MODULES.len());
        assert!(insmods[0].ends_with("virtio_ring.ko"));
        assert!(insmods[7].ends_with("virtio_net.ko"));
    }
}
