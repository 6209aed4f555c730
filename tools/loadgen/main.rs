//! `verbatim-loadgen`: realistic chat load against `POST /v1/events`, with
//! every acknowledged event recorded, and a `check` that proves afterwards
//! that every acknowledged `(source, seq)` is in the archive exactly once and
//! byte-exact.
//!
//! ```text
//! verbatim-loadgen run   --url URL --token T [--clients 4] [--batch 100] [--events N | --seconds S]
//!                        [--seed 42] [--acks FILE] [--state DIR] [--stop-file PATH]
//! verbatim-loadgen check --acks FILE --archive DUMP.ndjson
//! verbatim-loadgen gen   --events N [--clients 1] [--seed 42]      (NDJSON on stdout)
//! verbatim-loadgen query --url URL --token T --queries FILE [--clients 1] [--passes 3]
//! verbatim-loadgen probe --url URL --ingest-token T --token T [--probes 100]
//! verbatim-loadgen floor --dir DIR [--listen 127.0.0.1:0] [--workers N] [--writer-thread]
//! ```
//! `query` times `GET /v1/search` (bodies included) per request; `probe`
//! measures time to searchable: from the ack of an event carrying a unique
//! word to the first search that finds it.
//! `run` keeps retrying a batch (same keys, same content) through 429, 503
//! and refused connections until it is acknowledged, so it can run straight
//! through server crashes; `--state` lets a later run resume where it stopped.
//! `floor` serves the two timed endpoints with nothing but an append and an
//! `fdatasync` per request: the lower bound the benchmarks set Verbatim beside.

mod floor;
mod gen;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "verbatim-loadgen", about = "Chat load for Verbatim's ingest endpoint, and its checker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Check {
        #[arg(long)]
        acks: PathBuf,
        /// The archive as `verbatim dump` prints it.
        #[arg(long)]
        archive: PathBuf,
    },
    Gen {
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        clients: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    Query(QueryArgs),
    Probe(ProbeArgs),
    /// Serve `POST /v1/events` and `GET /v1/search` with an append and an fdatasync each, nothing more.
    Floor(floor::FloorArgs),
}

#[derive(clap::Args, Clone)]
struct QueryArgs {
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    /// Auditor token.
    #[arg(long, env = "VERBATIM_TOKEN")]
    token: String,
    /// One query a line: `word|and|phrase<TAB>words` (the shared peers' format) or a query as is.
    #[arg(long)]
    queries: PathBuf,
    /// Concurrent clients; each runs every query in every pass.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Timed passes, after one untimed warm-up pass unless --cold.
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// No warm-up: the first pass is timed (caches as the server found them).
    #[arg(long)]
    cold: bool,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, default_value = "time")]
    sort: String,
}

