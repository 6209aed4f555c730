//! `verbatim serve`: open the archive, bring the derived state up to date
//! from the log, start the writer, serve HTTP until SIGTERM or SIGINT, then
//! write what is queued and seal the log.

use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tracing::info;

use crate::audit::Audit;
use crate::auth::{Role, TokenStore};
use crate::config::{Config, SiteRole};
use crate::http::{router, AppState};
use crate::index::indexer::{Indexer, SearchIndex};
use crate::ingest::IngestSequencer;
use crate::log::io::FsStorage;
use crate::log::{Log, LogHandle};
use crate::metrics::Metrics;
use crate::paths::{write_atomic, DataDir};
use crate::rollup::writer::RollupWriter;
use crate::rollup::Rollups;
use crate::ship::shipper::{Shipper, ShipperConfig};
use crate::ship::Replicas;
use crate::sites::{ReplicaStores, SiteStore, Sites};
use crate::sql::SqlEngine;
use crate::state::StateDb;

/// On a data directory without any admin token, creates one and writes it
/// to `<data>/admin.token` (mode 0600). Returns the file if it did.
pub fn ensure_admin_token(data: &DataDir, tokens: &TokenStore) -> anyhow::Result<Option<std::path::PathBuf>> {
    if tokens.has_admin()? {
        return Ok(None);
    }
    let (token, _) = tokens.create(Role::Admin, Vec::new(), None)?;
    let path = data.admin_token();
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let data = config.data();
    // A bad certificate or key stops the start before anything is opened.
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let _lock = data.lock()?;
    let tokens = Arc::new(TokenStore::new(&data));
    if let Some(path) = ensure_admin_token(&data, &tokens)? {
        info!("wrote the first admin token to {} (mode 0600)", path.display());
    }
    let log = Log::open(Arc::new(FsStorage), &data.log(), config.log_config()).context("opening the log")?;
    let state = StateDb::open(&data.state())?;
    let sequencer = IngestSequencer::open(state, config.sessions.clone(), &log.reader())
        .context("bringing the ingest state up to date")?;
    let metrics = Arc::new(Metrics::default());
    let (index, fields) = crate::index::open(&data.index())?;
    let index = SearchIndex::new(index, fields, metrics.index.clone(), config.search.threads)?;
    let indexer = Indexer::start(index.clone(), log.reader(), config.index.clone())?;
    let rollups = Rollups::open(&data.rollup(), metrics.rollup.clone())?;
    let rollup_writer = RollupWriter::start(rollups.clone(), log.reader(), config.rollup.clone())?;
    let blocks = Arc::new(crate::log::cache::BlockCache::new(config.search.block_cache_mb << 20));
    let own =
        SiteStore { site: config.site.id.clone(), log: log.reader(), index: index.clone(), rollups: rollups.clone() };
    let replicas = match config.site.role {
        SiteRole::Hq => Some(
            Replicas::open(Arc::new(FsStorage), &data.replicas(), config.log_config())
                .context("opening the replica logs")?,
        ),
        _ => None,
    };
    let sites = match &replicas {
        Some(replicas) => {
            let stores = ReplicaStores {
                dir: data.sites(),
                index: config.index.clone(),
                rollup: config.rollup.clone(),
                search_threads: config.search.threads,
            };
            let sites = Sites::hq(own, stores);
            // A replica's derived stores failing to open must not stop HQ
            // from receiving: the site is then missing from search and SQL
            // (its status shows no `index`) until they are rebuilt.
            for (site, reader) in replicas.readers() {
                if let Err(e) = sites.attach(&site, reader) {
                    tracing::error!(site, "{e:#}");
                }
            }
            sites
        }
        None => Sites::local(own),
    };
    let sql = SqlEngine::new(sites.clone(), blocks.clone(), config.search.clone(), config.sql.clone())?;
    let (audit, audit_writer) = Audit::open(&data.audit(), config.log_config(), config.site_id())?;
    let (handle, writer) = LogHandle::start(log, Box::new(sequencer), metrics.log.clone());
    let pg = if config.pg.enabled {
        let listener = tokio::net::TcpListener::bind(config.pg.listen)
            .await
            .with_context(|| format!("binding the Postgres endpoint {}", config.pg.listen))?;
        info!(listen = %listener.local_addr()?, "Postgres wire protocol serving (database verbatim, an auditor token as password)");
        Some(tokio::spawn(crate::pg::serve(
            listener,
            sql.clone(),
            audit.clone(),
            metrics.index.clone(),
            tokens.clone(),
            config.pg.max_connections,
        )))
    } else {
        None
    };
    let shipper = match (config.site.role, &config.site.hq_url, &config.site.hq_token) {
        (SiteRole::Regional, Some(url), Some(token)) => Some(Shipper::start(
            handle.reader().clone(),
            ShipperConfig {
                site: config.site.id.clone(),
                hq_url: url.clone(),
                token: token.clone(),
                replication: config.replication.clone(),
                level: config.log.sealed_compression_level,
                cursor_file: data.shipping_cursor(),
                ca: config.site.hq_ca.clone(),
            },
        )?),
        _ => None,
    };
    let app = Arc::new(AppState {
        log: handle.clone(),
        metrics,
        tokens,
        limits: config.limits.clone(),
        ingest: config.ingest.clone(),
        site: config.site_id(),
        index,
        search: config.search.clone(),
        audit: audit.clone(),
        blocks,
        rollups,
        sql,
        data_dir: data.root().to_path_buf(),
        replication: config.replication.clone(),
        capacity: config.capacity.clone(),
        replicas: replicas.clone(),
        shipper: shipper.clone(),
        sites: sites.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    info!(listen = %listener.local_addr()?, tls = tls.is_some(), data_dir = %data.root().display(), site = %config.site.id, "verbatim serving");
    match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, router(app.clone())).with_graceful_shutdown(shutdown_signal()).await?
        }
        None => {
            // Answers are small and awaited one by one: no Nagle delay on them.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router(app.clone())).with_graceful_shutdown(shutdown_signal()).await?
        }
    }
    info!("shutting down: writing queued batches and sealing the log");
    if let Some(pg) = pg {
        pg.abort();
    }
    if let Some(s) = shipper {
        tokio::task::spawn_blocking(move || s.stop()).await?;
    }
    handle.close().await.map_err(|e| anyhow::anyhow!("closing the log: {e}"))?;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tokio::task::spawn_blocking(move || indexer.stop()).await?;
    tokio::task::spawn_blocking(move || rollup_writer.stop()).await?;
    tokio::task::spawn_blocking(move || sites.stop()).await?;
    if let Some(r) = replicas {
        drop(app);
        tokio::task::spawn_blocking(move || r.close())
            .await?
            .map_err(|e| anyhow::anyhow!("sealing the replica logs: {e}"))?;
    }
    audit.close().await.map_err(|e| anyhow::anyhow!("closing the audit log: {e}"))?;
    let _ = tokio::task::spawn_blocking(move || audit_writer.join()).await;
    info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
