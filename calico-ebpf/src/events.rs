//! Drop events: a dropped packet reported to a listener (`calico-loader events`) through the
//! drop event ring buffer.
//!
//! Nothing is built unless a listener holds the lease in the control map: with nobody
//! listening, a drop costs one array lookup and a comparison here. While someone listens, each
//! CPU takes one drop in the listener's sample and at most its rate (a burst, then one event per
//! interval: a virtual schedule per CPU, no division, no lock), and counts what became of every
//! drop it saw. A full ring loses the event, never the packet.

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use calico_ebpf_common::DropEvent;

use crate::{
    maps::{DROP_CONTROL, DROP_EVENTS, DROP_STATS},
    packet::{PACKET_FLOW, SCRATCH},
};

/// What a drop event can say of the packet beyond the drop.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Headers {
    /// Its headers were not read (a malformed or non-IP packet): no addresses or ports.
    Unread = 0,
    /// Its flow was parsed into the per-CPU scratch flow, where the event reads it.
    Parsed = 1,
}

/// Reports a drop to the listener, if one is registered. `ifindex` and `direction` say which
/// endpoint the drop is counted against and how the packet went from its point of view,
/// `reason` is a `DropReason`, `rule` the rule id that denied (policy drops; 0 otherwise) and
/// `headers` a [`Headers`] value.
///
/// A global BPF function: the verifier checks it once, on its own, whatever the number of
/// places that drop; the drop paths only pay a call with five scalars (a pointer argument
/// would cost the verifier states on every path that carries one). Returns 1 when an event
/// was written.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn calico_drop_event(
    ifindex: u32,
    reason: u32,
    direction: u32,
    rule: u32,
    headers: u32,
) -> i32 {
    let Some(control) = DROP_CONTROL.get_ptr(0) else {
        return 0;
    };
    // SAFETY: a map value; the listener may rewrite it at any time, each field is read once.
    let lease = unsafe { core::ptr::read_volatile(&(*control).lease_until_ns) };
    if lease == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now > lease {
        // A listener that was killed: its lease ran out.
        return 0;
    }
    let control = unsafe { *control };
    let Some(stats) = DROP_STATS.get_ptr_mut(0) else {
        return 0;
    };
    let stats = unsafe { &mut *stats };
    stats.seen += 1;
    if control.sample > 1 {
        if stats.skip > 0 {
            stats.skip -= 1;
            stats.sampled_out += 1;
            return 0;
        }
        stats.skip = control.sample - 1;
    }
    if control.interval_ns != 0 {
        // The schedule may run at most a burst ahead of now: this event is sent at `next`,
        // and the one after it would be due an interval later. A burst of N sends N at once,
        // then the next only once a whole interval has passed (a clock that moved on by a tick
        // must not let one more through).
        let next = if stats.next_ns > now {
            stats.next_ns
        } else {
            now
        };
        if next - now + control.interval_ns > control.burst_ns {
            stats.rate_limited += 1;
            return 0;
        }
        stats.next_ns = next + control.interval_ns;
    }
    let Some(mut entry) = DROP_EVENTS.reserve(0) else {
        stats.ring_full += 1;
        return 0;
    };
    let event: *mut DropEvent = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until it is submitted; every field is written.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).ifindex = ifindex;
        (*event).rule = rule;
        (*event).reason = reason as u8;
        (*event).direction = direction as u8;
        (*event).len = 0;
        (*event)._pad = 0;
        let flow = if headers == Headers::Parsed as u32 {
            SCRATCH.get_ptr(PACKET_FLOW)
        } else {
            None
        };
        match flow.and_then(|flow| flow.as_ref()) {
            Some(flow) => {
                (*event).family = flow.family;
                (*event).proto = flow.proto;
                (*event).sport = flow.sport;
                (*event).dport = flow.dport;
                (*event).src = flow.src;
                (*event).dst = flow.dst;
                (*event).len = flow.len;
            }
            None => {
                (*event).family = 0;
                (*event).proto = 0;
                (*event).sport = 0;
                (*event).dport = 0;
                (*event).src = [0; 16];
                (*event).dst = [0; 16];
            }
        }
    }
    entry.submit(0);
    stats.submitted += 1;
    1
}

/// Calls [`calico_drop_event`].
#[inline(always)]
pub fn report_drop(ifindex: u32, reason: u32, direction: u8, rule: u32, headers: Headers) {
    calico_drop_event(ifindex, reason, u32::from(direction), rule, headers as u32);
}
