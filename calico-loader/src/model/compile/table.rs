//! From steps to prefix entries: address classes by a sweep over the remote address space, then
//! per class and protocol the port functions; each piecewise constant function is written as a
//! default and exceptions.

use std::{
    cmp::Reverse,
    collections::{HashMap, hash_map::Entry},
    hash::Hash,
};

use calico_ebpf_common::{PolicyVerdict, verdict_action, verdict_flags};

use super::{
    compiled::{
        AddrEntry, CompileError, CompiledDirection, Family, LocalEntry, PortEntry, ProtoEntry,
        TableLimits, value_bytes,
    },
    conditions::{Conditions, PORT_MAX, PortCondition, ProtoCondition, Side},
    context::{PolicyContext, Selectable, net_span},
    ranges::{Ranges, prefixes},
};
use crate::{datastore::Action, model::rules::Direction};

/// One step of the flattened plan.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) id: u32,
    pub(super) action: Action,
    /// The tier or profile it belongs to: a Pass skips the rest of the group.
    pub(super) group: u32,
    /// `None`: matches every packet (a tier's default deny).
    pub(super) conditions: Option<Conditions>,
}

/// The local addresses a direction is compiled for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Locals<'a> {
    /// A workload endpoint's own addresses: each gets its own address entries.
    Addresses(&'a [(Family, u128)]),
    /// Any address (a host endpoint's, whose traffic may be forwarded to or from anywhere): the
    /// local address space is split into local classes, looked up longest prefix first.
    Anywhere,
}

/// What happens to a packet no step decides: the rule id, and Allow or Deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ending {
    pub(super) id: u32,
    pub(super) action: Action,
}

/// Compiles `steps` (then `ending`) for the endpoint's `locals`.
pub(super) fn compile(
    ctx: &PolicyContext<'_>,
    endpoint: &str,
    steps: &[Step],
    ending: Ending,
    direction: Direction,
    locals: Locals<'_>,
) -> Result<CompiledDirection, CompileError> {
    let mut tables = Tables {
        endpoint,
        direction,
        ending,
        limits: ctx.limits(),
        port_functions: Interner::default(),
        classes: Interner::default(),
        out: CompiledDirection::default(),
    };
    for family in [Family::V4, Family::V6] {
        match locals {
            Locals::Addresses(locals) => {
                let addresses: Vec<u128> = locals
                    .iter()
                    .filter(|(f, _)| *f == family)
                    .map(|&(_, a)| a)
                    .collect();
                if !addresses.is_empty() {
                    tables.family(ctx, steps, family, LocalSpace::Addresses(&addresses))?;
                }
            }
            Locals::Anywhere => {
                tables.out.local_classes = true;
                tables.family(ctx, steps, family, LocalSpace::Anywhere)?;
            }
        }
    }
    let mut out = tables.out;
    out.address_classes = tables.classes.len();
    out.port_classes = tables.port_functions.len();
    Ok(out)
}

/// Values numbered in order of first appearance.
struct Interner<T> {
    ids: HashMap<T, u32>,
    values: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    /// The number of `value`, and whether it is new.
    fn intern(&mut self, value: T) -> (u32, bool) {
        match self.ids.entry(value) {
            Entry::Occupied(entry) => (*entry.get(), false),
            Entry::Vacant(entry) => {
                let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
                self.values.push(entry.key().clone());
                entry.insert(id);
                (id, true)
            }
        }
    }

    fn len(&self) -> u32 {
        // Compilation stops at the size of a kernel map, far below u32::MAX.
        u32::try_from(self.values.len()).unwrap_or(u32::MAX)
    }
}

/// A piecewise constant function over an integer range: (first, last, value), in order, covering
/// the range.
type Pieces<T> = Vec<(u128, u128, T)>;

/// Appends `lo..=hi → value` to `pieces`, merging with the previous piece when equal.
fn push_piece<T: PartialEq>(pieces: &mut Pieces<T>, lo: u128, hi: u128, value: T) {
    match pieces.last_mut() {
        Some(last) if last.2 == value && last.1 + 1 == lo => last.1 = hi,
        _ => pieces.push((lo, hi, value)),
    }
}

