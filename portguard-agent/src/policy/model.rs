//! The policy file's shape (policy v1), exactly as users write it.
//!
//! Field-level checks (port numbers, ranges, CIDRs, modes) live in the
//! `Deserialize` impls, so the TOML parser reports them at the offending
//! value's line and column. Checks across fields live in `validate`.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer,
    de::{self, SeqAccess, Visitor},
};
use toml::Spanned;

use super::dns_name::NamePattern;

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    /// Format version; only 1 exists. Optional so v1 files stay short.
    #[serde(default)]
    pub version: Option<Spanned<u32>>,
    #[serde(default, rename = "guard")]
    pub guards: Vec<Guard>,
}

/// One guarded cgroup and what it may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Guard {
    pub name: Spanned<String>,
    /// Cgroup path relative to the cgroup root portguard attaches at.
    #[serde(default)]
    pub cgroup: Option<Spanned<String>>,
    /// systemd unit shorthand: "nginx.service" = "/system.slice/nginx.service".
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Kubernetes pods on this node, by namespace and labels.
    #[serde(default)]
    pub pods: Option<Spanned<PodSelector>>,
    /// enforce (default): violations fail with EPERM; audit: reported only.
    #[serde(default)]
    pub mode: Mode,
    /// Allow `bind()` to port 0 (the kernel picks the port). Off by default:
    /// an ephemeral listener is still an uncatalogued port.
    #[serde(default)]
    pub allow_ephemeral_bind: bool,
    /// Allow creating raw (SOCK_RAW) and SCTP sockets. Off by default: their
    /// bind and connect bypass the hooks portguard judges with.
    #[serde(default)]
    pub allow_raw_sockets: bool,
    #[serde(default)]
    pub bind: Vec<BindRule>,
    #[serde(default)]
    pub connect: Vec<ConnectRule>,
}

/// `pods = { namespace = "payments", labels = { app = "api" } }`: the pods
/// in that namespace (any namespace when left out) that carry every one of
/// the labels, with exactly these values (Kubernetes' `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSelector {
    #[serde(default)]
    pub namespace: Option<Namespace>,
    #[serde(default)]
    pub labels: BTreeMap<LabelKey, LabelValue>,
}

impl PodSelector {
    pub(crate) fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace.as_ref().is_none_or(|n| n.0 == namespace)
            && self.labels.iter().all(|(k, v)| labels.get(&k.0) == Some(&v.0))
    }

    /// Selects every pod: almost certainly a mistake in a policy.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.labels.is_empty()
    }
}

impl fmt::Display for PodSelector {
    /// `namespace=payments app=api`, as logs and `portguard check` show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match &self.namespace {
            Some(n) => parts.push(format!("namespace={}", n.0)),
            None => parts.push("namespace=*".to_owned()),
        }
        parts.extend(self.labels.iter().map(|(k, v)| format!("{}={}", k.0, v.0)));
        f.write_str(&parts.join(" "))
    }
}

/// A namespace name: a DNS label (RFC 1123), as Kubernetes requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(pub String);

/// A label key: `name` or `prefix/name` (Kubernetes' label syntax).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelKey(pub String);

/// A label value: empty, or up to 63 characters of A-Z a-z 0-9 - _ .
/// starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelValue(pub String);

/// Kubernetes' "qualified name" part: 1-63 characters of A-Z a-z 0-9 - _ .,
/// beginning and ending with a letter or digit.
fn is_label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// RFC 1123 DNS label: 1-63 characters of a-z 0-9 -, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// RFC 1123 DNS subdomain: dot-separated DNS labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl std::str::FromStr for Namespace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if is_dns_label(s) {
            Ok(Namespace(s.to_owned()))
        } else {
            Err(format!("namespace {s:?} is not a Kubernetes namespace name (a-z 0-9 -, at most 63)"))
        }
    }
}

impl std::str::FromStr for LabelKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = match s.split_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
            None => is_label_name(s),
        };
        if ok {
            Ok(LabelKey(s.to_owned()))
        } else {
            Err(format!(
                "label key {s:?} is not a Kubernetes label key (name or prefix/name; A-Z a-z 0-9 - _ ., at most 63)"
            ))
        }
    }
}

impl std::str::FromStr for LabelValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || is_label_name(s) {
            Ok(LabelValue(s.to_owned()))
        } else {
            Err(format!("label value {s:?} is not a Kubernetes label value (A-Z a-z 0-9 - _ ., at most 63)"))
        }
    }
}

