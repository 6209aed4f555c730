//! Capture proxy benchmark (release, not in CI; run by `tools/bench-capture.sh`).
//!
//! An in-process IRC echo server stands for the network (a real ngircd
//! throttles floods, which would measure its penalties, not the proxy). The
//! real `verbatim-proxy` binary relays to it and ships to a real server.
//! Printed: round-trip latency direct vs through the proxy (the difference is
//! what the proxy adds), relayed throughput, both in relaxed/express and
//! strict/recoverable, beside this disk's fdatasync latency measured in the
//! same run; then how many concurrent relayed connections the proxy holds and
//! its memory per connection.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Answers NICK with 001 and echoes every PRIVMSG back to the sender.
async fn echo_server() -> SocketAddr {
    echo_server_on("127.0.0.1:0".parse().expect("addr")).await
}

async fn echo_server_on(at: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(at).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut nick = String::from("*");
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if let Some(n) = line.strip_prefix("NICK ") {
                        nick = n.trim().to_owned();
                        format!(":echo.test 001 {nick} :Welcome\r\n")
                    } else if let Some(rest) = line.strip_prefix("PRIVMSG ") {
                        let text = rest.split_once(" :").map_or("", |(_, t)| t);
                        format!(":echo!e@echo.test PRIVMSG {nick} :{text}\r\n")
                    } else {
                        continue;
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr, nick: &str) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Client { lines: BufReader::new(r).lines(), w };
        c.w.write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n").as_bytes()).await?;
        c.next().await?;
        Ok(c)
    }

    async fn next(&mut self) -> std::io::Result<String> {
        self.lines.next_line().await?.ok_or_else(|| std::io::Error::other("closed"))
    }

    /// One message there and its echo back.
    async fn round_trip(&mut self, text: &str) -> std::io::Result<Duration> {
        let t = Instant::now();
        self.w.write_all(format!("PRIVMSG bob :{text}\r\n").as_bytes()).await?;
        self.next().await?;
        Ok(t.elapsed())
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(addr, "lat").await.expect("connect");
    for i in 0..200 {
        c.round_trip(&format!("warm-up {i}")).await.expect("warm-up");
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(c.round_trip(&format!("latency probe {i} with some text é")).await.expect("round trip"));
    }
    out.sort_unstable();
    out
}

/// `clients` connections each sending `each` messages as fast as the echoes return (window of 64).
async fn throughput(addr: SocketAddr, clients: usize, each: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, &format!("tp{k}")).await.expect("connect");
            let (mut sent, mut got) = (0, 0);
            while got < each {
                while sent < each && sent - got < 64 {
                    c.w.write_all(
                        format!("PRIVMSG bob :throughput {k} {sent} lorem ipsum dolor sit amet\r\n").as_bytes(),
                    )
                    .await
                    .expect("send");
                    sent += 1;
                }
                c.next().await.expect("echo");
                got += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    (clients * each) as f64 / t.elapsed().as_secs_f64()
}

fn fsync_reference(dir: &Path) -> (f64, f64) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let mut ts = Vec::new();
    for _ in 0..300 {
        f.write_all(&[b'x'; 256]).expect("write");
        let t = Instant::now();
        f.sync_data().expect("fdatasync");
        ts.push(t.elapsed());
    }
    ts.sort_unstable();
    let _ = std::fs::remove_file(path);
    (pct(&ts, 0.5), pct(&ts, 0.99))
}

