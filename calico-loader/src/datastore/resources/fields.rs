//! Field values: how one value of a resource deserializes and is checked.
//!
//! Checks on a single value (an address, a name, a port) run inside serde's visit of that value,
//! so serde reports a problem with the field's path and serde_yaml places it at the value itself.
//! This module holds those checks ([`Check`] and the `required`/`optional`/`list` helpers that
//! apply them), the value types several kinds share ([`MacAddr`], [`Protocol`], [`Dscp`]),
//! `string_enum!` for Calico's string enums, selectors kept as text, Kubernetes' name rules,
//! and [`FieldError`], what a check across fields reports.

use std::{
    fmt,
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

/// A validation problem found after deserializing: the field's path within the document and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, like `spec.ipNATs[0].internalIP`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value types

/// A 48-bit MAC address. Parses from six pairs of hex digits separated by `:` or `-`; displays
/// in lower case with `:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The MAC address with these octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// Its octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid MAC address {s:?}");
        let separator = if s.contains(':') { ':' } else { '-' };
        let mut octets = [0u8; 6];
        let mut parts = s.split(separator);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An IP protocol, by Calico name or by number (Calico's `numorstring.Protocol`).
///
/// Names are Calico's: `TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`, plus the lower-case
/// `tcp`, `udp` and `sctp` of the v1 API. A number, or a string of digits, is kept as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// ICMPv6 (58).
    IcmpV6,
    /// SCTP (132).
    Sctp,
    /// UDP-Lite (136).
    UdpLite,
    /// Given by number.
    Number(u8),
}

impl Protocol {
    /// The protocol's number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => n,
        }
    }

    /// Whether the protocol has ports (TCP, UDP and SCTP, by name or number), as Calico decides.
    pub fn supports_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "TCP" | "tcp" => Protocol::Tcp,
            "UDP" | "udp" => Protocol::Udp,
            "SCTP" | "sctp" => Protocol::Sctp,
            "ICMP" => Protocol::Icmp,
            "ICMPv6" => Protocol::IcmpV6,
            "UDPLite" => Protocol::UdpLite,
            _ => match s.parse::<u8>() {
                Ok(n) => Protocol::Number(n),
                Err(_) => {
                    return Err(format!(
                        "invalid protocol {s:?}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 0-255"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::IcmpV6 => f.write_str("ICMPv6"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::UdpLite => f.write_str("UDPLite"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Protocol {
    pub(super) fn from_num_or_str(value: NumOrString<'_>) -> Result<Self, String> {
        match value {
            NumOrString::Num(n) => u8::try_from(n)
                .map(Protocol::Number)
                .map_err(|_| format!("invalid protocol number {n}: expected 0-255")),
            NumOrString::Str(s) => s.parse(),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CheckNumOrStr::new("a protocol name or number", Protocol::from_num_or_str)
            .drive(deserializer)
    }
}

/// A DSCP value (0-63), given as a number or by name (`DF`, `EF`, `AF11`...`AF43`, `CS0`...`CS6`,
/// any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dscp(u8);

impl Dscp {
    const NAMES: &'static [(&'static str, u8)] = &[
        ("DF", 0),
        ("EF", 46),
        ("AF11", 10),
        ("AF12", 12),
        ("AF13", 14),
        ("AF21", 18),
        ("AF22", 20),
        ("AF23", 22),
        ("AF31", 26),
        ("AF32", 28),
        ("AF33", 30),
        ("AF41", 34),
        ("AF42", 36),
        ("AF43", 38),
        ("CS0", 0),
        ("CS1", 8),
        ("CS2", 16),
        ("CS3", 24),
        ("CS4", 32),
        ("CS5", 40),
        ("CS6", 48),
    ];

    /// The DSCP value, 0-63.
    pub fn value(self) -> u8 {
        self.0
    }

    fn from_number(n: u64) -> Result<Self, String> {
        match u8::try_from(n) {
            Ok(v) if v <= 63 => Ok(Self(v)),
            _ => Err(format!("invalid DSCP {n}: must be between 0 and 63")),
        }
    }
}

impl FromStr for Dscp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u64>() {
            return Self::from_number(n);
        }
        let name = s.trim();
        Self::NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|&(_, v)| Self(v))
            .ok_or_else(|| {
                format!("invalid DSCP {s:?}: expected 0-63 or a name like EF, AF11 or CS1")
            })
    }
}

impl<'de> Deserialize<'de> for Dscp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let convert = |value: NumOrString<'_>| match value {
            NumOrString::Num(n) => u64::try_from(n)
                .map_err(|_| format!("invalid DSCP {n}: must be between 0 and 63"))
                .and_then(Self::from_number),
            NumOrString::Str(s) => s.parse(),
        };
        CheckNumOrStr::new("a DSCP name or number", convert).drive(deserializer)
    }
}

