//! "What must fail, fails; what must work, works", through the kernel path a
//! workload takes: a child process in a short-lived cgroup below the guarded
//! one creates sockets and tries what the rules refuse and what they allow.
//!
//! Nothing leaves the host and no bind takes a port. Every bind, refused or
//! allowed, passes an address whose `sa_family` is the other IP family: the
//! kernel runs the cgroup bind hook before it checks the family, so
//! portguard judges the real address and port, and then the kernel fails the
//! call with EAFNOSUPPORT before it looks at the port table. A workload
//! re-binding its own port at that instant can never meet the probe there.
//! Refused connects and sends use loopback only, on a port the verifier
//! itself holds bound (not listening) for the moment of the probe: a TCP
//! connect there meets a reset from the local stack, and a datagram there
//! lands in the verifier's own socket. The allowed connect is a UDP
//! connect(), which sends nothing, or a TCP connect to a loopback port
//! nobody listens on.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use portguard_common::{
    AF_INET, AF_INET6, BIND_ADDR_ANY, BIND_ADDR_EXACT, BindKey, ConnectKey, DenialKey,
    GUARD_ALLOW_EPHEMERAL_BIND, GUARD_ALLOW_OTHER_SOCKETS, IPPROTO_TCP, IPPROTO_UDP, Op, PortSet, Verdict,
};

use super::{
    OwnProbeCounts,
    report::{Check, Outcome},
};
use crate::{
    bpf::DenialCounters,
    policy::{CompiledGuard, Mode},
};

/// Ports IANA leaves unassigned, tried in order for the refused attempts:
/// low and fixed, so the per-port denial metrics gain a label or two, not
/// one per verification.
const PROBE_PORTS: [u16; 15] = [4, 6, 8, 10, 12, 14, 16, 26, 28, 30, 32, 34, 36, 40, 60];
/// The child writes one result per attempt; a probe makes at most this many.
const MAX_ATTEMPTS: usize = 32;
/// `socket()` itself failed: the result is this plus its errno.
const SOCKET_FAILED: i32 = 100_000;
/// Probe cgroups are named `<PROBE_CGROUP_PREFIX><pid>-<n>`.
pub(crate) const PROBE_CGROUP_PREFIX: &str = "portguard-verify-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Socket,
    Bind,
    Connect,
    SendTo,
}

struct Attempt {
    check: &'static str,
    subject: String,
    /// A violation: must be refused (enforce) or counted (audit).
    violation: bool,
    action: Action,
    domain: i32,
    ty: i32,
    protocol: i32,
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
    counter: Option<DenialKey>,
}

/// One guard's view for the probe.
pub(super) struct Guard<'a> {
    pub(super) guard: &'a CompiledGuard,
    pub(super) guard_id: u32,
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn sock_type(proto: u8) -> i32 {
    if proto == IPPROTO_TCP { libc::SOCK_STREAM } else { libc::SOCK_DGRAM }
}

fn domain(addr: &IpAddr) -> i32 {
    if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

/// The family a bind probe claims for `addr`: the other one, so the kernel
/// refuses the bind with EAFNOSUPPORT right after the cgroup hook judged
/// it (`inet_bind_sk` and `inet6_bind_sk` run the hook before
/// `__inet_bind`/`__inet6_bind` check the family). portguard's bind
/// programs never read `user_family`, so the verdict is the real one.
fn other_family(addr: &IpAddr) -> libc::sa_family_t {
    (if addr.is_ipv4() { libc::AF_INET6 } else { libc::AF_INET }) as libc::sa_family_t
}

fn loopback(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) }
}

fn proto_name(proto: u8) -> &'static str {
    if proto == IPPROTO_TCP { "tcp" } else { "udp" }
}

/// Whether the compiled guard allows binding `addr:port` (as the kernel's
/// `bind_allowed` decides).
fn bind_allowed(g: &CompiledGuard, proto: u8, addr: IpAddr, port: u16) -> bool {
    if port == 0 {
        return g.flags & GUARD_ALLOW_EPHEMERAL_BIND != 0;
    }
    let mapped = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let any = BindKey { proto, addr_kind: BIND_ADDR_ANY, port, ..BindKey::default() };
    let exact = BindKey { proto, addr_kind: BIND_ADDR_EXACT, port, addr: mapped, ..BindKey::default() };
    g.bind.contains_key(&any) || g.bind.contains_key(&exact)
}

