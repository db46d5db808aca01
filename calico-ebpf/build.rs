//! Rebuild the kernel object when the linker changes (it is not a cargo-tracked input).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
