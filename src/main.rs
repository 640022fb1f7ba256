//! The `stepgate` binary: parse the command line, load config, wire, serve.
//! The only place that exits the process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stepgate::config::{Config, LogFormat};
use stepgate::server::proto;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;

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
    Serve(ServeArgs),
    /// Ask a running service for a decision and print it as JSON.
    Decide(DecideArgs),
    /// Report an authentication outcome to a running service.
    Report(ReportArgs),
    /// Drive a running deployment with realistic traffic and report
    /// throughput and latency against the Health/Check floor.
    Loadtest(LoadtestArgs),
    /// Check, test and explain a policy directory.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse every policy, validate strictly against the schema, check the
    /// journey catalog and the annotations stepgate needs. Exits 1 on any
    /// error (or warning, with --deny-warnings).
    Validate(ValidateArgs),
    /// Run the YAML test suites in DIR/tests (or --suites) against the
    /// policies in DIR. Exits 1 if any case fails.
    Test(TestArgs),
    /// Show why a request gets its answer: the context policies see, the
    /// risk score, each rung of the ladder with the policies that permitted
    /// and forbade it, and the answer. The request comes from a test-suite
    /// file (--file, --case) or from flags.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// A test-suite YAML file; its case (with its history and signals) is
    /// the request.
    #[arg(long, conflicts_with_all = ["journey", "user", "ip", "device", "aal", "attributes"])]
    file: Option<PathBuf>,
    /// The case in --file to explain; the first one by default.
    #[arg(long, requires = "file")]
    case: Option<String>,
    /// Journey name.
    #[arg(long, required_unless_present = "file")]
    journey: Option<String>,
    /// User id.
    #[arg(long)]
    user: Option<String>,
    /// Client IP address.
    #[arg(long)]
    ip: Option<String>,
    /// Device id.
    #[arg(long)]
    device: Option<String>,
    /// Current assurance level (1..3).
    #[arg(long)]
    aal: Option<u8>,
    /// Journey attribute as key=value (the value read as YAML). Repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    attributes: Vec<String>,
    /// Config file for risk weights, windows, deny lists and databases.
    #[arg(long, env = "STEPGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TestArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// Directory of `*.yaml` suites; defaults to DIR/tests.
    #[arg(long)]
    suites: Option<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Config file whose risk weights, windows, deny lists and MaxMind
    /// databases the cases run with; defaults otherwise.
    #[arg(long, env = "STEPGATE_CONFIG")]
    config: Option<PathBuf>,
    /// List every case, not only the failures.
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct ValidateArgs {
    /// Policy directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// Treat warnings as errors.
    #[arg(long)]
    deny_warnings: bool,
}

#[derive(Args)]
struct LoadtestArgs {
    /// Service address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections to spread them over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of the Decide phase (`10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Length of the Health/Check floor phase; `0s` skips it. Defaults to
    /// `--duration`.
    #[arg(long, value_parser = humantime::parse_duration)]
    check_duration: Option<std::time::Duration>,
    /// Unrecorded Decide traffic first.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: std::time::Duration,
    /// Journeys and their weights.
    #[arg(long, default_value = "login:80,payment:20")]
    mix: stepgate::loadtest::Mix,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Share of decisions followed by a ReportOutcome (0 to 1).
    #[arg(long, default_value_t = 0.25)]
    report_ratio: f64,
    /// Seed for the traffic's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip priming: by default every user's own devices are first reported
    /// as signed in once, so answers look like a deployment's in steady
    /// state rather than one meeting every device for the first time.
    #[arg(long)]
    no_prime: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (TOML). Without it every key takes its default.
    #[arg(long, env = "STEPGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address; overrides `listen` in the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Policy directory; overrides `policies_dir` in the config.
    #[arg(long)]
    policies: Option<PathBuf>,
}

#[derive(Args)]
struct Target {
    /// Service address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Journey name, e.g. `login`.
    #[arg(long)]
    journey: String,
    /// User id.
    #[arg(long)]
    user: String,
    /// Tenant.
    #[arg(long, default_value = "")]
    tenant: String,
    /// Client IP address.
    #[arg(long)]
    ip: String,
    /// Device id.
    #[arg(long, default_value = "")]
    device: String,
}

