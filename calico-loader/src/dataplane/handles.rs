//! Typed handles on the maps, derived from their one definition (`calico_ebpf_common::maps`):
//! [`Handle<S>`] is the aya type matching map `S`'s kind, key and value, so that a manager
//! states which maps it owns and never spells a map's types or name a second time.
//!
//! A handle comes from a freshly loaded object ([`take`]) or from the pin a running (or earlier)
//! agent left ([`open_pinned`]).

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use calico_ebpf_common::maps::{MapSpec, kind};

use super::bpffs::PinLayout;

/// Why a map could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the kernel object has no map named {0}")]
    Missing(&'static str),
}

/// The aya type that handles a map of this kind with keys `K` and values `V`.
pub trait HandleKind<K, V> {
    type Handle: TryFrom<Map, Error = MapError>;
}

impl<K: Pod, V: Pod> HandleKind<K, V> for kind::Hash {
    type Handle = HashMap<MapData, K, V>;
}

impl<V: Pod> HandleKind<u32, V> for kind::Array {
    type Handle = Array<MapData, V>;
}

impl<K: Pod, V: Pod> HandleKind<K, V> for kind::LruHash {
    type Handle = HashMap<MapData, K, V>;
}

impl<K: Pod, V: Pod> HandleKind<K, V> for kind::PerCpuHash {
    type Handle = PerCpuHashMap<MapData, K, V>;
}

impl<V: Pod> HandleKind<u32, V> for kind::PerCpuArray {
    type Handle = PerCpuArray<MapData, V>;
}

impl<K: Pod, V: Pod> HandleKind<K, V> for kind::LpmTrie {
    type Handle = LpmTrie<MapData, K, V>;
}

impl<V> HandleKind<(), V> for kind::RingBuf {
    type Handle = RingBuf<MapData>;
}

/// A map spec whose kind has a handle type: every map of the list.
pub trait Typed: MapSpec {
    type Handle: TryFrom<Map, Error = MapError>;
}

impl<S> Typed for S
where
    S: MapSpec,
    S::Kind: HandleKind<S::Key, S::Value>,
{
    type Handle = <S::Kind as HandleKind<S::Key, S::Value>>::Handle;
}

/// The typed handle of map `S`.
pub type Handle<S> = <S as Typed>::Handle;

/// Where handles come from: a freshly loaded object (the map is taken out of it) or the pins
/// under a pin root (the map an agent pinned there is opened).
pub trait MapSource {
    fn open<S: Typed>(&mut self) -> Result<S::Handle, HandleError>;
}

impl MapSource for Ebpf {
    fn open<S: Typed>(&mut self) -> Result<S::Handle, HandleError> {
        take::<S>(self)
    }
}

impl MapSource for &PinLayout {
    fn open<S: Typed>(&mut self) -> Result<S::Handle, HandleError> {
        open_pinned::<S>(self)
    }
}

/// Takes map `S` out of a freshly loaded object.
pub fn take<S: Typed>(ebpf: &mut Ebpf) -> Result<S::Handle, HandleError> {
    let name = S::DEF.name;
    let map = ebpf.take_map(name).ok_or(HandleError::Missing(name))?;
    S::Handle::try_from(map).map_err(|source| HandleError::Map { name, source })
}

/// Opens map `S` where an agent pinned it under `layout`.
pub fn open_pinned<S: Typed>(layout: &PinLayout) -> Result<S::Handle, HandleError> {
    let name = S::DEF.name;
    let map = MapData::from_pin(layout.map(name))
        .and_then(Map::from_map_data)
        .map_err(|source| HandleError::Map { name, source })?;
    S::Handle::try_from(map).map_err(|source| HandleError::Map { name, source })
}
