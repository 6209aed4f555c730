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
    #[arg(long, global = true, env = "VERBATIM_CONFIG", value_name = "FILE")]
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
    /// Check every segment of the log and, on HQ, of every site's replica:
    /// checksums, records, offsets, hash chain, footers.
    Verify,
    /// On a regional site: compare this log's chain with HQ's copy (site.hq_url, site.hq_token).
    CompareHq,
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
    /// Full-text search through the running server (auditor token; audited).
    Search {
        /// Query in tantivy syntax: words (ANDed), "phrases", OR, -word, field:value, word*, word~1.
        query: String,
        /// Only events at or after this time (RFC 3339, a date, or Unix nanoseconds).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        network: Option<String>,
        /// Sender or recipient.
        #[arg(long)]
        participant: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        conversation: Option<u64>,
        /// Only this site's events (on HQ, which holds every site).
        #[arg(long)]
        site: Option<String>,
        /// `time` (newest first) or `relevance`.
        #[arg(long, default_value = "time")]
        sort: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A conversation's transcript through the running server (auditor token; audited).
    Conversation {
        id: u64,
        /// The site that recorded it (on HQ, where ids of two sites may be the same).
        #[arg(long)]
        site: Option<String>,
        /// Only the events around this offset...
        #[arg(long)]
        around: Option<u64>,
        /// ...this many before and after it.
        #[arg(long, default_value_t = 10)]
        context: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a read-only SQL query through the running server (auditor token; audited).
    Sql {
        /// One statement: SELECT, WITH, VALUES, EXPLAIN, SHOW TABLES, SHOW COLUMNS.
        query: String,
        /// Print CSV instead of a table.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a canned report (query/reports/NAME.sql) through the running server (auditor token; audited).
    Report {
        /// Report name; `list` shows them all.
        name: String,
        /// Period start (RFC 3339, a date, or Unix nanoseconds); open if absent.
        #[arg(long)]
        from: Option<String>,
        /// Period end (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Print CSV instead of a table.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Storage sizing: IM Director's formula as printed and corrected, or
    /// (`--measured`) with the parameters measured from the running archive.
    Sizing {
        /// Users archived.
        #[arg(long, required_unless_present = "measured")]
        seats: Option<f64>,
        /// Average conversation duration, seconds.
        #[arg(long, required_unless_present = "measured")]
        avg_dur: Option<f64>,
        /// Average message length, bytes.
        #[arg(long, required_unless_present = "measured")]
        msg_length: Option<f64>,
        /// Conversations per user per day.
        #[arg(long, required_unless_present = "measured")]
        avg_number: Option<f64>,
        /// Messages per second within a conversation.
        #[arg(long, default_value_t = crate::sizing::DEFAULT_MSG_RATE)]
        msg_rate: f64,
        /// Fraction saved by compression.
        #[arg(long, default_value_t = crate::sizing::DEFAULT_COMPRESSION)]
        compression: f64,
        /// Measure the parameters from the archive (GET /v1/capacity; admin or auditor token).
        #[arg(long)]
        measured: bool,
        /// With --measured: the retention to forecast the steady state for
        /// (default: the server's `[capacity] retention_days`).
        #[arg(long, requires = "measured")]
        retention_days: Option<f64>,
        /// Server URL (default: http:// and the configured `http.listen`).
        #[arg(long)]
        url: Option<String>,
        /// PEM CA certificate the server's HTTPS certificate must chain to.
        #[arg(long, env = "VERBATIM_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        #[arg(long, env = "VERBATIM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the audit stream (`<data>/audit`), offline.
    Audit {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        limit: Option<u64>,
        /// Print NDJSON records instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the search index from the log (server stopped).
    Reindex,
}

/// How a client command reaches the server.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server URL (default: http:// and the configured `http.listen`, or
    /// https:// when `http.tls_cert` is set).
    #[arg(long)]
    pub url: Option<String>,
    /// PEM CA certificate that the server's HTTPS certificate must chain to
    /// (default: the public web PKI roots).
    #[arg(long, env = "VERBATIM_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Auditor token.
    #[arg(long, env = "VERBATIM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print the server's JSON instead of text.
    #[arg(long)]
    pub json: bool,
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
        Command::Verify => return verify_all(&config.data()),
        Command::CompareHq => return compare_hq(&config, &log_dir),
        Command::Dump { from, limit } => dump(&config, &log_dir, Offset(from), limit)?,
        Command::Stats { json } => stats(&config, &log_dir, json)?,
        Command::Search {
            query,
            from,
            to,
            network,
            participant,
            channel,
            conversation,
            site,
            sort,
            limit,
            cursor,
            client,
        } => {
            let mut q = vec![("q", query), ("sort", sort), ("limit", limit.to_string())];
            let opt = [
                ("from", from),
                ("to", to),
                ("network", network),
                ("participant", participant),
                ("channel", channel),
                ("site", site),
                ("cursor", cursor),
            ];
            q.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            q.extend(conversation.map(|c| ("conversation", c.to_string())));
            let answer = get_json(&config, &client, "/v1/search", &q)?;
            print_search(&answer, client.json)?;
        }
        Command::Conversation { id, site, around, context, client } => {
            let mut q: Vec<(&str, String)> = site.map(|s| ("site", s)).into_iter().collect();
            if let Some(a) = around {
                q.extend([("around", a.to_string()), ("context", context.to_string())]);
            }
            let answer = get_json(&config, &client, &format!("/v1/conversations/{id}"), &q)?;
            print_conversation(&answer, client.json)?;
        }
        Command::Sql { query, csv, client } => sql(&config, &client, &query, csv)?,
        Command::Sizing {
            seats,
            avg_dur,
            msg_length,
            avg_number,
            msg_rate,
            compression,
            measured,
            retention_days,
            url,
            ca,
            token,
            json,
        } => {
            if measured {
                let token = token.context("--measured needs a token (--token or VERBATIM_TOKEN)")?;
                let client = ClientArgs { url, ca, token, json };
                let mut q = vec![("compression", compression.to_string())];
                q.extend(retention_days.map(|r| ("retention_days", r.to_string())));
                let answer = get_json(&config, &client, "/v1/capacity", &q)?;
                print_capacity(&answer, json)?;
            } else {
                let input = crate::sizing::SizingInput {
                    seats: seats.unwrap_or_default(),
                    avg_dur_secs: avg_dur.unwrap_or_default(),
                    msg_rate,
                    msg_length: msg_length.unwrap_or_default(),
                    avg_number: avg_number.unwrap_or_default(),
                    compression,
                };
                input.check().map_err(|e| anyhow::anyhow!(e))?;
                let sizing = input.sizing();
                if json {
                    println!("{}", serde_json::to_string_pretty(&sizing)?);
                } else {
                    print_sizing(&serde_json::to_value(sizing)?);
                }
            }
        }
        Command::Report { name, from, to, csv, client } => {
            if name == "list" {
                for r in crate::sql::reports::REPORTS {
                    println!("{:<28} {}", r.name, crate::sql::reports::description(r));
                }
            } else {
                let q: Vec<(&str, String)> =
                    [("from", from), ("to", to)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
                let path = format!("/v1/reports/{name}");
                let accept = if csv { "text/csv" } else { "application/json" };
                let text = fetch(&config, &client, &path, &q, None, accept)?;
                print_answer(&text, csv, client.json)?;
            }
        }
        Command::Audit { from, limit, json } => audit(&config, Offset(from), limit, json)?,
        Command::Reindex => reindex(&config, &log_dir)?,
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

/// The log, then every replica under `<data>/replicas/`.
fn verify_all(data: &crate::paths::DataDir) -> anyhow::Result<ExitCode> {
    let mut ok = verify(&data.log())?;
    let replicas = data.replicas();
    if replicas.is_dir() {
        let mut sites = FsStorage.list(&replicas)?;
        sites.sort();
        for site in sites.into_iter().filter(|s| crate::ship::valid_site(s)) {
            print!("replica of site {site}: ");
            ok &= verify(&replicas.join(&site))?;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Asks HQ where it stands for this site and compares its chain link with
/// this log's at the same offset.
fn compare_hq(config: &Config, log_dir: &Path) -> anyhow::Result<ExitCode> {
    require_log(log_dir)?;
    let (Some(url), Some(token)) = (&config.site.hq_url, &config.site.hq_token) else {
        anyhow::bail!("compare-hq needs site.hq_url and site.hq_token (a regional site's config)");
    };
    let url = format!("{}/v1/replication/{}", url.trim_end_matches('/'), config.site.id);
    let resp =
        agent(60, config.site.hq_ca.as_deref())?.get(&url).header("Authorization", &format!("Bearer {token}")).call();
    let hw: crate::ship::HighWater = serde_json::from_str(&answer_text(&url, resp)?).context("HQ's answer")?;
    let reader = crate::log::open_read_only(&FsStorage, log_dir, &config.log_config())?;
    let head = reader.head().0;
    println!("site {}: this log's head {head}; HQ holds {} records, chain {}", config.site.id, hw.high_water, hw.chain);
    if hw.high_water > head {
        println!("FORK: HQ holds more records of this site than this log");
        return Ok(ExitCode::from(1));
    }
    let mine = reader.chain_at(Offset(hw.high_water))?.to_hex();
    if mine != hw.chain {
        println!("FORK: this log's chain at offset {} is {mine}", hw.high_water);
        return Ok(ExitCode::from(1));
    }
    println!("same chain at offset {}; {} records not yet at HQ", hw.high_water, head - hw.high_water);
    Ok(ExitCode::SUCCESS)
}

/// Verifies one log directory and prints what it found; true if undamaged.
fn verify(dir: &Path) -> anyhow::Result<bool> {
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
            Ok(false)
        }
        None => {
            println!("ok");
            Ok(true)
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
        println!("data bytes    {}", s.file_bytes);
        println!("record bytes  {}", s.raw_bytes);
        println!("compression   {:.2}x", s.compression_ratio);
        println!("bytes/event   {:.1}", s.bytes_per_event);
    }
    Ok(())
}

fn base_url(config: &Config, client: &ClientArgs) -> String {
    let scheme = if config.http.tls_cert.is_some() { "https" } else { "http" };
    client.url.clone().unwrap_or_else(|| format!("{scheme}://{}", config.http.listen)).trim_end_matches('/').to_string()
}

/// The HTTP client; HTTPS trusts exactly the certificates in `ca` if given.
fn agent(timeout_secs: u64, ca: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let certs = ca.map(crate::tls::ca_certs).transpose()?;
    Ok(crate::tls::agent(std::time::Duration::from_secs(timeout_secs), certs))
}

/// The answer's text if the status is 200; the server's error otherwise.
fn answer_text(base: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<String> {
    let mut resp = resp.with_context(|| format!("reaching the server at {base}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().context("reading the answer")?;
    if status != 200 {
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("the server answered {status} with: {text}"))?;
        let detail = value.get("detail").filter(|d| !d.is_null()).map(|d| format!(" ({d})")).unwrap_or_default();
        anyhow::bail!("{status}: {}{detail}", value["error"].as_str().unwrap_or(&text));
    }
    Ok(text)
}

fn get_json(
    config: &Config,
    client: &ClientArgs,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<serde_json::Value> {
    let base = base_url(config, client);
    let mut req = agent(60, client.ca.as_deref())?
        .get(&format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {}", client.token));
    for (k, v) in query {
        req = req.query(*k, v);
    }
    let text = answer_text(&base, req.call())?;
    serde_json::from_str(&text).with_context(|| format!("the server answered with: {text}"))
}

/// A request to the server with the client's token (a POST of `body` if
/// given, else a GET); the answer's text.
fn fetch(
    config: &Config,
    client: &ClientArgs,
    path: &str,
    query: &[(&str, String)],
    body: Option<Vec<u8>>,
    accept: &str,
) -> anyhow::Result<String> {
    let base = base_url(config, client);
    let url = format!("{base}{path}");
    let auth = format!("Bearer {}", client.token);
    let agent = agent(config.sql.timeout_ms / 1000 + 60, client.ca.as_deref())?;
    let resp = match body {
        Some(b) => {
            let mut req = agent.post(&url).header("Authorization", &auth).header("Accept", accept);
            for (k, v) in query {
                req = req.query(*k, v);
            }
            req.header("Content-Type", "application/json").send(b)
        }
        None => {
            let mut req = agent.get(&url).header("Authorization", &auth).header("Accept", accept);
            for (k, v) in query {
                req = req.query(*k, v);
            }
            req.call()
        }
    };
    answer_text(&base, resp)
}

/// Prints an SQL answer: CSV as is, JSON pretty, or a table.
fn print_answer(text: &str, csv: bool, json: bool) -> anyhow::Result<()> {
    if csv {
        print!("{text}");
        return Ok(());
    }
    let answer: serde_json::Value = serde_json::from_str(text).context("the answer is not JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", text_table(&answer));
    }
    Ok(())
}

/// `verbatim sql`: the query through `POST /v1/sql`, printed as a table,
/// as the server's JSON (`--json`) or as CSV (`--csv`).
fn sql(config: &Config, client: &ClientArgs, query: &str, csv: bool) -> anyhow::Result<()> {
    let accept = if csv { "text/csv" } else { "application/json" };
    let body = serde_json::to_vec(&serde_json::json!({ "sql": query }))?;
    let text = fetch(config, client, "/v1/sql", &[], Some(body), accept)?;
    print_answer(&text, csv, client.json)
}

fn print_sizing(s: &serde_json::Value) {
    let i = &s["input"];
    println!(
        "inputs: {} seats, AvgDur {} s, MsgRate {} msg/s, MsgLength {} B, AvgNumber {} conversations/day, Compression {}",
        i["seats"], i["avg_dur_secs"], i["msg_rate"], i["msg_length"], i["avg_number"], i["compression"]
    );
    println!("{:<60} {:>14} {:>14} {:>14} {:>16}", "", "B/conversation", "MB/day", "MB/month", "MB/user/month");
    for (key, label) in [
        ("literal", "literal (as printed: 60 x AvgDur, AvgNumber counted twice)"),
        ("consistent", "consistent (AvgDur in seconds, AvgNumber once)"),
    ] {
        let e = &s[key];
        let f = |k: &str| e[k].as_f64().unwrap_or(0.0);
        println!(
            "{label:<60} {:>14.1} {:>14.3} {:>14.3} {:>16.4}",
            f("bytes_per_conversation"),
            f("daily_mb"),
            f("monthly_mb"),
            f("mb_per_user_per_month")
        );
    }
    let rule = s["rule_of_thumb_monthly_mb"].as_f64().unwrap_or(0.0);
    println!(
        "{:<60} {:>14} {:>14.3} {:>14.3} {:>16.4}",
        "rule of thumb (0.5 MB per user per month)",
        "",
        rule / 30.0,
        rule,
        0.5
    );
}

fn print_capacity(c: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    print_sizing(&c["formula"]);
    let m = &c["measured"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!();
    println!("measured in this archive:");
    let d = &m["bytes_on_disk"];
    println!(
        "  bytes on disk: log {} + index {} + rollups {} + state {} = {}",
        d["log"], d["index"], d["rollups"], d["state"], d["total"]
    );
    println!(
        "  bytes per user per day: {:.1} (the consistent formula predicts {:.1}, the literal one {:.1})",
        f(&m["bytes_per_user_per_day"]),
        f(&m["consistent_formula_bytes_per_user_per_day"]),
        f(&m["literal_formula_bytes_per_user_per_day"])
    );
    println!("  MB per user per month: {:.4} (rule of thumb 0.5)", f(&m["mb_per_user_per_month"]));
    let fc = &c["forecast"];
    println!();
    println!("forecast: growth {:.0} B/day", f(&fc["growth_bytes_per_day"]));
    match fc["days_until_full"].as_f64() {
        Some(days) => {
            println!("  the data volume ({} B free) is full in {days:.0} days at that rate", fc["volume_free_bytes"])
        }
        None => println!("  no growth measured: no forecast of the data volume"),
    }
    match fc["steady_state_bytes"].as_f64() {
        Some(b) => {
            let from = match fc["retention_from"].as_str() {
                Some("config") => " ([capacity] retention_days)",
                _ => "",
            };
            println!("  under {} days of retention{from} the archive settles at {b:.0} B", fc["retention_days"])
        }
        None => println!(
            "  no retention configured ([capacity] retention_days) or given (--retention-days): \
             the archive grows without bound"
        ),
    }
    Ok(())
}

/// A `{"columns", "rows"}` answer as an aligned text table, cells escaped by [`printable`].
fn text_table(answer: &serde_json::Value) -> String {
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .map(|a| a.iter().map(|c| printable(c.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => printable(s),
        other => printable(&other.to_string()),
    };
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter().map(|r| r.as_array().map(|r| r.iter().map(cell).collect()).unwrap_or_default()).collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        format!(" {}\n", padded.join(" | ").trim_end())
    };
    let mut out = line(&columns);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("-{}-\n", rule.join("-+-")));
    for r in &rows {
        out.push_str(&line(r));
    }
    let n = rows.len();
    out.push_str(&format!("({n} row{})\n", if n == 1 { "" } else { "s" }));
    out
}

/// Text for a terminal: control and bidirectional-formatting characters are
/// shown escaped (`\u{202e}`), so stored content cannot move the cursor or
/// reorder what is printed. `--json` keeps everything byte-exact.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c as u32, 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069 | 0x061C);
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// One event as a transcript line: time, network/channel, sender -> recipients, body.
fn event_line(e: &serde_json::Value) -> String {
    let s = |k: &str| printable(e[k].as_str().unwrap_or(""));
    let to: Vec<String> =
        e["to"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).map(printable).collect()).unwrap_or_default();
    let place = match e["channel"].as_str() {
        Some(c) => format!("{}/{}", s("network"), printable(c)),
        None => s("network"),
    };
    format!("[{}] #{} {place} {} -> {}: {}", s("ts"), e["offset"], s("from"), to.join(","), s("body"))
}

fn print_search(answer: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(());
    }
    let hits = answer["hits"].as_array().cloned().unwrap_or_default();
    for h in &hits {
        println!("{}  (conversation {} at {})", event_line(h), h["conversation_id"], h["site"].as_str().unwrap_or(""));
    }
    let at_least = if answer["total_exact"] == false { "at least " } else { "" };
    println!(
        "-- {} of {at_least}{} matches; index covers offsets below {}",
        hits.len(),
        answer["total"],
        answer["index_watermark"]
    );
    if let Some(c) = answer["next_cursor"].as_str() {
        println!("-- more: --cursor {c}");
    }
    Ok(())
}

fn print_conversation(answer: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(());
    }
    let c = &answer["conversation"];
    let who: Vec<&str> =
        c["participants"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    println!(
        "conversation {} of site {} on {}{}: {} events, {} to {}",
        c["id"],
        c["site"].as_str().unwrap_or(""),
        c["network"].as_str().unwrap_or(""),
        c["channel"].as_str().map(|ch| format!(" {ch}")).unwrap_or_default(),
        c["events"],
        c["started_at"].as_str().unwrap_or(""),
        c["ended_at"].as_str().unwrap_or("")
    );
    println!("participants: {}", who.join(", "));
    for e in answer["events"].as_array().into_iter().flatten() {
        println!("{}", event_line(e));
    }
    if c["truncated"].as_bool() == Some(true) {
        println!("-- truncated at the configured search.max_transcript_events");
    }
    Ok(())
}

fn audit(config: &Config, from: Offset, limit: Option<u64>, json: bool) -> anyhow::Result<()> {
    let dir = config.data().audit();
    anyhow::ensure!(
        dir.is_dir(),
        "no audit stream at {} (no read has been served yet, or wrong --data-dir?)",
        dir.display()
    );
    let reader = open_read_only(&FsStorage, &dir, &config.log_config())?;
    let out = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(out);
    if !json {
        writeln!(
            out,
            "{:<8} {:<30} {:<14} {:<8} {:<13} {:>7}  QUERY",
            "OFFSET", "TIME", "TOKEN", "ROLE", "ENDPOINT", "RESULTS"
        )?;
    }
    for item in reader.iter_from(from).take(limit.map_or(usize::MAX, |l| l as usize)) {
        let (offset, r) = item?;
        let line = if json {
            r.to_json(offset)
        } else {
            let body: serde_json::Value = serde_json::from_str(&r.event.body).unwrap_or_default();
            format!(
                "{:<8} {:<30} {:<14} {:<8} {:<13} {:>7}  {}",
                offset.0,
                r.received_at.to_rfc3339(),
                r.event.from,
                r.event.to.first().map_or("", String::as_str),
                r.event.channel.as_deref().unwrap_or(""),
                body["results"],
                printable(&body["query"].to_string())
            )
        };
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    out.flush().or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })?;
    Ok(())
}

/// Deletes the index and builds it again from the whole log.
fn reindex(config: &Config, log_dir: &Path) -> anyhow::Result<()> {
    require_log(log_dir)?;
    let data = config.data();
    let _lock = data.lock()?;
    let reader = open_read_only(&FsStorage, log_dir, &config.log_config())?;
    let dir = data.index();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let (index, fields) = crate::index::open(&dir)?;
    let mut writer: tantivy::IndexWriter<tantivy::TantivyDocument> = index
        .writer_with_num_threads(config.index.writer_threads.max(1), config.index.writer_memory_mb.max(16) << 20)?;
    let head = reader.head();
    let bar = progress_bar(head.0, "indexing");
    let started = std::time::Instant::now();
    let mut next = Offset::ZERO;
    while next < head {
        let end = crate::index::indexer::add_from(&writer, &fields, &reader, next, 1_000_000)?;
        anyhow::ensure!(end > next, "the log stopped at {next} before its head {head}");
        crate::index::indexer::commit(&mut writer, end)?;
        bar.inc(end.0 - next.0);
        next = end;
    }
    crate::index::indexer::commit(&mut writer, next)?;
    writer.wait_merging_threads()?;
    bar.finish_and_clear();
    let searcher = index.reader()?.searcher();
    let check = crate::index::indexer::reconcile(&searcher, &fields, next, true);
    anyhow::ensure!(check.ok, "the rebuilt index does not match the log: {:?}", check.detail);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "indexed {} events in {secs:.1} s ({:.0} events/s); every offset checked",
        next.0,
        next.0 as f64 / secs.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_output_escapes_controls_and_bidi_overrides() {
        assert_eq!(printable("a\u{202E}b\u{0}c\n👩‍💻"), "a\\u{202e}b\\u{0}c\\u{a}👩‍💻");
        let e = serde_json::json!({"ts": "t", "offset": 1, "network": "irc", "from": "x\u{1b}[2J", "to": ["y"], "body": "ok"});
        assert_eq!(event_line(&e), "[t] #1 irc x\\u{1b}[2J -> y: ok");
    }
}
