//! Shared test support: topologies of namespaces and workloads, the agent, a real etcd, and
//! clusters of hosts joined by a fabric.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod topology;
