//! Shared test support: the CLI against a datastore, topologies of namespaces and workloads, the agent, a real etcd,
//! clusters of hosts joined by a fabric, and a top-of-rack router on that fabric.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod etcd;
pub mod gobgp;
pub mod health;
pub mod topology;
pub mod two_hosts;
