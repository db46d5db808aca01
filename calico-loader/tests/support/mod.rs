//! Shared test support: crafted packets, and (for the namespace tests) RAII guards.
#![allow(dead_code)]

pub mod packets;
pub mod netns;