#[derive(clap::Args, Clone)]
struct ProbeArgs {
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    /// Ingest token that may write source `loadgen-probe`.
    #[arg(long)]
    ingest_token: String,
    /// Auditor token.
    #[arg(long, env = "VERBATIM_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 100)]
    probes: u32,
    /// Pause between probes.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// How often a probe searches for its word.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    #[arg(long, env = "VERBATIM_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 4)]
    clients: u32,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Total events across clients (default: until --seconds or --stop-file).
    #[arg(long)]
    events: Option<u64>,
    #[arg(long)]
    seconds: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Appends every acknowledged event (as sent) to this file.
    #[arg(long)]
    acks: Option<PathBuf>,
    /// Remembers each client's next sequence number here, to resume (written
    /// when the client stops).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Stop (after the batch in flight is acknowledged) once this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Offered rate in events/s across clients (default: as fast as acks come).
    #[arg(long)]
    rate: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a).map(|()| true),
        Command::Check { acks, archive } => check(&acks, &archive),
        Command::Gen { events, clients, seed } => gen_events(events, clients, seed).map(|()| true),
        Command::Query(a) => query(&a).map(|()| true),
        Command::Probe(a) => probe(&a).map(|()| true),
        Command::Floor(a) => floor::floor(&a).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn gen_events(events: u64, clients: u32, seed: u64) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut gens: Vec<gen::Generator> = (0..clients).map(|c| gen::Generator::new(seed, c)).collect();
    for i in 0..events {
        let g = &mut gens[(i % u64::from(clients)) as usize];
        writeln!(out, "{}", g.next_event())?;
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    acked_events: AtomicU64,
    acked_bytes: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

fn state_file(dir: &Path, client: u32) -> PathBuf {
    dir.join(format!("client-{client}.next"))
}

enum Sent {
    Acked(Value),
    Retry(Duration),
}

fn post(agent: &ureq::Agent, args: &RunArgs, body: &[u8]) -> anyhow::Result<Sent> {
    let url = format!("{}/v1/events", args.url.trim_end_matches('/'));
    let resp = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", args.token))
        .header("Content-Type", "application/x-ndjson")
        .send(body);
    let mut resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Io(_))
        | Err(ureq::Error::Protocol(_))
        | Err(ureq::Error::Timeout(_))
        | Err(ureq::Error::ConnectionFailed) => return Ok(Sent::Retry(Duration::from_millis(50))),
        Err(e) => return Err(e.into()),
    };
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
    let mut text = String::new();
    if resp.body_mut().as_reader().read_to_string(&mut text).is_err() {
        return Ok(Sent::Retry(Duration::from_millis(50)));
    }
    match status {
        200 => Ok(Sent::Acked(serde_json::from_str(&text).context("reply is not JSON")?)),
        429 | 503 => Ok(Sent::Retry(Duration::from_millis((retry * 1000).min(1000)))),
        _ => anyhow::bail!("server answered {status}: {text}"),
    }
}

