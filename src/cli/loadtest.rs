//! `stepgate loadtest`: drive a deployment and print what it sustained.

use clap::Args;

#[derive(Args)]
pub struct LoadtestArgs {
    /// The front door to drive: grpc, http (/v1/decide), authzen
    /// (/access/v1/evaluation) or ext-authz (Envoy Check; the server needs
    /// routes `/JOURNEY`, as in benches/gateway.toml).
    #[arg(long, default_value = "grpc")]
    pub protocol: stepgate::loadtest::Protocol,
    /// The gRPC listener's address (grpc, ext-authz).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The HTTP listener's address (http, authzen).
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub http_target: String,
    /// The server's process id: report its CPU time per decision (Linux).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections to spread them over (gRPC and ext-authz; the HTTP
    /// doors use HTTP/1.1, a pooled connection per request in flight).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Length of the Decide phase (`10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Length of the Health/Check floor phase; `0s` skips it. Defaults to
    /// `--duration`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub check_duration: Option<std::time::Duration>,
    /// Unrecorded Decide traffic first.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,
    /// Journeys and their weights.
    #[arg(long, default_value = "login:80,payment:20")]
    pub mix: stepgate::loadtest::Mix,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Share of decisions followed by a ReportOutcome (0 to 1).
    #[arg(long, default_value_t = 0.25)]
    pub report_ratio: f64,
    /// Seed for the traffic's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip priming: by default every user's own devices are first reported
    /// as signed in once, so answers look like a deployment's in steady
    /// state rather than one meeting every device for the first time.
    #[arg(long)]
    pub no_prime: bool,
    /// Decisions per second, evenly spaced (a soak's steady load); by
    /// default as fast as answers come.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: LoadtestArgs) -> miette::Result<()> {
    let config = stepgate::loadtest::LoadConfig {
        protocol: args.protocol,
        target: args.target,
        http_target: args.http_target,
        server_pid: args.server_pid,
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
        rate: args.rate,
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
