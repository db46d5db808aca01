//! The agent's DHCP server for VMs on taps: each tap endpoint with an IPv4 address gets that
//! address, a router the host answers ARP for, and the routes to reach it, whatever the
//! endpoint's policy says (a VM must be able to boot).
//!
//! The kernel programs pass a VM's DHCP requests to the kernel (`calico-ebpf/src/dhcp.rs`);
//! a packet socket (`AF_PACKET`, IPv4, filtered to UDP port 67) reads them there, and the
//! replies go back out of the tap through the same socket, marked
//! ([`calico_ebpf_common::MARK_AGENT_REPLY`]) so that the tap's egress program lets them
//! through. No address is assigned to the tap and no other interface is needed.
//!
//! The lease has one of two shapes:
//! - the endpoint has `ipv4Gateway` and an IP pool holds both the address and the gateway: the
//!   pool's mask, and the gateway as router and server identifier (what calico-dhcp-agent's
//!   dnsmasq gives from the Neutron subnet);
//! - otherwise a /32, with the gateway (`ipv4Gateway`, else `169.254.1.1`) as router, and the
//!   classless static routes (option 121) `<gateway>/32` on the link and the default route
//!   through the gateway, so that a client with a /32 can reach its router.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use ipnet::Ipv4Net;

/// Lease time given to every client, in seconds.
pub const LEASE_SECONDS: u32 = 86_400;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed part of a BOOTP message, before the magic cookie.
const FIXED_LEN: usize = 236;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_CLASSLESS_ROUTES: u8 = 121;
const OPT_END: u8 = 255;

/// A tap endpoint the server answers, as the dataplane found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The tap's ifindex.
    pub ifindex: u32,
    /// `namespace/name` of the endpoint.
    pub endpoint: String,
    /// The VM's MAC (the endpoint's `mac`); requests from other MACs are ignored. `None`:
    /// any.
    pub mac: Option<[u8; 6]>,
    /// The endpoint's first IPv4 address.
    pub address: Ipv4Addr,
    /// `ipv4Gateway`.
    pub gateway: Option<Ipv4Addr>,
}

/// What a client is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub endpoint: String,
    pub mac: Option<[u8; 6]>,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Ipv4Addr,
    /// The server identifier: the router, an address the programs answer ARP for.
    pub server: Ipv4Addr,
    /// Option 121 routes (/32 leases only): destination, router (0.0.0.0: on the link).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl Lease {
    /// The lease for `client`, with the mask of the first of `pools` that holds both its
    /// address and its gateway.
    pub fn for_client(client: &Client, pools: &[Ipv4Net]) -> Self {
        let router = client
            .gateway
            .unwrap_or(Ipv4Addr::from(calico_ebpf_common::GATEWAY_V4));
        let subnet = client.gateway.and_then(|gateway| {
            pools
                .iter()
                .find(|pool| pool.contains(&client.address) && pool.contains(&gateway))
        });
        let (prefix_len, routes) = match subnet {
            Some(pool) => (pool.prefix_len(), Vec::new()),
            None => (
                32,
                vec![
                    (Ipv4Net::from(router), Ipv4Addr::UNSPECIFIED),
                    (Ipv4Net::default(), router),
                ],
            ),
        };
        Self {
            endpoint: client.endpoint.clone(),
            mac: client.mac,
            address: client.address,
            prefix_len,
            router,
            server: router,
            routes,
        }
    }
}

/// A client's request, as far as the server reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub ciaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub message_type: u8,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

