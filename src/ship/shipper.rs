//! The regional side of log shipping: a thread that pushes this site's
//! durable log blocks, as stored, to HQ, in order.
//!
//! HQ is the authority on where to resume: after a start, a failure or a
//! refusal the shipper asks HQ for its high-water mark and chain link, checks
//! that link against its own log at that offset (a mismatch is a fork: it
//! stops shipping and alarms), and ships from there. Its cursor, persisted to
//! `<data>/shipping.json` only after HQ acknowledged a shipment (HQ fsyncs
//! first), tells status and retention what HQ already holds. Failures back off
//! exponentially up to `replication.backoff_max_ms`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};
use verbatim_schema::{Offset, UnixNanos};

use super::{HighWater, ReplicationConfig};
use crate::log::LogReader;
use crate::paths::write_atomic;

/// Where the shipper is going and how it gets there.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    pub site: String,
    pub hq_url: String,
    pub token: String,
    pub replication: ReplicationConfig,
    /// zstd level for the rare block framed at a resume point inside a block.
    pub level: i32,
    /// `<data>/shipping.json`.
    pub cursor_file: PathBuf,
    /// PEM CA certificates HQ's HTTPS certificate must chain to.
    pub ca: Option<PathBuf>,
}

/// The cursor as persisted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Cursor {
    site: String,
    hq_url: String,
    /// Offset after the last record HQ acknowledged.
    cursor: u64,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    cursor: u64,
    synced: bool,
    last_error: Option<String>,
    last_ack: Option<UnixNanos>,
    shipments: u64,
    shipped_events: u64,
    shipped_bytes: u64,
    fork: Option<String>,
    alarmed: bool,
}

/// The shipper thread and its progress.
pub struct Shipper {
    config: ShipperConfig,
    reader: LogReader,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The CA certificates of `config.ca`, read once at start.
    ca: Option<Vec<ureq::tls::Certificate<'static>>>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("hq_url", &self.config.hq_url).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shipper's own figures, computed from the log and its progress.
#[derive(Clone, Debug, Serialize)]
pub struct ShippingStatus {
    pub hq_url: String,
    pub head: u64,
    pub cursor: u64,
    pub lag_events: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub connected: bool,
    pub shipments: u64,
    pub shipped_events: u64,
    pub shipped_bytes: u64,
    pub last_ack_at: Option<i64>,
    pub last_error: Option<String>,
    pub fork: Option<String>,
    /// Why the backlog alarm is on (empty: off).
    pub alarms: Vec<String>,
}

impl Shipper {
    /// Starts shipping `reader`'s log to HQ.
    pub fn start(reader: LogReader, config: ShipperConfig) -> anyhow::Result<Arc<Self>> {
        let saved = match std::fs::read(&config.cursor_file) {
            Ok(b) => serde_json::from_slice::<Cursor>(&b)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", config.cursor_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Cursor::default(),
            Err(e) => anyhow::bail!("reading {}: {e}", config.cursor_file.display()),
        };
        let cursor = if saved.hq_url == config.hq_url && saved.site == config.site { saved.cursor } else { 0 };
        let ca = config.ca.as_deref().map(crate::tls::ca_certs).transpose()?;
        let shipper = Arc::new(Self {
            ca,
            config,
            reader,
            progress: Arc::new(Mutex::new(Progress { cursor, ..Progress::default() })),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        });
        let s = shipper.clone();
        let thread = std::thread::Builder::new().name("shipper".into()).spawn(move || s.run())?;
        *lock(&shipper.thread) = Some(thread);
        info!(hq = %shipper.config.hq_url, cursor, "log shipping to HQ started");
        Ok(shipper)
    }

    /// Stops the thread after the shipment in flight.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// The offset after the last record HQ acknowledged (as persisted).
    pub fn cursor(&self) -> Offset {
        Offset(lock(&self.progress).cursor)
    }

