//! `portguard replay --policy NEW --events TRAIL`: what a policy change
//! would have done to the operations a running agent recorded.

use std::path::Path;

use super::{CmdError, reported};
use crate::{cli::OutputFormat, review};

pub(super) fn run(policy: &Path, events: &Path, format: OutputFormat) -> Result<(), CmdError> {
    reported(review::replay::run(policy, events, format))
}