fn in_prefix(k: &ConnectKey, addr: IpAddr) -> bool {
    let (family, bytes, bits): (u8, [u8; 16], u32) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (AF_INET, b, 32)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets(), 128),
    };
    if k.family != family || u32::from(k.prefix_len) > bits {
        return false;
    }
    let as_u128 = |b: [u8; 16]| u128::from_be_bytes(b);
    let mask = if k.prefix_len == 0 { 0 } else { u128::MAX << (128 - u32::from(k.prefix_len)) };
    as_u128(bytes) & mask == as_u128(k.addr) & mask
}

fn connect_allowed(g: &CompiledGuard, proto: u8, addr: IpAddr, port: u16) -> bool {
    g.connect.iter().any(|(k, ports)| k.proto == proto && in_prefix(k, addr) && ports.contains(port))
}

/// Sockets the verifier holds bound (never listening) during a probe.
#[derive(Default)]
struct Holders {
    held: BTreeMap<(u8, bool, u16), OwnedFd>,
}

impl Holders {
    /// Binds loopback `port` for `proto` (unless already held); false when
    /// the port is in use or cannot be bound.
    fn hold(&mut self, proto: u8, v6: bool, port: u16) -> bool {
        if self.held.contains_key(&(proto, v6, port)) {
            return true;
        }
        let addr = SocketAddr::new(loopback(v6), port);
        let (ss, len) = sockaddr(addr);
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(domain(&addr.ip()), sock_type(proto) | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return false;
        }
        // SAFETY: the kernel just returned this new fd to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `ss` holds a valid address of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return false;
        }
        self.held.insert((proto, v6, port), fd);
        true
    }

    /// The first probe port for which `refused(port)` and that can be held.
    fn pick(&mut self, proto: u8, v6: bool, refused: impl Fn(u16) -> bool) -> Option<u16> {
        PROBE_PORTS.into_iter().find(|&p| refused(p) && self.hold(proto, v6, p))
    }
}

fn ipv6_available() -> bool {
    let mut h = Holders::default();
    h.hold(IPPROTO_UDP, true, 0)
}

