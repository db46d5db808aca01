//! Shared test support: topologies of namespaces and workloads, the agent, and a real etcd.
#![allow(dead_code)]

pub mod etcd;
pub mod topology;
