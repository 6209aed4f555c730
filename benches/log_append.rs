//! Log append benchmark (release; not run in CI). Prints, from one run on one
//! machine: the machine's fdatasync p50/p99 and zstd -1/-3 on the same events
//! as NDJSON (the references), then the log's durable append throughput with
//! concurrent appenders (group commit, ack after fdatasync), and bytes per
//! event on disk at offered rates of 100, 1,000 and 10,000 events/s and flat
//! out, before and after sealing.
//!
//! `tools/bench-log.sh` prepares the shared 1M-event workload and runs this:
//! `cargo bench --bench log_append -- --events FILE [--n N] [--rate-secs S] [--dir DIR]`

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use verbatim::log::io::FsStorage;
use verbatim::log::{Log, LogConfig, LogHandle, PassThrough};
use verbatim::metrics::LogMetrics;
use verbatim_schema::{parse_ndjson, Limits, Record, RecordFlags, SiteId, UnixNanos};

struct Args {
    events: PathBuf,
    n: usize,
    rate_secs: u64,
    dir: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut events = std::env::var_os("VERBATIM_BENCH_EVENTS").map(PathBuf::from);
    let mut n = 1_000_000;
    let mut rate_secs = 20;
    let mut dir = std::env::temp_dir();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--events" => events = it.next().map(PathBuf::from),
            "--n" => n = it.next().context("--n N")?.parse()?,
            "--rate-secs" => rate_secs = it.next().context("--rate-secs S")?.parse()?,
            "--dir" => dir = it.next().context("--dir DIR")?.into(),
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let events = events.context("give --events FILE (tools/bench-workload.sh makes one)")?;
    Ok(Args { events, n, rate_secs, dir })
}

struct Workload {
    ndjson: Vec<Vec<u8>>,
    records: Vec<Record>,
}