/// What the probe of one guarded cgroup tries, and the checks that are not
/// meaningful for this guard.
fn plan(
    g: &Guard<'_>,
    holders: &mut Holders,
    learned: &dyn Fn(IpAddr) -> bool,
) -> (Vec<Attempt>, Vec<Check>) {
    let guard = g.guard;
    let audit = guard.mode == Mode::Audit;
    let verdict = if audit { Verdict::Audited } else { Verdict::Denied };
    let key = |op: Op, proto: u8, port: u16| DenialKey {
        guard_id: g.guard_id,
        port,
        op: op as u8,
        proto,
        verdict: verdict as u8,
        reason: portguard_common::REASON_NONE,
        _pad: [0; 2],
    };
    let mut attempts = Vec::new();
    let mut skipped = Vec::new();
    let v6_ok = ipv6_available();
    let mut used: std::collections::BTreeSet<(Op, u8, u16)> = Default::default();
    let addr_attempt = |check: &'static str,
                        subject: String,
                        violation: bool,
                        action: Action,
                        proto: u8,
                        addr: SocketAddr,
                        counter: Option<DenialKey>| {
        let (mut ss, mut len) = sockaddr(addr);
        if action == Action::Bind {
            ss.ss_family = other_family(&addr.ip());
            // Long enough for either family: an LSM checks the length for
            // the family the caller claims (SELinux refuses an AF_INET6
            // address shorter than 24 bytes with EINVAL before the cgroup
            // hook), the bind itself for the socket's (16 or 24 bytes).
            len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        }
        Attempt {
            check,
            subject,
            violation,
            action,
            domain: domain(&addr.ip()),
            ty: sock_type(proto),
            protocol: 0,
            addr: ss,
            len,
            counter,
        }
    };

    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        if v6 && !v6_ok {
            skipped.push(Check::new(
                "probe refused",
                "IPv6 attempts",
                Outcome::Skip,
                "",
                "IPv6 is not available on this host",
            ));
            continue;
        }
        let lo = loopback(v6);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let pn = proto_name(proto);
            // Each attempt its own counter key: v4 and v6 use different
            // ports, so one family's count can never stand for the other's.
            // No hold: a bind probe never takes its port (see other_family).
            let bind_port = PROBE_PORTS
                .into_iter()
                .find(|&p| !bind_allowed(guard, proto, lo, p) && !used.contains(&(Op::Bind, proto, p)));
            match bind_port {
                Some(p) => attempts.push(addr_attempt(
                    "probe refused",
                    format!("bind {pn} {}", SocketAddr::new(lo, p)),
                    true,
                    Action::Bind,
                    proto,
                    SocketAddr::new(lo, p),
                    Some(key(Op::Bind, proto, p)),
                )),
                None => skipped.push(Check::new(
                    "probe refused",
                    format!("bind {pn} {fam}"),
                    Outcome::Skip,
                    "",
                    "the rules allow every probe port on loopback",
                )),
            }
            let connect_port = holders.pick(proto, v6, |p| {
                !connect_allowed(guard, proto, lo, p) && !used.contains(&(Op::Connect, proto, p))
            });
            used.extend(bind_port.map(|p| (Op::Bind, proto, p)));
            used.extend(connect_port.map(|p| (Op::Connect, proto, p)));
            match connect_port {
                Some(p) => {
                    let to = SocketAddr::new(lo, p);
                    attempts.push(addr_attempt(
                        "probe refused",
                        format!("connect {pn} {to}"),
                        true,
                        Action::Connect,
                        proto,
                        to,
                        Some(key(Op::Connect, proto, p)),
                    ));
                    if proto == IPPROTO_UDP {
                        attempts.push(addr_attempt(
                            "probe refused",
                            format!("sendto {pn} {to}"),
                            true,
                            Action::SendTo,
                            proto,
                            to,
                            Some(key(Op::Sendmsg, proto, p)),
                        ));
                    }
                }
                None => skipped.push(Check::new(
                    "probe refused",
                    format!("connect {pn} {fam}"),
                    Outcome::Skip,
                    "",
                    "the rules allow every probe port to loopback (or none is free)",
                )),
            }
        }
    }
    if !guard.names.is_empty() {
        match never_learned(guard, holders, &used, learned) {
            Ok((proto, to)) => attempts.push(addr_attempt(
                "probe refused",
                format!(
                    "connect {} {to} (a port of the guard's names, an address it never learned)",
                    proto_name(proto)
                ),
                true,
                Action::Connect,
                proto,
                to,
                Some(key(Op::Connect, proto, to.port())),
            )),
            Err(why) => skipped.push(Check::new("probe refused", "connect by name", Outcome::Skip, "", why)),
        }
    }
    if guard.flags & GUARD_ALLOW_EPHEMERAL_BIND == 0 {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let to = SocketAddr::new(loopback(false), 0);
            attempts.push(addr_attempt(
                "probe refused",
                format!("bind {} {to} (port 0)", proto_name(proto)),
                true,
                Action::Bind,
                proto,
                to,
                Some(key(Op::Bind, proto, 0)),
            ));
        }
    } else {
        skipped.push(Check::new("probe refused", "bind port 0", Outcome::Skip, "", "allow_ephemeral_bind"));
    }
    if guard.flags & GUARD_ALLOW_OTHER_SOCKETS == 0 {
        for (v6, domain, protocol) in
            [(false, libc::AF_INET, libc::IPPROTO_ICMP), (true, libc::AF_INET6, libc::IPPROTO_ICMPV6)]
        {
            if v6 && !v6_ok {
                continue;
            }
            let mut a = addr_attempt(
                "probe refused",
                format!("raw socket {}", if v6 { "icmpv6" } else { "icmp" }),
                true,
                Action::Socket,
                IPPROTO_UDP,
                SocketAddr::new(loopback(false), 0),
                Some(key(Op::Socket, protocol as u8, 0)),
            );
            (a.domain, a.ty, a.protocol) = (domain, libc::SOCK_RAW, protocol);
            attempts.push(a);
        }
    } else {
        skipped.push(Check::new("probe refused", "raw socket", Outcome::Skip, "", "allow_raw_sockets"));
    }

    match allowed_bind(guard) {
        Some((proto, to)) => attempts.push(addr_attempt(
            "probe allowed",
            format!("bind {} {to}", proto_name(proto)),
            false,
            Action::Bind,
            proto,
            to,
            None,
        )),
        None => {
            skipped.push(Check::new("probe allowed", "bind", Outcome::Skip, "", "the guard allows no bind"))
        }
    }
    match allowed_connect(guard, holders) {
        Ok((proto, to)) => attempts.push(addr_attempt(
            "probe allowed",
            format!("connect {} {to}", proto_name(proto)),
            false,
            Action::Connect,
            proto,
            to,
            None,
        )),
        Err(why) => skipped.push(Check::new("probe allowed", "connect", Outcome::Skip, "", why)),
    }
    (attempts, skipped)
}

