//! A DNS client and a forger, for the tests of names learned in the kernel
//! (#17): `dns-race` resolves and connects at once, as a client racing its
//! own answer would; `dns-ask` sends one query and waits, so that the test
//! can forge answers to it with `dns-forge` from another process.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use portguard_common::dns::message::{self, Msg};

use crate::connect::connect_within;

const TYPE_A: u16 = 1;

/// A standard query (recursion desired) for `name`, type A.
fn query(txid: u16, name: &str) -> Vec<u8> {
    let mut m = Msg(vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.0[..2].copy_from_slice(&txid.to_be_bytes());
    m.name(name);
    m.0.extend(TYPE_A.to_be_bytes());
    m.0.extend(1u16.to_be_bytes());
    m.0
}

/// The IPv4 addresses an answer holds for its question, as the kernel's
/// walk reads them.
fn addresses(answer: &[u8]) -> Vec<IpAddr> {
    message::run(&[0, 0], answer, 4096)
        .addrs
        .into_iter()
        .filter_map(|(a, _)| <[u8; 4]>::try_from(a.as_slice()).ok().map(IpAddr::from))
        .collect()
}

/// A transaction id that differs from one lookup to the next.
fn txid(i: u32) -> u16 {
    (std::process::id() as u16).wrapping_mul(31).wrapping_add((i as u16).wrapping_mul(40_503))
}

/// `count` lookups of `{prefix}{i % names}.{suffix}` at `server`:53, each
/// from a fresh connected socket (as glibc does), and a TCP connect to
/// every address of each answer the instant it is read (none when `port`
/// is 0). Prints `lookups=N answered=A connected=C refused=R timeout=T
/// other=O addresses=D ns=T` (D: distinct addresses answered).
pub(crate) fn race(
    server: IpAddr,
    prefix: &str,
    suffix: &str,
    count: u32,
    port: u16,
    names: u32,
) -> io::Result<String> {
    let (mut answered, mut connected, mut refused, mut timeouts, mut other) = (0, 0, 0, 0, 0);
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    for i in 0..count {
        let sock = UdpSocket::bind(SocketAddr::new(unspecified(server), 0))?;
        sock.connect((server, 53))?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send(&query(txid(i), &format!("{prefix}{}.{suffix}", i % names.max(1))))?;
        let Ok(n) = sock.recv(&mut buf) else { continue };
        answered += 1;
        let answer = addresses(&buf[..n]);
        seen.extend(answer.iter().copied());
        if port == 0 {
            continue;
        }
        for addr in answer {
            // A connect the hook refuses fails at once (EPERM); one it let
            // through may still wait for an accept queue with room on a
            // loaded machine: 3 s covers a SYN retransmission.
            match connect_within("tcp", addr, port, 3000) {
                Ok(s) if s == "ok" => connected += 1,
                Ok(_) => {
                    timeouts += 1;
                    eprintln!("timeout {addr} (lookup {i})");
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    refused += 1;
                    eprintln!("refused {addr} (lookup {i})");
                }
                Err(e) => {
                    other += 1;
                    eprintln!("{addr} (lookup {i}): {e}");
                }
            }
        }
    }
    Ok(format!(
        "lookups={count} answered={answered} connected={connected} refused={refused} timeout={timeouts} other={other} addresses={} ns={}",
        seen.len(),
        started.elapsed().as_nanos()
    ))
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// Sends one query for `name` with `txid` to `server`:53 from an
/// unconnected socket, prints `port=N` (the test forges answers to it),
/// then reads datagrams for `millis` and prints each one's source and
/// addresses: `from IP:PORT addrs=A,B` lines, then `done`.
pub(crate) fn ask(server: IpAddr, name: &str, txid: u16, millis: u64) -> io::Result<String> {
    let sock = UdpSocket::bind(SocketAddr::new(unspecified(server), 0))?;
    sock.send_to(&query(txid, name), (server, 53))?;
    println!("port={}", sock.local_addr()?.port());
    use std::io::Write as _;
    io::stdout().flush()?;
    let end = Instant::now() + Duration::from_millis(millis);
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left))?;
        let Ok((n, from)) = sock.recv_from(&mut buf) else { break };
        let addrs: Vec<String> = addresses(&buf[..n]).iter().map(IpAddr::to_string).collect();
        out.push(format!("from {from} addrs={}", addrs.join(",")));
    }
    out.push("done".into());
    Ok(out.join("\n"))
}

/// Sends, from `src`:`src_port`, an answer to `dst`:`dst_port` with
/// `txid`, question `name` (type A) and one A record `addr` (TTL 300).
pub(crate) fn forge(
    src: IpAddr,
    src_port: u16,
    dst: SocketAddr,
    name: &str,
    txid: u16,
    addr: [u8; 4],
) -> io::Result<String> {
    let mut m = Msg::response(name, TYPE_A, 1);
    m.0[..2].copy_from_slice(&txid.to_be_bytes());
    m.a(12, 300, addr);
    let sock = UdpSocket::bind((src, src_port))?;
    sock.send_to(&m.0, dst)?;
    Ok("ok".into())
}
