//! pg-probe: performs one socket operation and prints how it went.
//!
//! The integration tests run it inside the cgroups they guard. It uses raw
//! libc calls so that it can do what std will not: bind with AF_UNSPEC,
//! move itself between socket() and connect(), and so on.
//!
//! Usage:
//!   pg-probe bind tcp|udp IP PORT          -> "ok port=N" | "err ERRNO"
//!   pg-probe bind-unspec tcp|udp PORT      (AF_INET socket, sa_family AF_UNSPEC)
//!   pg-probe connect tcp|udp IP PORT
//!   pg-probe sendto IP PORT                (unconnected UDP)
//!   pg-probe sendto-autobind IP PORT       (the same, then prints the source port
//!                                           the kernel picked: "ok port=N")
//!   pg-probe move-then-connect tcp|udp IP PORT CGROUP_PROCS
//!                                          (socket(), then join CGROUP_PROCS, then connect())
//!   pg-probe hammer bind|connect tcp|udp IP ALLOWED_PORT DENIED_PORT MILLIS
//!       alternates the operation on a port that should pass and one that
//!       should be refused for MILLIS ms, and prints
//!       "allowed_ok=A allowed_refused=B denied_ok=C denied_refused=D"
//!   pg-probe flood tcp|udp IP PORT COUNT
//!       connect() COUNT times on one socket as fast as it can and prints
//!       "attempted=N refused=M"
//!
//!   pg-probe bench w1|w2|w3|w4 PORT ITERATIONS   (see bench.rs)
//!   pg-probe sendmsg IP PORT               (UDP, sendmsg(2) with a destination)
//!   pg-probe sendmmsg IP PORT              (UDP, two messages in one sendmmsg(2))
//!   pg-probe fastopen IP PORT              (TCP sendto(MSG_FASTOPEN): connects and sends)
//!   pg-probe scm-pass tcp|udp IP PORT PROCS
//!       creates the socket here, hands it over SCM_RIGHTS to a child that
//!       first moves itself into PROCS; the child connects
//!   pg-probe wait-then-connect tcp|udp IP PORT FILE [PROCS]
//!       creates the socket, prints "ready", waits for FILE, then connects
//!       (after moving itself into PROCS, when given)
//!   pg-probe socket raw|sctp|packet        (just create one)
//!   pg-probe listen-unbound                (TCP listen() without bind(): autobind)
//!   pg-probe serve IP PORT                 (TCP bind() then listen())
//!   pg-probe uring-connect tcp|udp IP PORT (connect through io_uring)
//!   pg-probe uring-bind tcp|udp IP PORT    (bind through io_uring, IORING_OP_BIND)
//!   pg-probe uring-listen-unbound          (TCP IORING_OP_LISTEN without a bind)
//!       the io_uring modes print "unsupported ..." where the kernel lacks the op
//!   pg-probe bpf-fault prog-load|link-create BPF_CGROUP_... -- PROGRAM ARGS...
//!       runs PROGRAM as if the kernel lacked that cgroup hook (see bpf_fault.rs)
//!   pg-probe bind-no-port-connect IP PORT
//!       TCP: IP_BIND_ADDRESS_NO_PORT, bind(IP, 0), then connect(IP, PORT);
//!       prints "bind: err ..." or the connect's verdict
//!
//! An IPv6 IP (including ::ffff:a.b.c.d) uses an AF_INET6 socket.

mod bench;
mod bpf_fault;

use std::{io, mem::size_of, net::IpAddr, process::ExitCode};

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

struct Sock(libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

fn socket(family: libc::c_int, proto: &str) -> io::Result<Sock> {
    let ty = match proto {
        "tcp" => libc::SOCK_STREAM,
        "udp" => libc::SOCK_DGRAM,
        other => panic!("unknown protocol {other}"),
    };
    // SAFETY: plain socket(2).
    check(unsafe { libc::socket(family, ty, 0) }).map(Sock)
}

/// A sockaddr for `ip:port`, sized for sockaddr_in6.
fn sockaddr(ip: IpAddr, port: u16) -> (libc::sockaddr_in6, libc::socklen_t, libc::c_int) {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_in6.
            let sin = unsafe { &mut *(&mut sa as *mut libc::sockaddr_in6 as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            (sa, size_of::<libc::sockaddr_in>() as libc::socklen_t, libc::AF_INET)
        }
        IpAddr::V6(v6) => {
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            sa.sin6_addr.s6_addr = v6.octets();
            (sa, size_of::<libc::sockaddr_in6>() as libc::socklen_t, libc::AF_INET6)
        }
    }
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad IP {s}"))
}

fn local_port(fd: libc::c_int) -> u16 {
    // SAFETY: getsockname into a zeroed sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    unsafe { libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) };
    // sin_port and sin6_port sit at the same offset.
    u16::from_be(sa.sin6_port)
}

fn bind(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::bind(s.0, &sa as *const _ as *const libc::sockaddr, len) })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

