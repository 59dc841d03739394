//! The `disa` command-line program: a thin shell over the library. Each subcommand lives in
//! `src/cli/`; this file parses the command line and dispatches.

mod cli;

use clap::{Parser, Subcommand};
use cli::common::{exit_quietly_on_closed_stdout, printable};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "disa",
    version,
    about = "MAR image generation with DiSA diffusion step annealing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images and write a PNG.
    Generate(cli::generate::GenerateArgs),
    /// Print the per-step plan of a schedule: tokens revealed, diffusion steps, totals.
    Schedule(cli::schedule::ScheduleArgs),
    /// Convert official weights (MAR checkpoint + VAE + config) to one disa model file (f32, f16,
    /// int8, int4), or a model back to the official layout (`--to official`).
    Convert(cli::convert::ConvertArgs),
    /// Time schedules against a baseline in one run: ms per image and speed-up ratios.
    Bench(cli::bench::BenchArgs),
    /// Train a MAR on Fashion-MNIST with the official objective (checkpoints, resume).
    Train(cli::train::TrainArgs),
    /// Train the Fashion-MNIST CNN that `disa eval` scores samples with.
    TrainClassifier(cli::train_classifier::ClassifierArgs),
    /// Score schedules: classifier accuracy and Fréchet distance of generated images, with cost.
    Eval(cli::eval::EvalArgs),
    /// DiSA's evidence on one generation: spread, straightness and predictability of the
    /// tokens per AR step, as CSV and an SVG plot.
    Analyze(cli::analyze::AnalyzeArgs),
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version: printed as clap prints them.
        Err(e) if !e.use_stderr() => e.exit(),
        // Errors quote the command line: made safe for the terminal like every other error.
        Err(e) => {
            eprint!("{}", printable(&e.render().to_string()));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Generate(a) => cli::generate::generate(a),
        Command::Schedule(a) => cli::schedule::print_schedule(a),
        Command::Convert(a) => cli::convert::convert(a),
        Command::Bench(a) => cli::bench::bench(a),
        Command::Train(a) => cli::train::train(a),
        Command::TrainClassifier(a) => cli::train_classifier::train_classifier(a),
        Command::Eval(a) => cli::eval::eval(a),
        Command::Analyze(a) => cli::analyze::analyze(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", printable(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