#[derive(Args)]
struct DecideArgs {
    #[command(flatten)]
    target: Target,
    /// Current assurance level (1..3).
    #[arg(long, default_value_t = 1)]
    aal: u32,
    /// Journey attribute as key=value; the value is parsed as JSON when it
    /// can be (`amount=1500`), otherwise taken as a string. Repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    attributes: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    AuthSucceeded,
    AuthFailed,
    StepUpSucceeded,
    StepUpFailed,
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    target: Target,
    /// What happened.
    #[arg(long, value_enum)]
    event: EventArg,
    /// The decision this outcome answers (the `decision_id` Decide returned).
    #[arg(long, default_value = "")]
    decision_id: String,
    /// The assurance level the user holds after this step (1..3); left out,
    /// the event implies it.
    #[arg(long, value_name = "LEVEL")]
    reached_aal: Option<u32>,
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

async fn serve(args: ServeArgs) -> miette::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.policies {
        config.policies_dir = dir;
    }
    init_tracing(&config);
    let config = Arc::new(config);
    let engine = Arc::new(stepgate::app::build_engine(config.clone())?);
    // Kept alive for the life of the server: replaced database files are
    // picked up as they change, and on SIGHUP.
    let _geo_watcher = stepgate::geo::reload::watch(engine.geo().clone())?;
    stepgate::geo::reload::reload_on_sighup(engine.geo().clone());
    let _policy_watchers = stepgate::app::watch_policies(&engine, &config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| miette::miette!("cannot listen on `{}`: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, "serving stepgate.v1.DecisionService");
    stepgate::server::serve(engine, config.limits, listener, shutdown_signal()).await?;
    Ok(())
}

/// `stepgate policy validate`: every problem and warning as a diagnostic on
/// stdout, then a summary.
fn validate(args: &ValidateArgs) -> miette::Result<()> {
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
            Ok(())
        }
        Ok(_) => Err(miette::miette!(
            "`{dir}` has warnings and --deny-warnings is set ({counts})"
        )),
        Err(_) => Err(miette::miette!("`{dir}` was refused ({counts})")),
    }
}

/// What `policy test` and `policy explain` run cases with.
fn runner(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> miette::Result<stepgate::suites::Runner> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let snapshot = stepgate::policy::PolicySnapshot::load(dir)?;
    let deny_list = stepgate::signals::IpList::load(&config.ip_lists.deny)?;
    let geo = Arc::new(stepgate::geo::GeoDatabases::open(&config.geo.databases())?);
    Ok(stepgate::suites::Runner::new(
        Arc::new(snapshot),
        Arc::new(config),
        deny_list,
        geo,
    ))
}

/// Prints each problem in the suites on a line of its own, unwrapped, so
/// editors and CI can jump to them; the error says how many there were.
fn suite_errors(errors: &[stepgate::suites::SuiteError]) -> miette::Report {
    for error in errors {
        println!("error: {error}");
    }
    miette::miette!(
        "{} problem(s) in the test suites; no case ran",
        errors.len()
    )
}

