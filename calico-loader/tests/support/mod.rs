//! Shared test support: RAII guards for namespaces, workloads and the agent.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;
