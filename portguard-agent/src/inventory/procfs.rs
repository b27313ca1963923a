//! Every live port on the host, from /proc: listening TCP sockets and bound,
//! unconnected UDP sockets, in every network namespace that has a process.
//!
//! Two readings. [`table_ports`] reads the socket tables only, and takes the
//! socket's cgroup from sock_diag in the agent's own network namespace: it
//! touches no other process's files, so the daemon runs it at start and
//! periodically. [`open_ports`] also walks every process's fds to name the
//! process that holds each port: only `portguard scan` (run by a person)
//! does that. /proc/<pid>/net/* rather than sock_diag alone: sock_diag
//! answers for one network namespace per netlink socket, and entering the
//! others needs CAP_SYS_ADMIN, which the agent does not hold.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use portguard_common::Transport;

/// A port some socket holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenPort {
    pub(crate) proto: Transport,
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    /// The socket's inode, unique per host while it lives.
    pub(crate) inode: u64,
    /// Inode of its network namespace.
    pub(crate) netns: u64,
    /// The lowest pid holding it open (forked workers share a listener).
    pub(crate) pid: Option<u32>,
    pub(crate) comm: String,
    /// The holder's cgroup, relative to the cgroup2 mount.
    pub(crate) cgroup: Option<String>,
    /// The id of the cgroup the socket was created in, from sock_diag (the
    /// agent's own network namespace only).
    pub(crate) cgroup_id: Option<u64>,
    /// The socket cookie, from sock_diag (the agent's own namespace only):
    /// the key the kernel's port events use.
    pub(crate) cookie: Option<u64>,
}

impl OpenPort {
    /// What the socket table row says, nothing about who holds it.
    fn in_table(netns: u64, proto: Transport, entry: &Entry) -> OpenPort {
        OpenPort {
            proto,
            addr: entry.addr,
            port: entry.port,
            inode: entry.inode,
            netns,
            pid: None,
            comm: String::new(),
            cgroup: None,
            cgroup_id: None,
            cookie: None,
        }
    }
}

const TCP_LISTEN: u8 = 0x0A;
/// An unconnected UDP socket reads as TCP_CLOSE in /proc/net/udp.
const UDP_UNCONNECTED: u8 = 0x07;

/// Every live port with its holder. This walks `/proc/<pid>/fd`, and
/// reading an fd link holds a reference on the file for a moment: a socket
/// its process closes right then is released a few microseconds late, and
/// an immediate re-bind of its port can fail with EADDRINUSE. So this runs
/// once (start-up, `portguard scan`), never periodically; see
/// [`live_socket_inodes`].
pub(crate) fn open_ports() -> std::io::Result<Vec<OpenPort>> {
    let pids = pids()?;
    let namespaces = namespaces(&pids);
    // socket inode -> lowest pid holding it.
    let mut holders: HashMap<u64, u32> = HashMap::new();
    for &pid in &pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target.to_str().and_then(socket_inode)
            {
                holders.entry(inode).or_insert(pid);
            }
        }
    }
    let mut out: Vec<OpenPort> = live_entries(&namespaces)
        .map(|(netns, proto, entry)| {
            let holder = holders.get(&entry.inode).copied();
            OpenPort {
                pid: holder,
                comm: holder.map(comm).unwrap_or_default(),
                cgroup: holder.and_then(cgroup_of),
                ..OpenPort::in_table(netns, proto, &entry)
            }
        })
        .collect();
    out.sort_by_key(|p| (p.port, p.proto.number(), p.addr, p.inode));
    Ok(out)
}

/// Every live port, from the socket tables alone: no other process's file
/// is opened, so a process closing and re-binding a port meanwhile is never
/// delayed. No pid or process name (those need the fds). The cgroup comes
/// from sock_diag in the agent's own network namespace (exact: the cgroup
/// the socket was created in); in another namespace, it is the cgroup all
/// of that namespace's processes share, when they share one (a container
/// or a pod), and unknown otherwise.
pub(crate) fn table_ports() -> std::io::Result<Vec<OpenPort>> {
    let pids = pids()?;
    let namespaces = namespaces(&pids);
    let own = ns_inode_of("self");
    let diag: HashMap<u64, (Option<u64>, u64)> = match super::sock_diag::live_ports() {
        Ok(found) => found.into_iter().map(|d| (d.inode, (d.cgroup_id, d.cookie))).collect(),
        Err(e) => {
            tracing::debug!("sock_diag: {e}; cgroups of this namespace's ports come from /proc");
            HashMap::new()
        }
    };
    let shared = shared_cgroups(&pids, own);
    let mut out: Vec<OpenPort> = live_entries(&namespaces)
        .map(|(netns, proto, entry)| {
            let (cgroup_id, cookie) = match diag.get(&entry.inode) {
                Some(&(id, cookie)) if Some(netns) == own => (id, Some(cookie)),
                _ => (None, None),
            };
            OpenPort {
                cgroup: if cgroup_id.is_some() { None } else { shared.get(&netns).cloned().flatten() },
                cgroup_id,
                cookie,
                ..OpenPort::in_table(netns, proto, &entry)
            }
        })
        .collect();
    out.sort_by_key(|p| (p.port, p.proto.number(), p.addr, p.inode));
    Ok(out)
}

