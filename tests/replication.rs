//! Log shipping between two real servers on loopback: a regional site
//! ingesting with the load generator ships to HQ while each side is killed
//! with SIGKILL and restarted; afterwards HQ's copy holds the same records at
//! the same offsets with the same chain head, and bad shipments are refused.
//! A fault-injecting TCP relay between them delays, cuts, drops answers and
//! replays connections.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, create_token, free_addr, loadgen, run, stderr, stdout, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const SITE: &str = "nyc";

fn replica_token(hq: &Path, site: &str) -> String {
    let out = run(hq, &["token", "create", "--role", "replica", "--site", site]);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn regional_env(hq: &Server, token: &str) -> Vec<(String, String)> {
    vec![
        ("VERBATIM_SITE_ID".into(), SITE.into()),
        ("VERBATIM_SITE_ROLE".into(), "regional".into()),
        ("VERBATIM_HQ_URL".into(), format!("http://{}", hq.addr)),
        ("VERBATIM_HQ_TOKEN".into(), token.into()),
        ("VERBATIM_LOG".into(), "error".into()),
    ]
}

fn start(data: &Path, addr: std::net::SocketAddr, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_env(data, addr, &[], &env)
}

fn hq_env() -> Vec<(String, String)> {
    vec![("VERBATIM_SITE_ROLE".into(), "hq".into()), ("VERBATIM_LOG".into(), "error".into())]
}

fn status(s: &Server, token: &str) -> Value {
    let (code, body) = s.get_with("/v1/status", token).expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// `verbatim dump` of a log directory (through a data dir whose `log` points at it).
fn dump(log_dir: &Path, scratch: &Path) -> Vec<u8> {
    std::fs::create_dir_all(scratch).expect("scratch");
    let link = scratch.join("log");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(log_dir, &link).expect("symlink");
    let out = run(scratch, &["dump"]);
    assert!(out.status.success(), "dump: {}", stderr(&out));
    out.stdout
}

/// `verbatim verify` on `data`: the (head, chain) of each log it printed.
fn verify(data: &Path) -> Vec<String> {
    let out = run(data, &["verify"]);
    assert!(out.status.success(), "verify: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .filter(|l| l.contains("chain"))
        .map(|l| l.split("head").nth(1).unwrap_or("").trim().to_string())
        .collect()
}

fn sql(s: &Server, token: &str, query: &str) -> Value {
    let body = serde_json::json!({ "sql": query }).to_string();
    let auth = format!("Bearer {token}");
    let headers =
        [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Accept", "application/json")];
    let (code, _, body) = s.request("POST", "/v1/sql", &headers, body.as_bytes()).expect("sql");
    assert_eq!(code, 200, "{query}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// HQ indexes and rolls up the replica with its site: search and SQL on HQ
/// cover the site's `head` events, by site, with the site's conversation ids.
fn global_view(hq: &Server, admin: &str, auditor: &str, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = status(hq, admin);
        let r = &st["replicas"][0];
        if r["index"]["watermark"].as_u64() == Some(head) && r["rollups"]["watermark"].as_u64() == Some(head) {
            assert_eq!(r["index"]["consistent"], true, "{r}");
            assert_eq!(r["index"]["docs"].as_u64(), Some(head), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "HQ did not index and roll up the replica: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = hq.get_with("/metrics", admin).expect("metrics");
    assert!(metrics.contains(&format!("verbatim_replica_index_watermark{{site=\"{SITE}\"}} {head}")), "{metrics}");
    assert!(metrics.contains(&format!("verbatim_replica_index_consistent{{site=\"{SITE}\"}} 1")), "{metrics}");
    let search = |q: &str| -> Value {
        let (code, body) = hq.get_with(&format!("/v1/search?{q}"), auditor).expect("search");
        assert_eq!(code, 200, "{q}: {body}");
        serde_json::from_str(&body).expect("json")
    };
    let all = search("q=&limit=3&total=exact");
    assert_eq!(all["total"].as_u64(), Some(head), "every site's events: HQ has none of its own");
    let sites: Vec<&str> = all["sites"].as_array().expect("sites").iter().filter_map(|s| s["site"].as_str()).collect();
    assert_eq!(sites, ["local", SITE]);
    let by_site = search(&format!("q=&limit=3&site={SITE}&total=exact"));
    assert_eq!(by_site["total"].as_u64(), Some(head));
    assert_eq!(search("q=site:local&limit=3")["total"], 0);
    let hit = &by_site["hits"][0];
    assert_eq!(hit["site"], SITE, "{hit}");
    // Page through a narrower query: every hit once, from the replica.
    let mut cursor = String::new();
    let mut seen = std::collections::BTreeSet::new();
    let total = search("q=from:user1&limit=1")["total"].as_u64().expect("total");
    assert!(total > 0);
    loop {
        let page = search(&format!("q=from:user1&limit=500{cursor}"));
        for h in page["hits"].as_array().expect("hits") {
            assert!(seen.insert(h["offset"].as_u64().expect("offset")), "a hit came twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len() as u64, total);
    // The site's conversation, by (site, id), and the same body through SQL.
    let conv = hit["conversation_id"].as_u64().expect("conversation id");
    let (code, body) = hq.get_with(&format!("/v1/conversations/{conv}?site={SITE}"), auditor).expect("transcript");
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(t["conversation"]["site"], SITE);
    assert!(t["events"].as_array().expect("events").iter().all(|e| e["conversation_id"] == conv && e["site"] == SITE));
    let (code, body) = hq.get_with(&format!("/v1/conversations/{conv}?site=nowhere"), auditor).expect("transcript");
    assert_eq!(code, 404, "{body}");
    let counts =
        sql(hq, auditor, "SELECT site, count(*) AS n, count(DISTINCT conversation_id) AS c FROM events GROUP BY site");
    assert_eq!(counts["rows"][0][0], SITE, "{counts}");
    assert_eq!(counts["rows"][0][1].as_u64(), Some(head), "{counts}");
    assert_eq!(counts["row_count"], 1, "{counts}");
    let convs = sql(hq, auditor, &format!("SELECT count(*) FROM conversations WHERE site = '{SITE}'"));
    assert_eq!(convs["rows"][0][0], counts["rows"][0][2], "one conversations row per (site, id)");
    let offset = hit["offset"].as_u64().expect("offset");
    let bodies = sql(hq, auditor, &format!("SELECT body FROM events WHERE site = '{SITE}' AND \"offset\" = {offset}"));
    assert_eq!(bodies["rows"][0][0], hit["body"], "{bodies}");
    let joined = sql(
        hq,
        auditor,
        "SELECT s.site, e.body FROM search('from:user1', 5) s \
         JOIN events e ON e.site = s.site AND e.\"offset\" = s.\"offset\"",
    );
    assert_eq!(joined["row_count"], 5, "{joined}");
    assert!(joined["rows"].as_array().expect("rows").iter().all(|r| r[0] == SITE));
}

#[test]
fn a_site_ships_100k_events_to_hq_through_kills_of_either_side_and_hq_holds_the_same_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (hq_dir, site_dir) = (tmp.path().join("hq"), tmp.path().join("site"));
    let replica = replica_token(&hq_dir, SITE);
    let hq_admin = create_token(&hq_dir, "admin", None);
    let hq_auditor = create_token(&hq_dir, "auditor", None);
    let ingest = create_token(&site_dir, "ingest", Some("loadgen-*"));
    let site_admin = create_token(&site_dir, "admin", None);
    let site_auditor = create_token(&site_dir, "auditor", None);
    let (hq_addr, site_addr) = (free_addr(), free_addr());
    let mut hq = start(&hq_dir, hq_addr, &hq_env());
    let env = regional_env(&hq, &replica);
    let mut site = start(&site_dir, site_addr, &env);

    // The load generator writes 100k events in the background while both
    // sides are killed and restarted.
    let state = tmp.path().join("loadgen.state");
    let acks = tmp.path().join("acks.ndjson");
    let total = 100_000u64;
    let spawn_loadgen = |events: u64| {
        Command::new(loadgen())
            .args(["run", "--url", &format!("http://{site_addr}"), "--token", &ingest, "--clients", "2"])
            .args(["--batch", "500", "--events", &events.to_string()])
            .arg("--state")
            .arg(&state)
            .arg("--acks")
            .arg(&acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("loadgen")
    };
    let mut gen = spawn_loadgen(total);
    let wait_head = |s: &Server, at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if let Ok((200, b)) = s.get("/healthz") {
                let v: Value = serde_json::from_str(&b).expect("json");
                if v["log_head"].as_u64().unwrap_or(0) >= at_least {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the site's log did not reach {at_least}");
    };
    wait_head(&site, 20_000);
    hq.kill9();
    std::thread::sleep(Duration::from_millis(300));
    hq = start(&hq_dir, hq_addr, &hq_env());
    wait_head(&site, 45_000);
    hq.kill9();
    hq = start(&hq_dir, hq_addr, &hq_env());
    wait_head(&site, 60_000);
    // The site itself dies mid-shipping; the load generator is stopped with
    // it and resumed (its state file keeps the sequence numbers).
    let _ = gen.kill();
    let _ = gen.wait();
    site.kill9();
    site = start(&site_dir, site_addr, &env);
    let sent: u64 = std::fs::read_to_string(&acks).map(|s| s.lines().count() as u64).unwrap_or(0);
    gen = spawn_loadgen(total.saturating_sub(sent));
    assert!(gen.wait().expect("loadgen").success(), "the load generator failed");

    // Everything acknowledged reaches HQ.
    let deadline = Instant::now() + Duration::from_secs(300);
    let head = loop {
        let st = status(&site, &site_admin);
        let sh = &st["shipping"];
        let head = st["log"]["head"].as_u64().expect("head");
        if sh["lag_events"] == 0 && sh["cursor"].as_u64() == Some(head) {
            assert_eq!(sh["alarms"], serde_json::json!([]), "{sh}");
            break head;
        }
        assert!(Instant::now() < deadline, "shipping did not catch up: {sh}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(head >= 60_000, "the site holds {head} events");
    let hq_status = status(&hq, &hq_admin);
    let replicas = hq_status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{hq_status}");
    assert_eq!(replicas[0]["site"], SITE);
    assert_eq!(replicas[0]["high_water"].as_u64(), Some(head));
    assert_eq!(replicas[0]["forks"], 0);
    assert_eq!(replicas[0]["site_head"].as_u64(), Some(head), "{hq_status}");
    assert_eq!(replicas[0]["lag_events"], 0, "{hq_status}");
    assert_eq!(replicas[0]["lag_bytes"], 0, "{hq_status}");
    assert_eq!(replicas[0]["lag_seconds"], 0.0, "{hq_status}");
    let (code, metrics) = hq.get_with("/metrics", &hq_admin).expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("verbatim_replica_high_water{{site=\"{SITE}\"}} {head}")), "{metrics}");
    assert!(metrics.contains(&format!("verbatim_replica_lag_bytes{{site=\"{SITE}\"}} 0")), "{metrics}");

    global_view(&hq, &hq_admin, &hq_auditor, head);
    // The regional server shows its own site only.
    let (code, body) = site.get_with("/v1/search?q=&limit=1", &site_auditor).expect("search");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["sites"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["sites"][0]["site"], SITE, "{v}");

    // compare-hq: the same chain at HQ's high-water mark.
    let mut cmp = Command::new(bin());
    cmp.arg("--data-dir").arg(&site_dir).arg("compare-hq");
    for (k, v) in &env {
        cmp.env(k, v);
    }
    let out = cmp.output().expect("compare-hq");
    assert!(out.status.success(), "compare-hq: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("same chain"), "{}", stdout(&out));

    // Stopped cleanly, both logs verify, with the same head and chain, and
    // hold the same records byte for byte.
    let (st, err) = site.stop();
    assert!(st.success(), "{err}");
    let (st, err) = hq.stop();
    assert!(st.success(), "{err}");
    let site_v = verify(&site_dir);
    let hq_v = verify(&hq_dir);
    assert_eq!(hq_v.len(), 2, "HQ's own log and the replica: {hq_v:?}");
    assert_eq!(site_v[0], hq_v[1], "head and chain of the site vs HQ's replica");
    let a = dump(&site_dir.join("log"), &tmp.path().join("d1"));
    let b = dump(&hq_dir.join("replicas").join(SITE), &tmp.path().join("d2"));
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count() as u64, head);
    assert!(a == b, "the replica's records differ from the site's");
    // Every acknowledged event is in HQ's copy exactly once, byte-exact.
    let archive = tmp.path().join("hq-dump.ndjson");
    std::fs::write(&archive, &b).expect("write dump");
    let out = Command::new(loadgen())
        .arg("check")
        .arg("--acks")
        .arg(&acks)
        .arg("--archive")
        .arg(&archive)
        .output()
        .expect("check");
    assert!(out.status.success(), "check: {}{}", stdout(&out), stderr(&out));

    // HQ's view of the site is derived: damaged, HQ still starts and holds
    // the replica; deleted, it is rebuilt from the replica.
    let derived = hq_dir.join("sites").join(SITE);
    std::fs::write(derived.join("index").join("meta.json"), b"{ torn").expect("damage");
    let hq = start(&hq_dir, hq_addr, &hq_env());
    let st = status(&hq, &hq_admin);
    assert_eq!(st["replicas"][0]["high_water"].as_u64(), Some(head), "{st}");
    assert!(st["replicas"][0].get("index").is_none(), "no index is served for the site: {st}");
    let (st, _) = hq.stop();
    assert!(st.success());
    std::fs::remove_dir_all(&derived).expect("delete the derived stores");
    let hq = start(&hq_dir, hq_addr, &hq_env());
    global_view(&hq, &hq_admin, &hq_auditor, head);
    let (st, err) = hq.stop();
    assert!(st.success(), "{err}");
}

#[test]
fn hq_refuses_wrong_sites_bad_shipments_and_servers_that_are_not_hq_refuse_shipments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hq_dir = tmp.path().join("hq");
    let nyc = replica_token(&hq_dir, SITE);
    let auditor = create_token(&hq_dir, "auditor", None);
    let hq = start(&hq_dir, free_addr(), &hq_env());
    let post = |site: &str, token: &str, body: &[u8]| {
        let auth = format!("Bearer {token}");
        hq.request("POST", &format!("/v1/replication/{site}/blocks"), &[("Authorization", &auth)], body).expect("post")
    };
    let (code, _, body) = post("lon", &nyc, b"");
    assert_eq!(code, 403, "a token for nyc shipping lon: {body}");
    let (code, _, body) = post(SITE, &auditor, b"");
    assert_eq!(code, 403, "an auditor token: {body}");
    let (code, _, body) =
        post(SITE, &nyc, b"VBLK not really a block, just text that is long enough for a header......");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("block 0"), "{body}");
    let (code, body) = hq.get_with(&format!("/v1/replication/{SITE}"), &nyc).expect("get");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["high_water"], 0, "nothing applied: {v}");
    let (code, _) = hq.get(&format!("/v1/replication/{SITE}")).expect("get");
    assert_eq!(code, 401);

    // A standalone server has no replication endpoint.
    let other_dir = tmp.path().join("standalone");
    let admin = create_token(&other_dir, "admin", None);
    let other = Server::start(&other_dir);
    let (code, body) = other.get_with(&format!("/v1/replication/{SITE}"), &admin).expect("get");
    assert_eq!(code, 404, "{body}");
    // A regional config without HQ settings does not start.
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(tmp.path().join("bad"))
        .arg("serve")
        .env("VERBATIM_SITE_ROLE", "regional")
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("site.hq_url"), "{}", stderr(&out));
}

/// What the relay did to one connection once its byte budget ran out.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Closes both sides mid-request: HQ gets a truncated shipment.
    CutRequest,
    /// Forwards the request whole but closes the client instead of
    /// answering: HQ applied it, the shipper never hears.
    DropAnswer,
    /// Cuts, then replays every byte the client sent on a new connection.
    Duplicate,
    /// Closes a new connection at once.
    Refuse,
}

const FAULTS: [Fault; 4] = [Fault::CutRequest, Fault::DropAnswer, Fault::Duplicate, Fault::Refuse];

/// A TCP relay on loopback between the site and HQ that delays every chunk
/// and, while `faulty`, ends each connection after a random budget of bytes
/// with the next fault in turn.
struct Relay {
    addr: std::net::SocketAddr,
    faulty: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: std::net::SocketAddr, seed: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let faulty = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let (f, s, c) = (faulty.clone(), stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut n = 0usize;
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("relay accept: {e}"),
                };
                client.set_nonblocking(false).expect("blocking");
                let fault = f.load(Ordering::SeqCst).then(|| {
                    n += 1;
                    FAULTS[n % FAULTS.len()]
                });
                let budget = rng.random_range(1_000..20_000u64);
                let delay_seed = rng.random();
                let c = c.clone();
                std::thread::spawn(move || relay_connection(client, upstream, fault, budget, delay_seed, &c));
            }
        });
        Relay { addr, faulty, stop, counts, thread: Some(thread) }
    }

    fn count(&self, f: Fault) -> u64 {
        self.counts[f as usize].load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_connection(
    client: TcpStream,
    upstream: std::net::SocketAddr,
    fault: Option<Fault>,
    budget: u64,
    delay_seed: u64,
    counts: &[AtomicU64; 4],
) {
    let hit = |f: Fault| counts[f as usize].fetch_add(1, Ordering::SeqCst);
    if matches!(fault, Some(Fault::Refuse)) {
        hit(Fault::Refuse);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let mute = Arc::new(AtomicBool::new(false));
    // HQ → site, unless the answer is to be dropped.
    let (mut from_server, mut to_client) = (server.try_clone().expect("clone"), client.try_clone().expect("clone"));
    let m = mute.clone();
    let back = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from_server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if m.load(Ordering::SeqCst) || to_client.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.shutdown(Shutdown::Both);
    });
    // Site → HQ, with delays and the fault.
    let (mut from_client, mut to_server) = (client, server);
    let mut rng = StdRng::seed_from_u64(delay_seed);
    let mut sent = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let k = match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3_000)));
        let over = sent.len() as u64 + k as u64 > budget;
        match fault {
            Some(Fault::CutRequest) if over => {
                let part = (budget as usize).saturating_sub(sent.len()).min(k);
                let _ = to_server.write_all(&buf[..part]);
                hit(Fault::CutRequest);
                break;
            }
            Some(Fault::DropAnswer) if over => {
                mute.store(true, Ordering::SeqCst);
                let _ = to_server.write_all(&buf[..k]);
                hit(Fault::DropAnswer);
                // HQ gets the whole request; the site's connection dies.
                let _ = from_client.shutdown(Shutdown::Both);
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            Some(Fault::Duplicate) if over => {
                sent.extend_from_slice(&buf[..k]);
                let _ = to_server.write_all(&buf[..k]);
                hit(Fault::Duplicate);
                let _ = from_client.shutdown(Shutdown::Both);
                // Replay everything the site sent, on a fresh connection.
                if let Ok(mut again) = TcpStream::connect(upstream) {
                    let _ = again.write_all(&sent);
                    let _ = again.shutdown(Shutdown::Write);
                    let _ = again.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = std::io::copy(&mut again, &mut std::io::sink());
                }
                break;
            }
            _ => {
                if to_server.write_all(&buf[..k]).is_err() {
                    break;
                }
                sent.extend_from_slice(&buf[..k]);
            }
        }
    }
    let _ = to_server.shutdown(Shutdown::Both);
    let _ = from_client.shutdown(Shutdown::Both);
    let _ = back.join();
}

#[test]
fn shipping_through_a_relay_that_delays_cuts_drops_and_duplicates_ends_with_the_same_log_at_hq() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (hq_dir, site_dir) = (tmp.path().join("hq"), tmp.path().join("site"));
    let replica = replica_token(&hq_dir, SITE);
    let ingest = create_token(&site_dir, "ingest", Some("loadgen-*"));
    let site_admin = create_token(&site_dir, "admin", None);
    let hq_admin = create_token(&hq_dir, "admin", None);
    let hq = start(&hq_dir, free_addr(), &hq_env());
    let relay = Relay::start(hq.addr, 7);
    // Small shipments and short backoff, so that many connections meet a fault.
    let config = tmp.path().join("site.toml");
    std::fs::write(
        &config,
        "[replication]\nbatch_bytes = 8192\nbackoff_max_ms = 400\npoll_ms = 20\ntimeout_secs = 10\n",
    )
    .expect("config");
    let mut env = regional_env(&hq, &replica);
    env.retain(|(k, _)| k != "VERBATIM_HQ_URL");
    env.push(("VERBATIM_HQ_URL".into(), format!("http://{}", relay.addr)));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let site = Server::start_args(&site_dir, free_addr(), &[], &env, &["--config", config.to_str().expect("utf-8")]);

    // Ingest in rounds until every kind of fault has hit shipping at least
    // twice (the load generator's state carries the sequence numbers on).
    let state = tmp.path().join("loadgen.state");
    let mut total = 0u64;
    for _ in 0..40 {
        let out = Command::new(loadgen())
            .args(["run", "--url", &format!("http://{}", site.addr), "--token", &ingest, "--clients", "2"])
            .args(["--batch", "200", "--events", "5000", "--state"])
            .arg(&state)
            .output()
            .expect("loadgen");
        assert!(out.status.success(), "loadgen: {}", stderr(&out));
        total += 5000;
        if FAULTS.iter().all(|&f| relay.count(f) >= 2) {
            break;
        }
    }
    for f in FAULTS {
        assert!(relay.count(f) >= 2, "{f:?} happened {} times", relay.count(f));
    }
    relay.faulty.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(120);
    let head = loop {
        let st = status(&site, &site_admin);
        let sh = &st["shipping"];
        let head = st["log"]["head"].as_u64().expect("head");
        if sh["lag_events"] == 0 && sh["cursor"].as_u64() == Some(head) {
            break head;
        }
        assert!(Instant::now() < deadline, "shipping did not catch up after the faults: {sh}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(head, total);
    let st = status(&hq, &hq_admin);
    assert_eq!(st["replicas"][0]["high_water"].as_u64(), Some(head), "{st}");
    assert_eq!(st["replicas"][0]["forks"], 0, "{st}");
    let (s, err) = site.stop();
    assert!(s.success(), "{err}");
    let (s, err) = hq.stop();
    assert!(s.success(), "{err}");
    let site_v = verify(&site_dir);
    let hq_v = verify(&hq_dir);
    assert_eq!(site_v[0], hq_v[1], "head and chain of the site vs HQ's replica");
    let a = dump(&site_dir.join("log"), &tmp.path().join("d1"));
    let b = dump(&hq_dir.join("replicas").join(SITE), &tmp.path().join("d2"));
    assert!(a == b, "the replica's records differ from the site's");
    let faults: Vec<String> = FAULTS.iter().map(|&f| format!("{f:?}={}", relay.count(f))).collect();
    eprintln!("relay faults: {}", faults.join(" "));
}

/// A private CA and a server certificate it signed for 127.0.0.1 and
/// localhost, as PEM files in `dir`: (ca, cert, key).
fn private_ca(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} private CA"));
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("leaf params");
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf cert");
    std::fs::create_dir_all(dir).expect("dir");
    let paths =
        (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

#[test]
fn over_https_a_site_ships_to_an_hq_whose_certificate_chains_to_the_configured_ca_and_to_no_other() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (hq_dir, site_dir, lon_dir) = (tmp.path().join("hq"), tmp.path().join("site"), tmp.path().join("lon"));
    let (ca, cert, key) = private_ca(&tmp.path().join("pki"), "hq");
    let (other_ca, _, _) = private_ca(&tmp.path().join("pki"), "other");
    let nyc_token = replica_token(&hq_dir, SITE);
    let lon_token = replica_token(&hq_dir, "lon");
    let ingest = create_token(&site_dir, "ingest", Some("loadgen-*"));
    let site_admin = create_token(&site_dir, "admin", None);
    let lon_admin = create_token(&lon_dir, "admin", None);
    let hq_addr = free_addr();
    let (cert_s, key_s) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let hq = Server::start_listening(
        &hq_dir,
        hq_addr,
        &[
            ("VERBATIM_SITE_ROLE", "hq"),
            ("VERBATIM_LOG", "error"),
            ("VERBATIM_TLS_CERT", cert_s),
            ("VERBATIM_TLS_KEY", key_s),
        ],
    );
    let https = format!("https://127.0.0.1:{}", hq_addr.port());
    let regional = |site: &str, token: &str, ca: &Path| -> Vec<(String, String)> {
        vec![
            ("VERBATIM_SITE_ID".into(), site.into()),
            ("VERBATIM_SITE_ROLE".into(), "regional".into()),
            ("VERBATIM_HQ_URL".into(), https.clone()),
            ("VERBATIM_HQ_TOKEN".into(), token.into()),
            ("VERBATIM_HQ_CA".into(), ca.to_str().expect("utf-8").into()),
            ("VERBATIM_LOG".into(), "error".into()),
        ]
    };
    let nyc_env = regional(SITE, &nyc_token, &ca);
    let site = start(&site_dir, free_addr(), &nyc_env);
    // A site that trusts another CA refuses HQ's certificate and ships nothing.
    let lon = start(&lon_dir, free_addr(), &regional("lon", &lon_token, &other_ca));

    let out = Command::new(loadgen())
        .args(["run", "--url", &format!("http://{}", site.addr), "--token", &ingest, "--events", "3000"])
        .output()
        .expect("loadgen");
    assert!(out.status.success(), "loadgen: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(&site, &site_admin);
        let sh = &st["shipping"];
        if sh["lag_events"] == 0 && sh["cursor"] == 3000 {
            break;
        }
        assert!(Instant::now() < deadline, "shipping over HTTPS did not catch up: {sh}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lon_status = status(&lon, &lon_admin);
    let err = lon_status["shipping"]["last_error"].as_str().unwrap_or("").to_lowercase();
    assert!(err.contains("certificate") || err.contains("issuer"), "{lon_status}");
    assert_eq!(lon_status["shipping"]["connected"], false, "{lon_status}");

    // compare-hq speaks HTTPS with the same CA.
    let mut cmp = Command::new(bin());
    cmp.arg("--data-dir").arg(&site_dir).arg("compare-hq");
    for (k, v) in &nyc_env {
        cmp.env(k, v);
    }
    let out = cmp.output().expect("compare-hq");
    assert!(out.status.success(), "compare-hq: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("same chain at offset 3000"), "{}", stdout(&out));
    // Plain HTTP to the HTTPS port gets no answer.
    assert!(!matches!(hq.get("/healthz"), Ok((200, _))));

    for s in [site, lon, hq] {
        let (st, err) = s.stop();
        assert!(st.success(), "{err}");
    }
    let a = dump(&site_dir.join("log"), &tmp.path().join("d1"));
    let b = dump(&hq_dir.join("replicas").join(SITE), &tmp.path().join("d2"));
    assert!(a == b, "the replica's records differ from the site's");
    assert!(!hq_dir.join("replicas").join("lon").exists(), "nothing of lon reached HQ");
}