fn run_client(
    client: u32,
    args: &RunArgs,
    per_client: Option<u64>,
    deadline: Option<Instant>,
    acks: Option<&Mutex<BufWriter<std::fs::File>>>,
    stats: &Stats,
) -> anyhow::Result<()> {
    let agent = agent(Duration::from_secs(30));
    let mut g = gen::Generator::new(args.seed, client);
    let start = match &args.state {
        Some(dir) => {
            std::fs::read_to_string(state_file(dir, client)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
        }
        None => 0,
    };
    g.skip_to(start);
    let mut next = start;
    let started = Instant::now();
    let pace = args.rate.map(|r| Duration::from_secs_f64(args.batch as f64 * f64::from(args.clients) / r));
    let mut batches = 0u32;
    // The state is written once, when the client stops: a write and a rename
    // after every ack would put the client's own metadata into each of the
    // server's fdatasyncs (one filesystem journal) and into its latency.
    let sent = (|| -> anyhow::Result<()> {
        loop {
            let stop = per_client.is_some_and(|n| next >= start + n)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || args.stop_file.as_ref().is_some_and(|f| f.exists());
            if stop {
                return Ok(());
            }
            if let Some(p) = pace {
                let due = started + p * batches;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let n = per_client.map_or(args.batch as u64, |total| (start + total - next).min(args.batch as u64));
            let lines: Vec<String> = (0..n).map(|_| g.next_event().to_string()).collect();
            let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes();
            let reply = loop {
                let t = Instant::now();
                match post(&agent, args, &body)? {
                    Sent::Acked(v) => {
                        stats.latencies_us.lock().expect("stats").push(t.elapsed().as_micros() as u64);
                        break v;
                    }
                    Sent::Retry(wait) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(wait);
                    }
                }
            };
            stats.acked_events.fetch_add(n, Ordering::Relaxed);
            stats.acked_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            stats.duplicates.fetch_add(reply["duplicates"].as_u64().unwrap_or(0), Ordering::Relaxed);
            if let Some(acks) = acks {
                let mut w = acks.lock().expect("acks");
                w.write_all(&body)?;
                w.flush()?;
            }
            next += n;
            batches += 1;
        }
    })();
    if let Some(dir) = &args.state {
        let path = state_file(dir, client);
        std::fs::write(path.with_extension("tmp"), next.to_string())?;
        std::fs::rename(path.with_extension("tmp"), path)?;
    }
    sent
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.state {
        std::fs::create_dir_all(dir)?;
    }
    let acks = match &args.acks {
        Some(p) => Some(Mutex::new(BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?))),
        None => None,
    };
    let stats = Arc::new(Stats::default());
    let per_client = args.events.map(|n| n.div_ceil(u64::from(args.clients)));
    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..args.clients)
            .map(|c| {
                let (args, acks, stats) = (&args, acks.as_ref(), &stats);
                s.spawn(move || run_client(c, args, per_client, deadline, acks, stats))
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let mut lat = stats.latencies_us.lock().expect("stats").clone();
    lat.sort_unstable();
    let events = stats.acked_events.load(Ordering::Relaxed);
    let summary = json!({
        "clients": args.clients, "batch": args.batch, "seconds": secs,
        "events_acked": events, "events_per_sec": events as f64 / secs,
        "mb_per_sec": stats.acked_bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
        "duplicates": stats.duplicates.load(Ordering::Relaxed),
        "retries": stats.refused.load(Ordering::Relaxed),
        "ack_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99), "p999": pct(&lat, 0.999), "max": pct(&lat, 1.0)},
    });
    println!("{summary}");
    Ok(())
}

type Key = (String, u64);

fn key_of(v: &Value) -> anyhow::Result<Key> {
    Ok((v["source"].as_str().context("no source")?.to_string(), v["seq"].as_u64().context("no seq")?))
}

/// The fields a front end sent, normalized for comparison (ts as an instant).
fn sent_fields(v: &Value) -> Value {
    let ts =
        v["ts"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_nanos_opt());
    json!({
        "network": v["network"], "kind": v["kind"], "ts": ts, "from": v["from"],
        "to": if v["to"].is_null() { json!([]) } else { v["to"].clone() },
        "channel": v["channel"], "body": if v["body"].is_null() { json!("") } else { v["body"].clone() },
        "direction": v["direction"], "attrs": if v["attrs"].is_null() { json!({}) } else { v["attrs"].clone() },
    })
}

fn check(acks: &Path, archive: &Path) -> anyhow::Result<bool> {
    let mut expected: HashMap<Key, Value> = HashMap::new();
    for line in
        BufReader::new(std::fs::File::open(acks).with_context(|| format!("opening {}", acks.display()))?).lines()
    {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)?;
        expected.insert(key_of(&v)?, sent_fields(&v));
    }
    let mut seen: HashMap<Key, u32> = HashMap::new();
    let (mut mismatched, mut records) = (0u64, 0u64);
    for line in
        BufReader::new(std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?).lines()
    {
        let v: Value = serde_json::from_str(&line?)?;
        records += 1;
        let key = key_of(&v)?;
        if let Some(want) = expected.get(&key) {
            if &sent_fields(&v) != want {
                mismatched += 1;
                if mismatched <= 5 {
                    eprintln!("mismatch for {key:?}:\n  sent   {want}\n  stored {}", sent_fields(&v));
                }
            }
        }
        *seen.entry(key).or_default() += 1;
    }
    let missing = expected.keys().filter(|k| !seen.contains_key(*k)).count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let ok = missing == 0 && duplicated == 0 && mismatched == 0;
    println!(
        "{}",
        json!({"acknowledged": expected.len(), "archive_records": records, "missing": missing, "duplicated": duplicated, "mismatched": mismatched, "ok": ok})
    );
    Ok(ok)
}

