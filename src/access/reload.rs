//! The callers and the TLS settings in force, re-read when their files
//! change (and on SIGHUP), like policies: a set that does not load is
//! refused, counted and logged, and the last good one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::watch::{DirWatcher, WatchError};

use super::{Access, AccessError, tls};

/// Which decision listener a TLS setting is for (each offers its own ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Http,
}

/// Everything one reload reads, swapped in together.
struct Loaded {
    access: Access,
    grpc: Option<Arc<rustls::ServerConfig>>,
    http: Option<Arc<rustls::ServerConfig>>,
    /// `admin.token_file`'s tokens.
    admin: Option<Arc<super::token::TokenTable>>,
}

/// The callers and TLS settings in force.
pub struct AccessControl {
    config: Arc<Config>,
    access: ArcSwap<Access>,
    grpc: ArcSwapOption<rustls::ServerConfig>,
    http: ArcSwapOption<rustls::ServerConfig>,
    admin: ArcSwapOption<super::token::TokenTable>,
    metrics: Arc<Metrics>,
    reloading: std::sync::Mutex<()>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("tls", &self.config.tls.is_some())
            .field("callers", &self.config.callers.len())
            .finish()
    }
}

fn load(config: &Config, previous: Option<&Access>) -> Result<Loaded, AccessError> {
    let access = Access::load(config, previous)?;
    let (grpc, http) = match &config.tls {
        Some(settings) => (
            Some(tls::server_config(settings, tls::ALPN_GRPC)?),
            Some(tls::server_config(settings, tls::ALPN_HTTP)?),
        ),
        None => (None, None),
    };
    let admin = match &config.admin.token_file {
        Some(path) => {
            let mut table = super::token::TokenTable::default();
            for token in super::read_tokens(path).map_err(|e| AccessError::File {
                path: path.clone(),
                problem: format!("`admin.token_file`: {e}"),
            })? {
                table.insert(token, 0);
            }
            Some(Arc::new(table))
        }
        None => None,
    };
    Ok(Loaded {
        access,
        grpc,
        http,
        admin,
    })
}

impl AccessControl {
    /// Reads the token files and TLS files `config` names.
    ///
    /// # Errors
    /// The first file that does not load ([`AccessError`] names it).
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Self, AccessError> {
        let loaded = load(&config, None)?;
        Ok(Self {
            access: ArcSwap::from_pointee(loaded.access),
            grpc: ArcSwapOption::new(loaded.grpc),
            http: ArcSwapOption::new(loaded.http),
            admin: ArcSwapOption::new(loaded.admin),
            config,
            metrics,
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// No callers, no TLS: everyone is `anonymous` (tests, benches).
    pub fn open(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self {
            access: ArcSwap::from_pointee(Access::open()),
            grpc: ArcSwapOption::empty(),
            http: ArcSwapOption::empty(),
            admin: ArcSwapOption::empty(),
            config,
            metrics,
            reloading: std::sync::Mutex::new(()),
        }
    }

    /// The callers in force.
    pub fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// The TLS settings of `listener`, if it speaks TLS.
    pub fn tls(&self, listener: Listener) -> Option<Arc<rustls::ServerConfig>> {
        match listener {
            Listener::Grpc => self.grpc.load_full(),
            Listener::Http => self.http.load_full(),
        }
    }

    /// The tokens `/metrics` asks for, if `admin.token_file` is set.
    pub fn admin_token(&self) -> Option<Arc<super::token::TokenTable>> {
        self.admin.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads every file again and swaps the result in whole; on any error
    /// nothing changes.
    ///
    /// # Errors
    /// The first file that does not load.
    pub fn reload(&self) -> Result<(), AccessError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.access.load_full();
        match load(&self.config, Some(&previous)) {
            Ok(loaded) => {
                self.access.store(Arc::new(loaded.access));
                self.grpc.store(loaded.grpc);
                self.http.store(loaded.http);
                self.admin.store(loaded.admin);
                self.metrics.access_reload(true);
                tracing::info!(
                    callers = self.config.callers.len(),
                    tls = self.config.tls.is_some(),
                    "callers and TLS files reloaded"
                );
                Ok(())
            }
            Err(error) => {
                self.metrics.access_reload(false);
                tracing::error!(%error, "callers and TLS files not reloaded; the last good ones keep serving");
                Err(error)
            }
        }
    }

    /// The files a reload reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .config
            .callers
            .iter()
            .filter_map(|c| c.token_file.clone())
            .collect();
        if let Some(settings) = &self.config.tls {
            files.push(settings.cert_file.clone());
            files.push(settings.key_file.clone());
            files.extend(settings.client_ca_file.clone());
        }
        files.extend(self.config.admin.token_file.clone());
        files
    }
}

/// Reloads `control` when one of its files changes (watching their
/// directories, so a file replaced by a rename or a Kubernetes secret
/// update counts), and on SIGHUP. Keep the watcher alive while serving.
///
/// # Errors
/// A directory that cannot be watched.
pub fn watch(
    control: &Arc<AccessControl>,
    debounce: std::time::Duration,
) -> Result<Option<DirWatcher>, WatchError> {
    let files: Vec<PathBuf> = control
        .files()
        .into_iter()
        .map(|f| std::path::absolute(&f).unwrap_or(f))
        .collect();
    let reload = {
        let control = control.clone();
        move || {
            let control = control.clone();
            async move {
                let done = tokio::task::spawn_blocking(move || control.reload()).await;
                if let Err(err) = done {
                    tracing::error!(error = %err, "access reload task failed");
                }
            }
        }
    };
    crate::watch::on_sighup("callers and TLS", reload.clone());
    if files.is_empty() {
        return Ok(None);
    }
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(std::path::Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut on_change = reload;
    let watcher = crate::watch::watch_dirs(dirs, debounce, move |changes| {
        let relevant = changes.iter().any(|c| {
            c.touches(|p| {
                files.iter().any(|f| f == p)
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".."))
            })
        });
        let run = relevant.then(&mut on_change);
        async move {
            if let Some(run) = run {
                run.await;
            }
        }
    })?;
    Ok(Some(watcher))
}