/// For a guard with DNS names: a loopback port one of its names allows,
/// which no address rule allows to loopback and no other attempt uses,
/// while the guard holds no valid answer for loopback: the kernel must
/// refuse it for want of an answer (its learned-address check), not only
/// for want of an address rule. UDP first: a UDP connect sends nothing
/// and needs no port held (so two verifications at once never collide).
fn never_learned(
    g: &CompiledGuard,
    holders: &mut Holders,
    used: &std::collections::BTreeSet<(Op, u8, u16)>,
    learned: &dyn Fn(IpAddr) -> bool,
) -> Result<(u8, SocketAddr), &'static str> {
    let lo = loopback(false);
    if learned(lo) {
        return Err("the guard's workload holds an answer for 127.0.0.1: no address is known never learned");
    }
    let mut names: Vec<(&(u8, String), &PortSet)> = g.names.iter().collect();
    names.sort_by_key(|((proto, _), _)| *proto != IPPROTO_UDP);
    for ((proto, _), ports) in names {
        let candidates = ports.ranges[..(ports.count as usize).min(ports.ranges.len())]
            .iter()
            .flat_map(|r| r.first..=r.last.min(r.first.saturating_add(7)));
        for p in candidates.filter(|p| *p != 0) {
            let free = !connect_allowed(g, *proto, lo, p) && !used.contains(&(Op::Connect, *proto, p));
            // A TCP connect the kernel wrongly let through must meet a
            // socket of ours, not a service; a UDP connect sends nothing.
            if free && (*proto == IPPROTO_UDP || holders.hold(*proto, false, p)) {
                return Ok((*proto, SocketAddr::new(lo, p)));
            }
        }
    }
    Err("every port of the guard's names is allowed to 127.0.0.1 by an address rule, or in use")
}

/// One bind the rules allow: any-address rules on loopback first.
fn allowed_bind(g: &CompiledGuard) -> Option<(u8, SocketAddr)> {
    let mut keys: Vec<&BindKey> = g.bind.keys().collect();
    keys.sort_by_key(|k| (k.addr_kind != BIND_ADDR_ANY, k.proto, k.port, k.addr));
    let k = keys.first()?;
    let addr = if k.addr_kind == BIND_ADDR_ANY {
        loopback(false)
    } else {
        let a = Ipv6Addr::from(k.addr);
        a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
    };
    Some((k.proto, SocketAddr::new(addr, k.port)))
}

