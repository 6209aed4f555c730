//! The local spool: every captured event is written here before it is sent,
//! so a front end survives the server being away and its own restarts.
//!
//! Layout of a spool directory:
//! - `seg-<first seq, 20 digits>.log`: events, one line each,
//!   `<crc32c of the JSON, 8 hex digits> <event as wire JSON>\n`;
//! - `state`: `{"acked_through", "reserved_through", "running"}`, replaced
//!   atomically (temp file, fsync, rename, directory fsync).
//!
//! Sequence numbers are reserved in blocks in `state` before use, so a seq is
//! never given twice, even after a crash that lost express-mode writes (a
//! server that already stored the lost event would otherwise see its key
//! reused with another payload). A segment is deleted once the server has
//! acknowledged every event in it and a later segment exists.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use verbatim_schema::WireEvent;

/// Express: written to the OS, not fsynced (fast; a crash of the machine may
/// lose the newest events). Recoverable: fsynced before an append returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolMode {
    Express,
    Recoverable,
}

impl std::str::FromStr for SpoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "express" => Ok(Self::Express),
            "recoverable" => Ok(Self::Recoverable),
            _ => Err(format!("spool mode `{s}`: expected express or recoverable")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub mode: SpoolMode,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Appends are refused (and an alarm raised) while the segments hold more.
    pub max_bytes: u64,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>, mode: SpoolMode) -> Self {
        Self { dir: dir.into(), mode, segment_bytes: 4 << 20, max_bytes: 1 << 30 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full (its limit is {limit} bytes): the server has not taken the events")]
    Full { held: u64, limit: u64 },
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the spool failed earlier and refuses writes until the front end restarts: {0}")]
    Failed(String),
}

/// What the spool knows at open about the previous run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The previous run did not close the spool.
    pub unclean: bool,
    /// Bytes cut from segment tails that were torn or unsynced.
    pub truncated_bytes: u64,
    /// Seqs that may have been given to events now lost: (first, last).
    /// Only an unclean stop in express mode can lose events.
    pub maybe_lost: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct State {
    acked_through: u64,
    reserved_through: u64,
    running: bool,
}

const RESERVE_BLOCK: u64 = 4096;

/// The writing side of a spool (one owner: the spool thread).
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    state: State,
    segments: Vec<Segment>,
    file: File,
    next_seq: u64,
    failed: Option<String>,
    /// Appended groups not yet acknowledged: (last seq, bytes), oldest first.
    unacked: std::collections::VecDeque<(u64, u64)>,
    unacked_bytes: u64,
    /// Acknowledgements not yet in `state`.
    acks_unsaved: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    first_seq: u64,
    bytes: u64,
}

