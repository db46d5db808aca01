//! Rule ids: small, stable numbers for everything that can decide a packet's verdict (a policy
//! or profile rule, a tier's default action, the final deny), as the compiled policy carries
//! them ([`PolicyVerdict::rule`](calico_ebpf_common::PolicyVerdict)) and the rules map and rule
//! counters are indexed by them.
//!
//! A [`RuleRegistry`] hands out ids: the same rule with the same action keeps its id for as long
//! as it stays registered, so counters survive recompilation. Ids no compiled policy uses any
//! more are freed by [`RuleRegistry::sweep`] (mark and sweep: the caller lists the ids its
//! generations in force use) and may then be handed out again.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    fmt,
};

use calico_ebpf_common::{
    RuleInfo, direction, fill_nul_padded,
    maps::{self, MapSpec},
    rule_kind, verdict_action,
};

use super::policy::{PolicyId, PolicyStage};
use crate::datastore::Action;

/// [`RuleInfo::action`] of a Log rule.
pub const ACTION_LOG: u8 = 3;
/// [`RuleInfo::action`] of a Pass rule (or of a tier whose default action is Pass).
pub const ACTION_PASS: u8 = 4;

/// A direction of traffic, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the endpoint: the remote side is the packet's source.
    Ingress,
    /// Out of the endpoint: the remote side is the packet's destination.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The [`calico_ebpf_common::direction`] value.
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => direction::INGRESS,
            Direction::Egress => direction::EGRESS,
        }
    }

    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleRef {
    /// Rule `index` of a policy's rules for `direction`. The tier is part of the identity: a
    /// policy moved to another tier gets new ids.
    PolicyRule {
        tier: String,
        policy: PolicyId,
        direction: Direction,
        index: u32,
        /// The kind of policy it is (part of the identity, as a policy's kind cannot change
        /// without its rules meaning something else).
        stage: PolicyStage,
    },
    /// The default action of `tier`, when none of its policies' rules decided.
    TierDefault { tier: String, direction: Direction },
    /// Rule `index` of a profile's rules for `direction`.
    ProfileRule {
        profile: String,
        direction: Direction,
        index: u32,
    },
    /// The deny after the profiles: nothing decided.
    NoMatch { direction: Direction },
    /// The allow at the end of a host endpoint's policy for forwarded traffic: no
    /// apply-on-forward (or pre-DNAT) policy decided.
    ForwardDefault { direction: Direction },
    /// The end of a host endpoint's untracked policy: no `doNotTrack` policy decided, the
    /// packet goes on to conntrack and the endpoint's other policy.
    UntrackedDefault { direction: Direction },
}

impl RuleRef {
    /// The direction it applies to.
    pub fn direction(&self) -> Direction {
        match self {
            RuleRef::PolicyRule { direction, .. }
            | RuleRef::TierDefault { direction, .. }
            | RuleRef::ProfileRule { direction, .. }
            | RuleRef::NoMatch { direction }
            | RuleRef::ForwardDefault { direction }
            | RuleRef::UntrackedDefault { direction } => *direction,
        }
    }

    /// The action of an ending (what decides when no rule did): Allow for
    /// [`RuleRef::ForwardDefault`], Pass (no verdict) for [`RuleRef::UntrackedDefault`], Deny
    /// otherwise.
    pub fn ending_action(&self) -> Action {
        match self {
            RuleRef::ForwardDefault { .. } => Action::Allow,
            RuleRef::UntrackedDefault { .. } => Action::Pass,
            _ => Action::Deny,
        }
    }

    /// The [`rule_kind`] value.
    pub fn kind(&self) -> u8 {
        match self {
            RuleRef::PolicyRule { .. } => rule_kind::POLICY_RULE,
            RuleRef::TierDefault { .. } => rule_kind::TIER_DEFAULT,
            RuleRef::ProfileRule { .. } => rule_kind::PROFILE_RULE,
            RuleRef::NoMatch { .. } => rule_kind::NO_MATCH,
            RuleRef::ForwardDefault { .. } => rule_kind::FORWARD_DEFAULT,
            RuleRef::UntrackedDefault { .. } => rule_kind::UNTRACKED_DEFAULT,
        }
    }

    /// The tier, for policy rules and tier defaults.
    pub fn tier(&self) -> Option<&str> {
        match self {
            RuleRef::PolicyRule { tier, .. } | RuleRef::TierDefault { tier, .. } => Some(tier),
            RuleRef::ProfileRule { .. }
            | RuleRef::NoMatch { .. }
            | RuleRef::ForwardDefault { .. }
            | RuleRef::UntrackedDefault { .. } => None,
        }
    }

    /// The policy or profile as `NetworkPolicy:namespace/name`, `GlobalNetworkPolicy:name` or
    /// `Profile:name`; `None` for tier defaults and the final deny.
    pub fn owner(&self) -> Option<String> {
        match self {
            RuleRef::PolicyRule { policy, .. } => {
                Some(format!("{}:{policy}", policy.kind.as_str()))
            }
            RuleRef::ProfileRule { profile, .. } => Some(format!("Profile:{profile}")),
            RuleRef::TierDefault { .. }
            | RuleRef::NoMatch { .. }
            | RuleRef::ForwardDefault { .. }
            | RuleRef::UntrackedDefault { .. } => None,
        }
    }