/// One connect the rules allow that sends nothing off the host: a UDP
/// connect() (which sends nothing), else a TCP connect to a loopback port
/// the verifier holds (so nothing listens there).
fn allowed_connect(g: &CompiledGuard, holders: &mut Holders) -> Result<(u8, SocketAddr), &'static str> {
    let mut keys: Vec<(&ConnectKey, &PortSet)> = g.connect.iter().collect();
    keys.sort_by_key(|(k, _)| (k.proto != IPPROTO_UDP, k.family, std::cmp::Reverse(k.prefix_len), k.addr));
    let peer_in = |k: &ConnectKey| -> IpAddr {
        let lo = loopback(k.family == AF_INET6);
        if in_prefix(k, lo) {
            return lo;
        }
        let host_bit = u128::from(k.prefix_len < if k.family == AF_INET { 32 } else { 128 });
        if k.family == AF_INET {
            let net = u32::from_be_bytes([k.addr[0], k.addr[1], k.addr[2], k.addr[3]]);
            IpAddr::V4(Ipv4Addr::from(net | host_bit as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from_be_bytes(k.addr) | host_bit))
        }
    };
    for (k, ports) in &keys {
        let Some(first) = ports.ranges.first().filter(|_| ports.count > 0) else { continue };
        if k.proto == IPPROTO_UDP {
            return Ok((IPPROTO_UDP, SocketAddr::new(peer_in(k), first.first)));
        }
        let lo = loopback(k.family == AF_INET6);
        if k.proto == IPPROTO_TCP && in_prefix(k, lo) {
            let candidates = ports.ranges[..ports.count as usize]
                .iter()
                .flat_map(|r| r.first..=r.last.min(r.first.saturating_add(7)));
            for p in candidates.filter(|p| *p != 0) {
                if holders.hold(IPPROTO_TCP, k.family == AF_INET6, p) {
                    return Ok((IPPROTO_TCP, SocketAddr::new(lo, p)));
                }
            }
        }
    }
    if keys.is_empty() {
        Err("the guard allows no connect")
    } else {
        Err(
            "only TCP to peers off the host, or to loopback ports in use: a probe would send a packet or reach a service",
        )
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs the attempts in a child process placed in the cgroup whose
/// `cgroup.procs` is `procs`; returns one result per attempt (0 done,
/// an errno, or [`SOCKET_FAILED`] plus the errno of `socket()`).
fn run_in_child(procs: &Path, attempts: &[Attempt]) -> io::Result<Vec<i32>> {
    assert!(attempts.len() <= MAX_ATTEMPTS, "a probe makes at most {MAX_ATTEMPTS} attempts");
    let path = CString::new(procs.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: open(2) of a NUL-terminated path; the fd is owned below.
    let procs_fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if procs_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new fd to us.
    let procs_fd = unsafe { OwnedFd::from_raw_fd(procs_fd) };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created for us.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child (possibly of a multi-threaded process) only makes
    // async-signal-safe system calls on memory prepared before the fork,
    // allocates nothing, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child(procs_fd.as_raw_fd(), write_end.as_raw_fd(), attempts);
    }
    drop(write_end);
    drop(procs_fd);
    let mut buf = [0i32; MAX_ATTEMPTS + 1];
    let want = (attempts.len() + 1) * size_of::<i32>();
    let mut got = 0usize;
    while got < want {
        // SAFETY: reading into the bytes of `buf` past what was read so far.
        let n = unsafe {
            libc::read(read_end.as_raw_fd(), buf.as_mut_ptr().cast::<u8>().add(got).cast(), want - got)
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && errno() == libc::EINTR {}
    if got < want {
        return Err(io::Error::other("the probe process ended without reporting"));
    }
    if buf[0] != 0 {
        return Err(io::Error::other(format!(
            "the probe process could not join the probe cgroup: {}",
            io::Error::from_raw_os_error(buf[0])
        )));
    }
    Ok(buf[1..=attempts.len()].to_vec())
}

/// The probe process: joins the cgroup, tries each attempt, reports, exits.
fn child(procs: i32, out: i32, attempts: &[Attempt]) -> ! {
    let mut results = [0i32; MAX_ATTEMPTS + 1];
    // SAFETY: only system calls on memory prepared before the fork; _exit
    // ends the process without running anything of the parent's.
    unsafe {
        let name = b"pg-verify-probe\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            results[0] = *libc::__errno_location();
            libc::write(out, results.as_ptr().cast(), size_of_val(&results));
            libc::_exit(1);
        }
        for (i, a) in attempts.iter().enumerate() {
            results[i + 1] = attempt(a);
        }
        libc::write(out, results.as_ptr().cast(), (attempts.len() + 1) * size_of::<i32>());
        libc::_exit(0);
    }
}

/// One attempt in the probe process.
///
/// # Safety
/// Async-signal-safe: system calls only, nothing allocated.
unsafe fn attempt(a: &Attempt) -> i32 {
    // SAFETY: system calls on the attempt's prepared address; the socket is
    // closed before returning.
    unsafe {
        let fd = libc::socket(a.domain, a.ty | libc::SOCK_CLOEXEC, a.protocol);
        if fd < 0 {
            return SOCKET_FAILED + *libc::__errno_location();
        }
        // A connect never waits long: loopback answers at once.
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let addr = (&a.addr as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
        let rc = match a.action {
            Action::Socket => 0,
            Action::Bind => libc::bind(fd, addr, a.len),
            Action::Connect => libc::connect(fd, addr, a.len),
            Action::SendTo => libc::sendto(fd, std::ptr::null(), 0, 0, addr, a.len) as i32,
        };
        let result = if rc < 0 { *libc::__errno_location() } else { 0 };
        libc::close(fd);
        result
    }
}

fn describe(code: i32) -> String {
    let (prefix, errno) =
        if code >= SOCKET_FAILED { ("socket() failed: ", code - SOCKET_FAILED) } else { ("", code) };
    if errno == 0 {
        return format!("{prefix}succeeded");
    }
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EINVAL => "EINVAL",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    if name.is_empty() {
        format!("{prefix}errno {errno} ({text})")
    } else {
        format!("{prefix}{name} ({text})")
    }
}

fn refused(code: i32) -> bool {
    code == libc::EPERM || code == SOCKET_FAILED + libc::EPERM
}

static NEXT_PROBE: AtomicU64 = AtomicU64::new(0);

/// Probes one guarded cgroup (`dir`, shown as `rel`): plans, runs the
/// attempts in a child cgroup made for them and removed after, and judges
/// each result and counter. `on_cgroup` learns the probe cgroup's id (the
/// agent keeps its own probes out of the denial log); `own` tallies how
/// many counts each denial key gained from the probe's own attempts (at
/// most one per attempt, never what a workload added to the key meanwhile).
/// `learned` says whether the guarded cgroup holds a valid DNS answer for
/// an address (the probe never claims such an address unlearned).
pub(super) fn probe_cgroup(
    g: &Guard<'_>,
    dir: &Path,
    rel: &str,
    counters: &DenialCounters,
    on_cgroup: &dyn Fn(u64),
    own: Option<&OwnProbeCounts>,
    learned: &dyn Fn(IpAddr) -> bool,
) -> Vec<Check> {
    let mut holders = Holders::default();
    let (attempts, mut checks) = plan(g, &mut holders, learned);
    for c in &mut checks {
        c.subject = format!("{rel}: {}", c.subject);
    }
    let name =
        format!("{PROBE_CGROUP_PREFIX}{}-{}", std::process::id(), NEXT_PROBE.fetch_add(1, Ordering::Relaxed));
    let probe_dir = dir.join(&name);
    let fail_all =
        |why: String| Check::new("probe", rel, Outcome::Fail, "a probe process in a child cgroup", why);
    if let Err(e) = std::fs::create_dir(&probe_dir) {
        checks.push(fail_all(format!("cannot create {}: {e}", probe_dir.display())));
        return checks;
    }
    if let Ok(Some(id)) = crate::cgroup::cgroup_id(&probe_dir) {
        on_cgroup(id);
    }
    let mut need: BTreeMap<DenialKey, u64> = BTreeMap::new();
    for k in attempts.iter().filter_map(|a| a.counter) {
        *need.entry(k).or_default() += 1;
    }
    // Held for the few milliseconds of the attempts: see OwnProbeCounts.
    let mut tally = own.map(OwnProbeCounts::lock);
    let before: BTreeMap<DenialKey, u64> = need.keys().map(|k| (*k, counters.get(k))).collect();
    let results = run_in_child(&probe_dir.join("cgroup.procs"), &attempts);
    // The child has exited: every count its attempts made is in.
    let moved: BTreeMap<DenialKey, u64> =
        before.iter().map(|(k, b)| (*k, counters.get(k).saturating_sub(*b))).collect();
    if let Some(t) = &mut tally {
        for (k, n) in &need {
            t.add(*k, (*n).min(moved[k]));
        }
    }
    drop(tally);
    remove_probe_cgroup(&probe_dir);
    drop(holders);
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            checks.push(fail_all(e.to_string()));
            return checks;
        }
    };
    let audit = g.guard.mode == Mode::Audit;
    for (a, code) in attempts.iter().zip(results) {
        let subject = format!("{rel}: {}", a.subject);
        let counted = a.counter.map(|k| (moved[&k], need[&k]));
        let counter = |c: Option<(u64, u64)>| {
            c.map_or(String::new(), |(m, _)| {
                format!(", {} counter +{m}", if audit { "audited" } else { "denied" })
            })
        };
        let check = if a.action == Action::Bind && code == libc::EINVAL {
            // Refused before portguard's hook ran: nothing to judge, and a
            // bind with the real family would take the port.
            Check::new(
                a.check,
                subject,
                Outcome::Skip,
                "",
                "EINVAL: a security module refused the bind's swapped sa_family before portguard's hook ran \
                 (Smack does); not retried with the real family, which would take the port",
            )
        } else if !a.violation {
            let outcome = match code {
                c if refused(c) => Outcome::Fail,
                // Judged and let through, and no port taken (see other_family).
                libc::EAFNOSUPPORT => Outcome::Pass,
                _ if a.action == Action::Bind => Outcome::Skip,
                _ => Outcome::Pass,
            };
            Check::new(a.check, subject, outcome, "not refused by portguard", describe(code))
        } else if audit {
            let let_through =
                if a.action == Action::Bind { code == libc::EAFNOSUPPORT } else { !refused(code) };
            let ok = let_through && counted.is_some_and(|(m, n)| m >= n);
            let got = format!("{}{}", describe(code), counter(counted));
            Check::new(
                a.check,
                subject,
                if ok { Outcome::Pass } else { Outcome::Fail },
                "let through and counted as an audited violation",
                got,
            )
        } else {
            let ok = refused(code) && counted.is_some_and(|(m, n)| m >= n);
            let got = format!("{}{}", describe(code), counter(counted));
            Check::new(
                a.check,
                subject,
                if ok { Outcome::Pass } else { Outcome::Fail },
                "refused with EPERM and counted as denied",
                got,
            )
        };
        checks.push(check);
    }
    checks
}

fn remove_probe_cgroup(dir: &Path) {
    // The reaped child may take a moment to leave the cgroup's counts.
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove the verify probe's cgroup");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_and_compile;

    fn guard(text: &str) -> CompiledGuard {
        let (_, c) = parse_and_compile("t.toml", text).expect("policy");
        c.guards.into_iter().next().expect("a guard")
    }

    const POLICY: &str = r#"
version = 1
[[guard]]
name = "g"
cgroup = "/g"
  [[guard.bind]]
  ports = [4, 8080]
  [[guard.bind]]
  ports = [6]
  address = "127.0.0.1"
  [[guard.connect]]
  peer = "127.0.0.0/8"
  ports = [4]
  [[guard.connect]]
  peer = "10.1.0.0/16"
  ports = [53]
  proto = "udp"
"#;

    #[test]
    fn rule_queries_match_the_kernels_lookups() {
        let g = guard(POLICY);
        let lo = loopback(false);
        assert!(bind_allowed(&g, IPPROTO_TCP, lo, 4));
        assert!(bind_allowed(&g, IPPROTO_TCP, lo, 6));
        assert!(!bind_allowed(&g, IPPROTO_TCP, "127.0.0.2".parse().unwrap(), 6));
        assert!(!bind_allowed(&g, IPPROTO_UDP, lo, 4));
        assert!(!bind_allowed(&g, IPPROTO_TCP, lo, 0));
        assert!(connect_allowed(&g, IPPROTO_TCP, lo, 4));
        assert!(!connect_allowed(&g, IPPROTO_TCP, lo, 6));
        assert!(!connect_allowed(&g, IPPROTO_UDP, lo, 4));
        assert!(connect_allowed(&g, IPPROTO_UDP, "10.1.2.3".parse().unwrap(), 53));
        assert!(!connect_allowed(&g, IPPROTO_UDP, "10.2.0.1".parse().unwrap(), 53));
    }

    #[test]
    fn the_allowed_connect_is_a_udp_connect_inside_the_rule() {
        let g = guard(POLICY);
        let (proto, to) = allowed_connect(&g, &mut Holders::default()).expect("one");
        assert_eq!((proto, to), (IPPROTO_UDP, "10.1.0.1:53".parse().unwrap()));
        let (proto, to) = allowed_bind(&g).expect("one");
        assert_eq!((proto, to.ip()), (IPPROTO_TCP, loopback(false)));
        assert!(bind_allowed(&g, proto, to.ip(), to.port()));
    }
}
