//! The live ports of the agent's own network namespace, from the kernel's
//! socket tables through NETLINK_SOCK_DIAG: listening TCP sockets and bound,
//! unconnected UDP sockets (the selection `procfs` makes), each with the
//! cgroup that created it and its socket cookie.
//!
//! Unlike `procfs::open_ports`, this opens no file of any other process and
//! takes no reference on any socket's file: closing a socket frees its port
//! at once even while a dump runs (the kernel may hold the `struct sock` a
//! moment, which does not delay the close), so a program that closes and
//! re-binds its port at once never gets EADDRINUSE from us.
//!
//! It sees one network namespace: the netlink socket's own. Others are only
//! reachable by entering them (setns needs CAP_SYS_ADMIN, which the agent
//! does not hold), so their ports are missing here.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::policy::Proto;

/// INET_DIAG_CGROUP_ID (linux/inet_diag.h, 5.7+); the crate predates it and
/// hands it over as an unparsed attribute.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The address family a socket was created with. A dual-stack IPv6 socket
/// is `Inet6`, whatever addresses it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Family {
    Inet,
    Inet6,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Family::Inet => AF_INET,
            Family::Inet6 => AF_INET6,
        }
    }
}

/// A live port, as the kernel's socket table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    pub(crate) proto: Proto,
    pub(crate) family: Family,
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    /// The socket's owner (its creator's fsuid).
    pub(crate) uid: u32,
    /// The socket's inode, as in /proc/net/* and `socket:[N]` fd links.
    pub(crate) inode: u64,
    /// The socket cookie, the value `bpf_get_socket_cookie` and SO_COOKIE
    /// return for this socket.
    pub(crate) cookie: u64,
    /// The cgroup2 id (directory inode) of the cgroup the socket was created
    /// in, which is the cgroup whose programs judge it. `None` on kernels
    /// before 5.7, which do not report it.
    pub(crate) cgroup_id: Option<u64>,
}

/// What to dump: (protocol, IP protocol number, states). A UDP socket that
/// is bound but not connected is in TCP_CLOSE; an unbound one is in no
/// table at all.
const SELECTION: [(Proto, u8, StateFlags); 2] =
    [(Proto::Tcp, IPPROTO_TCP, StateFlags::LISTEN), (Proto::Udp, IPPROTO_UDP, StateFlags::CLOSE)];

/// Every listening TCP and bound, unconnected UDP socket of this network
/// namespace, both families, sorted by port. Fails if the kernel lacks
/// inet_diag or udp_diag for one of them (CONFIG_INET_DIAG, _UDP_DIAG).
pub(crate) fn live_ports() -> io::Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    let mut sequence = 0;
    for (proto, number, states) in SELECTION {
        for family in [Family::Inet, Family::Inet6] {
            sequence += 1;
            let request = InetRequest {
                family: family.number(),
                protocol: number,
                extensions: ExtensionFlags::empty(),
                states: states.clone(),
                socket_id: match family {
                    Family::Inet => SocketId::new_v4(),
                    Family::Inet6 => SocketId::new_v6(),
                },
            };
            dump(&socket, request, sequence, |r| {
                if let Some(s) = diag_socket(proto, family, &r) {
                    out.push(s);
                }
            })
            .map_err(|e| io::Error::new(e.kind(), format!("sock_diag dump of {proto:?}/{family:?}: {e}")))?;
        }
    }
    out.sort_by_key(|s| (s.port, s.proto, s.family, s.addr, s.inode));
    Ok(out)
}

/// Sends one dump request and hands each socket of the answer to `each`,
/// until the kernel says it is done.
fn dump(
    socket: &Socket,
    request: InetRequest,
    sequence: u32,
    mut each: impl FnMut(InetResponse),
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    loop {
        // Peeks at each datagram's size first: a dump's datagrams are up to
        // 32 KiB, and a short buffer would silently cut one.
        let (datagram, _) = socket.recv_from_full()?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest).map_err(invalid)?;
            let length = message.header.length as usize;
            if message.header.sequence_number == sequence {
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(*r),
                    NetlinkPayload::Done(_) => return Ok(()),
                    // A dump sends no ACK (code 0); take one as nothing.
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
            // Messages start on 4-byte boundaries (NLMSG_ALIGN).
            let next = length.div_ceil(4) * 4;
            if length == 0 || next > rest.len() {
                break;
            }
            rest = &rest[next..];
        }
    }
}