/// A BGP AS number (Calico's `numorstring.ASNumber`): 0 to 4294967295, given as a number, as a
/// string of digits, or in "asdot" notation (`<high>.<low>`, each 0-65535).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsNumber(u32);

impl AsNumber {
    /// The AS number with this value.
    pub const fn new(value: u32) -> Self {
        Self(value)
    }

    /// Its value.
    pub const fn value(self) -> u32 {
        self.0
    }

    fn from_number(n: i128) -> Result<Self, String> {
        u32::try_from(n)
            .map(Self)
            .map_err(|_| format!("invalid AS number {n}: must be between 0 and 4294967295"))
    }
}

impl FromStr for AsNumber {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid AS number {s:?}: expected a number between 0 and 4294967295, or \
                 <0-65535>.<0-65535>"
            )
        };
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<u32>().map(Self).map_err(|_| invalid());
        }
        let (high, low) = s.split_once('.').ok_or_else(invalid)?;
        let half = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse::<u16>().map_err(|_| invalid())
        };
        Ok(Self((u32::from(half(high)?) << 16) | u32::from(half(low)?)))
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let convert = |value: NumOrString<'_>| match value {
            NumOrString::Num(n) => Self::from_number(n),
            NumOrString::Str(s) => s.parse(),
        };
        CheckNumOrStr::new("an AS number", convert).drive(deserializer)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization helpers: single-value checks run inside serde's visit of the value, so that
// errors come with the field's path and serde_yaml places them at the value itself.

/// A check of one string value, producing its typed form.
pub(super) trait Check {
    type Out;
    fn check(s: &str) -> Result<Self::Out, String>;
}

/// A visitor that knows which `deserialize_*` method drives it.
pub(super) trait Drive<'de>: de::Visitor<'de> + Sized {
    fn drive<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error>;
}

/// Visits a string and checks it with `C`. With `empty_is_none`, an empty string gives `None`
/// (Go's `omitempty`); otherwise the result is always `Some`.
pub(super) struct CheckStr<C> {
    empty_is_none: bool,
    check: PhantomData<C>,
}

impl<C> CheckStr<C> {
    pub(super) fn new(empty_is_none: bool) -> Self {
        Self {
            empty_is_none,
            check: PhantomData,
        }
    }
}

impl<C: Check> de::Visitor<'_> for CheckStr<C> {
    type Value = Option<C::Out>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if s.is_empty() && self.empty_is_none {
            return Ok(None);
        }
        C::check(s).map(Some).map_err(E::custom)
    }
}

impl<'de, C: Check> Drive<'de> for CheckStr<C> {
    fn drive<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

/// A number or a string, as Calico's `numorstring` types take.
pub(super) enum NumOrString<'a> {
    Num(i128),
    Str(&'a str),
}

/// Visits a number or a string and converts it with `F`.
pub(super) struct CheckNumOrStr<F> {
    expecting: &'static str,
    convert: F,
}

impl<F> CheckNumOrStr<F> {
    pub(super) fn new(expecting: &'static str, convert: F) -> Self {
        Self { expecting, convert }
    }
}

impl<T, F: FnOnce(NumOrString<'_>) -> Result<T, String>> de::Visitor<'_> for CheckNumOrStr<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.convert)(NumOrString::Num(v.into())).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.convert)(NumOrString::Num(v.into())).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.convert)(NumOrString::Str(v)).map_err(E::custom)
    }
}

impl<'de, T, F: FnOnce(NumOrString<'_>) -> Result<T, String>> Drive<'de> for CheckNumOrStr<F> {
    fn drive<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// `null` (or nothing) as `None`, anything else through `V`.
pub(super) struct OrNull<V>(pub(super) V);

impl<'de, V: Drive<'de>> de::Visitor<'de> for OrNull<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)?;
        f.write_str(" or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.0.drive(deserializer).map(Some)
    }
}

