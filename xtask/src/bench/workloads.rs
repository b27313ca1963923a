//! The workloads (run by `pg-probe bench` inside the configuration's
//! cgroup) and the ports their allowed and denied variants use.

pub(super) const ALLOWED: u16 = 41002;
pub(super) const DENIED: u16 = 41009;
pub(super) const LISTENER_PORT: u16 = 41000;
pub(super) const RECEIVER_PORT: u16 = 41001;
pub(super) const W4_ALLOWED: u16 = 41003;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Workload {
    pub id: &'static str,
    pub what: &'static str,
    pub iterations: u64,
    /// Whether nftables sees this operation at all (it filters packets).
    pub nft_sees_it: bool,
}

pub(super) const ALL: [Workload; 4] = [
    Workload {
        id: "w1",
        what: "W1 connect() on a reused UDP socket",
        iterations: 20_000,
        nft_sees_it: false,
    },
    Workload { id: "w2", what: "W2 unconnected UDP sendto()", iterations: 20_000, nft_sees_it: true },
    Workload { id: "w3", what: "W3 TCP connect/accept/close", iterations: 1_500, nft_sees_it: true },
    Workload { id: "w4", what: "W4 bind() and close", iterations: 20_000, nft_sees_it: false },
];

impl Workload {
    /// The port the workload targets in its allowed or denied variant.
    pub(super) fn port(&self, allowed: bool) -> u16 {
        match (self.id, allowed) {
            ("w3", true) => LISTENER_PORT,
            ("w2", true) => RECEIVER_PORT,
            ("w4", true) => W4_ALLOWED,
            (_, true) => ALLOWED,
            (_, false) => DENIED,
        }
    }
}

/// The i-th filler peer (10.0.0.1, 10.0.0.2, ...): rules for these make a
/// policy large without matching anything a workload does.
pub(super) fn filler_peer(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Connect rules to filler peers 1..n (port 5432), in policy TOML.
pub(super) fn filler_connect_rules(n: usize) -> String {
    (1..n).map(|i| format!("[[guard.connect]]\npeer = \"{}\"\nports = [5432]\n", filler_peer(i))).collect()
}
