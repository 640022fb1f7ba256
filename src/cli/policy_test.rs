//! `stepgate policy test`: the YAML suites against a policy directory.

use std::path::PathBuf;

use clap::Args;

use super::{runner, suite_errors};

#[derive(Args)]
pub struct TestArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    /// Directory of `*.yaml` suites; defaults to DIR/tests.
    #[arg(long)]
    pub suites: Option<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Config file whose risk weights, windows, deny lists and MaxMind
    /// databases the cases run with; defaults otherwise.
    #[arg(long, env = "STEPGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// List every case, not only the failures.
    #[arg(long)]
    pub verbose: bool,
}

/// `stepgate policy test`: each failure with expected and actual, then a
/// summary line.
pub async fn run(args: &TestArgs) -> miette::Result<()> {
    use stepgate::suites::{self, Verdict};
    let runner = runner(&args.dir, args.config.as_deref())?;
    let suites_dir = args
        .suites
        .clone()
        .unwrap_or_else(|| args.dir.join(suites::SUITES_DIR));
    let loaded = suites::load_dir(&suites_dir).map_err(|e| suite_errors(&e))?;
    let mut results = Vec::new();
    for suite in &loaded {
        results.push(runner.run(suite).await);
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for suite in &results {
        for case in &suite.cases {
            let label = format!("{} › {}", suite.name, case.name);
            match &case.verdict {
                Verdict::Passed => {
                    passed += 1;
                    if args.verbose {
                        println!("pass  {label}");
                    }
                }
                Verdict::Failed { expected, actual } => {
                    failed += 1;
                    println!("FAIL  {label}  ({})", suite.file.display());
                    println!("        expected: {expected}");
                    println!("        actual:   {actual}");
                }
                Verdict::Error(message) => {
                    failed += 1;
                    println!("ERROR {label}  ({})", suite.file.display());
                    println!("        {message}");
                }
            }
        }
    }
    if let Some(path) = &args.junit {
        let xml =
            suites::junit(&results).map_err(|e| miette::miette!("cannot write JUnit XML: {e}"))?;
        std::fs::write(path, xml)
            .map_err(|e| miette::miette!("cannot write `{}`: {e}", path.display()))?;
    }
    let summary = format!(
        "policy tests: {passed} passed, {failed} failed, in {} suite{} (policy version {})",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        runner.version(),
    );
    println!("{summary}");
    if failed == 0 {
        Ok(())
    } else {
        Err(miette::miette!("{failed} policy test case(s) failed"))
    }
}