/// A piecewise constant function over `width`-bit integers as prefix entries: the default value
/// (for the zero-length prefix), and the prefixes (value, length) of the other pieces. The
/// default is the value whose pieces would need the most prefixes (the first such on a tie).
fn lpm<T: Eq + Hash + Copy>(pieces: &Pieces<T>, width: u8) -> (T, Vec<(u128, u8, T)>) {
    let split: Vec<Vec<(u128, u8)>> = pieces
        .iter()
        .map(|&(lo, hi, _)| prefixes(lo, hi, width))
        .collect();
    // Per value: its number of prefixes, and its first piece.
    let mut counts: HashMap<T, (usize, Reverse<usize>)> = HashMap::new();
    for (index, (&(_, _, value), blocks)) in pieces.iter().zip(&split).enumerate() {
        counts.entry(value).or_insert((0, Reverse(index))).0 += blocks.len();
    }
    // Pieces always cover their whole range, so there is at least one.
    let default = counts
        .iter()
        .max_by_key(|(_, count)| **count)
        .map_or(pieces[0].2, |(value, _)| *value);
    let exceptions = pieces
        .iter()
        .zip(split)
        .filter(|((_, _, value), _)| *value != default)
        .flat_map(|(&(_, _, value), blocks)| {
            blocks
                .into_iter()
                .map(move |(prefix, len)| (prefix, len, value))
        })
        .collect();
    (default, exceptions)
}

/// What a class does per protocol: the port class of protocols it does not list, and for the
/// listed ones the port class per source-port interval.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassTable {
    default: u32,
    protocols: Vec<(u8, Pieces<u32>)>,
}

/// The remote side of a step, for one family.
enum Remote {
    /// It matches whatever the remote address, with these ports.
    Everywhere(PortCondition),
    /// It matches in these address sets, with these ports in each.
    Within(Vec<(Ranges, PortCondition)>),
}

/// The local side of a step, for one family.
enum Local<'s> {
    /// The same for every local address: its ports.
    Fixed(PortCondition),
    /// Depends on the local address: its address criteria (if any), and the side for named
    /// ports.
    PerAddress(Option<Ranges>, &'s Side),
}

/// A step as one class sees it: its ports resolved.
struct Candidate<'a> {
    step: &'a Step,
    proto: Option<&'a ProtoCondition>,
    sport: &'a PortCondition,
    dport: &'a PortCondition,
}

/// A step of one family, its remote and local sides resolved.
struct View<'s> {
    step: &'s Step,
    remote: Remote,
    local: Local<'s>,
}

/// The remote side of `side` in `family`; `None` if no address of the family matches.
fn remote_side(ctx: &PolicyContext<'_>, side: &Side, family: Family) -> Option<Remote> {
    let addresses = side.addresses(family);
    let Some(scope) = side.port_scope() else {
        let ports = side.ports(std::iter::empty());
        return match addresses {
            None => Some(Remote::Everywhere(ports)),
            Some(addresses) => {
                (!addresses.is_empty()).then(|| Remote::Within(vec![(addresses, ports)]))
            }
        };
    };
    // Named ports: one address set per resolution, from the endpoints that have such a port
    // (network sets have none).
    let selectables = ctx.selectables();
    let owners: Vec<usize> = scope
        .selectables
        .iter()
        .copied()
        .filter(|&i| {
            selectables[i]
                .ports
                .iter()
                .any(|(name, _, _)| side.names_port(name))
        })
        .collect();
    let sets: Vec<Ranges> = owners
        .iter()
        .map(|&i| {
            Ranges::from_spans(
                selectables[i]
                    .networks
                    .iter()
                    .filter_map(|net| net_span(net, family)),
            )
        })
        .collect();
    let (pieces, combinations) = partition(&sets.iter().collect::<Vec<_>>(), family.max());
    let mut resolutions: Interner<PortCondition> = Interner::default();
    let resolution_of: Vec<u32> = combinations
        .iter()
        .map(|combination| {
            resolutions
                .intern(
                    side.ports(
                        combination
                            .iter()
                            .map(|&k| &selectables[owners[k as usize]]),
                    ),
                )
                .0
        })
        .collect();
    let mut spans: Vec<Vec<(u128, u128)>> = vec![Vec::new(); resolutions.values.len()];
    for (lo, hi, combination) in pieces {
        spans[resolution_of[combination] as usize].push((lo, hi));
    }
    let within: Vec<(Ranges, PortCondition)> = resolutions
        .values
        .into_iter()
        .zip(spans)
        .filter_map(|(ports, spans)| {
            let mut set = Ranges::from_spans(spans);
            if let Some(addresses) = &addresses {
                set = set.intersect(addresses);
            }
            (!set.is_empty()).then_some((set, ports))
        })
        .collect();
    (!within.is_empty()).then_some(Remote::Within(within))
}