    pub fn status(&self) -> ShippingStatus {
        let p = lock(&self.progress).clone();
        let head = self.reader.head().0;
        let lag_events = head.saturating_sub(p.cursor);
        let lag_bytes = self.reader.stored_bytes_from(Offset(p.cursor));
        let lag_seconds = if lag_events == 0 {
            0.0
        } else {
            self.reader
                .get(Offset(p.cursor))
                .map(|r| (UnixNanos::now().0 - r.received_at.0).max(0) as f64 / 1e9)
                .unwrap_or(0.0)
        };
        let r = &self.config.replication;
        let mut alarms = Vec::new();
        if lag_events > r.alarm_backlog_events {
            alarms.push(format!("{lag_events} events not at HQ (alarm above {})", r.alarm_backlog_events));
        }
        if lag_seconds > r.alarm_backlog_seconds as f64 {
            alarms.push(format!(
                "the oldest event not at HQ is {lag_seconds:.0} s old (alarm above {})",
                r.alarm_backlog_seconds
            ));
        }
        if let Some(f) = &p.fork {
            alarms.push(f.clone());
        }
        ShippingStatus {
            hq_url: self.config.hq_url.clone(),
            head,
            cursor: p.cursor,
            lag_events,
            lag_bytes,
            lag_seconds,
            connected: p.synced,
            shipments: p.shipments,
            shipped_events: p.shipped_events,
            shipped_bytes: p.shipped_bytes,
            last_ack_at: p.last_ack.map(|t| t.0),
            last_error: p.last_error,
            fork: p.fork,
            alarms,
        }
    }

