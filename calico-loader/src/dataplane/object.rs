//! Loading the kernel object and adopting what an earlier agent pinned.
//!
//! The agent's object reuses the maps pinned under its pin root, so that forwarding state,
//! policy and tracked flows survive a restart or an upgrade; a pinned map whose layout this
//! version does not share is refused rather than misread. A private object, pinned nowhere,
//! serves the commands and tests that must not touch the host's dataplane. Removing the pins
//! (links and maps) is the other end of the same life cycle.

use aya::{Ebpf, EbpfLoader};
use calico_ebpf_common::maps::{self, Conntrack, Counters, Endpoints, MapSpec, Versions};

use super::{
    attach,
    bpffs::{BpffsError, PinLayout},
    error::DataplaneError,
    handles, versions,
};

/// The kernel programs, built for the BPF target by the build script.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calico-ebpf"));

/// The sizes of the maps the configuration sets (Felix's `BPFMapSize*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of the conntrack table (`BPFMapSizeConntrack`).
    pub conntrack: u32,
    /// Entries of the endpoint map (`BPFMapSizeIfState`): the workload interfaces this host
    /// can serve. The counters map has one more, for the interfaces without an endpoint.
    pub endpoints: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            conntrack: Conntrack::DEF.max_entries,
            endpoints: Endpoints::DEF.max_entries,
        }
    }
}

impl MapSizes {
    /// The sizes of the maps pinned under `layout`, each map's default where none is pinned
    /// (for commands that load the programs over a running agent's maps).
    pub fn pinned(layout: &PinLayout) -> Result<Self, DataplaneError> {
        let size = |name: &str, default: u32| -> Result<u32, DataplaneError> {
            let path = layout.map(name);
            if !path.exists() {
                return Ok(default);
            }
            aya::maps::MapInfo::from_pin(&path)
                .map(|info| info.max_entries())
                .map_err(|source| DataplaneError::InspectPin { path, source })
        };
        let defaults = Self::default();
        Ok(Self {
            conntrack: size(Conntrack::DEF.name, defaults.conntrack)?,
            endpoints: size(Endpoints::DEF.name, defaults.endpoints)?,
        })
    }
}

/// Loads the kernel object, reusing the maps pinned under `layout` (so that state survives an
/// agent restart) or creating and pinning them, with the default sizes.
pub fn load_object(layout: &PinLayout) -> Result<Ebpf, DataplaneError> {
    load_object_with(layout, MapSizes::default())
}

/// [`load_object`] with the map sizes `sizes`. A pinned map of another size is refused (the
/// programs attached keep the pinned one, and a new conntrack table would lose every tracked
/// flow), and so is a pinned map of another layout version, kind or size ([`versions`]).
pub fn load_object_with(layout: &PinLayout, sizes: MapSizes) -> Result<Ebpf, DataplaneError> {
    layout.prepare()?;
    let records = versions::recorded(layout)?;
    let mut loader = EbpfLoader::new();
    let sized = [
        (Conntrack::DEF.name, sizes.conntrack, "BPFMapSizeConntrack"),
        (Endpoints::DEF.name, sizes.endpoints, "BPFMapSizeIfState"),
        (
            Counters::DEF.name,
            sizes.endpoints.saturating_add(1),
            "BPFMapSizeIfState",
        ),
    ];
    for (name, entries, _) in sized {
        loader.map_max_entries(name, entries);
    }
    for def in maps::ALL {
        let path = layout.map(def.name);
        versions::check_pinned(def, &path, &records)?;
        loader.map_pin_path(def.name, path);
    }
    for (name, wanted, setting) in sized {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let info =
            aya::maps::MapInfo::from_pin(&path).map_err(|source| DataplaneError::InspectPin {
                path: path.clone(),
                source,
            })?;
        if info.max_entries() != wanted {
            return Err(DataplaneError::MapSize {
                name,
                setting,
                path,
                found: info.max_entries(),
                wanted,
            });
        }
    }
    let mut ebpf = loader.load(KERNEL_OBJECT)?;
    // The records are written whenever the object is loaded: a map created now gets its first
    // record, an adopted one keeps the version it was checked against.
    let mut records = handles::take::<Versions>(&mut ebpf)?;
    versions::record(&mut records)?;
    Ok(ebpf)
}

/// Loads the kernel object with maps of its own, pinned nowhere: for `trace --datastore`,
/// which must not touch the host's dataplane.
pub fn load_private_object() -> Result<Ebpf, DataplaneError> {
    Ok(EbpfLoader::new().load(KERNEL_OBJECT)?)
}

/// Detaches everything attached under `layout` and removes its pins (maps and links).
pub fn remove_pins(layout: &PinLayout) -> Result<(), DataplaneError> {
    for (ifname, _) in attach::pinned_links(layout)? {
        attach::detach_interface(layout, &ifname)?;
    }
    let root = layout.root();
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|source| {
            DataplaneError::Bpffs(BpffsError::CreateDir {
                path: root.to_owned(),
                source,
            })
        })?;
    }
    Ok(())
}
