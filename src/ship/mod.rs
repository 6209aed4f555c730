//! Log shipping from regional sites to HQ (`docs/replication.md`).
//!
//! A regional server's [`shipper`] pushes its durable log blocks, as stored,
//! to HQ. HQ's [`Replicas`] keep one log per site under `<data>/replicas/<site>/`
//! in the log's own format and append a shipment only after checking it: every
//! block's CRCs and records, offsets contiguous with what HQ holds, the hash
//! chain continued from HQ's last link, and only then one `fdatasync` before
//! the acknowledgement. HQ therefore holds a gap-free prefix of each site's
//! log, with the same records at the same offsets and the same chain.
//!
//! Answers: an identical resend is a success that changes nothing; a block
//! that differs from what HQ holds at the same offsets (or that does not
//! continue HQ's chain) is a fork — refused, nothing applied, alarmed and
//! audited; a block past HQ's high-water mark is a gap, refused with the
//! offset HQ needs.

pub mod shipper;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{error, info};
use verbatim_schema::{decode_record, Offset, UnixNanos};

use crate::log::io::Storage;
use crate::log::raw::{parse_blocks, AppendBlocksError, CheckedBlock};
use crate::log::{ChainHash, Log, LogConfig, LogError, LogReader};

/// `[replication]`: limits and pacing of log shipping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// HQ: the largest shipment accepted, in bytes (at least one block of
    /// `log.max_block_bytes` must fit).
    pub max_body_bytes: usize,
    /// Regional: bytes of blocks gathered into one shipment (one block at least).
    pub batch_bytes: usize,
    /// Regional: how often to look for new blocks once caught up (ms).
    pub poll_ms: u64,
    /// Regional: the longest wait between attempts after failures (ms); waits
    /// double from 100 ms up to this.
    pub backoff_max_ms: u64,
    /// Regional: timeout of one request to HQ (seconds).
    pub timeout_secs: u64,
    /// Regional: alarm when this many events are not yet at HQ...
    pub alarm_backlog_events: u64,
    /// ...or when the oldest of them was received this many seconds ago.
    pub alarm_backlog_seconds: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            batch_bytes: 8 << 20,
            poll_ms: 200,
            backoff_max_ms: 30_000,
            timeout_secs: 60,
            alarm_backlog_events: 1_000_000,
            alarm_backlog_seconds: 3600,
        }
    }
}

impl ReplicationConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_body_bytes >= (33 << 20) + 84,
            "replication.max_body_bytes must be at least 33 MiB + 84 (one largest block)"
        );
        anyhow::ensure!(self.batch_bytes >= 4096, "replication.batch_bytes must be at least 4096");
        anyhow::ensure!(
            self.poll_ms >= 1 && self.backoff_max_ms >= 100,
            "replication.poll_ms ≥ 1, backoff_max_ms ≥ 100"
        );
        anyhow::ensure!(self.timeout_secs >= 1, "replication.timeout_secs must be at least 1");
        Ok(())
    }
}

/// HQ's answer to a shipment and to `GET /v1/replication/{site}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighWater {
    pub site: String,
    /// The offset after the last record HQ holds for the site (durable).
    pub high_water: u64,
    /// The hash chain link after that record, hex.
    pub chain: String,
}

/// Why a shipment was refused. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("block {block}: {what}")]
    Corrupt { block: usize, what: String },
    #[error("block {block} starts at offset {first}; HQ holds this site up to {need} and needs that offset next")]
    Gap { block: usize, first: u64, need: u64 },
    #[error("fork: block {block} differs from what HQ holds for this site at offset {offset}")]
    Fork { block: usize, offset: u64 },
    #[error("the replica log of this site cannot be written: {0}")]
    Failed(String),
}

/// What a shipment did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Received {
    pub blocks: usize,
    pub records: u64,
    /// Blocks HQ already held, byte for byte the same records.
    pub duplicate_blocks: usize,
}

/// One site's replica log and what HQ knows of the site.
struct Replica {
    log: Log,
    /// The site's log head as its shipper last reported it.
    site_head: Option<u64>,
    site_lag_bytes: Option<u64>,
    last_shipment: Option<UnixNanos>,
    last_received_at: Option<UnixNanos>,
    forks: u64,
    last_fork: Option<String>,
}

/// HQ: the replica logs of every site, under `<data>/replicas/<site>/`.
pub struct Replicas {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: LogConfig,
    sites: Mutex<BTreeMap<String, Arc<Mutex<Replica>>>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A site id as HQ accepts it in a path: what `site.id` allows.
pub fn valid_site(site: &str) -> bool {
    !site.is_empty() && site.len() <= 64 && site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Replicas {
    /// Opens every replica log under `dir` (recovering each like the main log).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, config: LogConfig) -> anyhow::Result<Arc<Self>> {
        crate::log::io::create_dir_durable(&*storage, dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut sites = BTreeMap::new();
        for name in storage.list(dir).map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))? {
            if !valid_site(&name) {
                continue;
            }
            let log = Log::open(storage.clone(), &dir.join(&name), config.clone())
                .map_err(|e| anyhow::anyhow!("opening the replica log of site {name}: {e}"))?;
            info!(site = %name, high_water = log.head().0, "replica log open");
            sites.insert(name, Arc::new(Mutex::new(Replica::new(log))));
        }
        Ok(Arc::new(Self { dir: dir.to_owned(), storage, config, sites: Mutex::new(sites) }))
    }