/// A value that passed check `C` (for list items).
pub(super) struct Checked<C: Check>(pub(super) C::Out);

impl<'de, C: Check> Deserialize<'de> for Checked<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        required::<D, C>(deserializer).map(Checked)
    }
}

/// A required string field, checked by `C`.
pub(super) fn required<'de, D: Deserializer<'de>, C: Check>(
    deserializer: D,
) -> Result<C::Out, D::Error> {
    CheckStr::<C>::new(false)
        .drive(deserializer)?
        .ok_or_else(|| de::Error::custom("must not be empty"))
}

/// An optional string field, checked by `C` unless `null` or empty.
pub(super) fn optional<'de, D: Deserializer<'de>, C: Check>(
    deserializer: D,
) -> Result<Option<C::Out>, D::Error> {
    let value = deserializer.deserialize_option(OrNull(CheckStr::<C>::new(true)))?;
    Ok(value.flatten())
}

/// A list of strings (`null` meaning empty), each checked by `C`.
pub(super) fn list<'de, D: Deserializer<'de>, C: Check>(
    deserializer: D,
) -> Result<Vec<C::Out>, D::Error> {
    let items = Option::<Vec<Checked<C>>>::deserialize(deserializer)?;
    Ok(items.unwrap_or_default().into_iter().map(|c| c.0).collect())
}

/// A field where `null` means the default, as in Go.
pub(super) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A number, checked by `check`; `null` gives `None`.
pub(super) fn number<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expecting: &'static str,
    check: impl FnOnce(i128) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    let convert = |value: NumOrString<'_>| match value {
        NumOrString::Num(n) => check(n),
        NumOrString::Str(s) => Err(format!("invalid value {s:?}: expected {expecting}")),
    };
    deserializer.deserialize_option(OrNull(CheckNumOrStr::new(expecting, convert)))
}

pub(super) fn port_protocol<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Protocol, D::Error> {
    let convert = |value: NumOrString<'_>| {
        let protocol = Protocol::from_num_or_str(value)?;
        if protocol.supports_ports() {
            Ok(protocol)
        } else {
            Err(format!(
                "protocol {protocol} has no ports: expected TCP, UDP or SCTP"
            ))
        }
    };
    CheckNumOrStr::new("TCP, UDP or SCTP", convert).drive(deserializer)
}

pub(super) fn port_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let check = |port: i128| match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {port}: must be between 1 and 65535")),
    };
    number(deserializer, "a port number", check)?
        .ok_or_else(|| de::Error::custom("a port number is required"))
}

pub(super) fn host_port<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    let check = |port: i128| {
        u16::try_from(port)
            .map_err(|_| format!("invalid host port {port}: must be between 0 and 65535"))
    };
    // 0 means none, as in Calico.
    Ok(number(deserializer, "a port number", check)?.filter(|p| *p != 0))
}

pub(super) fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let check = |v: i128| match i64::try_from(v) {
        Ok(v) if v >= 0 => Ok(v),
        Ok(_) => Err(format!("invalid value {v}: must not be negative")),
        Err(_) => Err(format!("invalid value {v}: too large")),
    };
    Ok(number(deserializer, "a number", check)?.unwrap_or(0))
}

/// A duration as Go writes it (Kubernetes' `metav1.Duration`): a sequence of decimal numbers,
/// each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), like `90s`, `1m30s` or `1.5h`;
/// `0` alone is zero. Negative durations are refused.
struct GoDuration;
impl Check for GoDuration {
    type Out = std::time::Duration;
    fn check(s: &str) -> Result<std::time::Duration, String> {
        parse_go_duration(s).map_err(|problem| format!("invalid duration {s:?}: {problem}"))
    }
}

/// An optional duration ([`GoDuration`]); a number gets an error that asks for a unit.
pub(super) fn duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let convert = |value: NumOrString<'_>| match value {
        NumOrString::Num(n) => Err(format!(
            "invalid duration {n}: a duration is a string with a unit, like \"{n}s\""
        )),
        NumOrString::Str("") => Ok(None),
        NumOrString::Str(s) => GoDuration::check(s).map(Some),
    };
    let value = deserializer.deserialize_option(OrNull(CheckNumOrStr::new(
        "a duration like \"90s\"",
        convert,
    )))?;
    Ok(value.flatten())
}

