//! Throwaway network setups for calico-ebpf's integration tests and developer tasks (`cargo
//! xtask demo|bench`): one set of helpers, so both build namespaces, veth pairs and processes
//! the same way and clean up the same way.
//!
//! - [`cmd`]: external commands, echoed before they run, as root when asked (directly, or
//!   through `sudo -E`).
//! - [`netns`]: the [`Netns`] guard (deleted on drop, also on panic), veth pairs, running
//!   commands and threads inside a namespace, unique names.
//! - [`guards`]: processes and directories removed on drop.
//! - [`etcd`]: a throwaway etcd, for the datastore.
//! - [`fabric`]: a bridge joining hosts' namespaces, and their addresses on it.
//! - [`flows`]: continuous UDP, TCP and ping traffic between namespaces, counted at both ends.
//! - [`gobgp`]: GoBGP as a top-of-rack router.
//! - [`privileges`]: who we are, and finding programs.
//! - [`output`]: step headers, notes and warnings on stderr.
//! - [`signals`]: Ctrl-C noted instead of fatal, so guards get to clean up.
//! - [`vm`]: real VMs (qemu, a Debian kernel, a busybox initramfs built once into a cache) on
//!   a tap in a test's namespace, driven through their serial console; [`cpio`] writes their
//!   initramfs.
//!
//! Network safety is the caller's: it names the namespaces and picks the addresses (calico-ebpf
//! uses `198.18.0.0/15` and `2001:db8::/32` only). Nothing here adds anything to the namespace
//! it runs in.

pub mod cmd;
pub mod cpio;
pub mod etcd;
pub mod fabric;
pub mod flows;
pub mod gobgp;
pub mod guards;
pub mod netns;
pub mod output;
pub mod privileges;
pub mod signals;
pub mod vm;

pub use cmd::{Cmd, CmdError};
pub use guards::{ChildGuard, TempDir};
pub use netns::Netns;
