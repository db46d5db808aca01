//! The pinned maps, declared from their one definition in `calico-ebpf-common`
//! (`calico_ebpf_common::for_each_map!`): name, kind, key and value types, size and flags all
//! come from there. They are declared with BTF, so that `bpftool map dump` prints named fields.
//!
//! A map's name must be a literal in `#[btf_map]`, so the definitions are handed to
//! [`declare_maps!`] as tokens rather than read as constants. Each map is a static named like
//! its `map_names` constant (`ROUTES_V4` is `cali_routes_v4`).
//!
//! The programs' per-CPU scratch maps are not pinned and not shared with the agent: they are
//! declared beside their types (`cali_scratch` in `packet.rs`, `cali_searches` in
//! `policy.rs`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};

/// Declares one static per map of the list, of the aya-ebpf type matching its kind.
macro_rules! declare_maps {
    ($(
        $(#[doc = $doc:literal])*
        $Spec:ident $CONST:ident $name:tt $kind:ident<$K:ty, $V:ty>
        max: $max:expr, flags: $flags:expr, version: $version:expr, upgrade: $upgrade:ident;
    )*) => {
        $(
            declare_map!($kind $name $CONST<$K, $V> ($max) ($flags) $(#[doc = $doc])*);
        )*
    };
}

/// One static of the aya-ebpf type matching `kind`. The sizes are `u32` in the definitions and
/// `usize` in the type parameters.
macro_rules! declare_map {
    (LpmTrie $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: LpmTrie<$K, $V, { ($max) as usize }, { ($flags) as usize }> =
            LpmTrie::new();
    };
    (Hash $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: HashMap<$K, $V, { ($max) as usize }, { ($flags) as usize }> =
            HashMap::new();
    };
    (Array $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: Array<$V, { ($max) as usize }, { ($flags) as usize }> = Array::new();
    };
    (PerCpuHash $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: PerCpuHashMap<$K, $V, { ($max) as usize }, { ($flags) as usize }> =
            PerCpuHashMap::new();
    };
    (LruHash $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: LruHashMap<$K, $V, { ($max) as usize }, { ($flags) as usize }> =
            LruHashMap::new();
    };
    (PerCpuArray $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: PerCpuArray<$V, { ($max) as usize }, { ($flags) as usize }> =
            PerCpuArray::new();
    };
    (RingBuf $name:tt $CONST:ident<$K:ty, $V:ty> ($max:expr) ($flags:expr) $(#[$m:meta])*) => {
        $(#[$m])*
        #[btf_map(name = $name)]
        pub static $CONST: RingBuf<$V, { ($max) as usize }, { ($flags) as usize }> =
            RingBuf::new();
    };
}

calico_ebpf_common::for_each_map!(declare_maps);
