//! Trail lines about verification: a guard found not to hold, and found
//! holding again. Not operations: `replay` and `suggest` skip them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VerifyEvent {
    VerifyFailed,
    VerifyRecovered,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VerifyRecord {
    /// RFC 3339, UTC.
    pub(crate) time: String,
    pub(crate) event: VerifyEvent,
    pub(crate) guard: String,
    pub(crate) mode: String,
    pub(crate) cgroups: Vec<String>,
    /// For `verify_failed`: each failed check, "check subject: expected X, got Y".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) failed: Vec<String>,
}

/// Whether a trail line is a verification record (its `event` is second).
pub(crate) fn is_verification(line: &str) -> bool {
    line.contains(r#""event":"verify_"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_as_a_verification_line() {
        let r = VerifyRecord {
            time: super::super::now_rfc3339(),
            event: VerifyEvent::VerifyFailed,
            guard: "g".into(),
            mode: "enforce".into(),
            cgroups: vec!["/g".into()],
            failed: vec!["hooks /g: expected a, got b".into()],
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(is_verification(&line), "{line}");
        assert!(line.contains(r#""event":"verify_failed""#));
    }
}