    /// The kind of policy of a policy rule (normal for the others).
    pub fn stage(&self) -> PolicyStage {
        match self {
            RuleRef::PolicyRule { stage, .. } => *stage,
            _ => PolicyStage::Normal,
        }
    }

    /// The rule's index in its policy's or profile's list (0 for the others).
    pub fn index(&self) -> u32 {
        match self {
            RuleRef::PolicyRule { index, .. } | RuleRef::ProfileRule { index, .. } => *index,
            RuleRef::TierDefault { .. }
            | RuleRef::NoMatch { .. }
            | RuleRef::ForwardDefault { .. }
            | RuleRef::UntrackedDefault { .. } => 0,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::PolicyRule {
                tier,
                direction,
                index,
                ..
            } => {
                write!(
                    f,
                    "{} {direction} rule {index} (tier {tier})",
                    self.owner().unwrap_or_default()
                )
            }
            RuleRef::ProfileRule {
                direction, index, ..
            } => {
                write!(
                    f,
                    "{} {direction} rule {index}",
                    self.owner().unwrap_or_default()
                )
            }
            RuleRef::TierDefault { tier, direction } => {
                write!(f, "default action of tier {tier} ({direction})")
            }
            RuleRef::NoMatch { direction } => write!(f, "no rule allowed it ({direction})"),
            RuleRef::ForwardDefault { direction } => write!(
                f,
                "no apply-on-forward policy decided: forwarded traffic is allowed ({direction})"
            ),
            RuleRef::UntrackedDefault { direction } => write!(
                f,
                "no untracked policy decided: on to conntrack and the other policy ({direction})"
            ),
        }
    }
}

/// The [`RuleInfo::action`] code of `action`: [`verdict_action`] values, [`ACTION_LOG`],
/// [`ACTION_PASS`].
pub fn action_code(action: Action) -> u8 {
    match action {
        Action::Allow => verdict_action::ALLOW,
        Action::Deny => verdict_action::DENY,
        Action::Log => ACTION_LOG,
        Action::Pass => ACTION_PASS,
    }
}

/// What a registered id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    pub rule: RuleRef,
    pub action: Action,
}

impl RuleEntry {
    /// The action as a [`RuleInfo::action`] code (1 allow, 2 deny, 3 log, 4 pass).
    pub fn action_code(&self) -> u8 {
        action_code(self.action)
    }
}

impl fmt::Display for RuleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.rule)
    }
}

/// Every rule id of a [`RuleRegistry`] is in use: the rule could not be given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no rule id left: all {capacity} are in use")]
pub struct RuleIdsExhausted {
    /// How many ids the registry hands out.
    pub capacity: u32,
}

/// Assigns rule ids (1 up to a capacity; 0 means "none") to rules and keeps them stable.
#[derive(Clone, Debug)]
pub struct RuleRegistry {
    capacity: u32,
    ids: HashMap<(RuleRef, Action), u32>,
    /// Indexed by id; slot 0 is never used.
    entries: Vec<Option<RuleEntry>>,
    /// Freed ids, lowest first.
    free: BinaryHeap<Reverse<u32>>,
}

impl Default for RuleRegistry {
    /// A registry with as many ids as the rule counters array holds (its slot 0 stays unused).
    fn default() -> Self {
        Self::new(<maps::RuleCounters as MapSpec>::DEF.max_entries - 1)
    }
}

