//! Builds the kernel programs (`calico-ebpf`) for the BPF target with the nightly toolchain and
//! places the object in OUT_DIR, where `include_bytes_aligned!` embeds it into the agent.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../calico-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "calico-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
