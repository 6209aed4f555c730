//! Configuration: a TOML file, then `VERBATIM_*` environment variables, then
//! command-line flags, over embedded defaults. Unknown keys are refused.
//! `docs/config.example.toml` shows every key with its default; a test loads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use verbatim_schema::{Limits, SiteId};

use crate::log::LogConfig;
use crate::paths::DataDir;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the archive lives (`VERBATIM_DATA_DIR`).
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    /// The Postgres wire protocol endpoint.
    pub pg: crate::pg::PgConfig,
    pub site: SiteConfig,
    pub log: LogConfig,
    /// Limits on each event.
    pub limits: Limits,
    pub ingest: IngestConfig,
    pub sessions: crate::ingest::SessionConfig,
    pub index: crate::index::IndexConfig,
    pub search: crate::index::search::SearchConfig,
    pub rollup: crate::rollup::RollupConfig,
    pub sql: crate::sql::SqlConfig,
    pub replication: crate::ship::ReplicationConfig,
    pub capacity: CapacityConfig,
}

/// Bytes a record's encoding may need beyond the strings of its JSON: the
/// site (at most 64) and 16 varints of at most ten bytes.
const PER_EVENT_OVERHEAD: usize = 224;

/// The capacity forecast (`[capacity]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// Days of retention the archive is planned for: `GET /v1/capacity` and
    /// `verbatim sizing --measured` forecast the steady state under it unless
    /// the request names another. A forecast input only: nothing is deleted.
    pub retention_days: Option<f64>,
}

/// Limits of `POST /v1/events` (`[ingest]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body as sent (compressed or not); larger is 413 before
    /// more than this is read.
    pub max_body_bytes: usize,
    /// Largest body after `Content-Encoding: gzip|zstd` is undone.
    pub max_decoded_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// `Retry-After` seconds on 429 and 503.
    pub retry_after_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_body_bytes: 16 << 20, max_decoded_bytes: 24 << 20, max_batch_events: 10_000, retry_after_secs: 1 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API (`VERBATIM_HTTP_LISTEN`); loopback by default.
    pub listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (`VERBATIM_TLS_CERT`)...
    pub tls_cert: Option<PathBuf>,
    /// ...and this PEM private key (`VERBATIM_TLS_KEY`); both or neither.
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteConfig {
    /// This archive's site id, stamped on every record (`VERBATIM_SITE_ID`).
    pub id: String,
    /// `standalone`, `regional` (ships its log to HQ) or `hq` (receives
    /// sites' logs) (`VERBATIM_SITE_ROLE`).
    pub role: SiteRole,
    /// For `regional`: HQ's base URL, `http://host:port` (`VERBATIM_HQ_URL`).
    pub hq_url: Option<String>,
    /// For `regional`: a replica token HQ issued for this site (`VERBATIM_HQ_TOKEN`).
    pub hq_token: Option<String>,
    /// For `regional` with an `https://` hq_url: the PEM CA certificate(s) that
    /// HQ's certificate must chain to (`VERBATIM_HQ_CA`); without it, the
    /// public web PKI roots.
    pub hq_ca: Option<PathBuf>,
}

/// What a server is in a replication topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteRole {
    #[default]
    Standalone,
    Regional,
    Hq,
}

impl std::str::FromStr for SiteRole {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "standalone" => Ok(Self::Standalone),
            "regional" => Ok(Self::Regional),
            "hq" => Ok(Self::Hq),
            _ => anyhow::bail!("site role `{s}` is not standalone, regional or hq"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./verbatim-data"),
            http: HttpConfig::default(),
            pg: crate::pg::PgConfig::default(),
            site: SiteConfig::default(),
            log: LogConfig::default(),
            limits: Limits::default(),
            ingest: IngestConfig::default(),
            sessions: crate::ingest::SessionConfig::default(),
            index: crate::index::IndexConfig::default(),
            search: crate::index::search::SearchConfig::default(),
            rollup: crate::rollup::RollupConfig::default(),
            sql: crate::sql::SqlConfig::default(),
            replication: crate::ship::ReplicationConfig::default(),
            capacity: CapacityConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8090)), tls_cert: None, tls_key: None }
    }
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self { id: "local".into(), role: SiteRole::Standalone, hq_url: None, hq_token: None, hq_ca: None }
    }
}

