//! Test harness: real agents, real cgroups, real sockets.
//!
//! Every test builds a [`Sandbox`]: its own cgroup subtree (the agent is
//! attached at its root, so tests cannot see each other's programs), its own
//! network namespace (probes and listeners run there, so parallel tests
//! never compete for a port and no traffic leaves the test), its own bpffs
//! pin directory and its own policy file. Dropping the sandbox stops the
//! agent, unloads what it pinned and removes the cgroups and the namespace.
//!
//! - `sandbox`: the [`Sandbox`] itself (cgroups, namespace, policy file).
//! - `agent`: the `portguard` binary: the [`Agent`] in a sandbox, its log
//!   and audit trail, its subcommands.
//! - `probe`: pg-probe run in a sandbox's cgroups, and [`Hammer`] counts.
//! - `hosts`: other [`Host`]s (network namespaces joined by veth pairs)
//!   that reach the sandbox's servers as other machines would.
//! - `metrics`: the metrics endpoint and a real [`Prometheus`].
//! - `services`: real servers beside the workloads (dnsmasq, an accepting
//!   TCP server), each a [`Running`] child.
//! - `kubelet`, [`kube_api`]: pod cgroups as the kubelet lays them out, and
//!   a stand-in Kubernetes API server.
//! - `tamper`: raw bpf() on the pinned maps and links, to break
//!   enforcement on purpose (the tests of `portguard verify`).
//! - `prerequisites`: [`require_root!`] and [`skip_test!`].

mod agent;
mod hosts;
pub mod kube_api;
mod kubelet;
mod metrics;
#[doc(hidden)]
pub mod prerequisites;
mod probe;
mod sandbox;
mod services;
pub mod tamper;

pub use agent::{Agent, agent_bin, portguard};
pub use hosts::Host;
pub use kubelet::CgroupDriver;
pub use metrics::{Prometheus, http_get, metric_sum};
pub use probe::{Hammer, probe_bin};
pub use sandbox::{Sandbox, cgroup2_mount, remove_cgroup_tree};
pub use services::{DNSMASQ, Running, dnsmasq_here};