impl RuleRegistry {
    /// A registry handing out ids 1 to `capacity`.
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            ids: HashMap::new(),
            entries: vec![None],
            free: BinaryHeap::new(),
        }
    }

    /// How many ids it can hand out.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many ids are in use.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is in use.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of `rule` with `action`: the one it already has, or a new one.
    ///
    /// # Errors
    ///
    /// [`RuleIdsExhausted`] when every id is in use.
    pub fn id(&mut self, rule: RuleRef, action: Action) -> Result<u32, RuleIdsExhausted> {
        let key = (rule, action);
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = match self.free.pop() {
            Some(Reverse(id)) => id,
            None => {
                let next = u32::try_from(self.entries.len())
                    .ok()
                    .filter(|&id| id <= self.capacity);
                let Some(id) = next else {
                    return Err(RuleIdsExhausted {
                        capacity: self.capacity,
                    });
                };
                self.entries.push(None);
                id
            }
        };
        let (rule, action) = key.clone();
        self.entries[id as usize] = Some(RuleEntry { rule, action });
        self.ids.insert(key, id);
        Ok(id)
    }

    /// What `id` stands for.
    pub fn get(&self, id: u32) -> Option<&RuleEntry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }

    /// Every id in use, with its entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &RuleEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, entry)| Some((u32::try_from(id).ok()?, entry.as_ref()?)))
    }

    /// Keeps the ids for which `keep` is true and frees the others; returns the freed ids in
    /// order.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> Vec<u32> {
        let mut freed = Vec::new();
        for (id, slot) in self.entries.iter_mut().enumerate() {
            let Ok(id) = u32::try_from(id) else { break };
            if slot.is_some() && !keep(id) {
                if let Some(entry) = slot.take() {
                    self.ids.remove(&(entry.rule, entry.action));
                }
                self.free.push(Reverse(id));
                freed.push(id);
            }
        }
        freed
    }

    /// Frees every id not in `live` (the ids the compiled policies in force use); returns the
    /// freed ids in order.
    pub fn sweep(&mut self, live: &HashSet<u32>) -> Vec<u32> {
        self.retain(|id| live.contains(&id))
    }

    /// The record the rules map holds for `id`.
    pub fn info(&self, id: u32) -> Option<RuleInfo> {
        let entry = self.get(id)?;
        let rule = &entry.rule;
        Some(RuleInfo {
            kind: rule.kind(),
            action: entry.action_code(),
            direction: rule.direction().code(),
            stage: rule.stage().code(),
            index: rule.index(),
            tier: fill_nul_padded(rule.tier().unwrap_or_default().as_bytes()),
            policy: fill_nul_padded(rule.owner().unwrap_or_default().as_bytes()),
        })
    }

    /// A line for people: `rule 7: Allow: GlobalNetworkPolicy:web ingress rule 0 (tier default)`.
    pub fn describe(&self, id: u32) -> String {
        match self.get(id) {
            Some(entry) => format!("rule {id}: {entry}"),
            None => format!("rule {id}: unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::Kind;

    fn policy_rule(name: &str, index: u32) -> RuleRef {
        RuleRef::PolicyRule {
            tier: "default".into(),
            policy: PolicyId {
                kind: Kind::NetworkPolicy,
                namespace: Some("prod".into()),
                name: name.into(),
            },
            direction: Direction::Ingress,
            index,
            stage: PolicyStage::Normal,
        }
    }

    #[test]
    fn ids_are_stable_and_reused_after_a_sweep() {
        let mut registry = RuleRegistry::new(3);
        let a = registry.id(policy_rule("a", 0), Action::Allow).expect("id");
        let b = registry.id(policy_rule("a", 1), Action::Deny).expect("id");
        assert_eq!((a, b), (1, 2));
        assert_eq!(
            registry.id(policy_rule("a", 0), Action::Allow).expect("id"),
            a,
            "same rule, same id"
        );
        let changed = registry.id(policy_rule("a", 0), Action::Deny).expect("id");
        assert_eq!(changed, 3, "a rule whose action changed is another rule");
        assert!(matches!(
            registry.id(
                RuleRef::NoMatch {
                    direction: Direction::Egress
                },
                Action::Deny
            ),
            Err(RuleIdsExhausted { capacity: 3 })
        ));
        assert_eq!(registry.sweep(&HashSet::from([b])), [1, 3]);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.get(a), None);
        let reused = registry
            .id(
                RuleRef::NoMatch {
                    direction: Direction::Egress,
                },
                Action::Deny,
            )
            .expect("id");
        assert_eq!(reused, 1, "freed ids are handed out again, lowest first");
        assert_eq!(
            registry.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn info_names_tier_policy_and_action() {
        let mut registry = RuleRegistry::default();
        let id = registry.id(policy_rule("web", 4), Action::Log).expect("id");
        let info = registry.info(id).expect("registered");
        assert_eq!(
            (info.kind, info.action, info.direction, info.index),
            (rule_kind::POLICY_RULE, ACTION_LOG, 0, 4)
        );
        assert_eq!(info.tier_bytes(), b"default");
        assert_eq!(info.policy_bytes(), b"NetworkPolicy:prod/web");
        assert_eq!(
            registry.describe(id),
            "rule 1: Log: NetworkPolicy:prod/web ingress rule 4 (tier default)"
        );

        let profile = RuleRef::ProfileRule {
            profile: "kns.prod".into(),
            direction: Direction::Egress,
            index: 0,
        };
        let id = registry.id(profile, Action::Pass).expect("id");
        let info = registry.info(id).expect("registered");
        assert_eq!(
            (info.kind, info.action, info.direction),
            (rule_kind::PROFILE_RULE, ACTION_PASS, 1)
        );
        assert_eq!(
            (info.tier_bytes(), info.policy_bytes()),
            (&b""[..], &b"Profile:kns.prod"[..])
        );

        let id = registry.id(
            RuleRef::TierDefault {
                tier: "security".into(),
                direction: Direction::Ingress,
            },
            Action::Deny,
        );
        let info = registry.info(id.expect("id")).expect("registered");
        assert_eq!(
            (info.kind, info.action, info.tier_bytes()),
            (rule_kind::TIER_DEFAULT, 2, &b"security"[..])
        );
        assert_eq!(registry.info(99), None);
        assert_eq!(registry.describe(99), "rule 99: unknown");
    }
}
