//! Attaching the programs to workload interfaces and data interfaces, with every link pinned
//! under `<pin root>/links/<ifname>/<hook>`.
//!
//! A pinned link outlives the agent: when the agent exits (without `--detach-on-exit`) the
//! programs stay attached and keep forwarding with the pinned maps, as Calico does, so a restart
//! or upgrade does not interrupt traffic. A new agent adopts each link an earlier agent pinned
//! and swaps its own program into it in one step (`BPF_LINK_UPDATE`): the hook never goes
//! without a program, and an XDP hook is never detached (which on a veth would also stop and
//! restart its NAPI). Only where no usable link is pinned (none yet, or its interface went away
//! or was renamed) is a new link made; on TC hooks it is attached before the old one goes (TCX
//! runs the newest first), so there is no gap there either.

use std::{
    fs, io,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use calico_ebpf_common::program_names;

use super::{bpffs::PinLayout, pinned_link};

/// Which hook carries packets from a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// TC ingress with `bpf_redirect_peer` (the default: measured faster on veth).
    #[default]
    Tc,
    /// XDP on the host side (driver mode on veth), `bpf_redirect` into the target veth.
    Xdp,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        }
    }
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tc" => Ok(Self::Tc),
            "xdp" => Ok(Self::Xdp),
            other => Err(format!(
                "unknown attach mode {other:?} (expected tc or xdp)"
            )),
        }
    }
}

/// What an interface is to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The host side of a workload's interface.
    Workload,
    /// A data interface of the host (`--data-interfaces`): traffic from other hosts.
    Data,
    /// A data interface that a HostEndpoint covers: host endpoint policy both ways, and the
    /// data interface's delivery to local workloads.
    HostEndpoint,
}

impl Role {
    /// Whether it is a data interface (with or without a host endpoint): its programs can be
    /// swapped from one to the other in place.
    pub fn is_data(self) -> bool {
        matches!(self, Role::Data | Role::HostEndpoint)
    }
}

