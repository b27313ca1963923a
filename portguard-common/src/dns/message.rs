//! DNS responses built byte by byte, and the walk run to its end in
//! userspace: what the tests (here, and the agent's kernel comparison)
//! feed the walk and what they expect of it.

use std::{vec, vec::Vec};

use super::{BUF_LEN, Buf, DnsWalk, MSG_BUF, NameKey, step};

/// A DNS message being built.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    /// A NOERROR response with one question (class IN) and `ancount`
    /// answers still to add.
    pub fn response(qname: &str, qtype: u16, ancount: u16) -> Msg {
        let mut m = Msg(vec![0x12, 0x34, 0x81, 0x80, 0, 1]);
        m.0.extend(ancount.to_be_bytes());
        m.0.extend([0, 0, 0, 0]);
        m.name(qname);
        m.0.extend(qtype.to_be_bytes());
        m.0.extend(1u16.to_be_bytes());
        m
    }

    /// A name, uncompressed.
    pub fn name(&mut self, name: &str) -> &mut Msg {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            self.0.push(label.len() as u8);
            self.0.extend(label.as_bytes());
        }
        self.0.push(0);
        self
    }

    /// A compression pointer to offset `to`.
    pub fn pointer(&mut self, to: u16) -> &mut Msg {
        self.0.extend((0xc000 | to).to_be_bytes());
        self
    }

    /// The fixed part of a record (class IN) and its data.
    pub fn rr(&mut self, rtype: u16, ttl: u32, data: &[u8]) -> &mut Msg {
        self.0.extend(rtype.to_be_bytes());
        self.0.extend(1u16.to_be_bytes());
        self.0.extend(ttl.to_be_bytes());
        self.0.extend((data.len() as u16).to_be_bytes());
        self.0.extend(data);
        self
    }

    /// An A record whose owner is a pointer to `owner_ptr`.
    pub fn a(&mut self, owner_ptr: u16, ttl: u32, ip: [u8; 4]) -> &mut Msg {
        self.pointer(owner_ptr).rr(1, ttl, &ip)
    }
}

/// Wire form of a name, for CNAME data.
pub fn wire(name: &str) -> Vec<u8> {
    let mut m = Msg::default();
    m.name(name);
    m.0
}

/// Everything one walk gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The question's hash and type, once read.
    pub question: Option<(u64, u32)>,
    /// Each address (4 or 16 bytes) with its TTL, in message order.
    pub addrs: Vec<(Vec<u8>, u32)>,
    /// Why it stopped, if it did not finish.
    pub stop: Option<u32>,
    /// Steps taken (the kernel's `bpf_loop` iterations).
    pub steps: u32,
}

/// Walks `msg` as the kernel does, for at most `budget` steps.
pub fn run(key: &NameKey, msg: &[u8], budget: u32) -> Learned {
    let mut buf = vec![0u8; BUF_LEN];
    let n = msg.len().min(MSG_BUF);
    buf[..n].copy_from_slice(&msg[..n]);
    let buf: &Buf = buf.as_slice().try_into().expect("BUF_LEN bytes");
    let mut out = Learned::default();
    let mut w = DnsWalk::default();
    if w.start(buf, msg.len() as u32) == step::STOP {
        out.stop = Some(w.stop);
        return out;
    }
    while out.steps < budget {
        out.steps += 1;
        match w.step(key, buf) {
            step::CONTINUE => {}
            step::QUESTION => out.question = Some((w.question, w.qtype)),
            step::ADDRESS => out.addrs.push((w.addr[..w.addr_len as usize].to_vec(), w.ttl)),
            step::DONE => return out,
            _ => {
                out.stop = Some(w.stop);
                return out;
            }
        }
    }
    out
}

/// A long answer the walk is made for: a CNAME from the question to
/// `edge.cdn.example`, then 38 A records and one AAAA for it (39 addresses).
pub fn long_answer() -> Msg {
    let mut m = Msg::response("www.primary-database-eu-west.example", 1, 40);
    m.pointer(12).rr(5, 300, &wire("edge.cdn.example"));
    let edge = (m.0.len() - wire("edge.cdn.example").len()) as u16;
    for i in 0..38u8 {
        m.a(edge, 300 - u32::from(i), [10, 0, 0, i]);
    }
    m.pointer(edge).rr(28, 77, &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    m
}

/// `count` copies of `base`, each with 1 to 4 bytes overwritten and up to 7
/// bytes cut from its end, from a fixed xorshift `seed`: the same mutants
/// every run.
pub fn mutants(base: &[u8], count: usize, mut seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count).map(move |_| {
        let mut m = base.to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() % m.len() as u64) as usize;
            m[at] = next() as u8;
        }
        m.truncate(m.len() - (next() % 8) as usize);
        m
    })
}
