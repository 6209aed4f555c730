//! Helpers for end-to-end tests: run the real `verbatim` binary, start a
//! server on a loopback port, talk HTTP to it, stop it by PID.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_verbatim")
}

pub fn loadgen() -> &'static str {
    env!("CARGO_BIN_EXE_verbatim-loadgen")
}

/// `verbatim token create --role ROLE [--sources S]`: the token.
pub fn create_token(data: &Path, role: &str, sources: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--role", role];
    if let Some(s) = sources {
        args.extend(["--sources", s]);
    }
    let out = run(data, &args);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("vbt_"), "{token}");
    token
}

/// Runs `verbatim --data-dir DATA ARGS…` and returns its output.
pub fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("VERBATIM_HTTP_LISTEN")
        .output()
        .expect("running verbatim")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A free loopback port for a listener a test starts now or later.
///
/// The port comes from outside the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port from inside it can be taken,
/// while its server is not up yet, as the source port of any outgoing
/// connection, or by a client retrying that very address, which on loopback
/// connects to itself (TCP simultaneous open). Either way the server then
/// fails to bind. Ports handed out in this process are not handed out twice.
pub fn free_addr() -> SocketAddr {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (low, high) = ephemeral_range();
    let (from, to) = if low > 11_000 { (10_000, low) } else { (high.saturating_add(1), u16::MAX) };
    let span = u32::from(to - from);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = std::process::id() ^ now.subsec_nanos();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Walk the span from a point that differs between test binaries.
    for i in 0..span {
        let port = from + ((seed.wrapping_mul(2_654_435_761).wrapping_add(i)) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free loopback port in {from}..{to}");
}

/// `net.ipv4.ip_local_port_range`, or Linux's default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A server process started by a test and stopped by its PID.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The Postgres wire protocol endpoint.
    pub pg: SocketAddr,
    pub data: PathBuf,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, free_addr(), &[])
    }

    /// Starts `verbatim serve` on `addr`, behind `wrapper` (e.g. `fiu-run -x`) if given.
    pub fn start_with(data: &Path, addr: SocketAddr, wrapper: &[&str]) -> Server {
        Self::start_env(data, addr, wrapper, &[])
    }

    /// [`Server::start_with`] with extra environment variables (`VERBATIM_SITE_ROLE`, …).
    pub fn start_env(data: &Path, addr: SocketAddr, wrapper: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_args(data, addr, wrapper, env, &[])
    }

    /// [`Server::start_env`] with extra arguments after `serve` (`--config FILE`).
    pub fn start_args(data: &Path, addr: SocketAddr, wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut server = Self::spawn(data, addr, wrapper, env, args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = server.get("/healthz") {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy on {addr}{}", server.exit_report());
    }

    /// Starts a server that speaks HTTPS (this helper's requests are plain
    /// HTTP): ready once its port accepts connections.
    pub fn start_listening(data: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> Server {
        let mut server = Self::spawn(data, addr, &[], env, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(addr).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not listen on {addr}{}", server.exit_report());
    }

    fn spawn(data: &Path, addr: SocketAddr, wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let pg = free_addr();
        let child = cmd
            .arg("--data-dir")
            .arg(data)
            .arg("serve")
            .args(args)
            .env("VERBATIM_HTTP_LISTEN", addr.to_string())
            .env("VERBATIM_PG_LISTEN", pg.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting verbatim serve");
        Server { child, addr, pg, data: data.to_owned() }
    }

    /// A plain HTTP/1.1 GET: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request("GET", path, &[], b"").map(|(status, _, body)| (status, body))
    }

    /// A GET with a bearer token.
    pub fn get_with(&self, path: &str, token: &str) -> std::io::Result<(u16, String)> {
        self.request("GET", path, &[("Authorization", &format!("Bearer {token}"))], b"")
            .map(|(status, _, body)| (status, body))
    }

    /// `POST /v1/events` with NDJSON: (status, headers, body).
    pub fn post_events(&self, token: &str, body: &[u8]) -> std::io::Result<(u16, String, String)> {
        let auth = format!("Bearer {token}");
        self.request("POST", "/v1/events", &[("Authorization", &auth), ("Content-Type", "application/x-ndjson")], body)
    }

    /// A raw HTTP/1.1 request with a Content-Length: (status, head, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, String)> {
        http_request(self.addr, method, path, headers, body)
    }

    /// SIGKILL, by PID, and wait.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// For a failed start: how the server ended and what it printed, if it
    /// has exited; nothing while it still runs.
    fn exit_report(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                format!(": it exited with {status}: {err}")
            }
            _ => String::new(),
        }
    }

    /// Sends SIGTERM and waits; returns the exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Names of the segment files in `<data>/log`.
pub fn segment_files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("log"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A fresh archive in a temporary directory with its server running, and
/// the tokens the read-path tests use.
pub struct Archive {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub server: Server,
    /// Bound to sources `proxy-*`.
    pub ingest: String,
    pub auditor: String,
    /// The first admin token, from `<data>/admin.token`.
    pub admin: String,
}

impl Archive {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let ingest = create_token(&data, "ingest", Some("proxy-*"));
        let auditor = create_token(&data, "auditor", None);
        let server = Server::start(&data);
        let admin = std::fs::read_to_string(data.join("admin.token")).expect("admin.token").trim().to_string();
        Self { tmp, data, server, ingest, auditor, admin }
    }
}

/// The `verbatim-proxy` binary of the `ingest` package, built beside this
/// test's binary by `cargo test --workspace`.
pub fn proxy_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("verbatim-proxy");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

/// A process a test started (a peer server, a client, a front end), killed
/// by PID when dropped.
pub struct Peer {
    pub child: Child,
    pub name: String,
}

impl Peer {
    pub fn spawn(name: &str, cmd: &mut Command) -> Peer {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Peer { child, name: name.to_owned() }
    }

    /// Waits until `addr` accepts connections (or the process has exited).
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before listening on {addr}: {status}", self.name);
            }
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not listen on {addr}", self.name);
    }

    /// SIGTERM, by PID, and wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait")
    }

    /// SIGKILL, by PID, and wait.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `check` to hold, polling; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// `POST /v1/sql` as JSON: the rows.
pub fn sql_rows(server: &Server, token: &str, sql: &str) -> Vec<serde_json::Value> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let auth = format!("Bearer {token}");
    let (status, _, answer) = server
        .request("POST", "/v1/sql", &[("Authorization", &auth), ("Content-Type", "application/json")], body.as_bytes())
        .expect("sql request");
    assert_eq!(status, 200, "{sql}: {answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("sql json");
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// `program`, run directly, or through the SOCKS5 proxy `socks` by
/// proxychains4 (its config written to `dir`, named after `who`).
pub fn maybe_through_socks5(dir: &Path, who: &str, socks: Option<SocketAddr>, program: &str) -> Command {
    match socks {
        Some(s) => {
            let conf = dir.join(format!("proxychains-{who}.conf"));
            std::fs::write(&conf, format!("strict_chain\nquiet_mode\n[ProxyList]\nsocks5 {} {}\n", s.ip(), s.port()))
                .expect("proxychains conf");
            let mut c = Command::new("proxychains4");
            c.arg("-f").arg(conf).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A raw HTTP/1.1 request to `addr` with a Content-Length: (status, head, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    // The server may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    Ok((status, head, body))
}
