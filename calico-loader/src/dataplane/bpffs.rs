//! The BPF filesystem: mounting it when missing, and the layout of our pins under it.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the agent pins its maps and links by default.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/calico";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem and mounting one there failed: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("pin path {path} must be an absolute path under a BPF filesystem")]
    NotAbsolute { path: PathBuf },
}

/// The directories under one pin root.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The pin root, e.g. `/sys/fs/bpf/calico`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the map called `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where an upgrade pins the maps it creates to replace pinned ones, until the programs
    /// have moved to them ([`super::upgrade`]).
    pub fn upgrade_dir(&self) -> PathBuf {
        self.root.join("upgrade")
    }

    /// Where an upgrade pins the new map called `name` until it takes the old one's pin.
    pub fn staged_map(&self, name: &str) -> PathBuf {
        self.upgrade_dir().join(name)
    }

    /// The directory holding one pinned link per interface and hook.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The directory holding the pinned links of interface `ifname`. bpffs refuses names with
    /// a `.` in them, so a `.` in an interface name (a VLAN, say) is stored as `:`, which Linux
    /// never allows in interface names.
    pub fn interface_links_dir(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(ifname.replace('.', ":"))
    }

    /// The interface name that a directory under [`Self::links_dir`] stands for.
    pub fn interface_of_links_dir(dir_name: &str) -> String {
        dir_name.replace(':', ".")
    }

    /// Where the link of `hook` on interface `ifname` is pinned.
    pub fn link(&self, ifname: &str, hook: &str) -> PathBuf {
        self.interface_links_dir(ifname).join(hook)
    }

    /// Makes sure the pin root is on a BPF filesystem, mounting bpffs at `/sys/fs/bpf` (or the
    /// root's parent) when nothing is mounted there, and creates the directories.
    pub fn prepare(&self) -> Result<(), BpffsError> {
        if !self.root.is_absolute() {
            return Err(BpffsError::NotAbsolute {
                path: self.root.clone(),
            });
        }
        let existing = self
            .root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            // Mount the conventional bpffs when the pin path lives under it; any other place
            // gets its own mount right above the pin root.
            let default_mount = Path::new("/sys/fs/bpf");
            let mount_point = if self.root.starts_with(default_mount) {
                default_mount.to_path_buf()
            } else {
                self.root.parent().unwrap_or(default_mount).to_path_buf()
            };
            mount_bpffs(&mount_point).map_err(|source| BpffsError::Mount {
                path: mount_point.clone(),
                source,
            })?;
            tracing::info!(path = %mount_point.display(), "mounted bpffs");
        }
        for dir in [self.root.clone(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| BpffsError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Whether `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)?;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
