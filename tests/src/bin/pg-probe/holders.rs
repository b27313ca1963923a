//! Who holds a port, for a hammer that got EADDRINUSE: the socket-table
//! rows and the sock_diag rows (which alone list bound-only TCP sockets)
//! of this network namespace with that local port, and the processes
//! whose fds point at each row's socket. Run once, on failure only (reading
//! other processes' fds is what makes a racing re-bind fail, so the
//! hammer never does it while it measures).

use std::fs;

/// "tcp 0100007F:2382 st=07 inode=123 held by [pid comm fd]" per row.
pub(crate) fn describe(proto: &str, port: u16) -> String {
    let hex = format!(":{port:04X}");
    let mut rows = Vec::new();
    let mut described = Vec::new();
    for table in [proto.to_owned(), format!("{proto}6")] {
        let Ok(text) = fs::read_to_string(format!("/proc/self/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[1].ends_with(&hex) {
                let inode = cols[9];
                rows.push(format!(
                    "{table} {} st={} inode={inode} held by [{}]",
                    cols[1],
                    cols[3],
                    holders(inode).join(", ")
                ));
                described.push(inode.to_owned());
            }
        }
    }
    rows.extend(diag_rows(proto, port, &described));
    if rows.is_empty() { "no socket-table or sock_diag row holds it now".into() } else { rows.join("; ") }
}

fn holders(inode: &str) -> Vec<String> {
    let target = format!("socket:[{inode}]");
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                out.push(format!("{pid} {} fd {}", comm.trim(), fd.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Every socket of this network namespace bound to `port` that no table
/// row in `described` (inodes) already named, as NETLINK_SOCK_DIAG reports
/// it: "state=N inode=N uid=N cgroup=ID". Asking for every state includes
/// bound-only TCP sockets (TCP_BOUND_INACTIVE, Linux 6.5+), which no /proc
/// table lists; they come back in state 7 (TCP_CLOSE).
fn diag_rows(proto: &str, port: u16, described: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let protocol = if proto == "tcp" { libc::IPPROTO_TCP } else { libc::IPPROTO_UDP } as u8;
    // SAFETY: a netlink socket of our own, closed on drop.
    let Ok(sock) = crate::sock::check(unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    })
    .map(crate::sock::Sock) else {
        return vec!["sock_diag unavailable".into()];
    };
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // nlmsghdr (16) + inet_diag_req_v2 (56): family, protocol, ext,
        // pad, states (all), then an empty socket id.
        let mut req = [0u8; 72];
        req[0..4].copy_from_slice(&72u32.to_ne_bytes());
        req[4..6].copy_from_slice(&20u16.to_ne_bytes()); // SOCK_DIAG_BY_FAMILY
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[16] = family;
        req[17] = protocol;
        req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        // SAFETY: sending our own buffer on our own socket.
        if unsafe { libc::send(sock.0, req.as_ptr().cast(), req.len(), 0) } < 0 {
            return vec![format!("sock_diag send: {}", std::io::Error::last_os_error())];
        }
        let mut buf = vec![0u8; 1 << 16];
        'recv: loop {
            // SAFETY: receiving into our own buffer.
            let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                if ty == libc::NLMSG_DONE as u16 || ty == libc::NLMSG_ERROR as u16 || len < 16 {
                    break 'recv;
                }
                let m = &buf[at + 16..at + len];
                // inet_diag_msg: state at 1, sport (be) at 4, uid at 64, inode at 68.
                let sport = u16::from_be_bytes([m[4], m[5]]);
                let inode = u32::from_ne_bytes(m[68..72].try_into().unwrap());
                if sport == port && !described.contains(&inode.to_string()) {
                    let state = m[1];
                    let uid = u32::from_ne_bytes(m[64..68].try_into().unwrap());
                    let mut cgroup = 0u64;
                    let mut a = 72usize;
                    while a + 4 <= m.len() {
                        let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
                        let aty = u16::from_ne_bytes([m[a + 2], m[a + 3]]);
                        if aty == 21 && alen >= 12 {
                            cgroup = u64::from_ne_bytes(m[a + 4..a + 12].try_into().unwrap());
                        }
                        if alen < 4 {
                            break;
                        }
                        a += (alen + 3) & !3;
                    }
                    out.push(format!(
                        "diag {proto}{} state={state} inode={inode} uid={uid} cgroup={cgroup} held by [{}]",
                        if family == libc::AF_INET6 as u8 { "6" } else { "" },
                        holders(&inode.to_string()).join(", ")
                    ));
                }
                at += (len + 3) & !3;
            }
        }
    }
    out
}
