//! Loading the kernel object and adopting what an earlier agent pinned.
//!
//! The agent's object reuses the maps pinned under its pin root, so that forwarding state,
//! policy and tracked flows survive a restart; a pinned map of an older layout version or
//! another size is replaced by an upgrade ([`upgrade`]), and one this version cannot read is
//! refused rather than misread ([`versions`]). A private object, pinned nowhere,
//! serves the commands and tests that must not touch the host's dataplane. Removing the pins
//! (links and maps) is the other end of the same life cycle.

use aya::{Ebpf, EbpfLoader};
use calico_ebpf_common::maps::{Conntrack, Counters, Endpoints, MapDef, MapSpec, Versions};

use super::{
    attach,
    bpffs::{BpffsError, PinLayout},
    error::DataplaneError,
    handles,
    upgrade::{self, Upgrade},
    versions::{self, MapAction, MapPlan, VersionError},
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

    /// The number of entries of the map `def` at these sizes: a configured size, or its
    /// definition's.
    pub fn entries(&self, def: &MapDef) -> u32 {
        if def.name == Conntrack::DEF.name {
            self.conntrack
        } else if def.name == Endpoints::DEF.name {
            self.endpoints
        } else if def.name == Counters::DEF.name {
            // One more, for the interfaces without an endpoint.
            self.endpoints.saturating_add(1)
        } else {
            def.max_entries
        }
    }
}

/// Loads the kernel object, reusing the maps pinned under `layout` (so that state survives an
/// agent restart) or creating and pinning them, with the default sizes.
pub fn load_object(layout: &PinLayout) -> Result<Ebpf, DataplaneError> {
    load_object_with(layout, MapSizes::default())
}

/// [`load_object`] with the map sizes `sizes`, for the commands that read the running agent's
/// maps: pinned maps that need an upgrade (another layout version, or another size) are
/// refused, since only the agent upgrades them.
pub fn load_object_with(layout: &PinLayout, sizes: MapSizes) -> Result<Ebpf, DataplaneError> {
    let plan = plan(layout, sizes)?;
    if plan.is_upgrade() {
        return Err(VersionError::UpgradeNeeded {
            maps: plan.describe(),
        }
        .into());
    }
    load_planned(layout, sizes, &plan)
}

/// Loads the kernel object for the agent, with the map sizes `sizes`: maps pinned by an agent
/// of this version are reused, and those of an older version or another size (a new
/// `BPFMapSizeConntrack` or `BPFMapSizeIfState`) are replaced, make-before-break
/// ([`upgrade`]). A map of a newer version, or one whose state cannot be converted, is refused
/// ([`versions`]).
pub fn load_object_for_agent(
    layout: &PinLayout,
    sizes: MapSizes,
) -> Result<(Ebpf, Option<Upgrade>), DataplaneError> {
    let plan = plan(layout, sizes)?;
    upgrade::prepare_staging(layout, &plan)?;
    let ebpf = load_planned(layout, sizes, &plan)?;
    let upgrade = Upgrade::new(layout, &plan);
    if let Some(upgrade) = &upgrade {
        tracing::info!(maps = %plan.describe(), "upgrading the pinned maps");
        for (name, carried) in upgrade.carry()? {
            tracing::info!(
                map = name,
                copied = carried.copied,
                lost = carried.lost,
                "carried the old map's entries into the new one"
            );
        }
    }
    Ok((ebpf, upgrade))
}

fn plan(layout: &PinLayout, sizes: MapSizes) -> Result<MapPlan, DataplaneError> {
    layout.prepare()?;
    Ok(versions::plan(
        layout,
        |def| sizes.entries(def),
        upgrade::can_convert,
    )?)
}

/// Loads the object with each map adopted, created or staged as `plan` says.
fn load_planned(
    layout: &PinLayout,
    sizes: MapSizes,
    plan: &MapPlan,
) -> Result<Ebpf, DataplaneError> {
    let mut loader = EbpfLoader::new();
    for def in [Conntrack::DEF, Endpoints::DEF, Counters::DEF] {
        loader.map_max_entries(def.name, sizes.entries(&def));
    }
    for (def, action) in &plan.maps {
        let path = match action {
            MapAction::Create | MapAction::Adopt => layout.map(def.name),
            MapAction::Replace(_) => layout.staged_map(def.name),
        };
        loader.map_pin_path(def.name, path);
    }
    let mut ebpf = loader.load(KERNEL_OBJECT)?;
    // A map created now gets its first record, an adopted one keeps the version it was
    // checked against; a replaced one is recorded when it takes the old one's pin.
    let mut records = handles::take::<Versions>(&mut ebpf)?;
    let in_place = plan
        .maps
        .iter()
        .filter(|(_, action)| !matches!(action, MapAction::Replace(_)))
        .map(|(def, _)| def);
    versions::record(&mut records, in_place)?;
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