impl Spool {
    /// Opens (creating if needed) a spool, cuts torn tails and reports what the
    /// previous run left behind.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(&config.dir)?;
        let mut state = read_state(&config.dir)?;
        let mut recovery = Recovery { unclean: state.running, ..Recovery::default() };
        let mut segments = Vec::new();
        let mut last_seq = state.acked_through;
        let mut unacked_bytes = 0;
        for first_seq in list_segments(&config.dir)? {
            let path = segment_path(&config.dir, first_seq);
            let (valid, last, pending) = scan_valid(&path, state.acked_through)?;
            unacked_bytes += pending;
            let len = fs::metadata(&path)?.len();
            if valid < len {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid)?;
                f.sync_all()?;
                recovery.truncated_bytes += len - valid;
            }
            last_seq = last_seq.max(last.unwrap_or(0));
            segments.push(Segment { first_seq, bytes: valid });
        }
        if recovery.unclean && config.mode == SpoolMode::Express && state.reserved_through > last_seq {
            recovery.maybe_lost = Some((last_seq + 1, state.reserved_through));
        }
        let next_seq = state.reserved_through.max(last_seq) + 1;
        state.reserved_through = next_seq - 1;
        state.running = true;
        write_state(&config.dir, &state)?;
        if segments.last().is_none_or(|s| s.bytes >= config.segment_bytes) {
            File::create(segment_path(&config.dir, next_seq))?.sync_all()?;
            sync_dir(&config.dir)?;
            segments.push(Segment { first_seq: next_seq, bytes: 0 });
        }
        let active = segments.last().map_or(next_seq, |s| s.first_seq);
        let file = OpenOptions::new().append(true).open(segment_path(&config.dir, active))?;
        let unacked = std::iter::once((next_seq - 1, unacked_bytes)).collect();
        let spool = Spool {
            config,
            state,
            segments,
            file,
            next_seq,
            failed: None,
            unacked,
            unacked_bytes,
            acks_unsaved: false,
        };
        Ok((spool, recovery))
    }

    pub fn mode(&self) -> SpoolMode {
        self.config.mode
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The size limit past which appends are refused.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// Bytes of events the server has not acknowledged yet.
    pub fn held_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// The seq the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn acked_through(&self) -> u64 {
        self.state.acked_through
    }

    /// Appends events (their `seq` is assigned here) and, in recoverable mode,
    /// fsyncs them. All or nothing: on an error no event is kept, and after a
    /// failed fsync the spool refuses further writes (a retried fsync proves
    /// nothing). `force` skips the size limit, for the few small records that
    /// say what was lost (gap events).
    pub fn append(&mut self, events: &mut [WireEvent], force: bool) -> Result<(), SpoolError> {
        if let Some(why) = &self.failed {
            return Err(SpoolError::Failed(why.clone()));
        }
        let held = self.held_bytes();
        if !force && held >= self.config.max_bytes {
            return Err(SpoolError::Full { held, limit: self.config.max_bytes });
        }
        let last = self.next_seq + events.len() as u64 - 1;
        if last > self.state.reserved_through {
            let mut state = self.state;
            state.reserved_through = last + RESERVE_BLOCK;
            write_state(&self.config.dir, &state)?;
            self.state = state;
            self.acks_unsaved = false;
        }
        let mut buf = Vec::with_capacity(events.len() * 256);
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = self.next_seq + i as u64;
            encode_line(e, &mut buf);
        }
        let before = self.segments.last().map_or(0, |s| s.bytes);
        let written = self.file.write_all(&buf).and_then(|()| match self.config.mode {
            SpoolMode::Recoverable => self.file.sync_data(),
            SpoolMode::Express => Ok(()),
        });
        if let Err(e) = written {
            // Cut what may be half there, so no reader ships it; if even that
            // fails, the spool stops taking writes.
            let cut = self.file.set_len(before).and_then(|()| self.file.sync_all());
            self.failed = Some(match cut {
                Ok(()) => format!("{e} (the spool file was cut back to its last good record)"),
                Err(c) => format!("{e}; cutting the spool file back also failed: {c}"),
            });
            return Err(SpoolError::Io(e));
        }
        self.next_seq = last + 1;
        self.unacked.push_back((last, buf.len() as u64));
        self.unacked_bytes += buf.len() as u64;
        if let Some(s) = self.segments.last_mut() {
            s.bytes += buf.len() as u64;
            if s.bytes >= self.config.segment_bytes {
                self.roll()?;
            }
        }
        Ok(())
    }

    /// fsyncs what express mode wrote (on a timer and at shutdown).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.file.sync_data()?;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.file.sync_all()?;
        let path = segment_path(&self.config.dir, self.next_seq);
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        sync_dir(&self.config.dir)?;
        self.file = file;
        self.segments.push(Segment { first_seq: self.next_seq, bytes: 0 });
        Ok(())
    }

    /// Records that the server acknowledged every event through `seq`, then
    /// deletes the segments it empties (never the one being written).
    ///
    /// The acknowledgement reaches `state` lazily ([`Spool::save_acks`], at
    /// the next reservation, at close): it only spares resending. After a
    /// crash the events since the last saved ack are sent again, and the
    /// server, deduplicating by `(source, seq)`, stores them once. Saving it
    /// on every ack would put three fsyncs beside every append.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.state.acked_through {
            return Ok(());
        }
        self.state.acked_through = seq;
        self.acks_unsaved = true;
        while let Some(&(last, bytes)) = self.unacked.front() {
            if last > seq {
                break;
            }
            self.unacked.pop_front();
            self.unacked_bytes -= bytes;
        }
        while self.segments.len() > 1 && self.segments[1].first_seq <= seq + 1 {
            let s = self.segments.remove(0);
            fs::remove_file(segment_path(&self.config.dir, s.first_seq))?;
        }
        Ok(())
    }

    /// Saves acknowledgements recorded since the last save.
    pub fn save_acks(&mut self) -> Result<(), SpoolError> {
        if self.acks_unsaved {
            write_state(&self.config.dir, &self.state)?;
            self.acks_unsaved = false;
        }
        Ok(())
    }

    /// Flushes and marks a clean stop.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.file.sync_all()?;
        self.state.running = false;
        write_state(&self.config.dir, &self.state)?;
        Ok(())
    }
}