fn bind_unspec(proto: &str, port: u16) -> io::Result<String> {
    let s = socket(libc::AF_INET, proto)?;
    // SAFETY: a zeroed sockaddr_in with family AF_UNSPEC and INADDR_ANY, the
    // one AF_UNSPEC form inet_bind accepts for compatibility.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_UNSPEC as libc::sa_family_t;
    sin.sin_port = port.to_be();
    check(unsafe {
        libc::bind(s.0, &sin as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_in>() as u32)
    })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

fn connect_on(s: &Sock, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, _) = sockaddr(ip, port);
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::connect(s.0, &sa as *const _ as *const libc::sockaddr, len) })?;
    Ok("ok".into())
}

fn family_of(ip: IpAddr) -> libc::c_int {
    if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

fn connect(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    connect_on(&s, ip, port)
}

fn sendto(ip: IpAddr, port: u16) -> io::Result<String> {
    sendto_on(ip, port).map(|_| "ok".into())
}

fn sendto_autobind(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = sendto_on(ip, port)?;
    Ok(format!("ok port={}", local_port(s.0)))
}

fn sendto_on(ip: IpAddr, port: u16) -> io::Result<Sock> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, "udp")?;
    let msg = b"portguard-probe";
    // SAFETY: buffers valid for their lengths.
    let rc = unsafe {
        libc::sendto(s.0, msg.as_ptr().cast(), msg.len(), 0, &sa as *const _ as *const libc::sockaddr, len)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn join_cgroup(procs: &str) -> io::Result<()> {
    std::fs::write(procs, std::process::id().to_string())
}

fn move_then_connect(proto: &str, ip: IpAddr, port: u16, procs: &str) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    join_cgroup(procs).map_err(|e| io::Error::new(e.kind(), format!("join {procs}: {e}")))?;
    connect_on(&s, ip, port)
}

/// Counts verdicts of a repeated operation; see the usage above.
fn hammer(op: &str, proto: &str, ip: IpAddr, allowed: u16, denied: u16, millis: u64) -> io::Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(millis);
    let attempt = |port: u16| -> io::Result<bool> {
        let r = match op {
            "bind" => bind(proto, ip, port),
            "connect" => connect(proto, ip, port),
            other => panic!("hammer: unknown op {other}"),
        };
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            Err(e) => Err(e),
        }
    };
    let (mut a_ok, mut a_ref, mut d_ok, mut d_ref) = (0u64, 0u64, 0u64, 0u64);
    while std::time::Instant::now() < deadline {
        if attempt(allowed)? {
            a_ok += 1
        } else {
            a_ref += 1
        }
        if attempt(denied)? { d_ok += 1 } else { d_ref += 1 }
    }
    Ok(format!("allowed_ok={a_ok} allowed_refused={a_ref} denied_ok={d_ok} denied_refused={d_ref}"))
}

fn dest(ip: IpAddr, port: u16) -> (libc::sockaddr_in6, libc::socklen_t, libc::c_int) {
    sockaddr(ip, port)
}

