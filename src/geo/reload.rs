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

/// Reloads on a blocking thread: opening and verifying a real City file reads
/// tens of megabytes, which must not stall the request workers.
async fn reload(dbs: &Arc<GeoDatabases>, kinds: Vec<DbKind>) {
    let dbs = dbs.clone();
    let done = tokio::task::spawn_blocking(move || {
        for kind in kinds {
            log_reload(&dbs, kind);
        }
    })
    .await;
    if let Err(err) = done {
        tracing::error!(error = %err, "database reload task failed");
    }
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(event) if event.need_rescan() => Change::Unknown,
            Ok(event) if changes_content(&event.kind) => Change::Paths(event.paths),
            // Opening or reading a file (our own reloads do) is no change.
            Ok(_) => return,
            Err(_) => Change::Unknown,
        };
        // The receiver only goes away at shutdown.
        let _ = tx.send(change);
    })
    .map_err(|source| WatchError {
        dir: PathBuf::new(),
        source,
    })?;
    // The file's own directory, and where it really lives when it is a
    // symlink (a Kubernetes volume swaps a link to a new directory).
    let dirs: HashSet<PathBuf> = dbs
        .paths()
        .iter()
        .flat_map(|(_, path)| {
            let real = std::fs::canonicalize(path).ok();
            [Some(path.as_path()), real.as_deref()]
                .into_iter()
                .flatten()
                .map(|p| {
                    p.parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
                })
                .collect::<Vec<_>>()
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
            let touched: Vec<DbKind> = dbs
                .paths()
                .iter()
                .filter(|(_, path)| {
                    events.iter().any(|change| match change {
                        Change::Unknown => true,
                        Change::Paths(paths) => paths.iter().any(|p| same_file(p, path)),
                    })
                })
                .map(|(kind, _)| *kind)
                .collect();
            if !touched.is_empty() {
                reload(&dbs, touched).await;
            }
        }
    });
    Ok(Some(GeoWatcher {
        _watcher: watcher,
        task,
    }))
}

/// What the watcher saw.
enum Change {
    /// These paths were created, written, renamed or removed.
    Paths(Vec<PathBuf>),
    /// Events were lost or the watcher failed: assume anything changed.
    Unknown,
}

/// Whether an event can mean new file content.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Event paths are absolute; configured ones may not be. A symlinked
/// configuration counts as changed when its target's directory changes.
fn same_file(event: &std::path::Path, configured: &std::path::Path) -> bool {
    event == configured
        || std::path::absolute(configured).is_ok_and(|abs| abs == event)
        || std::fs::canonicalize(configured).is_ok_and(|real| real == event)
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
            let kinds = dbs.paths().iter().map(|(kind, _)| *kind).collect();
            reload(&dbs, kinds).await;
        }
    });
    #[cfg(not(unix))]
    let _ = dbs;
}
