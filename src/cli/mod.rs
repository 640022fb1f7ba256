//! The `stepgate` subcommands, one file each, and what several of them
//! share: logging, the client connection and its flags, the suite runner.

pub mod decide;
pub mod loadtest;
pub mod policy_explain;
pub mod policy_test;
pub mod policy_validate;
pub mod replay;
pub mod report;
pub mod serve;

use std::sync::Arc;

use clap::Args;
use stepgate::config::{Config, LogFormat};
use stepgate::server::proto;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;

/// Who and what a client subcommand asks about.
#[derive(Args)]
pub struct Target {
    /// Service address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Journey name, e.g. `login`.
    #[arg(long)]
    pub journey: String,
    /// User id.
    #[arg(long)]
    pub user: String,
    /// Tenant.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Client IP address.
    #[arg(long)]
    pub ip: String,
    /// Device id.
    #[arg(long, default_value = "")]
    pub device: String,
}

/// The service's own log: to stderr (stdout carries the decision log), in
/// the configured format and level (`RUST_LOG` wins).
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A client of the decision service at `addr`.
pub async fn connect(
    addr: &str,
) -> miette::Result<DecisionServiceClient<tonic::transport::Channel>> {
    DecisionServiceClient::connect(addr.to_owned())
        .await
        .map_err(|e| miette::miette!("cannot connect to `{addr}`: {e}"))
}

/// The subject, device and network of a request, from the flags.
pub fn target_parts(
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

/// A status as a one-line error: code and message.
pub fn status_error(status: tonic::Status) -> miette::Report {
    miette::miette!("{:?}: {}", status.code(), status.message())
}

/// What `policy test` and `policy explain` run cases with.
pub fn runner(
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
pub fn suite_errors(errors: &[stepgate::suites::SuiteError]) -> miette::Report {
    for error in errors {
        println!("error: {error}");
    }
    miette::miette!(
        "{} problem(s) in the test suites; no case ran",
        errors.len()
    )
}
