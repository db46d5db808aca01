//! Shared test support: the CLI against a datastore, the kernel object's programs loaded
//! unattached, HTTP to the agent's metrics and health, topologies of namespaces and workloads, the agent, a real etcd,
//! clusters of hosts joined by a fabric, and a top-of-rack router on that fabric.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod etcd;
pub mod gobgp;
pub mod health;
pub mod http;
pub mod programs;
pub mod topology;
pub mod two_hosts;
