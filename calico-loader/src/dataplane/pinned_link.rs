//! Which interface a pinned link is attached to, as the kernel says: a new agent replaces the
//! program inside a link an earlier agent pinned only when that link still holds the interface
//! it is meant for (not one whose interface went away, nor one renamed since).
//!
//! aya gives a link's id and program but not its target, so the link's `bpf_link_info` is read
//! here with the `bpf(2)` commands themselves.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `bpf(2)` commands and link types from `linux/bpf.h`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// `union bpf_attr` for `BPF_OBJ_GET`. The kernel refuses non-zero bytes after the fields it
/// knows, so the tail is an explicit zero rather than padding.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _zero: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info`: type, id, program id, then the union, whose XDP and TCX
/// members start with the interface index.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    attach_type: u32,
    _rest: [u64; 6],
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid bpf_attr prefix of its own size for `command`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The interface the XDP or TCX link pinned at `path` is attached to: `None` when the link is
/// no longer attached (its interface went away) or is of another kind.
///
/// # Errors
///
/// The pin cannot be opened or read.
pub fn attached_ifindex(path: &Path) -> io::Result<Option<u32>> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjGetAttr {
        pathname: name.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(match info.link_type {
        BPF_LINK_TYPE_XDP | BPF_LINK_TYPE_TCX if info.ifindex != 0 => Some(info.ifindex),
        _ => None,
    })
}
