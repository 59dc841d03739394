//! Subcommands that live outside `main.rs`.

pub mod analyze;
pub mod eval;
pub mod train;