fn parse_go_duration(s: &str) -> Result<std::time::Duration, &'static str> {
    const UNITS: [(&str, f64); 8] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("μs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned.starts_with('-') {
        return Err("must not be negative");
    }
    if unsigned == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if unsigned.is_empty() {
        return Err("expected a number and a unit, like 90s or 2m");
    }
    let mut rest = unsigned;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err("expected a number and a unit, like 90s or 2m");
        }
        let value: f64 = number
            .parse()
            .map_err(|_| "expected a number and a unit, like 90s or 2m")?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, scale)| scale)
            .ok_or(if unit.is_empty() {
                "missing unit (ns, us, ms, s, m or h)"
            } else {
                "unknown unit: expected ns, us, ms, s, m or h"
            })?;
        seconds += value * scale;
        rest = next;
    }
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| "too large")
}

/// Any string.
pub(super) struct AnyString;
impl Check for AnyString {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        Ok(s.to_owned())
    }
}

/// A resource name, also used for node, orchestrator, workload, profile names...: a DNS-1123
/// subdomain of at most 253 characters (Calico's `name` validation).
pub(super) struct ResourceName;
impl Check for ResourceName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 253 {
            return Err(format!("invalid name {s:?}: longer than 253 characters"));
        }
        if !is_dns_subdomain(s) {
            return Err(format!(
                "invalid name {s:?}: must consist of lower case alphanumeric characters, '-' or '.', \
                 and start and end with an alphanumeric character"
            ));
        }
        Ok(s.to_owned())
    }
}

/// A namespace name: a DNS-1123 label.
pub(super) struct NamespaceName;
impl Check for NamespaceName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s.len() <= 63 && is_dns_label(s) {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid namespace {s:?}: must be at most 63 lower case alphanumeric characters or '-', \
                 starting and ending with an alphanumeric character"
            ))
        }
    }
}

/// A container id: alphanumerics and `-`, not at either end.
pub(super) struct ContainerId;
impl Check for ContainerId {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        let ok = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!("invalid container ID {s:?}"))
        }
    }
}

/// A Linux interface name: 1-15 characters from `[a-zA-Z0-9_.-]` (Calico's rule, within
/// IFNAMSIZ).
pub(super) struct InterfaceName;
impl Check for InterfaceName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        let ok = s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid interface name {s:?}: must be 1-15 characters from [a-zA-Z0-9_.-]"
            ))
        }
    }
}

/// A port name: an IANA service name (Kubernetes' `IsValidPortName`).
pub(super) struct PortName;
impl Check for PortName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        let problem = if s.len() > 15 {
            Some("must be no more than 15 characters")
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("must contain only lower case alphanumeric characters or '-'")
        } else if !s.bytes().any(|b| b.is_ascii_lowercase()) {
            Some("must contain at least one letter")
        } else if s.contains("--") {
            Some("must not contain consecutive hyphens")
        } else if s.starts_with('-') || s.ends_with('-') {
            Some("must not begin or end with a hyphen")
        } else {
            None
        };
        match problem {
            None => Ok(s.to_owned()),
            Some(p) => Err(format!("invalid port name {s:?}: {p}")),
        }
    }
}

/// A CIDR or a bare address (meaning /32 or /128), parsed as Calico's `ParseCIDROrIP` does.
pub(super) fn parse_cidr_or_ip(s: &str) -> Result<(IpAddr, IpNet), String> {
    if s.contains('/') {
        let net: IpNet = s.parse().map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        Ok((net.addr(), net))
    } else {
        let ip: IpAddr = s.parse().map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        Ok((ip, IpNet::from(ip)))
    }
}

/// A workload's address: CIDR or bare IP, host bits clear (Calico's `net` validation).
pub(super) struct EndpointNetwork;
impl Check for EndpointNetwork {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        let (ip, net) = parse_cidr_or_ip(s)?;
        let net = net.trunc();
        if net.addr() != ip {
            return Err(format!(
                "invalid CIDR {s:?}: host bits are set (the network is {net})"
            ));
        }
        Ok(net)
    }
}

/// A CIDR or bare IP, host bits cleared (Calico's `cidr` validation accepts them).
pub(super) struct Cidr;
impl Check for Cidr {
    type Out = IpNet;
    fn check(s: &str) -> Result<IpNet, String> {
        parse_cidr_or_ip(s).map(|(_, net)| net.trunc())
    }
}

