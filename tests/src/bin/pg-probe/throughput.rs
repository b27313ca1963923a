//! Inbound throughput for the benchmark (xtask/src/bench/inbound.rs): a
//! server that sinks what it receives, and clients that push a TCP stream,
//! a UDP datagram flood, or new TCP connections at it for a fixed time.
//! Plain std sockets: what is measured is the receiving side's packet path.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use crate::sock::check;

/// What a UDP client sends to ask the sink how many datagrams it got.
const END: &[u8] = b"END";

/// `sink tcp|udp IP PORT`: binds, prints "ok port=N", then until killed:
/// TCP reads each connection to its end and answers with the byte count;
/// UDP counts datagrams and answers each END with "count=N" (then zero).
pub(crate) fn sink(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    if proto == "udp" {
        let s = UdpSocket::bind((ip, port))?;
        println!("ok port={}", s.local_addr()?.port());
        io::stdout().flush()?;
        let mut buf = [0u8; 2048];
        let mut count = 0u64;
        loop {
            let (n, from) = s.recv_from(&mut buf)?;
            if &buf[..n] == END {
                s.send_to(format!("count={count}").as_bytes(), from)?;
                count = 0;
            } else {
                count += 1;
            }
        }
    }
    let l = TcpListener::bind((ip, port))?;
    println!("ok port={}", l.local_addr()?.port());
    io::stdout().flush()?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let (mut c, _) = l.accept()?;
        let mut total = 0u64;
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = c.write_all(format!("{total}\n").as_bytes());
    }
}

/// `conn-sink IP PORT`: a TCP listener with a deep accept queue (up to
/// net.core.somaxconn), accepting and closing until killed. A client that
/// never sleeps (the handshake completes in its own softirq) can starve
/// this process of CPU for a while; a full queue would drop SYNs and stall
/// the client for a one-second retransmission.
pub(crate) fn conn_sink(ip: IpAddr, port: u16) -> io::Result<String> {
    let l = TcpListener::bind((ip, port))?;
    // SAFETY: listen() again on a listening socket only resizes its queue.
    check(unsafe { libc::listen(l.as_raw_fd(), 65_535) })?;
    println!("ok port={}", l.local_addr()?.port());
    io::stdout().flush()?;
    loop {
        drop(l.accept()?);
    }
}

/// `stream IP PORT MILLIS`: one TCP connection writing 64 KiB buffers for
/// MILLIS, then the sink's count: "bytes=N ns=T" (T until the count came).
pub(crate) fn stream(ip: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    let mut c = TcpStream::connect((ip, port))?;
    let buf = vec![0x5au8; 1 << 16];
    let t = Instant::now();
    let until = Duration::from_millis(millis);
    while t.elapsed() < until {
        c.write_all(&buf)?;
    }
    c.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    let ns = t.elapsed().as_nanos();
    let bytes: u64 = answer.trim().parse().map_err(|_| io::Error::other(format!("sink said {answer:?}")))?;
    Ok(format!("bytes={bytes} ns={ns}"))
}

/// `udp-flood IP PORT MILLIS SIZE`: unconnected-socket datagrams of SIZE
/// bytes for MILLIS, then END until the sink answers: "sent=S received=R
/// ns=T". Datagrams the receiver had no room for are lost, not retried:
/// the received count is the measure.
pub(crate) fn udp_flood(ip: IpAddr, port: u16, millis: u64, size: usize) -> io::Result<String> {
    let bind: IpAddr = if ip.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
    let s = UdpSocket::bind((bind, 0))?;
    let buf = vec![0x5au8; size.max(END.len() + 1)];
    let t = Instant::now();
    let until = Duration::from_millis(millis);
    let mut sent = 0u64;
    while t.elapsed() < until {
        for _ in 0..64 {
            match s.send_to(&buf, (ip, port)) {
                Ok(_) => sent += 1,
                // The local queue is full: the receiver is behind.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e),
            }
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut answer = [0u8; 64];
    for _ in 0..30 {
        s.send_to(END, (ip, port))?;
        if let Ok(n) = s.recv(&mut answer) {
            let ns = t.elapsed().as_nanos();
            let text = String::from_utf8_lossy(&answer[..n]);
            let received = text.strip_prefix("count=").unwrap_or("?");
            return Ok(format!("sent={sent} received={received} ns={ns}"));
        }
    }
    Err(io::Error::other("the sink never answered END"))
}

/// `conn-rate IP PORT MILLIS`: connect and close (with a reset, so that no
/// TIME_WAIT piles up across trials) for MILLIS: "conns=N ns=T".
pub(crate) fn conn_rate(ip: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    let t = Instant::now();
    let until = Duration::from_millis(millis);
    let mut conns = 0u64;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    while t.elapsed() < until {
        let c = TcpStream::connect((ip, port))?;
        // SAFETY: a valid linger struct for this socket option.
        check(unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        })?;
        drop(c);
        conns += 1;
    }
    Ok(format!("conns={conns} ns={}", t.elapsed().as_nanos()))
}
