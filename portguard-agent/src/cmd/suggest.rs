//! `portguard suggest --events TRAIL --guard NAME`: a draft of the rules
//! that would have allowed what a guard was seen doing.

use std::path::Path;

use super::{CmdError, reported};
use crate::{
    cli::DraftMode,
    policy::{self, Mode},
    review,
};

pub(super) fn run(
    events: &Path,
    guard: Option<String>,
    policy: Option<&Path>,
    mode: DraftMode,
    output: Option<&Path>,
) -> Result<(), CmdError> {
    let mode = match mode {
        DraftMode::Audit => Mode::Audit,
        DraftMode::Enforce => Mode::Enforce,
    };
    let current =
        policy.map(policy::load).transpose().map_err(|e| CmdError::BadInput(e.to_string()))?.map(|(p, _)| p);
    let opts =
        review::suggest::Options { guard, current, mode, ephemeral: review::suggest::local_port_range() };
    reported(review::suggest::run(events, &opts, output))
}