fn sendmsg_to(ip: IpAddr, port: u16, many: bool) -> io::Result<String> {
    let (mut sa, len, family) = dest(ip, port);
    let s = socket(family, "udp")?;
    let mut payload = *b"portguard-probe";
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&mut sa as *mut libc::sockaddr_in6).cast();
    hdr.msg_namelen = len;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if many {
        let mut msgs =
            [libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }, libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }];
        // SAFETY: two valid mmsghdrs.
        let n = unsafe { libc::sendmmsg(s.0, msgs.as_mut_ptr(), 2, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(format!("ok sent={n}"));
    }
    // SAFETY: a valid msghdr.
    if unsafe { libc::sendmsg(s.0, &hdr, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok("ok".into())
}

fn fastopen(ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = dest(ip, port);
    let s = socket(family, "tcp")?;
    let msg = b"GET / HTTP/1.0\r\n\r\n";
    // SAFETY: buffers valid for their lengths.
    let rc = unsafe {
        libc::sendto(
            s.0,
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_FASTOPEN,
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok("ok".into())
}

/// Creates the socket in this process's cgroup, passes it over a unix
/// socket to a child that first moves to `procs`; the child connects.
fn scm_pass(proto: &str, ip: IpAddr, port: u16, procs: &str) -> io::Result<String> {
    let mut pair = [0; 2];
    check(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) })?;
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let result = (|| -> io::Result<String> {
            join_cgroup(procs)?;
            let fd = recv_fd(pair[1])?;
            connect_on(&Sock(fd), ip, port)
        })();
        let line = match result {
            Ok(l) => l,
            Err(e) => format!("err {}", errno_name(&e)),
        };
        println!("{line}");
        unsafe { libc::_exit(0) };
    }
    let s = socket(family_of(ip), proto)?;
    send_fd(pair[0], s.0)?;
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The child printed the verdict.
    std::process::exit(0);
}

fn send_fd(over: libc::c_int, fd: libc::c_int) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u8; 64];
    // SAFETY: standard SCM_RIGHTS message construction into a large enough buffer.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        if libc::sendmsg(over, &hdr, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(over: libc::c_int) -> io::Result<libc::c_int> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u8; 64];
    // SAFETY: receiving one SCM_RIGHTS fd into a large enough buffer.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = cbuf.len();
        if libc::recvmsg(over, &mut hdr, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        if cmsg.is_null() {
            return Err(io::Error::other("no fd received"));
        }
        Ok(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()))
    }
}

fn wait_then_connect(
    proto: &str,
    ip: IpAddr,
    port: u16,
    file: &str,
    procs: Option<&str>,
) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    println!("ready");
    use std::io::Write as _;
    let _ = io::stdout().flush();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other("timed out waiting for the go file"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if let Some(procs) = procs {
        join_cgroup(procs).map_err(|e| io::Error::new(e.kind(), format!("join {procs}: {e}")))?;
    }
    connect_on(&s, ip, port)
}

fn serve(ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, "tcp")?;
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::bind(s.0, &sa as *const _ as *const libc::sockaddr, len) })?;
    check(unsafe { libc::listen(s.0, 1) })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

/// Binds (and for TCP listens), reports, and keeps the port live until
/// killed: a long-lived server for the port-inventory tests.
fn hold(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::bind(s.0, &sa as *const _ as *const libc::sockaddr, len) })?;
    if proto == "tcp" {
        check(unsafe { libc::listen(s.0, 1) })?;
    }
    println!("ok port={}", local_port(s.0));
    io::Write::flush(&mut io::stdout())?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// connect() submitted through io_uring instead of the syscall.
fn uring_connect(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return Ok(format!("unsupported {e}")),
    };
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(s.0),
        (&sa as *const libc::sockaddr_in6).cast(),
        len,
    )
    .build();
    // SAFETY: the sockaddr outlives the submission (we wait for it below).
    unsafe { ring.submission().push(&op).map_err(io::Error::other)? };
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok("ok".into())
}

/// Submits one operation and returns its result, or "unsupported ..." when
/// this kernel has no io_uring or not this opcode.
fn uring_one(opcode: u8, name: &str, op: io_uring::squeue::Entry) -> io::Result<Result<i32, String>> {
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("unsupported {e}"))),
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode) {
        return Ok(Err(format!("unsupported {name}")));
    }
    // SAFETY: everything the entry points to outlives the wait below.
    unsafe { ring.submission().push(&op).map_err(io::Error::other)? };
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(Ok(cqe.result()))
}

/// bind() submitted through io_uring (Linux 6.11+).
fn uring_bind(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    let op =
        io_uring::opcode::Bind::new(io_uring::types::Fd(s.0), (&sa as *const libc::sockaddr_in6).cast(), len)
            .build();
    Ok(match uring_one(io_uring::opcode::Bind::CODE, "IORING_OP_BIND", op)? {
        Ok(_) => format!("ok port={}", local_port(s.0)),
        Err(unsupported) => unsupported,
    })
}

/// listen() without bind() submitted through io_uring (Linux 6.11+): the
/// kernel autobinds, as for the syscall.
fn uring_listen_unbound() -> io::Result<String> {
    let s = socket(libc::AF_INET, "tcp")?;
    let op = io_uring::opcode::Listen::new(io_uring::types::Fd(s.0), 1).build();
    Ok(match uring_one(io_uring::opcode::Listen::CODE, "IORING_OP_LISTEN", op)? {
        Ok(_) => format!("ok port={}", local_port(s.0)),
        Err(unsupported) => unsupported,
    })
}

