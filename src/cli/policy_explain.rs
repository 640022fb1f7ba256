//! `stepgate policy explain`: why a request gets its answer.

use std::path::PathBuf;

use clap::Args;

use super::{runner, suite_errors};

#[derive(Args)]
pub struct ExplainArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    /// A test-suite YAML file; its case (with its history and signals) is
    /// the request.
    #[arg(long, conflicts_with_all = ["journey", "user", "tenant", "ip", "device", "aal", "attributes"])]
    pub file: Option<PathBuf>,
    /// The case in --file to explain; the first one by default.
    #[arg(long, requires = "file")]
    pub case: Option<String>,
    /// Journey name.
    #[arg(long, required_unless_present = "file")]
    pub journey: Option<String>,
    /// User id.
    #[arg(long)]
    pub user: Option<String>,
    /// The user's tenant, so its own policies (`tenants/<tenant>/`) apply.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Client IP address.
    #[arg(long)]
    pub ip: Option<String>,
    /// Device id.
    #[arg(long)]
    pub device: Option<String>,
    /// Current assurance level (1..3).
    #[arg(long)]
    pub aal: Option<u8>,
    /// Journey attribute as key=value (the value read as YAML). Repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Config file for risk weights, windows, deny lists and databases.
    #[arg(long, env = "STEPGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `stepgate policy explain`.
pub async fn run(args: ExplainArgs) -> miette::Result<()> {
    use stepgate::suites::{self, Case, RequestSpec};
    let runner = runner(&args.dir, args.config.as_deref())?;
    let suite;
    let built;
    let (case, now) = match &args.file {
        Some(file) => {
            suite = suites::load_cases(file).map_err(|e| suite_errors(&e))?;
            let case = suite.case(args.case.as_deref()).ok_or_else(|| {
                let names: Vec<&str> = suite.case_names().collect();
                miette::miette!(
                    "`{}` has no case named `{}`; its cases: {}",
                    file.display(),
                    args.case.as_deref().unwrap_or_default(),
                    names.join("; ")
                )
            })?;
            (case, suite.now)
        }
        None => {
            let mut attributes = std::collections::BTreeMap::new();
            for raw in &args.attributes {
                let (key, value) = raw
                    .split_once('=')
                    .ok_or_else(|| miette::miette!("`--attr {raw}`: expected KEY=VALUE"))?;
                let value = serde_yaml_ng::from_str(value)
                    .unwrap_or_else(|_| serde_yaml_ng::Value::String(value.to_owned()));
                attributes.insert(key.to_owned(), value);
            }
            let request = RequestSpec {
                journey: args.journey.clone(),
                user: args.user.clone(),
                tenant: args.tenant.clone(),
                aal: args.aal,
                device: args.device.clone(),
                ip: args.ip.clone(),
                attributes: Some(attributes),
                ..RequestSpec::default()
            };
            let now = stepgate::engine::Clock::now(&stepgate::engine::SystemClock);
            built = Case::request(request, now).map_err(|e| miette::miette!("{e}"))?;
            (&built, now)
        }
    };
    let explanation = runner
        .explain(case, now)
        .await
        .map_err(|e| miette::miette!("{e}"))?;
    if args.json {
        let json = serde_json::to_string_pretty(&explanation)
            .map_err(|e| miette::miette!("cannot print JSON: {e}"))?;
        println!("{json}");
    } else {
        print!("{explanation}");
    }
    Ok(())
}