/// An HTTP client whose every step (connect, send, await the answer, read
/// it) may take `timeout`. Not one `timeout_global`: under any timeout that
/// covers name resolution, ureq 3 resolves on a new thread per request, even
/// `127.0.0.1` over a pooled connection, and every latency this tool measured
/// included that thread's start.
fn agent(timeout: Duration) -> ureq::Agent {
    let t = Some(timeout);
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_send_body(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .build()
        .into()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A search answer as a client reads it: the total and every hit with the
/// fields an auditor's screen shows, bodies and snippets included. Typed and
/// borrowed from the answer's text where no escape needs undoing, as a Rust
/// client would read it: a `serde_json::Value` tree cost this client more CPU
/// than the server spent answering, and a `String` per field about a tenth
/// of the page's 0.1 ms parse (docs/benchmarks.md, 2026-12-07).
#[derive(serde::Deserialize)]
struct SearchPage<'a> {
    #[serde(borrow)]
    hits: Vec<SearchHit<'a>>,
    total: u64,
}

#[derive(serde::Deserialize)]
struct SearchHit<'a> {
    offset: u64,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    network: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(borrow)]
    snippet: Cow<'a, str>,
}

impl SearchHit<'_> {
    /// Bytes of text the hit brought (a page that lost its bodies shows here).
    fn text_bytes(&self) -> usize {
        let fields = [&self.ts, &self.network, &self.kind, &self.from, &self.body, &self.snippet];
        fields.iter().map(|f| f.len()).sum::<usize>()
            + self.to.iter().map(|t| t.len()).sum::<usize>()
            + self.channel.as_ref().map_or(0, |c| c.len())
    }
}