/// Reads a BOOTP request with DHCP options from a UDP payload.
pub fn parse_request(payload: &[u8]) -> Option<Request> {
    if payload.len() < FIXED_LEN + 4
        || payload[0] != BOOTREQUEST
        || payload[1] != 1
        || payload[2] != 6
        || payload[FIXED_LEN..FIXED_LEN + 4] != MAGIC_COOKIE
    {
        return None;
    }
    let addr = |at: usize| {
        Ipv4Addr::new(
            payload[at],
            payload[at + 1],
            payload[at + 2],
            payload[at + 3],
        )
    };
    let mut request = Request {
        xid: payload[4..8].try_into().ok()?,
        flags: payload[10..12].try_into().ok()?,
        ciaddr: addr(12),
        chaddr: payload[28..34].try_into().ok()?,
        message_type: 0,
        requested: None,
        server_id: None,
    };
    let mut options = &payload[FIXED_LEN + 4..];
    while let [code, rest @ ..] = options {
        match *code {
            OPT_PAD => options = rest,
            OPT_END => break,
            _ => {
                let [len, rest @ ..] = rest else { break };
                let value = rest.get(..usize::from(*len))?;
                match (*code, value) {
                    (OPT_MESSAGE_TYPE, [t]) => request.message_type = *t,
                    (OPT_REQUESTED_IP, [a, b, c, d]) => {
                        request.requested = Some(Ipv4Addr::new(*a, *b, *c, *d));
                    }
                    (OPT_SERVER_ID, [a, b, c, d]) => {
                        request.server_id = Some(Ipv4Addr::new(*a, *b, *c, *d));
                    }
                    _ => {}
                }
                options = &rest[usize::from(*len)..];
            }
        }
    }
    (request.message_type != 0).then_some(request)
}

/// The reply to `request` under `lease` (message type and DHCP payload), or `None` when the
/// request is not ours to answer.
pub fn answer(request: &Request, lease: &Lease) -> Option<(u8, Vec<u8>)> {
    if lease.mac.is_some_and(|mac| mac != request.chaddr) {
        return None;
    }
    let reply_type = match request.message_type {
        DISCOVER => OFFER,
        REQUEST => {
            if request.server_id.is_some_and(|id| id != lease.server) {
                // The client chose another server.
                return None;
            }
            let asked = request.requested.unwrap_or(request.ciaddr);
            if asked == lease.address { ACK } else { NAK }
        }
        _ => return None,
    };
    Some((reply_type, reply(request, lease, reply_type)))
}

fn reply(request: &Request, lease: &Lease, reply_type: u8) -> Vec<u8> {
    let mut out = vec![0u8; FIXED_LEN];
    out[0] = BOOTREPLY;
    out[1] = 1;
    out[2] = 6;
    out[4..8].copy_from_slice(&request.xid);
    out[10..12].copy_from_slice(&request.flags);
    if reply_type != NAK {
        out[12..16].copy_from_slice(&request.ciaddr.octets());
        out[16..20].copy_from_slice(&lease.address.octets());
    }
    out[28..34].copy_from_slice(&request.chaddr);
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, reply_type]);
    out.extend_from_slice(&[OPT_SERVER_ID, 4]);
    out.extend_from_slice(&lease.server.octets());
    if reply_type != NAK {
        let mask = Ipv4Net::new(lease.address, lease.prefix_len)
            .map(|n| n.netmask())
            .unwrap_or(Ipv4Addr::BROADCAST);
        for (code, seconds) in [
            (OPT_LEASE_TIME, LEASE_SECONDS),
            (OPT_RENEWAL_TIME, LEASE_SECONDS / 2),
            (OPT_REBINDING_TIME, LEASE_SECONDS / 8 * 7),
        ] {
            out.extend_from_slice(&[code, 4]);
            out.extend_from_slice(&seconds.to_be_bytes());
        }
        out.extend_from_slice(&[OPT_SUBNET_MASK, 4]);
        out.extend_from_slice(&mask.octets());
        out.extend_from_slice(&[OPT_ROUTER, 4]);
        out.extend_from_slice(&lease.router.octets());
        if !lease.routes.is_empty() {
            let mut routes = Vec::new();
            for (net, router) in &lease.routes {
                // RFC 3442: prefix length, the significant octets of the destination, router.
                let significant = usize::from(net.prefix_len()).div_ceil(8);
                routes.push(net.prefix_len());
                routes.extend_from_slice(&net.network().octets()[..significant]);
                routes.extend_from_slice(&router.octets());
            }
            out.push(OPT_CLASSLESS_ROUTES);
            out.push(routes.len() as u8);
            out.extend_from_slice(&routes);
        }
    }
    out.push(OPT_END);
    out
}

