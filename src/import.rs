//! `verbatim import`: appends an NDJSON file of events v1 through the log
//! writer, offline. The whole file is validated first, so a bad line changes
//! nothing; then it is appended in batches, each durable before the next.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use verbatim_schema::{parse_ndjson, Limits, Offset, Record, RecordFlags, SiteId, UnixNanos};

use crate::log::sequencer::{write_group, AppendError, Appended, Sequencer};
use crate::log::Log;

/// Events per appended batch.
pub const BATCH: usize = 1_000;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub events: u64,
    /// Events that were not in the archive yet.
    pub new: u64,
    /// Events already stored with the same content (by `(source, seq)`).
    pub duplicates: u64,
    pub first: Offset,
    pub end: Offset,
}

/// Reads `path` line by line, handing each validated batch to `f`.
fn for_each_batch(
    path: &Path,
    limits: &Limits,
    mut f: impl FnMut(Vec<verbatim_schema::Event>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut line_no = 0u64;
    let mut events = 0;
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))? == 0 {
            break;
        }
        line_no += 1;
        let parsed = parse_ndjson(&line, 1).map_err(|e| {
            anyhow::anyhow!("{}:{line_no}: {}", path.display(), e.to_string().trim_start_matches("event 0: "))
        })?;
        for w in parsed {
            let event = limits.validate(w).map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", path.display()))?;
            batch.push(event);
            events += 1;
        }
        if batch.len() == BATCH {
            f(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(events)
}

/// Validates all of `path`, then appends it to `log`. `progress` is told the
/// number of events appended so far.
pub fn import_file(
    log: &mut Log,
    seq: &mut dyn Sequencer,
    path: &Path,
    limits: &Limits,
    site: &SiteId,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Imported> {
    let total = for_each_batch(path, limits, |_| Ok(()))?;
    let first = log.head();
    let mut done = 0;
    let mut duplicates = 0;
    for_each_batch(path, limits, |events| {
        let mut batch: Vec<Record> = events
            .into_iter()
            .map(|event| Record {
                received_at: UnixNanos(0),
                site: site.clone(),
                conversation_id: None,
                flags: RecordFlags::default(),
                event,
            })
            .collect();
        let n = batch.len() as u64;
        let result = std::sync::Arc::new(std::sync::Mutex::new(None));
        let slot = result.clone();
        write_group(
            log,
            seq,
            vec![(std::mem::take(&mut batch), Box::new(move |r| *slot.lock().expect("slot") = Some(r)))],
            &|| {},
        );
        let outcome: Result<Appended, AppendError> =
            result.lock().expect("slot").take().unwrap_or_else(|| Err(AppendError::Unavailable("no answer".into())));
        let appended =
            outcome.map_err(|e| anyhow::anyhow!("{}: events {}..{}: {e}", path.display(), done + 1, done + n))?;
        duplicates += appended.duplicates.len() as u64;
        done += n;
        progress(done);
        Ok(())
    })?;
    anyhow::ensure!(done == total, "{} changed while it was imported", path.display());
    Ok(Imported { events: total, new: total - duplicates, duplicates, first, end: log.head() })
}
