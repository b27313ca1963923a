//! Diff tests: fixture policies in, opens, closes and notes out.
