//! `stepgate policy validate`: every check the service runs at load, as
//! diagnostics.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ValidateArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    /// Treat warnings as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// `stepgate policy validate`: every problem and warning as a diagnostic on
/// stdout, then a summary.
pub fn run(args: &ValidateArgs) -> miette::Result<()> {
    use std::io::IsTerminal as _;
    use stepgate::policy::{PolicySnapshot, diagnostics};
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let checked = PolicySnapshot::check(&args.dir);
    let problems = checked
        .snapshot
        .as_ref()
        .err()
        .map_or(&[][..], |e| &e.problems[..]);
    let mut shown: Vec<(&stepgate::policy::Problem, miette::Severity)> = problems
        .iter()
        .map(|p| (p, miette::Severity::Error))
        .chain(
            checked
                .warnings
                .iter()
                .map(|w| (w, miette::Severity::Warning)),
        )
        .collect();
    // In file order, so a reader can work down each file.
    shown.sort_by(|(a, _), (b, _)| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    for (problem, severity) in shown {
        println!("{}", diagnostics::render(problem, severity, color));
    }
    let counts = format!(
        "{} error{}, {} warning{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        checked.warnings.len(),
        if checked.warnings.len() == 1 { "" } else { "s" },
    );
    let dir = args.dir.display();
    match &checked.snapshot {
        Ok(snapshot) if checked.warnings.is_empty() || !args.deny_warnings => {
            println!(
                "`{dir}` is valid: {} policies, {} journeys, version {} ({counts})",
                snapshot.policy_count(),
                snapshot.catalog().journeys.len(),
                snapshot.version(),
            );
            for (tenant, set) in snapshot.tenant_sets() {
                println!(
                    "  tenant `{tenant}`: {} policies with its own, version {}",
                    set.policy_count(),
                    set.version()
                );
            }
            Ok(())
        }
        Ok(_) => Err(miette::miette!(
            "`{dir}` has warnings and --deny-warnings is set ({counts})"
        )),
        Err(_) => Err(miette::miette!("`{dir}` was refused ({counts})")),
    }
}
