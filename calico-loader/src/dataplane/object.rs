//! Loading the kernel object and adopting what an earlier agent pinned.
//!
//! The agent's object reuses the maps pinned under its pin root, so that forwarding state,
//! policy and tracked flows survive a restart; a pinned map of an older layout version or
//! another size is replaced by an upgrade ([`upgrade`]), and one this version cannot read is
//! refused rather than misread ([`versions`]). A private object, pinned nowhere,
//! serves the commands and tests that must not touch the host's dataplane. Removing the pins
//! (links and maps) is the other end of the same life cycle.

use aya::{Ebpf, EbpfLoader};
use calico_ebpf_common::maps::{Conntrack, MapDef, MapSpec, Versions};

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

/// Loads the kernel object, reusing the maps pinned under `layout` (so that state survives an
/// agent restart) or creating and pinning them, with the default conntrack size.
pub fn load_object(layout: &PinLayout) -> Result<Ebpf, DataplaneError> {
    load_object_with(layout, Conntrack::DEF.max_entries)
}

/// [`load_object`] with a conntrack table of `conntrack_entries` entries, for the commands that
/// read the running agent's maps: pinned maps that need an upgrade (another layout version,
/// or a conntrack table of another size) are refused, since only the agent upgrades them.
pub fn load_object_with(
    layout: &PinLayout,
    conntrack_entries: u32,
) -> Result<Ebpf, DataplaneError> {
    let plan = plan(layout, conntrack_entries)?;
    if plan.is_upgrade() {
        return Err(VersionError::UpgradeNeeded {
            maps: plan.describe(),
        }
        .into());
    }
    load_planned(layout, conntrack_entries, &plan)
}

/// Loads the kernel object for the agent, with a conntrack table of `conntrack_entries`
/// entries: maps pinned by an agent of this version are reused, and those of an older version
/// or another size are replaced, make-before-break ([`upgrade`]). A map of a newer version,
/// or one whose state cannot be converted, is refused ([`versions`]).
pub fn load_object_for_agent(
    layout: &PinLayout,
    conntrack_entries: u32,
) -> Result<(Ebpf, Option<Upgrade>), DataplaneError> {
    let plan = plan(layout, conntrack_entries)?;
    upgrade::prepare_staging(layout, &plan)?;
    let ebpf = load_planned(layout, conntrack_entries, &plan)?;
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

fn plan(layout: &PinLayout, conntrack_entries: u32) -> Result<MapPlan, DataplaneError> {
    layout.prepare()?;
    let entries = |def: &MapDef| {
        if def.name == Conntrack::DEF.name {
            conntrack_entries
        } else {
            def.max_entries
        }
    };
    Ok(versions::plan(layout, entries, upgrade::can_convert)?)
}

/// Loads the object with each map adopted, created or staged as `plan` says.
fn load_planned(
    layout: &PinLayout,
    conntrack_entries: u32,
    plan: &MapPlan,
) -> Result<Ebpf, DataplaneError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(Conntrack::DEF.name, conntrack_entries);
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
