//! Layout versions of the pinned maps: what a new agent does with each map an earlier agent
//! pinned, and the records written once a map is in place.
//!
//! Each map's definition carries a layout version and what an upgrade does with it
//! (`calico_ebpf_common::maps`: [`OnUpgrade`]). The agent records the version, kind and sizes
//! of every map it pins in `cali_versions`. A later agent:
//!
//! - **adopts** a pinned map of its own version, kind, sizes and number of entries;
//! - **replaces** one of an older version, or of another number of entries (a new
//!   `BPFMapSizeConntrack`): the new map is created beside it and takes its pin once the
//!   programs have moved ([`super::upgrade`]); a map whose state must be carried over
//!   ([`OnUpgrade::Carry`]) is replaced only when this agent can convert its entries;
//! - **refuses** a map of a newer version (a downgrade: this agent cannot read what a newer
//!   one wrote, as Calico refuses downgrades), and a map whose kind or sizes differ from those
//!   its version stands for (it was not left by a release of this agent).
//!
//! Maps pinned before versions were recorded count as version 1, the first layout.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::{MapError, MapInfo};
use calico_ebpf_common::{
    fill_nul_padded,
    maps::{self, MapDef, MapSpec, OnUpgrade, VersionRecord, Versions},
    until_nul,
};

use super::{
    bpffs::PinLayout,
    handles::{self, Handle, HandleError},
};

/// The version of maps pinned before the agent recorded versions.
const UNRECORDED_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error(
        "the map {name} pinned at {path} has layout version {found}, newer than this agent's \
         version {wanted}: it was left by a newer agent, and downgrades are refused (run the \
         newer agent, or `calico-loader cleanup` to remove its maps and the state they hold)"
    )]
    Version {
        name: &'static str,
        path: PathBuf,
        found: u32,
        wanted: u32,
    },
    #[error(
        "the map {name} pinned at {path} has layout version {found}, and this agent (version \
         {wanted}) cannot convert its entries: upgrade through a release that can, or run \
         `calico-loader cleanup` (which removes it, and the state it holds)"
    )]
    NoConversion {
        name: &'static str,
        path: PathBuf,
        found: u32,
        wanted: u32,
    },
    #[error(
        "the map {name} pinned at {path} (layout version {version}) is a {found_kind} map with \
         {found_key}-byte keys and {found_value}-byte values, but this agent expects a {kind} map \
         with {key} and {value}: it was left by an incompatible version \
         (`calico-loader cleanup` removes it)"
    )]
    Layout {
        name: &'static str,
        path: PathBuf,
        version: u32,
        found_kind: String,
        found_key: u32,
        found_value: u32,
        kind: &'static str,
        key: u32,
        value: u32,
    },
    #[error(
        "the pinned maps need an upgrade ({maps}), which only the agent does: start the agent \
         of this version first"
    )]
    UpgradeNeeded { maps: String },
    #[error("inspecting the map pinned at {path}: {source}")]
    Inspect { path: PathBuf, source: MapError },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error(transparent)]
    Handle(#[from] HandleError),
}

/// What a new agent does with one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAction {
    /// Nothing is pinned: the map is created and pinned.
    Create,
    /// The pinned map is this agent's: it is reused, with its contents.
    Adopt,
    /// The pinned map is replaced by a new one ([`super::upgrade`]).
    Replace(Replacement),
}

/// Why and how a pinned map is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The pinned map's layout version.
    pub from_version: u32,
    /// The pinned map's number of entries.
    pub from_entries: u32,
    /// What happens to its contents.
    pub how: OnUpgrade,
}

/// What happens to every map of the object, in [`maps::ALL`] order.
#[derive(Clone, Debug)]
pub struct MapPlan {
    pub maps: Vec<(MapDef, MapAction)>,
}

impl MapPlan {
    /// The maps to replace, with their replacements.
    pub fn replacements(&self) -> impl Iterator<Item = (&MapDef, &Replacement)> {
        self.maps.iter().filter_map(|(def, action)| match action {
            MapAction::Replace(replacement) => Some((def, replacement)),
            _ => None,
        })
    }

    /// Whether any map is replaced.
    pub fn is_upgrade(&self) -> bool {
        self.replacements().next().is_some()
    }

