//! Inspection subcommands: read the pinned maps and print them.

pub mod inspect;
pub mod policy;

/// How an inspection subcommand prints (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}
