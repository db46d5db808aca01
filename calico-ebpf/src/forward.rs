//! Forwarding to another host: the kernel's FIB decides where a packet for a remote workload
//! leaves (`bpf_fib_lookup`, against the routes BIRD or an administrator installed), and the
//! program sends it there itself instead of handing it to the kernel's forwarding path.
//!
//! What differs between the hooks is here too, as [`Hook`]: what the lookup checks, and how a
//! packet leaves. TC sends it with `bpf_redirect_neigh`, which fills in the MACs through the
//! kernel's neighbour table (and keeps its entries fresh); XDP rewrites the MACs from the
//! lookup's answer and calls `bpf_redirect`.
//!
//! The lookup's parameters live in a per-CPU scratch map ([`FIB`]), not on the small stack.

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup, bpf_redir_neigh},
    btf_maps::PerCpuArray,
    cty::c_void,
    helpers::generated::{bpf_fib_lookup as fib_lookup_helper, bpf_redirect_neigh},
    macros::btf_map,
    programs::{TcContext, XdpContext},
};

use crate::packet::{Flow, IPPROTO_ICMP, IPPROTO_ICMPV6};

/// `AF_INET` and `AF_INET6`, as the FIB lookup names the families.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `BPF_FIB_LKUP_RET_SUCCESS`: the lookup found a route, an egress interface and the next
/// hop's MAC. Every other answer (no neighbour yet, fragmentation needed, not forwarded,
/// forwarding disabled on the ingress interface, ...) leaves the packet to the kernel.
const FIB_SUCCESS: i64 = 0;

/// `struct bpf_fib_lookup`, with its unions spelled as the fields this crate uses. 64 bytes,
/// byte for byte the kernel's layout.
#[repr(C)]
pub struct FibLookup {
    /// `AF_INET` or `AF_INET6` in; the next hop's family out.
    pub family: u8,
    pub l4_protocol: u8,
    /// Ports in network byte order.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// In: the IP packet's length, which the XDP lookup checks against the egress MTU (0 in
    /// TC, where the kernel checks the skb itself, segments included). Out: the MTU.
    pub tot_len: u16,
    /// In: the ingress interface. Out: the egress interface.
    pub ifindex: u32,
    /// IPv4 TOS or IPv6 flow information (0: any).
    pub flowinfo: u32,
    /// Source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// In: the destination. Out: the next hop (the gateway, or the destination on-link).
    pub dst: [u8; 16],
    /// VLAN protocol and TCI out (unused).
    pub vlan: u32,
    /// Out: the egress interface's MAC and the next hop's.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<FibLookup>() == core::mem::size_of::<bpf_fib_lookup>());
const _: () = assert!(core::mem::size_of::<FibLookup>() == 64);

/// Per-CPU scratch of the FIB lookup: its parameters and answer, and the next hop handed to
/// `bpf_redirect_neigh`.
#[repr(C)]
pub struct FibScratch {
    pub lookup: FibLookup,
    pub next_hop: bpf_redir_neigh,
}

#[btf_map(name = "cali_fib")]
pub static FIB: PerCpuArray<FibScratch, 1> = PerCpuArray::new();

/// The hook a pipeline runs on.
pub trait Hook {
    /// XDP: delivery into a veth needs the destination MAC (the receiving veth checks it), and
    /// a packet forwarded to another host gets its MACs from the FIB lookup. TC: a local
    /// workload is reached with `bpf_redirect_peer` whatever its MAC, and `bpf_redirect_neigh`
    /// fills in the MACs of a forwarded packet.
    const XDP: bool;

    /// The hook's context (the `__sk_buff` or `xdp_md`), as the helpers take it. The FIB
    /// lookup helper is the same for both; the kernel picks its variant by program type.
    fn ctx(&self) -> *mut c_void;

    /// The packet's bytes `[data, data_end)` as they are now (TC helpers that rewrite the
    /// packet invalidate earlier pointers).
    fn packet(&self) -> (usize, usize);
}

/// The TC hook.
pub struct Tc<'a>(pub &'a TcContext);

/// The XDP hook.
pub struct Xdp<'a>(pub &'a XdpContext);

impl Hook for Tc<'_> {
    const XDP: bool = false;

    #[inline(always)]
    fn ctx(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn packet(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
}

impl Hook for Xdp<'_> {
    const XDP: bool = true;

    #[inline(always)]
    fn ctx(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn packet(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
}

/// Where the FIB sends a packet of `flow` that arrived on `ifindex` (`ctx` is the hook's
/// context): the egress interface, with the next hop and MACs in the scratch map; `None` when
/// the kernel should handle the packet (no route, no neighbour yet, fragmentation needed,
/// forwarding disabled on `ifindex`, ...). `ip_len` is the IP packet's length, checked against
/// the egress MTU in XDP.
#[inline(always)]
pub fn lookup<H: Hook>(ctx: *mut c_void, flow: &Flow, ifindex: u32, ip_len: u16) -> Option<u32> {
    let scratch = unsafe { &mut *FIB.get_ptr_mut(0)? };
    let params = &mut scratch.lookup;
    params.family = if flow.family == 4 { AF_INET } else { AF_INET6 };
    params.l4_protocol = flow.proto;
    // Ports matter to policy routing rules and multipath hashing; ICMP has none (the flow's
    // "ports" there are its type and code).
    let ports = flow.proto != IPPROTO_ICMP && flow.proto != IPPROTO_ICMPV6;
    params.sport = if ports { flow.sport } else { 0 }.to_be_bytes();
    params.dport = if ports { flow.dport } else { 0 }.to_be_bytes();
    params.tot_len = if H::XDP { ip_len } else { 0 };
    params.ifindex = ifindex;
    params.flowinfo = 0;
    params.src = flow.src;
    params.dst = flow.dst;
    params.vlan = 0;
    let rc = unsafe {
        fib_lookup_helper(
            ctx,
            (params as *mut FibLookup).cast::<bpf_fib_lookup>(),
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    if rc != FIB_SUCCESS {
        return None;
    }
    Some(params.ifindex)
}

/// The MACs of the last successful [`lookup`]: (destination, source).
#[inline(always)]
pub fn macs() -> Option<([u8; 6], [u8; 6])> {
    let scratch = unsafe { &*FIB.get_ptr(0)? };
    Some((scratch.lookup.dmac, scratch.lookup.smac))
}

/// Sends the packet out of `ifindex` to the next hop of the last successful [`lookup`], with
/// the MACs the kernel's neighbour table has for it (TC only). Returns the helper's answer:
/// `TC_ACT_REDIRECT`, or `TC_ACT_SHOT` on invalid arguments.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i64 {
    let Some(scratch) = FIB.get_ptr_mut(0) else {
        return aya_ebpf::bindings::TC_ACT_SHOT as i64;
    };
    let scratch = unsafe { &mut *scratch };
    let next_hop = &mut scratch.next_hop;
    next_hop.nh_family = u32::from(scratch.lookup.family);
    // The union holds an IPv4 next hop in its first four bytes, an IPv6 one in all sixteen.
    let addr = core::ptr::addr_of_mut!(next_hop.__bindgen_anon_1).cast::<[u8; 16]>();
    unsafe { *addr = scratch.lookup.dst };
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    }
}
