//! Map layouts and constants shared by the kernel programs (`calico-ebpf`) and the agent
//! (`calico-loader`), one module per mechanism: [`routes`], [`endpoints`], [`policy`],
//! [`conntrack`], [`counters`], [`events`], [`floating_ips`], [`host_endpoints`] and
//! [`trace`]. [`maps`] defines every map once (name,
//! kind, key and value types, size, flags, layout version); the kernel's map declarations, the
//! agent's typed handles and pin checks, and the table in `docs/maps.md` all derive from it.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and userspace agree on the
//! layout byte for byte, and so that `bpftool map dump` (which reads the BTF the kernel object
//! carries) prints named fields. The types are re-exported at the crate root.

#![no_std]

pub mod conntrack;
pub mod counters;
pub mod endpoints;
pub mod events;
pub mod floating_ips;
pub mod host_endpoints;
pub mod maps;
pub mod policy;
pub mod routes;
pub mod trace;

pub use conntrack::*;
pub use counters::*;
pub use endpoints::*;
pub use events::*;
pub use floating_ips::*;
pub use host_endpoints::*;
pub use maps::map_names;
pub use policy::*;
pub use routes::*;
pub use trace::*;

/// `unsafe impl aya::Pod` for the listed types, in the agent's build (`user` feature).
///
/// SAFETY (for every use): the types are `#[repr(C)]`, made only of integers and byte arrays,
/// with every padding byte spelled out as a field, so any bit pattern is valid.
#[macro_export]
#[doc(hidden)]
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: see the macro's documentation.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress on the host side of a workload interface: packets *from* the workload.
    pub const TC_FROM_WORKLOAD: &str = "calico_tc_from_wl";
    /// TC egress on the host side of a workload interface: packets *to* the workload.
    pub const TC_TO_WORKLOAD: &str = "calico_tc_to_wl";
    /// XDP on the host side of a workload interface: packets *from* the workload.
    pub const XDP_FROM_WORKLOAD: &str = "calico_xdp_from_wl";
    /// TC ingress on a data interface (one that matches `--data-interfaces`): packets from
    /// other hosts, delivered straight into a local workload; everything else passes untouched.
    pub const TC_FROM_DATA: &str = "calico_tc_data";
    /// XDP on a data interface: as [`TC_FROM_DATA`], in xdp mode.
    pub const XDP_FROM_DATA: &str = "calico_xdp_data";
    /// TC ingress on a data interface that a HostEndpoint covers (instead of
    /// [`TC_FROM_DATA`]): host endpoint policy for traffic to the host and forwarded traffic,
    /// then the same delivery to local workloads.
    pub const TC_HOST_ENDPOINT_INGRESS: &str = "calico_tc_hep_in";
    /// TC egress on a data interface that a HostEndpoint covers: host endpoint policy for
    /// traffic the host sends and forwarded traffic leaving through it.
    pub const TC_HOST_ENDPOINT_EGRESS: &str = "calico_tc_hep_out";
    /// XDP on a data interface that a HostEndpoint covers, in either attach mode: the failsafe
    /// ports, then the endpoint's untracked (`doNotTrack`) ingress policy, before anything else.
    pub const XDP_HOST_ENDPOINT: &str = "calico_xdp_hep";
    /// Never attached: run by `calico-loader trace` through BPF_PROG_TEST_RUN. It evaluates
    /// conntrack (read only) and policy for one endpoint and direction, with the same code as
    /// the attached programs, and writes what decided into the trace map.
    pub const TRACE: &str = "calico_trace";
}