/// What strict/recoverable waits for per message, without the network: the
/// recorder's `record()` (hand-off to the spool thread, write, fdatasync,
/// answer) alternated with a bare write + fdatasync of the same size on the
/// same file system, so both see the same disk.
async fn record_vs_fsync(work: &Path) -> ((f64, f64), (f64, f64)) {
    use verbatim_ingest::recorder::{Recorder, RecorderConfig};
    use verbatim_ingest::sender::SenderConfig;
    use verbatim_ingest::spool::{SpoolConfig, SpoolMode};
    let dir = work.join("record-probe");
    let rec = Recorder::start(RecorderConfig {
        source: "proxy-probe".into(),
        spool: SpoolConfig::new(&dir, SpoolMode::Recoverable),
        // Nothing listens there: the sender stays out of the way.
        sender: SenderConfig::new(vec![format!("http://{}", free_addr())], "t".into()),
        flush_every: Duration::from_secs(1),
        queue: 1024,
    })
    .expect("recorder");
    let event = verbatim_schema::WireEvent {
        source: String::new(),
        seq: 0,
        network: "irc".into(),
        kind: "message".into(),
        ts: "2026-11-22T00:00:00Z".into(),
        from: "alice".into(),
        to: vec!["bob".into()],
        channel: None,
        body: Some("latency probe with some text é".into()),
        direction: Some("outbound".into()),
        attrs: Default::default(),
    };
    let line_len = serde_json::to_vec(&event).expect("json").len() + 10;
    let mut raw =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("raw-probe")).expect("probe file");
    let (mut r, mut f) = (Vec::new(), Vec::new());
    for _ in 0..2000 {
        let t = Instant::now();
        rec.record(vec![event.clone()], false).await.expect("record");
        r.push(t.elapsed());
        let t = Instant::now();
        raw.write_all(&vec![b'x'; line_len]).expect("write");
        raw.sync_data().expect("fdatasync");
        f.push(t.elapsed());
    }
    tokio::task::spawn_blocking(move || rec.shutdown()).await.expect("shutdown");
    r.sort_unstable();
    f.sort_unstable();
    ((pct(&r, 0.5), pct(&r, 0.99)), (pct(&f, 0.5), pct(&f, 0.99)))
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

fn start_proxy(
    bin: &Path,
    work: &Path,
    echo: SocketAddr,
    mode: &str,
    spool_mode: &str,
    label: &str,
) -> (Child, SocketAddr) {
    let route = free_addr();
    let child = Command::new(bin)
        .args(["--route", &format!("{route}={echo}"), "--irc-ports", &echo.port().to_string()])
        .args(["--server", &env("SERVER_URL", "http://127.0.0.1:8090"), "--token", &env("TOKEN", "")])
        .args([
            "--source",
            &format!("proxy-bench-{label}-{}", std::process::id()),
            "--mode",
            mode,
            "--spool-mode",
            spool_mode,
        ])
        .arg("--spool")
        .arg(work.join(format!("spool-{label}")))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting verbatim-proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(route).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, route)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    if let Ok(role) = std::env::var("ROLE") {
        return child_role(&role).await;
    }
    let bin = PathBuf::from(env("PROXY_BIN", "target/release/verbatim-proxy"));
    let work = PathBuf::from(env("WORK", "/tmp"));
    let n: usize = env("MESSAGES", "5000").parse().expect("MESSAGES");
    let conns: usize = env("CONNS", "20000").parse().expect("CONNS");
    let echo = echo_server().await;
    let (f50, f99) = fsync_reference(&work);
    println!("fdatasync of 256 B on this disk, same run: p50 {f50:.3} ms, p99 {f99:.3} ms");

    let ((r50, r99), (w50, w99)) = record_vs_fsync(&work).await;
    println!(
        "one strict wait, alone: record() in a recoverable spool p50 {r50:.3} ms  p99 {r99:.3} ms; \
         interleaved bare write+fdatasync p50 {w50:.3} ms  p99 {w99:.3} ms"
    );
    let direct = latencies(echo, n).await;
    let direct_tp = throughput(echo, 8, n).await;
    println!(
        "direct           round trip p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms   throughput {direct_tp:.0} msg/s (8 clients)",
        pct(&direct, 0.5),
        pct(&direct, 0.99),
        pct(&direct, 0.999)
    );
    for (mode, spool) in [("relaxed", "express"), ("strict", "recoverable")] {
        let (child, route) = start_proxy(&bin, &work, echo, mode, spool, mode);
        let lat = latencies(route, n).await;
        let tp = throughput(route, 8, n).await;
        println!(
            "{mode:7}/{spool:11} round trip p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms   added p50 {:+.3} ms  p99 {:+.3} ms   \
             throughput {tp:.0} msg/s ({:.2}x direct); each round trip is two relayed messages",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            pct(&lat, 0.5) - pct(&direct, 0.5),
            pct(&lat, 0.99) - pct(&direct, 0.99),
            tp / direct_tp
        );
        stop(child);
    }

    concurrency(&bin, &work, conns).await;
}

