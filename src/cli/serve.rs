//! `stepgate serve`: load the config and the policies, wire, serve until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use stepgate::config::Config;

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (TOML). Without it every key takes its default.
    #[arg(long, env = "STEPGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address; overrides `listen` in the config.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Policy directory; overrides `policies_dir` in the config.
    #[arg(long)]
    pub policies: Option<PathBuf>,
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

pub async fn run(args: ServeArgs) -> miette::Result<()> {
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
    super::init_tracing(&config);
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