fn bind_no_port_connect(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), "tcp")?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int (IP_BIND_ADDRESS_NO_PORT = 24).
    check(unsafe {
        libc::setsockopt(
            s.0,
            libc::IPPROTO_IP,
            24,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    })?;
    let (sa, len, _) = sockaddr(ip, 0);
    // SAFETY: sa is valid for len bytes.
    if let Err(e) = check(unsafe { libc::bind(s.0, &sa as *const _ as *const libc::sockaddr, len) }) {
        return Ok(format!("bind: err {}", errno_name(&e)));
    }
    connect_on(&s, ip, port)
}

fn listen_unbound() -> io::Result<String> {
    let s = socket(libc::AF_INET, "tcp")?;
    // SAFETY: listen on our own socket.
    check(unsafe { libc::listen(s.0, 1) })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

fn create_socket(kind: &str) -> io::Result<String> {
    let (family, ty, proto) = match kind {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0),
        other => panic!("unknown socket kind {other}"),
    };
    // SAFETY: plain socket(2).
    let fd = check(unsafe { libc::socket(family, ty, proto) })?;
    unsafe { libc::close(fd) };
    Ok("ok".into())
}

/// Repeated connect() on one socket: the cheapest way to hit a hook.
fn flood(proto: &str, ip: IpAddr, port: u16, count: u64) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    let mut refused = 0u64;
    for _ in 0..count {
        if let Err(e) = connect_on(&s, ip, port) {
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e);
            }
            refused += 1;
        }
    }
    Ok(format!("attempted={count} refused={refused}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let port = |s: &str| -> u16 { s.parse().unwrap_or_else(|_| panic!("bad port {s}")) };
    let result = match a.as_slice() {
        ["bind", proto, ip, p] => bind(proto, parse_ip(ip), port(p)),
        ["bind-unspec", proto, p] => bind_unspec(proto, port(p)),
        ["connect", proto, ip, p] => connect(proto, parse_ip(ip), port(p)),
        ["sendto", ip, p] => sendto(parse_ip(ip), port(p)),
        ["sendto-autobind", ip, p] => sendto_autobind(parse_ip(ip), port(p)),
        ["move-then-connect", proto, ip, p, procs] => move_then_connect(proto, parse_ip(ip), port(p), procs),
        ["sendmsg", ip, p] => sendmsg_to(parse_ip(ip), port(p), false),
        ["sendmmsg", ip, p] => sendmsg_to(parse_ip(ip), port(p), true),
        ["fastopen", ip, p] => fastopen(parse_ip(ip), port(p)),
        ["scm-pass", proto, ip, p, procs] => scm_pass(proto, parse_ip(ip), port(p), procs),
        ["wait-then-connect", proto, ip, p, file] => {
            wait_then_connect(proto, parse_ip(ip), port(p), file, None)
        }
        ["wait-then-connect", proto, ip, p, file, procs] => {
            wait_then_connect(proto, parse_ip(ip), port(p), file, Some(procs))
        }
        ["socket", kind] => create_socket(kind),
        ["listen-unbound"] => listen_unbound(),
        ["serve", ip, p] => serve(parse_ip(ip), port(p)),
        ["hold", proto, ip, p] => hold(proto, parse_ip(ip), port(p)),
        ["uring-connect", proto, ip, p] => uring_connect(proto, parse_ip(ip), port(p)),
        ["uring-bind", proto, ip, p] => uring_bind(proto, parse_ip(ip), port(p)),
        ["uring-listen-unbound"] => uring_listen_unbound(),
        ["bpf-fault", step, hook, "--", program @ ..] => return bpf_fault::run(step, hook, program),
        ["bind-no-port-connect", ip, p] => bind_no_port_connect(parse_ip(ip), port(p)),
        ["bench", workload, p, n] => bench::run(workload, port(p), n.parse().expect("iterations")),
        ["flood", proto, ip, p, count] => flood(proto, parse_ip(ip), port(p), count.parse().expect("count")),
        ["hammer", op, proto, ip, allowed, denied, millis] => {
            hammer(op, proto, parse_ip(ip), port(allowed), port(denied), millis.parse().expect("millis"))
        }
        _ => {
            eprintln!("pg-probe: unknown command {a:?} (see the source for usage)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => println!("err {}", errno_name(&e)),
    }
    ExitCode::SUCCESS
}
