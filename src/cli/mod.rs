//! Subcommands that live outside `main.rs`.

pub mod eval;
pub mod train;