/// Reads spooled events in seq order, for the sender. It reads files, not the
/// writer's memory, so it works the same after a restart.
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    /// The next seq to return.
    next: u64,
    /// Open segment and byte position in it.
    at: Option<(u64, u64)>,
}

impl SpoolReader {
    /// A reader returning events after `acked_through`.
    pub fn new(dir: impl Into<PathBuf>, acked_through: u64) -> Self {
        Self { dir: dir.into(), next: acked_through + 1, at: None }
    }

    /// Moves back to just after `seq` (after a batch was not taken).
    pub fn rewind(&mut self, acked_through: u64) {
        self.next = acked_through + 1;
        self.at = None;
    }

    /// Up to `max_events` events (and about `max_bytes` of JSON) with seq ≤
    /// `through`, each as (seq, wire JSON). Never returns a torn line.
    pub fn read(&mut self, through: u64, max_events: usize, max_bytes: usize) -> std::io::Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while self.next <= through && out.len() < max_events && bytes < max_bytes {
            let (first, pos) = match self.at {
                Some(at) => at,
                None => match self.segment_for(self.next)? {
                    Some(first) => (first, 0),
                    None => break,
                },
            };
            let mut f = match File::open(segment_path(&self.dir, first)) {
                Ok(f) => f,
                // Acknowledged and deleted under us: find the next one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.at.is_some() => {
                    self.at = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(pos))?;
            let mut r = BufReader::new(f);
            let mut pos = pos;
            let mut line = Vec::new();
            let mut advanced = false;
            while self.next <= through && out.len() < max_events && bytes < max_bytes {
                line.clear();
                let n = r.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let Some((seq, json)) = decode_line(&line[..n - 1]) else { break };
                pos += n as u64;
                advanced = true;
                if seq < self.next {
                    continue;
                }
                self.next = seq + 1;
                bytes += json.len();
                out.push((seq, json));
            }
            self.at = Some((first, pos));
            if !advanced {
                // The segment is done (or not yet written further): move on
                // only if a later segment exists.
                match self.segment_for(self.next)? {
                    Some(f) if f != first => self.at = Some((f, 0)),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// The segment that holds `seq`: the last one starting at or before it.
    fn segment_for(&self, seq: u64) -> std::io::Result<Option<u64>> {
        let firsts = list_segments(&self.dir)?;
        Ok(firsts.iter().rev().find(|&&f| f <= seq).or(firsts.first()).copied())
    }
}

fn encode_line(e: &WireEvent, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(e).expect("a wire event always serializes");
    let crc = crc32c::crc32c(&json);
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// (seq, JSON) of one line without its newline, if it is whole and intact.
fn decode_line(line: &[u8]) -> Option<(u64, String)> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if line.get(8) != Some(&b' ') || crc32c::crc32c(json) != crc {
        return None;
    }
    let json = String::from_utf8(json.to_vec()).ok()?;
    let seq = serde_json::from_str::<SeqOnly>(&json).ok()?.seq;
    Some((seq, json))
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Length of the intact prefix of a segment, the last seq in it, and the
/// bytes of its events after `acked`.
fn scan_valid(path: &Path, acked: u64) -> std::io::Result<(u64, Option<u64>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let (mut valid, mut last, mut pending) = (0u64, None, 0u64);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        match decode_line(&line[..line.len() - 1]) {
            Some((seq, _)) => {
                last = Some(seq);
                if seq > acked {
                    pending += line.len() as u64;
                }
            }
            None => break,
        }
        valid += line.len() as u64;
    }
    Ok((valid, last, pending))
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("seg-{first_seq:020}.log"))
}

fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

fn read_state(dir: &Path) -> Result<State, SpoolError> {
    match fs::read(dir.join("state")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            SpoolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("spool state: {e}")))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e.into()),
    }
}

