//! Events the programs send to the agent: packets that matched a Log rule, through a ring
//! buffer that the agent drains and logs.

/// One packet that matched a Log rule (when its flow's verdict was computed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogEvent {
    /// Host-side ifindex of the endpoint whose policy logged.
    pub ifindex: u32,
    /// The Log rule's id.
    pub log_rule: u32,
    /// What decided the packet afterwards.
    pub rule: u32,
    /// A [`verdict_action`] value.
    pub action: u8,
    /// A [`direction`] value.
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order (ICMP: type and code).
    pub sport: u16,
    pub dport: u16,
}

crate::user_pod!(LogEvent);