/// An IPv4/UDP packet from `src`:67 to `dst`:68 carrying `payload` (the UDP checksum is
/// computed).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp = crate::packets::udp_v4(src, dst, 67, 68, payload);
    crate::packets::ipv4(src, dst, 64, 17, &[], &udp)
}

/// The leases in force, keyed by tap ifindex; the agent replaces them after each apply.
pub type Leases = Arc<Mutex<BTreeMap<u32, Lease>>>;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("opening the DHCP packet socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("setting {what} on the DHCP packet socket: {source}")]
    SocketOption {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The running server: a thread reading the packet socket. Dropping it stops the thread.
pub struct Server {
    pub leases: Leases,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `ETH_P_IP`, in network byte order as packet sockets take it.
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

/// Classic BPF on the packet socket (the data starts at the IPv4 header): UDP, not a later
/// fragment, to port 67.
const FILTER: [libc::sock_filter; 8] = [
    libc::sock_filter {
        code: 0x30,
        jt: 0,
        jf: 0,
        k: 9,
    }, // ldb [9] (protocol)
    libc::sock_filter {
        code: 0x15,
        jt: 0,
        jf: 5,
        k: 17,
    }, // jeq UDP
    libc::sock_filter {
        code: 0x28,
        jt: 0,
        jf: 0,
        k: 6,
    }, // ldh [6] (fragment offset)
    libc::sock_filter {
        code: 0x45,
        jt: 3,
        jf: 0,
        k: 0x1fff,
    }, // jset -> drop
    libc::sock_filter {
        code: 0xb1,
        jt: 0,
        jf: 0,
        k: 0,
    }, // ldx 4*([0]&0xf)
    libc::sock_filter {
        code: 0x48,
        jt: 0,
        jf: 0,
        k: 2,
    }, // ldh [x+2] (destination port)
    libc::sock_filter {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: 67,
    }, // jeq 67
    libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0xffff,
    }, // accept
];
const DROP: libc::sock_filter = libc::sock_filter {
    code: 0x06,
    jt: 0,
    jf: 0,
    k: 0,
};

fn set_option<T>(
    fd: libc::c_int,
    level: i32,
    name: i32,
    value: &T,
    what: &'static str,
) -> Result<(), DhcpError> {
    // SAFETY: `value` is a live `T` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(DhcpError::SocketOption {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Server {
    /// Opens the packet socket in the current network namespace and starts answering.
    pub fn start() -> Result<Self, DhcpError> {
        // SAFETY: plain socket call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP_BE),
            )
        };
        if fd < 0 {
            return Err(DhcpError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut filter: Vec<libc::sock_filter> = FILTER.to_vec();
        filter.push(DROP);
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        set_option(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &program,
            "the filter",
        )?;
        let mark = calico_ebpf_common::MARK_AGENT_REPLY;
        set_option(fd, libc::SOL_SOCKET, libc::SO_MARK, &mark, "SO_MARK")?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        set_option(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout,
            "the receive timeout",
        )?;
        let leases: Leases = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (leases, stop) = (leases.clone(), stop.clone());
            thread::Builder::new()
                .name("dhcp".into())
                .spawn(move || serve(socket, &leases, &stop))
                .map_err(DhcpError::Socket)?
        };
        Ok(Self {
            leases,
            stop,
            thread: Some(thread),
        })
    }

    /// Replaces the leases in force.
    pub fn set_leases(&self, leases: BTreeMap<u32, Lease>) {
        if let Ok(mut current) = self.leases.lock() {
            *current = leases;
        }
    }
}

fn serve(socket: std::os::fd::OwnedFd, leases: &Leases, stop: &AtomicBool) {
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are live and sized as passed.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let packet = &buf[..n as usize];
        let ifindex = from.sll_ifindex as u32;
        let Some(lease) = leases.lock().ok().and_then(|l| l.get(&ifindex).cloned()) else {
            continue;
        };
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let Some(payload) = packet.get(ihl + 8..) else {
            continue;
        };
        let Some(request) = parse_request(payload) else {
            tracing::debug!(ifindex, "not a DHCP request");
            continue;
        };
        let Some((reply_type, dhcp)) = answer(&request, &lease) else {
            tracing::debug!(endpoint = %lease.endpoint, ?request, "DHCP request not for us");
            continue;
        };
        // RFC 2131 4.1: to the client's address when it has one, else broadcast when it asks
        // for that or is refused, else to the offered address at its MAC.
        let broadcast = request.flags[0] & 0x80 != 0;
        let (dst, dst_mac) = if request.ciaddr != Ipv4Addr::UNSPECIFIED && reply_type != NAK {
            (request.ciaddr, request.chaddr)
        } else if broadcast || reply_type == NAK {
            (Ipv4Addr::BROADCAST, [0xff; 6])
        } else {
            (lease.address, request.chaddr)
        };
        let packet = udp_packet(lease.server, dst, &dhcp);
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_IP_BE;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst_mac);
        // SAFETY: `packet` and `to` are live and sized as passed.
        let sent = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            tracing::warn!(endpoint = %lease.endpoint, "sending a DHCP reply: {}", std::io::Error::last_os_error());
        } else {
            tracing::info!(
                endpoint = %lease.endpoint,
                address = %lease.address,
                prefix_len = lease.prefix_len,
                router = %lease.router,
                reply = reply_type,
                "DHCP reply sent"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(gateway: Option<Ipv4Addr>) -> Client {
        Client {
            ifindex: 3,
            endpoint: "openstack/vm".into(),
            mac: Some([0xfa, 0x16, 0x3e, 0, 0, 1]),
            address: "198.18.4.5".parse().unwrap(),
            gateway,
        }
    }

    fn discover(mac: [u8; 6]) -> Vec<u8> {
        let mut out = vec![0u8; FIXED_LEN];
        out[0] = BOOTREQUEST;
        out[1] = 1;
        out[2] = 6;
        out[4..8].copy_from_slice(&[1, 2, 3, 4]);
        out[28..34].copy_from_slice(&mac);
        out.extend_from_slice(&MAGIC_COOKIE);
        out.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, DISCOVER, OPT_END]);
        out
    }

    #[test]
    fn a_gateway_inside_a_pool_gives_the_pools_mask() {
        let pools = ["198.18.4.0/24".parse().unwrap()];
        let lease = Lease::for_client(&client(Some("198.18.4.1".parse().unwrap())), &pools);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Ipv4Addr::new(198, 18, 4, 1));
        assert!(lease.routes.is_empty());
    }

    #[test]
    fn without_a_gateway_the_lease_is_a_host_route_through_169_254_1_1() {
        let lease = Lease::for_client(&client(None), &[]);
        assert_eq!(lease.prefix_len, 32);
        assert_eq!(lease.router, Ipv4Addr::new(169, 254, 1, 1));
        let request = parse_request(&discover([0xfa, 0x16, 0x3e, 0, 0, 1])).expect("parses");
        let (kind, reply) = answer(&request, &lease).expect("answered");
        assert_eq!(kind, OFFER);
        assert_eq!(&reply[16..20], &[198, 18, 4, 5]);
        // 121: 169.254.1.1/32 on the link, then 0/0 via 169.254.1.1.
        let expected = [
            OPT_CLASSLESS_ROUTES,
            14,
            32,
            169,
            254,
            1,
            1,
            0,
            0,
            0,
            0,
            0,
            169,
            254,
            1,
            1,
        ];
        assert!(reply.windows(expected.len()).any(|w| w == expected));
    }

    #[test]
    fn another_mac_is_not_answered() {
        let lease = Lease::for_client(&client(None), &[]);
        let request = parse_request(&discover([2, 0, 0, 0, 0, 9])).expect("parses");
        assert_eq!(answer(&request, &lease), None);
    }
}
