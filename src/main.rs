//! The `stepgate` binary: parse the command line and run one subcommand
//! (one file each under `src/cli/`). The only place that exits the process.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cedar evaluation and gRPC allocate many small, short-lived objects per
/// request; mimalloc serves them with much less contention and bookkeeping
/// than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stepgate",
    version,
    about = "Risk-based step-up authentication decisions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision service.
    Serve(cli::serve::ServeArgs),
    /// Ask a running service for a decision and print it as JSON.
    Decide(cli::decide::DecideArgs),
    /// Report an authentication outcome to a running service.
    Report(cli::report::ReportArgs),
    /// Drive a running deployment with realistic traffic and report
    /// throughput and latency against the Health/Check floor.
    Loadtest(cli::loadtest::LoadtestArgs),
    /// Check, test and explain a policy directory.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Judge the decisions in a decision log again with a candidate policy
    /// set and compare: exits 0 when nothing changed, 1 when something
    /// did, 2 when lines could not be replayed.
    Replay(cli::replay::ReplayArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse every policy, validate strictly against the schema, check the
    /// journey catalog and the annotations stepgate needs. Exits 1 on any
    /// error (or warning, with --deny-warnings).
    Validate(cli::policy_validate::ValidateArgs),
    /// Run the YAML test suites in DIR/tests (or --suites) against the
    /// policies in DIR. Exits 1 if any case fails.
    Test(cli::policy_test::TestArgs),
    /// Show why a request gets its answer: the context policies see, the
    /// risk score, each rung of the ladder with the policies that permitted
    /// and forbade it, and the answer. The request comes from a test-suite
    /// file (--file, --case) or from flags.
    Explain(cli::policy_explain::ExplainArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors name files and paths; wrapped, they cannot be copied or
    // matched by CI tooling.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));
    let result = match cli.command {
        Command::Replay(args) => return cli::replay::run(&args),
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Decide(args) => cli::decide::run(args).await,
        Command::Report(args) => cli::report::run(args).await,
        Command::Loadtest(args) => cli::loadtest::run(args).await,
        Command::Policy(PolicyCommand::Validate(args)) => cli::policy_validate::run(&args),
        Command::Policy(PolicyCommand::Test(args)) => cli::policy_test::run(&args).await,
        Command::Policy(PolicyCommand::Explain(args)) => cli::policy_explain::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}
