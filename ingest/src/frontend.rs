//! What every front-end binary shares: the recorder's flags, logging and the
//! runtime, and a clean stop on SIGTERM or SIGINT.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;

use crate::recorder::{Recorder, RecorderConfig};
use crate::sender::SenderConfig;
use crate::spool::{SpoolConfig, SpoolMode};

/// The flags that say where events go and where they wait.
#[derive(Debug, clap::Args)]
pub struct RecorderArgs {
    /// Server URLs, comma-separated: the next is used after repeated failures.
    #[arg(long, value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// Ingest token, bound on the server to --source.
    #[arg(long, env = "VERBATIM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This capture point's source id (each front end needs its own).
    #[arg(long)]
    pub source: String,
    /// Spool directory.
    #[arg(long)]
    pub spool: PathBuf,
    /// Unacknowledged bytes past which new events are refused (and an alarm raised at 80 %).
    #[arg(long, default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
}

impl RecorderArgs {
    /// Opens the spool and starts the recorder. `linger`: how long the
    /// sender lets events gather (zero when someone waits for the server).
    pub fn start(&self, mode: SpoolMode, linger: Duration) -> anyhow::Result<Recorder> {
        Recorder::start(RecorderConfig {
            source: self.source.clone(),
            spool: SpoolConfig { max_bytes: self.spool_max_bytes, ..SpoolConfig::new(&self.spool, mode) },
            sender: SenderConfig { linger, ..SenderConfig::new(self.server.clone(), self.token.clone()) },
            flush_every: Duration::from_secs(1),
            queue: 65_536,
        })
        .with_context(|| format!("opening the spool {}", self.spool.display()))
    }
}

/// Runs a front end: logs to stderr (`RUST_LOG`, `info` by default) on a
/// multi-thread runtime; an error is printed and exits 2.
pub fn main_with(run: impl Future<Output = anyhow::Result<()>>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

/// Serves until SIGTERM or SIGINT, then closes the spool (what was not yet
/// acknowledged is sent after the next start).
pub async fn serve_until_signal(recorder: Recorder) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: closing the spool");
    tokio::task::spawn_blocking(move || recorder.shutdown()).await?;
    Ok(())
}

/// A lock that survives a panicked holder: what it guards here (counters,
/// caches, decoder state) stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
