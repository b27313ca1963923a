//! `portguard diff OLD NEW`: what a policy change opens and closes.

use std::path::Path;

use super::{CmdError, reported};
use crate::{cli::OutputFormat, review};

pub(super) fn run(old: &Path, new: &Path, format: OutputFormat) -> Result<(), CmdError> {
    reported(review::diff::run(old, new, format))
}