fn diag_socket(proto: Proto, family: Family, r: &InetResponse) -> Option<DiagSocket> {
    let id = &r.header.socket_id;
    // A UDP socket in TCP_CLOSE with no port is unbound; the kernel does
    // not hash those, but stay on the safe side, as `procfs` does.
    if id.source_port == 0 {
        return None;
    }
    let cgroup_id = r.nlas.iter().find_map(|nla| match nla {
        Nla::Other(attr) if attr.kind() == INET_DIAG_CGROUP_ID && attr.value_len() == 8 => {
            let mut value = [0; 8];
            attr.emit_value(&mut value);
            Some(u64::from_ne_bytes(value))
        }
        _ => None,
    });
    Some(DiagSocket {
        proto,
        family,
        addr: id.source_address,
        port: id.source_port,
        uid: r.header.uid,
        inode: r.header.inode.into(),
        cookie: cookie(id.cookie),
        cgroup_id,
    })
}

/// `idiag_cookie` is `__u32[2]` in host order, low word first
/// (`sock_diag_save_cookie`): neither a little- nor a big-endian u64 on
/// every host, so the words are read one by one.
fn cookie(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(high) << 32 | u64::from(low)
}

fn invalid(e: netlink_packet_core::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        fs,
        io::{BufRead as _, BufReader, Read as _, Write as _},
        net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
        os::{fd::AsFd, unix::fs::MetadataExt as _},
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;

    fn listed(ports: &[DiagSocket], proto: Proto, port: u16) -> Vec<&DiagSocket> {
        ports.iter().filter(|s| s.proto == proto && s.port == port).collect()
    }

    fn so_cookie(socket: &impl AsFd) -> u64 {
        use std::os::fd::AsRawFd as _;
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: the fd is open for the borrow's length, and `cookie`/`len`
        // are a writable u64 and its size, as SO_COOKIE wants.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(SO_COOKIE): {}", io::Error::last_os_error());
        cookie
    }

    /// The socket inode's metadata (fstat on a dup of our own fd).
    fn socket_inode(socket: &impl AsFd) -> fs::Metadata {
        let fd = socket.as_fd().try_clone_to_owned().expect("dup the socket");
        fs::File::from(fd).metadata().expect("fstat the socket")
    }

    /// The cgroup2 directory this process is in: the cgroup2 mount from
    /// /proc/self/mounts joined with the `0::` path of /proc/self/cgroup.
    fn own_cgroup_dir() -> PathBuf {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
        let mount = mounts
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let dir = f.nth(1)?;
                (f.next()? == "cgroup2").then(|| dir.to_owned())
            })
            .expect("a cgroup2 mount");
        let cgroups = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup2 line");
        Path::new(&mount).join(path.trim_start_matches('/'))
    }

    fn cgroup_id_of(dir: &Path) -> u64 {
        fs::metadata(dir).unwrap_or_else(|e| panic!("stat {dir:?}: {e}")).ino()
    }

    /// Real cookies here stay below 2^32 (a boot-wide counter), so the live
    /// tests cannot tell the word order; this pins it.
    #[test]
    fn cookie_is_two_host_order_words_low_first() {
        let (low, high) = (0x0403_0201u32, 0x0807_0605u32);
        let mut raw = [0; 8];
        raw[..4].copy_from_slice(&low.to_ne_bytes());
        raw[4..].copy_from_slice(&high.to_ne_bytes());
        assert_eq!(cookie(raw), 0x0807_0605_0403_0201);
    }

    #[test]
    fn lists_a_tcp_listener_and_a_bound_udp_socket() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cgroup = cgroup_id_of(&own_cgroup_dir());
        let ports = live_ports().expect("sock_diag dump");
        for (proto, port, fd) in [
            (Proto::Tcp, tcp.local_addr().unwrap().port(), tcp.as_fd()),
            (Proto::Udp, udp.local_addr().unwrap().port(), udp.as_fd()),
        ] {
            let found = listed(&ports, proto, port);
            let [s] = found.as_slice() else { panic!("{proto:?} {port} listed once: {found:?}") };
            let meta = socket_inode(&fd);
            assert_eq!(s.family, Family::Inet, "{s:?}");
            assert_eq!(s.addr, IpAddr::V4(Ipv4Addr::LOCALHOST), "{s:?}");
            assert_eq!(s.cookie, so_cookie(&fd), "cookie of {s:?}");
            assert_eq!(s.cgroup_id, Some(cgroup), "cgroup of {s:?}");
            assert_eq!(s.inode, meta.ino(), "inode of {s:?}");
            assert_eq!(s.uid, meta.uid(), "uid of {s:?}");
        }
    }

    #[test]
    fn leaves_out_connected_udp_and_tcp_that_does_not_listen() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(peer.local_addr().unwrap()).unwrap();
        // Bound, never listening: TCP_CLOSE, the state UDP sockets are
        // selected by, which the TCP dump must not pick up.
        let bound = tokio::net::TcpSocket::new_v4().unwrap();
        bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();

        let ports = live_ports().expect("sock_diag dump");
        assert_eq!(listed(&ports, Proto::Udp, peer.local_addr().unwrap().port()).len(), 1);
        for (proto, socket, port) in [
            (Proto::Udp, "connected UDP", connected.local_addr().unwrap().port()),
            (Proto::Tcp, "bound TCP", bound.local_addr().unwrap().port()),
            (Proto::Tcp, "TCP client", client.local_addr().unwrap().port()),
        ] {
            let found = listed(&ports, proto, port);
            assert!(found.is_empty(), "{socket} on {port} listed: {found:?}");
        }
        // The accepted connection shares the listener's port: only the
        // listener is listed.
        let on_listener_port = listed(&ports, Proto::Tcp, accepted.local_addr().unwrap().port());
        let [s] = on_listener_port.as_slice() else { panic!("listener listed once: {on_listener_port:?}") };
        assert_eq!(s.cookie, so_cookie(&listener));
    }

    #[test]
    fn dual_stack_listener_is_listed_once_as_inet6() {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = live_ports().expect("sock_diag dump");
        let found = listed(&ports, Proto::Tcp, port);
        let [s] = found.as_slice() else { panic!("dual-stack listener listed once: {found:?}") };
        assert_eq!(s.family, Family::Inet6);
        assert_eq!(s.addr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(s.cookie, so_cookie(&l));
    }

    /// Held around fork: a forked child holds a copy of every fd until it
    /// execs, so a socket `listing_never_delays_a_rebind` just closed would
    /// keep its port (the very effect that test looks for).
    static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn fork_lock() -> std::sync::MutexGuard<'static, ()> {
        FORK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    const CHILD_CGROUP_ENV: &str = "PORTGUARD_SOCK_DIAG_CHILD_CGROUP";
    const CHILD_MARK: &str = "sock-diag child listens: ";

    /// The child process of `reports_the_cgroup_that_created_the_socket`
    /// (a no-op run on its own): it joins the scratch cgroup, listens, says
    /// on which port with which cookie, and holds the listener until its
    /// stdin closes.
    #[test]
    #[ignore = "run by reports_the_cgroup_that_created_the_socket, in a child process"]
    fn child_listens_in_a_scratch_cgroup() {
        let Some(dir) = std::env::var_os(CHILD_CGROUP_ENV) else { return };
        fs::write(Path::new(&dir).join("cgroup.procs"), "0").expect("join the scratch cgroup");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // After the harness's "test NAME ... ", on the same line.
        println!("{CHILD_MARK}{} {}", l.local_addr().unwrap().port(), so_cookie(&l));
        io::stdout().flush().unwrap();
        io::stdin().read_to_end(&mut Vec::new()).unwrap();
    }

    struct ScratchCgroup(PathBuf);
    impl Drop for ScratchCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    /// Killed while it still waits on stdin: a child let go instead would
    /// write its harness's "ok" into the pipe its parent no longer reads.
    /// Should the parent die first, the closed stdin ends the child.
    struct HeldChild(Child);
    impl Drop for HeldChild {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// This process's own cgroup may well be the root (id 1, which a wrong
    /// parse could also produce): a socket made in a fresh cgroup by a
    /// child process must carry that cgroup's id instead.
    #[test]
    fn reports_the_cgroup_that_created_the_socket() {
        let own = own_cgroup_dir();
        let scratch = ScratchCgroup(own.join(format!("pg-sock-diag-{}", std::process::id())));
        fs::create_dir(&scratch.0).unwrap_or_else(|e| panic!("mkdir {:?}: {e}", scratch.0));
        let name = module_path!().split_once("::").expect("a crate-qualified path").1;
        let forking = fork_lock();
        let mut child = HeldChild(
            Command::new(std::env::current_exe().unwrap())
                .args([&format!("{name}::child_listens_in_a_scratch_cgroup"), "--exact", "--ignored"])
                .args(["--nocapture", "--test-threads=1"])
                .env(CHILD_CGROUP_ENV, &scratch.0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn the test binary"),
        );
        drop(forking);
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        let line = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once(CHILD_MARK).map(|(_, rest)| rest.to_owned()))
            .expect("the child reports its listener");
        let (port, cookie) = line.split_once(' ').unwrap();
        let (port, cookie): (u16, u64) = (port.parse().unwrap(), cookie.parse().unwrap());

        let ports = live_ports().expect("sock_diag dump");
        let found = listed(&ports, Proto::Tcp, port);
        let [s] = found.as_slice() else { panic!("child's listener listed once: {found:?}") };
        let id = cgroup_id_of(&scratch.0);
        assert_ne!(id, cgroup_id_of(&own));
        assert_eq!(s.cgroup_id, Some(id), "{s:?}");
        assert_eq!(s.cookie, cookie, "{s:?}");
    }

    /// A loopback port free for both TCP and UDP, below the ephemeral range:
    /// one of our ports, once closed, must not go to another test's bind(0)
    /// (or anyone's autobind) and pass for a delayed release.
    fn port_below_ephemeral_range() -> u16 {
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).expect("a port range");
        // Start from a place of this process's own, so that two test runs at
        // once (other checkouts on one machine) do not pick the same port.
        let start = low - 1 - (std::process::id() % 4096) as u16;
        (1024..=start)
            .rev()
            .find(|&p| {
                TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
                    && UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
            })
            .expect("a free port below the ephemeral range")
    }

    /// The point of the module: listing in a loop while a port is closed
    /// and re-bound at once never makes the re-bind fail. (Reading this
    /// process's own /proc/self/fd links in the loop instead makes it fail
    /// within a few thousand re-binds here.)
    #[test]
    fn listing_never_delays_a_rebind() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = AtomicBool::new(false);
        let port = port_below_ephemeral_range();
        let _no_fork = fork_lock();
        let dumps = std::thread::scope(|s| {
            let lister = s.spawn(|| {
                let mut dumps = 0;
                while !stop.load(Ordering::Relaxed) {
                    live_ports().expect("sock_diag dump");
                    dumps += 1;
                }
                dumps
            });
            let failure = (0..REBINDS).find_map(|i| {
                let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).err().map(|e| ("TCP", e));
                let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).err().map(|e| ("UDP", e));
                tcp.or(udp).map(|(proto, e)| format!("{proto} re-bind {i} of port {port} failed: {e}"))
            });
            stop.store(true, Ordering::Relaxed);
            let dumps = lister.join().unwrap();
            if let Some(failure) = failure {
                panic!("{failure}");
            }
            dumps
        });
        assert!(dumps > 0);
    }
    const REBINDS: usize = 20_000;

    /// Many datagrams per dump; prints how long listing takes (not asserted).
    #[test]
    fn lists_a_thousand_listeners() {
        const N: usize = 1000;
        let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let mut times: Vec<Duration> = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..9 {
            let start = Instant::now();
            ports = live_ports().expect("sock_diag dump");
            times.push(start.elapsed());
        }
        times.sort();
        eprintln!(
            "sock_diag: {} sockets listed ({N} of them ours) in {:?} median, {:?} min, {:?} max of {}",
            ports.len(),
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            times.len(),
        );
        let tcp: HashSet<u16> = ports.iter().filter(|s| s.proto == Proto::Tcp).map(|s| s.port).collect();
        for l in &listeners {
            let port = l.local_addr().unwrap().port();
            assert!(tcp.contains(&port), "listener on {port} missing");
        }
    }
}