    /// Sleeps up to `d`, waking early when stopped. Returns false once stopped.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    fn run(&self) {
        let r = &self.config.replication;
        let agent = crate::tls::agent(Duration::from_secs(r.timeout_secs), self.ca.clone());
        let base = self.config.hq_url.trim_end_matches('/');
        let state_url = format!("{base}/v1/replication/{}", self.config.site);
        let blocks_url = format!("{state_url}/blocks");
        let auth = format!("Bearer {}", self.config.token);
        let mut backoff = Duration::from_millis(100);
        let max_backoff = Duration::from_millis(r.backoff_max_ms);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let step = if lock(&self.progress).synced {
                self.ship(&agent, &blocks_url, &auth)
            } else {
                self.sync(&agent, &state_url, &auth)
            };
            match step {
                Ok(true) => backoff = Duration::from_millis(100),
                Ok(false) => {
                    if !self.pause(Duration::from_millis(r.poll_ms)) {
                        return;
                    }
                }
                Err(e) => {
                    {
                        let mut p = lock(&self.progress);
                        if p.last_error.as_deref() != Some(e.as_str()) {
                            warn!(error = %e, "log shipping to HQ failed; retrying with backoff");
                        }
                        p.last_error = Some(e);
                        p.synced = false;
                    }
                    if !self.pause(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
            self.check_alarm();
        }
    }

    fn check_alarm(&self) {
        let alarms = self.status().alarms;
        let mut p = lock(&self.progress);
        if !alarms.is_empty() && !p.alarmed {
            warn!(alarms = ?alarms, "log shipping alarm");
        } else if alarms.is_empty() && p.alarmed {
            info!("log shipping alarm cleared");
        }
        p.alarmed = !alarms.is_empty();
    }

    /// Asks HQ where it stands and checks that against this log.
    fn sync(&self, agent: &ureq::Agent, url: &str, auth: &str) -> Result<bool, String> {
        let (status, body) = request(agent.get(url).header("Authorization", auth).call())?;
        if status != 200 {
            return Err(format!("HQ answered {status} to {url}: {}", error_text(&body)));
        }
        let hw: HighWater = serde_json::from_value(body).map_err(|e| format!("HQ's answer to {url}: {e}"))?;
        match resume_point(&self.reader, &hw) {
            Ok(cursor) => self.persist(cursor)?,
            Err(Resume::Fork(why)) => {
                lock(&self.progress).fork = Some(why.clone());
                return Err(why);
            }
            Err(Resume::Failed(why)) => return Err(why),
        }
        let mut p = lock(&self.progress);
        p.fork = None;
        p.synced = true;
        p.last_error = None;
        Ok(true)
    }

    /// Ships the next blocks. Ok(false): nothing to ship.
    fn ship(&self, agent: &ureq::Agent, url: &str, auth: &str) -> Result<bool, String> {
        let cursor = lock(&self.progress).cursor;
        let head = self.reader.head().0;
        let Some((body, end)) = shipment(&self.reader, cursor, self.config.replication.batch_bytes, self.config.level)?
        else {
            return Ok(false);
        };
        let resp = agent
            .post(url)
            .header("Authorization", auth)
            .header("Content-Type", "application/octet-stream")
            .header("X-Verbatim-Site-Head", head.to_string())
            .header("X-Verbatim-Site-Lag-Bytes", self.reader.stored_bytes_from(Offset(cursor)).to_string())
            .send(&body[..]);
        let (status, answer) = request(resp)?;
        if status != 200 {
            return Err(format!("HQ answered {status} to a shipment of {cursor}..{end}: {}", error_text(&answer)));
        }
        let hw: HighWater = serde_json::from_value(answer).map_err(|e| format!("HQ's answer to a shipment: {e}"))?;
        if hw.high_water != end {
            return Err(format!("HQ acknowledged up to {} after a shipment up to {end}", hw.high_water));
        }
        self.persist(end)?;
        let mut p = lock(&self.progress);
        p.shipments += 1;
        p.shipped_events += end - cursor;
        p.shipped_bytes += body.len() as u64;
        p.last_ack = Some(UnixNanos::now());
        p.last_error = None;
        Ok(true)
    }

    fn persist(&self, cursor: u64) -> Result<(), String> {
        let c = Cursor { site: self.config.site.clone(), hq_url: self.config.hq_url.clone(), cursor };
        let bytes = serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?;
        write_atomic(&self.config.cursor_file, &bytes, 0o600)
            .map_err(|e| format!("writing {}: {e}", self.config.cursor_file.display()))?;
        lock(&self.progress).cursor = cursor;
        Ok(())
    }
}

/// Why shipping cannot resume where HQ stands.
#[derive(Debug)]
pub(crate) enum Resume {
    /// HQ holds a history this log does not have.
    Fork(String),
    /// This log could not be read.
    Failed(String),
}

/// Where shipping resumes, given where HQ stands: HQ's high water, once this
/// log holds that many records and its chain there is HQ's.
pub(crate) fn resume_point(reader: &LogReader, hw: &HighWater) -> Result<u64, Resume> {
    let head = reader.head().0;
    if hw.high_water > head {
        return Err(Resume::Fork(format!(
            "fork: HQ holds {} records of site {}, this log only {head} (a site restored from an older copy?)",
            hw.high_water, hw.site
        )));
    }
    let mine = reader.chain_at(Offset(hw.high_water)).map_err(|e| Resume::Failed(e.to_string()))?.to_hex();
    if mine != hw.chain {
        return Err(Resume::Fork(format!(
            "fork: HQ's chain at offset {} is {}, this log's is {mine}",
            hw.high_water, hw.chain
        )));
    }
    Ok(hw.high_water)
}

/// The next shipment from `cursor`: the body (blocks back to back, about
/// `batch_bytes`, one block at least) and the offset after its last record;
/// None when there is nothing durable past `cursor`.
pub(crate) fn shipment(
    reader: &LogReader,
    cursor: u64,
    batch_bytes: usize,
    level: i32,
) -> Result<Option<(Vec<u8>, u64)>, String> {
    if cursor >= reader.head().0 {
        return Ok(None);
    }
    let blocks = reader
        .raw_blocks(Offset(cursor), batch_bytes, level)
        .map_err(|e| format!("reading the log at {cursor}: {e}"))?;
    let end = blocks.last().map_or(cursor, |b| b.header.end_offset().0);
    let mut body = Vec::with_capacity(blocks.iter().map(|b| b.bytes.len()).sum());
    for b in &blocks {
        body.extend_from_slice(&b.bytes);
    }
    Ok(Some((body, end)))
}

/// Status and JSON body of an answer (a body that is not JSON becomes a string).
fn request(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value), String> {
    let mut resp = resp.map_err(|e| format!("reaching HQ: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| format!("reading HQ's answer: {e}"))?;
    Ok((status, serde_json::from_str(&text).unwrap_or_else(|_| json!(text))))
}

fn error_text(body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => e.to_owned(),
        None => body.to_string(),
    }
}
