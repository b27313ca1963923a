//! The transport protocol of an observed socket operation, as the kernel
//! reports it (an IP protocol number). Policy rules only name TCP and UDP,
//! but events, the audit trail and metrics must keep every other protocol
//! distinct: an SCTP or ICMP denial must never come back as TCP.

use core::fmt;

use crate::{IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
    /// Any other IP protocol, by number (0 when the kernel did not say).
    Other(u8),
}

impl Transport {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Transport::Tcp => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
            Transport::Other(n) => n,
        }
    }

    /// A label with a bounded set of values, for metrics: `tcp`, `udp` or
    /// `other` (a label per protocol number would be unbounded in theory).
    pub const fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Other(_) => "other",
        }
    }
}

impl From<u8> for Transport {
    fn from(n: u8) -> Transport {
        match n {
            IPPROTO_TCP => Transport::Tcp,
            IPPROTO_UDP => Transport::Udp,
            n => Transport::Other(n),
        }
    }
}

/// `tcp`, `udp`, or `proto-N` for any other protocol number.
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Other(n) => write!(f, "proto-{n}"),
            t => f.write_str(t.label()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownTransport;

impl fmt::Display for UnknownTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected \"tcp\", \"udp\", \"other\" or \"proto-N\" (N = 0..=255)")
    }
}

/// Parses what `Display` writes. `other` (written by trails before the
/// protocol number was recorded) reads as `Other(0)`.
impl core::str::FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Transport, UnknownTransport> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            "other" => Ok(Transport::Other(0)),
            s => match s.strip_prefix("proto-").map(str::parse::<u8>) {
                Some(Ok(n)) => Ok(Transport::from(n)),
                _ => Err(UnknownTransport),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_number_round_trips() {
        for n in 0..=255u8 {
            let t = Transport::from(n);
            assert_eq!(t.number(), n);
            assert_eq!(t.to_string().parse::<Transport>(), Ok(t), "{t}");
        }
        assert_eq!("other".parse::<Transport>(), Ok(Transport::Other(0)));
        assert_eq!("sctp".parse::<Transport>(), Err(UnknownTransport));
        assert_eq!(Transport::from(132).label(), "other");
    }
}