/// `GET /v1/search`: (status, total, hits on the page, text bytes read, body
/// of a refusal, when the whole answer had arrived, before it was parsed).
fn search_once(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    query: &str,
) -> anyhow::Result<(u16, u64, usize, usize, String, Instant)> {
    let mut resp = agent
        .get(&format!("{base}/v1/search?{query}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .context("search request")?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().context("search answer")?;
    let received = Instant::now();
    if status != 200 {
        return Ok((status, 0, 0, 0, text, received));
    }
    let page: SearchPage = serde_json::from_str(&text).context("search answer is not a page of hits")?;
    let mut offsets: Vec<u64> = page.hits.iter().map(|h| h.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    anyhow::ensure!(offsets.len() == page.hits.len(), "a page of {query} named an event twice");
    let bytes = page.hits.iter().map(SearchHit::text_bytes).sum();
    Ok((status, page.total, page.hits.len(), bytes, String::new(), received))
}

fn pct_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn query(a: &QueryArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.queries).with_context(|| format!("reading {}", a.queries.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    let queries: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "q={}&limit={}&sort={}",
                percent_encode(&verbatim::index::search::query_of_queries_line(l)),
                a.limit,
                a.sort
            )
        })
        .collect();
    // The peers' kinds (`word`, `and`, `phrase`), so their per-kind rows have one beside them.
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| match l.split_once('\t') {
            Some((k @ ("word" | "and" | "phrase"), _)) => k,
            _ => "query",
        })
        .collect();
    anyhow::ensure!(!queries.is_empty(), "no queries in {}", a.queries.display());
    let base = a.url.trim_end_matches('/').to_string();
    // Per timed request: (µs to the parsed answer, µs to its last byte, kind).
    let samples = Mutex::new(Vec::new());
    let hits = AtomicU64::new(0);
    let text = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..a.clients)
            .map(|c| {
                let (queries, kinds, base, samples, hits, text) = (&queries, &kinds, &base, &samples, &hits, &text);
                s.spawn(move || -> anyhow::Result<()> {
                    let agent = agent(Duration::from_secs(60));
                    let warm = u32::from(!a.cold);
                    for pass in 0..a.passes + warm {
                        // Clients start at different queries so they do not move in step.
                        let n = queries.len();
                        for i in 0..n {
                            let at = (i + c as usize * n / a.clients.max(1) as usize) % n;
                            let q = &queries[at];
                            let t = Instant::now();
                            let (status, _, page, bytes, body, received) = search_once(&agent, base, &a.token, q)?;
                            let us = t.elapsed().as_micros() as u64;
                            anyhow::ensure!(status == 200, "search {q} answered {status}: {body}");
                            if pass >= warm {
                                let arrived = received.duration_since(t).as_micros() as u64;
                                samples.lock().expect("lock").push((us, arrived, kinds[at]));
                                hits.fetch_add(page as u64, Ordering::Relaxed);
                                text.fetch_add(bytes as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("query client panicked"))??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let samples = samples.into_inner().expect("lock");
    let mut by_kind: std::collections::BTreeMap<&str, Vec<u64>> = std::collections::BTreeMap::new();
    for &(us, _, kind) in &samples {
        by_kind.entry(kind).or_default().push(us);
    }
    let mut lat: Vec<u64> = samples.iter().map(|s| s.0).collect();
    lat.sort_unstable();
    let mut arrived: Vec<u64> = samples.iter().map(|s| s.1).collect();
    arrived.sort_unstable();
    for v in by_kind.values_mut() {
        v.sort_unstable();
    }
    let per_kind = |p: f64| -> serde_json::Map<String, Value> {
        by_kind.iter().map(|(k, v)| (k.to_string(), json!(pct_us(v, p)))).collect()
    };
    let out = json!({
        "queries": queries.len(), "clients": a.clients, "passes": a.passes, "cold": a.cold, "requests": lat.len(),
        "p50_ms": pct_us(&lat, 0.5), "p99_ms": pct_us(&lat, 0.99), "p999_ms": pct_us(&lat, 0.999),
        // The same requests timed to the answer's last byte, before the client parsed it.
        "received_p50_ms": pct_us(&arrived, 0.5), "received_p99_ms": pct_us(&arrived, 0.99),
        "per_kind_p50_ms": per_kind(0.5), "per_kind_p99_ms": per_kind(0.99),
        "max_ms": pct_us(&lat, 1.0), "mean_ms": lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0,
        "hits_per_query": hits.load(Ordering::Relaxed) as f64 / lat.len().max(1) as f64,
        "text_bytes_per_query": text.load(Ordering::Relaxed) as f64 / lat.len().max(1) as f64,
        "wall_seconds": secs,
    });
    println!("{out}");
    Ok(())
}

fn probe(a: &ProbeArgs) -> anyhow::Result<()> {
    let agent = agent(Duration::from_secs(60));
    let base = a.url.trim_end_matches('/').to_string();
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let mut lat = Vec::new();
    for i in 0..a.probes {
        let word = format!("probe{nonce}x{i}");
        let event = json!({"source": "loadgen-probe", "seq": u64::from(i) + 1, "network": "irc", "kind": "message",
                           "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "from": "prober", "to": ["archive"], "body": format!("looking for {word} here")});
        let resp = agent
            .post(&format!("{base}/v1/events"))
            .header("Authorization", &format!("Bearer {}", a.ingest_token))
            .header("Content-Type", "application/x-ndjson")
            .send(format!("{event}\n").as_bytes());
        let mut resp = resp.context("probe ingest")?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        anyhow::ensure!(status == 200, "probe ingest answered {status}: {body}");
        let acked = Instant::now();
        let q = format!("q={word}&limit=1");
        loop {
            let (status, total, _, _, body, _) = search_once(&agent, &base, &a.token, &q)?;
            anyhow::ensure!(status == 200, "probe search answered {status}: {body}");
            if total > 0 {
                lat.push(acked.elapsed().as_micros() as u64);
                break;
            }
            anyhow::ensure!(acked.elapsed() < Duration::from_secs(60), "{word} not searchable after 60 s");
            std::thread::sleep(Duration::from_millis(a.poll_ms));
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
    lat.sort_unstable();
    println!(
        "{}",
        json!({"probes": lat.len(), "p50_ms": pct_us(&lat, 0.5), "p99_ms": pct_us(&lat, 0.99), "max_ms": pct_us(&lat, 1.0)})
    );
    Ok(())
}
