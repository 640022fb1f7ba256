//! Debounced directory watching and SIGHUP, shared by everything stepgate
//! reloads from disk (policy sets, MaxMind databases).
//!
//! Editors, `git checkout` and tools such as geoipupdate write a file in
//! several steps; acting on the first event would read it half-written. So a
//! batch of changes is handed on only once the directories have been quiet
//! for the debounce interval.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// A batch is handed on at the latest this many debounce intervals after its
/// first change.
pub const MAX_WAIT_FACTOR: u32 = 20;

/// What the watcher saw.
#[derive(Debug, Clone)]
pub enum Change {
    /// These paths were created, written, renamed or removed.
    Paths(Vec<PathBuf>),
    /// Events were lost or the watcher failed: assume anything changed.
    Unknown,
}

impl Change {
    /// Whether this change may concern a path that `relevant` accepts.
    pub fn touches(&self, relevant: impl Fn(&std::path::Path) -> bool) -> bool {
        match self {
            Change::Unknown => true,
            Change::Paths(paths) => paths.iter().any(|p| relevant(p)),
        }
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot watch `{}` for changes: {source}", dir.display())]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `dirs` (not their subdirectories) and calls `on_change` with each
/// batch of changes once the directories have been quiet for `debounce`, or
/// at the latest [`MAX_WAIT_FACTOR`] times `debounce` after the batch began,
/// so a directory that never goes quiet is still read. Batches are handled
/// one at a time, in order.
pub fn watch_dirs<F, Fut>(
    dirs: impl IntoIterator<Item = PathBuf>,
    debounce: Duration,
    on_change: F,
) -> Result<DirWatcher, WatchError>
where
    F: FnMut(Vec<Change>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    watch_with(dirs, RecursiveMode::NonRecursive, debounce, on_change)
}

/// [`watch_dirs`] for one directory and everything under it, including
/// directories created later (a policy set's `tenants/<tenant>/`).
pub fn watch_tree<F, Fut>(
    dir: PathBuf,
    debounce: Duration,
    on_change: F,
) -> Result<DirWatcher, WatchError>
where
    F: FnMut(Vec<Change>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    watch_with([dir], RecursiveMode::Recursive, debounce, on_change)
}

fn watch_with<F, Fut>(
    dirs: impl IntoIterator<Item = PathBuf>,
    mode: RecursiveMode,
    debounce: Duration,
    mut on_change: F,
) -> Result<DirWatcher, WatchError>
where
    F: FnMut(Vec<Change>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
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
    for dir in dirs {
        watcher
            .watch(&dir, mode)
            .map_err(|source| WatchError { dir, source })?;
    }
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut changes = vec![first];
            let deadline = tokio::time::Instant::now() + debounce * MAX_WAIT_FACTOR;
            loop {
                let quiet_until = (tokio::time::Instant::now() + debounce).min(deadline);
                match tokio::time::timeout_at(quiet_until, rx.recv()).await {
                    Ok(Some(change)) => changes.push(change),
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            on_change(changes).await;
        }
    });
    Ok(DirWatcher {
        _watcher: watcher,
        task,
    })
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

/// Calls `on_hangup` on every SIGHUP (Unix only; elsewhere, never). Every
/// listener sees every signal, so each reloadable part registers its own.
pub fn on_sighup<F, Fut>(what: &'static str, mut on_hangup: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    // Registered before returning, so a SIGHUP sent once the service
    // answers never meets the default action (terminate).
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                reload = what,
                "cannot listen for SIGHUP; files reload on change only"
            );
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(reload = what, "SIGHUP: reloading");
                on_hangup().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (what, on_hangup);
}