fn write_state(dir: &Path, state: &State) -> std::io::Result<()> {
    let tmp = dir.join("state.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state).expect("state serializes"))?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("state"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> WireEvent {
        WireEvent {
            source: "proxy-1".into(),
            seq: 0,
            network: "irc".into(),
            kind: "message".into(),
            ts: "2026-01-01T00:00:00Z".into(),
            from: "alice".into(),
            to: vec!["bob".into()],
            channel: None,
            body: Some(body.into()),
            direction: Some("outbound".into()),
            attrs: Default::default(),
        }
    }

    fn config(dir: &Path, mode: SpoolMode) -> SpoolConfig {
        SpoolConfig { segment_bytes: 300, ..SpoolConfig::new(dir, mode) }
    }

    fn bodies(read: &[(u64, String)]) -> Vec<(u64, String)> {
        read.iter()
            .map(|(seq, json)| {
                let e: WireEvent = serde_json::from_str(json).expect("wire json");
                assert_eq!(e.seq, *seq);
                (*seq, e.body.unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn events_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, rec) = Spool::open(config(dir.path(), SpoolMode::Recoverable)).expect("open");
        assert_eq!(rec, Recovery::default());
        for i in 0..10 {
            spool.append(&mut [event(&format!("m{i} \u{202e}\0é"))], false).expect("append");
        }
        assert!(list_segments(dir.path()).expect("list").len() > 2, "small segments roll");
        let mut reader = SpoolReader::new(dir.path(), spool.acked_through());
        let first = reader.read(spool.next_seq() - 1, 4, 1 << 20).expect("read");
        assert_eq!(bodies(&first).iter().map(|b| b.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(bodies(&first)[0].1, "m0 \u{202e}\0é");
        spool.ack(4).expect("ack");
        spool.close().expect("close");

        let (mut spool, rec) = Spool::open(config(dir.path(), SpoolMode::Recoverable)).expect("reopen");
        assert!(!rec.unclean);
        assert_eq!(spool.acked_through(), 4);
        let mut reader = SpoolReader::new(dir.path(), spool.acked_through());
        let rest = reader.read(u64::MAX, 100, 1 << 20).expect("read");
        assert_eq!(rest.iter().map(|r| r.0).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());
        spool.append(&mut [event("after")], false).expect("append");
        assert!(spool.next_seq() > 11, "a restart never reuses a reserved seq");
        let more = reader.read(u64::MAX, 100, 1 << 20).expect("read");
        assert_eq!(bodies(&more).iter().map(|b| b.1.as_str()).collect::<Vec<_>>(), vec!["after"]);
        let last = more[0].0;
        spool.ack(last).expect("ack");
        assert_eq!(list_segments(dir.path()).expect("list").len(), 1, "acknowledged segments are deleted");
    }

    #[test]
    fn a_torn_tail_is_cut_and_an_unclean_express_stop_names_the_seqs_it_may_have_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SpoolConfig { segment_bytes: 1 << 20, ..SpoolConfig::new(dir.path(), SpoolMode::Express) };
        let (mut spool, _) = Spool::open(cfg.clone()).expect("open");
        spool.append(&mut [event("a"), event("b")], false).expect("append");
        drop(spool); // no close: as after kill -9
        let seg = segment_path(dir.path(), list_segments(dir.path()).expect("list")[0]);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
        let torn = b"0badc0de {\"seq\":3,\"torn";
        f.write_all(torn).expect("tear");
        drop(f);
        let (spool, rec) = Spool::open(cfg).expect("reopen");
        assert!(rec.unclean);
        assert_eq!(rec.truncated_bytes, torn.len() as u64);
        let (first, last) = rec.maybe_lost.expect("express may have lost events");
        assert_eq!(first, 3);
        assert!(last >= first);
        assert!(spool.next_seq() > last);
        let read = SpoolReader::new(dir.path(), 0).read(u64::MAX, 100, 1 << 20).expect("read");
        assert_eq!(bodies(&read).iter().map(|b| b.1.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn acknowledgements_are_saved_lazily_and_a_crash_only_resends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SpoolConfig { segment_bytes: 1 << 20, ..SpoolConfig::new(dir.path(), SpoolMode::Recoverable) };
        let (mut spool, _) = Spool::open(cfg.clone()).expect("open");
        spool.append(&mut [event("a"), event("b"), event("c")], false).expect("append");
        spool.ack(1).expect("ack");
        spool.save_acks().expect("save");
        spool.ack(3).expect("ack, not saved");
        assert_eq!(spool.held_bytes(), 0);
        drop(spool); // crash
        let (spool, _) = Spool::open(cfg).expect("reopen");
        assert_eq!(spool.acked_through(), 1, "the saved acknowledgement");
        let again = SpoolReader::new(dir.path(), spool.acked_through()).read(u64::MAX, 10, 1 << 20).expect("read");
        assert_eq!(
            bodies(&again).iter().map(|b| b.1.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"],
            "sent again; the server deduplicates"
        );
    }

    #[test]
    fn a_full_spool_refuses_appends_but_takes_forced_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SpoolConfig { max_bytes: 200, ..config(dir.path(), SpoolMode::Recoverable) };
        let (mut spool, _) = Spool::open(cfg).expect("open");
        spool.append(&mut [event("x".repeat(150).as_str()), event("y")], false).expect("room");
        assert!(matches!(spool.append(&mut [event("z")], false), Err(SpoolError::Full { .. })));
        spool.append(&mut [event("gap")], true).expect("forced");
        let read = SpoolReader::new(dir.path(), 0).read(u64::MAX, 100, 1 << 20).expect("read");
        assert_eq!(read.len(), 3, "the refused append left nothing behind");
        spool.ack(3).expect("ack");
        spool.append(&mut [event("z")], false).expect("room again once acknowledged");
    }

    #[test]
    fn a_reader_never_returns_a_half_written_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = Spool::open(config(dir.path(), SpoolMode::Express)).expect("open");
        spool.append(&mut [event("whole")], false).expect("append");
        let seg = segment_path(dir.path(), list_segments(dir.path()).expect("list")[0]);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
        let mut line = Vec::new();
        encode_line(&WireEvent { seq: 2, ..event("half") }, &mut line);
        f.write_all(&line[..line.len() / 2]).expect("half");
        let mut reader = SpoolReader::new(dir.path(), 0);
        assert_eq!(reader.read(u64::MAX, 100, 1 << 20).expect("read").len(), 1);
        f.write_all(&line[line.len() / 2..]).expect("rest");
        let rest = reader.read(u64::MAX, 100, 1 << 20).expect("read");
        assert_eq!(bodies(&rest), vec![(2, "half".to_owned())]);
    }
}