/// The ports of `side` at local `address`, or `None` if its address criteria exclude it.
fn local_side(
    ctx: &PolicyContext<'_>,
    addresses: Option<&Ranges>,
    side: &Side,
    family: Family,
    address: u128,
) -> Option<PortCondition> {
    if addresses.is_some_and(|set| !set.contains(address)) {
        return None;
    }
    let owns = |net| net_span(net, family).is_some_and(|(lo, hi)| lo <= address && address <= hi);
    let owners: Vec<&Selectable> = side
        .port_scope()
        .map(|scope| {
            scope
                .selectables
                .iter()
                .map(|&i| &ctx.selectables()[i])
                .filter(|item| item.networks.iter().any(owns))
                .collect()
        })
        .unwrap_or_default();
    Some(side.ports(owners.into_iter()))
}

/// Splits `0..=max` into intervals where the same `sets` hold. Returns the intervals, each with
/// the index of its combination, and the combinations (indexes into `sets`, sorted).
///
/// A sweep over the sets' boundaries keeps the sets that hold, and a Zobrist hash of them; an
/// interval whose hash was seen is compared with the combinations of that hash.
fn partition(sets: &[&Ranges], max: u128) -> (Pieces<usize>, Vec<Vec<u32>>) {
    let mut events: Vec<(u128, u32, bool)> = Vec::new();
    for (set, ranges) in (0u32..).zip(sets) {
        for &(lo, hi) in ranges.spans() {
            events.push((lo, set, true));
            if hi < max {
                events.push((hi + 1, set, false));
            }
        }
    }
    events.sort_unstable_by_key(|&(at, _, _)| at);
    let keys = zobrist_keys(sets.len());
    let mut holding: Vec<u32> = Vec::new();
    let mut hash = 0u128;
    let mut combinations: Vec<Vec<u32>> = Vec::new();
    let mut by_hash: HashMap<u128, Vec<usize>> = HashMap::new();
    let mut pieces = Vec::new();
    let (mut lo, mut next) = (0u128, 0usize);
    loop {
        while let Some(&(_, set, start)) = events.get(next).filter(|e| e.0 == lo) {
            // A set's intervals are disjoint and apart: it never starts while it holds.
            let changed = match (start, holding.binary_search(&set)) {
                (true, Err(position)) => {
                    holding.insert(position, set);
                    true
                }
                (false, Ok(position)) => {
                    holding.remove(position);
                    true
                }
                _ => false,
            };
            if changed {
                hash ^= keys[set as usize];
            }
            next += 1;
        }
        let hi = events.get(next).map_or(max, |&(at, _, _)| at - 1);
        let seen = by_hash.entry(hash).or_default();
        let combination = match seen.iter().copied().find(|&c| combinations[c] == holding) {
            Some(c) => c,
            None => {
                combinations.push(holding.clone());
                seen.push(combinations.len() - 1);
                combinations.len() - 1
            }
        };
        push_piece(&mut pieces, lo, hi, combination);
        match events.get(next) {
            Some(&(at, _, _)) => lo = at,
            None => return (pieces, combinations),
        }
    }
}

/// `n` pseudo-random 128-bit keys (xorshift64*, fixed seed: compilation is deterministic).
fn zobrist_keys(n: usize) -> Vec<u128> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n)
        .map(|_| u128::from(next()) << 64 | u128::from(next()))
        .collect()
}

/// Sets of elementary intervals, each able to find its next member at or after an index in
/// near-constant time (union-find over "next member" links).
struct NextMember {
    next: Vec<usize>,
}

impl NextMember {
    /// All of `0..n`.
    fn all(n: usize) -> Self {
        Self {
            next: (0..=n).collect(),
        }
    }

    /// The first member at or after `i` (`n` if none).
    fn at_or_after(&mut self, i: usize) -> usize {
        let mut root = i;
        while self.next[root] != root {
            root = self.next[root];
        }
        let mut j = i;
        while self.next[j] != root {
            j = std::mem::replace(&mut self.next[j], root);
        }
        root
    }

    fn remove(&mut self, i: usize) {
        self.next[i] = i + 1;
    }

