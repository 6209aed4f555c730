//! The data directory's layout as typed paths, and the lock that keeps a
//! second writer (a server, an import) out of it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// `<data>`: the root of one archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// `<data>/log`: the segments of the conversation log.
    pub fn log(&self) -> PathBuf {
        self.0.join("log")
    }

    /// `<data>/lock`: held by the one process that may write.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("lock")
    }

    /// Creates the directory if needed and takes its write lock.
    pub fn lock(&self) -> anyhow::Result<DataDirLock> {
        std::fs::create_dir_all(&self.0)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", self.0.display()))?;
        let path = self.lock_file();
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "data directory {} is in use by another verbatim process (a running server or import); stop it first",
                self.0.display()
            ),
            Err(TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// Held while a process writes to a data directory; released on drop or exit.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path().join("data"));
        let first = d.lock().expect("first lock");
        let err = d.lock().expect_err("second lock must fail");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        d.lock().expect("lock after release");
    }
}
