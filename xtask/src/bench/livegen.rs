//! The live-frames generator: BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel
//! 5.18+) runs a tiny XDP program on gen's eth0 that writes the 64-byte UDP frame and returns
//! `XDP_TX`. Each frame leaves gen's eth0 as an `xdp_frame` through the veth's `ndo_xdp_xmit`,
//! never a socket buffer: no socket, no send-buffer accounting, no zero-copy ring completion.
//! The host side of gen's veth receives it through NAPI, like a frame from a NIC or a VM's tap.
//!
//! The kernel recycles the frames' pages with whatever the receivers wrote into them (Linux
//! forwarding and our programs rewrite the MACs and the TTL in place), so the program writes
//! the whole frame on every run rather than relying on the initial data.
//!
//! The program is a dozen instructions, assembled here (it needs no map and no helper), and
//! loaded with the raw `bpf(2)` system call.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testbed::signals;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;
/// Frames per BPF_PROG_TEST_RUN call; the kernel works through them in batches of 64 and
/// checks for signals between batches.
const FRAMES_PER_CALL: u32 = 1 << 18;

/// One eBPF instruction, as the kernel reads it.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `r0 = XDP_TX` after storing `frame` at the start of the packet; `XDP_DROP` when the
/// packet is shorter than the frame (never, with the data we pass in).
fn program(frame: &[u8]) -> Result<Vec<Insn>> {
    if !frame.len().is_multiple_of(4) || frame.len() > 256 {
        bail!("the generated frame must be a multiple of 4 bytes, at most 256");
    }
    let mut body = Vec::new();
    let mut offset = 0usize;
    while offset < frame.len() {
        let off = i16::try_from(offset).expect("at most 256");
        if frame.len() - offset >= 8 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&frame[offset..offset + 8]);
            let value = u64::from_le_bytes(word);
            // r5 = imm64 (two instructions); *(u64 *)(r2 + off) = r5
            body.push(insn(0x18, 5, 0, 0, value as u32 as i32));
            body.push(insn(0, 0, 0, 0, (value >> 32) as u32 as i32));
            body.push(insn(0x7b, 2, 5, off, 0));
            offset += 8;
        } else {
            let mut word = [0u8; 4];
            word.copy_from_slice(&frame[offset..offset + 4]);
            // *(u32 *)(r2 + off) = imm32
            body.push(insn(0x62, 2, 0, off, i32::from_le_bytes(word)));
            offset += 4;
        }
    }
    let len = i32::try_from(frame.len()).expect("at most 256");
    let mut prog = vec![
        insn(0x61, 2, 1, 0, 0),   // r2 = ctx->data
        insn(0x61, 3, 1, 4, 0),   // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),   // r4 = r2
        insn(0x07, 4, 0, 0, len), // r4 += len
    ];
    // if r4 > r3 goto drop (past the body, `r0 = XDP_TX` and `exit`)
    let skip = i16::try_from(body.len() + 2).context("generated program too long")?;
    prog.push(insn(0x2d, 4, 3, skip, 0));
    prog.extend(body);
    prog.push(insn(0xb7, 0, 0, 0, XDP_TX)); // r0 = XDP_TX
    prog.push(insn(0x95, 0, 0, 0, 0)); // exit
    prog.push(insn(0xb7, 0, 0, 0, XDP_DROP)); // drop: r0 = XDP_DROP
    prog.push(insn(0x95, 0, 0, 0, 0)); // exit
    Ok(prog)
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the program name.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`, the context passed in.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attribute struct laid out as the kernel's union bpf_attr prefix
    // and its exact size; the pointers inside it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn load(frame: &[u8]) -> Result<OwnedFd> {
    let insns = program(frame)?;
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"bench_livegen");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: u32::try_from(insns.len()).context("program too long")?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).expect("64 KiB"),
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new file descriptor the kernel just gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(err) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "cannot load the generator program: {err}; verifier log:\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// Sends `frame` out of interface `ifindex` (in the current network namespace) as fast as one
/// CPU can, for `duration` or until interrupted. Returns the frames the program ran on and the
/// time it took.
pub fn generate(frame: &[u8], ifindex: u32, duration: Duration) -> Result<(u64, Duration)> {
    let prog = load(frame)?;
    let mut data = frame.to_vec();
    let mut ctx = XdpMd {
        data_end: u32::try_from(frame.len()).expect("at most 256"),
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let started = Instant::now();
    let mut frames = 0u64;
    while started.elapsed() < duration && !signals::interrupted() {
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(prog.as_raw_fd()).expect("a valid fd"),
            data_size_in: u32::try_from(data.len()).expect("at most 256"),
            data_in: data.as_mut_ptr() as u64,
            repeat: FRAMES_PER_CALL,
            ctx_size_in: size_of::<XdpMd>() as u32,
            ctx_in: std::ptr::from_mut(&mut ctx) as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            ..TestRunAttr::default()
        };
        match bpf(BPF_PROG_TEST_RUN, &mut attr) {
            Ok(_) => frames += u64::from(FRAMES_PER_CALL),
            // A signal between batches: the frames run so far are not reported.
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => break,
            Err(err) => {
                return Err(err).context("BPF_PROG_TEST_RUN with live frames failed");
            }
        }
    }
    Ok((frames, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_checks_the_length_then_writes_every_byte() {
        let frame: Vec<u8> = (0..60).collect();
        let prog = program(&frame).unwrap();
        // 5 in the prologue, 7 × 3 for the 8-byte words, 1 for the last 4 bytes, 4 at the end.
        assert_eq!(prog.len(), 5 + 7 * 3 + 1 + 4);
        let jump = prog[4];
        assert_eq!(jump.code, 0x2d);
        // The jump lands on `r0 = XDP_DROP`.
        assert_eq!(prog[5 + jump.off as usize].imm, XDP_DROP);
        // The first word, little-endian, split over the two halves of the 64-bit load.
        assert_eq!(prog[5].imm as u32, u32::from_le_bytes([0, 1, 2, 3]));
        assert_eq!(prog[6].imm as u32, u32::from_le_bytes([4, 5, 6, 7]));
        assert_eq!(prog[7].off, 0);
        let last = prog[5 + 7 * 3];
        assert_eq!((last.code, last.off), (0x62, 56));
        assert_eq!(last.imm as u32, u32::from_le_bytes([56, 57, 58, 59]));
        assert!(program(&[0; 62]).is_err());
    }
}
