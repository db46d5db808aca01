//! Layout versions of the pinned maps: the check before a pinned map is adopted, and the records
//! written after the object is loaded.
//!
//! Each map's definition carries a layout version (`calico_ebpf_common::maps`). The agent
//! records the version, kind and sizes of every map it pins in `cali_versions`. A later agent
//! adopts a pinned map only when it has the same version, kind and key and value sizes;
//! otherwise it refuses to start and names the map and both versions (migrating a map whose
//! layout changed is not built: `calico-loader cleanup` removes the old pins, and with them the
//! state they hold). Maps pinned before versions were recorded count as version 1, the first
//! layout.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::{MapError, MapInfo};
use calico_ebpf_common::{
    fill_nul_padded,
    maps::{self, MapDef, MapSpec, VersionRecord, Versions},
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
        "the map {name} pinned at {path} has layout version {found}, but this agent uses version \
         {wanted}: it was left by an incompatible version, and migrating it is not supported yet \
         (`calico-loader cleanup` removes it, and the state it holds)"
    )]
    Version {
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

/// The version records pinned under `layout`, by map name (empty when nothing is pinned, or
/// when the maps were pinned before versions were recorded).
pub fn recorded(layout: &PinLayout) -> Result<BTreeMap<String, VersionRecord>, VersionError> {
    let path = layout.map(Versions::DEF.name);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    check_layout(&Versions::DEF, &path, UNRECORDED_VERSION)?;
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

/// Refuses to adopt the map `def` pinned at `path` (if any) unless its recorded version, its
/// kind and its key and value sizes are this agent's.
pub fn check_pinned(
    def: &MapDef,
    path: &Path,
    records: &BTreeMap<String, VersionRecord>,
) -> Result<(), VersionError> {
    if !path.exists() {
        return Ok(());
    }
    let version = records
        .get(def.name)
        .map_or(UNRECORDED_VERSION, |record| record.version);
    if version != def.version {
        return Err(VersionError::Version {
            name: def.name,
            path: path.to_owned(),
            found: version,
            wanted: def.version,
        });
    }
    check_layout(def, path, version)
}

/// Refuses a pinned map whose kind or key and value sizes differ from `def`.
fn check_layout(def: &MapDef, path: &Path, version: u32) -> Result<(), VersionError> {
    let info = MapInfo::from_pin(path).map_err(|source| VersionError::Inspect {
        path: path.to_owned(),
        source,
    })?;
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

/// Records the version, kind and sizes of every map in the versions map (a handle on the
/// loaded object's `cali_versions`).
pub fn record(versions: &mut Handle<Versions>) -> Result<(), VersionError> {
    let name = Versions::DEF.name;
    for def in maps::ALL {
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
    fn a_missing_pin_is_no_error() {
        let def = maps::Endpoints::DEF;
        let path = Path::new("/nonexistent/cali_endpoints");
        assert!(check_pinned(&def, path, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn the_version_message_names_the_map_and_both_versions() {
        let error = VersionError::Version {
            name: "cali_conntrack",
            path: PathBuf::from("/sys/fs/bpf/calico/cali_conntrack"),
            found: 1,
            wanted: 2,
        };
        let text = error.to_string();
        assert!(text.contains("cali_conntrack"), "{text}");
        assert!(text.contains("version 1"), "{text}");
        assert!(text.contains("version 2"), "{text}");
    }
}
