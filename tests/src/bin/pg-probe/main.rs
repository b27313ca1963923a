//! pg-probe: performs one socket operation and prints how it went.
//!
//! The integration tests run it inside the cgroups they guard. It uses raw
//! libc calls so that it can do what std will not: bind with AF_UNSPEC,
//! move itself between socket() and connect(), and so on.
//!
//! Usage:
//! ```text
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
//!   pg-probe dns-race SERVER PREFIX SUFFIX COUNT PORT [NAMES]
//!       COUNT lookups of PREFIX{i % NAMES}.SUFFIX, a TCP connect to PORT (0: none) of each
//!       answer at once: "lookups=N answered=A connected=C refused=R timeout=T other=O ns=T"
//!   pg-probe dns-ask SERVER NAME TXID MILLIS  (one query; "port=N", then each answer, "done")
//!   pg-probe dns-forge SRC SRC_PORT DST DST_PORT NAME TXID ADDR  (a forged A answer)
//!   pg-probe ping IP                       (ICMP ping socket, one echo request to IP)
//!   pg-probe listen-unbound                (TCP listen() without bind(): autobind)
//!   pg-probe serve [tcp|mptcp] IP PORT     (bind() then listen())
//!   pg-probe hold tcp|udp IP PORT          (bind(), listen() for TCP, print "ok port=N",
//!                                           then keep the port until killed)
//!   pg-probe uring-connect tcp|udp IP PORT (connect through io_uring)
//!   pg-probe uring-bind tcp|udp IP PORT    (bind through io_uring, IORING_OP_BIND)
//!   pg-probe uring-listen-unbound          (TCP IORING_OP_LISTEN without a bind)
//!       the io_uring modes print "unsupported ..." where the kernel lacks the op
//!   pg-probe bpf-fault prog-load|link-create|link-update BPF_CGROUP_... -- PROGRAM ARGS...
//!       runs PROGRAM as if the kernel lacked that cgroup hook (see bpf_fault.rs)
//!   pg-probe accept-serve IP PORT          (TCP server: "ok port=N", accepts and closes until killed)
//!   pg-probe reach tcp|udp SRC DST PORT MILLIS
//!       from a socket bound to SRC: TCP connect, or UDP datagram and wait
//!       for the answer (udp-serve): "ok" | "timeout" | "err .."
//!   pg-probe tcp-try IP PORT MILLIS        (connect with a timeout: "ok" | "timeout" | "err ..")
//!   pg-probe udp-serve IP PORT             (answers "echo"; "send-to IP PORT" makes it
//!                                           send there from the same socket and say how it went)
//!   pg-probe udp-ask IP PORT MILLIS [TEXT] (one datagram, one answer: "reply ..." | "timeout")
//!   pg-probe udp-wait IP PORT MILLIS       (bind, print "ok port=N", wait: "got IP" | "timeout")
//!   pg-probe hold-unbound                  (TCP listen() without bind(), kept until killed)
//!   pg-probe syn-flood SRC DST PORT COUNT  (raw IPv4 SYNs from SRC: "sent=N")
//!   pg-probe write PATH TEXT | read PATH | obj-get PATH | kill PID SIG | ptrace PID
//!       what a workload would try against its guard (see escape.rs)
//!   pg-probe bind-no-port-connect IP PORT
//!       TCP: IP_BIND_ADDRESS_NO_PORT, bind(IP, 0), then connect(IP, PORT);
//!       prints "bind: err ..." or the connect's verdict
//!   pg-probe sink tcp|udp IP PORT | conn-sink IP PORT    (inbound benchmark servers; see throughput.rs)
//!   pg-probe stream IP PORT MILLIS | udp-flood IP PORT MILLIS SIZE | conn-rate IP PORT MILLIS
//!       inbound benchmark clients: "bytes=N ns=T" | "sent=S received=R ns=T" | "conns=N ns=T"
//! ```
//!
//! An IPv6 IP (including ::ffff:a.b.c.d) uses an AF_INET6 socket. Where a
//! command takes tcp|udp, `mptcp` (IPPROTO_MPTCP) works as well.
//!
//! This file only dispatches; each family of operations has its file:
//! bind.rs, connect.rs, datagram.rs, inbound.rs, reach.rs, socket_kinds.rs, scm_rights.rs,
//! uring.rs, repeat.rs (hammer, flood), bench.rs, throughput.rs and bpf_fault.rs, on the
//! helpers of sock.rs.

mod bench;
mod bind;
mod bpf_fault;
mod connect;
mod datagram;
mod dns;
mod escape;
mod holders;
mod inbound;
mod reach;
mod repeat;
mod scm_rights;
mod sock;
mod socket_kinds;
mod throughput;
mod uring;

use std::{net::IpAddr, process::ExitCode};

