//! The capture proxy with real peers: an ngircd server on loopback, `ii`
//! clients through the proxy's SOCKS5 port (via proxychains4), through a
//! routed listener, and directly, and the real archive behind it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{create_token, free_addr, maybe_through_socks5, proxy_bin, sql_rows, wait_until, Archive, Peer, Server};
use serde_json::Value;

/// An ngircd on a loopback port.
struct Ircd {
    addr: SocketAddr,
    _peer: Peer,
}

fn ngircd(dir: &Path) -> Ircd {
    let addr = free_addr();
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.test\nInfo = Verbatim test\nListen = 127.0.0.1\nPorts = {}\nMotdPhrase = test\n\
             [Limits]\nPingTimeout = 600\nPongTimeout = 600\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\n",
            addr.port()
        ),
    )
    .expect("ngircd.conf");
    let mut peer = Peer::spawn(
        "ngircd",
        Command::new("ngircd").arg("-n").arg("-f").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    peer.wait_listening(addr);
    Ircd { addr, _peer: peer }
}

/// A running `verbatim-proxy` with a SOCKS port and one routed listener.
struct Proxy {
    socks: SocketAddr,
    route: SocketAddr,
    peer: Peer,
}

fn proxy(server: SocketAddr, token: &str, spool: &Path, ircd: SocketAddr, extra: &[&str]) -> Proxy {
    proxy_to(&format!("http://{server}"), "proxy-irc", token, spool, ircd, extra)
}

