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

    /// `<data>/state`: RocksDB, derived from the log.
    pub fn index(&self) -> PathBuf {
        self.0.join("index")
    }

    pub fn rollup(&self) -> PathBuf {
        self.0.join("rollup")
    }

    pub fn audit(&self) -> PathBuf {
        self.0.join("audit")
    }

    /// On HQ: one replica log per site, `<data>/replicas/<site>/`.
    pub fn replicas(&self) -> PathBuf {
        self.0.join("replicas")
    }

    /// On HQ: the index and rollups of each replicated site,
    /// `<data>/sites/<site>/{index,rollup}`, derived from its replica log.
    pub fn sites(&self) -> PathBuf {
        self.0.join("sites")
    }

    /// On a regional site: the shipper's cursor.
    pub fn shipping_cursor(&self) -> PathBuf {
        self.0.join("shipping.json")
    }

    pub fn state(&self) -> PathBuf {
        self.0.join("state")
    }

    /// `<data>/tokens.json`: access tokens, as hashes only.
    pub fn tokens(&self) -> PathBuf {
        self.0.join("tokens.json")
    }

    /// `<data>/tokens.lock`: held while the token file is changed.
    pub fn tokens_lock(&self) -> PathBuf {
        self.0.join("tokens.lock")
    }

    /// `<data>/admin.token`: the first admin token, mode 0600.
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
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

/// Replaces `path` with `bytes` crash-safely: write a temporary file, fsync
/// it, rename it over `path`, fsync the directory. A reader sees the old or
/// the new content, never a mix, and after a crash the same holds. `mode` sets
/// the file's permissions before anything is written to it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no directory"))?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
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