use bind::{bind, bind_unspec, hold, listen_unbound, serve};
use connect::{
    bind_no_port_connect, connect, connect_within, fastopen, move_then_connect, wait_then_connect,
};
use datagram::{sendmsg_to, sendto, sendto_autobind};
use repeat::{flood, hammer};
use scm_rights::scm_pass;
use sock::{errno_name, parse_ip};
use socket_kinds::{create_socket, ping};
use uring::{uring_bind, uring_connect, uring_listen_unbound};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let port = |s: &str| -> u16 { s.parse().unwrap_or_else(|_| panic!("bad port {s}")) };
    let result = match a.as_slice() {
        ["bind", proto, ip, p] => bind(proto, parse_ip(ip), port(p)),
        ["bind-unspec", proto, p] => bind_unspec(proto, port(p)),
        ["connect", proto, ip, p] => connect(proto, parse_ip(ip), port(p)),
        ["connect", proto, ip, p, millis] => {
            connect_within(proto, parse_ip(ip), port(p), millis.parse().expect("milliseconds"))
        }
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
        ["dns-race", server, prefix, suffix, count, p] => {
            dns::race(parse_ip(server), prefix, suffix, count.parse().expect("count"), port(p), u32::MAX)
        }
        ["dns-race", server, prefix, suffix, count, p, names] => dns::race(
            parse_ip(server),
            prefix,
            suffix,
            count.parse().expect("count"),
            port(p),
            names.parse().expect("names"),
        ),
        ["dns-ask", server, name, txid, millis] => dns::ask(
            parse_ip(server),
            name,
            txid.parse().expect("txid"),
            millis.parse().expect("milliseconds"),
        ),
        ["dns-forge", src, src_port, dst, dst_port, name, txid, addr] => {
            let IpAddr::V4(a) = parse_ip(addr) else { panic!("dns-forge answers IPv4 addresses") };
            dns::forge(
                parse_ip(src),
                port(src_port),
                std::net::SocketAddr::new(parse_ip(dst), port(dst_port)),
                name,
                txid.parse().expect("txid"),
                a.octets(),
            )
        }
        ["ping", ip] => ping(parse_ip(ip)),
        ["listen-unbound"] => listen_unbound(),
        ["serve", ip, p] => serve("tcp", parse_ip(ip), port(p)),
        ["serve", proto, ip, p] => serve(proto, parse_ip(ip), port(p)),
        ["hold", proto, ip, p] => hold(proto, parse_ip(ip), port(p)),
        ["uring-connect", proto, ip, p] => uring_connect(proto, parse_ip(ip), port(p)),
        ["uring-bind", proto, ip, p] => uring_bind(proto, parse_ip(ip), port(p)),
        ["uring-listen-unbound"] => uring_listen_unbound(),
        ["bpf-fault", step, hook, "--", program @ ..] => return bpf_fault::run(step, hook, program),
        ["accept-serve", ip, p] => reach::accept_serve(parse_ip(ip), port(p)),
        ["reach", proto, src, dst, p, ms] => {
            reach::reach(proto, parse_ip(src), parse_ip(dst), port(p), ms.parse().expect("millis"))
        }
        ["tcp-try", ip, p, ms] => inbound::tcp_try(parse_ip(ip), port(p), ms.parse().expect("millis")),
        ["udp-serve", ip, p] => inbound::udp_serve(parse_ip(ip), port(p)),
        ["udp-ask", ip, p, ms] => {
            inbound::udp_ask(parse_ip(ip), port(p), ms.parse().expect("millis"), "hello")
        }
        ["udp-ask", ip, p, ms, text @ ..] => {
            inbound::udp_ask(parse_ip(ip), port(p), ms.parse().expect("millis"), &text.join(" "))
        }
        ["udp-wait", ip, p, ms] => inbound::udp_wait(parse_ip(ip), port(p), ms.parse().expect("millis")),
        ["hold-unbound"] => inbound::hold_unbound(),
        ["syn-flood", src, dst, p, n] => {
            inbound::syn_flood(parse_ip(src), parse_ip(dst), port(p), n.parse().expect("count"))
        }
        ["write", path, text] => escape::write_file(path, text),
        ["read", path] => escape::read_file(path),
        ["obj-get", path] => escape::obj_get(path),
        ["kill", pid, sig] => escape::kill(pid, sig),
        ["ptrace", pid] => escape::ptrace_attach(pid),
        ["bind-no-port-connect", ip, p] => bind_no_port_connect(parse_ip(ip), port(p)),
        ["sink", proto, ip, p] => throughput::sink(proto, parse_ip(ip), port(p)),
        ["conn-sink", ip, p] => throughput::conn_sink(parse_ip(ip), port(p)),
        ["stream", ip, p, ms] => throughput::stream(parse_ip(ip), port(p), ms.parse().expect("millis")),
        ["udp-flood", ip, p, ms, size] => throughput::udp_flood(
            parse_ip(ip),
            port(p),
            ms.parse().expect("millis"),
            size.parse().expect("size"),
        ),
        ["conn-rate", ip, p, ms] => throughput::conn_rate(parse_ip(ip), port(p), ms.parse().expect("millis")),
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
