//! Picks up replaced database files: a filesystem watcher on the files'
//! directories (tools such as geoipupdate replace a file by renaming a new one
//! over it) and, on Unix, SIGHUP. Changes are debounced so a file being
//! written is not opened half-way; a broken file is refused and logged, and
//! the database it would have replaced keeps answering.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{DbKind, GeoDatabases};
use crate::watch::{self, Change, DirWatcher, WatchError};

/// How long the files must stay quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

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
pub fn watch(dbs: Arc<GeoDatabases>) -> Result<Option<DirWatcher>, WatchError> {
    if dbs.paths().is_empty() {
        return Ok(None);
    }
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
    let watcher = watch::watch_dirs(dirs, DEBOUNCE, move |changes: Vec<Change>| {
        let dbs = dbs.clone();
        async move {
            let touched: Vec<DbKind> = dbs
                .paths()
                .iter()
                .filter(|(_, path)| {
                    changes
                        .iter()
                        .any(|change| change.touches(|p| same_file(p, path)))
                })
                .map(|(kind, _)| *kind)
                .collect();
            if !touched.is_empty() {
                reload(&dbs, touched).await;
            }
        }
    })?;
    Ok(Some(watcher))
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
    watch::on_sighup("geo databases", move || {
        let dbs = dbs.clone();
        async move {
            let kinds = dbs.paths().iter().map(|(kind, _)| *kind).collect();
            reload(&dbs, kinds).await;
        }
    });
}
