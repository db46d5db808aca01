//! Upgrades of the pinned maps, make-before-break: a map whose layout version or size changed
//! is replaced without a moment where traffic meets an empty or half-written map.
//!
//! 1. **Load** ([`super::object`]): every replaced map ([`versions::MapPlan`]) is created
//!    beside the old one, pinned under `<pin root>/upgrade/`. The old programs keep running
//!    with the old maps.
//! 2. **Carry** ([`Upgrade::carry`], at once): the entries of maps whose state must survive
//!    (the tracked flows) are copied into the new map, converted from the old layout.
//! 3. **Fill and move**: the agent's first apply writes the maps it owns from the datastore
//!    into the new maps, then attaches the new programs interface by interface (TCX puts the
//!    new program first, then the old link goes).
//! 4. **Finish** ([`Upgrade::finish`], after that apply): the carried maps are copied again
//!    (flows the old programs created or saw meanwhile), each new map takes its old one's pin
//!    by an atomic rename, and its version is recorded. The old maps go with the last program
//!    that used them.
//!
//! An agent that dies before step 4 leaves the old pins and records in place: the next one
//! starts the upgrade over (the staged maps are removed first).

use std::{fs, io, path::PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use calico_ebpf_common::{
    ConntrackKey, ConntrackValue,
    maps::{Conntrack, MapDef, MapSpec, OnUpgrade, Versions},
};

use super::{
    bpffs::PinLayout,
    handles,
    versions::{self, MapPlan, Replacement, VersionError},
};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrading {name}: opening the map pinned at {path}: {source}")]
    Open {
        name: &'static str,
        path: PathBuf,
        source: MapError,
    },
    #[error("upgrading {name}: reading the old map: {source}")]
    Read {
        name: &'static str,
        source: MapError,
    },
    #[error("upgrading {name}: moving the new map's pin from {from} to {to}: {source}")]
    Rename {
        name: &'static str,
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("upgrading: {path}: {source}")]
    Staging { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// Whether entries of `def` at layout `version` can be carried into this agent's layout.
pub fn can_convert(def: &MapDef, version: u32) -> bool {
    def.name == Conntrack::DEF.name && conntrack_converter(version).is_some()
}

/// Removes the maps a failed earlier upgrade staged, and makes room for this one's.
pub fn prepare_staging(layout: &PinLayout, plan: &MapPlan) -> Result<(), UpgradeError> {
    let dir = layout.upgrade_dir();
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(UpgradeError::Staging { path: dir, source }),
    }
    if plan.is_upgrade() {
        fs::create_dir_all(&dir).map_err(|source| UpgradeError::Staging { path: dir, source })?;
    }
    Ok(())
}

/// What one carry pass did to one map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Entries written into the new map.
    pub copied: u64,
    /// Entries the new map already had at least as recent a copy of.
    pub kept: u64,
    /// Entries that could not be written (the new map is full).
    pub lost: u64,
}

/// An upgrade under way: the maps being replaced, until [`Upgrade::finish`].
#[derive(Debug)]
pub struct Upgrade {
    layout: PinLayout,
    replaced: Vec<(MapDef, Replacement)>,
}

impl Upgrade {
    /// The upgrade `plan` describes, once the object is loaded (the new maps are staged).
    /// `None` when nothing is replaced.
    pub fn new(layout: &PinLayout, plan: &MapPlan) -> Option<Self> {
        let replaced: Vec<_> = plan.replacements().map(|(d, r)| (*d, *r)).collect();
        (!replaced.is_empty()).then(|| Self {
            layout: layout.clone(),
            replaced,
        })
    }

    /// Copies the entries of the carried maps from the old maps into the new ones.
    pub fn carry(&self) -> Result<Vec<(&'static str, Carried)>, UpgradeError> {
        let mut done = Vec::new();
        for (def, replacement) in &self.replaced {
            if replacement.how != OnUpgrade::Carry {
                continue;
            }
            let carried = if def.name == Conntrack::DEF.name {
                self.carry_conntrack(replacement.from_version)?
            } else {
                // `versions::plan` replaces a carried map only when it can be converted.
                Carried::default()
            };
            done.push((def.name, carried));
        }
        Ok(done)
    }

    /// Copies again, gives each new map its old one's pin and records its version.
    pub fn finish(self) -> Result<Vec<(&'static str, Carried)>, UpgradeError> {
        let carried = self.carry()?;
        let mut records =
            handles::open_pinned::<Versions>(&self.layout).map_err(VersionError::from)?;
        for (def, _) in &self.replaced {
            let from = self.layout.staged_map(def.name);
            let to = self.layout.map(def.name);
            fs::rename(&from, &to).map_err(|source| UpgradeError::Rename {
                name: def.name,
                from,
                to,
                source,
            })?;
            versions::record(&mut records, [def])?;
        }
        let dir = self.layout.upgrade_dir();
        fs::remove_dir(&dir).map_err(|source| UpgradeError::Staging { path: dir, source })?;
        Ok(carried)
    }

