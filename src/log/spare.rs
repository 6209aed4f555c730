//! The next segment's file, made ahead of time off the writer thread (ADR
//! 0013, amended). Once the active segment holds half a segment, or four
//! reservation chunks if less, the writer asks for a spare; a [`SpareMaker`]
//! (the server runs one on its own thread) creates `next-segment.spare` in
//! the log directory and fills it with `segment_max_bytes` of zeros, written
//! and fdatasynced a reservation chunk at a time. At the roll the writer
//! writes the header over its first bytes, fdatasyncs, renames it to the new
//! `.seg.partial` and syncs the directory: the new segment needs no
//! reservation on the writer thread. A segment the writer had to reserve
//! itself (the first after a start, or one rolled when no spare was ready)
//! rolls into the spare as soon as it is ready. Without a maker (HQ's
//! replicas, `import`) the writer creates each segment and reserves as before.
//!
//! A spare is never data. A name that is not a segment's is ignored by every
//! reader of the directory; `Log::open` and the maker remove a leftover one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{debug, warn};

use super::io::{AppendFile, Storage};
use super::{io_err, LogConfig, LogError};

/// After each chunk of zeros the maker pauses this many times as long as
/// the chunk took (at most [`MAX_PAUSE`]): it uses a tenth of the disk's
/// time. A 64 MiB spare in 1 MiB chunks then takes about 1.5 s on the
/// project's machine, while the segment it follows has 60 MiB still to fill.
const PAUSE_FACTOR: u32 = 9;
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// The spare's file name in the log directory.
pub const SPARE_NAME: &str = "next-segment.spare";

enum State {
    /// Nobody wants a spare yet.
    Idle,
    /// The writer asked for one.
    Wanted,
    /// The maker is making it.
    Making,
    /// Made, zeroed and synced, waiting for a roll.
    Ready(Box<dyn AppendFile>),
    /// The writer took it and is installing it as the next segment.
    Installing,
}

/// Where the writer and the maker meet.
pub(super) struct Slot {
    state: Mutex<State>,
    wake: Condvar,
}

impl Default for Slot {
    fn default() -> Self {
        Self { state: Mutex::new(State::Idle), wake: Condvar::new() }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    /// Asks for a spare unless one is wanted, being made, ready or in use.
    pub(super) fn want(&self) {
        let mut s = lock(&self.state);
        if matches!(*s, State::Idle) {
            *s = State::Wanted;
            self.wake.notify_all();
        }
    }

    /// The ready spare, if there is one; the slot stays busy until
    /// [`Slot::installed`], so the maker does not reuse the name meanwhile.
    pub(super) fn take(&self) -> Option<Box<dyn AppendFile>> {
        let mut s = lock(&self.state);
        match std::mem::replace(&mut *s, State::Installing) {
            State::Ready(file) => Some(file),
            other => {
                *s = other;
                None
            }
        }
    }

    /// The taken spare was renamed into place, or its install failed and
    /// whatever is left at the spare's name is the maker's to remove.
    pub(super) fn installed(&self) {
        let mut s = lock(&self.state);
        if matches!(*s, State::Installing) {
            *s = State::Idle;
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(*lock(&self.state), State::Ready(_))
    }

    /// Drops a ready spare (the log is closing); true if there was one.
    pub(super) fn discard(&self) -> bool {
        let mut s = lock(&self.state);
        if matches!(*s, State::Ready(_)) {
            *s = State::Idle;
            return true;
        }
        false
    }
}

/// Makes the spare a log asks for; usable from another thread.
pub struct SpareMaker {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    dir: PathBuf,
    config: LogConfig,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for SpareMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareMaker").field("path", &self.path).finish()
    }
}

impl SpareMaker {
    pub(super) fn new(storage: Arc<dyn Storage>, dir: &Path, config: LogConfig, slot: Arc<Slot>) -> Self {
        Self { storage, path: dir.join(SPARE_NAME), dir: dir.to_owned(), config, slot }
    }

    /// Makes the spare if the writer has asked for one; returns whether it
    /// did. On error the request stands, for a later call to retry.
    pub fn make_wanted(&self) -> Result<bool, LogError> {
        {
            let mut s = lock(&self.slot.state);
            if !matches!(*s, State::Wanted) {
                return Ok(false);
            }
            *s = State::Making;
        }
        let made = self.make();
        let mut s = lock(&self.slot.state);
        match made {
            Ok(file) => {
                *s = State::Ready(file);
                Ok(true)
            }
            Err(e) => {
                *s = State::Wanted;
                Err(e)
            }
        }
    }

    fn make(&self) -> Result<Box<dyn AppendFile>, LogError> {
        let started = std::time::Instant::now();
        remove_leftover(&*self.storage, &self.dir)?;
        let mut file = self.storage.create(&self.path).map_err(io_err("create", &self.path))?;
        let len = self.config.segment_max_bytes;
        let chunk = self.config.preallocate_bytes.clamp(1, len.max(1));
        let mut reserved = 0;
        // A chunk at a time, each synced, then a pause: the writer's
        // fdatasyncs share the disk with these writes, and should meet one
        // now and then rather than a run of them.
        while reserved < len {
            reserved = (reserved + chunk).min(len);
            let step = std::time::Instant::now();
            file.reserve(reserved).map_err(io_err("reserve zeros in", &self.path))?;
            std::thread::sleep((step.elapsed() * PAUSE_FACTOR).min(MAX_PAUSE));
        }
        debug!(bytes = len, ms = started.elapsed().as_secs_f64() * 1e3, "made the next segment's file");
        Ok(file)
    }

    /// Makes each spare the writer asks for until `stop` says so. A failure
    /// is logged and retried a second later; meanwhile rolls create their
    /// segment on the writer thread.
    pub fn run(&self, stop: &dyn Fn() -> bool) {
        loop {
            {
                let mut s = lock(&self.slot.state);
                while !matches!(*s, State::Wanted) && !stop() {
                    s = self.slot.wake.wait_timeout(s, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
            if stop() {
                return;
            }
            if let Err(e) = self.make_wanted() {
                warn!("could not make the next segment's file ahead (rolls make it themselves meanwhile): {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Wakes [`SpareMaker::run`] to look at its `stop` again.
    pub fn wake(&self) {
        self.slot.wake.notify_all();
    }
}

/// Removes a spare left in `dir` by a crash or a failed attempt.
pub(super) fn remove_leftover(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    if storage.list(dir).map_err(io_err("list", dir))?.iter().any(|n| n == SPARE_NAME) {
        let path = dir.join(SPARE_NAME);
        storage.remove(&path).map_err(io_err("remove", &path))?;
    }
    Ok(())
}
