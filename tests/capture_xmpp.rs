//! The capture proxy with a real XMPP server (prosody, offering STARTTLS)
//! and a real client library (slixmpp), through SOCKS5 (proxychains4) and a
//! routed listener, with the STARTTLS policy `block`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{free_addr, maybe_through_socks5, proxy_bin, sql_rows, wait_until, Archive, Peer};
use serde_json::Value;

const DOMAIN: &str = "example.test";

fn prosody(dir: &Path) -> (SocketAddr, Peer) {
    let addr = free_addr();
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={DOMAIN}")])
        .arg("-keyout")
        .arg(certs.join(format!("{DOMAIN}.key")))
        .arg("-out")
        .arg(certs.join(format!("{DOMAIN}.crt")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success(), "a self-signed certificate, so prosody offers STARTTLS");
    let conf = dir.join("prosody.cfg.lua");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "run_as_root = true\npidfile = \"{d}/prosody.pid\"\ndata_path = \"{d}/prosody-data\"\n\
             log = {{ info = \"{d}/prosody.log\" }}\n\
             c2s_ports = {{ {port} }}\nc2s_interfaces = {{ \"127.0.0.1\" }}\n\
             s2s_ports = {{ }}\ns2s_interfaces = {{ }}\nhttp_ports = {{ }}\nhttps_ports = {{ }}\n\
             c2s_require_encryption = false\nallow_unencrypted_plain_auth = true\nauthentication = \"internal_plain\"\n\
             modules_enabled = {{ \"roster\"; \"saslauth\"; \"tls\"; \"disco\"; \"ping\"; \"posix\" }}\n\
             modules_disabled = {{ \"s2s\"; \"offline\" }}\ncertificates = \"{d}/certs\"\n\
             VirtualHost \"{DOMAIN}\"\nComponent \"rooms.{DOMAIN}\" \"muc\"\n",
            port = addr.port()
        ),
    )
    .expect("prosody config");
    std::fs::create_dir_all(dir.join("prosody-data")).expect("prosody data");
    for (user, pw) in [("alice", "pw-alice"), ("bob", "pw-bob"), ("carol", "pw-carol")] {
        let ok = Command::new("prosodyctl")
            .arg("--config")
            .arg(&conf)
            .args(["register", user, DOMAIN, pw])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("prosodyctl");
        assert!(ok.success(), "registering {user}");
    }
    let mut peer = Peer::spawn(
        "prosody",
        Command::new("prosody").arg("--config").arg(&conf).arg("-F").stdout(Stdio::null()).stderr(Stdio::null()),
    );
    peer.wait_listening(addr);
    (addr, peer)
}

/// A slixmpp client driven through its stdin, reporting on its stdout.
struct Client {
    stdin: ChildStdin,
    events: Receiver<Value>,
    seen: Vec<Value>,
    _peer: Peer,
}

impl Client {
    fn start(dir: &Path, user: &str, addr: SocketAddr, socks: Option<SocketAddr>, proxied: bool) -> Client {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/xmpp-client.py");
        let mut cmd = maybe_through_socks5(dir, user, socks, "/usr/bin/python3");
        cmd.arg(script).args([
            &format!("{user}@{DOMAIN}"),
            &format!("pw-{user}"),
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]);
        if !proxied {
            // Straight to the server, which offers STARTTLS with a certificate
            // the client cannot check.
            cmd.arg("notls");
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut peer = Peer::spawn(&format!("xmpp client {user}"), &mut cmd);
        let stdin = peer.child.stdin.take().expect("stdin");
        let stdout = peer.child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut c = Client { stdin, events, seen: Vec::new(), _peer: peer };
        c.wait_for(&format!("{user} online"), |v| v["event"] == "ready");
        c
    }

    fn command(&mut self, verb: &str, to: &str, text: &str) {
        let line = format!("{verb}\t{to}\t{}\n", Value::String(text.to_owned()));
        self.stdin.write_all(line.as_bytes()).expect("client stdin");
        self.stdin.flush().expect("flush");
    }

    fn wait_for(&mut self, what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.seen.iter().any(&check) {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("timed out waiting for {what}; seen {:#?}", self.seen),
            }
        }
    }

    fn wait_body(&mut self, body: &str) {
        self.wait_for(body, |v| v["event"] == "message" && v["body"] == body);
    }
}