    fn replica(&self, site: &str) -> Result<Arc<Mutex<Replica>>, ReceiveError> {
        let mut sites = lock(&self.sites);
        if let Some(r) = sites.get(site) {
            return Ok(r.clone());
        }
        let log = Log::open(self.storage.clone(), &self.dir.join(site), self.config.clone())
            .map_err(|e| ReceiveError::Failed(e.to_string()))?;
        info!(site, "first shipment from a new site: replica log created");
        let r = Arc::new(Mutex::new(Replica::new(log)));
        sites.insert(site.to_owned(), r.clone());
        Ok(r)
    }

    /// Where HQ stands for `site` (an unknown site: nothing held yet).
    pub fn high_water(&self, site: &str) -> Result<HighWater, ReceiveError> {
        // Asking creates nothing: a site not seen yet stands at genesis.
        let Some(r) = lock(&self.sites).get(site).cloned() else {
            return Ok(HighWater { site: site.to_owned(), high_water: 0, chain: ChainHash::GENESIS.to_hex() });
        };
        let r = lock(&r);
        Ok(r.high_water(site))
    }

    /// Checks and applies one shipment of back-to-back blocks for `site`
    /// (`report`: where the site stands, as its shipper says).
    pub fn receive(&self, site: &str, body: &[u8], report: SiteReport) -> Result<(Received, HighWater), ReceiveError> {
        let blocks = parse_blocks(body).map_err(|(block, what)| ReceiveError::Corrupt { block, what })?;
        let replica = self.replica(site)?;
        let mut r = lock(&replica);
        if report.head.is_some() {
            r.site_head = report.head;
        }
        r.last_shipment = Some(UnixNanos::now());
        let outcome = r.apply(site, &blocks);
        if let Some(lag) = report.lag_bytes {
            let applied = if outcome.is_ok() { body.len() as u64 } else { 0 };
            r.site_lag_bytes = Some(lag.saturating_sub(applied));
        }
        match outcome {
            Ok(received) => Ok((received, r.high_water(site))),
            Err(e) => {
                if let ReceiveError::Fork { .. } = &e {
                    r.forks += 1;
                    r.last_fork = Some(e.to_string());
                    error!(site, error = %e, "replication fork: the shipment was refused");
                }
                Err(e)
            }
        }
    }

    /// A reader of `site`'s replica log, if HQ holds one.
    pub fn reader(&self, site: &str) -> Option<LogReader> {
        let r = lock(&self.sites).get(site).cloned()?;
        let r = lock(&r);
        Some(r.log.reader())
    }

    /// The sites held, copied out so that no replica is locked under the map's lock.
    fn snapshot(&self) -> Vec<(String, Arc<Mutex<Replica>>)> {
        lock(&self.sites).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every site HQ holds a replica log of, with a reader of it.
    pub fn readers(&self) -> Vec<(String, LogReader)> {
        self.snapshot().into_iter().map(|(site, r)| (site, lock(&r).log.reader())).collect()
    }

    /// Per-site replication status, for `/v1/status` and `/metrics`.
    pub fn status(&self) -> Vec<SiteStatus> {
        let sites = self.snapshot();
        let now = UnixNanos::now().0;
        sites
            .into_iter()
            .map(|(site, r)| {
                let r = lock(&r);
                let hw = r.log.head().0;
                let reader = r.log.reader();
                let lag_events = r.site_head.map(|h| h.saturating_sub(hw));
                // The first missing record was received after the newest held,
                // so this age bounds the oldest missing record's from above.
                let newest_held =
                    hw.checked_sub(1).and_then(|o| reader.get(Offset(o)).ok()).map(|rec| rec.received_at.0);
                let lag_seconds = match (lag_events, newest_held) {
                    (Some(0), _) => Some(0.0),
                    (Some(_), Some(t)) => Some((now - t).max(0) as f64 / 1e9),
                    _ => None,
                };
                SiteStatus {
                    high_water: hw,
                    chain: reader.chain_at(Offset(hw)).map(|c| c.to_hex()).unwrap_or_default(),
                    site_head: r.site_head,
                    lag_events,
                    lag_bytes: if lag_events == Some(0) { Some(0) } else { r.site_lag_bytes },
                    lag_seconds,
                    seconds_since_shipment: r.last_shipment.map(|t| (now - t.0).max(0) as f64 / 1e9),
                    newest_received_at: r.last_received_at.map(|t| t.0),
                    forks: r.forks,
                    last_fork: r.last_fork.clone(),
                    site,
                }
            })
            .collect()
    }

    /// Seals every replica log, for a clean shutdown.
    pub fn close(&self) -> Result<(), LogError> {
        let sites = std::mem::take(&mut *lock(&self.sites));
        for (site, r) in sites {
            let Ok(r) = Arc::try_unwrap(r) else {
                continue;
            };
            let r = r.into_inner().unwrap_or_else(|p| p.into_inner());
            r.log.close().inspect_err(|e| error!(site, error = %e, "sealing a replica log"))?;
        }
        Ok(())
    }
}

/// Where a site stands, as its shipper reports with each shipment
/// (`X-Verbatim-Site-Head`, `X-Verbatim-Site-Lag-Bytes`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SiteReport {
    /// The site's log head.
    pub head: Option<u64>,
    /// Stored bytes from HQ's high water to the site's head, before this shipment.
    pub lag_bytes: Option<u64>,
}