    /// Makes the members exactly those for which `member` holds.
    fn reset(&mut self, member: impl Fn(usize) -> bool) {
        let n = self.next.len() - 1;
        for i in 0..n {
            self.next[i] = if member(i) { i } else { i + 1 };
        }
    }
}

/// The local addresses of one family a direction is compiled for.
enum LocalSpace<'a> {
    Addresses(&'a [u128]),
    Anywhere,
}

/// Splits the whole local address space of `family` into intervals where every view's local
/// side is the same: at the boundaries of the address criteria and of the networks of the
/// endpoints that own named ports.
fn local_intervals(
    ctx: &PolicyContext<'_>,
    views: &[View<'_>],
    family: Family,
) -> Vec<(u128, u128)> {
    let max = family.max();
    let mut starts: Vec<u128> = vec![0];
    let mut cut = |lo: u128, hi: u128| {
        starts.push(lo);
        if hi < max {
            starts.push(hi + 1);
        }
    };
    for view in views {
        let Local::PerAddress(set, side) = &view.local else {
            continue;
        };
        if let Some(set) = set {
            for &(lo, hi) in set.spans() {
                cut(lo, hi);
            }
        }
        if let Some(scope) = side.port_scope() {
            for &i in &scope.selectables {
                for net in &ctx.selectables()[i].networks {
                    if let Some((lo, hi)) = net_span(net, family) {
                        cut(lo, hi);
                    }
                }
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
        .iter()
        .enumerate()
        .map(|(i, &lo)| (lo, starts.get(i + 1).map_or(max, |next| next - 1)))
        .collect()
}

fn verdict(action: Action, rule: u32, log_rule: u32) -> PolicyVerdict {
    PolicyVerdict {
        action: match action {
            Action::Allow => verdict_action::ALLOW,
            // Only untracked policy ends with Pass: no verdict, on to what comes next.
            Action::Pass => verdict_action::PASS,
            Action::Deny | Action::Log => verdict_action::DENY,
        },
        flags: if log_rule == 0 { 0 } else { verdict_flags::LOG },
        _pad: [0; 2],
        rule,
        log_rule,
    }
}

/// The verdict per destination port (ICMP type and code) of the `steps` that can match, each
/// with the ports where it matches, in evaluation order; `ending` decides what none did.
///
/// The ports are split into elementary intervals at every boundary; the steps are applied in
/// order to the intervals still open: Log marks those not marked yet, Pass sets them aside until
/// the next group, Allow and Deny decide them.
fn paint(steps: &[(&Step, &Ranges)], ending: Ending) -> Pieces<PolicyVerdict> {
    let mut starts: Vec<u128> = vec![0];
    for (_, ranges) in steps {
        for &(lo, hi) in ranges.spans() {
            starts.push(lo);
            if hi < PORT_MAX {
                starts.push(hi + 1);
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let n = starts.len();
    let mut verdicts: Vec<Option<PolicyVerdict>> = vec![None; n];
    let mut logged = vec![0u32; n];
    // Open: neither decided nor set aside by a Pass. Unlogged: open and not marked by a Log.
    let (mut open, mut unlogged) = (NextMember::all(n), NextMember::all(n));
    let mut set_aside = false;
    let mut undecided = n;
    let mut group = None;
    for &(step, ranges) in steps {
        if undecided == 0 {
            break;
        }
        if group != Some(step.group) {
            group = Some(step.group);
            if set_aside {
                set_aside = false;
                open.reset(|i| verdicts[i].is_none());
                unlogged.reset(|i| verdicts[i].is_none() && logged[i] == 0);
            }
        }
        for &(lo, hi) in ranges.spans() {
            let (first, end) = (
                starts.partition_point(|&s| s < lo),
                starts.partition_point(|&s| s <= hi),
            );
            if step.action == Action::Log {
                let mut i = unlogged.at_or_after(first);
                while i < end {
                    logged[i] = step.id;
                    unlogged.remove(i);
                    i = unlogged.at_or_after(i + 1);
                }
                continue;
            }
            let mut i = open.at_or_after(first);
            while i < end {
                open.remove(i);
                unlogged.remove(i);
                if step.action == Action::Pass {
                    set_aside = true;
                } else {
                    verdicts[i] = Some(verdict(step.action, step.id, logged[i]));
                    undecided -= 1;
                }
                i = open.at_or_after(i + 1);
            }
        }
    }
    let mut pieces = Vec::new();
    for (i, decided) in verdicts.into_iter().enumerate() {
        let hi = starts.get(i + 1).map_or(PORT_MAX, |next| next - 1);
        push_piece(
            &mut pieces,
            starts[i],
            hi,
            decided.unwrap_or_else(|| verdict(ending.action, ending.id, logged[i])),
        );
    }
    pieces
}

/// Entries of the address table of an `N`-byte family for `local`, the remote side as `lpm` gives
/// it.
fn addr_entries<const N: usize>(
    local: u128,
    default: u32,
    exceptions: &[(u128, u8, u32)],
) -> Vec<AddrEntry<N>> {
    let entry = |remote: u128, remote_prefix: u8, class: u32| AddrEntry {
        local: value_bytes(local),
        remote: value_bytes(remote),
        remote_prefix,
        class,
    };
    std::iter::once(entry(0, 0, default))
        .chain(
            exceptions
                .iter()
                .map(|&(remote, len, class)| entry(remote, len, class)),
        )
        .collect()
}

/// The compilation of one direction: classes and port classes so far, and their entries.
struct Tables<'e> {
    endpoint: &'e str,
    direction: Direction,
    ending: Ending,
    limits: TableLimits,
    port_functions: Interner<Pieces<PolicyVerdict>>,
    classes: Interner<ClassTable>,
    out: CompiledDirection,
}

impl Tables<'_> {
    /// Fails if `entries` exceed the limit of `table`.
    fn check(&self, table: &'static str, entries: usize, limit: usize) -> Result<(), CompileError> {
        if entries > limit {
            return Err(CompileError::TooLarge {
                endpoint: self.endpoint.to_owned(),
                direction: self.direction,
                table,
                limit,
            });
        }
        Ok(())
    }

    /// Adds the address entries of `family` for the local addresses `space` (and, for any
    /// local address, the local classes).
    fn family(
        &mut self,
        ctx: &PolicyContext<'_>,
        steps: &[Step],
        family: Family,
        space: LocalSpace<'_>,
    ) -> Result<(), CompileError> {
        let views: Vec<View<'_>> = steps
            .iter()
            .filter_map(|step| {
                let Some(conditions) = &step.conditions else {
                    let (remote, local) = (
                        Remote::Everywhere(PortCondition::NONE),
                        Local::Fixed(PortCondition::NONE),
                    );
                    return Some(View {
                        step,
                        remote,
                        local,
                    });
                };
                if !conditions.admits_family(family) {
                    return None;
                }
                let remote = remote_side(ctx, &conditions.remote, family)?;
                let local = if conditions.local.depends_on_address() {
                    Local::PerAddress(conditions.local.addresses(family), &conditions.local)
                } else {
                    Local::Fixed(conditions.local.ports(std::iter::empty()))
                };
                Some(View {
                    step,
                    remote,
                    local,
                })
            })
            .collect();

        // Group the local addresses (or, for any local address, the intervals where the local
        // sides are the same) by what the address-dependent local sides make of them.
        let spans: Vec<(u128, u128)> = match space {
            LocalSpace::Addresses(addresses) => addresses.iter().map(|&a| (a, a)).collect(),
            LocalSpace::Anywhere => local_intervals(ctx, &views, family),
        };
        let mut local_ports: Interner<Option<PortCondition>> = Interner::default();
        // Each group: its signature, and its addresses (or intervals) as spans.
        type Spans = Vec<(u128, u128)>;
        let mut groups: Vec<(Vec<u32>, Spans)> = Vec::new();
        let mut group_of: HashMap<Vec<u32>, usize> = HashMap::new();
        for &(lo, hi) in &spans {
            let signature: Vec<u32> = views
                .iter()
                .filter_map(|view| match &view.local {
                    Local::Fixed(_) => None,
                    Local::PerAddress(set, side) => Some(
                        local_ports
                            .intern(local_side(ctx, set.as_ref(), side, family, lo))
                            .0,
                    ),
                })
                .collect();
            let group = *group_of.entry(signature.clone()).or_insert_with(|| {
                groups.push((signature, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push((lo, hi));
        }

        let mut local_pieces: Vec<(u128, u128, u32)> = Vec::new();
        for (local_class, (signature, group)) in (0u32..).zip(&groups) {
            let mut per_address = signature
                .iter()
                .map(|&id| local_ports.values[id as usize].as_ref());
            let locals: Vec<Option<&PortCondition>> = views
                .iter()
                .map(|view| match &view.local {
                    Local::Fixed(ports) => Some(ports),
                    Local::PerAddress(..) => per_address.next().flatten(),
                })
                .collect();
            let classes = self.remote_classes(&views, &locals, family)?;
            let (default, exceptions) = lpm(&classes, family.width());
            let keys: Vec<u128> = match space {
                LocalSpace::Addresses(_) => group.iter().map(|&(address, _)| address).collect(),
                LocalSpace::Anywhere => {
                    local_pieces.extend(group.iter().map(|&(lo, hi)| (lo, hi, local_class)));
                    vec![u128::from(local_class)]
                }
            };
            let entries = match family {
                Family::V4 => self.out.addrs_v4.len(),
                Family::V6 => self.out.addrs_v6.len(),
            };
            self.check(
                "address",
                entries + keys.len() * (1 + exceptions.len()),
                self.limits.addrs,
            )?;
            for local in keys {
                match family {
                    Family::V4 => {
                        self.out
                            .addrs_v4
                            .extend(addr_entries::<4>(local, default, &exceptions))
                    }
                    Family::V6 => {
                        self.out
                            .addrs_v6
                            .extend(addr_entries::<16>(local, default, &exceptions))
                    }
                }
            }
        }
        if matches!(space, LocalSpace::Anywhere) {
            local_pieces.sort_unstable_by_key(|&(lo, _, _)| lo);
            let mut pieces: Pieces<u32> = Vec::new();
            for (lo, hi, class) in local_pieces {
                push_piece(&mut pieces, lo, hi, class);
            }
            let (default, exceptions) = lpm(&pieces, family.width());
            let entries = std::iter::once((0, 0, default)).chain(exceptions);
            match family {
                Family::V4 => self
                    .out
                    .locals_v4
                    .extend(entries.map(|(local, prefix, class)| LocalEntry {
                        local: value_bytes(local),
                        prefix,
                        class,
                    })),
                Family::V6 => self
                    .out
                    .locals_v6
                    .extend(entries.map(|(local, prefix, class)| LocalEntry {
                        local: value_bytes(local),
                        prefix,
                        class,
                    })),
            }
            let locals = self.out.locals_v4.len().max(self.out.locals_v6.len());
            self.check("local address", locals, self.limits.addrs)?;
        }
        Ok(())
    }

    /// The classes of the remote addresses, given the local side of each view (`None`: the
    /// view cannot match at these local addresses).
    fn remote_classes(
        &mut self,
        views: &[View<'_>],
        locals: &[Option<&PortCondition>],
        family: Family,
    ) -> Result<Pieces<u32>, CompileError> {
        let mut everywhere: Vec<(usize, &PortCondition)> = Vec::new();
        let mut atoms: Vec<(usize, &PortCondition)> = Vec::new();
        let mut sets: Vec<&Ranges> = Vec::new();
        for (index, (view, local)) in views.iter().zip(locals).enumerate() {
            if local.is_none() {
                continue;
            }
            match &view.remote {
                Remote::Everywhere(ports) => everywhere.push((index, ports)),
                Remote::Within(variants) => {
                    for (set, ports) in variants {
                        atoms.push((index, ports));
                        sets.push(set);
                    }
                }
            }
        }
        let (pieces, combinations) = partition(&sets, family.max());
        let mut class_of = Vec::with_capacity(combinations.len());
        for combination in &combinations {
            // Both lists are in step order; merge them.
            let mut merged = Vec::with_capacity(everywhere.len() + combination.len());
            let mut rest = combination.iter().map(|&k| atoms[k as usize]).peekable();
            for &fixed in &everywhere {
                while let Some(atom) = rest.next_if(|atom| atom.0 < fixed.0) {
                    merged.push(atom);
                }
                merged.push(fixed);
            }
            merged.extend(rest);
            let candidates: Vec<Candidate<'_>> = merged
                .into_iter()
                .filter_map(|(index, remote)| {
                    let step = views[index].step;
                    let local = locals[index]?;
                    let (sport, dport) = match self.direction {
                        Direction::Ingress => (remote, local),
                        Direction::Egress => (local, remote),
                    };
                    Some(Candidate {
                        step,
                        proto: step.conditions.as_ref().map(|c| &c.proto),
                        sport,
                        dport,
                    })
                })
                .collect();
            class_of.push(self.class(&candidates)?);
        }
        let mut classes = Vec::new();
        for (lo, hi, combination) in pieces {
            push_piece(&mut classes, lo, hi, class_of[combination]);
        }
        Ok(classes)
    }

    /// The class of remote addresses where `candidates` (in order) can match; a new class's
    /// protocol entries are added.
    fn class(&mut self, candidates: &[Candidate<'_>]) -> Result<u32, CompileError> {
        let mut marked = [false; 256];
        for candidate in candidates {
            if let Some(proto) = candidate.proto {
                proto.mark_protocols([candidate.sport, candidate.dport], &mut marked);
            }
        }
        // Protocols nobody named behave alike (whatever their ports); if every protocol is
        // named, each gets an entry.
        let other = (0..=255u8).find(|&p| !marked[usize::from(p)]).unwrap_or(0);
        let default = self.sport_function(candidates, other)?[0].2;
        let mut protocols = Vec::new();
        for proto in (0..=255u8).filter(|&p| marked[usize::from(p)]) {
            let function = self.sport_function(candidates, proto)?;
            if function != [(0, PORT_MAX, default)] {
                protocols.push((proto, function));
            }
        }
        let (class, new) = self.classes.intern(ClassTable { default, protocols });
        if new {
            let table = &self.classes.values[class as usize];
            let mut entries = vec![ProtoEntry {
                class,
                proto: None,
                sport: None,
                port_class: table.default,
            }];
            for (proto, function) in &table.protocols {
                let (default, exceptions) = lpm(function, 16);
                let entry = |sport, port_class| ProtoEntry {
                    class,
                    proto: Some(*proto),
                    sport,
                    port_class,
                };
                entries.push(entry(None, default));
                entries.extend(
                    exceptions.into_iter().map(|(sport, len, port_class)| {
                        entry(Some((sport as u16, len)), port_class)
                    }),
                );
            }
            self.check(
                "protocol",
                self.out.protos.len() + entries.len(),
                self.limits.protos,
            )?;
            self.out.protos.extend(entries);
        }
        Ok(class)
    }

    /// The port class per source port for packets of `proto`; a new port class's entries are
    /// added.
    fn sport_function(
        &mut self,
        candidates: &[Candidate<'_>],
        proto: u8,
    ) -> Result<Pieces<u32>, CompileError> {
        let matching: Vec<(&Step, Ranges, Ranges)> = candidates
            .iter()
            .filter_map(|c| {
                let types = match c.proto {
                    Some(condition) => condition.admits(proto)?,
                    None => Ranges::full(PORT_MAX),
                };
                let sports = c.sport.admits(proto)?;
                let dports = c.dport.admits(proto)?.intersect(&types);
                (!dports.is_empty()).then_some((c.step, sports, dports))
            })
            .collect();
        let mut starts: Vec<u128> = vec![0];
        for (_, sports, _) in &matching {
            for &(lo, hi) in sports.spans() {
                starts.push(lo);
                if hi < PORT_MAX {
                    starts.push(hi + 1);
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut pieces = Vec::new();
        for (i, &lo) in starts.iter().enumerate() {
            let hi = starts.get(i + 1).map_or(PORT_MAX, |next| next - 1);
            let steps: Vec<(&Step, &Ranges)> = matching
                .iter()
                .filter(|(_, sports, _)| sports.contains(lo))
                .map(|(step, _, dports)| (*step, dports))
                .collect();
            let (port_class, new) = self.port_functions.intern(paint(&steps, self.ending));
            if new {
                let (default, exceptions) =
                    lpm(&self.port_functions.values[port_class as usize], 16);
                let entry = |dport, verdict| PortEntry {
                    port_class,
                    dport,
                    verdict,
                };
                let entries: Vec<PortEntry> = std::iter::once(entry((0, 0), default))
                    .chain(
                        exceptions
                            .into_iter()
                            .map(|(dport, len, verdict)| entry((dport as u16, len), verdict)),
                    )
                    .collect();
                self.check(
                    "port",
                    self.out.ports.len() + entries.len(),
                    self.limits.ports,
                )?;
                self.out.ports.extend(entries);
            }
            push_piece(&mut pieces, lo, hi, port_class);
        }
        Ok(pieces)
    }
}
