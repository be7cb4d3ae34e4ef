//! Snapshot files: where a node keeps the snapshots it built or received, and `SnapshotFile`,
//! the handle openraft reads a snapshot from (to send it) and writes one into (to receive it).
//!
//! A snapshot is a file in the [`crate::stream`] format under `<db dir>/snapshots/`, never a
//! value in RocksDB and never whole in memory: it is written, sent, received and installed a
//! frame (about 1 MiB) at a time, whatever the size of the state. RocksDB keeps only which file
//! is current (see `state_machine`). File names:
//! - `<index>-<unique>.snap`: a complete snapshot, fsynced, and its directory entry fsynced,
//!   before any RocksDB record names it;
//! - `build-<unique>.tmp`, `receive-<unique>.tmp`: one being built or received. Anything not
//!   named by the current record is removed when the store opens; older snapshots after each
//!   new one is stored; abandoned receives when the next receive begins.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::error::{Result, StorageError};

/// The directory of snapshot files, inside the RocksDB directory.
pub(crate) struct SnapshotDir {
    path: PathBuf,
    next_unique: AtomicU64,
}

const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
const RECEIVE_PREFIX: &str = "receive-";

impl SnapshotDir {
    /// The snapshot directory of the store at `db_path`, created if missing.
    pub(crate) fn open(db_path: &Path) -> Result<Self> {
        let path = db_path.join("snapshots");
        std::fs::create_dir_all(&path).map_err(|e| io_error("creating", &path, e))?;
        // Names stay unique across restarts without a stored counter.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            path,
            next_unique: AtomicU64::new(start),
        })
    }

    fn unique(&self) -> u64 {
        self.next_unique.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh path for a snapshot being built.
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.path
            .join(format!("build-{}{TEMP_SUFFIX}", self.unique()))
    }

    /// A fresh path for a snapshot being received, after removing the files of earlier
    /// receives: openraft receives one stream at a time and drops a stream it abandons (a new
    /// leader, a newer snapshot), so their files would otherwise stay until the next start.
    pub(crate) fn receive_path(&self) -> PathBuf {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(RECEIVE_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.path
            .join(format!("{RECEIVE_PREFIX}{}{TEMP_SUFFIX}", self.unique()))
    }

    /// A fresh file name for a complete snapshot at `index`.
    pub(crate) fn final_name(&self, index: u64) -> String {
        format!("{index:020}-{}{SNAPSHOT_SUFFIX}", self.unique())
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Make `from` (a complete snapshot, possibly in another store's directory) the file `name`
    /// here, durably: the data is fsynced and so is the directory entry. A file of this
    /// directory is renamed; any other is copied, and the original is left alone.
    pub(crate) fn publish(&self, from: &Path, name: &str) -> Result<PathBuf> {
        let to = self.file(name);
        if from.parent() == Some(self.path.as_path()) {
            std::fs::rename(from, &to).map_err(|e| io_error("renaming", from, e))?;
        } else {
            std::fs::copy(from, &to).map_err(|e| io_error("copying", from, e))?;
        }
        sync_file(&to)?;
        self.sync()?;
        Ok(to)
    }

    /// Fsync the directory, so that renames and new names in it survive a crash.
    pub(crate) fn sync(&self) -> Result<()> {
        std::fs::File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error("syncing", &self.path, e))
    }

    /// Remove every complete snapshot but `keep` (the current one) and, with `temp_too`, every
    /// temporary file (only when nothing can be building or receiving one: at open). Failures
    /// are logged only: a leftover file wastes room but is never read.
    pub(crate) fn remove_stale(&self, keep: Option<&str>, temp_too: bool) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if name.ends_with(SNAPSHOT_SUFFIX) {
                keep != Some(name)
            } else {
                temp_too && name.ends_with(TEMP_SUFFIX)
            };
            if stale {
                let path = entry.path();
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove an old snapshot file");
                }
            }
        }
    }
}

/// Fsync one file's data.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| io_error("syncing", path, e))
}

pub(crate) fn io_error(action: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{action} {}: {e}", path.display()))
}

/// A snapshot's data: an open file and its path. openraft reads it in chunks to send it, and
/// writes received chunks into it (then flushes it with `shutdown`) before `install_snapshot`
/// gets it back; the path lets the state machine keep the file instead of copying it.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: tokio::fs::File,
}

impl SnapshotFile {
    /// Open an existing snapshot for reading.
    pub(crate) async fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(Self { path, file })
    }

    /// Wrap a file opened without the runtime (under a lock).
    pub(crate) fn from_std(path: PathBuf, file: std::fs::File) -> Self {
        Self {
            path,
            file: tokio::fs::File::from_std(file),
        }
    }

    /// Create a new, empty file to receive a snapshot into.
    pub(crate) async fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self { path, file })
    }

    /// Where the data is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait until every write reached the file (tokio's file writes in the background), and
    /// give up the handle.
    pub(crate) async fn finish(mut self) -> std::io::Result<PathBuf> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        Ok(self.path)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
