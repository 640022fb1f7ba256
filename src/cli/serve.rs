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
    /// gRPC listen address; overrides `listen` in the config.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// HTTP listen address; overrides `http.listen` in the config.
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
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
    if let Some(listen) = args.http_listen {
        config.http.listen = listen;
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
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| miette::miette!("cannot listen on `{addr}`: {e}"))
    };
    let grpc_listener = bind(config.listen).await?;
    let http_listener = match config.http.enabled {
        true => Some(bind(config.http.listen).await?),
        false => None,
    };
    // One signal stops both listeners; each drains its own calls. A
    // listener that fails stops the other too, so the process exits and
    // says why instead of serving half its doors.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = on_signal.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tracing::info!(listen = %config.listen, "serving gRPC: stepgate.v1.DecisionService");
    let grpc = async {
        let served = stepgate::server::serve(
            engine.clone(),
            grpc_listener,
            until_stopped(stopped.clone()),
        )
        .await;
        if served.is_err() {
            let _ = stop.send(true);
        }
        served
    };
    let http = async {
        if let Some(listener) = http_listener {
            tracing::info!(listen = %config.http.listen, "serving HTTP: /v1, AuthZEN, forward-auth");
            let served = stepgate::server::http::serve(
                engine.clone(),
                listener,
                until_stopped(stopped.clone()),
            )
            .await;
            if served.is_err() {
                let _ = stop.send(true);
            }
            served?;
        }
        Ok::<(), stepgate::server::http::HttpError>(())
    };
    let (grpc, http) = tokio::join!(grpc, http);
    grpc?;
    http?;
    Ok(())
}
