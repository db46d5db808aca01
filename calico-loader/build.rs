//! Builds the kernel programs (`calico-ebpf`) for the BPF target with the nightly toolchain and
//! places the object in OUT_DIR, where `include_bytes_aligned!` embeds it into the agent.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../calico-ebpf");
    // The test-only `next-layout` feature reaches the kernel programs too, so that both sides
    // of the maps agree on the layout.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_NEXT_LAYOUT").is_some() {
        &["next-layout"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "calico-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