#[test]
fn xmpp_through_socks5_and_a_routed_listener_is_recorded_with_starttls_blocked() {
    let archive = Archive::start();
    let dir = archive.tmp.path();
    let (xmpp, _prosody) = prosody(dir);
    let (socks, route) = (free_addr(), free_addr());
    let mut proxy = Peer::spawn(
        "verbatim-proxy",
        Command::new(proxy_bin())
            .args(["--socks", &socks.to_string(), "--route", &format!("{route}={xmpp}")])
            .args(["--server", &format!("http://{}", archive.server.addr), "--token", &archive.ingest])
            .args(["--source", "proxy-xmpp", "--xmpp-ports", &xmpp.port().to_string(), "--starttls", "block"])
            .args(["--disclaimer", "This chat is recorded."])
            .arg("--spool")
            .arg(dir.join("spool"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    proxy.wait_listening(socks);
    proxy.wait_listening(route);

    let mut alice = Client::start(dir, "alice", xmpp, Some(socks), true);
    let mut bob = Client::start(dir, "bob", route, None, true);
    let mut carol = Client::start(dir, "carol", xmpp, None, false);

    let a1 = "hé <b>&amp; 'quotes' \"dq\" 🎉\nsecond line \u{202e}rtl";
    alice.command("msg", &format!("carol@{DOMAIN}"), a1);
    carol.wait_body(a1);
    carol.command("msg", &format!("alice@{DOMAIN}"), "carol to alice");
    alice.wait_body("carol to alice");
    bob.command("msg", &format!("carol@{DOMAIN}"), "bob to carol, routed");
    carol.wait_body("bob to carol, routed");
    carol.command("msg", &format!("bob@{DOMAIN}"), "carol to bob");
    bob.wait_body("carol to bob");
    alice.wait_for("the disclaimer", |v| v["body"] == "This chat is recorded.");

    let query = "SELECT sender, recipients, channel, body, direction, conversation_id, attrs FROM events \
                 WHERE source = 'proxy-xmpp' AND kind = 'message' ORDER BY \"offset\"";
    wait_until(60, "four messages in the archive", || sql_rows(&archive.server, &archive.auditor, query).len() >= 4);
    let rows = sql_rows(&archive.server, &archive.auditor, query);
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let one = |body: &str| -> &Value {
        let r: Vec<&Value> = rows.iter().filter(|r| r[3] == body).collect();
        assert_eq!(r.len(), 1, "{body}: {rows:#?}");
        r[0]
    };
    let r = one(a1);
    assert_eq!(
        (r[0].as_str(), r[1][0].as_str(), r[4].as_str()),
        (Some("alice@example.test"), Some("carol@example.test"), Some("outbound"))
    );
    let r2 = one("carol to alice");
    assert_eq!(
        (r2[0].as_str(), r2[1][0].as_str(), r2[4].as_str()),
        (Some("carol@example.test"), Some("alice@example.test"), Some("inbound"))
    );
    assert_eq!(r[5], r2[5], "one conversation both ways");
    assert_eq!(one("bob to carol, routed")[4], "outbound");
    assert_eq!(one("carol to bob")[4], "inbound");
    assert_ne!(one("carol to bob")[5], r[5]);

    // Nothing was lost to TLS: no gap, and both proxied sessions stayed cleartext.
    let gaps = sql_rows(
        &archive.server,
        &archive.auditor,
        "SELECT body FROM events WHERE source = 'proxy-xmpp' AND kind = 'gap'",
    );
    assert!(gaps.is_empty(), "{gaps:#?}");
    drop(alice);
    drop(bob);
    wait_until(30, "connection records", || {
        sql_rows(
            &archive.server,
            &archive.auditor,
            "SELECT sender FROM events WHERE source = 'proxy-xmpp' AND kind = 'connection'",
        )
        .len()
            >= 2
    });
    let conns = sql_rows(
        &archive.server,
        &archive.auditor,
        "SELECT sender, network FROM events WHERE source = 'proxy-xmpp' AND kind = 'connection' ORDER BY sender",
    );
    let who: Vec<(&str, &str)> = conns.iter().filter_map(|c| Some((c[0].as_str()?, c[1].as_str()?))).collect();
    assert!(who.contains(&("alice@example.test", "xmpp")) && who.contains(&("bob@example.test", "xmpp")), "{who:?}");
    proxy.stop();
}

#[test]
fn strict_mode_answers_an_unrecordable_xmpp_message_with_an_error_stanza() {
    let archive = Archive::start();
    let dir = archive.tmp.path();
    let (xmpp, _prosody) = prosody(dir);
    let route = free_addr();
    // Nothing listens on the server URL: express spool, strict mode, so no
    // message can be acknowledged.
    let mut proxy = Peer::spawn(
        "verbatim-proxy",
        Command::new(proxy_bin())
            .args(["--route", &format!("{route}={xmpp}"), "--server", &format!("http://{}", free_addr())])
            .args(["--token", &archive.ingest, "--source", "proxy-xmpp", "--xmpp-ports", &xmpp.port().to_string()])
            .args(["--mode", "strict", "--spool-mode", "express", "--strict-wait-ms", "1000"])
            .arg("--spool")
            .arg(dir.join("spool"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    proxy.wait_listening(route);
    let mut alice = Client::start(dir, "alice", route, None, true);
    let mut carol = Client::start(dir, "carol", xmpp, None, false);
    alice.command("msg", &format!("carol@{DOMAIN}"), "must not pass unrecorded");
    alice.wait_for("the error stanza", |v| {
        v["event"] == "error"
            && v["from"].as_str().is_some_and(|f| f.starts_with("carol@example.test"))
            && v["condition"] == "resource-constraint"
            && v["text"].as_str().is_some_and(|t| t.contains("NOT sent"))
    });
    // Carol hears nothing; what she says to alice is withheld too.
    carol.command("msg", &format!("alice@{DOMAIN}"), "withheld on the way in");
    alice.wait_for("the notice of the withheld message", |v| {
        v["type"] == "headline" && v["body"].as_str().is_some_and(|b| b.contains("was withheld"))
    });
    std::thread::sleep(Duration::from_secs(1));
    while let Ok(v) = carol.events.try_recv() {
        carol.seen.push(v);
    }
    assert!(!carol.seen.iter().any(|v| v["body"] == "must not pass unrecorded"), "{:#?}", carol.seen);
    assert!(!alice.seen.iter().any(|v| v["body"] == "withheld on the way in"), "{:#?}", alice.seen);
    proxy.stop();
}