/// `stepgate policy explain`.
async fn explain(args: ExplainArgs) -> miette::Result<()> {
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

/// `stepgate policy test`: each failure with expected and actual, then a
/// summary line.
async fn policy_test(args: &TestArgs) -> miette::Result<()> {
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

fn attribute_value(raw: &str) -> prost_types::Value {
    use prost_types::value::Kind;
    fn convert(v: serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(convert).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, convert(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => convert(v),
        Err(_) => convert(serde_json::Value::String(raw.to_owned())),
    }
}

async fn connect(addr: &str) -> miette::Result<DecisionServiceClient<tonic::transport::Channel>> {
    DecisionServiceClient::connect(addr.to_owned())
        .await
        .map_err(|e| miette::miette!("cannot connect to `{addr}`: {e}"))
}

fn target_parts(
    t: &Target,
) -> (
    Option<proto::Subject>,
    Option<proto::Device>,
    Option<proto::Network>,
) {
    (
        Some(proto::Subject {
            user_id: t.user.clone(),
            tenant: t.tenant.clone(),
        }),
        (!t.device.is_empty()).then(|| proto::Device {
            id: t.device.clone(),
            user_agent: String::new(),
        }),
        Some(proto::Network { ip: t.ip.clone() }),
    )
}

fn status_error(status: tonic::Status) -> miette::Report {
    miette::miette!("{:?}: {}", status.code(), status.message())
}

async fn decide(args: DecideArgs) -> miette::Result<()> {
    let mut fields = std::collections::BTreeMap::new();
    for pair in &args.attributes {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| miette::miette!("`--attr {pair}`: expected KEY=VALUE"))?;
        fields.insert(key.to_owned(), attribute_value(value));
    }
    let (subject, device, network) = target_parts(&args.target);
    let request = proto::DecideRequest {
        journey: args.target.journey.clone(),
        subject,
        authn: Some(proto::Authn {
            aal: args.aal,
            amr: Vec::new(),
            auth_time: 0,
        }),
        device,
        network,
        attributes: (!fields.is_empty()).then_some(prost_types::Struct { fields }),
        request_id: String::new(),
    };
    let mut client = connect(&args.target.addr).await?;
    let response = client
        .decide(request)
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", response_json(&response));
    Ok(())
}

fn response_json(r: &proto::DecideResponse) -> serde_json::Value {
    let outcome = proto::Outcome::try_from(r.outcome)
        .map(|o| o.as_str_name())
        .unwrap_or("UNKNOWN");
    serde_json::json!({
        "outcome": outcome,
        "required_aal": r.required_aal,
        "required_acr": r.required_acr,
        "reasons": r.reasons.iter().map(|x| serde_json::json!({"policy_id": x.policy_id, "message": x.message})).collect::<Vec<_>>(),
        "risk": r.risk.as_ref().map(|risk| serde_json::json!({
            "score": risk.score,
            "level": risk.level,
            "signals": risk.signals.iter().map(|s| serde_json::json!({"name": s.name, "points": s.points})).collect::<Vec<_>>(),
        })),
        "policy_errors": r.policy_errors.iter().map(|x| serde_json::json!({"policy_id": x.policy_id, "message": x.message})).collect::<Vec<_>>(),
        "decision_id": r.decision_id,
        "policy_version": r.policy_version,
        "degraded": r.degraded,
    })
}

async fn report(args: ReportArgs) -> miette::Result<()> {
    let event = match args.event {
        EventArg::AuthSucceeded => proto::Event::AuthSucceeded,
        EventArg::AuthFailed => proto::Event::AuthFailed,
        EventArg::StepUpSucceeded => proto::Event::StepUpSucceeded,
        EventArg::StepUpFailed => proto::Event::StepUpFailed,
    };
    let (subject, device, network) = target_parts(&args.target);
    let request = proto::ReportOutcomeRequest {
        decision_id: args.decision_id,
        journey: args.target.journey.clone(),
        subject,
        device,
        network,
        event: event.into(),
        reached_aal: args.reached_aal.unwrap_or(0),
    };
    let mut client = connect(&args.target.addr).await?;
    let response = client
        .report_outcome(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let effect = proto::ReportEffect::try_from(response.effect).unwrap_or_default();
    let out = serde_json::json!({
        "reported": event.as_str_name(),
        "effect": effect.as_str_name(),
        "required_aal": response.required_aal,
        "reached_aal": response.reached_aal,
        "decision_found": response.decision_found,
    });
    println!("{out}");
    Ok(())
}

async fn loadtest(args: LoadtestArgs) -> miette::Result<()> {
    let config = stepgate::loadtest::LoadConfig {
        target: args.target,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        check_duration: args.check_duration.unwrap_or(args.duration),
        warmup: args.warmup,
        mix: args.mix,
        users: args.users,
        report_ratio: args.report_ratio,
        seed: args.seed,
        prime: !args.no_prime,
    };
    let report = stepgate::loadtest::run(config).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| miette::miette!("cannot write the results as JSON: {e}"))?;
        println!("{json}");
    } else {
        print!("{}", report.render());
    }
    match report.errors() {
        0 => Ok(()),
        n => Err(miette::miette!("{n} request(s) failed")),
    }
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
        Command::Serve(args) => serve(args).await,
        Command::Decide(args) => decide(args).await,
        Command::Report(args) => report(args).await,
        Command::Loadtest(args) => loadtest(args).await,
        Command::Policy(PolicyCommand::Validate(args)) => validate(&args),
        Command::Policy(PolicyCommand::Test(args)) => policy_test(&args).await,
        Command::Policy(PolicyCommand::Explain(args)) => explain(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}
