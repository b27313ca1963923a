//! Library target so the agent can depend on this crate (cargo then rebuilds
//! the agent when the programs change); the programs are the `portguard` bin.
#![no_std]
