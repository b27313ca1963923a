//! Every kernel hook portguard uses, in one table: the program, its ELF
//! section and attach type (an operator reading an error can look either
//! up), and what kind of program it is. Loading, attaching, pinning, error
//! messages and `status` all read this table; adding a hook is one row here
//! and one function in portguard-ebpf.

use portguard_common::map_names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `cgroup/sock_create`, `post_bind*`, `sock_release`.
    CgroupSock,
    /// `cgroup/bind*`, `connect*`, `sendmsg*`.
    CgroupSockAddr,
    SockOps,
    /// `cgroup_skb/ingress`: packets received by the cgroup's sockets.
    CgroupSkbIngress,
    /// `cgroup_skb/egress`: packets the cgroup's sockets send.
    CgroupSkbEgress,
    /// A BPF LSM program on the named LSM hook: optional, and attached to
    /// the hook itself, not to a cgroup.
    Lsm(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hook {
    pub(crate) program: &'static str,
    pub(crate) section: &'static str,
    pub(crate) attach_type: &'static str,
    pub(crate) kind: Kind,
}

impl Hook {
    pub(crate) const fn on_cgroups(&self) -> bool {
        !matches!(self.kind, Kind::Lsm(_))
    }
}

const fn hook(program: &'static str, section: &'static str, attach_type: &'static str, kind: Kind) -> Hook {
    Hook { program, section, attach_type, kind }
}

/// In attach order. `sock_create` comes first, so that a guarded cgroup's
/// sockets are stamped before any hook that reads stamps runs there; the
/// port-inventory programs (post_bind, sock_ops, sock_release) come after
/// them: they only report. The DNS query recorder (egress) comes before
/// the inbound filter, which learns from the answers to what it recorded.
/// The inbound filter comes last: until it is attached, inbound traffic
/// flows as it did before the cgroup was guarded.
pub(crate) const HOOKS: [Hook; 15] = [
    hook("pg_sock_create", "cgroup/sock_create", "BPF_CGROUP_INET_SOCK_CREATE", Kind::CgroupSock),
    hook("pg_bind4", "cgroup/bind4", "BPF_CGROUP_INET4_BIND", Kind::CgroupSockAddr),
    hook("pg_bind6", "cgroup/bind6", "BPF_CGROUP_INET6_BIND", Kind::CgroupSockAddr),
    hook("pg_connect4", "cgroup/connect4", "BPF_CGROUP_INET4_CONNECT", Kind::CgroupSockAddr),
    hook("pg_connect6", "cgroup/connect6", "BPF_CGROUP_INET6_CONNECT", Kind::CgroupSockAddr),
    hook("pg_sendmsg4", "cgroup/sendmsg4", "BPF_CGROUP_UDP4_SENDMSG", Kind::CgroupSockAddr),
    hook("pg_sendmsg6", "cgroup/sendmsg6", "BPF_CGROUP_UDP6_SENDMSG", Kind::CgroupSockAddr),
    hook("pg_post_bind4", "cgroup/post_bind4", "BPF_CGROUP_INET4_POST_BIND", Kind::CgroupSock),
    hook("pg_post_bind6", "cgroup/post_bind6", "BPF_CGROUP_INET6_POST_BIND", Kind::CgroupSock),
    hook("pg_sock_ops", "sockops", "BPF_CGROUP_SOCK_OPS", Kind::SockOps),
    hook("pg_sock_release", "cgroup/sock_release", "BPF_CGROUP_INET_SOCK_RELEASE", Kind::CgroupSock),
    hook("pg_sock_egress", "cgroup_skb/egress", "BPF_CGROUP_INET_EGRESS", Kind::CgroupSkbEgress),
    hook("pg_sock_ingress", "cgroup_skb/ingress", "BPF_CGROUP_INET_INGRESS", Kind::CgroupSkbIngress),
    hook("pg_socket_listen", "lsm/socket_listen", "BPF_LSM_MAC", Kind::Lsm("socket_listen")),
    hook("pg_socket_create", "lsm/socket_create", "BPF_LSM_MAC", Kind::Lsm("socket_create")),
];

/// The hooks attached at every guarded cgroup.
pub(crate) fn cgroup_hooks() -> impl Iterator<Item = &'static Hook> {
    HOOKS.iter().filter(|h| h.on_cgroups())
}

/// The optional BPF LSM hooks.
pub(crate) fn lsm_hooks() -> impl Iterator<Item = (&'static Hook, &'static str)> {
    HOOKS.iter().filter_map(|h| match h.kind {
        Kind::Lsm(lsm_hook) => Some((h, lsm_hook)),
        _ => None,
    })
}

/// The row of `program`. Every program name the loader handles comes from
/// [`HOOKS`], so a miss is a bug in this file.
pub(crate) fn of(program: &str) -> &'static Hook {
    HOOKS.iter().find(|h| h.program == program).expect("every program is in HOOKS")
}

/// Maps pinned so that they outlive the agent: the policy, the socket
/// stamps, the UDP reply window, the counters, the event rings, the
/// live and brief ports, and the DNS name key, names, learned addresses
/// and pending queries (learning goes on while no agent runs). Scratch and
/// lookup tables the agent refills at each load are not pinned.
pub(crate) const PINNED_MAPS: [&str; 19] = [
    map_names::CONFIG,
    map_names::GUARDS,
    map_names::BIND_RULES,
    map_names::CONNECT_RULES,
    map_names::FROM_RULES,
    map_names::UDP_PEERS,
    map_names::SK_STAMPS,
    map_names::ANCESTRY,
    map_names::COUNTERS,
    map_names::STATS,
    map_names::EVENTS,
    map_names::PORT_EVENTS,
    map_names::DENIAL_COUNTS,
    map_names::LIVE_PORTS,
    map_names::BRIEF_PORTS,
    map_names::DNS_KEY,
    map_names::DNS_NAMES,
    map_names::DNS_LEARNED,
    map_names::SK_DNS,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The table and the object agree: every row's program exists with the
    /// section the row names, and every program in the object has a row.
    #[test]
    fn the_table_matches_the_ebpf_object() {
        let object = aya_obj::Object::parse(super::super::loader::OBJECT).expect("parse the eBPF object");
        let mut in_object: Vec<String> = object.programs.keys().cloned().collect();
        in_object.sort();
        let mut in_table: Vec<String> = HOOKS.iter().map(|h| h.program.to_owned()).collect();
        in_table.sort();
        assert_eq!(in_object, in_table);
    }
}