/// One attachment point of a program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress of the host side: packets from the workload.
    TcFromWorkload,
    /// TC egress of the host side: packets to the workload.
    TcToWorkload,
    /// XDP on the host side: packets from the workload.
    XdpFromWorkload,
    /// TC ingress of a data interface: packets from other hosts.
    TcFromData,
    /// XDP on a data interface: packets from other hosts.
    XdpFromData,
    /// TC ingress of a data interface with a host endpoint: packets arriving.
    TcHostEndpointIngress,
    /// TC egress of a data interface with a host endpoint: packets leaving.
    TcHostEndpointEgress,
    /// XDP on a data interface with a host endpoint: failsafe ports and untracked ingress
    /// policy, before the TC ingress program.
    XdpHostEndpoint,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Self::TcFromWorkload,
        Self::TcToWorkload,
        Self::XdpFromWorkload,
        Self::TcFromData,
        Self::XdpFromData,
        Self::TcHostEndpointIngress,
        Self::TcHostEndpointEgress,
        Self::XdpHostEndpoint,
    ];

    /// The XDP hooks: an interface takes one XDP link, which moves from one to another.
    const XDP: [Hook; 3] = [
        Self::XdpFromWorkload,
        Self::XdpFromData,
        Self::XdpHostEndpoint,
    ];

    /// The suffix of the link's pin name.
    pub fn pin_suffix(self) -> &'static str {
        match self {
            Self::TcFromWorkload => "tc_ingress",
            Self::TcToWorkload => "tc_egress",
            Self::XdpFromWorkload => "xdp",
            Self::TcFromData => "data_tc_ingress",
            Self::XdpFromData => "data_xdp",
            Self::TcHostEndpointIngress => "hep_tc_ingress",
            Self::TcHostEndpointEgress => "hep_tc_egress",
            Self::XdpHostEndpoint => "hep_xdp",
        }
    }

    /// The hooks an interface of `role` uses in `mode`. Egress towards a workload is always TC:
    /// XDP has no egress hook. A data interface only has its ingress; one with a host endpoint
    /// has XDP (untracked ingress policy, before anything else) and TC both ways in either mode
    /// (host endpoint policy needs the egress hook, and its ingress program delivers to local
    /// workloads as TC's data program does).
    pub fn for_interface(role: Role, mode: AttachMode) -> &'static [Hook] {
        match (role, mode) {
            (Role::Workload, AttachMode::Tc) => &[Self::TcFromWorkload, Self::TcToWorkload],
            (Role::Workload, AttachMode::Xdp) => &[Self::XdpFromWorkload, Self::TcToWorkload],
            (Role::Data, AttachMode::Tc) => &[Self::TcFromData],
            (Role::Data, AttachMode::Xdp) => &[Self::XdpFromData],
            (Role::HostEndpoint, _) => &[
                Self::XdpHostEndpoint,
                Self::TcHostEndpointIngress,
                Self::TcHostEndpointEgress,
            ],
        }
    }

    /// The program attached at this hook.
    fn program(self) -> &'static str {
        match self {
            Self::TcFromWorkload => program_names::TC_FROM_WORKLOAD,
            Self::TcToWorkload => program_names::TC_TO_WORKLOAD,
            Self::XdpFromWorkload => program_names::XDP_FROM_WORKLOAD,
            Self::TcFromData => program_names::TC_FROM_DATA,
            Self::XdpFromData => program_names::XDP_FROM_DATA,
            Self::TcHostEndpointIngress => program_names::TC_HOST_ENDPOINT_INGRESS,
            Self::TcHostEndpointEgress => program_names::TC_HOST_ENDPOINT_EGRESS,
            Self::XdpHostEndpoint => program_names::XDP_HOST_ENDPOINT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the kernel object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching {hook:?} to {ifname}: {source}")]
    Attach {
        ifname: String,
        hook: Hook,
        source: ProgramError,
    },
    #[error("link of {hook:?} on {ifname} is not a BPF link: {source}")]
    Link {
        ifname: String,
        hook: Hook,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the {hook:?} link of {ifname} at {path}: {source}")]
    Pin {
        ifname: String,
        hook: Hook,
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("replacing the program in the pinned {hook:?} link of {ifname}: {source}")]
    Replace {
        ifname: String,
        hook: Hook,
        source: ProgramError,
    },
    #[error("removing pinned link {path}: {source}")]
    Unpin { path: PathBuf, source: io::Error },
    #[error("renaming pinned link {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("listing {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// Loads the programs into the kernel (once) and attaches them to interfaces.
pub struct Attacher {
    layout: PinLayout,
    mode: AttachMode,
}

impl Attacher {
    /// Loads (verifies) the programs `mode` attaches, and only those: verifying a program is
    /// most of the kernel's work when an agent starts (hundreds of milliseconds of CPU for the
    /// workload pipelines), and a restarting agent should take as little of it from the packets
    /// as it can.
    pub fn load(ebpf: &mut Ebpf, layout: PinLayout, mode: AttachMode) -> Result<Self, AttachError> {
        let mut hooks: Vec<Hook> = [Role::Workload, Role::Data, Role::HostEndpoint]
            .into_iter()
            .flat_map(|role| Hook::for_interface(role, mode).iter().copied())
            .collect();
        hooks.sort();
        hooks.dedup();
        for hook in hooks {
            let name = hook.program();
            match hook {
                Hook::TcFromWorkload
                | Hook::TcToWorkload
                | Hook::TcFromData
                | Hook::TcHostEndpointIngress
                | Hook::TcHostEndpointEgress => classifier(ebpf, name)?.load(),
                Hook::XdpFromWorkload | Hook::XdpFromData | Hook::XdpHostEndpoint => {
                    xdp(ebpf, name)?.load()
                }
            }
            .map_err(|source| AttachError::Program { name, source })?;
        }
        Ok(Self { layout, mode })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Attaches this mode's programs for an interface of `role` to `ifname`: into the links an
    /// earlier agent left pinned there when they still hold this interface, as new links
    /// otherwise; and removes the pins of every other hook.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        ifname: &str,
        ifindex: u32,
        role: Role,
    ) -> Result<(), AttachError> {
        let wanted = Hook::for_interface(role, self.mode);
        let dir = self.layout.interface_links_dir(ifname);
        fs::create_dir_all(&dir).map_err(|source| AttachError::List {
            path: dir.clone(),
            source,
        })?;
        for &hook in wanted {
            let path = self.layout.link(ifname, hook.pin_suffix());
            // An interface takes one XDP link, which moves between the XDP hooks (a data
            // interface gaining or losing its host endpoint): any of their pins may hold it.
            let candidates: &[Hook] = if Hook::XDP.contains(&hook) {
                &Hook::XDP
            } else {
                &[hook]
            };
            let mut replaced = false;
            for &pinned_as in candidates {
                let at = self.layout.link(ifname, pinned_as.pin_suffix());
                if replace_in_pinned_link(ebpf, &at, ifname, ifindex, hook)? {
                    if at != path {
                        // The link lives on under this hook's name; only the old name goes.
                        fs::rename(&at, &path).map_err(|source| AttachError::Rename {
                            from: at.clone(),
                            to: path.clone(),
                            source,
                        })?;
                    }
                    replaced = true;
                    break;
                }
            }
            if replaced {
                continue;
            }
            let err = |source| AttachError::Attach {
                ifname: ifname.to_owned(),
                hook,
                source,
            };
            let link: FdLink = match hook {
                Hook::TcFromWorkload
                | Hook::TcToWorkload
                | Hook::TcFromData
                | Hook::TcHostEndpointIngress
                | Hook::TcHostEndpointEgress => {
                    let attach_type =
                        if matches!(hook, Hook::TcToWorkload | Hook::TcHostEndpointEgress) {
                            TcAttachType::Egress
                        } else {
                            TcAttachType::Ingress
                        };
                    let program = classifier(ebpf, hook.program())?;
                    let id = program
                        .attach_with_options(
                            ifname,
                            attach_type,
                            TcAttachOptions::TcxOrder(LinkOrder::first()),
                        )
                        .map_err(err)?;
                    let link = program.take_link(id).map_err(err)?;
                    FdLink::try_from(link).map_err(|source| AttachError::Link {
                        ifname: ifname.to_owned(),
                        hook,
                        source,
                    })?
                }
                Hook::XdpFromWorkload | Hook::XdpFromData | Hook::XdpHostEndpoint => {
                    // An interface takes one XDP link: one pinned for it that still holds it
                    // (under any XDP hook's name) was updated in place above; any other must go
                    // first.
                    remove_pin(&path)?;
                    let program = xdp(ebpf, hook.program())?;
                    let id = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
                        Ok(id) => id,
                        // A NIC whose driver has no XDP of its own gets the generic hook.
                        Err(driver)
                            if matches!(hook, Hook::XdpFromData | Hook::XdpHostEndpoint) =>
                        {
                            let id = program
                                .attach_to_if_index(ifindex, XdpMode::Skb)
                                .map_err(err)?;
                            tracing::warn!(
                                interface = ifname,
                                "no driver-mode XDP ({driver}); attached in generic (skb) mode"
                            );
                            id
                        }
                        Err(driver) => return Err(err(driver)),
                    };
                    let link = program.take_link(id).map_err(err)?;
                    FdLink::try_from(link).map_err(|source| AttachError::Link {
                        ifname: ifname.to_owned(),
                        hook,
                        source,
                    })?
                }
            };
            // Removing the old pin detaches the old link; the new one is already in place.
            remove_pin(&path)?;
            link.pin(&path).map_err(|source| AttachError::Pin {
                ifname: ifname.to_owned(),
                hook,
                path: path.clone(),
                source,
            })?;
        }
        for hook in Hook::ALL.into_iter().filter(|h| !wanted.contains(h)) {
            remove_pin(&self.layout.link(ifname, hook.pin_suffix()))?;
        }
        Ok(())
    }

    /// Detaches every program from `ifname` by removing its pinned links.
    pub fn detach(&self, ifname: &str) -> Result<(), AttachError> {
        detach_interface(&self.layout, ifname)
    }
}

/// Swaps `hook`'s program of `ebpf` into the link pinned at `path`, when one is pinned there and
/// still attached to `ifindex`; whether it did. A pinned link whose interface went away (or that
/// belongs to another interface now) is left for the caller to replace.
fn replace_in_pinned_link(
    ebpf: &mut Ebpf,
    path: &Path,
    ifname: &str,
    ifindex: u32,
    hook: Hook,
) -> Result<bool, AttachError> {
    match pinned_link::attached_ifindex(path) {
        Ok(Some(attached)) if attached == ifindex => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                "cannot read the pinned link ({e}); attaching a new one"
            );
            return Ok(false);
        }
    }
    let link_error = |source| AttachError::Link {
        ifname: ifname.to_owned(),
        hook,
        source,
    };
    let replace_error = |source| AttachError::Replace {
        ifname: ifname.to_owned(),
        hook,
        source,
    };
    let link = FdLink::from(PinnedLink::from_pin(path).map_err(link_error)?);
    // The pin keeps the link (and now the new program) attached; the handles taken back here
    // only close their file descriptors when dropped.
    match hook {
        Hook::TcFromWorkload
        | Hook::TcToWorkload
        | Hook::TcFromData
        | Hook::TcHostEndpointIngress
        | Hook::TcHostEndpointEgress => {
            let link = SchedClassifierLink::try_from(link).map_err(link_error)?;
            let program = classifier(ebpf, hook.program())?;
            let id = program.attach_to_link(link).map_err(replace_error)?;
            drop(program.take_link(id).map_err(replace_error)?);
        }
        Hook::XdpFromWorkload | Hook::XdpFromData | Hook::XdpHostEndpoint => {
            let link = XdpLink::try_from(link).map_err(link_error)?;
            let program = xdp(ebpf, hook.program())?;
            let id = program.attach_to_link(link).map_err(replace_error)?;
            drop(program.take_link(id).map_err(replace_error)?);
        }
    }
    Ok(true)
}

