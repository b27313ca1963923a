//! The kernel's numbers (`enum bpf_attach_type`) for the cgroup hooks
//! portguard attaches to, by the names the hook table uses. One table for
//! `portguard verify` (which reads attach types back from the kernel) and
//! the test suite's fault injector (which fails one attach type on purpose).

const CGROUP_ATTACH_TYPES: [(&str, u32); 13] = [
    ("BPF_CGROUP_INET_INGRESS", 0),
    ("BPF_CGROUP_INET_EGRESS", 1),
    ("BPF_CGROUP_INET_SOCK_CREATE", 2),
    ("BPF_CGROUP_SOCK_OPS", 3),
    ("BPF_CGROUP_INET4_BIND", 8),
    ("BPF_CGROUP_INET6_BIND", 9),
    ("BPF_CGROUP_INET4_CONNECT", 10),
    ("BPF_CGROUP_INET6_CONNECT", 11),
    ("BPF_CGROUP_INET4_POST_BIND", 12),
    ("BPF_CGROUP_INET6_POST_BIND", 13),
    ("BPF_CGROUP_UDP4_SENDMSG", 14),
    ("BPF_CGROUP_UDP6_SENDMSG", 15),
    ("BPF_CGROUP_INET_SOCK_RELEASE", 34),
];

/// The number of the attach type named `name`, if portguard uses it.
pub fn attach_type_number(name: &str) -> Option<u32> {
    CGROUP_ATTACH_TYPES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
