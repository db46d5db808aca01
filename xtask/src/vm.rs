//! `cargo xtask vm-image`: builds the test VMs' kernel and initramfs once into a cache (see
//! `testbed::vm`), so that tests and CI boot them without building anything.

use std::path::PathBuf;

use anyhow::{Context, Result};
use testbed::{output, vm::VmImage};

use crate::setup;

#[derive(clap::Args, Debug)]
pub struct VmImageArgs {
    /// Where the image is cached (default: `$CALICO_EBPF_VM_CACHE`, else
    /// `~/.cache/calico-ebpf/vm`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Setup, then the cached image or a new one; prints where it is.
pub fn vm_image(args: &VmImageArgs) -> Result<()> {
    setup::setup()?;
    let image = ensure(args.cache_dir.clone())?;
    println!("kernel: {}", image.kernel.display());
    println!("initramfs: {}", image.initramfs.display());
    Ok(())
}

/// The cached image, built first when missing.
pub fn ensure(cache_dir: Option<PathBuf>) -> Result<VmImage> {
    let cache = cache_dir.unwrap_or_else(VmImage::default_cache_dir);
    if let Some(image) = VmImage::cached(&cache) {
        output::info(format!("VM image: {} (cached)", image.release));
        return Ok(image);
    }
    output::step(format!("Building the VM image into {}", cache.display()));
    let image = VmImage::ensure(&cache).context("building the VM image")?;
    output::info(format!("VM image: {} (built)", image.release));
    Ok(image)
}
