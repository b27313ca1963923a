//! DNS names as connect peers (`peer = ["db.payments.internal",
//! "*.vendor.example"]`): what a name is, how it is normalised, and every
//! way one is refused.
//!
//! A name is compared the way DNS compares it: ASCII case folded (RFC
//! 4343), one trailing dot dropped, always absolute (no search-domain
//! expansion: the name written is the name the resolver is asked). Labels
//! are letters, digits, `-` and `_` (service labels such as `_sip`), 1 to 63
//! bytes each, at most 253 bytes and 32 labels in all. Non-ASCII names are
//! refused with their IDNA form, so that what the policy holds is what goes
//! on the wire. A wildcard is the whole first label only: `*.x.example`
//! matches exactly one more label (`a.x.example`, not `x.example` or
//! `a.b.x.example`); `**.x.example` matches one or more.

use std::fmt;

use portguard_common::dns::{self, NameKey};

/// Longest name in presentation form without the trailing dot (RFC 1035
/// limits the wire form to 255 bytes).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// The most labels a name may have: the kernel keeps one hash per label of
/// a question, in a fixed array.
pub(crate) const MAX_LABELS: usize = 32;

/// How many labels a pattern's wildcard stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Wildcard {
    /// `db.example`: exactly this name.
    None,
    /// `*.example`: exactly one label before the suffix.
    OneLabel,
    /// `**.example`: one or more labels before the suffix.
    AnyDepth,
}

/// A normalised DNS name or wildcard pattern from a connect rule's `peer`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamePattern {
    pub wildcard: Wildcard,
    /// The name, or the suffix after the wildcard: lower case, no trailing dot.
    pub suffix: String,
}

impl NamePattern {
    /// Parses a peer string that is not an address, a network or "any".
    pub(crate) fn parse(raw: &str) -> Result<NamePattern, String> {
        if !raw.is_ascii() {
            return Err(match idna::domain_to_ascii(raw) {
                Ok(ascii) => format!("{raw:?} is not ASCII: write its IDNA form {ascii:?}"),
                Err(_) => format!("{raw:?} is not ASCII and has no IDNA form"),
            });
        }
        if looks_like_an_address(raw) {
            return Err(format!("{raw:?} looks like an IP address but is not one"));
        }
        let lower = raw.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name == "*" || name == "**" {
            return Err(format!("{raw:?} is every name: write \"any\" for every peer"));
        }
        let (wildcard, suffix) = match name.split_once('.') {
            Some(("*", rest)) => (Wildcard::OneLabel, rest),
            Some(("**", rest)) => (Wildcard::AnyDepth, rest),
            _ => (Wildcard::None, name),
        };
        if suffix.contains('*') {
            return Err(format!(
                "{raw:?} has a wildcard that is not the whole first label (\"*.example.com\" or \"**.example.com\")"
            ));
        }
        let labels: Vec<&str> = suffix.split('.').collect();
        for label in &labels {
            check_label(raw, label)?;
        }
        if labels.len() < 2 {
            return Err(match wildcard {
                Wildcard::None => format!(
                    "{raw:?} is not an IP address, a CIDR, \"any\" or a full DNS name (a name has at least two labels)"
                ),
                _ => format!("{raw:?} needs at least two labels after its wildcard"),
            });
        }
        // A wildcard stands for at least one label ("a."): the shortest
        // name it matches must itself be a valid name.
        let (shortest_len, shortest_labels) = match wildcard {
            Wildcard::None => (suffix.len(), labels.len()),
            _ => (suffix.len() + 2, labels.len() + 1),
        };
        if shortest_len > MAX_NAME_LEN {
            return Err(format!("{raw:?} is longer than {MAX_NAME_LEN} characters"));
        }
        if shortest_labels > MAX_LABELS {
            return Err(format!("{raw:?} has more than {MAX_LABELS} labels"));
        }
        Ok(NamePattern { wildcard, suffix: suffix.to_owned() })
    }

    /// Whether `name` (any case, with or without its trailing dot) is one
    /// this pattern covers.
    pub fn matches(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        match self.wildcard {
            Wildcard::None => name == self.suffix,
            Wildcard::OneLabel | Wildcard::AnyDepth => {
                let Some(head) = name.strip_suffix(&self.suffix).and_then(|h| h.strip_suffix('.')) else {
                    return false;
                };
                !head.is_empty()
                    && !head.split('.').any(str::is_empty)
                    && (self.wildcard == Wildcard::AnyDepth || !head.contains('.'))
            }
        }
    }
}

