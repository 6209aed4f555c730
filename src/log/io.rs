//! The file operations the log needs, behind one trait, so every layer above
//! runs over the real file system in production and over [`MemStorage`] in
//! tests. `MemStorage` models what a crash does: it forgets writes and
//! directory changes that were not synced, and may keep a torn prefix of the
//! unsynced tail of any file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file open for appending.
pub trait AppendFile: Send {
    /// Writes `data` at the end of what was appended so far: over the zeros
    /// [`AppendFile::reserve`] left there, or past the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// `fdatasync`: data and the size needed to read it back are durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Extends the file with zeros to `len` bytes (if it is shorter) and
    /// syncs it. Appends into that region then overwrite blocks the file
    /// system has already allocated and recorded, so their `fdatasync` has
    /// no new size or extent to journal; the zeros after the last append
    /// are not data (`docs/format.md`, "Preallocation").
    fn reserve(&mut self, len: u64) -> io::Result<()>;
    /// The file's length: what was appended plus any zeros reserved after it.
    fn file_len(&self) -> u64;
}

/// A file open for positioned reads, shareable between threads.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `pos`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Directory and file operations. Paths are full paths.
pub trait Storage: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens an existing file to append to it.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>>;
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Marks a sealed file read-only.
    fn set_readonly(&self, path: &Path) -> io::Result<()>;
}

/// Creates `dir` (and its parents) and syncs its parent and grandparent, so
/// that the directory's entry, and its parent's, survive a power loss as much
/// as the files in it (a new replica's directory, a data directory made at
/// first start).
pub fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    storage.create_dir_all(dir)?;
    for up in dir.ancestors().skip(1).take(2) {
        let up = if up.as_os_str().is_empty() { Path::new(".") } else { up };
        storage.sync_dir(up)?;
    }
    Ok(())
}

/// Reads a whole file; for small files (headers, footers are read in place).
pub fn read_all(file: &dyn ReadAt) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

/// Writes by position (`pwrite`), not `O_APPEND`: an append may land in
/// zeros reserved ahead of it.
struct FsAppend {
    file: File,
    /// Where the next append goes.
    end: u64,
    /// The file's length (`end` plus any reserved zeros).
    len: u64,
}

impl FsAppend {
    fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, end: len, len })
    }
}

/// Zeros written at a time when reserving.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl AppendFile for FsAppend {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.end)?;
        self.end += data.len() as u64;
        self.len = self.len.max(self.end);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn reserve(&mut self, len: u64) -> io::Result<()> {
        // Real zeros, not `fallocate`: an unwritten extent would be
        // converted, and journalled, by the first append into it.
        while self.len < len {
            let n = (len - self.len).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.len)?;
            self.len += n as u64;
        }
        self.file.sync_data()
    }

    fn file_len(&self) -> u64 {
        self.len
    }
}

struct FsRead(File);

impl ReadAt for FsRead {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, pos)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let f = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(FsAppend::new(f)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let f = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(FsAppend::new(f)?))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(FsRead(File::open(path)?)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn set_readonly(&self, path: &Path) -> io::Result<()> {
        let mut perms = fs::metadata(path)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(path, perms)
    }
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// Bytes known durable; always a prefix of `data` since files only grow
    /// by appends and shrink by (synced) truncation.
    synced: usize,
    /// The bytes inside `synced` overwritten since the last sync, as a
    /// range: appends into reserved zeros. A crash may keep any prefix of
    /// them; the rest read as the zeros again.
    dirty: Option<(usize, usize)>,
    readonly: bool,
}

#[derive(Default)]
struct MemState {
    /// What the running process sees.
    names: BTreeMap<PathBuf, u64>,
    /// What survives a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories made by `create_dir_all`, and those whose entry in their
    /// parent was synced: a crash loses the others, with everything in them.
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Arc<Mutex<Inode>>>,
    next_inode: u64,
    /// Injected failures: the next this-many `sync_data` calls succeed, then one fails.
    fail_sync_after: Option<u64>,
    /// Mutating operations so far, and the count at which the process "dies":
    /// from then on every mutating operation fails, as if nothing ran.
    ops: u64,
    die_at: Option<u64>,
}

impl MemState {
    fn step(&mut self) -> io::Result<()> {
        self.ops += 1;
        match self.die_at {
            Some(n) if self.ops > n => Err(io::Error::other("simulated process death")),
            _ => Ok(()),
        }
    }
}

/// An in-memory file system with crash semantics, for tests.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemStorage")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

struct MemAppend {
    inode: Arc<Mutex<Inode>>,
    storage: MemStorage,
    /// Where the next append goes.
    end: usize,
}

impl MemAppend {
    fn new(inode: Arc<Mutex<Inode>>, storage: MemStorage) -> Self {
        let end = lock(&inode).data.len();
        Self { inode, storage, end }
    }
}

