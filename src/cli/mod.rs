//! The `disa` subcommands, one module each, over the options they share (`args`) and their
//! output helpers (`common`). `main.rs` only parses and dispatches.

pub mod analyze;
pub mod args;
pub mod bench;
pub mod common;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod schedule;
pub mod train;
pub mod train_classifier;