/// netns inode -> the cgroup every process in it shares (`None` when they
/// differ), for the namespaces other than `own`.
fn shared_cgroups(pids: &[u32], own: Option<u64>) -> HashMap<u64, Option<String>> {
    let mut shared: HashMap<u64, Option<String>> = HashMap::new();
    for &pid in pids {
        let Some(netns) = ns_inode(pid) else { continue };
        if Some(netns) == own {
            continue;
        }
        let cgroup = cgroup_of(pid);
        shared
            .entry(netns)
            .and_modify(|c| {
                if *c != cgroup {
                    *c = None;
                }
            })
            .or_insert(cgroup);
    }
    shared
}

fn pids() -> std::io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// netns inode -> the lowest of `pids` (sorted) living in it.
fn namespaces(pids: &[u32]) -> BTreeMap<u64, u32> {
    let mut namespaces = BTreeMap::new();
    for &pid in pids {
        // Processes come and go while we look: skip the ones that went.
        if let Some(netns) = ns_inode(pid) {
            namespaces.entry(netns).or_insert(pid);
        }
    }
    namespaces
}

/// (netns, proto, row) of every listening TCP and bound, unconnected UDP
/// socket in `namespaces`.
fn live_entries(namespaces: &BTreeMap<u64, u32>) -> impl Iterator<Item = (u64, Transport, Entry)> + '_ {
    namespaces.iter().flat_map(|(&netns, &pid)| {
        [
            ("tcp", Transport::Tcp, TCP_LISTEN, false),
            ("tcp6", Transport::Tcp, TCP_LISTEN, true),
            ("udp", Transport::Udp, UDP_UNCONNECTED, false),
            ("udp6", Transport::Udp, UDP_UNCONNECTED, true),
        ]
        .into_iter()
        .flat_map(move |(file, proto, state, v6)| {
            let table = fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
            parse_table(&table, v6)
                .into_iter()
                .filter(move |e| e.state == state && e.port != 0)
                .map(move |e| (netns, proto, e))
        })
    })
}

fn ns_inode(pid: u32) -> Option<u64> {
    ns_inode_of(&pid.to_string())
}

fn ns_inode_of(pid: &str) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

pub(crate) fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_owned()).unwrap_or_default()
}

/// The cgroup v2 path of a process ("0::/path" in /proc/<pid>/cgroup).
pub(crate) fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_owned())
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    addr: IpAddr,
    port: u16,
    state: u8,
    inode: u64,
}

/// Rows of /proc/net/{tcp,udp}[6]: "sl local rem st tx:rx tr:when retr uid
/// timeout inode ...". Each address word is printed as the in-memory
/// (network-order) bytes read as a host-order integer.
fn parse_table(text: &str, v6: bool) -> Vec<Entry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = cols.get(1)?.split_once(':')?;
            Some(Entry {
                addr: parse_addr(addr, v6)?,
                port: u16::from_str_radix(port, 16).ok()?,
                state: u8::from_str_radix(cols.get(3)?, 16).ok()?,
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    match (v6, words.as_slice()) {
        (false, [w]) => Some(IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))),
        (true, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_rows() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_table(tcp, false),
            vec![Entry { addr: "127.0.0.1".parse().unwrap(), port: 8080, state: 0x0A, inode: 12345 }]
        );
        let tcp6 = "header\n   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(parse_table(tcp6, true)[0].addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_table(tcp6, true)[0].port, 8081);
    }

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        let found = open_ports().unwrap();
        let mine =
            found.iter().find(|p| p.port == port && p.proto == Transport::Tcp).expect("listener found");
        assert_eq!(mine.pid, Some(me));
        assert_eq!(mine.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(mine.cgroup, cgroup_of(me));
    }
}
