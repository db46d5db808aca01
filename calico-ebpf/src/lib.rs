//! The kernel programs live in the `calico-ebpf` binary target, built for the BPF target by
//! `calico-loader`'s build script. This library target exists so that the crate can be a
//! build-dependency of the loader (cargo then rebuilds the loader when it changes).
#![no_std]
