//! The other end of inbound tests: clients that give up after a short
//! timeout (a dropped SYN would otherwise retry for minutes), a UDP server
//! that answers and can be asked to send elsewhere from the same socket,
//! a listener without bind(), and a counted SYN flood.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use crate::sock::{Sock, check, local_port, socket};

/// TCP connect with a timeout: "ok", "timeout" or "err ERRNO".
pub(crate) fn tcp_try(ip: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    match TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(millis)) {
        Ok(_) => Ok("ok".into()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok("timeout".into()),
        Err(e) => Err(e),
    }
}

/// Binds UDP `ip:port`, prints "ok port=N", then answers every datagram
/// from the same socket: "echo", or for "send-to IP PORT" the verdict of
/// a sendto to that peer (a peer that never spoke to this socket).
pub(crate) fn udp_serve(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = UdpSocket::bind(SocketAddr::new(ip, port))?;
    println!("ok port={}", s.local_addr()?.port());
    io::Write::flush(&mut io::stdout())?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = match text.strip_prefix("send-to ").and_then(|r| r.split_once(' ')) {
            Some((peer, p)) => {
                let to = SocketAddr::new(peer.parse().expect("peer ip"), p.parse().expect("peer port"));
                match s.send_to(b"unsolicited", to) {
                    Ok(_) => "sent".to_owned(),
                    Err(e) => format!("err {}", crate::sock::errno_name(&e)),
                }
            }
            None => "echo".to_owned(),
        };
        // The answer to the asker is itself a reply within the window.
        if let Err(e) = s.send_to(reply.as_bytes(), from) {
            eprintln!("reply to {from}: {e}");
        }
    }
}

/// Sends `payload` to `ip:port` from a fresh socket and waits for one
/// answer: "reply TEXT" or "timeout".
pub(crate) fn udp_ask(ip: IpAddr, port: u16, millis: u64, payload: &str) -> io::Result<String> {
    let any: IpAddr = if ip.is_ipv4() { "0.0.0.0".parse().expect("v4") } else { "::".parse().expect("v6") };
    let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(millis)))?;
    s.send_to(payload.as_bytes(), SocketAddr::new(ip, port))?;
    let mut buf = [0u8; 512];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Ok(format!("reply {}", String::from_utf8_lossy(&buf[..n]))),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Ok("timeout".into())
        }
        Err(e) => Err(e),
    }
}

/// Binds UDP `ip:port`, prints "ok port=N", and waits for one datagram:
/// "got FROM" or "timeout".
pub(crate) fn udp_wait(ip: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    let s = UdpSocket::bind(SocketAddr::new(ip, port))?;
    println!("ok port={}", s.local_addr()?.port());
    io::Write::flush(&mut io::stdout())?;
    s.set_read_timeout(Some(Duration::from_millis(millis)))?;
    let mut buf = [0u8; 512];
    match s.recv_from(&mut buf) {
        Ok((_, from)) => Ok(format!("got {}", from.ip())),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Ok("timeout".into())
        }
        Err(e) => Err(e),
    }
}

/// listen() without bind() (the kernel picks the port, no bind hook runs),
/// prints "ok port=N", then keeps the listener until killed.
pub(crate) fn hold_unbound() -> io::Result<String> {
    let s: Sock = socket(libc::AF_INET, "tcp")?;
    // SAFETY: listen on our own socket.
    check(unsafe { libc::listen(s.0, 16) })?;
    println!("ok port={}", local_port(s.0));
    io::Write::flush(&mut io::stdout())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Sends `count` TCP SYNs from `src` (this host's address) to `dst:port`
/// through a raw socket, each from another source port: "sent=N".
pub(crate) fn syn_flood(src: IpAddr, dst: IpAddr, port: u16, count: u64) -> io::Result<String> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "syn-flood is IPv4 only"));
    };
    // SAFETY: plain socket(2); the kernel writes the IP header.
    let s = Sock(check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) })?);
    let (sa, len, _) = crate::sock::sockaddr(IpAddr::V4(dst), 0);
    let mut sent = 0;
    for i in 0..count {
        let sport = 1024 + (i % 60_000) as u16;
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&port.to_be_bytes());
        tcp[4..8].copy_from_slice(&(i as u32).to_be_bytes());
        tcp[12] = 5 << 4; // data offset: 5 words
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let sum = checksum(&src.octets(), &dst.octets(), &tcp);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: buffers valid for their lengths.
        let rc = unsafe {
            libc::sendto(
                s.0,
                tcp.as_ptr().cast(),
                tcp.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        sent += 1;
    }
    Ok(format!("sent={sent}"))
}

/// The TCP checksum over the IPv4 pseudo-header and the segment.
fn checksum(src: &[u8; 4], dst: &[u8; 4], segment: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for pair in b.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |lo| u32::from(*lo));
        }
    };
    add(src);
    add(dst);
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(segment.len() as u16).to_be_bytes());
    add(segment);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
