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
    /// Admin listen address (`/metrics`, `/healthz`, `/readyz`); overrides
    /// `admin.listen` in the config.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
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
    if let Some(listen) = args.admin_listen {
        config.admin.listen = listen;
    }
    if let Some(dir) = args.policies {
        config.policies_dir = dir;
    }
    // Flags can break a rule too (two listeners on one address).
    let source = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("(defaults)"));
    config.validate(&source)?;
    super::init_tracing(&config);
    let exposed = if config.callers.is_empty() {
        config.exposed_doors()
    } else {
        Vec::new()
    };
    for (key, addr) in exposed {
        tracing::warn!(
            listen = %addr,
            "`{key}` is reachable beyond loopback and callers are NOT authenticated: anyone who reaches it can ask for decisions and report completed sign-ins (`security.allow_unauthenticated_callers = true`)"
        );
    }
    let config = Arc::new(config);
    let engine = stepgate::app::build_engine(config.clone())?;
    let log = stepgate::app::decision_log(&config.decision_log, engine.metrics().clone())?;
    let engine = Arc::new(
        engine.with_decision_log(log, stepgate::record::Privacy::of(&config.decision_log)),
    );
    // Kept alive for the life of the server: replaced database files are
    // picked up as they change, and on SIGHUP.
    let _geo_watcher = stepgate::geo::reload::watch(engine.geo().clone())?;
    stepgate::geo::reload::reload_on_sighup(engine.geo().clone());
    let _policy_watchers = stepgate::app::watch_policies(&engine, &config)?;
    let guard = stepgate::server::guard::Guard::for_engine(&engine)?;
    if config.callers.is_empty() {
        tracing::info!("no [[callers]]: every request is served as `anonymous`, with every scope");
    } else {
        let names: Vec<&str> = config.callers.iter().map(|c| c.name.as_str()).collect();
        tracing::info!(
            callers = %names.join(","),
            tls = config.tls.is_some(),
            client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
            "callers authenticated on every door"
        );
        let tokens = config.callers.iter().any(|c| c.token_file.is_some());
        if tokens && config.tls.is_none() {
            let exposed = [
                ("listen", config.listen),
                ("http.listen", config.http.listen),
            ];
            for (key, addr) in exposed.iter().filter(|(_, a)| !a.ip().is_loopback()) {
                tracing::warn!(
                    listen = %addr,
                    "`{key}` is reachable beyond loopback without `[tls]`: callers' bearer tokens cross the network in plaintext unless something else (a service mesh) encrypts it"
                );
            }
        }
    }
    let _access_watcher = stepgate::access::reload::watch(
        guard.control(),
        std::time::Duration::from_millis(config.policy_reload.debounce_ms),
    )?;
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
    let admin_listener = match config.admin.enabled {
        true => Some(bind(config.admin.listen).await?),
        false => None,
    };
    let readiness = stepgate::server::admin::Readiness::new(engine.clone());
    // One signal stops both listeners; each drains its own calls. A
    // listener that fails stops the other too, so the process exits and
    // says why instead of serving half its doors.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let on_signal = stop.clone();
    let draining = readiness.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // `/readyz` fails first, so load balancers stop sending.
        draining.set(false);
        let _ = on_signal.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tracing::info!(listen = %config.listen, "serving gRPC: stepgate.v1.DecisionService");
    let grpc = async {
        let served = stepgate::server::serve(
            engine.clone(),
            guard.clone(),
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
                guard.clone(),
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
    // The admin listener outlives the others, so the drain can be watched;
    // it stops once they are done.
    let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    let admin = match admin_listener {
        Some(listener) => {
            tracing::info!(listen = %config.admin.listen, "serving admin: /metrics, /healthz, /readyz");
            let served = stepgate::server::admin::serve(
                readiness.clone(),
                Some(guard.control().clone()),
                listener,
                until_stopped(admin_stopped),
            );
            Some(tokio::spawn(served))
        }
        None => None,
    };
    readiness.set(true);
    // From the moment the shutdown begins, in-flight requests get
    // `shutdown.grace_secs` to finish; then the process goes without them.
    let grace = std::time::Duration::from_secs(config.shutdown.grace_secs);
    let mut signalled = stopped.clone();
    let overdue = async move {
        let _ = signalled.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        served = async { tokio::join!(grpc, http) } => Some(served),
        () = overdue => None,
    };
    readiness.set(false);
    // Every answered request's line reaches the sink before exit.
    let log = engine.recorder().log().clone();
    let flushed = tokio::task::spawn_blocking(move || log.flush(std::time::Duration::from_secs(5)))
        .await
        .unwrap_or(false);
    if !flushed {
        tracing::warn!("decision log: not every line was written before exit");
    }
    let _ = admin_stop.send(true);
    let Some((grpc, http)) = served else {
        return Err(miette::miette!(
            "requests were still in flight {} s after the shutdown began (`shutdown.grace_secs`); exiting without them",
            grace.as_secs()
        ));
    };
    if let Some(admin) = admin {
        match admin.await {
            Ok(served) => served?,
            Err(err) => tracing::error!(error = %err, "admin listener task failed"),
        }
    }
    grpc?;
    http?;
    Ok(())
}
