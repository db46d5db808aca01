//! Loading the kernel object and adopting what an earlier agent pinned.
//!
//! The agent's object reuses the maps pinned under its pin root, so that forwarding state,
//! policy and tracked flows survive a restart or an upgrade; a pinned map whose layout this
//! version does not share is refused rather than misread. A private object, pinned nowhere,
//! serves the commands and tests that must not touch the host's dataplane. Removing the pins
//! (links and maps) is the other end of the same life cycle.

use std::path::Path;

use aya::{Ebpf, EbpfLoader};
use calico_ebpf_common::{map_names, map_sizes};

use super::{
    attach,
    bpffs::{BpffsError, PinLayout},
    error::DataplaneError,
    maps,
};

/// The kernel programs, built for the BPF target by the build script.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calico-ebpf"));

/// Loads the kernel object, reusing the maps pinned under `layout` (so that state survives an
/// agent restart) or creating and pinning them, with the default conntrack size.
pub fn load_object(layout: &PinLayout) -> Result<Ebpf, DataplaneError> {
    load_object_with(layout, map_sizes::CONNTRACK)
}

/// [`load_object`] with a conntrack table of `conntrack_entries` entries. A pinned table of
/// another size is refused (its entries would be lost by replacing it).
pub fn load_object_with(
    layout: &PinLayout,
    conntrack_entries: u32,
) -> Result<Ebpf, DataplaneError> {
    layout.prepare()?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::CONNTRACK, conntrack_entries);
    for name in map_names::ALL {
        let path = layout.map(name);
        check_pinned_layout(name, &path)?;
        loader.map_pin_path(name, path);
    }
    let conntrack = layout.map(map_names::CONNTRACK);
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
    Ok(loader.load(KERNEL_OBJECT)?)
}

/// Loads the kernel object with maps of its own, pinned nowhere: for `trace --datastore`,
/// which must not touch the host's dataplane.
pub fn load_private_object() -> Result<Ebpf, DataplaneError> {
    Ok(EbpfLoader::new().load(KERNEL_OBJECT)?)
}

/// Refuses to reuse a pinned map whose key or value size differs from this version's layout.
fn check_pinned_layout(name: &str, path: &Path) -> Result<(), DataplaneError> {
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(path).map_err(|source| DataplaneError::InspectPin {
        path: path.to_owned(),
        source,
    })?;
    if let Some((key, value)) = maps::expected_layout(name)
        && (info.key_size(), info.value_size()) != (key, value)
    {
        return Err(DataplaneError::IncompatiblePin {
            path: path.to_owned(),
            found_key: info.key_size(),
            found_value: info.value_size(),
            key,
            value,
        });
    }
    Ok(())
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
