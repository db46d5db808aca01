//! Loading the kernel object and adopting what an earlier agent pinned.
//!
//! The agent's object reuses the maps pinned under its pin root, so that forwarding state,
//! policy and tracked flows survive a restart or an upgrade; a pinned map whose layout this
//! version does not share is refused rather than misread. A private object, pinned nowhere,
//! serves the commands and tests that must not touch the host's dataplane. Removing the pins
//! (links and maps) is the other end of the same life cycle.

use aya::{Ebpf, EbpfLoader};
use calico_ebpf_common::maps::{self, Conntrack, MapSpec, Versions};

use super::{
    attach,
    bpffs::{BpffsError, PinLayout},
    error::DataplaneError,
    handles, versions,
};

/// The kernel programs, built for the BPF target by the build script.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calico-ebpf"));

/// Loads the kernel object, reusing the maps pinned under `layout` (so that state survives an
/// agent restart) or creating and pinning them, with the default conntrack size.
pub fn load_object(layout: &PinLayout) -> Result<Ebpf, DataplaneError> {
    load_object_with(layout, Conntrack::DEF.max_entries)
}

/// [`load_object`] with a conntrack table of `conntrack_entries` entries. A pinned table of
/// another size is refused (its entries would be lost by replacing it), and so is a pinned map
/// of another layout version, kind or size ([`versions`]).
pub fn load_object_with(
    layout: &PinLayout,
    conntrack_entries: u32,
) -> Result<Ebpf, DataplaneError> {
    layout.prepare()?;
    let records = versions::recorded(layout)?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(Conntrack::DEF.name, conntrack_entries);
    for def in maps::ALL {
        let path = layout.map(def.name);
        versions::check_pinned(def, &path, &records)?;
        loader.map_pin_path(def.name, path);
    }
    let conntrack = layout.map(Conntrack::DEF.name);
    if conntrack.exists() {
        let info = aya::maps::MapInfo::from_pin(&conntrack).map_err(|source| {
            DataplaneError::InspectPin {
                path: conntrack.clone(),
                source,
            }
        })?;
        if info.max_entries() != conntrack_entries {
            return Err(DataplaneError::ConntrackSize {
                path: conntrack,
                found: info.max_entries(),
                wanted: conntrack_entries,
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