impl NamePattern {
    /// The pattern's identity in the kernel's `PG_DNS_NAMES`, under the
    /// pinned hash key: what the kernel computes from a question (its
    /// whole name, or one of its suffixes for a wildcard).
    pub(crate) fn kernel_hash(&self, key: &NameKey) -> u64 {
        let suffix = dns::name_hash(key, self.suffix.split('.').map(str::as_bytes));
        match self.wildcard {
            Wildcard::None => suffix,
            Wildcard::OneLabel => dns::wildcard_hash(key, suffix, dns::WILDCARD_ONE),
            Wildcard::AnyDepth => dns::wildcard_hash(key, suffix, dns::WILDCARD_MANY),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wildcard {
            Wildcard::None => f.write_str(&self.suffix),
            Wildcard::OneLabel => write!(f, "*.{}", self.suffix),
            Wildcard::AnyDepth => write!(f, "**.{}", self.suffix),
        }
    }
}

/// Digits and dots only with a numeric last label (no top-level domain is
/// all digits, RFC 3696 section 2), or a colon anywhere: a mistyped address,
/// never a name.
fn looks_like_an_address(s: &str) -> bool {
    let last = s.strip_suffix('.').unwrap_or(s).rsplit('.').next().unwrap_or("");
    s.contains(':') || s.contains('/') || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn check_label(raw: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!("{raw:?} has an empty label"));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("{raw:?} has a label longer than {MAX_LABEL_LEN} characters"));
    }
    if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("{raw:?} has {bad:?}, which a name cannot hold (letters, digits, \"-\", \"_\")"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("{raw:?} has a label that starts or ends with \"-\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NamePattern {
        NamePattern::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn refused(s: &str, needle: &str) {
        let e = NamePattern::parse(s).expect_err(s);
        assert!(e.contains(needle), "{e:?} does not mention {needle:?}");
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(name("DB.Payments.Internal.").to_string(), "db.payments.internal");
        assert_eq!(name("_sip._tcp.example.com").to_string(), "_sip._tcp.example.com");
        assert_eq!(name("xn--bcher-kva.example").suffix, "xn--bcher-kva.example");
        assert_eq!(name("*.Vendor.example").wildcard, Wildcard::OneLabel);
        assert_eq!(name("**.vendor.example.").to_string(), "**.vendor.example");
        assert_eq!(name("a1.example").suffix, "a1.example");
    }

    #[test]
    fn wildcards_match_what_the_module_doc_says() {
        let one = name("*.x.example");
        assert!(one.matches("a.x.example") && one.matches("A.X.Example."));
        assert!(!one.matches("x.example") && !one.matches("a.b.x.example") && !one.matches("ax.example"));
        assert!(!one.matches(".x.example"));
        let many = name("**.x.example");
        assert!(many.matches("a.x.example") && many.matches("a.b.x.example"));
        assert!(!many.matches("x.example") && !many.matches("a..x.example"));
        let exact = name("x.example");
        assert!(exact.matches("X.example.") && !exact.matches("a.x.example"));
    }

    #[test]
    fn every_bad_name_is_refused_with_its_reason() {
        refused("10.0.0.300", "looks like an IP address");
        refused("fd00::1::2", "looks like an IP address");
        refused("10.0.0.0/33", "looks like an IP address");
        refused("db..payments.internal", "empty label");
        refused(".example.com", "empty label");
        refused("a.*.example", "not the whole first label");
        refused("*db.example", "not the whole first label");
        refused("*.com", "at least two labels after its wildcard");
        refused("*", "write \"any\"");
        refused("db", "at least two labels");
        // The wildcard counts as one label and one character plus its dot.
        refused(&format!("*.{}example", "a.".repeat(31)), "more than 32 labels");
        name(&format!("*.{}example", "a.".repeat(30)));
        let suffix = format!("{}{}", "abcdefghi.".repeat(24), "example");
        assert_eq!(suffix.len(), 247);
        name(&format!("**.{suffix}"));
        refused(&format!("**.abcdef{suffix}"), "longer than 253");
        refused(&format!("{}.example", "a".repeat(64)), "longer than 63");
        refused(&format!("{}example", "abcdefg.".repeat(32)), "longer than 253");
        refused(&format!("{}example", "a.".repeat(32)), "more than 32 labels");
        refused("db!.example", "'!'");
        refused("db.exa mple", "' '");
        refused("-db.example", "starts or ends with \"-\"");
        refused("bücher.example", "xn--bcher-kva.example");
    }
}