/// An IP address.
pub(super) struct Ip;
impl Check for Ip {
    type Out = IpAddr;
    fn check(s: &str) -> Result<IpAddr, String> {
        s.parse()
            .map_err(|e| format!("invalid IP address {s:?}: {e}"))
    }
}

/// An IPv4 address.
pub(super) struct Ipv4;
impl Check for Ipv4 {
    type Out = Ipv4Addr;
    fn check(s: &str) -> Result<Ipv4Addr, String> {
        s.parse()
            .map_err(|e| format!("invalid IPv4 address {s:?}: {e}"))
    }
}

/// An IPv6 address.
pub(super) struct Ipv6;
impl Check for Ipv6 {
    type Out = Ipv6Addr;
    fn check(s: &str) -> Result<Ipv6Addr, String> {
        s.parse()
            .map_err(|e| format!("invalid IPv6 address {s:?}: {e}"))
    }
}

/// A host address: an IP, or a CIDR of full length.
pub(super) struct HostIp;
impl Check for HostIp {
    type Out = IpAddr;
    fn check(s: &str) -> Result<IpAddr, String> {
        let (ip, net) = parse_cidr_or_ip(s)?;
        if net.prefix_len() != net.max_prefix_len() {
            return Err(format!("invalid host IP {s:?}: must be a single address"));
        }
        Ok(ip)
    }
}

/// A MAC address.
pub(super) struct Mac;
impl Check for Mac {
    type Out = MacAddr;
    fn check(s: &str) -> Result<MacAddr, String> {
        s.parse()
    }
}

// ---------------------------------------------------------------------------------------------
// Enums, selectors and lists

/// CRD limit: length of a selector (`MaxLength=1024`).
pub(super) const MAX_SELECTOR_LEN: usize = 1024;

/// `a, b or c`, for error messages.
pub(super) fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// An enum written as one of a fixed set of strings (case-sensitive, as Calico's enums are),
/// with `ALL`, `as_str`, `FromStr`, `Display` and [`Check`].
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as Calico spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "invalid {} {s:?}: expected {}",
                        $what,
                        $crate::datastore::resources::fields::one_of(&[$($text),+])
                    )),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::datastore::resources::fields::Check for $name {
            type Out = $name;
            fn check(s: &str) -> Result<$name, String> {
                s.parse()
            }
        }
    };
}

pub(super) use string_enum;

/// A selector, kept as text (at most [`MAX_SELECTOR_LEN`] characters, the CRDs' limit); the
/// parser checks it with the selector language once the resource is built.
pub(super) struct SelectorText;
impl Check for SelectorText {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(format!(
                "selector is {} characters long, more than the limit of {MAX_SELECTOR_LEN}",
                s.len()
            ));
        }
        Ok(s.to_owned())
    }
}

/// CRD limit: length of the selectors of a BGPPeer (`MaxLength=4096`).
pub(super) const MAX_LONG_SELECTOR_LEN: usize = 4096;

/// A selector of up to [`MAX_LONG_SELECTOR_LEN`] characters (a BGPPeer's), kept as text.
pub(super) struct LongSelectorText;
impl Check for LongSelectorText {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s.len() > MAX_LONG_SELECTOR_LEN {
            return Err(format!(
                "selector is {} characters long, more than the limit of {MAX_LONG_SELECTOR_LEN}",
                s.len()
            ));
        }
        Ok(s.to_owned())
    }
}

