//! Reading and normalising the address a socket operation names.

use aya_ebpf::bindings::bpf_sock_addr;
use portguard_common::{AF_INET, AF_INET6};

use crate::maps::PG_PREFIX_MASKS;

/// A peer or local address as portguard judges it.
#[derive(Clone, Copy)]
pub(crate) struct Addr {
    /// `AF_INET` (then `bytes[..4]` hold the address) or `AF_INET6`.
    pub(crate) family: u8,
    pub(crate) bytes: [u8; 16],
}

impl Addr {
    #[inline(always)]
    pub(crate) fn v4(ip: [u8; 4]) -> Addr {
        let mut bytes = [0u8; 16];
        bytes[0] = ip[0];
        bytes[1] = ip[1];
        bytes[2] = ip[2];
        bytes[3] = ip[3];
        Addr { family: AF_INET, bytes }
    }

    /// An IPv6 address given as four words in network order; a v4-mapped
    /// one (::ffff:a.b.c.d) becomes v4: it is the IPv4 peer a dual-stack
    /// socket reaches, and v4 is how every rule and table keys it.
    #[inline(always)]
    pub(crate) fn v6_words(w: [[u8; 4]; 4]) -> Addr {
        if w[0] == [0; 4] && w[1] == [0; 4] && w[2] == [0, 0, 0xff, 0xff] {
            return Addr::v4(w[3]);
        }
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            bytes[i] = w[i / 4][i % 4];
            i += 1;
        }
        Addr { family: AF_INET6, bytes }
    }

    /// The 16-byte form bind rules are keyed by: v4 as ::ffff:a.b.c.d.
    #[inline(always)]
    pub(crate) fn as_mapped(&self) -> [u8; 16] {
        if self.family == AF_INET6 {
            return self.bytes;
        }
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12] = self.bytes[0];
        m[13] = self.bytes[1];
        m[14] = self.bytes[2];
        m[15] = self.bytes[3];
        m
    }

    /// Connecting to the unspecified address reaches loopback, so judge it
    /// as loopback.
    #[inline(always)]
    pub(crate) fn unspecified_as_loopback(self) -> Addr {
        if self.bytes == [0u8; 16] {
            let mut bytes = [0u8; 16];
            if self.family == AF_INET {
                bytes[0] = 127;
                bytes[3] = 1;
            } else {
                bytes[15] = 1;
            }
            return Addr { family: self.family, bytes };
        }
        self
    }
}

/// The address in a v4 hook's context.
#[inline(always)]
pub(crate) fn user_addr4(ctx: *mut bpf_sock_addr) -> Addr {
    // user_ip4 holds the address in network order: its in-memory bytes are
    // the dotted quad.
    // SAFETY: `ctx` is the hook's own context (every caller passes `ctx.sock_addr`).
    // the verifier checks this 4-byte context load.
    let ip = unsafe { (*ctx).user_ip4 };
    Addr::v4(ip.to_ne_bytes())
}

/// The address in a v6 hook's context; a v4-mapped address becomes v4.
#[inline(always)]
pub(crate) fn user_addr6(ctx: *mut bpf_sock_addr) -> Addr {
    // The verifier only allows 4-byte loads of user_ip6, word by word
    // ("invalid bpf_context access" on wider or narrower reads).
    // SAFETY: `ctx` is the hook's own context; each load is one checked word.
    let w0 = unsafe { (*ctx).user_ip6[0] }.to_ne_bytes();
    // SAFETY: as above.
    let w1 = unsafe { (*ctx).user_ip6[1] }.to_ne_bytes();
    // SAFETY: as above.
    let w2 = unsafe { (*ctx).user_ip6[2] }.to_ne_bytes();
    // SAFETY: as above.
    let w3 = unsafe { (*ctx).user_ip6[3] }.to_ne_bytes();
    Addr::v6_words([w0, w1, w2, w3])
}

/// The port in the context, host order.
#[inline(always)]
pub(crate) fn user_port(ctx: *mut bpf_sock_addr) -> u16 {
    // user_port keeps the network-order port in its low 16 bits.
    // SAFETY: `ctx` is the hook's own context; the verifier checks the load.
    u16::from_be(unsafe { (*ctx).user_port } as u16)
}

/// Zeroes every bit past `prefix_len` (bits counted from the first byte),
/// with the mask the agent precomputed for that length: branch-free, so
/// the verifier walks it once per prefix instead of once per bit pattern.
#[inline(always)]
pub(crate) fn masked(bytes: &[u8; 16], prefix_len: u8) -> [u8; 16] {
    let Some(mask) = PG_PREFIX_MASKS.get(u32::from(prefix_len)) else {
        return [0xff; 16];
    };
    let mut out = [0u8; 16];
    for i in 0..16 {
        out[i] = bytes[i] & mask[i];
    }
    out
}
