//! Inspection subcommands: read the pinned maps and print them.

pub mod inspect;
pub mod policy;
