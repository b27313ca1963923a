//! Reviewing policy changes before they ship (issue #5, "policy as code").
//!
//! Each tool here reads validated policies and never touches the kernel, so
//! it runs anywhere a pull request is checked.

pub mod diff;
pub mod replay;
pub mod suggest;

#[cfg(test)]
mod trail_tests;