/// Deserializes a string through `FromStr`, so the parser reports a bad
/// value at its own line and column.
macro_rules! deserialize_from_str {
    ($t:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

deserialize_from_str!(Namespace, "a namespace name");
deserialize_from_str!(LabelKey, "a label key");
deserialize_from_str!(LabelValue, "a label value (a string)");

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Transport protocols a rule covers. The default is TCP: a rule that
/// should also open UDP says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
    Both,
}

impl Proto {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Both => "tcp+udp",
        }
    }

    pub(crate) fn ip_protocols(self) -> &'static [u8] {
        use portguard_common::{IPPROTO_TCP, IPPROTO_UDP};
        match self {
            Proto::Tcp => &[IPPROTO_TCP],
            Proto::Udp => &[IPPROTO_UDP],
            Proto::Both => &[IPPROTO_TCP, IPPROTO_UDP],
        }
    }
}

/// Ports this workload may listen on (or bind for sending).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindRule {
    pub ports: Spanned<Vec<PortSpec>>,
    #[serde(default)]
    pub proto: Proto,
    /// Only this local address; default: any address.
    #[serde(default)]
    pub address: Option<Spanned<IpAddr>>,
    /// Peers that may reach these ports (a TCP connection's SYN, a UDP
    /// datagram), in the shapes a connect rule's `peer` takes; default:
    /// any peer.
    #[serde(default)]
    pub from: Option<Spanned<Peers>>,
    /// Catalog metadata (`validate::Catalog`). Spelled out in each rule
    /// rather than flattened: serde's flatten drops deny_unknown_fields and
    /// the TOML spans that errors point with.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    /// The approval's last valid day: a TOML date (2027-03-31) or a string.
    #[serde(default)]
    pub expires: Option<Spanned<Expiry>>,
}

/// Peers this workload may connect or send to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectRule {
    pub peer: Spanned<Peers>,
    pub ports: Spanned<Vec<PortSpec>>,
    #[serde(default)]
    pub proto: Proto,
    /// `"agent"`: the agent resolves the rule's names too, for workloads
    /// whose own lookups the kernel cannot read (DNS over TLS or HTTPS).
    #[serde(default)]
    pub resolve: Option<Spanned<String>>,
    /// Catalog metadata (`validate::Catalog`). Spelled out in each rule
    /// rather than flattened: serde's flatten drops deny_unknown_fields and
    /// the TOML spans that errors point with.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    /// The approval's last valid day: a TOML date (2027-03-31) or a string.
    #[serde(default)]
    pub expires: Option<Spanned<Expiry>>,
}

/// A calendar date, checked to exist (no 2027-02-30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry(pub time::Date);

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(f, "{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    }
}

impl std::str::FromStr for Expiry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a date (write expires = 2027-03-31)");
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok()).ok_or_else(bad);
        let (y, m, d) = (next()?, next()?, next()?);
        let month = u8::try_from(m).ok().and_then(|m| time::Month::try_from(m).ok()).ok_or_else(bad)?;
        let year = i32::try_from(y).map_err(|_| bad())?;
        let day = u8::try_from(d).map_err(|_| bad())?;
        time::Date::from_calendar_date(year, month, day).map(Expiry).map_err(|_| bad())
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A TOML date literal arrives as a Datetime; a quoted one as text.
        match toml::Value::deserialize(d)? {
            toml::Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => {
                let date =
                    dt.date.ok_or_else(|| de::Error::custom("expires must be a date such as 2027-03-31"))?;
                format!("{:04}-{:02}-{:02}", date.year, date.month, date.day)
                    .parse()
                    .map_err(de::Error::custom)
            }
            toml::Value::String(s) => s.parse().map_err(de::Error::custom),
            _ => Err(de::Error::custom("expires must be a date such as 2027-03-31, without a time")),
        }
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn port_number<E: de::Error>(v: i64) -> Result<u16, E> {
    match v {
        1..=65535 => Ok(v as u16),
        0 => Err(E::custom(
            "port 0 is not a port a rule can allow (for kernel-chosen ports see allow_ephemeral_bind)",
        )),
        _ => Err(E::custom(format!("port {v} is out of range 1-65535"))),
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| -> Result<u16, String> {
            let n: i64 = p.trim().parse().map_err(|_| format!("{p:?} is not a port number"))?;
            port_number::<de::value::Error>(n).map_err(|e| e.to_string())
        };
        if s.trim() == "any" {
            return Ok(PortSpec { first: 1, last: 65535 });
        }
        match s.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (parse(a)?, parse(b)?);
                if first > last {
                    return Err(format!("port range {s:?} is reversed (first > last)"));
                }
                Ok(PortSpec { first, last })
            }
            None => parse(s).map(|p| PortSpec { first: p, last: p }),
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a port (443), a range ("8000-8100") or "any""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                port_number(v).map(|p| PortSpec { first: p, last: p })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `peer = "10.0.0.0/8"`, `peer = ["10.0.0.1", "fd00::/8", "db.example"]` or
/// `peer = "any"` (all of IPv4 and all of IPv6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Peers {
    pub nets: Vec<IpNet>,
    /// DNS names and wildcard patterns, in the order written.
    pub names: Vec<NamePattern>,
}

