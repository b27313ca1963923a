//! Reading a packet as the cgroup_skb programs see it: from its network
//! header, through `bpf_skb_load_bytes` (the verifier allows no direct
//! packet access here).

use core::ffi::c_void;

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_skb_load_bytes, programs::SkBuffContext};
use portguard_common::{AF_INET, AF_INET6};

use crate::addr::Addr;

/// `N` bytes at `offset` from the network header; `None` past the end.
#[inline(always)]
pub(crate) fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper copies at most N bytes into `buf` and fails
    // (non-zero) when the packet is shorter.
    let rc = unsafe {
        bpf_skb_load_bytes(ctx.as_ptr(), offset, (&mut buf as *mut [u8; N]).cast::<c_void>(), N as u32)
    };
    (rc == 0).then_some(buf)
}

/// What the IP header says about the far end.
pub(crate) struct IpHeader {
    /// The source of a received packet, the destination of a sent one.
    pub(crate) peer: Addr,
    /// Where the next header starts.
    pub(crate) l4: u32,
    /// The IP header's protocol (IPv4) or next header (IPv6): an IPv6
    /// packet with extension headers names the first of them, not the
    /// transport.
    pub(crate) next: u8,
}

#[inline(always)]
pub(crate) fn ip_header(ctx: &SkBuffContext, sent: bool) -> Option<IpHeader> {
    let first: [u8; 1] = load(ctx, 0)?;
    let mut bytes = [0u8; 16];
    match first[0] >> 4 {
        4 => {
            let h: [u8; 20] = load(ctx, 0)?;
            let at = if sent { 16 } else { 12 };
            bytes[..4].copy_from_slice(&h[at..at + 4]);
            Some(IpHeader {
                peer: Addr { family: AF_INET, bytes },
                l4: u32::from(h[0] & 0x0f) * 4,
                next: h[9],
            })
        }
        6 => {
            let h: [u8; 40] = load(ctx, 0)?;
            let at = if sent { 24 } else { 8 };
            bytes.copy_from_slice(&h[at..at + 16]);
            Some(IpHeader { peer: Addr { family: AF_INET6, bytes }, l4: 40, next: h[6] })
        }
        _ => None,
    }
}