/// One site as HQ sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub high_water: u64,
    pub chain: String,
    pub site_head: Option<u64>,
    pub lag_events: Option<u64>,
    /// Stored bytes the site still has to ship, as its shipper last reported.
    pub lag_bytes: Option<u64>,
    /// While events are missing: seconds since the newest record HQ holds was
    /// received at the site (at least the age of the oldest missing one).
    pub lag_seconds: Option<f64>,
    pub seconds_since_shipment: Option<f64>,
    pub newest_received_at: Option<i64>,
    pub forks: u64,
    pub last_fork: Option<String>,
}

impl Replica {
    fn new(log: Log) -> Self {
        Self {
            log,
            site_head: None,
            site_lag_bytes: None,
            last_shipment: None,
            last_received_at: None,
            forks: 0,
            last_fork: None,
        }
    }

    fn high_water(&self, site: &str) -> HighWater {
        let hw = self.log.head();
        let chain = self.log.reader().chain_at(hw).map(|c| c.to_hex()).unwrap_or_default();
        HighWater { site: site.to_owned(), high_water: hw.0, chain }
    }

    /// Sorts the blocks into held (must be identical), new (must continue
    /// the log) and out of place; appends the new ones or nothing.
    fn apply(&mut self, site: &str, blocks: &[CheckedBlock]) -> Result<Received, ReceiveError> {
        if let Some(why) = self.log.failure() {
            // A stopped writer restarts from its last acknowledged block.
            let why = why.to_owned();
            self.log.recover().map_err(|e| ReceiveError::Failed(format!("{why}; restarting failed: {e}")))?;
        }
        let held = self.log.head().0;
        let reader = self.log.reader();
        let mut need = held;
        let mut fresh = Vec::new();
        let mut out = Received { blocks: blocks.len(), ..Received::default() };
        for (i, b) in blocks.iter().enumerate() {
            for (k, bytes) in b.records().enumerate() {
                let rec = decode_record(bytes).map_err(|e| ReceiveError::Corrupt { block: i, what: e.to_string() })?;
                if rec.site.as_str() != site {
                    return Err(ReceiveError::Corrupt {
                        block: i,
                        what: format!(
                            "record {} belongs to site `{}`, not `{site}`",
                            b.first().0 + k as u64,
                            rec.site.as_str()
                        ),
                    });
                }
            }
            let (first, end) = (b.first().0, b.end().0);
            if first > need {
                return Err(ReceiveError::Gap { block: i, first, need });
            }
            if first < need {
                if need > held {
                    return Err(ReceiveError::Corrupt {
                        block: i,
                        what: "the blocks of a shipment overlap or go back".into(),
                    });
                }
                // Records HQ holds: they must be the same bytes.
                for (k, bytes) in b.records().enumerate() {
                    let o = first + k as u64;
                    if o >= held {
                        break;
                    }
                    let mine = reader.block_at(Offset(o)).map_err(|e| ReceiveError::Failed(e.to_string()))?;
                    if mine.bytes((o - mine.first.0) as usize) != bytes {
                        return Err(ReceiveError::Fork { block: i, offset: o });
                    }
                }
                if end > held {
                    // It starts inside what HQ holds and runs past it: the
                    // shipper sends from `held` on (it frames a block there).
                    return Err(ReceiveError::Gap { block: i, first, need: held });
                }
                out.duplicate_blocks += 1;
                continue;
            }
            fresh.push(b);
            need = end;
        }
        match self.log.append_blocks(&fresh) {
            Ok(stats) => out.records = stats.records,
            Err(AppendBlocksError::Chain { block, first }) => {
                let block = blocks.iter().position(|b| b.first() == first).unwrap_or(block);
                return Err(ReceiveError::Fork { block, offset: first.0 });
            }
            Err(AppendBlocksError::ClockBack { block }) => {
                return Err(ReceiveError::Corrupt { block, what: "received_at goes back from what HQ holds".into() })
            }
            Err(e @ AppendBlocksError::NotContiguous { .. }) => return Err(ReceiveError::Failed(e.to_string())),
            Err(AppendBlocksError::Log(e)) => return Err(ReceiveError::Failed(e.to_string())),
        }
        if let Some(b) = fresh.last() {
            self.last_received_at = Some(b.raw.header.last_received_at);
        }
        if self.log.maybe_roll().map_err(|e| ReceiveError::Failed(e.to_string()))? {
            self.log.seal_pending().map_err(|e| ReceiveError::Failed(e.to_string()))?;
        }
        Ok(out)
    }
}
