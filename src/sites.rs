//! The archive as the read path sees it: one [`SiteStore`] per site — a log
//! and the index and rollups derived from it. Every server has its own site's
//! store; HQ adds one per replicated site, under `<data>/sites/<site>/`, so
//! that search and SQL on HQ cover every site while a regional server shows
//! its own. A replica's derived stores are built by the same indexer and
//! rollup writer as the local ones, tail the replica log as shipments land,
//! and are rebuildable from it like any derived store (delete the site's
//! directory and restart). Conversation ids are those of the site: on HQ a
//! conversation is named by (site, id).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use tracing::{info, warn};

use verbatim_schema::Offset;

use crate::index::indexer::{Indexer, SearchIndex};
use crate::index::IndexConfig;
use crate::log::cache::BlockCache;
use crate::log::reader::BlockRecords;
use crate::log::{LogError, LogReader};
use crate::metrics::{IndexMetrics, RollupMetrics};
use crate::rollup::writer::RollupWriter;
use crate::rollup::{RollupConfig, Rollups};

/// One site's log and the stores derived from it.
#[derive(Debug)]
pub struct SiteStore {
    pub site: String,
    pub log: LogReader,
    pub index: Arc<SearchIndex>,
    pub rollups: Arc<Rollups>,
}

/// Each of `hits` — (position of the store in `stores`, offset) — in the
/// order given, paired with the block holding it, each site's read from its
/// own log in one pass.
pub fn blocks(
    stores: &[Arc<SiteStore>],
    blocks: &BlockCache,
    hits: &[(usize, Offset)],
) -> Result<Vec<(Arc<BlockRecords>, Offset)>, LogError> {
    let mut out: Vec<Option<(Arc<BlockRecords>, Offset)>> = hits.iter().map(|_| None).collect();
    for (i, store) in stores.iter().enumerate() {
        let (at, offsets): (Vec<usize>, Vec<Offset>) =
            hits.iter().enumerate().filter(|(_, h)| h.0 == i).map(|(k, h)| (k, h.1)).unzip();
        if offsets.is_empty() {
            continue;
        }
        for (k, b) in at.into_iter().zip(blocks.blocks(&store.log, &offsets)?) {
            out[k] = Some(b);
        }
    }
    // A hit naming no store of `stores` has no record.
    out.into_iter().zip(hits).map(|(b, &(_, o))| b.ok_or(LogError::NoSuchOffset(o))).collect()
}

/// Where HQ keeps the derived stores of replicated sites, and how it builds them.
#[derive(Clone, Debug)]
pub struct ReplicaStores {
    /// `<data>/sites`.
    pub dir: PathBuf,
    pub index: IndexConfig,
    pub rollup: RollupConfig,
    pub search_threads: usize,
}

/// Every site this server serves reads for.
#[derive(Debug)]
pub struct Sites {
    local: Arc<SiteStore>,
    replicas: RwLock<BTreeMap<String, Arc<SiteStore>>>,
    /// On HQ only.
    stores: Option<ReplicaStores>,
    workers: Mutex<Vec<(Indexer, RollupWriter)>>,
}

impl Sites {
    /// A server that holds only its own site (standalone or regional).
    pub fn local(local: SiteStore) -> Arc<Self> {
        Arc::new(Self { local: Arc::new(local), replicas: RwLock::default(), stores: None, workers: Mutex::default() })
    }

    /// HQ: its own site, and replicated sites as they are attached.
    pub fn hq(local: SiteStore, stores: ReplicaStores) -> Arc<Self> {
        Arc::new(Self {
            local: Arc::new(local),
            replicas: RwLock::default(),
            stores: Some(stores),
            workers: Mutex::default(),
        })
    }

    /// This server's own site.
    pub fn own(&self) -> &Arc<SiteStore> {
        &self.local
    }

    /// Every site: this server's own first, then replicated sites by id.
    pub fn all(&self) -> Vec<Arc<SiteStore>> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(self.local.clone()).chain(replicas.values().cloned()).collect()
    }

    /// Whether replicated sites are served beside the own site.
    pub fn has_replicas(&self) -> bool {
        !self.replicas.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The store of `site`, by id.
    pub fn get(&self, site: &str) -> Option<Arc<SiteStore>> {
        if site == self.local.site {
            return Some(self.local.clone());
        }
        self.replicas.read().unwrap_or_else(|p| p.into_inner()).get(site).cloned()
    }

    /// HQ: opens (creating if needed) the derived stores of replicated `site`
    /// and starts their indexer and rollup writer on `log`. Attaching a site
    /// already served does nothing.
    pub fn attach(&self, site: &str, log: LogReader) -> anyhow::Result<()> {
        let Some(cfg) = &self.stores else {
            anyhow::bail!("only HQ serves replicated sites");
        };
        if site == self.local.site {
            warn!(site, "a replicated site has this server's own site id: its copy is kept, but not searchable");
            return Ok(());
        }
        if self.get(site).is_some() {
            return Ok(());
        }
        // One attach at a time: the workers' lock also orders the check above.
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(site).is_some() {
            return Ok(());
        }
        let dir = cfg.dir.join(site);
        let (store, indexer, rollup) = start_store(cfg, site, &dir, log).with_context(|| {
            format!(
                "serving reads of replicated site {site}; if this persists, stop HQ and delete {} to rebuild them",
                dir.display()
            )
        })?;
        workers.push((indexer, rollup));
        info!(site, dir = %dir.display(), "serving a replicated site: indexing and rolling up its log");
        self.replicas.write().unwrap_or_else(|p| p.into_inner()).insert(site.to_owned(), store);
        Ok(())
    }

    /// Commits what the replicas' workers hold and stops them.
    pub fn stop(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for (indexer, rollup) in workers {
            indexer.stop();
            rollup.stop();
        }
    }
}

/// Opens (creating if needed) the index and rollups of `site` under `dir` and
/// starts their indexer and rollup writer on `log`.
fn start_store(
    cfg: &ReplicaStores,
    site: &str,
    dir: &Path,
    log: LogReader,
) -> anyhow::Result<(Arc<SiteStore>, Indexer, RollupWriter)> {
    let (index, fields) = crate::index::open(&dir.join("index")).context("opening the index")?;
    let index = SearchIndex::new(index, fields, Arc::new(IndexMetrics::default()), cfg.search_threads)?;
    let rollups =
        Rollups::open(&dir.join("rollup"), Arc::new(RollupMetrics::default())).context("opening the rollups")?;
    let indexer = Indexer::start(index.clone(), log.clone(), cfg.index.clone()).context("starting the indexer")?;
    let rollup = match RollupWriter::start(rollups.clone(), log.clone(), cfg.rollup.clone()) {
        Ok(r) => r,
        Err(e) => {
            indexer.stop();
            return Err(e.context("starting the rollup writer"));
        }
    };
    let store = Arc::new(SiteStore { site: site.to_owned(), log, index, rollups });
    Ok((store, indexer, rollup))
}
