//! `verbatim-loadgen floor`, the lower bound the latency benchmarks set
//! Verbatim beside: it must answer what loadgen sends, and what it answers
//! must be in its file first.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Starts the floor with `flags`; the process and its address.
fn start_floor(dir: &std::path::Path, flags: &[&str]) -> (Peer, SocketAddr) {
    let mut peer = Peer::spawn(
        "verbatim-loadgen floor",
        Command::new(loadgen()).arg("floor").arg("--dir").arg(dir).args(flags).stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(peer.child.stdout.take().expect("stdout")).read_line(&mut line).expect("the floor's port");
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("not a port: {line:?}"));
    (peer, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One HTTP/1.1 request: (status, body).
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_request(addr, method, path, &[], body).expect("request to the floor");
    (status, body)
}

#[test]
fn the_floor_answers_only_after_the_bytes_are_in_its_file() {
    for flags in [&[][..], &["--writer-thread"][..]] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("floor");
        let (peer, addr) = start_floor(&dir, flags);

        let first = b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
        let (status, body) = request(addr, "POST", "/v1/events", first);
        assert_eq!(status, 200, "{flags:?}: {body}");
        let reply: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            (reply["accepted"].as_u64(), reply["first_offset"].as_u64(), reply["last_offset"].as_u64()),
            (Some(3), Some(0), Some(2)),
            "{flags:?}"
        );
        let file = dir.join("floor.append");
        assert_eq!(
            std::fs::read(&file).expect("the floor's file"),
            first,
            "{flags:?}: answered before its bytes were written"
        );
        let second = b"{\"n\":4}\n";
        let (status, body) = request(addr, "POST", "/v1/events", second);
        assert_eq!(status, 200, "{flags:?}: {body}");
        let reply: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(reply["first_offset"].as_u64(), Some(3), "{flags:?}: offsets go on from the last request");

        let (status, body) = request(addr, "GET", "/v1/search?q=needle&limit=100", b"");
        assert_eq!(status, 200, "{flags:?}: {body}");
        let page: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(page["hits"].as_array().map(Vec::len), Some(0), "{flags:?}");

        // Every answer above came after its bytes were written (and synced):
        // the file holds both bodies and the search's record, in order.
        let written = std::fs::read(&file).expect("the floor's file");
        let (bodies, record) = written.split_at(first.len() + second.len());
        assert_eq!(bodies, [&first[..], &second[..]].concat(), "{flags:?}");
        let record = String::from_utf8_lossy(record);
        assert!(record.contains("\tsearch\tq=needle&limit=100\n"), "{flags:?}: {record:?}");

        // loadgen's own client, as the benchmark drives it.
        let out = Command::new(loadgen())
            .args(["run", "--url", &format!("http://{addr}"), "--token", "none", "--clients", "1", "--batch", "10"])
            .args(["--events", "50"])
            .output()
            .expect("loadgen run");
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        let lines = std::fs::read(&file).expect("the floor's file").iter().filter(|&&b| b == b'\n').count();
        assert_eq!(lines, 4 + 1 + 50, "{flags:?}: loadgen's 50 events are in the file");
        // It has no handler for SIGTERM: stopping it by PID is all there is to do.
        peer.stop();
    }
}

#[test]
fn the_floor_refuses_an_address_off_loopback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(loadgen())
        .args(["floor", "--listen", "0.0.0.0:0", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("loadgen floor");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("loopback only"), "{}", stderr(&out));
}