/// The bytes of a NUL-padded field up to the first NUL.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Copies `text` into a NUL-padded fixed-size field, truncating it if it is too long.
pub fn fill_nul_padded<const N: usize>(text: &[u8]) -> [u8; N] {
    let mut field = [0u8; N];
    let len = text.len().min(N);
    field[..len].copy_from_slice(&text[..len]);
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<RouteValue>(), 4 + 4 + 6 + 6 + 16 + 4);
        assert_eq!(size_of::<NodeInfo>(), NODE_NAME_LEN);
        assert_eq!(size_of::<SourceKeyV4>(), 8);
        assert_eq!(size_of::<SourceKeyV6>(), 20);
        assert_eq!(
            size_of::<EndpointInfo>(),
            4 * 4 + 6 + 6 + IFNAME_LEN + ENDPOINT_NAME_LEN
        );
        assert_eq!(size_of::<PolicyInfo>(), 32);
        assert_eq!(size_of::<PolicyAddrKeyV4>(), 16);
        assert_eq!(size_of::<PolicyAddrKeyV6>(), 40);
        assert_eq!(size_of::<PolicyProtoKey>(), 12);
        assert_eq!(size_of::<PolicyPortKey>(), 8);
        assert_eq!(size_of::<AddressClass>(), 8);
        assert_eq!(size_of::<PortClass>(), 8);
        assert_eq!(size_of::<PolicyVerdict>(), 12);
        assert_eq!(size_of::<RuleInfo>(), 8 + RULE_TIER_LEN + RULE_POLICY_LEN);
        assert_eq!(size_of::<ConntrackKey>(), 40);
        assert_eq!(size_of::<ConntrackValue>(), 4 * 8 + 4 + 5 * 4);
        assert_eq!(size_of::<ConntrackCounters>(), 3 * 8);
        assert_eq!(size_of::<LogEvent>(), 16 + 32 + 4);
        assert_eq!(size_of::<DropEvent>(), 64);
        assert_eq!(size_of::<DropEventControl>(), 3 * 8 + 2 * 4);
        assert_eq!(size_of::<DropEventStats>(), 6 * 8 + 2 * 4);
        assert_eq!(size_of::<TraceResult>(), 4 + 5 * 4 + 4 + 4 + 8);
        assert_eq!(
            size_of::<HostEndpointInfo>(),
            7 * 4 + IFNAME_LEN + ENDPOINT_NAME_LEN
        );
        assert_eq!(
            size_of::<HostEndpointCounters>(),
            10 * 8 + DROP_REASONS * 8 + 2 * 8
        );
        assert_eq!(size_of::<FailsafeKey>(), 8 + 16);
        assert_eq!(
            size_of::<EndpointCounters>(),
            9 * 8 + DROP_REASONS * 8 + 4 * 8
        );
    }

    #[test]
    fn masks_keep_the_prefix() {
        assert_eq!(mask_port(0xabcd, 0), 0);
        assert_eq!(mask_port(0xabcd, 8), 0xab00);
        assert_eq!(mask_port(0xabcd, 16), 0xabcd);
        assert_eq!(mask_v4([198, 18, 7, 9], 0), [0; 4]);
        assert_eq!(mask_v4([198, 18, 7, 9], 20), [198, 18, 0, 0]);
        assert_eq!(mask_v4([198, 18, 7, 9], 32), [198, 18, 7, 9]);
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        assert_eq!(mask_v6(&a, 128), a);
        assert_eq!(mask_v6(&a, 0), [0; 16]);
        assert_eq!(
            mask_v6(&a, 32),
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            mask_v6(&a, 68),
            [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(mask_v6(&a, 72)[8], 5);
    }

    #[test]
    fn route_kind_round_trips() {
        for kind in [
            RouteKind::LocalWorkload,
            RouteKind::RemoteWorkload,
            RouteKind::Host,
            RouteKind::Blackhole,
        ] {
            assert_eq!(RouteKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(RouteKind::from_u32(0), None);
    }

    #[test]
    fn drop_reasons_fit_the_counter_array() {
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!((*reason as usize) < DROP_REASONS);
        }
    }

    #[test]
    fn endpoint_name_stops_at_nul() {
        let info = EndpointInfo {
            name: fill_nul_padded(b"ns/name"),
            ifname: fill_nul_padded(b"cali0123456789abcdef"),
            ..EndpointInfo::default()
        };
        assert_eq!(info.name_bytes(), b"ns/name");
        assert_eq!(info.ifname_bytes(), b"cali0123456789ab");
    }
}
