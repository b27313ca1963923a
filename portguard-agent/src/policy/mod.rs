//! Policy v1: parse, validate and compile `policy.toml`.
//!
//! Loading is all-or-nothing: a policy either passes every check and
//! compiles into kernel map entries, or yields one `PolicyError` that names
//! the file, line, column and field. Nothing here touches the kernel.

pub mod catalog;
mod compile;
pub mod dns_name;
pub mod eval;
mod model;
pub mod permissions;
mod validate;

use std::{fmt, ops::Range, path::Path};

pub use compile::{CompiledGuard, CompiledPolicy};
pub(crate) use compile::{connect_addr, merge_ranges};
pub use model::{Expiry, Mode, PodSelector, PortSpec, Proto};
pub use permissions::PermissionError;
pub use validate::{BindRuleSpec, Catalog, ConnectRuleSpec, GuardSpec, Policy, Target};

/// A policy that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// The text of a policy file, for turning byte spans into line:column.
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub(crate) fn error_at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            message: message.into(),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Reads, validates and compiles the policy at `path`.
pub fn load(path: &Path) -> Result<(Policy, CompiledPolicy), PolicyError> {
    parse_and_compile(&path.display().to_string(), &read(path)?)
}

/// The text of the policy file at `path`.
pub(crate) fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: path.display().to_string(),
        location: None,
        message: format!("cannot read policy: {e}"),
    })
}

pub fn parse_and_compile(file: &str, text: &str) -> Result<(Policy, CompiledPolicy), PolicyError> {
    let source = Source { file, text };
    let raw: model::PolicyFile =
        toml::from_str(text).map_err(|e| source.error_at(e.span(), e.message().trim_end()))?;
    let policy = validate::validate(&source, raw)?;
    let compiled = compile::compile(&source, &policy)?;
    Ok((policy, compiled))
}

/// The SHA-256 of the policy file's bytes, as shown in logs and status.
pub(crate) fn sha256_hex(text: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