    /// Copies the tracked flows, converted from layout `from_version`. An entry the new map
    /// already holds is overwritten only when the old map saw the flow more recently.
    fn carry_conntrack(&self, from_version: u32) -> Result<Carried, UpgradeError> {
        let name = Conntrack::DEF.name;
        let Some(convert) = conntrack_converter(from_version) else {
            return Ok(Carried::default());
        };
        let old_path = self.layout.map(name);
        let old = MapData::from_pin(&old_path)
            .and_then(Map::from_map_data)
            .map_err(|source| UpgradeError::Open {
                name,
                path: old_path,
                source,
            })?;
        let new_path = self.layout.staged_map(name);
        let new = MapData::from_pin(&new_path)
            .and_then(Map::from_map_data)
            .map_err(|source| UpgradeError::Open {
                name,
                path: new_path.clone(),
                source,
            })?;
        let mut new: HashMap<MapData, ConntrackKey, ConntrackValue> = HashMap::try_from(new)
            .map_err(|source| UpgradeError::Open {
                name,
                path: new_path,
                source,
            })?;
        convert(old, &mut new)
    }
}

/// Copies the entries of an old conntrack map (opened from its pin) into the new one.
type ConntrackConverter =
    fn(Map, &mut HashMap<MapData, ConntrackKey, ConntrackValue>) -> Result<Carried, UpgradeError>;

/// The converter from conntrack layout `version` to this agent's, if there is one.
fn conntrack_converter(version: u32) -> Option<ConntrackConverter> {
    if version == Conntrack::DEF.version {
        return Some(copy_conntrack::<ConntrackValue>);
    }
    #[cfg(feature = "next-layout")]
    if version == previous::CONNTRACK_VERSION {
        return Some(copy_conntrack::<previous::ConntrackValueV1>);
    }
    None
}

/// A conntrack value of some layout, convertible into this agent's.
trait ConntrackLayout: aya::Pod {
    fn into_current(self) -> ConntrackValue;
}

impl ConntrackLayout for ConntrackValue {
    fn into_current(self) -> ConntrackValue {
        self
    }
}

/// Copies every entry of `old` (values of layout `V`) into `new`, keeping a newer copy that
/// `new` already has.
fn copy_conntrack<V: ConntrackLayout>(
    old: Map,
    new: &mut HashMap<MapData, ConntrackKey, ConntrackValue>,
) -> Result<Carried, UpgradeError> {
    let name = Conntrack::DEF.name;
    let old: HashMap<MapData, ConntrackKey, V> =
        HashMap::try_from(old).map_err(|source| UpgradeError::Read { name, source })?;
    let mut carried = Carried::default();
    for entry in old.iter() {
        let (key, value) = match entry {
            Ok(entry) => entry,
            // An entry that expired (or was evicted) between listing and reading.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => return Err(UpgradeError::Read { name, source }),
        };
        let value = value.into_current();
        if let Ok(present) = new.get(&key, 0)
            && present.last_seen_ns >= value.last_seen_ns
        {
            carried.kept += 1;
            continue;
        }
        match new.insert(key, value, 0) {
            Ok(()) => carried.copied += 1,
            Err(_) => carried.lost += 1,
        }
    }
    Ok(carried)
}

/// The layouts the test-only `next-layout` build upgrades from: this project's current
/// conntrack value, as the previous version of that build's.
#[cfg(feature = "next-layout")]
mod previous {
    use calico_ebpf_common::ConntrackValue;

    use super::ConntrackLayout;

    /// The conntrack layout version before `next-layout`.
    pub const CONNTRACK_VERSION: u32 = 1;

    /// Conntrack value, layout version 1.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct ConntrackValueV1 {
        pub created_ns: u64,
        pub last_seen_ns: u64,
        pub packets_fwd: u64,
        pub packets_rev: u64,
        pub flags: u16,
        pub opener: u8,
        pub _pad: u8,
        pub egress_policy: u32,
        pub ingress_policy: u32,
        pub egress_rule: u32,
        pub ingress_rule: u32,
        pub _pad2: u32,
    }

    // SAFETY: plain old data, `repr(C)`, no padding beyond the explicit fields.
    unsafe impl aya::Pod for ConntrackValueV1 {}

    impl ConntrackLayout for ConntrackValueV1 {
        fn into_current(self) -> ConntrackValue {
            ConntrackValue {
                created_ns: self.created_ns,
                last_seen_ns: self.last_seen_ns,
                packets_fwd: self.packets_fwd,
                packets_rev: self.packets_rev,
                flags: self.flags,
                opener: self.opener,
                _pad: 0,
                egress_policy: self.egress_policy,
                ingress_policy: self.ingress_policy,
                egress_rule: self.egress_rule,
                ingress_rule: self.ingress_rule,
                _pad2: 0,
                // The field the new layout adds: a value that shows the entry was converted.
                next_layout_field: u64::from(CONNTRACK_VERSION),
            }
        }
    }
}
