//! Wiring: config in, a ready engine out. Shared by the binary and the
//! integration tests so both start the service the same way.

use std::sync::Arc;

use crate::config::{Config, DecisionLogConfig, DecisionLogSink, StoreBackend};
use crate::engine::Engine;
use crate::geo::{GeoDatabases, GeoError};
use crate::metrics::{Metrics, PolicyRole};
use crate::policy::{PolicyLoadError, PolicySnapshot};
use crate::pseudonym::{KeyError, Pseudonymizer};
use crate::record::DecisionLog;
use crate::signals::IpList;
use crate::signals::ip_list::IpListError;
use crate::store::{ContextStore, MemoryStore, RedisStore, StoreError};
use crate::watch::{self, DirWatcher, WatchError};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StartError {
    #[error(transparent)]
    Policies(#[from] PolicyLoadError),
    #[error(transparent)]
    IpList(#[from] IpListError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error("shadow policy set: {0}")]
    Shadow(PolicyLoadError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("`network.nat64_prefixes`: {0}")]
    Network(#[from] crate::signals::address::PrefixError),
    #[error("the gateway's routes or the callers' journeys do not fit the policies in `{dir}`:\n  {}", problems.join("\n  "))]
    Routes { dir: String, problems: Vec<String> },
    #[error("`decision_log.path`: cannot open `{path}` to append to")]
    DecisionLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the decision log `config` asks for, written by a thread of its
/// own.
pub fn decision_log(
    config: &DecisionLogConfig,
    metrics: Arc<Metrics>,
) -> Result<DecisionLog, StartError> {
    let opened = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| StartError::DecisionLog {
                path: path.to_owned(),
                source,
            })
    };
    let sink: Box<dyn std::io::Write + Send> = match (config.sink, &config.path) {
        (DecisionLogSink::Off, _) => return Ok(DecisionLog::off(metrics)),
        // The writer batches lines itself: no buffer in between.
        (DecisionLogSink::Stdout, _) => Box::new(std::io::stdout()),
        // Opening a FIFO waits for its reader: the writer thread does
        // that, so serving never waits (lines queue, then drop, until a
        // reader comes).
        (DecisionLogSink::File, Some(path)) if is_fifo(path) => {
            Box::new(OpenOnFirstWrite::new(path.clone()))
        }
        (DecisionLogSink::File, Some(path)) => Box::new(opened(path)?),
        // `Config::validate` refuses a file sink without a path.
        (DecisionLogSink::File, None) => {
            return Err(StartError::DecisionLog {
                path: std::path::PathBuf::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no path is set"),
            });
        }
    };
    DecisionLog::start(sink, config.queue_capacity, metrics).map_err(|source| {
        StartError::DecisionLog {
            path: config.path.clone().unwrap_or_else(|| "stdout".into()),
            source,
        }
    })
}

fn is_fifo(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// A file opened for appending the first time it is written to, on the
/// thread that writes: for a FIFO, whose opening waits for a reader.
struct OpenOnFirstWrite {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl OpenOnFirstWrite {
    fn new(path: std::path::PathBuf) -> Self {
        Self { path, file: None }
    }

    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        match &mut self.file {
            Some(file) => Ok(file),
            empty => Ok(empty.insert(std::fs::OpenOptions::new().append(true).open(&self.path)?)),
        }
    }
}

impl std::io::Write for OpenOnFirstWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Loads everything the config names; any problem stops the start.
pub fn build_engine(config: Arc<Config>) -> Result<Engine, StartError> {
    crate::signals::address::ClientAddressing::new(&config.network.nat64_prefixes)?;
    let checked = PolicySnapshot::check(&config.policies_dir);
    let policies = checked.snapshot?;
    let mut problems = policies.route_problems(&config.gateway.routes);
    for (i, caller) in config.callers.iter().enumerate() {
        for journey in caller.journeys.iter().filter(|j| *j != "*") {
            if !policies.catalog().journeys.contains_key(journey.as_str()) {
                problems.push(format!(
                    "`callers[{i}].journeys` names `{journey}`, which is not a journey in the catalog"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(StartError::Routes {
            dir: config.policies_dir.display().to_string(),
            problems,
        });
    }
    crate::policy::log_warnings(
        PolicyRole::Live.label(),
        policies.version(),
        &checked.warnings,
    );
    let shadow = config
        .shadow_policies_dir
        .as_deref()
        .map(PolicySnapshot::load)
        .transpose()
        .map_err(StartError::Shadow)?;
    let deny_list = IpList::load(&config.ip_lists.deny)?;
    let geo = Arc::new(GeoDatabases::open(&config.geo.databases())?);
    let pseudonymizer = match &config.store.hash_key_file {
        Some(path) => Pseudonymizer::from_file(path)?,
        None => Pseudonymizer::random()?,
    };
    let metrics = Arc::new(Metrics::new()?);
    let store: Arc<dyn ContextStore> = match config.store.backend {
        StoreBackend::Memory => Arc::new(MemoryStore::new(&config.store, config.windows)),
        StoreBackend::Redis => Arc::new(
            RedisStore::new(&config.store, config.windows, pseudonymizer.clone())?
                .with_metrics(metrics.clone()),
        ),
    };
    tracing::info!(
        policy.version = policies.version(),
        policy.count = policies.policy_count(),
        journeys = policies.catalog().journeys.len(),
        policies.dir = %config.policies_dir.display(),
        policy_cache.entries = config.policy_cache.entries,
        "policies loaded"
    );
    if let Some(shadow) = &shadow {
        tracing::info!(
            policy.version = shadow.version(),
            policy.count = shadow.policy_count(),
            "shadow policies loaded: evaluated beside the live set, never answering"
        );
    }
    let engine = Engine::new(
        policies,
        store,
        pseudonymizer,
        deny_list,
        geo,
        config,
        metrics,
    );
    Ok(match shadow {
        Some(shadow) => engine.with_shadow(shadow),
        None => engine,
    })
}

/// Reloads the policy sets when their directories change (if the config
/// says to watch) and on SIGHUP. Keep the watchers alive as long as the
/// service runs.
pub fn watch_policies(
    engine: &Arc<Engine>,
    config: &Config,
) -> Result<Vec<DirWatcher>, WatchError> {
    let mut sets = vec![(PolicyRole::Live, config.policies_dir.clone())];
    if let Some(dir) = &config.shadow_policies_dir {
        sets.push((PolicyRole::Shadow, dir.clone()));
    }
    let debounce = std::time::Duration::from_millis(config.policy_reload.debounce_ms);
    let mut watchers = Vec::new();
    for (role, dir) in sets {
        let reload = {
            let engine = engine.clone();
            move || {
                let engine = engine.clone();
                async move {
                    // Parsing and validating is CPU work: keep it off the
                    // request workers.
                    let done =
                        tokio::task::spawn_blocking(move || engine.reload_policies(role)).await;
                    if let Err(err) = done {
                        tracing::error!(policy.set = role.label(), error = %err, "policy reload task failed");
                    }
                }
            }
        };
        if config.policy_reload.watch {
            let mut on_change = reload.clone();
            let watched = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
            // The whole tree: tenants' directories are policy files too,
            // and so is a tenant directory created or removed.
            let tenants = watched.join(crate::policy::TENANTS_DIR);
            watchers.push(watch::watch_tree(dir, debounce, move |changes| {
                let relevant = changes.iter().any(|c| {
                    c.touches(|p| p == watched || is_policy_file(p) || p.starts_with(&tenants))
                });
                let run = relevant.then(&mut on_change);
                async move {
                    if let Some(run) = run {
                        run.await;
                    }
                }
            })?);
        }
        watch::on_sighup(role.label(), reload);
    }
    Ok(watchers)
}

/// The files a policy set is made of; editors' swap and backup files are
/// not. Names starting with `..` are the links a Kubernetes volume swaps to
/// replace every file at once.
fn is_policy_file(path: &std::path::Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.starts_with("..")
        || name == crate::policy::SCHEMA_FILE
        || name == crate::policy::CATALOG_FILE
        || path
            .extension()
            .is_some_and(|e| e == crate::policy::POLICY_EXTENSION)
}
