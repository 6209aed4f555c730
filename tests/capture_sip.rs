//! The SIP MESSAGE listener with a real SIP peer: SIPp sends MESSAGE
//! (text/plain and message/cpim) and OPTIONS over UDP and TCP; malformed and
//! retransmitted requests are sent by hand.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_addr, sql_rows, wait_until, Archive, Peer};

fn sip_bin() -> PathBuf {
    let bin = common::proxy_bin().with_file_name("verbatim-sip");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

fn sipp(scenario: &str, transport: &str, target: SocketAddr, calls: u32) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(format!("{scenario}.xml"));
    let out = Command::new("sipp")
        .arg("-sf")
        .arg(&file)
        .args(["-m", &calls.to_string(), "-i", "127.0.0.1", "-t", transport, &target.to_string()])
        .args(["-timeout", "30s", "-timeout_error", "-nostdin"])
        .stdin(Stdio::null())
        .output()
        .expect("running sipp");
    assert!(
        out.status.success(),
        "sipp {scenario} over {transport}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}

fn message(call_id: &str, body: &str) -> String {
    format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id}\r\n\
         From: <sip:erin@example.test>;tag=e1\r\nTo: <sip:bob@example.test>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn udp_ask(to: SocketAddr, request: &[u8]) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    s.send_to(request, to).expect("send");
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sip_messages_from_sipp_are_recorded_and_bad_requests_refused_cleanly() {
    let archive = Archive::start();
    let sip = free_addr();
    let mut listener = Peer::spawn(
        "verbatim-sip",
        Command::new(sip_bin())
            .args(["--udp", &sip.to_string(), "--tcp", &sip.to_string()])
            .args(["--server", &format!("http://{}", archive.server.addr), "--token", &archive.ingest])
            .args(["--source", "proxy-sip"])
            .arg("--spool")
            .arg(archive.tmp.path().join("sip-spool"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    listener.wait_listening(sip);

    for transport in ["u1", "t1"] {
        sipp("message-text", transport, sip, 5);
        sipp("message-cpim", transport, sip, 5);
        sipp("options", transport, sip, 1);
    }

    // Malformed requests: a clean 4xx, nothing recorded, the listener stays up.
    let no_call_id = message("x", "must not be recorded").replace("Call-ID: x\r\n", "");
    let answer = udp_ask(sip, no_call_id.as_bytes());
    assert!(answer.starts_with("SIP/2.0 400 Missing Header: call-id\r\n"), "{answer}");
    assert!(answer.contains("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"), "{answer}");
    assert!(udp_ask(sip, b"\x00\xffgarbage\r\n\r\n").starts_with("SIP/2.0 400 "));
    let png = message("p", "x").replace("text/plain", "image/png");
    assert!(udp_ask(sip, png.as_bytes()).starts_with("SIP/2.0 415 "));
    let mut tcp = TcpStream::connect(sip).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let _ = tcp.write_all(&vec![b'A'; 100_000]);
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("SIP/2.0 413 "), "an endless header is cut off: {answer:?}");

    // CRLF keep-alives over TCP are answered (RFC 5626), then a request on
    // the same connection is served.
    let mut tcp = TcpStream::connect(sip).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    tcp.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    tcp.read_exact(&mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");
    let options = message("ka", "").replacen("MESSAGE sip:bob@example.test", "OPTIONS sip:bob@example.test", 1);
    tcp.write_all(options.replace("CSeq: 1 MESSAGE", "CSeq: 1 OPTIONS").as_bytes()).expect("options");
    let mut answer = [0u8; 16];
    tcp.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer, b"SIP/2.0 200 OK\r\n");

    // A retransmission (same Call-ID and CSeq) gets the same answer and is stored once.
    let once = message("retrans-1", "said once, sent twice");
    let first = udp_ask(sip, once.as_bytes());
    assert!(first.starts_with("SIP/2.0 200 OK\r\n"), "{first}");
    assert_eq!(udp_ask(sip, once.as_bytes()), first);
    sipp("options", "u1", sip, 1);

    let query = "SELECT sender, recipients, body FROM events WHERE source = 'proxy-sip' AND kind = 'message' ORDER BY \"offset\"";
    wait_until(60, "21 SIP messages in the archive", || sql_rows(&archive.server, &archive.auditor, query).len() >= 21);
    std::thread::sleep(Duration::from_secs(1));
    let rows = sql_rows(&archive.server, &archive.auditor, query);
    assert_eq!(rows.len(), 21, "{rows:#?}");
    for transport_round in 0..2 {
        for n in 1..=5 {
            let text = format!("sipp text {n}: hé 🎉 \u{202e}rtl\r\n");
            let hits: Vec<_> = rows.iter().filter(|r| r[2] == text.as_str()).collect();
            assert_eq!(hits.len(), 2, "{text:?} once per transport (round {transport_round})");
            assert_eq!(
                (hits[0][0].as_str(), hits[0][1][0].as_str()),
                (Some("alice@example.test"), Some("bob@example.test"))
            );
            let cpim = format!("sipp cpim {n}\r\n");
            let hits: Vec<_> = rows.iter().filter(|r| r[2] == cpim.as_str()).collect();
            assert_eq!(hits.len(), 2, "{cpim:?}");
            assert_eq!(
                (hits[0][0].as_str(), hits[0][1][0].as_str()),
                (Some("carol@example.test"), Some("dave@example.test")),
                "CPIM's own From/To"
            );
        }
    }
    assert_eq!(rows.iter().filter(|r| r[2] == "said once, sent twice").count(), 1);
    assert!(!rows.iter().any(|r| r[2] == "must not be recorded"));
    listener.stop();
}