    /// One line naming each replaced map, its old and new version, and what happens to its
    /// contents.
    pub fn describe(&self) -> String {
        self.replacements()
            .map(|(def, r)| {
                if r.from_version == def.version {
                    format!(
                        "{} {} → {} entries ({})",
                        def.name,
                        r.from_entries,
                        def.max_entries,
                        r.how.as_str()
                    )
                } else {
                    format!(
                        "{} version {} → {} ({})",
                        def.name,
                        r.from_version,
                        def.version,
                        r.how.as_str()
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Decides what happens to every map, from what is pinned under `layout`. `entries` gives
/// the number of entries this agent wants for a map (its definition's, or a configured size);
/// `can_convert(def, version)` says whether entries of `version` can be carried into `def`.
pub fn plan(
    layout: &PinLayout,
    entries: impl Fn(&MapDef) -> u32,
    can_convert: impl Fn(&MapDef, u32) -> bool,
) -> Result<MapPlan, VersionError> {
    let records = recorded(layout)?;
    let mut planned = Vec::with_capacity(maps::ALL.len());
    for def in maps::ALL {
        let mut def = *def;
        def.max_entries = entries(&def);
        let action = action(&def, &layout.map(def.name), &records, &can_convert)?;
        planned.push((def, action));
    }
    Ok(MapPlan { maps: planned })
}

/// What happens to the map `def` pinned (or not) at `path`.
fn action(
    def: &MapDef,
    path: &Path,
    records: &BTreeMap<String, VersionRecord>,
    can_convert: &impl Fn(&MapDef, u32) -> bool,
) -> Result<MapAction, VersionError> {
    if !path.exists() {
        return Ok(MapAction::Create);
    }
    let version = records
        .get(def.name)
        .map_or(UNRECORDED_VERSION, |record| record.version);
    let info = inspect(path)?;
    let replace = |how| {
        MapAction::Replace(Replacement {
            from_version: version,
            from_entries: info.max_entries(),
            how,
        })
    };
    if version > def.version {
        return Err(VersionError::Version {
            name: def.name,
            path: path.to_owned(),
            found: version,
            wanted: def.version,
        });
    }
    if version < def.version {
        // The old layout is not this agent's: its kind and sizes are not checked against
        // this definition, and its contents are carried only through a conversion.
        return match def.on_upgrade {
            OnUpgrade::Carry if !can_convert(def, version) => Err(VersionError::NoConversion {
                name: def.name,
                path: path.to_owned(),
                found: version,
                wanted: def.version,
            }),
            how => Ok(replace(how)),
        };
    }
    check_layout(def, path, version, &info)?;
    if info.max_entries() != def.max_entries && def.kind != maps::MapKind::RingBuf {
        return Ok(replace(def.on_upgrade));
    }
    Ok(MapAction::Adopt)
}

/// The version records pinned under `layout`, by map name (empty when nothing is pinned, or
/// when the maps were pinned before versions were recorded).
pub fn recorded(layout: &PinLayout) -> Result<BTreeMap<String, VersionRecord>, VersionError> {
    let path = layout.map(Versions::DEF.name);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    check_layout(&Versions::DEF, &path, UNRECORDED_VERSION, &inspect(&path)?)?;
    let name = Versions::DEF.name;
    let map = handles::open_pinned::<Versions>(layout)?;
    let mut records = BTreeMap::new();
    for entry in map.iter() {
        let (key, record) = entry.map_err(|source| VersionError::Map { name, source })?;
        records.insert(
            String::from_utf8_lossy(until_nul(&key)).into_owned(),
            record,
        );
    }
    Ok(records)
}

fn inspect(path: &Path) -> Result<MapInfo, VersionError> {
    MapInfo::from_pin(path).map_err(|source| VersionError::Inspect {
        path: path.to_owned(),
        source,
    })
}

/// Refuses a pinned map whose kind or key and value sizes differ from `def`.
fn check_layout(
    def: &MapDef,
    path: &Path,
    version: u32,
    info: &MapInfo,
) -> Result<(), VersionError> {
    let found_kind = info
        .map_type()
        .map(|kind| format!("{kind:?}"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let same_kind = info
        .map_type()
        .is_ok_and(|kind| kind as u32 == def.kind as u32);
    if !same_kind || (info.key_size(), info.value_size()) != (def.key_size, def.value_size) {
        return Err(VersionError::Layout {
            name: def.name,
            path: path.to_owned(),
            version,
            found_kind,
            found_key: info.key_size(),
            found_value: info.value_size(),
            kind: def.kind.as_str(),
            key: def.key_size,
            value: def.value_size,
        });
    }
    Ok(())
}

/// Records the version, kind and sizes of the maps `defs` in the versions map (a handle on the
/// loaded object's `cali_versions`, or on its pin).
pub fn record<'a>(
    versions: &mut Handle<Versions>,
    defs: impl IntoIterator<Item = &'a MapDef>,
) -> Result<(), VersionError> {
    let name = Versions::DEF.name;
    for def in defs {
        let record = VersionRecord {
            version: def.version,
            key_size: def.key_size,
            value_size: def.value_size,
            kind: def.kind as u32,
        };
        versions
            .insert(fill_nul_padded(def.name.as_bytes()), record, 0)
            .map_err(|source| VersionError::Map { name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_created() {
        let def = maps::Endpoints::DEF;
        let path = Path::new("/nonexistent/cali_endpoints");
        let action = action(&def, path, &BTreeMap::new(), &|_, _| false);
        assert_eq!(action.ok(), Some(MapAction::Create));
    }

    #[test]
    fn the_version_message_names_the_map_and_both_versions() {
        let error = VersionError::Version {
            name: "cali_conntrack",
            path: PathBuf::from("/sys/fs/bpf/calico/cali_conntrack"),
            found: 3,
            wanted: 2,
        };
        let text = error.to_string();
        assert!(text.contains("cali_conntrack"), "{text}");
        assert!(text.contains("version 3"), "{text}");
        assert!(text.contains("version 2"), "{text}");
        assert!(text.contains("downgrade"), "{text}");
    }

    #[test]
    fn the_plan_names_each_replaced_map() {
        let mut conntrack = maps::Conntrack::DEF;
        conntrack.max_entries = 1024;
        let plan = MapPlan {
            maps: vec![
                (maps::Endpoints::DEF, MapAction::Adopt),
                (
                    maps::Counters::DEF,
                    MapAction::Replace(Replacement {
                        from_version: maps::Counters::DEF.version - 1,
                        from_entries: maps::Counters::DEF.max_entries,
                        how: OnUpgrade::Reset,
                    }),
                ),
                (
                    conntrack,
                    MapAction::Replace(Replacement {
                        from_version: conntrack.version,
                        from_entries: 2048,
                        how: OnUpgrade::Carry,
                    }),
                ),
            ],
        };
        assert!(plan.is_upgrade());
        let text = plan.describe();
        assert!(
            text.contains(&format!(
                "cali_counters version {} → {} (reset)",
                maps::Counters::DEF.version - 1,
                maps::Counters::DEF.version
            )),
            "{text}"
        );
        assert!(
            text.contains("cali_conntrack 2048 → 1024 entries (carry)"),
            "{text}"
        );
        assert!(!text.contains("cali_endpoints"), "{text}");
    }
}
