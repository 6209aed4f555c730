//! The `verbatim` command line. Exit codes: 0 success, 1 a failure found
//! (e.g. `verify` found damage), 2 a usage or environment error.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::log::io::{FsStorage, Storage};
use crate::log::verify::verify_dir;
use crate::log::{open_read_only, segment, Log};
use verbatim_schema::Offset;

#[derive(Debug, Parser)]
#[command(name = "verbatim", version, about = "Archival database server for enterprise instant messaging and chat")]
pub struct Cli {
    /// Data directory (overrides the config file and VERBATIM_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file; see docs/config.example.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP on 127.0.0.1:8090 by default).
    Serve,
    /// Append an NDJSON file of events (wire format v1) to the log, offline.
    Import { file: PathBuf },
    /// Check every segment: checksums, records, offsets, hash chain, footers.
    Verify,
    /// Print records as NDJSON, byte-exact, from an offset.
    Dump {
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Segments, events, bytes and compression of the log.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create, list and revoke access tokens (works with or without a running server).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it alone on stdout (it is shown only once).
    Create {
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// For ingest tokens: source ids it may write, comma-separated patterns (`proxy-*`).
        #[arg(long, value_delimiter = ',')]
        sources: Vec<String>,
        /// For replica tokens: the site it ships.
        #[arg(long)]
        site: Option<String>,
    },
    /// List tokens (ids and roles, never the tokens themselves).
    List,
    /// Revoke a token by its id.
    Revoke { id: String },
}

/// Runs the command line; `main.rs` calls only this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VERBATIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    Ok(config)
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!("{what} {{bar:40}} {{percent:>3}}% {{msg}} eta {{eta}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Runs one command; the `ExitCode` is 1 when the command found a failure.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli)?;
    let log_dir = config.data().log();
    match cli.command {
        Command::Serve => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::server::serve(config))?;
        }
        Command::Import { file } => {
            let data = config.data();
            let _lock = data.lock()?;
            let mut log = Log::open(Arc::new(FsStorage), &log_dir, config.log_config()).context("opening the log")?;
            let state = crate::state::StateDb::open(&data.state())?;
            let mut seq = crate::ingest::IngestSequencer::open(state, config.sessions.clone(), &log.reader())?;
            let bar = progress_bar(0, "importing");
            let done = crate::import::import_file(&mut log, &mut seq, &file, &config.limits, &config.site_id(), |n| {
                bar.set_position(n)
            })?;
            bar.finish_and_clear();
            log.close()?;
            println!(
                "imported {} events ({} new, {} already stored); log head {}",
                done.events, done.new, done.duplicates, done.end
            );
        }
        Command::Token { command } => token(&config, command)?,
        Command::Verify => return verify(&log_dir),
        Command::Dump { from, limit } => dump(&config, &log_dir, Offset(from), limit)?,
        Command::Stats { json } => stats(&config, &log_dir, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let data = config.data();
    std::fs::create_dir_all(data.root()).with_context(|| format!("creating {}", data.root().display()))?;
    let store = crate::auth::TokenStore::new(&data);
    match command {
        TokenCommand::Create { role, sources, site } => {
            let (token, _) = store.create(role, sources, site)?;
            println!("{token}");
        }
        TokenCommand::List => {
            println!("{:<14} {:<8} {:<26} {:<10} SCOPE", "ID", "ROLE", "CREATED", "STATUS");
            for t in store.list()? {
                let scope = if !t.sources.is_empty() {
                    format!("sources {}", t.sources.join(","))
                } else {
                    t.site.map(|s| format!("site {s}")).unwrap_or_default()
                };
                let status = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<14} {:<8} {:<26} {:<10} {}", t.id, t.role.as_str(), t.created_at, status, scope);
            }
        }
        TokenCommand::Revoke { id } => {
            store.revoke(&id)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn require_log(dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "no log at {} (wrong --data-dir?)", dir.display());
    Ok(())
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    require_log(dir)?;
    let total: u64 = FsStorage
        .list(dir)?
        .iter()
        .filter(|n| segment::parse_name(n).is_some())
        .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
        .map(|m| m.len())
        .sum();
    let bar = progress_bar(total, "verifying");
    let report = verify_dir(&FsStorage, dir, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    println!(
        "segments {}  blocks {}  records {}  head {}  chain {}",
        report.segments, report.blocks, report.records, report.head, report.chain_head
    );
    if let Some(t) = &report.torn_tail {
        println!("note: torn tail in {t} (opening the log cuts it off)");
    }
    match report.problem {
        Some(p) => {
            println!("DAMAGED: {p}");
            Ok(ExitCode::from(1))
        }
        None => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dump(config: &Config, dir: &Path, from: Offset, limit: Option<u64>) -> anyhow::Result<()> {
    require_log(dir)?;
    let reader = open_read_only(&FsStorage, dir, &config.log_config())?;
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    for item in reader.iter_from(from).take(limit.map_or(usize::MAX, |l| l as usize)) {
        let (offset, record) = item?;
        let mut line = record.to_json(offset);
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    out.flush().or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })?;
    Ok(())
}

fn stats(config: &Config, dir: &Path, json: bool) -> anyhow::Result<()> {
    require_log(dir)?;
    let reader = open_read_only(&FsStorage, dir, &config.log_config())?;
    let s = crate::log::reader::stats(&reader)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "segments      {} ({} sealed, {} unsealed)",
            s.segments,
            s.sealed_segments,
            s.segments - s.sealed_segments
        );
        println!("events        {}", s.events);
        println!("blocks        {}", s.blocks);
        println!("bytes on disk {}", s.file_bytes);
        println!("record bytes  {}", s.raw_bytes);
        println!("compression   {:.2}x", s.compression_ratio);
        println!("bytes/event   {:.1}", s.bytes_per_event);
    }
    Ok(())
}
