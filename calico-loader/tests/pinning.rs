//! Pinned maps: created with the shared layouts, reused by a later load, and refused when an
//! incompatible version left them. Needs root; fails without it.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{path::PathBuf, process::Command};

    use crate::support::topology::{require_root, unique};
    use aya::maps::MapInfo;
    use calico_ebpf_common::{
        fill_nul_padded, map_names,
        maps::{self, MapSpec, VersionKey},
    };
    use calico_loader::dataplane::{
        DataplaneError, bpffs::PinLayout, handles::open_pinned, load_object, remove_pins,
        versions::VersionError,
    };

    /// A pin root under /sys/fs/bpf, removed on drop.
    struct PinRoot(PinLayout);

    impl PinRoot {
        fn new() -> Self {
            require_root();
            Self(PinLayout::new(
                PathBuf::from("/sys/fs/bpf").join(unique("calico-pintest-")),
            ))
        }
    }

    impl Drop for PinRoot {
        fn drop(&mut self) {
            let _ = remove_pins(&self.0);
            let _ = std::fs::remove_dir_all(self.0.root());
        }
    }

    #[test]
    fn maps_are_pinned_with_the_shared_layout_and_reused() {
        let root = PinRoot::new();
        let first = load_object(&root.0).expect("first load creates and pins the maps");
        let mut ids = Vec::new();
        for def in maps::ALL {
            let name = def.name;
            let info = MapInfo::from_pin(root.0.map(name))
                .unwrap_or_else(|e| panic!("{name} pinned: {e}"));
            assert_eq!(
                (info.key_size(), info.value_size(), info.max_entries()),
                (def.key_size, def.value_size, def.max_entries),
                "{name}: object and shared types agree"
            );
            ids.push(info.id());
        }
        drop(first);
        let _second = load_object(&root.0).expect("a second load reuses the pins");
        for (name, id) in maps::ALL.iter().map(|def| def.name).zip(ids) {
            let info = MapInfo::from_pin(root.0.map(name)).expect("still pinned");
            assert_eq!(
                info.id(),
                id,
                "{name} is the same map, so its contents survive a restart"
            );
        }
    }

    #[test]
    fn an_incompatible_pinned_map_is_refused() {
        let root = PinRoot::new();
        root.0.prepare().expect("pin directory");
        let path = root.0.map(map_names::ENDPOINTS);
        let status = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&path)
            .args([
                "type",
                "hash",
                "key",
                "4",
                "value",
                "8",
                "entries",
                "4",
                "name",
                "cali_endpoints",
            ])
            .status()
            .expect("run bpftool");
        assert!(status.success(), "bpftool map create");
        match load_object(&root.0) {
            Err(DataplaneError::Version(VersionError::Layout {
                path: refused,
                found_value: 8,
                ..
            })) => assert_eq!(refused, path),
            Err(other) => panic!("expected a layout refusal, got {other}"),
            Ok(_) => panic!("an incompatible pinned map was reused"),
        }
    }

    #[test]
    fn a_pinned_map_of_another_layout_version_is_refused_naming_both_versions() {
        let root = PinRoot::new();
        drop(load_object(&root.0).expect("first load creates and pins the maps"));
        // What an agent with a newer conntrack layout would have recorded.
        let mut versions =
            open_pinned::<maps::Versions>(&root.0).expect("the versions map is pinned");
        let name = maps::Conntrack::DEF.name;
        let key: VersionKey = fill_nul_padded(name.as_bytes());
        let mut record = versions
            .get(&key, 0)
            .expect("conntrack's version is recorded");
        assert_eq!(record.version, maps::Conntrack::DEF.version);
        record.version = maps::Conntrack::DEF.version + 1;
        versions
            .insert(key, record, 0)
            .expect("record a newer version");
        drop(versions);

        match load_object(&root.0) {
            Err(DataplaneError::Version(error @ VersionError::Version { .. })) => {
                let text = error.to_string();
                assert!(text.contains(name), "names the map: {text}");
                assert!(
                    text.contains(&format!("version {}", record.version))
                        && text.contains(&format!("version {}", maps::Conntrack::DEF.version)),
                    "names both versions: {text}"
                );
            }
            Err(other) => panic!("expected a version refusal, got {other}"),
            Ok(_) => panic!("a pinned map of another layout version was adopted"),
        }
    }
}
