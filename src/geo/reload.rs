//! Picks up replaced database files: a filesystem watcher on the files'
//! directories (tools such as geoipupdate replace a file by renaming a new one
//! over it) and, on Unix, SIGHUP. Changes are debounced so a file being
//! written is not opened half-way; a broken file is refused and logged, and
//! the database it would have replaced keeps answering.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{DbKind, GeoDatabases};

/// How long the files must stay quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Keeps the watcher alive; dropping it stops watching.
pub struct GeoWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GeoWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot watch `{}` for database updates: {source}", dir.display())]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

fn log_reload(dbs: &GeoDatabases, kind: DbKind) {
    match dbs.reload(kind) {
        Ok(()) => tracing::info!(
            geo.db = kind.config_key(),
            geo.build_epoch = dbs.build_epoch(kind).unwrap_or(0),
            "database reloaded"
        ),
        Err(err) => tracing::error!(
            geo.db = kind.config_key(),
            error = %err,
            "database reload refused; the previous copy keeps serving"
        ),
    }
}

/// Watches the directories of the configured databases. Returns `None` when
/// no database is configured.
pub fn watch(dbs: Arc<GeoDatabases>) -> Result<Option<GeoWatcher>, WatchError> {
    if dbs.paths().is_empty() {
        return Ok(None);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // The receiver only goes away at shutdown.
            let _ = tx.send(event);
        }
    })
    .map_err(|source| WatchError {
        dir: PathBuf::new(),
        source,
    })?;
    let dirs: HashSet<PathBuf> = dbs
        .paths()
        .iter()
        .map(|(_, path)| {
            path.parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError { dir, source })?;
    }
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut events = vec![first];
            // Debounce: wait until the directory has been quiet for a while.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let touched: HashSet<DbKind> = dbs
                .paths()
                .iter()
                .filter(|(_, path)| {
                    events
                        .iter()
                        .any(|e| e.paths.iter().any(|p| same_file(p, path)))
                })
                .map(|(kind, _)| *kind)
                .collect();
            for kind in touched {
                log_reload(&dbs, kind);
            }
        }
    });
    Ok(Some(GeoWatcher {
        _watcher: watcher,
        task,
    }))
}

/// Event paths are absolute; configured ones may not be.
fn same_file(event: &std::path::Path, configured: &std::path::Path) -> bool {
    event == configured
        || std::path::absolute(configured).is_ok_and(|abs| abs == event)
        || (event.file_name() == configured.file_name()
            && std::fs::canonicalize(configured.parent().unwrap_or(configured))
                .ok()
                .zip(event.parent().and_then(|p| std::fs::canonicalize(p).ok()))
                .is_some_and(|(a, b)| a == b))
}

/// Reloads every database on SIGHUP (Unix only).
pub fn reload_on_sighup(dbs: Arc<GeoDatabases>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; database files reload on change only");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading databases");
            for (kind, _) in dbs.paths() {
                log_reload(&dbs, *kind);
            }
        }
    });
    #[cfg(not(unix))]
    let _ = dbs;
}