/// Opens `count` relayed connections (one round trip each) to `route`.
async fn open_many(route: SocketAddr, count: usize, tag: &str) -> (Vec<Client>, usize) {
    let mut held = Vec::with_capacity(count);
    let mut failed = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let opened = futures::future::join_all(chunk.iter().map(|&i| async move {
            let mut c = Client::connect(route, &format!("{tag}{i}")).await?;
            c.round_trip("hello").await?;
            Ok::<_, std::io::Error>(c)
        }))
        .await;
        for c in opened {
            match c {
                Ok(c) => held.push(c),
                Err(_) => failed += 1,
            }
        }
    }
    (held, failed)
}

/// The soft limit on open files of this process.
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// Concurrency: relayed connections held open at once. A relayed connection
/// costs the proxy two descriptors, so past half the per-process limit the
/// connections are spread over several proxy processes (as one would run
/// several proxy workers); clients and echo servers run in child processes
/// of this benchmark for the same reason.
async fn concurrency(bin: &Path, work: &Path, conns: usize) {
    let per_proxy = (fd_limit() - 200) / 2;
    let proxies = conns.div_ceil(per_proxy);
    let per = conns.div_ceil(proxies);
    let me = std::env::current_exe().expect("own path");
    let mut groups = Vec::new();
    for i in 0..proxies {
        let port = free_addr();
        let echo = Command::new(&me)
            .env("ROLE", "echo")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("echo process");
        while std::net::TcpStream::connect(port).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (proxy, route) = start_proxy(bin, work, port, "relaxed", "express", &format!("c{i}"));
        groups.push((echo, proxy, route));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<u64> = groups.iter().map(|g| rss_kib(g.1.id())).collect();
    let t = Instant::now();
    let mut clients = Vec::new();
    for (_, _, route) in &groups {
        let c = Command::new(&me)
            .env("ROLE", "clients")
            .env("ROUTE", route.to_string())
            .env("COUNT", per.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client process");
        clients.push(c);
    }
    let mut opened = 0;
    let mut readers = Vec::new();
    for c in &mut clients {
        let mut r = std::io::BufReader::new(c.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).expect("opened line");
        opened += line.split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        readers.push(r);
    }
    let opened_in = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<u64> = groups.iter().map(|g| rss_kib(g.1.id())).collect();
    let mut alive = 0;
    for (c, r) in clients.iter_mut().zip(&mut readers) {
        c.stdin.as_mut().expect("stdin").write_all(b"check\n").expect("check");
        let mut line = String::new();
        std::io::BufRead::read_line(r, &mut line).expect("alive line");
        alive += line.split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    }
    let grown: u64 = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).sum();
    println!(
        "concurrency: {opened} of {} relayed connections opened in {:.1} s over {proxies} proxy process(es) \
         (this machine allows {} open files per process; a relayed connection uses 2 in the proxy); \
         {alive} still answering after all were open; proxy RSS {:.1} MiB -> {:.1} MiB in all, {:.1} KiB per connection",
        per * proxies,
        opened_in.as_secs_f64(),
        fd_limit(),
        before.iter().sum::<u64>() as f64 / 1024.0,
        after.iter().sum::<u64>() as f64 / 1024.0,
        grown as f64 / opened.max(1) as f64
    );
    for mut c in clients {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    for (mut echo, proxy, _) in groups {
        stop(proxy);
        let _ = echo.kill();
        let _ = echo.wait();
    }
}

/// Child process roles of the concurrency run.
async fn child_role(role: &str) {
    match role {
        "echo" => {
            let port: SocketAddr = env("PORT", "").parse().expect("PORT");
            echo_server_on(port).await;
            std::future::pending::<()>().await;
        }
        "clients" => {
            let route: SocketAddr = env("ROUTE", "").parse().expect("ROUTE");
            let count: usize = env("COUNT", "0").parse().expect("COUNT");
            let (mut held, _failed) = open_many(route, count, "u").await;
            println!("opened {}", held.len());
            let mut line = String::new();
            let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
            let mut alive = 0;
            for c in held.iter_mut() {
                if tokio::time::timeout(Duration::from_secs(10), c.round_trip("still there"))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    alive += 1;
                }
            }
            println!("alive {alive}");
        }
        other => panic!("unknown ROLE {other}"),
    }
}
