//! Reloads the configuration when its file or directory changes.
//!
//! The watcher watches a directory, never the file itself: the config directory, or the
//! directory holding the config file. That one watch sees every way a config changes: writes
//! in place, editors that write a temp file and rename it over the original, files added to or
//! removed from a config directory, and the Kubernetes ConfigMap update, which swaps the
//! `..data` symlink to a new timestamped directory while the watched path stays the same.
//! Events are debounced (one save is one reload) and a reload happens only when the text of
//! the config files changed. If the watched directory itself disappears, the watcher waits for
//! it to come back and watches it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::App;

/// Quiet time after the last event before the config is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often to look for a watched directory that disappeared.
const REAPPEAR_POLL: Duration = Duration::from_millis(250);

/// The directory to watch for a config path.
pub fn watch_dir(config: &Path) -> PathBuf {
    if config.is_dir() {
        return config.to_path_buf();
    }
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event can change what the config files contain (opening or reading cannot).
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts watching `app`'s config path; stops when the handle is aborted.
pub fn spawn(app: Arc<App>, debounce: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let dir = watch_dir(&app.options.config);
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let watcher = match start_watcher(&dir, tx) {
                Ok(w) => w,
                Err(e) => {
                    debug!(dir = %dir.display(), error = %e, "cannot watch yet; waiting for the directory");
                    tokio::time::sleep(REAPPEAR_POLL).await;
                    continue;
                }
            };
            // The directory may have changed while nobody watched it.
            reload_if_changed(&app).await;
            follow(&app, &dir, rx, debounce).await;
            drop(watcher);
            warn!(dir = %dir.display(), "config directory disappeared; watching for it to return");
        }
    })
}

fn start_watcher(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(e) if !relevant(&e.kind) => {}
            // An error (such as a queue overflow) may hide a change: look anyway.
            _ => {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Handles event bursts until the watched directory disappears.
async fn follow(
    app: &Arc<App>,
    dir: &Path,
    mut rx: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
) {
    while rx.recv().await.is_some() {
        // Wait for a quiet moment so that one save (or one ConfigMap swap) is one reload.
        while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
        reload_if_changed(app).await;
        if !dir.is_dir() {
            return;
        }
    }
}

async fn reload_if_changed(app: &Arc<App>) {
    let app = app.clone();
    // Reading and parsing a large config is blocking work; keep it off the runtime's workers.
    let _ = tokio::task::spawn_blocking(move || app.reload_if_changed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_the_directory_of_a_file_and_a_directory_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sites.yaml");
        std::fs::write(&file, "sites: []").unwrap();
        assert_eq!(watch_dir(&file), dir.path());
        assert_eq!(watch_dir(dir.path()), dir.path());
        assert_eq!(watch_dir(Path::new("sites.yaml")), PathBuf::from("."));
    }

    #[test]
    fn opening_and_reading_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind};
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Create(CreateKind::File)));
        assert!(relevant(&EventKind::Modify(ModifyKind::Any)));
    }
}