fn load(path: &Path, n: usize) -> anyhow::Result<Workload> {
    let limits = Limits::default();
    let mut ndjson = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for line in BufReader::new(std::fs::File::open(path)?).split(b'\n').take(n) {
        let line = line?;
        let w = parse_ndjson(&line, 1)?.pop().context("empty line")?;
        let event = limits.validate(w).map_err(|e| anyhow::anyhow!("{e}"))?;
        records.push(Record {
            received_at: UnixNanos(0),
            site: SiteId::new("bench"),
            conversation_id: None,
            flags: RecordFlags::default(),
            event,
        });
        let mut l = line;
        l.push(b'\n');
        ndjson.push(l);
    }
    Ok(Workload { ndjson, records })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn fdatasync_reference(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("fdatasync.probe");
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    let block = vec![7u8; 4096];
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_file(&path)?;
    lat.sort_by(f64::total_cmp);
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

/// zstd on the concatenated NDJSON, one thread, like `zstd -T1 -LEVEL`.
fn zstd_reference(ndjson: &[Vec<u8>], level: i32) -> anyhow::Result<(f64, f64)> {
    let all: Vec<u8> = ndjson.concat();
    let t = Instant::now();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level)?;
    enc.write_all(&all)?;
    let out = enc.finish()?;
    let secs = t.elapsed().as_secs_f64();
    Ok((ndjson.len() as f64 / secs, out.len() as f64 / ndjson.len() as f64))
}

fn fresh_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = base.join(format!("verbatim-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

struct Run {
    events: usize,
    secs: f64,
    acks_ms: Vec<f64>,
    unsealed_bytes: u64,
    sealed_bytes: u64,
}

async fn close(handle: LogHandle, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let unsealed = dir_bytes(dir);
    handle.close().await.map_err(|e| anyhow::anyhow!(e))?;
    Ok((unsealed, dir_bytes(dir)))
}

fn start(dir: &Path, level: i32) -> anyhow::Result<LogHandle> {
    let config = LogConfig { compression_level: level, ..LogConfig::default() };
    let log = Log::open(Arc::new(FsStorage), dir, config)?;
    Ok(LogHandle::start(log, Box::new(PassThrough), Arc::new(LogMetrics::default())).0)
}

/// Closed loop: `appenders` tasks, each appending its share in `batch`-sized batches.
async fn flat_out(w: &Workload, dir: &Path, appenders: usize, batch: usize, level: i32) -> anyhow::Result<Run> {
    let handle = start(dir, level)?;
    let share = w.records.len() / appenders;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let h = handle.clone();
        let mine: Vec<Record> = w.records[a * share..(a + 1) * share].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(mine.len() / batch + 1);
            for chunk in mine.chunks(batch) {
                let t = Instant::now();
                h.append(chunk.to_vec()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                acks.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks_ms = Vec::new();
    for task in tasks {
        acks_ms.extend(task.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    let (unsealed_bytes, sealed_bytes) = close(handle, dir).await?;
    acks_ms.sort_by(f64::total_cmp);
    Ok(Run { events: share * appenders, secs, acks_ms, unsealed_bytes, sealed_bytes })
}

/// Open loop at `rate` events/s for `secs`: every tick sends its events
/// without waiting for earlier acks, as many independent front ends would.
async fn offered(w: &Workload, dir: &Path, rate: u64, secs: u64) -> anyhow::Result<Run> {
    let handle = start(dir, LogConfig::default().compression_level)?;
    let tick = Duration::from_millis(if rate >= 1000 { 1 } else { 1000 / rate });
    let per_tick = (rate as f64 * tick.as_secs_f64()).round().max(1.0) as usize;
    let total = ((rate * secs) as usize).min(w.records.len());
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    let mut sent = 0;
    let mut tasks = Vec::new();
    while sent < total {
        interval.tick().await;
        let n = per_tick.min(total - sent);
        let h = handle.clone();
        let batch = w.records[sent..sent + n].to_vec();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            h.append(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(t.elapsed().as_secs_f64() * 1e3)
        }));
        sent += n;
    }
    let mut acks_ms = Vec::new();
    for task in tasks {
        acks_ms.push(task.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    let (unsealed_bytes, sealed_bytes) = close(handle, dir).await?;
    acks_ms.sort_by(f64::total_cmp);
    Ok(Run { events: total, secs, acks_ms, unsealed_bytes, sealed_bytes })
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    std::fs::create_dir_all(&args.dir)?;
    let w = load(&args.events, args.n)?;
    let raw: usize = w.ndjson.iter().map(Vec::len).sum();
    println!(
        "workload: {} events from {}, NDJSON {:.1} B/event",
        w.records.len(),
        args.events.display(),
        raw as f64 / w.records.len() as f64
    );
    println!(
        "machine: {} cores; data in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.dir.display()
    );

    let (f50, f99) = fdatasync_reference(&args.dir)?;
    println!("\nreferences (same run)");
    println!("  fdatasync 4 KiB append      p50 {f50:.3} ms   p99 {f99:.3} ms");
    let mut zstd3 = 0.0;
    for level in [1, 3] {
        let (eps, bpe) = zstd_reference(&w.ndjson, level)?;
        println!("  zstd -{level} -T1 on the NDJSON   {:>9.0} events/s  {bpe:6.1} B/event", eps);
        if level == 3 {
            zstd3 = bpe;
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!("\ndurable append, flat out (ack after fdatasync; sealed = after sealing into 1 MiB zstd-3 blocks)");
    println!(
        "  {:<28} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>9}",
        "appenders x batch, level",
        "events/s",
        "MB/s",
        "ack p50",
        "ack p99",
        "ack p99.9",
        "B/ev open",
        "B/ev seal",
        "vs zstd3"
    );
    for (appenders, batch, level) in [(4, 1000, 1), (4, 1000, 3), (16, 100, 1), (64, 10, 1)] {
        let dir = fresh_dir(&args.dir, "flat")?;
        let r = rt.block_on(flat_out(&w, &dir, appenders, batch, level))?;
        let bytes: usize = w.ndjson[..r.events].iter().map(Vec::len).sum();
        let sealed = r.sealed_bytes as f64 / r.events as f64;
        println!(
            "  {:<28} {:>10.0} {:>8.1} {:>6.2}ms {:>6.2}ms {:>7.2}ms {:>10.1} {:>10.1} {:>8.2}x",
            format!("{appenders} x {batch}, zstd-{level}"),
            r.events as f64 / r.secs,
            bytes as f64 / r.secs / 1e6,
            pct(&r.acks_ms, 0.5),
            pct(&r.acks_ms, 0.99),
            pct(&r.acks_ms, 0.999),
            r.unsealed_bytes as f64 / r.events as f64,
            sealed,
            sealed / zstd3
        );
        std::fs::remove_dir_all(&dir)?;
    }

    println!(
        "\nbytes per event at offered rates ({} s each; reference: zstd -3 on the same events' NDJSON)",
        args.rate_secs
    );
    println!(
        "  {:<10} {:>8} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9}",
        "rate", "events", "ack p50", "ack p99", "B/ev open", "B/ev seal", "zstd-3", "vs zstd3"
    );
    for rate in [100u64, 1_000, 10_000] {
        let dir = fresh_dir(&args.dir, "rate")?;
        let r = rt.block_on(offered(&w, &dir, rate, args.rate_secs))?;
        let (_, z3) = zstd_reference(&w.ndjson[..r.events], 3)?;
        let sealed = r.sealed_bytes as f64 / r.events as f64;
        println!(
            "  {:<10} {:>8} {:>7.2}ms {:>7.2}ms {:>10.1} {:>10.1} {:>10.1} {:>8.2}x",
            format!("{rate}/s"),
            r.events,
            pct(&r.acks_ms, 0.5),
            pct(&r.acks_ms, 0.99),
            r.unsealed_bytes as f64 / r.events as f64,
            sealed,
            z3,
            sealed / z3
        );
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
