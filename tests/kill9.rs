//! `kill -9` loop against the real binary: one load generator runs
//! throughout, recording every acknowledgement, while the server is killed
//! with SIGKILL at random moments and restarted. Afterwards every
//! acknowledged (source, seq) must be in the archive exactly once and
//! byte-exact, nothing may be stored twice, `verify` must pass, and no restart
//! may have needed an operator. Iterations: `VERBATIM_KILL9_ITERATIONS`
//! (default 50, as in CI; more when run by hand).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn kill9_loop_loses_and_duplicates_nothing() {
    let iterations: u32 = std::env::var("VERBATIM_KILL9_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let token = create_token(&data, "ingest", Some("loadgen-*"));
    let addr = free_addr();
    let acks = tmp.path().join("acks.ndjson");
    let stop = tmp.path().join("stop");
    let mut load = Command::new(loadgen())
        .args(["run", "--url", &format!("http://{addr}"), "--token", &token, "--clients", "4", "--batch", "40"])
        .arg("--acks")
        .arg(&acks)
        .arg("--state")
        .arg(tmp.path().join("loadgen-state"))
        .arg("--stop-file")
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the load generator");

    // A small deterministic generator for the kill moments.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..iterations {
        let server = Server::start_with(&data, addr, &[]);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(30 + x % 400));
        server.kill9();
        assert!(load.try_wait().expect("poll").is_none(), "the load generator stopped at iteration {i}");
    }
    let server = Server::start_with(&data, addr, &[]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, b"").expect("stop file");
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.try_wait().expect("poll").is_none() {
        assert!(Instant::now() < deadline, "the load generator did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = load.wait_with_output().expect("load output");
    assert!(out.status.success(), "load generator failed");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");

    let dump = run(&data, &["dump"]);
    assert!(dump.status.success(), "{}", stderr(&dump));
    let archive = tmp.path().join("archive.ndjson");
    std::fs::write(&archive, &dump.stdout).expect("write archive");
    let check = Command::new(loadgen())
        .arg("check")
        .arg("--acks")
        .arg(&acks)
        .arg("--archive")
        .arg(&archive)
        .output()
        .expect("check");
    let verdict = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check failed: {verdict} {}", String::from_utf8_lossy(&check.stderr));
    let v: serde_json::Value = serde_json::from_str(verdict.trim()).expect("verdict");
    assert!(
        v["acknowledged"].as_u64().unwrap_or(0) >= u64::from(iterations) * 40,
        "too little was acknowledged to prove anything: {v} {summary}"
    );
    let verify = run(&data, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    eprintln!("kill -9 x {iterations}: {v}; load {summary}");
}