/// No value twice in a list (the Go validator's `unique`, and its explicit check on
/// `types`).
pub(super) fn check_unique<T: PartialEq + fmt::Display>(
    items: &[T],
    field: &str,
) -> Vec<FieldError> {
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| items[..*i].contains(item))
        .map(|(i, item)| {
            FieldError::new(
                format!("{field}[{i}]"),
                format!("'{item}' specified more than once"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Name rules

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length.
pub(super) fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// Dot-separated DNS labels.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters, or empty.
pub(super) fn is_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => {
            s.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
    }
}

/// Kubernetes' qualified name (label and annotation keys): `[prefix/]name`.
pub(super) fn check_qualified_name(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !is_dns_subdomain(prefix) {
                return Err("the prefix before '/' must be a DNS subdomain".into());
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.contains('/') || !is_label_value(name) {
        return Err(
            "the name must be 1-63 alphanumeric characters, '-', '_' or '.', \
                    starting and ending with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn check_label_value(value: &str) -> Result<(), String> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(
            "must be at most 63 alphanumeric characters, '-', '_' or '.', \
             starting and ending with an alphanumeric character"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        let mac: MacAddr = "ca:fe:1d:52:bb:E9".parse().unwrap();
        assert_eq!(mac.octets(), [0xca, 0xfe, 0x1d, 0x52, 0xbb, 0xe9]);
        assert_eq!(mac.to_string(), "ca:fe:1d:52:bb:e9");
        assert_eq!("ca-fe-1d-52-bb-e9".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "zz:00:00:00:00:01",
            "ca:fe:1d:52:bb",
            "ca:fe:1d:52:bb:e9:00",
            "ca:fe-1d:52:bb:e9",
            "c:afe:1d:52:bb:e9",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn protocols() {
        assert_eq!("TCP".parse(), Ok(Protocol::Tcp));
        assert_eq!("udp".parse(), Ok(Protocol::Udp));
        assert_eq!("132".parse(), Ok(Protocol::Number(132)));
        assert!("Tcp".parse::<Protocol>().is_err());
        assert!("256".parse::<Protocol>().is_err());
        assert!(Protocol::Number(6).supports_ports());
        assert!(!Protocol::Icmp.supports_ports());
    }

    #[test]
    fn dscp_values() {
        assert_eq!("ef".parse::<Dscp>().map(Dscp::value), Ok(46));
        assert_eq!("63".parse::<Dscp>().map(Dscp::value), Ok(63));
        assert!("64".parse::<Dscp>().is_err());
        assert!("XX".parse::<Dscp>().is_err());
    }

    #[test]
    fn names() {
        assert!(ResourceName::check("node1-k8s-web--1-eth0").is_ok());
        assert!(ResourceName::check("kns.default").is_ok());
        assert!(ResourceName::check("Node1").is_err());
        assert!(ResourceName::check("-a").is_err());
        assert!(ResourceName::check("a..b").is_err());
        assert!(InterfaceName::check("cali0ef24ba1c2d").is_ok());
        assert!(InterfaceName::check("cali0ef24ba1c2d0").is_err());
        assert!(InterfaceName::check("eth 0").is_err());
        assert!(PortName::check("http").is_ok());
        assert!(PortName::check("8080").is_err());
        assert!(PortName::check("my--port").is_err());
        assert!(check_qualified_name("app").is_ok());
        assert!(check_qualified_name("projectcalico.org/namespace").is_ok());
        assert!(check_qualified_name("a/b/c").is_err());
        assert!(check_qualified_name("-app").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("Web_1.x").is_ok());
        assert!(check_label_value("web!").is_err());
    }

    #[test]
    fn as_numbers() {
        assert_eq!("64512".parse(), Ok(AsNumber::new(64512)));
        assert_eq!("1.10".parse(), Ok(AsNumber::new(65546)));
        assert_eq!("65535.65535".parse(), Ok(AsNumber::new(u32::MAX)));
        assert_eq!(AsNumber::new(65546).to_string(), "65546");
        for bad in [
            "",
            "4294967296",
            "65536.0",
            "1.",
            ".1",
            "1.2.3",
            "-1",
            "+5",
            "x",
        ] {
            assert!(bad.parse::<AsNumber>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        let ok = |s: &str| GoDuration::check(s).unwrap();
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+2m"), Duration::from_secs(120));
        for bad in ["", "5", "s", "-1s", "1d", "1..5s", "1 s", "0s5"] {
            assert!(GoDuration::check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(
            EndpointNetwork::check("198.18.0.24"),
            Ok("198.18.0.24/32".parse().unwrap())
        );
        assert_eq!(
            EndpointNetwork::check("2001:db8::24"),
            Ok("2001:db8::24/128".parse().unwrap())
        );
        assert_eq!(
            EndpointNetwork::check("198.18.1.0/24"),
            Ok("198.18.1.0/24".parse().unwrap())
        );
        assert!(EndpointNetwork::check("198.18.1.5/24").is_err());
        assert!(EndpointNetwork::check("198.18.0.300/32").is_err());
        assert_eq!(
            Cidr::check("198.18.1.5/24"),
            Ok("198.18.1.0/24".parse().unwrap())
        );
        assert_eq!(
            HostIp::check("198.18.0.1/32"),
            Ok("198.18.0.1".parse().unwrap())
        );
        assert!(HostIp::check("198.18.0.0/24").is_err());
    }
}