impl Config {
    /// Loads `file` (if any) over the defaults, then applies the environment
    /// as read by `env`.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                Self::from_toml(&text).with_context(|| format!("in config file {}", path.display()))?
            }
            None => Self::default(),
        };
        if let Some(v) = env("VERBATIM_DATA_DIR") {
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("VERBATIM_HTTP_LISTEN") {
            config.http.listen =
                v.parse().with_context(|| format!("VERBATIM_HTTP_LISTEN={v} is not an address:port"))?;
        }
        if let Some(v) = env("VERBATIM_PG_LISTEN") {
            config.pg.listen = v.parse().with_context(|| format!("VERBATIM_PG_LISTEN={v} is not an address:port"))?;
        }
        if let Some(v) = env("VERBATIM_SITE_ID") {
            config.site.id = v;
        }
        if let Some(v) = env("VERBATIM_SITE_ROLE") {
            config.site.role = v.parse().context("VERBATIM_SITE_ROLE")?;
        }
        if let Some(v) = env("VERBATIM_HQ_URL") {
            config.site.hq_url = Some(v);
        }
        if let Some(v) = env("VERBATIM_HQ_TOKEN") {
            config.site.hq_token = Some(v);
        }
        if let Some(v) = env("VERBATIM_HQ_CA") {
            config.site.hq_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = env("VERBATIM_TLS_CERT") {
            config.http.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env("VERBATIM_TLS_KEY") {
            config.http.tls_key = Some(PathBuf::from(v));
        }
        config.check()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let id = &self.site.id;
        anyhow::ensure!(
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "site.id `{id}` must be 1-64 characters of letters, digits, `-` and `_`"
        );
        match self.site.role {
            SiteRole::Regional => {
                let url = self.site.hq_url.as_deref().unwrap_or_default();
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "a regional site needs site.hq_url, HQ's https://host:port (or http:// on a trusted network)"
                );
                anyhow::ensure!(
                    self.site.hq_ca.is_none() || url.starts_with("https://"),
                    "site.hq_ca is for an https:// site.hq_url"
                );
                anyhow::ensure!(
                    self.site.hq_token.is_some(),
                    "a regional site needs site.hq_token, a replica token from HQ"
                );
            }
            _ => anyhow::ensure!(
                self.site.hq_url.is_none() && self.site.hq_token.is_none() && self.site.hq_ca.is_none(),
                "site.hq_url, site.hq_token and site.hq_ca apply to a regional site only"
            ),
        }
        anyhow::ensure!(
            self.http.tls_cert.is_some() == self.http.tls_key.is_some(),
            "http.tls_cert and http.tls_key go together"
        );
        self.replication.check()?;
        let l = &self.log;
        anyhow::ensure!((0..=22).contains(&l.compression_level), "log.compression_level must be 0-22");
        anyhow::ensure!((1..=22).contains(&l.sealed_compression_level), "log.sealed_compression_level must be 1-22");
        anyhow::ensure!(l.segment_max_bytes >= 4096, "log.segment_max_bytes must be at least 4096");
        let cap = crate::log::frame::MAX_PAYLOAD as usize;
        anyhow::ensure!(
            l.max_block_bytes >= 4096 && l.max_block_bytes <= cap,
            "log.max_block_bytes must be 4096-{cap}"
        );
        anyhow::ensure!(
            l.sealed_block_bytes >= 4096 && l.sealed_block_bytes <= cap / 2,
            "log.sealed_block_bytes must be 4096-{}",
            cap / 2
        );
        anyhow::ensure!(l.queue_depth >= 1, "log.queue_depth must be at least 1");
        anyhow::ensure!(l.preallocate_bytes <= 1 << 30, "log.preallocate_bytes must be at most 1 GiB (0 turns it off)");
        let i = &self.ingest;
        anyhow::ensure!(
            i.max_body_bytes >= 1024 && i.max_decoded_bytes >= i.max_body_bytes,
            "ingest.max_decoded_bytes must be at least ingest.max_body_bytes (and that at least 1024)"
        );
        anyhow::ensure!(i.max_batch_events >= 1, "ingest.max_batch_events must be at least 1");
        if let Some(r) = self.capacity.retention_days {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "capacity.retention_days must be a positive number of days");
        }
        anyhow::ensure!(
            self.rollup.keep_compacted_ms > self.sql.timeout_ms,
            "rollup.keep_compacted_ms ({}) must exceed sql.timeout_ms ({}): a query may read compacted files until it ends",
            self.rollup.keep_compacted_ms,
            self.sql.timeout_ms
        );
        anyhow::ensure!(
            self.index.max_idle_lag_ms > self.index.commit_interval_ms,
            "index.max_idle_lag_ms ({}) must exceed index.commit_interval_ms ({}): the index lags by up to a commit interval by design",
            self.index.max_idle_lag_ms,
            self.index.commit_interval_ms
        );
        anyhow::ensure!(
            self.rollup.max_idle_lag_ms > self.rollup.interval_ms,
            "rollup.max_idle_lag_ms ({}) must exceed rollup.interval_ms ({}): the rollups lag by up to an interval by design",
            self.rollup.max_idle_lag_ms,
            self.rollup.interval_ms
        );
        // A record's encoding is bounded by its strings (never more than the
        // JSON that carried them), the site, and ten bytes per varint.
        let worst = i.max_decoded_bytes + i.max_batch_events * PER_EVENT_OVERHEAD;
        anyhow::ensure!(
            worst <= l.max_block_bytes,
            "ingest.max_decoded_bytes + ingest.max_batch_events x {PER_EVENT_OVERHEAD} ({worst}) must not exceed log.max_block_bytes ({}), so that every accepted batch fits in one block",
            l.max_block_bytes
        );
        Ok(())
    }

    pub fn data(&self) -> DataDir {
        DataDir::new(&self.data_dir)
    }

    pub fn site_id(&self) -> SiteId {
        SiteId::new(self.site.id.clone())
    }

    /// The log settings with the limits' time plausibility folded in.
    pub fn log_config(&self) -> LogConfig {
        LogConfig { time: self.limits.time.clone(), ..self.log.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.example.toml");
        let loaded = Config::load(Some(&path), |_| None).expect("example config loads");
        assert_eq!(loaded, Config::default(), "docs/config.example.toml must show the defaults");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| match k {
            "VERBATIM_DATA_DIR" => Some("/srv/archive".to_string()),
            "VERBATIM_HTTP_LISTEN" => Some("127.0.0.1:9000".to_string()),
            "VERBATIM_SITE_ID" => Some("nyc".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).expect("loads");
        assert_eq!(c.data_dir, PathBuf::from("/srv/archive"));
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.site.id, "nyc");
        let bad = Config::load(None, |k| (k == "VERBATIM_HTTP_LISTEN").then(|| "nowhere".to_string()));
        assert!(bad.is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("data_dri = \"x\"").is_err());
        assert!(Config::from_toml("[log]\nsegment_max_byte = 1").is_err());
        assert!(Config::from_toml("[log]\ncompression_level = 40").is_err());
        assert!(Config::from_toml("[site]\nid = \"a b\"").is_err());
        assert!(Config::from_toml("[log]\nrecovery = \"whatever\"").is_err());
        let e = Config::from_toml("[sql]\ntimeout_ms = 90000").expect_err("compacted files would go first");
        assert!(format!("{e:#}").contains("rollup.keep_compacted_ms"), "{e:#}");
        Config::from_toml("[sql]\ntimeout_ms = 90000\n[rollup]\nkeep_compacted_ms = 120000").expect("valid");
        let c = Config::from_toml("[log]\nrecovery = \"strict\"\n[limits]\nmax_body_bytes = 10").expect("valid");
        assert_eq!(c.log.recovery, crate::log::RecoveryMode::Strict);
        assert_eq!(c.limits.max_body_bytes, 10);
        assert!(Config::from_toml("[capacity]\nretention_days = 0").is_err());
        assert!(Config::from_toml("[capacity]\nretention_days = \"7y\"").is_err());
        let e = Config::from_toml("[index]\nmax_idle_lag_ms = 1000").expect_err("a lag the commit interval makes");
        assert!(format!("{e:#}").contains("index.max_idle_lag_ms"), "{e:#}");
        let e = Config::from_toml("[rollup]\ninterval_ms = 20000").expect_err("a lag the interval makes");
        assert!(format!("{e:#}").contains("rollup.max_idle_lag_ms"), "{e:#}");
        let c = Config::from_toml("[index]\nidle_priority = false\nmax_idle_lag_ms = 2000").expect("valid");
        assert!(!c.index.idle_priority);
        let c = Config::from_toml("[capacity]\nretention_days = 2557").expect("valid");
        assert_eq!(c.capacity.retention_days, Some(2557.0));
    }
}