impl AppendFile for MemAppend {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        lock(&self.storage.state).step()?;
        let mut ino = lock(&self.inode);
        if ino.readonly {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only file"));
        }
        let end = self.end.min(ino.data.len());
        if end < ino.synced && !data.is_empty() {
            let to = (end + data.len()).min(ino.synced);
            ino.dirty = Some(ino.dirty.map_or((end, to), |(a, b)| (a.min(end), b.max(to))));
        }
        let over = (ino.data.len() - end).min(data.len());
        ino.data[end..end + over].copy_from_slice(&data[..over]);
        ino.data.extend_from_slice(&data[over..]);
        self.end = end + data.len();
        Ok(())
    }

    fn reserve(&mut self, len: u64) -> io::Result<()> {
        lock(&self.storage.state).step()?;
        {
            let mut ino = lock(&self.inode);
            let len = usize::try_from(len).map_err(io::Error::other)?;
            if ino.data.len() < len {
                ino.data.resize(len, 0);
            }
        }
        self.sync_data()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        {
            let mut st = lock(&self.storage.state);
            st.step()?;
            if let Some(n) = st.fail_sync_after.as_mut() {
                if *n == 0 {
                    st.fail_sync_after = None;
                    return Err(io::Error::other("injected fsync failure (EIO)"));
                }
                *n -= 1;
            }
        }
        let mut ino = lock(&self.inode);
        ino.synced = ino.data.len();
        ino.dirty = None;
        Ok(())
    }

    fn file_len(&self) -> u64 {
        lock(&self.inode).data.len() as u64
    }
}

struct MemRead(Arc<Mutex<Inode>>);