/// Detaches every program from `ifname` by removing its pinned links.
pub fn detach_interface(layout: &PinLayout, ifname: &str) -> Result<(), AttachError> {
    for hook in Hook::ALL {
        remove_pin(&layout.link(ifname, hook.pin_suffix()))?;
    }
    let dir = layout.interface_links_dir(ifname);
    match fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AttachError::Unpin { path: dir, source }),
    }
}

/// The interfaces that have at least one pinned link, with the hooks pinned on each.
pub fn pinned_links(layout: &PinLayout) -> Result<Vec<(String, Vec<Hook>)>, AttachError> {
    let dir = layout.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AttachError::List { path: dir, source }),
    };
    let mut interfaces = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AttachError::List {
            path: dir.clone(),
            source,
        })?;
        let Some(dir_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let ifname = PinLayout::interface_of_links_dir(&dir_name);
        let hooks: Vec<Hook> = Hook::ALL
            .into_iter()
            .filter(|h| layout.link(&ifname, h.pin_suffix()).exists())
            .collect();
        interfaces.push((ifname, hooks));
    }
    interfaces.sort();
    Ok(interfaces)
}

fn remove_pin(path: &Path) -> Result<(), AttachError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => link.unpin().map(drop).map_err(|e| AttachError::Unpin {
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        }),
        Err(_) => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(AttachError::Unpin {
                path: path.to_owned(),
                source,
            }),
        },
    }
}

/// The program called `name` in `ebpf`, as the program type `T`.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|source| AttachError::Program { name, source })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, AttachError> {
    program(ebpf, name)
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, AttachError> {
    program(ebpf, name)
}
