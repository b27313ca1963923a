//! Reviewing policy changes before they ship (issue #5, "policy as code").
//!
//! Each tool here reads validated policies and never touches the kernel, so
//! it runs anywhere a pull request is checked.

pub(crate) mod diff;
pub(crate) mod replay;
pub(crate) mod suggest;

#[cfg(test)]
mod trail_tests;