impl Peers {
    pub(super) fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.names.is_empty()
    }

    fn add(&mut self, s: &str) -> Result<(), String> {
        let s = s.trim();
        if s == "any" {
            self.nets.extend(["0.0.0.0/0".parse::<IpNet>().expect("valid"), "::/0".parse().expect("valid")]);
            return Ok(());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            self.nets.push(IpNet::from(ip));
            return Ok(());
        }
        if !s.contains('/') {
            self.names.push(NamePattern::parse(s)?);
            return Ok(());
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!("{s:?} is not an IP address, a CIDR (10.0.0.0/8, fd00::/8), a DNS name or \"any\"")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set past its prefix; did you mean \"{}\"?",
                net.trunc()
            ));
        }
        self.nets.push(net);
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Peers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a CIDR, address or DNS name ("10.0.0.0/8", "db.example"), a list of them, or "any""#,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Peers, E> {
                let mut peers = Peers::default();
                peers.add(v).map_err(E::custom)?;
                Ok(peers)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Peers, A::Error> {
                let mut peers = Peers::default();
                while let Some(s) = seq.next_element::<String>()? {
                    peers.add(&s).map_err(de::Error::custom)?;
                }
                Ok(peers)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!("80".parse::<PortSpec>(), Ok(PortSpec { first: 80, last: 80 }));
        assert_eq!("8000-8100".parse::<PortSpec>(), Ok(PortSpec { first: 8000, last: 8100 }));
        assert_eq!("any".parse::<PortSpec>(), Ok(PortSpec { first: 1, last: 65535 }));
        assert!("0".parse::<PortSpec>().unwrap_err().contains("port 0"));
        assert!("70000".parse::<PortSpec>().unwrap_err().contains("out of range"));
        assert!("90-80".parse::<PortSpec>().unwrap_err().contains("reversed"));
        assert!("http".parse::<PortSpec>().unwrap_err().contains("not a port number"));
    }

    #[test]
    fn pod_selector_names() {
        assert!("payments".parse::<Namespace>().is_ok());
        assert!("Payments".parse::<Namespace>().is_err());
        assert!("-x".parse::<Namespace>().is_err());
        assert!("app".parse::<LabelKey>().is_ok());
        assert!("app.kubernetes.io/name".parse::<LabelKey>().is_ok());
        assert!("app.kubernetes.io/".parse::<LabelKey>().is_err());
        assert!("a b".parse::<LabelKey>().is_err());
        assert!("".parse::<LabelValue>().is_ok());
        assert!("v1.2_x".parse::<LabelValue>().is_ok());
        assert!("x-".parse::<LabelValue>().is_err());
        assert!("x".repeat(64).parse::<LabelValue>().is_err());
    }

    #[test]
    fn pod_selectors_match_namespace_and_every_label() {
        let sel = PodSelector {
            namespace: Some(Namespace("payments".into())),
            labels: [(LabelKey("app".into()), LabelValue("api".into()))].into(),
        };
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert!(sel.matches("payments", &labels(&[("app", "api"), ("tier", "web")])));
        assert!(!sel.matches("shop", &labels(&[("app", "api")])));
        assert!(!sel.matches("payments", &labels(&[("app", "worker")])));
        assert!(!sel.matches("payments", &labels(&[])));
        let any_ns = PodSelector { namespace: None, ..sel.clone() };
        assert!(any_ns.matches("shop", &labels(&[("app", "api")])));
        assert_eq!(sel.to_string(), "namespace=payments app=api");
    }

    #[test]
    fn peers() {
        let parse = |s: &str| {
            let mut p = Peers::default();
            p.add(s).map(|()| p)
        };
        assert_eq!(parse("10.0.0.0/8").unwrap().nets.len(), 1);
        assert_eq!(parse("10.1.2.3").unwrap().nets[0].prefix_len(), 32);
        assert_eq!(parse("any").unwrap().nets.len(), 2);
        assert!(parse("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(parse("10.0.0.0/33").unwrap_err().contains("not an IP address"));
        assert!(parse("10.0.0.300").unwrap_err().contains("looks like an IP address"));
        let named = parse("Example.com.").unwrap();
        assert!(named.nets.is_empty() && named.names[0].to_string() == "example.com");
    }
}