/// A proxy with source id `source` sending to `servers` (comma-separated URLs).
fn proxy_to(servers: &str, source: &str, token: &str, spool: &Path, ircd: SocketAddr, extra: &[&str]) -> Proxy {
    let (socks, route) = (free_addr(), free_addr());
    let mut peer = Peer::spawn(
        "verbatim-proxy",
        Command::new(proxy_bin())
            .args(["--socks", &socks.to_string()])
            .args(["--route", &format!("{route}={ircd}")])
            .args(["--server", servers])
            .args(["--token", token, "--source", source])
            .args(if extra.contains(&"--irc-ports") {
                vec![]
            } else {
                vec!["--irc-ports".to_owned(), ircd.port().to_string()]
            })
            .arg("--spool")
            .arg(spool)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    peer.wait_listening(socks);
    peer.wait_listening(route);
    Proxy { socks, route, peer }
}

/// An `ii` client: a FIFO to type into, files of what it received.
struct Ii {
    host: PathBuf,
    peer: Peer,
}

impl Ii {
    /// `how`: connect directly to `addr`, or through the SOCKS5 proxy `socks`.
    fn start(dir: &Path, nick: &str, addr: SocketAddr, socks: Option<SocketAddr>) -> Ii {
        let base = dir.join(format!("ii-{nick}"));
        let mut cmd = maybe_through_socks5(dir, nick, socks, "ii");
        cmd.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-n", nick, "-i"])
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let peer = Peer::spawn(&format!("ii {nick}"), &mut cmd);
        let ii = Ii { host: base.join(addr.ip().to_string()), peer };
        wait_until(30, &format!("{nick} to register"), || {
            ii.read("out").contains("Welcome to the Internet Relay Network")
        });
        ii
    }

    fn read(&self, dir: &str) -> String {
        let path = if dir == "out" { self.host.join("out") } else { self.host.join(dir).join("out") };
        std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn type_into(&self, dir: Option<&str>, line: &str) {
        self.try_type_into(dir, line).expect("typing into ii");
    }

    /// Non-blocking: fails (instead of waiting forever) once ii has exited.
    fn try_type_into(&self, dir: Option<&str>, line: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let fifo = match dir {
            Some(d) => self.host.join(d).join("in"),
            None => self.host.join("in"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&fifo)
            {
                Ok(mut f) => return f.write_all(format!("{line}\n").as_bytes()),
                // ii closes its FIFO after each line it reads and opens it
                // again; in between there is no reader, and a non-blocking
                // open for writing fails with ENXIO. Wait that out while ii
                // lives; once it has exited, the error stands.
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
                        && self.alive()
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the ii process is still running (not exited, not a zombie).
    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.peer.child.id()))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    fn join(&self, channel: &str) {
        self.type_into(None, &format!("/j {channel}"));
        wait_until(30, &format!("joining {channel}"), || self.host.join(channel).join("in").exists());
    }

    fn say(&self, channel: &str, text: &str) {
        self.type_into(Some(channel), text);
    }

    fn msg(&self, nick: &str, text: &str) {
        self.type_into(None, &format!("/j {nick} {text}"));
    }

    /// Whether `text` arrived in the window `dir` (a channel or a nick).
    fn got(&self, dir: &str, text: &str) -> bool {
        self.read(dir).contains(text)
    }
}

const CHAN: &str = "#desk";

/// Message rows of one source: (sender, recipients, channel, body, direction, conversation_id).
fn messages(server: &Server, token: &str, kind: &str) -> Vec<Value> {
    sql_rows(
        server,
        token,
        &format!(
            "SELECT sender, recipients, channel, body, direction, conversation_id, attrs FROM events \
             WHERE source = 'proxy-irc' AND kind = '{kind}' ORDER BY \"offset\""
        ),
    )
}

fn body_of(r: &Value) -> &str {
    r[3].as_str().unwrap_or("")
}

/// The bodies of one kind of event, in log order.
fn bodies(server: &Server, token: &str, kind: &str) -> Vec<String> {
    messages(server, token, kind).iter().map(|r| body_of(r).to_owned()).collect()
}

fn assert_no_duplicates(stored: &[String]) {
    let mut unique = stored.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "duplicated: {stored:?}");
}

#[test]
fn irc_through_socks5_and_a_routed_listener_is_recorded_both_ways_byte_exact() {
    let archive = Archive::start();
    let dir = archive.tmp.path();
    let ircd = ngircd(dir);
    let p = proxy(
        archive.server.addr,
        &archive.ingest,
        &dir.join("spool"),
        ircd.addr,
        &["--disclaimer", "This chat is recorded by Verbatim."],
    );
    let alice = Ii::start(dir, "alice", ircd.addr, Some(p.socks));
    let bob = Ii::start(dir, "bob", p.route, None);
    let carol = Ii::start(dir, "carol", ircd.addr, None);
    for c in [&alice, &bob, &carol] {
        c.join(CHAN);
    }
    wait_until(30, "everyone to see everyone join", || {
        alice.read(CHAN).contains("carol") && bob.read(CHAN).contains("carol")
    });

    let a1 = "good morning désk 🎉 \u{202e}txet\u{202c} ＡＢＣ 日本語 \t tab";
    let c1 = "reply: ça va? \u{0301}combining  two  spaces";
    alice.say(CHAN, a1);
    wait_until(30, "carol to hear alice", || carol.got(CHAN, "good morning"));
    carol.say(CHAN, c1);
    wait_until(30, "alice and bob to hear carol", || alice.got(CHAN, "ça va") && bob.got(CHAN, "ça va"));
    alice.msg("carol", "psst carol: alice here");
    carol.msg("alice", "hi alice, carol here");
    bob.msg("carol", "bob to carol, routed");
    carol.msg("bob", "carol to bob");
    wait_until(30, "the private messages to arrive", || {
        carol.got("alice", "psst")
            && alice.got("carol", "hi alice")
            && carol.got("bob", "routed")
            && bob.got("carol", "carol to bob")
    });

    // A 10 KB line and garbage on the SOCKS port do not take the proxy down.
    let mut raw = TcpStream::connect(p.route).expect("routed connect");
    raw.write_all(b"NICK raw\r\nUSER raw 0 * :raw\r\n").expect("register");
    raw.write_all(format!("PRIVMSG {CHAN} :{}\r\n", "x".repeat(10_000)).as_bytes()).expect("long line");
    // ngircd closes a client that sends a line that long; the proxy stays up.
    raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = raw.read_to_end(&mut Vec::new());
    let mut raw2 = TcpStream::connect(p.route).expect("routed connect after the long line");
    raw2.write_all(b"NICK raw2\r\nUSER raw2 0 * :raw2\r\nPRIVMSG carol :after the long line\r\n").expect("raw2");
    let socks_answer = |bytes: &[u8]| {
        let mut junk = TcpStream::connect(p.socks).expect("socks connect");
        junk.write_all(bytes).expect("junk");
        junk.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut answer = Vec::new();
        let _ = junk.read_to_end(&mut answer);
        answer
    };
    assert_eq!(socks_answer(b"\x05\x01\x80garbage"), vec![5, 0xff], "no acceptable SOCKS method");
    assert_eq!(socks_answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Vec::<u8>::new(), "not SOCKS: closed");
    assert_eq!(socks_answer(b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")[2..4], [5, 7], "BIND refused");
    wait_until(30, "the message after the long line", || carol.got("raw2", "after the long line"));

    let expected = 2 + 2 + 4 + 1; // channel lines seen on two proxied connections, four private, one after the long line
    wait_until(60, "the archive to hold every message", || {
        messages(&archive.server, &archive.auditor, "message").len() >= expected
    });
    let rows = messages(&archive.server, &archive.auditor, "message");
    assert_eq!(rows.len(), expected, "{rows:#?}");
    let find = |body: &str, dir: &str| -> Vec<&Value> {
        rows.iter().filter(|r| body_of(r) == body && r[4].as_str() == Some(dir)).collect()
    };
    // Byte-exact bodies, both directions.
    assert_eq!(find(a1, "outbound").len(), 1, "alice's line as she sent it");
    assert_eq!(find(a1, "inbound").len(), 1, "alice's line as bob received it");
    assert_eq!(find(c1, "inbound").len(), 2, "carol's line as alice and bob received it");
    for r in find(a1, "outbound").into_iter().chain(find(c1, "inbound")) {
        assert_eq!(r[2].as_str(), Some(CHAN));
        assert_eq!(r[1], Value::Array(vec![]));
    }
    let private = |body: &str, dir: &str, from: &str, to: &str| {
        let r = find(body, dir);
        assert_eq!(r.len(), 1, "{body}: {rows:#?}");
        assert_eq!((r[0][0].as_str(), r[0][1][0].as_str(), &r[0][2]), (Some(from), Some(to), &Value::Null));
        r[0][5].as_u64().expect("conversation id")
    };
    let ac = private("psst carol: alice here", "outbound", "alice", "carol");
    assert_eq!(private("hi alice, carol here", "inbound", "carol", "alice"), ac, "one conversation both ways");
    let bc = private("bob to carol, routed", "outbound", "bob", "carol");
    assert_eq!(private("carol to bob", "inbound", "carol", "bob"), bc);
    assert_ne!(ac, bc);
    private("after the long line", "outbound", "raw2", "carol");
    let chan_ids: Vec<_> = rows.iter().filter(|r| r[2].as_str() == Some(CHAN)).map(|r| r[5].clone()).collect();
    assert!(chan_ids.windows(2).all(|w| w[0] == w[1]), "one channel conversation: {chan_ids:?}");

    // The long line is named by a gap event; the disclaimer was shown and recorded.
    let gaps = messages(&archive.server, &archive.auditor, "gap");
    assert!(gaps.iter().any(|g| g[0] == "raw" && body_of(g).contains("not decoded")), "{gaps:#?}");
    assert!(alice.read("verbatim").contains("This chat is recorded by Verbatim."));
    let disclaimers = messages(&archive.server, &archive.auditor, "disclaimer");
    assert!(disclaimers.iter().any(|d| d[0] == "alice" && d[2].as_str() == Some(CHAN)), "{disclaimers:#?}");
    assert!(disclaimers.iter().any(|d| d[0] == "bob" && d[1][0] == "carol"), "{disclaimers:#?}");

    // Membership from the server's side.
    let joins = messages(&archive.server, &archive.auditor, "join");
    for nick in ["alice", "bob", "carol"] {
        assert!(joins.iter().any(|j| j[0] == nick && j[2].as_str() == Some(CHAN)), "{nick} joined: {joins:#?}");
    }

    // Closing a connection leaves its record.
    drop(alice);
    wait_until(30, "alice's connection record", || {
        messages(&archive.server, &archive.auditor, "connection").iter().any(|c| c[0] == "alice")
    });
    let conns = messages(&archive.server, &archive.auditor, "connection");
    let c = conns.iter().find(|c| c[0] == "alice").expect("alice's connection");
    let attrs: Value = serde_json::from_str(c[6].as_str().expect("attrs")).expect("attrs json");
    assert_eq!(attrs["conn.via"], "socks5");
    assert_eq!(attrs["conn.target"], ircd.addr.to_string());
    assert!(attrs["conn.bytes_up"].as_str().and_then(|b| b.parse::<u64>().ok()).is_some_and(|b| b > 0));
    p.peer.stop();
}

/// An archive whose server is started later, on an address fixed now.
struct LateArchive {
    tmp: tempfile::TempDir,
    data: PathBuf,
    addr: SocketAddr,
    ingest: String,
    auditor: String,
}

impl LateArchive {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let ingest = create_token(&data, "ingest", Some("proxy-*"));
        let auditor = create_token(&data, "auditor", None);
        LateArchive { tmp, data, addr: free_addr(), ingest, auditor }
    }

    fn start(&self) -> Server {
        Server::start_with(&self.data, self.addr, &[])
    }
}

/// An archive whose server is not up yet, an ngircd, a proxy (with
/// `extra` flags) sending to that server, Alice through the proxy's routed
/// listener and Carol straight to the IRC server.
struct ServerDown {
    alice: Ii,
    carol: Ii,
    p: Proxy,
    _ircd: Ircd,
    late: LateArchive,
}

fn with_the_server_down(extra: &[&str]) -> ServerDown {
    let late = LateArchive::new();
    let dir = late.tmp.path();
    let ircd = ngircd(dir);
    let p = proxy(late.addr, &late.ingest, &dir.join("spool"), ircd.addr, extra);
    let alice = Ii::start(dir, "alice", p.route, None);
    let carol = Ii::start(dir, "carol", ircd.addr, None);
    ServerDown { alice, carol, p, _ircd: ircd, late }
}

#[test]
fn strict_mode_with_the_server_down_relays_no_unrecorded_chat() {
    let ServerDown { alice, carol, p, late, _ircd } =
        with_the_server_down(&["--mode", "strict", "--spool-mode", "express", "--strict-wait-ms", "2000"]);
    for i in 0..3 {
        alice.msg("carol", &format!("blocked-{i}"));
    }
    wait_until(30, "alice to be told", || alice.read("verbatim").matches("was NOT sent").count() >= 3);
    carol.msg("alice", "from carol while down");
    wait_until(30, "alice to be told of the withheld message", || alice.read("verbatim").contains("was withheld"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!carol.read("alice").contains("blocked"), "strict mode relayed unrecorded chat: {}", carol.read("alice"));
    assert!(!alice.read("carol").contains("while down"), "strict mode relayed unrecorded chat inbound");

    let server = late.start();
    wait_until(60, "the archive to hold what was spooled", || messages(&server, &late.auditor, "withheld").len() >= 4);
    alice.msg("carol", "recorded-then-sent");
    wait_until(30, "carol to get the recorded message", || carol.got("alice", "recorded-then-sent"));
    wait_until(30, "the archive to hold it", || {
        messages(&server, &late.auditor, "message").iter().any(|r| body_of(r) == "recorded-then-sent")
    });
    // What was spooled but never relayed is in the archive, marked withheld.
    let withheld = bodies(&server, &late.auditor, "withheld");
    for i in 0..3 {
        assert!(withheld.contains(&format!("blocked-{i}")), "{withheld:?}");
    }
    assert!(withheld.contains(&"from carol while down".to_owned()));
    assert!(!carol.read("alice").contains("blocked"));
    p.peer.stop();
}

#[test]
fn relaxed_mode_keeps_chat_flowing_and_names_what_the_full_spool_lost() {
    let ServerDown { alice, carol, p, late, _ircd } =
        with_the_server_down(&["--mode", "relaxed", "--spool-mode", "recoverable", "--spool-max-bytes", "4000"]);
    let n = 30;
    for i in 0..n {
        alice.msg("carol", &format!("relaxed-{i:02} {}", "·".repeat(40)));
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_until(60, "every message to reach carol", || carol.read("alice").matches("relaxed-").count() == n);

    let server = late.start();
    wait_until(60, "the gap event", || !messages(&server, &late.auditor, "gap").is_empty());
    let stored = bodies(&server, &late.auditor, "message");
    assert_no_duplicates(&stored);
    assert!(!stored.is_empty() && stored.len() < n, "the spool limit should have cut in: {}", stored.len());
    let gaps = messages(&server, &late.auditor, "gap");
    let lost: u64 = gaps
        .iter()
        .filter(|g| g[0] == "alice")
        .map(|g| {
            let attrs: Value = serde_json::from_str(g[6].as_str().expect("attrs")).expect("json");
            attrs["gap.events"].as_str().and_then(|c| c.parse::<u64>().ok()).expect("gap.events")
        })
        .sum();
    assert_eq!(stored.len() as u64 + lost, n as u64, "every message is stored or counted in a gap: {gaps:#?}");
    assert!(gaps.iter().all(|g| body_of(g).contains("spool")), "{gaps:#?}");
    p.peer.stop();
}

#[test]
fn kill9_of_the_proxy_mid_conversation_in_recoverable_mode_loses_and_duplicates_nothing() {
    let archive = Archive::start();
    let dir = archive.tmp.path();
    let ircd = ngircd(dir);
    let spool = dir.join("spool");
    let strict = ["--mode", "strict", "--spool-mode", "recoverable"];
    let p = proxy(archive.server.addr, &archive.ingest, &spool, ircd.addr, &strict);
    let carol = Ii::start(dir, "carol", ircd.addr, None);
    let alice = Ii::start(dir, "alice", p.route, None);
    let n = 40;
    let typer = std::thread::spawn(move || {
        for i in 0..n {
            // Fails once ii has exited with its connection.
            let _ = alice.try_type_into(None, &format!("/j carol k9-{i:02}"));
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    wait_until(30, "the conversation to be under way", || carol.read("alice").matches("k9-").count() >= 10);
    p.peer.kill9();
    let _ = typer.join();
    let p2 = proxy(archive.server.addr, &archive.ingest, &spool, ircd.addr, &strict);
    let delivered: Vec<String> =
        carol.read("alice").lines().filter_map(|l| l.split("k9-").nth(1).map(|n| format!("k9-{}", &n[..2]))).collect();
    assert!(!delivered.is_empty() && delivered.len() < n, "kill -9 should cut the conversation: {}", delivered.len());
    wait_until(60, "every delivered message in the archive", || {
        let stored = bodies(&archive.server, &archive.auditor, "message");
        delivered.iter().all(|d| stored.contains(d))
    });
    std::thread::sleep(Duration::from_secs(2));
    let stored = bodies(&archive.server, &archive.auditor, "message");
    assert_no_duplicates(&stored);
    for d in &delivered {
        assert!(stored.contains(d), "0 lost: {d} reached carol but not the archive");
    }
    p2.peer.stop();
}

#[test]
fn a_corporate_socks_proxy_the_allow_list_and_server_failover() {
    let archive = Archive::start();
    let dir = archive.tmp.path();
    let ircd = ngircd(dir);
    // The corporate proxy: another SOCKS5 server (here a second, pass-through proxy).
    // Each front end has its own source id: seqs are per source.
    let corporate = proxy_to(
        &format!("http://{}", archive.server.addr),
        "proxy-corp",
        &archive.ingest,
        &dir.join("spool-corp"),
        ircd.addr,
        // It decodes nothing on the IRC port: other traffic passes with a connection record.
        &["--irc-ports", "1"],
    );
    // The capture proxy leaves through it, may reach only the IRC server,
    // and has a dead server URL before the live one.
    let via = format!("socks5://{}", corporate.socks);
    let allow = format!("127.0.0.1:{}", ircd.addr.port());
    let servers = format!("http://127.0.0.1:9,http://{}", archive.server.addr);
    let p = proxy_to(
        &servers,
        "proxy-irc",
        &archive.ingest,
        &dir.join("spool"),
        ircd.addr,
        &["--via", &via, "--allow", &allow],
    );

    let alice = Ii::start(dir, "alice", ircd.addr, Some(p.socks));
    let carol = Ii::start(dir, "carol", ircd.addr, None);
    alice.msg("carol", "through two proxies");
    wait_until(30, "carol to get it", || carol.got("alice", "through two proxies"));

    // A destination off the allow-list is refused with SOCKS5 code 2.
    let mut s = TcpStream::connect(p.socks).expect("socks");
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method");
    s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 22]).expect("connect to port 22");
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[1], 2, "connection not allowed by ruleset");

    wait_until(60, "the message, sent after failing over to the live server", || {
        messages(&archive.server, &archive.auditor, "message").iter().any(|r| body_of(r) == "through two proxies")
    });
    wait_until(30, "the refused connection's record", || {
        sql_rows(
            &archive.server,
            &archive.auditor,
            "SELECT attrs FROM events WHERE kind = 'connection' AND attrs LIKE '%not on the allow-list%'",
        )
        .len()
            == 1
    });
    // The corporate proxy saw the connection go to the IRC server, undecoded.
    drop(alice);
    wait_until(30, "the corporate proxy's connection record", || {
        sql_rows(
            &archive.server,
            &archive.auditor,
            &format!(
                "SELECT attrs FROM events WHERE source = 'proxy-corp' AND kind = 'connection' AND network = 'tcp' \
                 AND attrs LIKE '%{}%'",
                ircd.addr
            ),
        )
        .iter()
        .any(|r| r[0].as_str().is_some_and(|a| a.contains("\"conn.via\":\"socks5\"")))
    });
    p.peer.stop();
    corporate.peer.stop();
}
