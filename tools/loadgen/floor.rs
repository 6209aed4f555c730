//! `verbatim-loadgen floor`: the least an HTTP server can do and still answer
//! as the latency goals require, so a benchmark can set Verbatim's figures
//! beside what any server on this machine would pay.
//!
//! `POST /v1/events` appends the body to one file and `fdatasync`s it before
//! the 200, as an ack after fsync must. `GET /v1/search` appends a short
//! record naming the query and `fdatasync`s it before answering an empty
//! page, as a read whose audit record must be durable first must. Nothing
//! else: no token, no parsing or validation, no encoding, no index, and no
//! hand-off (the worker that took the request writes and syncs). It runs on
//! axum and tokio, Verbatim's own HTTP stack, with the runtime Verbatim uses
//! (one worker per core) unless `--workers` says otherwise.
//!
//! `--writer-thread` adds back one thing Verbatim's ack path has and the
//! floor leaves out: the request hands its bytes to a single writer thread
//! (a `sync_channel` in, a oneshot back, as the log's writer does), so a
//! benchmark can tell the hand-offs' share of the latency.
//!
//! It is a lower bound for this endpoint's latency, not a server: it keeps
//! nothing a restart could read back as an archive.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(clap::Args, Clone)]
pub struct FloorArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for the file it appends to (created; the file is new each start).
    #[arg(long)]
    dir: PathBuf,
    /// Tokio worker threads (default: one per core, as Verbatim's runtime).
    #[arg(long)]
    workers: Option<usize>,
    /// Write and sync on one writer thread, reached by a channel, instead of
    /// on the request's worker.
    #[arg(long)]
    writer_thread: bool,
}

struct Appender {
    file: File,
    /// Events acknowledged so far: the next offset it reports.
    next: u64,
}

/// Where a request's bytes go: appended on the request's worker, or handed
/// to the writer thread with a oneshot for its answer.
#[derive(Clone)]
enum Shared {
    Inline(Arc<Mutex<Appender>>),
    Writer(std::sync::mpsc::SyncSender<Job>),
}

struct Job {
    bytes: Bytes,
    count: u64,
    reply: tokio::sync::oneshot::Sender<std::io::Result<(u64, u64)>>,
}

/// The one refusal it gives: the append or the sync failed.
type Refusal = (StatusCode, Json<Value>);

/// Appends `bytes` and syncs them; the offsets `count` records take.
fn append(a: &mut Appender, bytes: &[u8], count: u64) -> std::io::Result<(u64, u64)> {
    a.file.write_all(bytes)?;
    a.file.sync_data()?;
    let first = a.next;
    a.next += count;
    Ok((first, a.next))
}

/// Makes `bytes` durable the way `shared` says; the offsets `count` records
/// take. Inline, the tokio worker that took the request blocks for the
/// sync: what a server must not do and a floor may, since with the one
/// paced client the benchmarks use nothing else waits for that worker, and
/// `block_in_place` would add a hand-off of its own.
async fn write(shared: &Shared, bytes: Bytes, count: u64) -> std::io::Result<(u64, u64)> {
    match shared {
        Shared::Inline(a) => append(&mut a.lock().expect("appender lock"), &bytes, count),
        Shared::Writer(tx) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let gone = || std::io::Error::other("the writer thread stopped");
            tx.try_send(Job { bytes, count, reply }).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => std::io::Error::other("the writer's queue is full"),
                std::sync::mpsc::TrySendError::Disconnected(_) => gone(),
            })?;
            answer.await.map_err(|_| gone())?
        }
    }
}

/// Starts the writer thread, which owns the file from then on.
fn writer_thread(mut a: Appender) -> std::sync::mpsc::SyncSender<Job> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
    std::thread::spawn(move || {
        while let Ok(job) = rx.recv() {
            // A request that gave up no longer wants its answer.
            let _ = job.reply.send(append(&mut a, &job.bytes, job.count));
        }
    });
    tx
}

fn failed(e: std::io::Error) -> Refusal {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "write and sync failed", "detail": e.to_string()})))
}

async fn events(State(s): State<Shared>, body: Bytes) -> Result<Json<Value>, Refusal> {
    let count = body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    let (first, end) = write(&s, body, count).await.map_err(failed)?;
    Ok(Json(json!({"accepted": count, "duplicates": 0, "first_offset": first, "last_offset": end.saturating_sub(1)})))
}

async fn search(State(s): State<Shared>, RawQuery(q): RawQuery) -> Result<Json<Value>, Refusal> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let record = format!("{now}\tsearch\t{}\n", q.unwrap_or_default());
    write(&s, Bytes::from(record), 0).await.map_err(failed)?;
    Ok(Json(json!({"hits": [], "total": 0, "next_cursor": null})))
}

pub fn floor(a: &FloorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.listen.ip().is_loopback(), "the floor server listens on loopback only, not {}", a.listen);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let path = a.dir.join("floor.append");
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    File::open(&a.dir)?.sync_all()?;
    let appender = Appender { file, next: 0 };
    let shared = if a.writer_thread {
        Shared::Writer(writer_thread(appender))
    } else {
        Shared::Inline(Arc::new(Mutex::new(appender)))
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/events", post(events))
        .route("/v1/search", get(search))
        .with_state(shared);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.workers {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen).await?;
        // The port on stdout, alone on its line, for the script that started it.
        println!("{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}
