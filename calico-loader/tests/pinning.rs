//! Pinned maps: created with the shared layouts, reused by a later load, and refused when an
//! incompatible version left them. Needs root; fails without it.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{path::PathBuf, process::Command};

    use crate::support::topology::{require_root, unique};
    use aya::maps::MapInfo;
    use calico_ebpf_common::map_names;
    use calico_loader::dataplane::{
        DataplaneError, bpffs::PinLayout, load_object, maps::expected_layout, remove_pins,
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
        for name in map_names::ALL {
            let info = MapInfo::from_pin(root.0.map(name))
                .unwrap_or_else(|e| panic!("{name} pinned: {e}"));
            let (key, value) = expected_layout(name).expect("every map has a layout");
            assert_eq!(
                (info.key_size(), info.value_size()),
                (key, value),
                "{name}: object and shared types agree"
            );
            ids.push(info.id());
        }
        drop(first);
        let _second = load_object(&root.0).expect("a second load reuses the pins");
        for (name, id) in map_names::ALL.iter().zip(ids) {
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
            Err(DataplaneError::IncompatiblePin {
                path: refused,
                found_value: 8,
                ..
            }) => assert_eq!(refused, path),
            Err(other) => panic!("expected IncompatiblePin, got {other}"),
            Ok(_) => panic!("an incompatible pinned map was reused"),
        }
    }
}