impl ReadAt for MemRead {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let ino = lock(&self.0);
        let start = usize::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= ino.data.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&ino.data[start..end]);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.0).data.len() as u64)
    }
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn inode(&self, path: &Path) -> io::Result<Arc<Mutex<Inode>>> {
        let st = lock(&self.state);
        let id = st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.inodes[id].clone())
    }

    /// Simulates power loss: every file keeps its synced bytes plus, chosen
    /// by `torn(unsynced_len)`, a prefix of what was written after them;
    /// directory entries revert to their last synced state. Appends into
    /// synced reserved zeros are kept as a prefix too, chosen by the same
    /// `torn`, and the rest of them reads as zeros again.
    pub fn crash(&self, mut torn: impl FnMut(usize) -> usize) {
        let mut st = lock(&self.state);
        let lost: Vec<PathBuf> = st
            .dirs
            .iter()
            .filter(|d| d.ancestors().any(|a| st.dirs.contains(a) && !st.durable_dirs.contains(a)))
            .cloned()
            .collect();
        let in_lost = |p: &Path| p.ancestors().skip(1).any(|a| lost.iter().any(|l| l == a));
        st.dirs.retain(|d| !lost.contains(d));
        st.durable_dirs.retain(|d| !lost.contains(d));
        st.names = st.durable_names.iter().filter(|(p, _)| !in_lost(p)).map(|(p, i)| (p.clone(), *i)).collect();
        st.durable_names = st.names.clone();
        let live: Vec<u64> = st.names.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
        for inode in st.inodes.values() {
            let mut ino = lock(inode);
            if let Some((from, to)) = ino.dirty.take() {
                let keep = from + torn(to - from).min(to - from);
                ino.data[keep..to].fill(0);
            }
            let unsynced = ino.data.len() - ino.synced;
            let keep = ino.synced + torn(unsynced).min(unsynced);
            ino.data.truncate(keep);
            ino.synced = keep;
        }
        st.fail_sync_after = None;
        st.die_at = None;
    }

    /// Simulates the process dying after `n` more mutating operations: every
    /// one after that fails. [`MemStorage::crash`] then models the power loss.
    pub fn die_after(&self, n: u64) {
        let mut st = lock(&self.state);
        st.die_at = Some(st.ops + n);
    }

    /// Whether a [`MemStorage::die_after`] point was reached.
    pub fn died(&self) -> bool {
        let st = lock(&self.state);
        st.die_at.is_some_and(|n| st.ops > n)
    }

    /// Clears injected faults.
    pub fn clear_faults(&self) {
        let mut st = lock(&self.state);
        st.fail_sync_after = None;
        st.die_at = None;
    }

    /// A deep copy: files and names, visible and durable, nothing shared.
    pub fn snapshot(&self) -> MemStorage {
        let st = lock(&self.state);
        let inodes = st
            .inodes
            .iter()
            .map(|(id, ino)| {
                let ino = lock(ino);
                (
                    *id,
                    Arc::new(Mutex::new(Inode {
                        data: ino.data.clone(),
                        synced: ino.synced,
                        dirty: ino.dirty,
                        readonly: ino.readonly,
                    })),
                )
            })
            .collect();
        let copy = MemState {
            names: st.names.clone(),
            durable_names: st.durable_names.clone(),
            dirs: st.dirs.clone(),
            durable_dirs: st.durable_dirs.clone(),
            inodes,
            next_inode: st.next_inode,
            ..Default::default()
        };
        MemStorage { state: Arc::new(Mutex::new(copy)) }
    }

    /// Makes the `sync_data` call after the next `n` fail.
    pub fn fail_sync_after(&self, n: u64) {
        lock(&self.state).fail_sync_after = Some(n);
    }

    /// Direct access to a file's bytes, for corruption tests.
    pub fn modify(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let inode = self.inode(path)?;
        let mut ino = lock(&inode);
        f(&mut ino.data);
        ino.synced = ino.synced.min(ino.data.len());
        ino.dirty = ino.dirty.filter(|&(_, to)| to <= ino.synced);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        let new: Vec<PathBuf> =
            dir.ancestors().filter(|a| a.parent().is_some() && !st.dirs.contains(*a)).map(Path::to_path_buf).collect();
        if !new.is_empty() {
            st.step()?;
            st.dirs.extend(new);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.state);
        let mut names: Vec<String> = st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut st = lock(&self.state);
        st.step()?;
        if st.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let id = st.next_inode;
        st.next_inode += 1;
        let inode = Arc::new(Mutex::new(Inode::default()));
        st.inodes.insert(id, inode.clone());
        st.names.insert(path.to_owned(), id);
        Ok(Box::new(MemAppend::new(inode, self.clone())))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(MemAppend::new(self.inode(path)?, self.clone())))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(MemRead(self.inode(path)?)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        lock(&self.state).step()?;
        let inode = self.inode(path)?;
        let mut ino = lock(&inode);
        let len = usize::try_from(len).map_err(io::Error::other)?;
        ino.data.truncate(len);
        ino.synced = ino.data.len();
        ino.dirty = None;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.step()?;
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.step()?;
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.step()?;
        let MemState { names, durable_names, dirs, durable_dirs, .. } = &mut *st;
        durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in names.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            durable_names.insert(p.clone(), *id);
        }
        durable_dirs.extend(dirs.iter().filter(|d| d.parent() == Some(dir)).cloned());
        Ok(())
    }

    fn set_readonly(&self, path: &Path) -> io::Result<()> {
        lock(&self.state).step()?;
        let inode = self.inode(path)?;
        lock(&inode).readonly = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_forgets_unsynced_writes_and_names() {
        let s = MemStorage::new();
        let dir = Path::new("/d");
        let mut f = s.create(&dir.join("a")).expect("create");
        f.append(b"hello").expect("append");
        f.sync_data().expect("sync");
        s.sync_dir(dir).expect("sync dir");
        f.append(b" world").expect("append");
        let mut g = s.create(&dir.join("b")).expect("create");
        g.sync_data().expect("sync");
        s.crash(|n| n / 2);
        assert_eq!(s.list(dir).expect("list"), vec!["a".to_string()]);
        let r = s.open_read(&dir.join("a")).expect("open");
        assert_eq!(read_all(&*r).expect("read"), b"hello wo");
    }

    /// Both implementations: appends go after the last append, over the
    /// reserved zeros, and the zeros after them stay.
    fn appends_overwrite_reserved_zeros(s: &dyn Storage, path: &Path) {
        let mut f = s.create(path).expect("create");
        f.append(b"head").expect("append");
        f.reserve(100).expect("reserve");
        f.append(b"block").expect("append");
        f.sync_data().expect("sync");
        assert_eq!(f.file_len(), 100);
        let r = s.open_read(path).expect("open");
        assert_eq!(r.len().expect("len"), 100);
        let mut want = b"headblock".to_vec();
        want.resize(100, 0);
        assert_eq!(read_all(&*r).expect("read"), want);
        f.reserve(50).expect("a shorter reservation leaves the file as it is");
        f.append(&[7; 120]).expect("an append past the reserved end extends the file");
        assert_eq!(r.len().expect("len"), 129);
        drop(f);
        s.truncate(path, 9).expect("truncate");
        let mut f = s.open_append(path).expect("reopen");
        f.append(b"!").expect("append");
        assert_eq!(read_all(&*r).expect("read"), b"headblock!");
    }

    #[test]
    fn appends_overwrite_reserved_zeros_in_memory_and_on_disk() {
        appends_overwrite_reserved_zeros(&MemStorage::new(), Path::new("/d/a"));
        let dir = tempfile::tempdir().expect("tempdir");
        appends_overwrite_reserved_zeros(&FsStorage, &dir.path().join("a"));
    }

    #[test]
    fn crash_keeps_a_prefix_of_unsynced_writes_into_reserved_zeros() {
        let s = MemStorage::new();
        let dir = Path::new("/d");
        let mut f = s.create(&dir.join("a")).expect("create");
        s.sync_dir(dir).expect("sync dir");
        f.append(b"ab").expect("append");
        f.reserve(16).expect("reserve");
        f.append(b"cdefgh").expect("append");
        s.crash(|n| n / 2);
        let r = s.open_read(&dir.join("a")).expect("open");
        assert_eq!(read_all(&*r).expect("read"), b"abcde\0\0\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn injected_sync_failure_fires_once() {
        let s = MemStorage::new();
        let mut f = s.create(Path::new("/d/a")).expect("create");
        s.fail_sync_after(1);
        assert!(f.sync_data().is_ok());
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
    }
}
